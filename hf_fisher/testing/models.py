"""A zoo of tiny, seeded classifiers for tests: nothing downloads, everything builds in seconds.

Each image or text builder saves a complete local checkpoint (``save_pretrained`` weights in
safetensors plus the matching image processor or tokenizer) into a directory, so that
``load_classifier(directory)`` exercises the same path as a Hub model. Weights come from a fixed
seed inside :func:`torch.random.fork_rng`, so building never disturbs the caller's random state.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from torch import Tensor, nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    ConvNextConfig,
    ConvNextForImageClassification,
    ConvNextImageProcessor,
    PreTrainedTokenizerFast,
    ResNetConfig,
    ResNetForImageClassification,
    ResNetModel,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from hf_fisher.digits import DEFAULT_MODEL_DIR

__all__ = [
    "DEFAULT_MODEL_DIR",
    "LM_FAMILIES",
    "TEXT_CORPUS",
    "CLIP_LABELS",
    "build_bert",
    "build_clip",
    "build_bert_token_classifier",
    "build_causal_lm",
    "build_convnext",
    "build_headless_resnet",
    "build_lm_tokenizer",
    "build_mlp",
    "build_resnet",
    "build_segformer",
    "build_vit",
]

TEXT_CORPUS = [
    "the movie was wonderful and the actors were great",
    "a dull film with a terrible plot and bad acting",
    "the food was fine but the service was slow",
    "i loved every minute of this wonderful story",
    "nothing happened and the ending made no sense",
    "great music, great cast, a wonderful evening",
    "the plot was slow and the dialogue was dull",
    "an average film, neither good nor bad",
]


def _labels(num_labels: int) -> tuple[dict[int, str], dict[str, int]]:
    id2label = {index: f"class_{index}" for index in range(num_labels)}
    return id2label, {name: index for index, name in id2label.items()}


def _image_stats(num_channels: int) -> tuple[list[float], list[float]]:
    """Distinct per-channel mean/std, so a channel mix-up in normalisation shows in tests."""
    means = [0.5, 0.45, 0.4, 0.35][:num_channels] + [0.5] * max(0, num_channels - 4)
    stds = [0.25, 0.2, 0.3, 0.22][:num_channels] + [0.25] * max(0, num_channels - 4)
    return means, stds


def _save_image_classifier(model: nn.Module, processor, directory: str | Path) -> Path:
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    processor.save_pretrained(directory)
    return directory


def build_vit(
    directory: str | Path, num_labels: int = 10, image_size: int = 16, num_channels: int = 3,
    *, seed: int = 0,
) -> Path:
    """Save a one-layer ViT (hidden size 16, patch 4) with a ``ViTImageProcessor``."""
    id2label, label2id = _labels(num_labels)
    config = ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        initializer_range=0.3, image_size=image_size, patch_size=4, num_channels=num_channels,
        num_labels=num_labels, id2label=id2label, label2id=label2id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTForImageClassification(config)
    mean, std = _image_stats(num_channels)
    processor = ViTImageProcessor(
        size={"height": image_size, "width": image_size}, image_mean=mean, image_std=std
    )
    return _save_image_classifier(model, processor, directory)


def build_resnet(
    directory: str | Path, num_labels: int = 10, image_size: int = 16, num_channels: int = 3,
    *, seed: int = 0,
) -> Path:
    """Save a two-stage basic-block ResNet (widths 8/16) with a ``ViTImageProcessor``."""
    id2label, label2id = _labels(num_labels)
    config = ResNetConfig(
        num_channels=num_channels, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
        layer_type="basic", downsample_in_first_stage=False, image_size=image_size,
        num_labels=num_labels, id2label=id2label, label2id=label2id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNetForImageClassification(config)
        _randomise_batch_norm(model)
    mean, std = _image_stats(num_channels)
    processor = ViTImageProcessor(
        size={"height": image_size, "width": image_size}, image_mean=mean, image_std=std
    )
    return _save_image_classifier(model, processor, directory)


def build_convnext(
    directory: str | Path, num_labels: int = 10, image_size: int = 16, num_channels: int = 3,
    *, seed: int = 0,
) -> Path:
    """Save a two-stage ConvNeXt (widths 8/16) with a ``ConvNextImageProcessor``.

    The processor resizes the shortest edge to ``image_size / crop_pct`` and centre-crops, so the
    model's resolution must be read from the processor, not from a "height"/"width" size.
    """
    id2label, label2id = _labels(num_labels)
    config = ConvNextConfig(
        num_channels=num_channels, patch_size=2, num_stages=2, hidden_sizes=[8, 16],
        depths=[1, 1], image_size=image_size, initializer_range=0.3, layer_scale_init_value=1.0,
        num_labels=num_labels, id2label=id2label, label2id=label2id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ConvNextForImageClassification(config)
    mean, std = _image_stats(num_channels)
    processor = ConvNextImageProcessor(
        size={"shortest_edge": image_size}, crop_pct=0.875, image_mean=mean, image_std=std
    )
    return _save_image_classifier(model, processor, directory)


def build_headless_resnet(directory: str | Path, num_channels: int = 3, *, seed: int = 0) -> Path:
    """Save a ``ResNetModel`` (a feature extractor with no classification head)."""
    config = ResNetConfig(
        num_channels=num_channels, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
        layer_type="basic",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNetModel(config)
    mean, std = _image_stats(num_channels)
    processor = ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=mean, image_std=std)
    return _save_image_classifier(model, processor, directory)


def _randomise_batch_norm(model: nn.Module) -> None:
    """Give BatchNorm layers non-trivial running statistics, so eval vs train mode differ."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)


