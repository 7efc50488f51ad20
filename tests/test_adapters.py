import json
import re
import shutil

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from hf_fisher.adapters import Classifier, PreparedBatch, load_classifier
from hf_fisher.digits import load_digits_dataset
from hf_fisher.errors import DatasetError, InputError, ModelLoadError, NotAClassifierError
from hf_fisher.operators import FisherOperator
from hf_fisher.testing.models import TEXT_CORPUS, build_mlp, build_tokenizer


def random_images(count, size=(20, 23), channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.random((*size, channels)) * 255).astype(np.uint8) for _ in range(count)]


# ------------------------------------------------------------------------------------- images


def test_image_round_trip_matches_processor_and_raw_model(image_model_dir):
    classifier = load_classifier(image_model_dir, device="cpu")
    images = random_images(3) + random_images(1, size=(31, 17), seed=1)
    batch = classifier.prepare(images)

    processor = AutoImageProcessor.from_pretrained(image_model_dir)
    model = AutoModelForImageClassification.from_pretrained(image_model_dir).eval()
    reference_pixels = processor(images=images, do_normalize=False, return_tensors="pt")
    reference_normalised = processor(images=images, return_tensors="pt")["pixel_values"]

    assert classifier.input_space == "pixels" and classifier.modality == "image"
    assert batch.inputs.shape == (4, *classifier.input_shape) == reference_normalised.shape
    assert batch.space_mask is None and batch.context == {}
    assert 0.0 <= batch.inputs.min() and batch.inputs.max() <= 1.0
    torch.testing.assert_close(batch.inputs, reference_pixels["pixel_values"], rtol=0, atol=1e-6)
    # the folded normalisation is the processor's own
    torch.testing.assert_close(
        classifier.normalize(batch.inputs), reference_normalised, rtol=0, atol=1e-5
    )
    with torch.no_grad():
        expected = model(pixel_values=reference_normalised).logits
        torch.testing.assert_close(classifier(batch.inputs), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            classifier.logit_fn(batch)(batch.inputs), expected, rtol=1e-5, atol=1e-5
        )
    assert classifier.num_classes == 10 and classifier.id2label[3] == "class_3"
    assert classifier.source["task"] == "image-classification"
    assert classifier.source["architecture"] == type(model).__name__
    assert classifier.source["commit_hash"] is None  # a local directory has no commit


def test_normalized_space_takes_processor_output(image_model_dir):
    pixels_space = load_classifier(image_model_dir, device="cpu")
    normalised_space = load_classifier(image_model_dir, device="cpu", input_space="normalized")
    images = random_images(2, seed=3)
    processor = AutoImageProcessor.from_pretrained(image_model_dir)
    expected_inputs = processor(images=images, return_tensors="pt")["pixel_values"]

    batch = normalised_space.prepare(images)
    torch.testing.assert_close(batch.inputs, expected_inputs, rtol=0, atol=1e-5)
    # values outside [0, 1] are fine in normalised space
    assert batch.inputs.min() < 0
    normalised_space.prepare(expected_inputs)
    with torch.no_grad():
        torch.testing.assert_close(
            normalised_space(batch.inputs),
            pixels_space(pixels_space.prepare(images).inputs),
            rtol=1e-5,
            atol=1e-5,
        )


def test_pixel_space_gradient_is_chain_rule_through_normalisation(resnet_dir):
    pixels_space = load_classifier(resnet_dir, device="cpu", dtype=torch.float64)
    normalised_space = load_classifier(
        resnet_dir, device="cpu", dtype=torch.float64, input_space="normalized"
    )
    pixels = pixels_space.prepare(random_images(2, seed=4)).inputs.requires_grad_(True)
    (grad_pixels,) = torch.autograd.grad(pixels_space(pixels)[:, 1].sum(), pixels)
    normalised = pixels_space.normalize(pixels.detach()).requires_grad_(True)
    (grad_normalised,) = torch.autograd.grad(normalised_space(normalised)[:, 1].sum(), normalised)
    std = torch.tensor([0.25, 0.2, 0.3], dtype=torch.float64).reshape(1, 3, 1, 1)
    torch.testing.assert_close(grad_pixels, grad_normalised / std, rtol=1e-9, atol=1e-12)


