"""Structured outputs: causal LMs, token classifiers and segmenters against dense float64 truth.

The engine's case table (:mod:`hf_fisher.testing.cases`) runs every white-box method on each
family; the tests below add the families' own claims (exact and Lanczos values within 1e-5 of
dense truth, per-position shares, masks) and the command line end to end.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from hf_fisher.adapters import load_classifier
from hf_fisher.errors import InputError, ModelLoadError
from hf_fisher.spectrum import fisher_spectrum
from hf_fisher.testing import models
from hf_fisher.testing.cases import WHITE_BOX, FisherEngineTestCase
from hf_fisher.testing.dense import dense_fisher, dense_jacobian

ATTENTION_PRECISION = 1e-5  # HF eager attention keeps its softmax in float32
PROMPTS = [
    "the movie was",
    "a dull film with a terrible",
    "the food was fine but",
    "i loved every minute",
    "nothing happened and the ending",
    "great music, great cast",
    "the plot",
    "an average film, neither good nor bad",
]


def _prompts(classifier):
    return PROMPTS


def _images(classifier):
    generator = torch.Generator().manual_seed(0)
    return torch.rand(8, *classifier.input_shape, generator=generator, dtype=torch.float64)


class TestCausalLM(FisherEngineTestCase):
    """A LLaMA-style causal LM: the next-token Fisher after each prompt (K = vocabulary)."""

    rtol = ATTENTION_PRECISION
    methods = WHITE_BOX

    def build(self, directory):
        return models.build_causal_lm(directory)

    def inputs(self, classifier):
        return PROMPTS


class TestTokenClassifier(FisherEngineTestCase):
    """A BERT token classifier: the product Fisher over its non-special, non-padded tokens."""

    rtol = ATTENTION_PRECISION
    methods = WHITE_BOX

    def build(self, directory):
        return models.build_bert_token_classifier(directory)

    def inputs(self, classifier):
        return PROMPTS


class TestSegformer(FisherEngineTestCase):
    """A SegFormer: the product Fisher over its output grid, in pixel space."""

    rtol = ATTENTION_PRECISION
    methods = WHITE_BOX

    def build(self, directory):
        return models.build_segformer(directory)

    def inputs(self, classifier):
        return _images(classifier)


# --------------------------------------------------------------------------------------------
# Each family against dense float64 truth: values, traces and per-position shares.

BUILDERS = {
    "lm-last": (models.build_causal_lm, {}),
    "lm-all": (models.build_causal_lm, {"position": "all"}),
    "token": (models.build_bert_token_classifier, {}),
    "segformer": (lambda directory: models.build_segformer(directory, image_size=12), {}),
}
# position="all" has T (K-1) gradient rows (63 per token): short texts keep "exact" fast
FAMILY_INPUTS = {
    "lm-last": PROMPTS[:4],
    "lm-all": ["the plot", "the movie was", "i loved"],
    "token": PROMPTS[:4],
}
TRUTH_RTOL = 1e-5  # the brief's bar; eager attention's float32 softmax sets the floor


@pytest.fixture(scope="module")
def family(tmp_path_factory, request):
    """(classifier in float64, raw inputs, dense eigenvalues, dense traces, dense Fisher)."""
    build, options = BUILDERS[request.param]
    directory = build(tmp_path_factory.mktemp(request.param))
    classifier = load_classifier(directory, dtype=torch.float64, **options)
    raw = FAMILY_INPUTS.get(request.param)
    raw = _images(classifier)[:4] if raw is None else raw
    batch = classifier.prepare(raw)
    fishers = torch.cat(
        [
            dense_fisher(classifier.logit_fn(one), one.inputs, one.space_mask)
            for one in (batch.select([i]) for i in range(len(batch)))
        ]
    )
    values, vectors = torch.linalg.eigh(fishers)
    return classifier, raw, batch, values.flip(-1), fishers.diagonal(dim1=1, dim2=2).sum(1), vectors


FAMILIES = pytest.mark.parametrize("family", sorted(BUILDERS), indirect=True)


def _relative(estimate, truth):
    return ((estimate - truth).abs() / truth.abs()).max().item()


@FAMILIES
@pytest.mark.parametrize("method", ["exact", "lanczos"])
def test_lambda_max_and_trace_match_dense_truth(family, method):
    """Exact (dual of T (K-1) rows) and Lanczos (exact trace: probes >= rank) within 1e-5."""
    classifier, raw, _, values, traces, _ = family
    settings = {"tol": 1e-9, "max_iter": 400, "num_probes": 10**6} if method == "lanczos" else {}
    result = fisher_spectrum(classifier, raw, method=method, **settings)
    assert _relative(result.spectral_norm, values[:, 0]) < TRUTH_RTOL
    assert _relative(result.trace, traces) < TRUTH_RTOL
    assert result.trace_standard_error is None or (result.trace_standard_error == 0).all()


def _dense_output_terms(classifier, batch, vector):  # (N, d) -> (N, T)
    terms = []
    for index in range(len(batch)):
        one = batch.select([index])
        logit_fn = classifier.logit_fn(one)
        jacobian = dense_jacobian(logit_fn, one.inputs)[0].double()  # (T K, d)
        probs = torch.softmax(logit_fn(one.inputs)[0].double(), dim=-1)  # (T, K)
        moved = (jacobian @ vector[index]).reshape(probs.shape)
        terms.append((probs * moved**2).sum(-1) - (probs * moved).sum(-1) ** 2)
    return torch.stack(terms)


@FAMILIES
@pytest.mark.parametrize("method", ["exact", "lanczos"])
def test_position_shares_match_the_dense_top_eigenvector(family, method):
    """Output shares (J_t u)^T C_t (J_t u) / lambda_max and input shares |u_position|^2."""
    classifier, raw, batch, values, _, vectors = family
    result = fisher_spectrum(classifier, raw, method=method, tol=1e-9, max_iter=400)
    top = vectors[:, :, -1]  # dense unit top eigenvector (its sign does not matter)
    shape = batch.inputs.shape
    expected_inputs = classifier.input_position_shares(top.reshape(shape) ** 2)
    torch.testing.assert_close(result.input_shares, expected_inputs, rtol=0, atol=1e-6)
    assert torch.allclose(result.input_shares.sum(1), torch.ones(len(batch), dtype=torch.float64))
    if classifier.output_positions == 1:
        assert result.output_shares is None
        return
    terms = _dense_output_terms(classifier, batch, top)
    torch.testing.assert_close(terms.sum(1), values[:, 0], rtol=1e-6, atol=0)
    torch.testing.assert_close(result.output_shares, terms / values[:, :1], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Which positions count.


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory):
    return models.build_bert_token_classifier(tmp_path_factory.mktemp("token"))


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return models.build_causal_lm(tmp_path_factory.mktemp("lm"))


def _position_rows(classifier, batch, index):  # (T,) norms of sample index's Jacobian rows
    one = batch.select([index])
    jacobian = dense_jacobian(classifier.logit_fn(one), one.inputs)[0]
    return jacobian.reshape(one.inputs.shape[1], -1, jacobian.shape[-1]).norm(dim=(1, 2))


def test_token_classifier_excludes_padding_and_special_tokens(token_dir):
    """[CLS], [SEP] and padding have no Fisher; every other token does."""
    classifier = load_classifier(token_dir, dtype=torch.float64)
    batch = classifier.prepare(["dull", "the plot was awful"])  # awful: five word pieces
    ids = batch.context["input_ids"]
    special = torch.isin(ids, torch.tensor(classifier.tokenizer.all_special_ids))
    expected = (batch.context["attention_mask"].bool() & ~special).long()
    assert torch.equal(classifier.output_mask(batch), expected)
    assert special[0].sum() > 2  # [CLS], [SEP] and padding in the short text
    norms = _position_rows(classifier, batch, 0)
    assert torch.equal(norms > 0, expected[0].bool())


def test_lm_all_counts_positions_whose_next_token_is_in_the_text(lm_dir):
    """position='all': the last token and padding predict nothing of the text."""
    classifier = load_classifier(lm_dir, dtype=torch.float64, position="all")
    batch = classifier.prepare(["the plot", "a dull film with a terrible"])
    attention = batch.context["attention_mask"]
    length = int(attention[0].sum())
    expected = torch.zeros_like(attention[0])
    expected[: length - 1] = 1
    assert torch.equal(classifier.output_mask(batch)[0], expected)
    assert torch.equal(_position_rows(classifier, batch, 0) > 0, expected.bool())
    targets = classifier.output_targets(batch)
    assert torch.equal(targets[1, :-1], batch.context["input_ids"][1, 1:])


def test_lm_without_pad_token_pads_with_eos_on_the_right(lm_dir):
    classifier = load_classifier(lm_dir)
    assert classifier.tokenizer.pad_token == classifier.tokenizer.eos_token == "</s>"
    assert classifier.tokenizer.padding_side == "right"
    assert classifier.num_classes == len(classifier.id2label) == len(classifier.tokenizer)


def test_lm_last_reads_each_prompts_own_last_token(lm_dir):
    """A padded batch gives each prompt the logits of its own last token (as if alone)."""
    classifier = load_classifier(lm_dir, dtype=torch.float64)
    alone = [classifier(b.inputs, **b.context) for b in map(classifier.prepare, PROMPTS[:3])]
    batch = classifier.prepare(PROMPTS[:3])
    together = classifier(batch.inputs, **batch.context)
    torch.testing.assert_close(
        together, torch.cat(alone), rtol=ATTENTION_PRECISION, atol=ATTENTION_PRECISION
    )


def test_position_applies_to_causal_lms_only(token_dir):
    with pytest.raises(ModelLoadError, match="applies to causal language models only"):
        load_classifier(token_dir, position="all")


def test_bad_position_is_refused_before_loading(tmp_path):
    with pytest.raises(ModelLoadError, match=r"got position='first'; use 'last'"):
        load_classifier(tmp_path / "missing", position="first")


def test_black_box_is_refused_for_several_output_positions(token_dir):
    with pytest.raises(InputError, match=r"structured outputs \(tokens: several output positions"):
        fisher_spectrum(token_dir, PROMPTS[:2], black_box=True)


# --------------------------------------------------------------------------------------------
# The command line, end to end: a save_pretrained directory and a dataset made as users do.


def _cli(monkeypatch, *argv: str) -> None:
    from hf_fisher.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert main([*argv, "--no-progress"] if argv[0] == "evaluate" else list(argv)) == 0


def _evaluate_and_card(monkeypatch, tmp_path, model, data, *extra) -> dict:
    from hf_fisher.results import load_results

    out = tmp_path / "out"
    _cli(monkeypatch, "evaluate", str(model), "--dataset", str(data), "--out", str(out), *extra)
    _cli(monkeypatch, "card", str(out / "results.json"), "--out", str(out / "README.md"))
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "<!-- hf-fisher:end -->" in card
    return load_results(out / "results.json")  # validates against the schema


def _jsonl_prompts(directory: Path) -> Path:
    directory.mkdir()
    with open(directory / "prompts.jsonl", "w", encoding="utf-8") as handle:
        for text in PROMPTS[:3]:
            handle.write(json.dumps({"text": text}) + "\n")
    return directory


@pytest.mark.slow
@pytest.mark.parametrize("position", ["last", "all"])
def test_cli_causal_lm_on_a_jsonl_text_dataset(monkeypatch, tmp_path, lm_dir, position):
    """Plain text, no labels: no accuracy; with position='all', next-token accuracy."""
    data = _jsonl_prompts(tmp_path / "prompts")
    results = _evaluate_and_card(
        monkeypatch, tmp_path, lm_dir, data, "--split", "train", "--position", position
    )
    assert results["model"]["task"] == "text-generation"
    assert results["settings"]["outputs"] == {"kind": "next-token", "position": position}
    assert results["summary"]["accuracy"] is None
    record = results["per_sample"][0]
    assert record["input_tokens"][0] == "<s>"
    assert len(record["input_shares"]) == len(record["input_tokens"])
    assert abs(sum(record["input_shares"]) - 1) < 1e-9
    if position == "all":
        assert abs(sum(record["output_shares"]) - 1) < 1e-9
        assert record["num_positions"] == len(record["input_tokens"]) - 1
        assert 0 <= results["summary"]["position_accuracy"] <= 1
    else:
        assert "output_shares" not in record and "position_accuracy" not in results["summary"]


@pytest.mark.slow
def test_cli_token_classifier_on_a_csv_dataset(monkeypatch, tmp_path, token_dir):
    data = tmp_path / "sentences"
    data.mkdir()
    with open(data / "test.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sentence", "label"])  # a label column is ignored, with a warning
        writer.writerows([[text, 0] for text in PROMPTS[:3]])
    results = _evaluate_and_card(monkeypatch, tmp_path, token_dir, data)
    assert results["model"]["task"] == "token-classification"
    assert results["dataset"]["label_column"] is None
    record = results["per_sample"][1]
    tokens = record["input_tokens"]
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert record["output_shares"][0] == record["output_shares"][-1] == 0.0
    assert record["num_positions"] == len(tokens) - 2
    assert record["predicted"] in range(results["model"]["num_classes"])


@pytest.mark.slow
def test_cli_segformer_on_a_saved_image_dataset(monkeypatch, tmp_path):
    import datasets
    import numpy as np
    from PIL import Image

    model = models.build_segformer(tmp_path / "segformer")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)) for _ in "abc"]
    features = datasets.Features({"image": datasets.Image()})
    datasets.Dataset.from_dict({"image": images}, features=features).save_to_disk(tmp_path / "d")
    results = _evaluate_and_card(monkeypatch, tmp_path, model, tmp_path / "d")
    assert results["model"]["task"] == "image-segmentation"
    grid = results["settings"]["outputs"]["grid"]
    assert grid == [4, 4]  # SegFormer's logits: a quarter of the 16x16 input
    section = results["pixel_sensitivity"]
    assert len(section["mean_output_shares"]) == 16 and len(section["mean_input_shares"]) == 256
    assert abs(sum(section["mean_output_shares"]) - 1) < 1e-9
    assert (tmp_path / "out" / "robustness_plots" / "pixel_sensitivity.png").is_file()


def test_black_box_is_refused_for_a_causal_lm(lm_dir):
    """One next token, but a vocabulary-sized K: no K x K sketch."""
    with pytest.raises(InputError, match=r"structured outputs \(next-token"):
        fisher_spectrum(lm_dir, PROMPTS[:2], method="sketch")


@pytest.mark.parametrize("name", models.LM_FAMILIES)
def test_each_causal_lm_family_matches_dense_truth(tmp_path, name):
    """LLaMA, Mistral, Qwen2 and GPT-2 (absolute positions, tied output layer) load by their
    architecture name and give the dense next-token Fisher, in a padded batch."""
    directory = models.build_causal_lm(tmp_path / name, family=name)
    classifier = load_classifier(directory, dtype=torch.float64)
    assert classifier.source["task"] == "text-generation"
    batch = classifier.prepare(PROMPTS[:3])
    fishers = torch.cat(
        [
            dense_fisher(classifier.logit_fn(one), one.inputs, one.space_mask)
            for one in (batch.select([i]) for i in range(len(batch)))
        ]
    )
    values = torch.linalg.eigvalsh(fishers)[:, -1]
    result = fisher_spectrum(classifier, PROMPTS[:3], method="lanczos", tol=1e-9)
    assert _relative(result.spectral_norm, values) < TRUTH_RTOL


def test_lm_tokenizer_with_neither_pad_nor_eos_is_refused(tmp_path):
    tokenizer = models.build_lm_tokenizer()
    tokenizer.eos_token = None
    directory = models.build_causal_lm(tmp_path / "lm", tokenizer=tokenizer)
    with pytest.raises(ModelLoadError, match="neither a padding nor an end-of-sequence token"):
        load_classifier(directory)


def test_lm_without_its_tokenizer_is_refused(tmp_path):
    directory = models.build_causal_lm(tmp_path / "lm")
    for path in directory.glob("tokenizer*"):
        path.unlink()
    with pytest.raises(ModelLoadError, match="found no tokenizer.*tokenizer.save_pretrained"):
        load_classifier(directory)