def build_tokenizer(corpus: list[str] = TEXT_CORPUS) -> PreTrainedTokenizerFast:
    """A lower-casing WordPiece tokenizer with BERT's special tokens, knowing ``corpus``'s words.

    The vocabulary is built, not trained: the special tokens, then every character of the
    corpus (alone and as a ``##`` continuation), then every whole word, each group sorted.
    ``WordPieceTrainer`` is not deterministic (tokens of equal counts come out in hash order,
    huggingface/tokenizers#1794), which made every model built on it, and every test of
    those models, differ from one process to the next.
    """
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = {
        word
        for text in corpus
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    }
    characters = sorted({character for word in words for character in word})
    tokens = [*special, *characters, *(f"##{c}" for c in characters), *sorted(words)]
    vocabulary = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    backend = Tokenizer(models.WordPiece(vocabulary, unk_token="[UNK]"))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.WordPiece()
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def build_bert(
    directory: str | Path,
    num_labels: int = 3,
    *,
    seed: int = 0,
    problem_type: str | None = None,
) -> Path:
    """Save a one-layer BERT (hidden size 16) with a WordPiece tokenizer of the corpus.

    ``problem_type="multi_label_classification"`` saves a multi-label (sigmoid) classifier.
    """
    directory = Path(directory)
    tokenizer = build_tokenizer()
    id2label, label2id = _labels(num_labels)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, initializer_range=0.3,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=num_labels, id2label=id2label, label2id=label2id, problem_type=problem_type,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


CLIP_LABELS = ("cat", "dog", "bird")
"""The classes the tiny CLIP's tokenizer knows by name."""


def build_clip(directory: str | Path, image_size: int = 8, *, seed: int = 0) -> Path:
    """Save a one-layer CLIPModel (hidden size 16) with its image processor and a tokenizer.

    A zero-shot dual encoder: no classification head; the classes are candidate labels (the
    tokenizer knows the prompts naming :data:`CLIP_LABELS`), held fixed as text features.
    """
    directory = Path(directory)
    prompts = [f"this is a photo of {label}." for label in CLIP_LABELS]
    tokenizer = build_tokenizer([*TEXT_CORPUS, *prompts, *CLIP_LABELS])
    text = {
        "vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 32,
        "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,  # pooled at the first [SEP]
    }
    vision = {
        "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "image_size": image_size, "patch_size": 4, "num_channels": 3,
    }
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
        for module in model.modules():  # CLIP's init is tiny: make the features distinct
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.3)
    model.save_pretrained(directory, safe_serialization=True)
    processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