def test_float_images_at_model_resolution_keep_full_precision(vit_dir):
    classifier = load_classifier(vit_dir, device="cpu")
    rng = np.random.default_rng(5)
    channels_last = rng.random((16, 16, 3)).astype(np.float32)
    channels_first = rng.random((3, 16, 16)).astype(np.float32)
    batch = classifier.prepare([channels_last, channels_first])
    torch.testing.assert_close(batch.inputs[0], torch.from_numpy(channels_last).permute(2, 0, 1))
    torch.testing.assert_close(batch.inputs[1], torch.from_numpy(channels_first))


def test_channel_conversion_matches_pil(default_model_dir, vit_dir):
    grey_model = load_classifier(default_model_dir, device="cpu")
    rgb = random_images(2, size=(32, 32), seed=6)
    from_rgb = grey_model.prepare(rgb).inputs
    from_pil = grey_model.prepare([Image.fromarray(image).convert("L") for image in rgb]).inputs
    assert from_rgb.shape == (2, 1, 32, 32)
    torch.testing.assert_close(from_rgb, from_pil, rtol=0, atol=1.5 / 255)

    rgb_model = load_classifier(vit_dir, device="cpu")
    grey = (np.random.default_rng(7).random((16, 16)) * 255).astype(np.uint8)
    batch = rgb_model.prepare([grey, Image.fromarray(grey)])
    torch.testing.assert_close(rgb_model.prepare(Image.fromarray(grey)).inputs, batch.inputs[1:])
    assert batch.inputs.shape == (2, 3, 16, 16)
    for channel in range(3):
        torch.testing.assert_close(batch.inputs[:, channel], batch.inputs[:, 0])
    torch.testing.assert_close(batch.inputs[0, 0], torch.from_numpy(grey).float() / 255)


def _pil_modes(size: int) -> dict[str, tuple]:
    """PIL images of each mode with the [0, 1] pixels expected for a greyscale and an RGB model,
    computed from the arrays, not by PIL (None: not checked for that model)."""
    rng = np.random.default_rng(11)
    grey = rng.integers(0, 256, (size, size), dtype=np.uint8)
    alpha = rng.integers(0, 256, (size, size), dtype=np.uint8)
    rgb = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    deep = rng.integers(0, 65536, (size, size), dtype=np.uint16)
    bits = rng.random((size, size)) < 0.5
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    indices = rng.integers(0, 256, (size, size), dtype=np.uint8)
    paletted = Image.fromarray(indices, mode="L").convert("P")
    paletted.putpalette(palette.flatten().tolist())
    paletted.putdata(indices.flatten().tolist())
    cmyk = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
    ink = 1 - cmyk.astype(np.float64) / 255
    repeat = lambda a: np.repeat(a[..., None], 3, axis=2)  # noqa: E731
    return {
        "1": (Image.fromarray(bits), bits * 1.0, repeat(bits * 1.0)),
        "L": (Image.fromarray(grey), grey / 255, repeat(grey / 255)),
        "LA": (
            Image.fromarray(np.dstack([grey, alpha]), mode="LA"),
            grey / 255,
            repeat(grey / 255),
        ),
        "P": (paletted, None, palette[indices] / 255),
        "RGBA": (Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA"), None, rgb / 255),
        "CMYK": (Image.fromarray(cmyk, mode="CMYK"), None, ink[..., :3] * ink[..., 3:]),
        "I;16": (Image.fromarray(deep), deep / 65535, repeat(deep / 65535)),
        "I;16B": (Image.fromarray(deep.astype(">u2")), deep / 65535, None),
        "F": (Image.fromarray((grey / 255).astype(np.float32)), grey / 255, None),
    }


@pytest.mark.parametrize("mode", list(_pil_modes(2)))
def test_pil_modes_give_the_expected_pixels(mode, default_model_dir, vit_dir):
    """Each PIL mode at its true scale: 16-bit is /65535 (convert("L") would clip it)."""
    for model_dir, size, slot in ((default_model_dir, 32, 1), (vit_dir, 16, 2)):
        image, *expected = _pil_modes(size)[mode]
        assert image.mode == mode
        if expected[slot - 1] is None:
            continue
        classifier = load_classifier(model_dir, device="cpu", dtype=torch.float64)
        pixels = classifier.prepare([image]).inputs[0].permute(1, 2, 0)
        want = torch.from_numpy(np.asarray(expected[slot - 1], dtype=np.float64))
        want = want.reshape(pixels.shape)
        tolerance = 0.5 / 255 + 1e-9 if mode == "CMYK" else 1e-7  # PIL rounds CMYK to uint8
        torch.testing.assert_close(pixels, want, rtol=0, atol=tolerance)


def test_integer_images_scale_by_their_bit_depth(default_model_dir, tmp_path):
    classifier = load_classifier(default_model_dir, device="cpu", dtype=torch.float64)
    deep = np.random.default_rng(12).integers(0, 2**20, (32, 32), dtype=np.int32)
    Image.fromarray(deep).save(tmp_path / "deep.tif")  # TIFF mode I, BitsPerSample 32
    reloaded = Image.open(tmp_path / "deep.tif")
    assert reloaded.mode == "I"
    pixels = classifier.prepare([reloaded]).inputs[0, 0]
    expected = torch.from_numpy(deep / (2.0**32 - 1))  # images are prepared in float32
    torch.testing.assert_close(pixels, expected, rtol=1e-7, atol=0)
    with pytest.raises(InputError, match="mode 'I' .32-bit integers. with no known bit depth"):
        classifier.prepare([Image.fromarray(deep)])
    with pytest.raises(InputError, match=r"float array with values in \[2, 2\]; float images"):
        classifier.prepare([Image.fromarray(np.full((32, 32), 2.0, dtype=np.float32))])


def test_sixteen_bit_png_round_trip_matches_eight_bit(default_model_dir, tmp_path):
    """A 16-bit PNG of the same picture gives the same pixels, at and off the model's size."""
    classifier = load_classifier(default_model_dir, device="cpu")
    for size in (32, 40):
        grey = np.random.default_rng(size).integers(0, 256, (size, size), dtype=np.uint8)
        Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "deep.png")
        deep = Image.open(tmp_path / "deep.png")
        assert deep.mode == "I;16"
        torch.testing.assert_close(
            classifier.prepare([deep]).inputs, classifier.prepare([Image.fromarray(grey)]).inputs
        )