class MLP(nn.Module):
    """Flatten, then tanh hidden layers, then linear logits: smooth, so its Fisher is generic."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int) -> None:
        super().__init__()
        in_features = 1
        for size in input_shape:
            in_features *= size
        self.layers = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, num_classes)
        )

    def forward(self, inputs: Tensor) -> Tensor:  # (N, *input_shape) -> (N, K)
        """Return logits."""
        return self.layers(inputs)


def build_mlp(
    input_shape: tuple[int, ...] = (2, 3, 4), num_classes: int = 4, hidden: int = 16,
    *, seed: int = 0, dtype: torch.dtype = torch.float32,
) -> MLP:
    """Return a seeded :class:`MLP` in train mode (as a user's fresh module would be)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLP(tuple(input_shape), num_classes, hidden)
    return model.to(dtype)


def train_digits_mlp(*, seed: int = 0, steps: int = 300) -> tuple[nn.Module, Tensor, Tensor]:
    """A tanh MLP trained on scikit-learn's real 8x8 digits, pixels in [0, 1] (~96% accuracy).

    A plain ``nn.Module`` counterpart of the bundled ResNet, for measurements that need a
    trained model but no Hugging Face machinery. Trains in about a second on a CPU.

    Returns:
        ``(model, held_out_inputs (397, 64), held_out_labels (397,))``, the model in eval mode.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    inputs = torch.tensor(data.data / 16.0, dtype=torch.float32)
    labels = torch.tensor(data.target)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(steps):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs[:1400]), labels[:1400]).backward()
            optimizer.step()
    return model.eval(), inputs[1400:], labels[1400:]


# --------------------------------------------------------------------------------------------
# Structured outputs: a causal LM, a token classifier, a semantic segmenter.


def build_lm_tokenizer(
    corpus: list[str] = TEXT_CORPUS, vocab_size: int = 64
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (LLaMA-style ``<s>``/``</s>``, no padding token).

    Its alphabet is the corpus's characters only (so the vocabulary can stay tiny).
    """
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    backend.train_from_iterator(corpus, trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        model_input_names=["input_ids", "attention_mask"],
    )


LM_FAMILIES = ("llama", "mistral", "qwen2", "gpt2")
"""The causal-LM families :func:`build_causal_lm` builds (LLaMA-style unless asked)."""


def _lm_config(family: str, vocab: int, hidden: int, tokenizer: PreTrainedTokenizerFast):
    import transformers

    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab, n_embd=hidden, n_layer=1, n_head=2, n_positions=64,
            initializer_range=0.3, **special,
        )
    names = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config"}
    return getattr(transformers, names[family])(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
        initializer_range=0.3, tie_word_embeddings=False, **special,
    )


def build_causal_lm(
    directory: str | Path, vocab_size: int = 64, *, hidden_size: int = 16, seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None, family: str = "llama",
) -> Path:
    """Save a one-layer causal LM (hidden size 16) with a locally trained BPE tokenizer.

    ``vocab_size`` is the size of the tokenizer's vocabulary (the BPE trainer stops earlier on
    the small corpus; the model's output layer has exactly ``len(tokenizer)`` tokens);
    ``family`` is one of :data:`LM_FAMILIES` (GPT-2 has absolute positions and tied weights).
    """
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    tokenizer = tokenizer or build_lm_tokenizer(vocab_size=vocab_size)
    config = _lm_config(family, len(tokenizer), hidden_size, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def build_bert_token_classifier(
    directory: str | Path, num_labels: int = 4, *, seed: int = 0
) -> Path:
    """Save a one-layer BERT token classifier (hidden size 16), labels ``O``/``B-X``/..."""
    from transformers import BertForTokenClassification

    directory = Path(directory)
    tokenizer = build_tokenizer()
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG"][:num_labels]
    id2label = dict(enumerate(names))
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, initializer_range=0.3,
        pad_token_id=tokenizer.pad_token_id, num_labels=num_labels, id2label=id2label,
        label2id={name: index for index, name in id2label.items()},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForTokenClassification(config)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def build_segformer(
    directory: str | Path, num_labels: int = 3, image_size: int = 16, *, seed: int = 0
) -> Path:
    """Save a two-stage SegFormer (widths 8/16, logits on a 1/4-resolution grid)."""
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    id2label, label2id = _labels(num_labels)
    config = SegformerConfig(
        num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
        hidden_sizes=[8, 16], patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2],
        mlp_ratios=[2, 2], decoder_hidden_size=16, initializer_range=0.3,
        num_labels=num_labels, id2label=id2label, label2id=label2id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SegformerForSemanticSegmentation(config)
        _randomise_batch_norm(model)
    mean, std = _image_stats(3)
    processor = SegformerImageProcessor(
        size={"height": image_size, "width": image_size}, image_mean=mean, image_std=std
    )
    return _save_image_classifier(model, processor, directory)