def test_prepare_accepts_datasets_column_and_prepared_batch(default_model_dir):
    classifier = load_classifier(default_model_dir, device="cpu")
    dataset = load_digits_dataset("test").select(range(3))
    batch = classifier.prepare(dataset["image"])
    assert batch.inputs.shape == (3, 1, 32, 32)
    again = classifier.prepare(PreparedBatch(batch.inputs.double()))
    assert again.inputs.dtype == torch.float32
    torch.testing.assert_close(again.inputs, batch.inputs)


def test_dtype_and_to(vit_dir):
    classifier = load_classifier(vit_dir, device="cpu", dtype=torch.float64)
    batch = classifier.prepare(random_images(2, seed=8))
    assert batch.inputs.dtype == torch.float64
    with torch.no_grad():
        logits64 = classifier(batch.inputs)
    assert logits64.dtype == torch.float64
    single = load_classifier(classifier, dtype=torch.float32)
    assert single is classifier and single.dtype == torch.float32  # moved in place, like .to
    assert next(single.model.parameters()).dtype == torch.float32
    with torch.no_grad():
        logits32 = single(batch.inputs.float())
    assert logits32.dtype == torch.float32
    torch.testing.assert_close(logits32.double(), logits64, rtol=1e-4, atol=1e-5)
    assert load_classifier(single) is single


# HF eager attention runs its softmax in float32 even in float64 models (NOTES), so the ViT
# ground truth is only float32-accurate; the ResNet one is exact to float64 rounding.
@pytest.mark.parametrize(("name", "tolerance"), [("vit", 1e-5), ("resnet", 1e-10)])
def test_fisher_operator_through_adapter_matches_dense_jacobian(request, name, tolerance):
    """Double backward (eager attention) through the adapter's map matches a dense Jacobian."""
    model_dir = request.getfixturevalue(f"{name}_dir")
    classifier = load_classifier(model_dir, device="cpu", dtype=torch.float64)
    batch = classifier.prepare(random_images(2, seed=9))
    logit_fn = classifier.logit_fn(batch)
    operator = FisherOperator(logit_fn, batch.inputs, batch.space_mask)
    vectors = torch.randn(2, operator.shape[1], dtype=torch.float64)
    products = operator.matvec(vectors)
    for sample in range(2):
        point = batch.inputs[sample : sample + 1]
        jacobian = torch.autograd.functional.jacobian(lambda x: logit_fn(x)[0], point)
        jacobian = jacobian.reshape(classifier.num_classes, -1)
        with torch.no_grad():
            probs = torch.softmax(logit_fn(point)[0], dim=0)
        dense = jacobian.T @ (torch.diag(probs) - torch.outer(probs, probs)) @ jacobian
        expected = dense @ vectors[sample]
        error = (products[sample] - expected).norm() / expected.norm()
        assert error < tolerance, f"relative error {error:.3g}"


# --------------------------------------------------------------------------------------- text


def test_text_length_limit_is_the_models_position_limit(bert_dir):
    """The test BERT's tokenizer has no model_max_length (a 1e30 sentinel); 64 positions."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from hf_fisher.adapters import _max_text_length

    classifier = load_classifier(bert_dir, device="cpu")
    assert classifier.tokenizer.model_max_length > 1e20 and classifier.max_length == 64
    with pytest.raises(InputError, match="got input_ids of length 70; the model takes at most 64"):
        classifier.prepare({"input_ids": torch.ones(1, 70, dtype=torch.long)})
    config = RobertaConfig(
        vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=8, max_position_embeddings=20, pad_token_id=1,
    )  # fmt: skip
    roberta = RobertaForSequenceClassification(config).eval()
    assert _max_text_length(roberta, classifier.tokenizer) == 18  # positions start at pad + 1
    roberta(input_ids=torch.full((1, 18), 5))
    with pytest.raises((IndexError, RuntimeError), match="out of"):  # one more position crashes
        roberta(input_ids=torch.full((1, 19), 5))


def test_text_round_trip_matches_raw_model(bert_dir):
    classifier = load_classifier(bert_dir, device="cpu")
    texts = TEXT_CORPUS[:4]
    batch = classifier.prepare(texts)
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    model = AutoModelForSequenceClassification.from_pretrained(bert_dir).eval()
    encoding = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    assert classifier.modality == "text" and classifier.input_space == "embeddings"
    assert classifier.input_shape is None and classifier.num_classes == 3
    assert set(batch.context) == {"attention_mask", "token_type_ids"}
    assert batch.inputs.shape == (4, encoding["input_ids"].shape[1], 16)
    with torch.no_grad():
        expected = model(**encoding).logits
        torch.testing.assert_close(classifier(batch.inputs, **batch.context), expected)
        torch.testing.assert_close(classifier.logit_fn(batch)(batch.inputs), expected)
    # an already tokenized batch gives the same embeddings
    from_encoding = classifier.prepare(dict(encoding))
    torch.testing.assert_close(from_encoding.inputs, batch.inputs)


def test_text_padding_does_not_change_logits_and_is_outside_the_space(bert_dir):
    classifier = load_classifier(bert_dir, device="cpu")
    texts = ["bad", TEXT_CORPUS[0], "the plot was slow"]
    batch = classifier.prepare(texts)
    mask = batch.context["attention_mask"]
    assert (mask == 0).any(), "the batch must contain padding for this test"
    with torch.no_grad():
        padded_logits = classifier(batch.inputs, **batch.context)
        for index, text in enumerate(texts):
            alone = classifier.prepare([text])
            torch.testing.assert_close(
                padded_logits[index : index + 1],
                classifier(alone.inputs, **alone.context),
                rtol=1e-5,
                atol=1e-6,
            )
    # space mask: the attention mask broadcast over the hidden dimension
    torch.testing.assert_close(batch.space_mask, mask[:, :, None].float().expand_as(batch.inputs))
    inputs = batch.inputs.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(classifier.logit_fn(batch)(inputs)[:, 0].sum(), inputs)
    padded = mask == 0
    assert torch.count_nonzero(gradient[padded]) == 0
    assert gradient[~padded].abs().max() > 0
    # the operators see the mask too
    operator = FisherOperator(classifier.logit_fn(batch), batch.inputs, batch.space_mask)
    product = operator.matvec(torch.randn(operator.shape)).reshape(inputs.shape)
    assert torch.count_nonzero(product[padded]) == 0 and product[~padded].abs().max() > 0


def test_text_pairs_set_token_types(bert_dir):
    classifier = load_classifier(bert_dir, device="cpu")
    batch = classifier.prepare([("the movie was great", "bad acting")])
    token_types = batch.context["token_type_ids"][0]
    assert token_types[0] == 0 and token_types.max() == 1
    single = classifier.prepare("the movie was great")
    assert len(single) == 1 and single.context["token_type_ids"].max() == 0


# ------------------------------------------------------------------------------ nn.Module


def test_module_round_trip_and_eval_mode(mlp):
    assert mlp.training
    classifier = load_classifier(mlp)
    assert not mlp.training  # documented: switched to eval mode in place
    assert classifier.modality == "tensor" and classifier.input_space == "raw"
    assert classifier.device == torch.device("cpu") and classifier.dtype == torch.float32
    with pytest.raises(InputError, match="number of classes is unknown"):
        _ = classifier.num_classes
    inputs = torch.randn(5, 2, 3, 4)
    batch = classifier.prepare(inputs)
    assert classifier.input_shape == (2, 3, 4) and classifier.num_classes == 4
    assert classifier.id2label == {0: "0", 1: "1", 2: "2", 3: "3"}
    torch.testing.assert_close(classifier(batch.inputs), mlp(inputs))
    assert classifier.source == {
        "id": "MLP",
        "revision": None,
        "commit_hash": None,
        "architecture": "MLP",
        "task": None,
    }


def test_module_keeps_its_float64_dtype_and_takes_input_shape():
    module = build_mlp(dtype=torch.float64)
    classifier = load_classifier(module, input_shape=(2, 3, 4))
    assert classifier.dtype == torch.float64 and classifier.num_classes == 4
    batch = classifier.prepare(np.zeros((1, 2, 3, 4), dtype=np.float32))
    assert batch.inputs.dtype == torch.float64


class DropoutNet(torch.nn.Module):
    def __init__(self, always_random=False):
        super().__init__()
        self.linear = torch.nn.Linear(6, 3)
        self.dropout = torch.nn.Dropout(0.5)
        self.always_random = always_random

    def forward(self, x):
        if self.always_random:
            return torch.nn.functional.dropout(self.linear(x), 0.5, training=True)
        return self.dropout(self.linear(x))


def test_eval_mode_makes_dropout_deterministic():
    module = DropoutNet()
    classifier = load_classifier(module, input_shape=(6,))
    inputs = classifier.prepare(torch.randn(4, 6)).inputs
    torch.testing.assert_close(classifier(inputs), classifier(inputs), rtol=0, atol=0)


def test_nondeterministic_module_is_rejected():
    with pytest.raises(ModelLoadError, match="different logits on two identical forward passes"):
        load_classifier(DropoutNet(always_random=True), input_shape=(6,))


def test_loaded_checkpoint_is_in_eval_mode_and_frozen(resnet_dir):
    classifier = load_classifier(resnet_dir, device="cpu")
    assert not any(module.training for module in classifier.model.modules())
    assert not any(parameter.requires_grad for parameter in classifier.model.parameters())


# ------------------------------------------------------------------------------------ errors


def test_hub_id_offline_raises_model_load_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        ModelLoadError, match=r"'no-such-org/no-such-model' locally or on the Hugging Face Hub"
    ) as info:
        load_classifier("no-such-org/no-such-model")
    assert "HF_HUB_OFFLINE" in str(info.value) and "local directory" in str(info.value)
    assert info.value.__cause__ is not None


def test_headless_checkpoint_is_not_a_classifier(headless_resnet_dir):
    with pytest.raises(NotAClassifierError, match="ResNetModel, which is not a classifier"):
        load_classifier(headless_resnet_dir)


def test_checkpoint_without_head_weights_is_not_a_classifier(headless_resnet_dir, tmp_path):
    target = tmp_path / "no-architectures"
    shutil.copytree(headless_resnet_dir, target)
    config = json.loads((target / "config.json").read_text())
    config.pop("architectures")
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(NotAClassifierError, match="no trained weights for .*classifier"):
        load_classifier(target)


def test_module_with_wrong_output_is_not_a_classifier():
    with pytest.raises(NotAClassifierError, match=r"Sequential returned an output of shape \(2\)"):
        load_classifier(torch.nn.Sequential(torch.nn.Flatten(0)), input_shape=(1,))

    class NoLogits(torch.nn.Module):
        def forward(self, x):
            return {"hidden": x}

    with pytest.raises(NotAClassifierError, match="NoLogits returned a dict with no logits"):
        load_classifier(NoLogits(), input_shape=(3,))


def test_bad_model_arguments(vit_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="got a model of type int"):
        load_classifier(3)
    spaces = r"input_space='embeddings' .* \['pixels', 'normalized'\]"
    with pytest.raises(ModelLoadError, match=spaces):
        load_classifier(vit_dir, input_space="embeddings")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_classifier(vit_dir / "config.json")
    with pytest.raises(ModelLoadError, match="pass a floating dtype"):
        load_classifier(vit_dir, dtype=torch.int64)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="could not read a model config from the directory"):
        load_classifier(empty)


def test_missing_processor_needs_normalized_space(vit_dir, tmp_path):
    target = tmp_path / "no-processor"
    target.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(vit_dir / name, target / name)
    with pytest.raises(ModelLoadError, match="found no image processor .*input_space='normalized'"):
        load_classifier(target)
    classifier = load_classifier(target, input_space="normalized", device="cpu")
    assert classifier.input_shape == (3, 16, 16)
    classifier.prepare(torch.randn(2, 3, 16, 16))
    with pytest.raises(InputError, match="has no image processor"):
        classifier.prepare(random_images(1))


def test_image_input_errors(vit_dir):
    classifier = load_classifier(vit_dir, device="cpu")
    message = "got input of shape (2, 5, 7); the model expects (N, 3, 16, 16)"
    with pytest.raises(InputError, match=re.escape(message)):
        classifier.prepare(torch.rand(2, 5, 7))
    with pytest.raises(InputError, match=re.escape("got input of shape (1, 3, 8, 8)")):
        classifier(torch.rand(1, 3, 8, 8))
    with pytest.raises(InputError, match="empty batch"):
        classifier.prepare(torch.rand(0, 3, 16, 16))
    with pytest.raises(InputError, match="empty list of images"):
        classifier.prepare([])
    corrupted = torch.rand(4, 3, 16, 16)
    corrupted[1, 0, 0, 0] = float("nan")
    corrupted[3, 2, 5, 5] = float("inf")
    with pytest.raises(InputError, match=re.escape("samples [1, 3] contain NaN or infinite")):
        classifier.prepare(corrupted)
    out_of_range = r"\[0, 1\], got values in \[0, 255\].*input_space='normalized'"
    with pytest.raises(InputError, match=out_of_range):
        classifier.prepare(torch.where(torch.rand(1, 3, 16, 16) > 0.5, 255.0, 0.0))
    with pytest.raises(InputError, match="image 1 is a float array with values in"):
        classifier.prepare([np.zeros((16, 16, 3), np.float32), np.full((16, 16, 3), 2.0)])
    with pytest.raises(InputError, match="image 0 has dtype int64"):
        classifier.prepare([np.zeros((16, 16), dtype=np.int64)])
    with pytest.raises(InputError, match="image 0 is a str"):
        classifier.prepare(["cat.png"])


def test_text_input_errors(bert_dir):
    classifier = load_classifier(bert_dir, device="cpu")
    with pytest.raises(InputError, match="non-empty list of strings"):
        classifier.prepare([])
    with pytest.raises(InputError, match="text sample 1 is 3"):
        classifier.prepare(["fine", 3])
    with pytest.raises(InputError, match=r"a tokenized batch needs 'input_ids'"):
        classifier.prepare({"ids": [[1, 2]]})
    with pytest.raises(InputError, match=f"vocabulary has {len(build_tokenizer())} tokens"):
        classifier.prepare({"input_ids": [[2, 500, 3]]})
    message = "the model expects token embeddings of shape (N, L, 16)"
    with pytest.raises(InputError, match=re.escape(message)):
        classifier(torch.zeros(1, 4, 8))
    batch = classifier.prepare(["fine"])
    batch.inputs[0, 1, 0] = float("nan")
    with pytest.raises(InputError, match=re.escape("samples [0] contain NaN")):
        classifier.prepare(batch)


def test_module_input_errors(mlp):
    classifier = load_classifier(mlp)
    with pytest.raises(InputError, match="empty batch"):
        classifier.prepare(torch.zeros(0, 2, 3, 4))
    classifier.prepare(torch.zeros(1, 2, 3, 4))
    message = "got input of shape (1, 24); the model expects (N, 2, 3, 4)"
    with pytest.raises(InputError, match=re.escape(message)):
        classifier.prepare(torch.zeros(1, 24))
    with pytest.raises(InputError, match="got inputs of type list"):
        classifier.prepare([[1.0]])


# --------------------------------------------------------------------- bundled default model


def test_bundled_model_is_small_accurate_and_matches_its_card(default_model_dir):
    size = sum(path.stat().st_size for path in default_model_dir.iterdir())
    assert size < 1_000_000
    classifier = load_classifier(default_model_dir, device="cpu")
    assert classifier.input_shape == (1, 32, 32) and classifier.input_space == "pixels"
    assert classifier.id2label == {digit: str(digit) for digit in range(10)}
    dataset = load_digits_dataset("test")
    batch = classifier.prepare(dataset["image"])
    with torch.no_grad():
        predictions = classifier(batch.inputs).argmax(dim=1)
    accuracy = (predictions == torch.tensor(list(dataset["label"]))).double().mean().item()
    assert accuracy >= 0.95

    card = ModelCard.load(default_model_dir.parents[2] / "model_cards" / "digits-resnet.md")
    (card_result,) = [r for r in card.data.eval_results if r.metric_type == "accuracy"]
    assert card_result.metric_type == "accuracy" and card_result.dataset_split == "test"
    assert abs(card_result.metric_value - accuracy) <= 1.0 / len(dataset)
    assert "python scripts/train_default_model.py" in card.text


def test_digits_dataset_split_is_deterministic_and_stratified():
    train, test = load_digits_dataset("train", upsample=8), load_digits_dataset("test", upsample=8)
    assert (len(train), len(test)) == (1437, 360)
    assert test.features["label"].names == [str(digit) for digit in range(10)]
    counts = np.bincount(list(test["label"]), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    first = np.asarray(test[0]["image"])
    assert first.shape == (8, 8) and first.dtype == np.uint8 and first.max() > 200
    again = load_digits_dataset("test", upsample=8)
    assert np.array_equal(np.asarray(again[5]["image"]), np.asarray(test[5]["image"]))
    train_rows = {np.asarray(image).tobytes() for image in train["image"]}
    overlap = sum(np.asarray(image).tobytes() in train_rows for image in test["image"])
    assert overlap < 5  # only genuinely duplicated scans may appear in both


def test_digits_dataset_errors():
    with pytest.raises(DatasetError, match=r"got split 'validation'; .*\['train', 'test'\]"):
        load_digits_dataset("validation")
    with pytest.raises(DatasetError, match="got upsample=4"):
        load_digits_dataset("test", upsample=4)


def test_classifier_is_the_public_base_type(vit_dir, bert_dir, mlp):
    for model in (vit_dir, bert_dir, mlp):
        assert isinstance(load_classifier(model, device="cpu"), Classifier)


# ------------------------------------------------------------------------ the task registry


def test_a_new_task_family_is_one_registry_entry(resnet_dir, tmp_path, monkeypatch):
    from transformers import ResNetForImageClassification

    from hf_fisher.adapters import ImageClassifier, InputSpace, Task, register_task, tasks

    class ToyForImageScoring(ResNetForImageClassification):
        """A model class transformers' Auto classes do not know."""

    directory = tmp_path / "toy"
    shutil.copytree(resnet_dir, directory)
    model = ToyForImageScoring.from_pretrained(directory, dtype=torch.float32).eval()
    model.save_pretrained(directory)  # config.json now names the architecture ToyForImageScoring
    with pytest.raises(NotAClassifierError, match="ToyForImageScoring, which is not a classifier"):
        load_classifier(directory, device="cpu")

    monkeypatch.setattr(tasks, "TASKS", list(tasks.TASKS))  # the registry is restored afterwards
    space = InputSpace("pixels", (0.0, 1.0), frozenset({"kl_check", "noise"}))
    register_task(
        Task(
            name="image-scoring",
            adapter=ImageClassifier,
            model_class=ToyForImageScoring,
            spaces=(space,),
            architecture="ForImageScoring$",
            example="*ForImageScoring",
        )
    )
    classifier = load_classifier(directory, device="cpu")

    assert type(classifier) is ImageClassifier and type(classifier.model) is ToyForImageScoring
    assert classifier.source["task"] == "image-scoring"
    assert classifier.source["architecture"] == "ToyForImageScoring"
    assert classifier.space is space and classifier.clip == (0.0, 1.0)
    assert classifier.capabilities == {"kl_check", "noise"}
    pixels = torch.rand((2, *classifier.input_shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(pixel_values=classifier.normalize(pixels)).logits
        torch.testing.assert_close(classifier(pixels), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(
        ModelLoadError, match=r"input_space='normalized' .* use one of \['pixels'\]"
    ):
        load_classifier(directory, input_space="normalized", device="cpu")


def test_unknown_input_spaces_and_companions_are_refused():
    from hf_fisher.adapters import InputSpace, ModuleClassifier

    with pytest.raises(ValueError, match=r"unknown companions \['attack'\]"):
        InputSpace("pixels", (0.0, 1.0), frozenset({"attack"}))
    common = {"input_shape": (2,), "id2label": {}, "source": {}, "device": "cpu"}
    with pytest.raises(ModelLoadError, match=r"input_space='pixel'; use one of \['pixels'"):
        ModuleClassifier(torch.nn.Linear(2, 2), input_space="pixel", dtype=torch.float32, **common)
    classifier = ModuleClassifier(
        torch.nn.Linear(2, 2), input_space="raw", dtype=torch.float32, **common
    )
    assert classifier.capabilities == classifier.space.capabilities and classifier.clip is None


def _companion_requests():
    """One CompanionOptions per companion, each asking for that measurement alone."""
    from hf_fisher.companions import CompanionOptions

    return {
        "attacks": CompanionOptions(attacks="l2", eps_max=1.0),
        "noise": CompanionOptions(noise=True),
        "kl_check": CompanionOptions(kl_check=True),
        "clever": CompanionOptions(clever=True),
        "frequency": CompanionOptions(frequency=True),
        "bound": CompanionOptions(bound=True),
        "path_separation": CompanionOptions(path_separation=True),
    }


def test_capabilities_and_clip_agree_with_the_companions(vit_dir, bert_dir):
    from hf_fisher.adapters import COMPANIONS
    from hf_fisher.companions import check_companions

    stack = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    classifiers = {
        "pixels": load_classifier(vit_dir, device="cpu"),
        "normalized": load_classifier(vit_dir, input_space="normalized", device="cpu"),
        "embeddings": load_classifier(bert_dir, device="cpu"),
        "raw": load_classifier(stack, input_shape=(4,)),
    }
    expected = {
        "pixels": COMPANIONS,
        "normalized": COMPANIONS - {"frequency"},
        "embeddings": {"attacks", "noise", "kl_check", "clever"},
        "raw": COMPANIONS - {"frequency"},
    }
    requests = _companion_requests()
    assert set(requests) == COMPANIONS
    for space, classifier in classifiers.items():
        assert classifier.input_space == space
        assert classifier.capabilities == expected[space], space
        assert classifier.clip == ((0.0, 1.0) if space == "pixels" else None)
        for name, options in requests.items():
            if name == "bound" and classifier.modality == "image":
                continue  # the bound also needs a plain nn.Sequential: refused for other reasons
            if name in classifier.capabilities:
                check_companions(classifier, options)
            else:
                with pytest.raises(InputError):
                    check_companions(classifier, options)


def test_only_the_adapters_import_transformers():
    """Every transformers model class, processor and tokenizer is reached through adapters/.

    hf_fisher/testing is exempt: its builders create tiny transformers models for tests, the
    way a user would, and are not used by the library itself.
    """
    import ast
    from pathlib import Path

    import hf_fisher

    root = Path(hf_fisher.__file__).parent
    exempt = (root / "adapters", root / "testing")
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if any(path.is_relative_to(folder) for folder in exempt):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module or ""]
            else:
                continue
            if any(module.split(".")[0] == "transformers" for module in modules):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert offenders == []
