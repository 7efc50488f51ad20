"""Every way a new user's input has made hf-fisher silently wrong or crash, one row each.

Each row ends in either a correct result (``check`` asserts it against an independent truth)
or a clear typed error raised before any compute is spent (``error`` and ``match``). The rows
are grouped by the layer that owns the fix; add new rows to the matching section so the list
keeps growing.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, AutoTokenizer

from hf_fisher.adapters import load_classifier
from hf_fisher.cli import main
from hf_fisher.companions import CompanionOptions
from hf_fisher.digits import DEFAULT_MODEL_DIR, load_digits_dataset
from hf_fisher.errors import (
    DatasetError,
    InputError,
    ModelLoadError,
    ResultsError,
    SubmissionError,
)
from hf_fisher.results import load_results
from hf_fisher.runner import evaluate_robustness
from hf_fisher.testing.dense import dense_fisher, dense_spectrum
from hf_fisher.testing.models import TEXT_CORPUS, build_bert


@dataclass(frozen=True)
class Case:
    """One bad input: ``run(tmp_path)`` either raises ``error`` matching ``match`` or returns a
    value that ``check`` verifies."""

    id: str
    run: Callable[[Path], Any]
    error: type[BaseException] | None = None
    match: str | None = None
    check: Callable[[Any], None] | None = None


# --- data: labels, images, text, columns --------------------------------------------------

FASHION_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
"""Fashion-MNIST's class names, given to the bundled digits model: sorted, they are not in
id order, so an imagefolder named by them numbers its classes differently from the model."""
NUM_IMAGES = 30


def _cli(*args: Any) -> dict:
    """Run ``hf-fisher evaluate`` in-process into ``--out`` (the last argument) and load it."""
    assert main(["evaluate", "--no-progress", *map(str, args)]) == 0
    return load_results(args[-1])


def _digits_model(directory: Path, names: list[str]) -> Path:
    """A copy of the bundled digits ResNet whose classes carry ``names`` (weights unchanged)."""
    model = directory / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, model)
    config = json.loads((model / "config.json").read_text())
    config["id2label"] = {str(i): name for i, name in enumerate(names)}
    config["label2id"] = {name: i for i, name in enumerate(names)}
    (model / "config.json").write_text(json.dumps(config))
    return model


def _imagefolder(root: Path, folder_of: Callable[[int], str], bits: int = 8) -> Path:
    """Real digit scans as PNGs in one folder per class, the way users build an imagefolder.

    The file name keeps the digit (the true model id) so the truth never depends on how the
    dataset loader numbers the folders.
    """
    rows = load_digits_dataset("test").select(range(NUM_IMAGES))
    for position, (image, digit) in enumerate(zip(rows["image"], rows["label"], strict=True)):
        folder = root / folder_of(digit)
        folder.mkdir(parents=True, exist_ok=True)
        if bits == 16:
            image = Image.fromarray(np.asarray(image).astype(np.uint16) * 257)  # v/255 exactly
        image.save(folder / f"{position:03d}-digit{digit}.png")
    return root


def _truth(model_dir: Path, folder: Path, bits: int = 8) -> tuple[list[int], list[int]]:
    """True ids (from the file names) and a direct forward pass of the checkpoint, both in the
    dataset's row order: pixels / 255, the processor's mean/std by hand, argmax of the logits."""
    rows = datasets.load_dataset(str(folder), split="train")
    paths = [e["path"] for e in rows.cast_column("image", datasets.Image(decode=False))["image"]]
    processor = json.loads((model_dir / "preprocessor_config.json").read_text())
    model = AutoModelForImageClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    pixels = np.stack([np.asarray(Image.open(path), dtype=np.float64) for path in paths])
    pixels = pixels / (2.0**bits - 1)
    inputs = (pixels - processor["image_mean"][0]) / processor["image_std"][0]
    with torch.no_grad():
        logits = model(pixel_values=torch.tensor(inputs[:, None], dtype=torch.float32)).logits
    labels = [int(Path(path).stem.split("digit")[1]) for path in paths]
    return labels, logits.argmax(1).tolist()


def _check_against_truth(results: dict, truth: tuple[list[int], list[int]]) -> None:
    labels, predicted = truth
    records = results["per_sample"]
    assert [r["label"] for r in records] == labels
    assert [r["predicted"] for r in records] == predicted
    correct = [p == y for p, y in zip(predicted, labels, strict=True)]
    assert [r["correct"] for r in records] == correct
    accuracy = np.mean(correct)
    assert results["summary"]["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert accuracy > 0.9  # the real model on real digits: a misalignment drops it to ~0.3


def _folder_name(name: str) -> str:
    return name.replace("/", "_").replace(" ", "_")


def _run_named_imagefolder(tmp_path: Path) -> tuple[dict, tuple]:
    model = _digits_model(tmp_path, FASHION_NAMES)
    folder = _imagefolder(tmp_path / "folder", lambda d: _folder_name(FASHION_NAMES[d]))
    results = _cli(model, "--dataset", folder, "--split", "train", "--out", tmp_path / "out")
    return results, _truth(model, folder)


def _check_named_imagefolder(outcome: tuple[dict, tuple]) -> None:
    results, truth = outcome
    _check_against_truth(results, truth)
    expected = {_folder_name(name): model_id for model_id, name in enumerate(FASHION_NAMES)}
    assert results["dataset"]["label_mapping"] == expected
    assert results["dataset"]["label_mapping_source"] == "by-name"


def _run_unmatched_names(tmp_path: Path) -> None:
    model = _digits_model(tmp_path, FASHION_NAMES)
    names = [*FASHION_NAMES[:9], "Boot"]
    folder = _imagefolder(tmp_path / "folder", lambda d: _folder_name(names[d]))
    evaluate_robustness(str(model), str(folder), split="train", progress=False)


def _run_given_mapping(tmp_path: Path) -> tuple[dict, tuple]:
    model = _digits_model(tmp_path, FASHION_NAMES)
    names = [*FASHION_NAMES[:9], "Boot"]
    folder = _imagefolder(tmp_path / "folder", lambda d: _folder_name(names[d]))
    mapping = tmp_path / "mapping.json"
    mapping.write_text(json.dumps({"Ankle boot": "Boot"}))
    out = tmp_path / "out"
    args = ("--dataset", folder, "--split", "train", "--label-mapping", mapping, "--out", out)
    results = _cli(model, *args)
    return results, _truth(model, folder)


def _check_given_mapping(outcome: tuple[dict, tuple]) -> None:
    results, truth = outcome
    _check_against_truth(results, truth)
    assert results["dataset"]["label_mapping"]["Boot"] == 9
    assert results["dataset"]["label_mapping"]["T-shirt_top"] == 0
    assert results["dataset"]["label_mapping_source"] == "given"


@contextmanager
def _log_messages(name: str) -> Iterator[list[str]]:
    """Collect the messages logged by the logger ``name`` while the block runs."""
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger(name).addHandler(handler)
    try:
        yield messages
    finally:
        logging.getLogger(name).removeHandler(handler)


def _run_generic_model_names(tmp_path: Path) -> tuple[dict, list[str]]:
    """A model with LABEL_0.. names and a dataset whose ClassLabel names cannot match them."""
    model = _digits_model(tmp_path, [f"LABEL_{i}" for i in range(10)])
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    rows = load_digits_dataset("test").select(range(NUM_IMAGES))
    rows = rows.cast_column("label", datasets.ClassLabel(names=words))
    with _log_messages("hf_fisher.labels") as messages:
        report = evaluate_robustness(str(model), rows, progress=False)
    return report.results, messages


def _check_generic_model_names(outcome: tuple[dict, list[str]]) -> None:
    results, messages = outcome
    assert results["dataset"]["label_mapping_source"] == "ids"
    assert results["dataset"]["label_mapping"]["three"] == 3
    assert [r["label"] for r in results["per_sample"]] == load_digits_dataset("test")["label"][
        :NUM_IMAGES
    ]
    warning = "taking the dataset's ClassLabel ids as the model's class ids"
    assert any(warning in message for message in messages)


def _run_sixteen_bit_pngs(tmp_path: Path) -> tuple[dict, dict, tuple]:
    runs = {}
    for bits in (8, 16):
        folder = _imagefolder(tmp_path / f"png{bits}", str, bits=bits)
        out = tmp_path / f"out{bits}"
        runs[bits] = _cli(DEFAULT_MODEL_DIR, "--dataset", folder, "--split", "train", "--out", out)
    return runs[8], runs[16], _truth(DEFAULT_MODEL_DIR, tmp_path / "png16", bits=16)


def _check_sixteen_bit_pngs(outcome: tuple[dict, dict, tuple]) -> None:
    eight, sixteen, truth = outcome
    _check_against_truth(sixteen, truth)
    assert sixteen["summary"]["accuracy"] == eight["summary"]["accuracy"]
    for key in ("spectral_norm", "trace", "probability"):
        values = [r[key] for r in sixteen["per_sample"]]
        assert values == pytest.approx([r[key] for r in eight["per_sample"]], rel=1e-5, abs=1e-9)


def _run_bundled_train_split(tmp_path: Path) -> dict:
    return _cli("--split", "train", "--num-samples", 5, "--out", tmp_path / "out")


def _check_bundled_train_split(results: dict) -> None:
    train = load_digits_dataset("train")
    dataset = results["dataset"]
    assert dataset["split"] == "train"
    assert dataset["num_rows"] == len(train) == 1437
    assert [r["index"] for r in results["per_sample"]] == dataset["indices"]
    assert [r["label"] for r in results["per_sample"]] == train.select(dataset["indices"])["label"]


def _run_other_split_of_a_dataset(tmp_path: Path) -> None:
    evaluate_robustness(dataset=load_digits_dataset("test"), split="train", progress=False)


def _text_csv(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    folder = tmp_path / "csv"
    folder.mkdir()
    with open(folder / "test.csv", "w", newline="", encoding="utf-8") as stream:
        csv.writer(stream).writerows([("text", "label"), *rows])
    return folder


MISSING_TEXT_ROWS = [
    ("the movie was wonderful", "0"),
    ("", "1"),  # an empty cell
    ("   ", "2"),  # whitespace only
    ("a dull film with a terrible plot", "1"),
    ("nan", "0"),  # pandas reads it as a missing value
    ("great music and a great cast", "2"),
]


def _run_missing_text(tmp_path: Path) -> tuple[dict, list[float]]:
    bert = build_bert(tmp_path / "bert")
    folder = _text_csv(tmp_path, MISSING_TEXT_ROWS)
    results = _cli(bert, "--dataset", folder, "--out", tmp_path / "out")
    kept = [0, 3, 5]
    texts = [MISSING_TEXT_ROWS[i][0] for i in kept]
    reference = evaluate_robustness(
        str(bert), datasets.Dataset.from_dict({"text": texts}), progress=False
    )
    return results, [r["spectral_norm"] for r in reference.per_sample]


def _check_missing_text(outcome: tuple[dict, list[float]]) -> None:
    results, reference = outcome
    assert [s["index"] for s in results["skipped"]] == [1, 2, 4]
    assert all("missing text in column(s) ['text']" in s["reason"] for s in results["skipped"])
    assert [r["index"] for r in results["per_sample"]] == [0, 3, 5]
    assert [r["label"] for r in results["per_sample"]] == [0, 1, 2]
    assert [r["spectral_norm"] for r in results["per_sample"]] == pytest.approx(reference, rel=1e-5)


def _run_three_text_columns(tmp_path: Path) -> None:
    rows = datasets.Dataset.from_dict({"a": ["x"], "b": ["y"], "c": ["z"], "label": [0]})
    bert = build_bert(tmp_path / "bert")
    evaluate_robustness(str(bert), rows, input_columns=["a", "b", "c"], progress=False)


def _run_two_columns_on_images(tmp_path: Path) -> None:
    rows = load_digits_dataset("test").select(range(2))
    rows = rows.add_column("caption", ["a", "b"])
    evaluate_robustness(dataset=rows, input_columns=["image", "caption"], progress=False)


def _run_long_text(tmp_path: Path) -> tuple[dict, list[float], list[str]]:
    """A text 3x longer than BERT's 64 positions, through a tokenizer with no model_max_length."""
    bert = build_bert(tmp_path / "bert")
    tokenizer = AutoTokenizer.from_pretrained(bert)
    assert tokenizer.model_max_length > 1e20  # transformers' "unset" sentinel
    long = " ".join(TEXT_CORPUS * 3)
    assert len(tokenizer(long)["input_ids"]) > 150
    rows = datasets.Dataset.from_dict({"text": [long, TEXT_CORPUS[0]], "label": [0, 1]})
    with _log_messages("hf_fisher.adapters") as messages:
        report = evaluate_robustness(str(bert), rows, progress=False)
    classifier = load_classifier(bert, device="cpu", dtype=torch.float64)
    truth = []
    for text in (long, TEXT_CORPUS[0]):
        encoding = tokenizer([text], truncation=True, max_length=64, return_tensors="pt")
        batch = classifier.prepare(dict(encoding))
        fisher = dense_fisher(classifier.logit_fn(batch), batch.inputs, batch.space_mask)
        truth.append(float(dense_spectrum(fisher)[0][0, 0]))
    return report.results, truth, messages


def _check_long_text(outcome: tuple[dict, list[float], list[str]]) -> None:
    results, truth, messages = outcome
    assert [r["spectral_norm"] for r in results["per_sample"]] == pytest.approx(truth, rel=1e-3)
    assert any("truncated 1 of 2 texts to the model's limit of 64 tokens" in m for m in messages)


def _run_missing_data_file(tmp_path: Path) -> None:
    """A data file that is not there, with a model that does not exist either: the file is
    checked first, so the error names it (loading the model first took 72 s to fail)."""
    evaluate_robustness("no-such/model", str(tmp_path / "sentences" / "test.csv"))


def _run_data_files_matching_nothing(tmp_path: Path) -> None:
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "a.json").write_text('{"text": "fine", "label": 0}\n')
    evaluate_robustness("no-such/model", str(tmp_path), data_files="parts/*.jsonl")


def _run_streamed_tensor(tmp_path: Path) -> None:
    """A tensor cannot be streamed; refused before the (missing) model is looked up."""
    evaluate_robustness("no-such/model", torch.rand(4, 1, 32, 32), streaming=True)


DATA_CASES: list[Case] = [
    # 1. labels are matched to the model's id2label by name, not by the dataset's own order
    Case(
        "imagefolder-class-names-aligned-to-model-ids",
        _run_named_imagefolder,
        check=_check_named_imagefolder,
    ),
    Case(
        "unmatched-label-names-refused",
        _run_unmatched_names,
        error=DatasetError,
        match=r"dataset labels \['Boot'\] match none of the model's labels \['T-shirt/top'",
    ),
    Case("label-mapping-json-file", _run_given_mapping, check=_check_given_mapping),
    Case(
        "generic-model-labels-take-classlabel-ids",
        _run_generic_model_names,
        check=_check_generic_model_names,
    ),
    # 6. 16-bit PNGs are scaled by their bit depth, not clipped by convert("L")
    Case(
        "sixteen-bit-png-imagefolder-equals-eight-bit",
        _run_sixteen_bit_pngs,
        check=_check_sixteen_bit_pngs,
    ),
    # 8. the bundled digits honour --split; a Dataset of one split is not recorded as another
    Case("bundled-digits-train-split", _run_bundled_train_split, check=_check_bundled_train_split),
    Case(
        "bundled-digits-unknown-split-refused",
        lambda tmp_path: evaluate_robustness(split="validation", progress=False),
        error=DatasetError,
        match=r"got split 'validation'; the digits dataset has splits \['train', 'test'\]",
    ),
    Case(
        "dataset-of-another-split-refused",
        _run_other_split_of_a_dataset,
        error=DatasetError,
        match="the dataset passed is the 'test' split, but split 'train' was asked for",
    ),
    # 9. missing text is skipped and listed, not scored as the word "None"
    Case("missing-text-cells-skipped", _run_missing_text, check=_check_missing_text),
    # 12. input columns: what is accepted; text longer than the model's positions is truncated
    Case(
        "three-text-input-columns-refused",
        _run_three_text_columns,
        error=DatasetError,
        match=r"got input columns \['a', 'b', 'c'\]; hf-fisher takes one image column, one text",
    ),
    Case(
        "two-input-columns-on-an-image-model-refused",
        _run_two_columns_on_images,
        error=DatasetError,
        match=r"got input columns \['image', 'caption'\]",
    ),
    Case("long-text-truncated-to-position-limit", _run_long_text, check=_check_long_text),
    # data files (issue 17): a missing path is named before the model loads, not a Hub error
    Case(
        "missing-data-file-named-before-model-load",
        _run_missing_data_file,
        error=DatasetError,
        match=r"--dataset .*sentences/test\.csv: no such file or directory",
    ),
    Case(
        "data-files-glob-matching-nothing-refused",
        _run_data_files_matching_nothing,
        error=DatasetError,
        match=r"--data-files parts/\*\.jsonl: no such file or directory \(looked in ",
    ),
    # streaming (issue 14): what cannot be read as a stream is refused, naming the fix
    Case(
        "streaming-an-in-memory-tensor-refused",
        _run_streamed_tensor,
        error=DatasetError,
        match=r"in-memory tensor \(already loaded\): drop --streaming",
    ),
]

# --- estimators: methods, traces, convergence, intervals, dtypes, multi-label --------------


def _two_class_lanczos_trace(tmp_path: Path) -> tuple[Any, Any]:
    import torch

    from hf_fisher import fisher_spectrum
    from hf_fisher.testing.dense import dense_fisher, dense_spectrum
    from hf_fisher.testing.models import build_mlp

    net = build_mlp(input_shape=(10,), num_classes=2, dtype=torch.float64).eval()
    x = torch.randn(16, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = fisher_spectrum(net, x, method="lanczos", dtype=torch.float64)
    return result, dense_spectrum(dense_fisher(net, x))[1]


def _check_exact_trace(outcome: tuple[Any, Any]) -> None:
    import torch

    result, trace = outcome
    assert (result.trace_standard_error == 0).all()
    torch.testing.assert_close(result.trace, trace, rtol=1e-10, atol=0)
    assert (result.trace >= result.spectral_norm).all()


def _flat_spectrum_flags(method: str) -> Callable[[Path], tuple[Any, Any]]:
    def run(tmp_path: Path) -> tuple[Any, Any]:
        import torch

        from hf_fisher.estimators.lanczos import lanczos
        from hf_fisher.estimators.power import power_iteration

        generator = torch.Generator().manual_seed(0)
        basis, _ = torch.linalg.qr(torch.randn(8, 60, 60, generator=generator, dtype=torch.float64))
        spectrum = torch.cat([torch.tensor([1.0, 0.97]), 0.9 * torch.rand(58, generator=generator)])
        matrices = basis @ torch.diag(spectrum.double()) @ basis.transpose(1, 2)
        if method == "lanczos":
            estimate = lanczos(matrices, top_k=3, tol=1e-3, max_iter=12)
        else:
            estimate = power_iteration(matrices, tol=1e-3, max_iter=150)
        return estimate, torch.linalg.eigvalsh(matrices).flip(-1)

    return run


def _check_flags(outcome: tuple[Any, Any]) -> None:
    import torch

    estimate, truth = outcome
    theta = estimate.eigenvalues
    relative = estimate.residuals / theta
    assert torch.equal(estimate.converged, (relative <= 1e-3).all(dim=1))
    nearest = (theta[:, :, None] - truth[:, None, :]).abs().amin(dim=2)
    assert (nearest <= estimate.residuals + 1e-12).all()
    assert (nearest[estimate.converged] <= 1e-3 * theta[estimate.converged]).all()


def _multi_label_bert(tmp_path: Path) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification

    from hf_fisher.testing.models import build_bert

    path = build_bert(tmp_path / "bert", num_labels=3)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    model.config.problem_type = "multi_label_classification"
    model.save_pretrained(path)
    return path


_TEXTS = ["the film was great", "awful", "a long and boring story"]


def _multi_label_spectrum(tmp_path: Path) -> tuple[Any, Any]:
    import torch

    from hf_fisher import fisher_spectrum, load_classifier
    from hf_fisher.testing.cases import dense_truth

    path = _multi_label_bert(tmp_path)
    result = fisher_spectrum(path, _TEXTS, method="exact", dtype=torch.float64)
    return result, dense_truth(load_classifier(path, dtype=torch.float64), _TEXTS)


def _check_bernoulli(outcome: tuple[Any, Any]) -> None:
    import torch

    result, (values, trace) = outcome
    assert result.likelihood == "bernoulli"
    torch.testing.assert_close(result.spectral_norm, values[:, 0], rtol=1e-5, atol=0)
    torch.testing.assert_close(result.trace, trace, rtol=1e-5, atol=0)
    torch.testing.assert_close(result.probabilities, torch.sigmoid(result.logits))


def _multi_label_black_box(tmp_path: Path) -> Any:
    from hf_fisher import fisher_spectrum

    return fisher_spectrum(_multi_label_bert(tmp_path), _TEXTS, black_box=True)


def _half_precision(dtype_name: str, on_module: bool) -> Callable[[Path], Any]:
    def run(tmp_path: Path) -> Any:
        import torch

        from hf_fisher import fisher_spectrum
        from hf_fisher.testing.models import build_mlp

        dtype = getattr(torch, dtype_name)
        if on_module:
            return fisher_spectrum(build_mlp(dtype=dtype), torch.rand(2, 2, 3, 4, dtype=dtype))
        return fisher_spectrum(build_mlp(), torch.rand(2, 2, 3, 4), dtype=dtype)

    return run


def _flat_spectrum_sketch(tmp_path: Path) -> tuple[Any, float]:
    """200 black-box sketches of a linear K=10 model whose Fisher spectrum is flat (all ones)."""
    import torch

    from hf_fisher.estimators.blackbox import sketch_fisher

    generator = torch.Generator().manual_seed(0)
    centred = torch.eye(10, dtype=torch.float64) - 0.1
    left = torch.linalg.qr(centred @ torch.randn(10, 9, generator=generator).double()).Q
    right = torch.linalg.qr(torch.randn(64, 9, generator=generator).double()).Q
    weight = 10**0.5 * left @ right.T  # F = W^T (diag(p) - pp^T) W = right right^T at x = 0
    return sketch_fisher(lambda x: x @ weight.T, torch.zeros(200, 64).double()), 1.0


def _check_flat_sketch(result: tuple[Any, float]) -> None:
    est, truth = result
    ratio = est.eigenvalues[:, 0] / truth  # was 1.53 (the sketch's raw top eigenvalue)
    assert abs(ratio.median().item() - 1) <= 0.05
    low, high = est.spectral_norm_ci.T  # covered 0% of the time before
    assert ((low <= truth) & (truth <= high)).double().mean().item() >= 0.93


def _wavy_coordinates(tmp_path: Path) -> tuple[Any, Any, Any]:
    """Coordinates on logits sin(2 W x) with a large step (0.4): a big finite-difference error."""
    import torch

    from hf_fisher.estimators.blackbox import sketch_fisher
    from hf_fisher.testing.dense import dense_fisher, dense_spectrum

    weight = torch.randn(4, 6, generator=torch.Generator().manual_seed(0)).double()
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1)).double()
    values, trace = dense_spectrum(dense_fisher(lambda v: torch.sin(2 * v @ weight.T), x))
    est = sketch_fisher(lambda v: torch.sin(2 * v @ weight.T), x, num_queries=25, step=0.4)
    return est, values[:, 0], trace


def _check_wavy_coordinates(result: tuple[Any, Any, Any]) -> None:
    est, top, trace = result
    assert est.scheme == "coordinates"
    assert ((est.eigenvalues[:, 0] - top).abs() > 1e-3 * top).any()  # a real error to cover
    assert ((est.spectral_norm_ci[:, 0] <= top) & (top <= est.spectral_norm_ci[:, 1])).all()
    assert ((est.trace_ci[:, 0] <= trace) & (trace <= est.trace_ci[:, 1])).all()


def _sketch_confidence(tmp_path: Path) -> Any:
    import torch

    from hf_fisher.estimators.blackbox import sketch_fisher

    return sketch_fisher(lambda x: x[:, :3], torch.zeros(2, 40), confidence=1.5)


def _rayleigh_probes_on_a_token_classifier(tmp_path: Path) -> Any:
    from hf_fisher import fisher_spectrum
    from hf_fisher.testing.models import build_bert_token_classifier

    model = build_bert_token_classifier(tmp_path / "token")
    return fisher_spectrum(model, ["a fine film", "dull"], method="rayleigh-probes")


def _rayleigh_probes_on_per_position_logits(tmp_path: Path) -> Any:
    from hf_fisher import fisher_spectrum

    per_position = torch.nn.Unflatten(1, (2, 3))  # (N, 6) -> (N, T=2, K=3) logits
    return fisher_spectrum(per_position, torch.rand(2, 6), method="rayleigh-probes")


def _black_box_token_classifier(tmp_path: Path) -> Any:
    from hf_fisher import fisher_spectrum
    from hf_fisher.testing.models import build_bert_token_classifier

    model = build_bert_token_classifier(tmp_path / "token")
    return fisher_spectrum(model, ["a fine film", "dull"], black_box=True)


def _position_on_a_text_classifier(tmp_path: Path) -> Any:
    return load_classifier(build_bert(tmp_path / "bert"), position="all")


def _lm_all_alone_and_padded(tmp_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A short text's sequence Fisher, alone and padded into a batch with a long one."""
    from hf_fisher import fisher_spectrum
    from hf_fisher.testing.models import build_causal_lm

    model = load_classifier(build_causal_lm(tmp_path / "lm"), dtype=torch.float64, position="all")
    texts = ["the plot", "an average film, neither good nor bad"]
    alone = fisher_spectrum(model, texts[:1], method="lanczos", tol=1e-9).spectral_norm
    padded = fisher_spectrum(model, texts, method="lanczos", tol=1e-9).spectral_norm[:1]
    return alone, padded


def _check_same_lambda(values: tuple[torch.Tensor, torch.Tensor]) -> None:
    alone, padded = values
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=0)  # eager attention: float32


def _bisection_tolerance(tmp_path: Path) -> Any:
    from hf_fisher.attacks import minimal_epsilon

    return minimal_epsilon(
        lambda x: x[:, :3],
        torch.rand(2, 4),
        torch.zeros(2, dtype=torch.long),
        clip=(0.0, 1.0),
        tolerance=1.5,
    )


def _cw_outside_box(tmp_path: Path) -> Any:
    from hf_fisher.attacks import carlini_wagner_l2

    return carlini_wagner_l2(
        lambda x: x[:, :3],
        torch.full((2, 4), 2.0),
        torch.zeros(2, dtype=torch.long),
        clip=(0.0, 1.0),
    )


def _kl_to_flip(likelihood: str, shape: tuple[int, ...]) -> Callable[[Path], Any]:
    def run(tmp_path: Path) -> Any:
        import torch

        from hf_fisher.flip import kl_to_flip

        return kl_to_flip(torch.zeros(shape), likelihood)

    return run


def _lanczos_start_before_loading(tmp_path: Path) -> Any:
    """An unknown Lanczos start with a model path that does not exist: the knob fails first."""
    from hf_fisher import fisher_spectrum

    return fisher_spectrum(str(tmp_path / "no-model"), torch.rand(2, 4), lanczos_start="top")


def _zero_trace_rtol(tmp_path: Path) -> Any:
    return evaluate_robustness(num_samples=2, trace_rtol=0.0, progress=False)


ESTIMATOR_CASES: list[Case] = [
    Case("lanczos-trace-exact-at-two-classes", _two_class_lanczos_trace, check=_check_exact_trace),
    Case("lanczos-converged-means-every-pair", _flat_spectrum_flags("lanczos"), check=_check_flags),
    Case("power-converged-is-a-residual-bound", _flat_spectrum_flags("power"), check=_check_flags),
    Case("multi-label-config-gets-bernoulli-fisher", _multi_label_spectrum, check=_check_bernoulli),
    Case(
        "multi-label-black-box-refused",
        _multi_label_black_box,
        error=InputError,
        match="black-box.*multi-label.*black_box=False",
    ),
    Case(
        "float16-dtype-refused",
        _half_precision("float16", on_module=False),
        error=InputError,
        match=r"requested dtype is torch.float16.*float32.*float64",
    ),
    Case(
        "bfloat16-module-refused",
        _half_precision("bfloat16", on_module=True),
        error=InputError,
        match=r"MLP's parameter dtype is torch.bfloat16.*dtype=torch.float32",
    ),
    # black-box sketch
    Case("sketch-flat-spectrum-lambda-max", _flat_spectrum_sketch, check=_check_flat_sketch),
    Case("sketch-coordinates-fd-error", _wavy_coordinates, check=_check_wavy_coordinates),
    Case("sketch-confidence-range", _sketch_confidence, error=InputError, match="confidence=1.5"),
    # structured outputs (tokens, pixels, next tokens)
    Case(
        "black-box-on-a-token-classifier-refused",
        _black_box_token_classifier,
        error=InputError,
        match="structured outputs.*use a white-box method",
    ),
    Case(
        "rayleigh-probes-on-a-token-classifier-refused",
        _rayleigh_probes_on_a_token_classifier,
        error=InputError,
        match=r"method 'rayleigh-probes' takes one prediction per input, and this model has "
        r"structured outputs \(tokens\)",
    ),
    Case(
        "rayleigh-probes-on-per-position-logits-refused",
        _rayleigh_probes_on_per_position_logits,
        error=InputError,
        match=r"takes one prediction per input, got logits of shape \(2, 2, 3\)",
    ),
    Case(
        "lm-position-on-a-text-classifier-refused",
        _position_on_a_text_classifier,
        error=ModelLoadError,
        match="position='all' applies to causal language models only",
    ),
    Case("lm-all-padding-is-not-a-position", _lm_all_alone_and_padded, check=_check_same_lambda),
    # attacks
    Case(
        "bisection-tolerance-range",
        _bisection_tolerance,
        error=InputError,
        match=r"tolerance=1.5; pass a relative bracket width in \(0, 1\)",
    ),
    Case(
        "cw-inputs-outside-the-box",
        _cw_outside_box,
        error=InputError,
        match=r"outside clip=\(0.0, 1.0\); pass inputs inside the box",
    ),
    # flip radius
    Case(
        "kl-flip-unknown-likelihood",
        _kl_to_flip("poisson", (2, 3)),
        error=InputError,
        match=r"likelihood='poisson'; pass one of \['bernoulli', 'categorical'\]",
    ),
    Case(
        "kl-flip-logits-not-2d",
        _kl_to_flip("categorical", (3,)),
        error=InputError,
        match=r"logits of shape \(3,\); pass \(N, K\) logits",
    ),
    Case(
        "lanczos-start-unknown-refused-before-loading",
        _lanczos_start_before_loading,
        error=InputError,
        match=r"lanczos_start \(--lanczos-start\) must be one of informed, random, got 'top'",
    ),
    Case(
        "lanczos-trace-rtol-zero-refused",
        _zero_trace_rtol,
        error=InputError,
        match=r"trace_rtol \(--trace-rtol\) must be a finite number > 0, got 0\.0",
    ),
]

# --- runner and CLI: options, resume, output directories ----------------------------------


class _Interrupted(Exception):
    """Stands in for a kill in the middle of a run."""


def _forbidden(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the model was loaded before the options were checked")


def _mlp_inputs(count: int = 5) -> Any:
    import torch

    return torch.randn(count, 2, 3, 4, generator=torch.Generator().manual_seed(0))


def _before_loading(**options: Any) -> Callable[[Path], Any]:
    """``evaluate_robustness(**options)`` with model loading forbidden: it must fail first."""

    def run(tmp_path: Path) -> Any:
        from hf_fisher import runner

        kwargs = {"progress": False, **options}
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(runner, "load_classifier", _forbidden)
            if kwargs.pop("no_cuda", False):
                patch.setattr("torch.cuda.is_available", lambda: False)
            if kwargs.pop("one_cuda", False):
                patch.setattr("torch.cuda.is_available", lambda: True)
                patch.setattr("torch.cuda.device_count", lambda: 1)
            if kwargs.get("out_dir") == "READ-ONLY":  # root ignores chmod: fail the probe
                kwargs["out_dir"] = tmp_path / "out"

                def denied(*args: Any, **ignored: Any) -> Any:
                    raise PermissionError(13, "Permission denied")

                patch.setattr("tempfile.mkstemp", denied)
            elif kwargs.get("out_dir") == "A-FILE":
                kwargs["out_dir"] = tmp_path / "results.txt"
                kwargs["out_dir"].write_text("not a directory")
            return runner.evaluate_robustness(**kwargs)

    return run


def _cli_before_loading(*args: str) -> Callable[[Path], Any]:
    """``hf-fisher evaluate ARGS`` with model loading forbidden: (exit code, stderr)."""

    def run(tmp_path: Path) -> tuple[int, str]:
        import contextlib
        import io

        from hf_fisher import runner
        from hf_fisher.cli import main

        stderr = io.StringIO()
        with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
            patch.setattr(runner, "load_classifier", _forbidden)
            code = main(["evaluate", "--no-progress", *args])
        return code, stderr.getvalue()

    return run


def _one_line_exit_2(expected: str) -> Callable[[tuple[int, str]], None]:
    def check(outcome: tuple[int, str]) -> None:
        code, stderr = outcome
        assert code == 2
        assert stderr.count("\n") == 1 and stderr.startswith("hf-fisher: error: "), stderr
        assert expected in stderr, stderr

    return check


def _interrupted_run(out: Path, model: Any, dataset: Any, batches: int = 1, **options: Any):
    """Start a run into ``out`` and kill it after ``batches`` batches (as a kill would)."""
    import hf_fisher.spectrum as spectrum_module
    from hf_fisher.runner import evaluate_robustness

    real = spectrum_module.spectrum_of_batch
    calls = []

    def dies(*args: Any, **kwargs: Any) -> Any:
        if len(calls) == batches:
            raise _Interrupted
        calls.append(1)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(spectrum_module, "spectrum_of_batch", dies)
        with pytest.raises(_Interrupted):
            evaluate_robustness(model, dataset, out_dir=out, progress=False, **options)


def _auto_once_per_run(tmp_path: Path) -> list[str]:
    """71 samples in batches of 64 and 7, where ``auto`` per batch picks lanczos, then exact."""
    import hf_fisher.spectrum as spectrum_module
    from hf_fisher.runner import evaluate_robustness
    from hf_fisher.testing.models import build_mlp

    with pytest.MonkeyPatch.context() as patch:  # exact fits batches <= 10 of (K-1) x d floats
        patch.setattr(spectrum_module, "EXACT_MAX_ROW_BYTES", 10 * 3 * 24 * 4)
        report = evaluate_robustness(build_mlp(), _mlp_inputs(71), batch_size=64, progress=False)
    return [record["method"] for record in report.per_sample] + [
        report.results["settings"]["method"]
    ]


def _resume_with_new_weights(tmp_path: Path) -> Any:
    """Retrain (here: perturb) the weights in the model folder between kill and resume."""
    from safetensors.torch import load_file, save_file

    from hf_fisher.runner import evaluate_robustness
    from hf_fisher.testing.models import build_resnet

    model = build_resnet(tmp_path / "model", num_channels=1)
    data = _mlp_inputs(4)[:, :1, :2, :2].repeat(1, 1, 8, 8).clamp(0, 1)  # (4, 1, 16, 16)
    out = tmp_path / "run"
    _interrupted_run(out, model, data, batch_size=2)
    weights = load_file(model / "model.safetensors")
    save_file({k: v * 1.01 if v.is_floating_point() else v for k, v in weights.items()},
              model / "model.safetensors", metadata={"format": "pt"})  # fmt: skip
    return evaluate_robustness(model, data, out_dir=out, resume=True, batch_size=2, progress=False)


def _resume_with_replaced_dataset(tmp_path: Path) -> Any:
    """Replace the dataset saved at the same path (same number of rows) between kill and resume."""
    import os

    from hf_fisher.digits import load_digits_dataset
    from hf_fisher.runner import evaluate_robustness

    digits = load_digits_dataset("test")
    data = tmp_path / "data"
    digits.select(range(4)).save_to_disk(str(data))
    out = tmp_path / "run"
    _interrupted_run(out, None, str(data), batch_size=2)
    replaced = tmp_path / "replaced"
    digits.select(range(4, 8)).save_to_disk(str(replaced))
    for path in replaced.iterdir():
        os.replace(path, data / path.name)  # new files at the same path, as save_to_disk does
    return evaluate_robustness(None, str(data), out_dir=out, resume=True, batch_size=2,
                               progress=False)  # fmt: skip


def _resume_with_corrupt_middle_line(tmp_path: Path) -> Any:
    from hf_fisher.runner import evaluate_robustness
    from hf_fisher.testing.models import build_mlp

    out = tmp_path / "run"
    _interrupted_run(out, build_mlp(), _mlp_inputs(), batches=2, batch_size=1)
    records = out / "partial" / "records-0.jsonl"
    first, second = records.read_text().splitlines()
    records.write_text(f"{first}\n{{not json\n{second}\n")
    return evaluate_robustness(build_mlp(), _mlp_inputs(), out_dir=out, resume=True,
                               batch_size=1, progress=False)  # fmt: skip


def _resume_keeps_a_foreign_partial_folder(tmp_path: Path) -> tuple[str, list[str]]:
    from hf_fisher.errors import ResultsError
    from hf_fisher.runner import evaluate_robustness
    from hf_fisher.testing.models import build_mlp

    mine = tmp_path / "run" / "partial" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("my own notes")
    outcome = []
    for flags in ({"resume": True}, {"overwrite": True}):
        with pytest.raises(ResultsError) as refused:
            evaluate_robustness(build_mlp(), _mlp_inputs(), out_dir=tmp_path / "run",
                                progress=False, **flags)  # fmt: skip
        outcome.append(str(refused.value))
    return mine.read_text(), outcome


def _killed_overwrite(tmp_path: Path) -> list[str]:
    """A finished run, then an ``--overwrite`` run killed before it finishes."""
    from hf_fisher.runner import evaluate_robustness
    from hf_fisher.testing.models import build_mlp

    out = tmp_path / "run"
    evaluate_robustness(build_mlp(), _mlp_inputs(), out_dir=out, progress=False)
    _interrupted_run(out, build_mlp(seed=1), _mlp_inputs(), overwrite=True, batch_size=2)
    return sorted(path.name for path in out.iterdir())


def _failed_results_write(tmp_path: Path) -> tuple[str, list[str], str]:
    """The disk fills up while results are written: a ResultsError saying where records are."""
    import errno
    import os

    from hf_fisher.errors import ResultsError
    from hf_fisher.runner import evaluate_robustness
    from hf_fisher.testing.models import build_mlp

    out = tmp_path / "run"
    real = os.replace

    def full(source: Any, target: Any) -> None:
        if Path(target).name == "results.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(source, target)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", full)
        with pytest.raises(ResultsError) as failed:
            evaluate_robustness(build_mlp(), _mlp_inputs(), out_dir=out, progress=False)
    left = sorted(path.name for path in out.iterdir())
    return str(failed.value), left, (out / "partial" / "records-0.jsonl").read_text()


class _FullDisk:
    """A record file on a full disk: every write fails."""

    def __init__(self, path: Any, *args: Any, **kwargs: Any) -> None:
        self.name = str(path)

    def write(self, text: str) -> int:
        import errno

        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self) -> None:
        pass


def _full_disk_while_appending(tmp_path: Path) -> Any:
    from hf_fisher import runner
    from hf_fisher.testing.models import build_mlp

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "open", _FullDisk, raising=False)  # the record files only
        return runner.evaluate_robustness(build_mlp(), _mlp_inputs(), out_dir=tmp_path / "run",
                                          progress=False)  # fmt: skip


def _interrupted_table_write(tmp_path: Path) -> tuple[str, str]:
    """Writing per_sample.csv fails half-way: the previous table must survive whole."""
    import csv
    import errno

    from hf_fisher.results import write_results
    from hf_fisher.runner import evaluate_robustness
    from hf_fisher.testing.models import build_mlp

    out = tmp_path / "run"
    results = evaluate_robustness(build_mlp(), _mlp_inputs(), out_dir=out, progress=False).results
    before = (out / "per_sample.csv").read_text()

    def dies(self: Any, rows: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.MonkeyPatch.context() as patch, pytest.raises(OSError):
        patch.setattr(csv.DictWriter, "writerows", dies)
        write_results(results, out)
    return before, (out / "per_sample.csv").read_text()


def _batch_rounding_within_tolerance(tmp_path: Path) -> float:
    """The same float32 samples in batches of 5 and of 1: the relative gap and the tolerance."""
    from hf_fisher.runner import evaluate_robustness
    from hf_fisher.testing import tolerance_for

    runs = [
        evaluate_robustness(num_samples=5, batch_size=size, progress=False).per_sample
        for size in (5, 1)
    ]
    gap = max(
        abs(a[key] - b[key]) / abs(b[key])
        for a, b in zip(*runs, strict=True)
        for key in ("spectral_norm", "trace")
    )
    return gap / tolerance_for("float32")


def _zero_shot(tmp_path: Path, **options: Any) -> Any:
    """Evaluate a tiny CLIP (a zero-shot dual encoder) on four random images."""
    from hf_fisher.testing.models import build_clip

    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return evaluate_robustness(build_clip(tmp_path / "clip"), images, progress=False, **options)


def _list_labels_single_label_model(tmp_path: Path) -> Any:
    """Multi-label rows (lists of class names) given to a softmax (single-label) BERT."""
    rows = {"text": ["good", "bad"], "labels": [["class_0"], ["class_1", "class_2"]]}
    dataset = datasets.Dataset.from_dict(rows)
    return evaluate_robustness(build_bert(tmp_path / "bert"), dataset, progress=False)


RUNNER_CASES: list[Case] = [
    # 2. auto is resolved once per run: a short last batch no longer switches to exact.
    Case(
        "runner-auto-once-per-run",
        _auto_once_per_run,
        check=lambda methods: (
            None if set(methods) == {"lanczos"} else pytest.fail(f"methods {set(methods)}")
        ),
    ),
    # 11. --resume compares the content of the weights and of the data, not their paths.
    Case(
        "runner-resume-changed-weights",
        _resume_with_new_weights,
        error=ResultsError,
        match=r"(?s)refusing to resume.*model\.content\.files\.model\.safetensors: partial",
    ),
    Case(
        "runner-resume-replaced-dataset",
        _resume_with_replaced_dataset,
        error=ResultsError,
        match=r"(?s)refusing to resume.*dataset\.content\.sha256: partial run has",
    ),
    # 12. Options are checked before the model is loaded, with a typed error.
    Case(
        "runner-batch-size-0",
        _before_loading(batch_size=0),
        InputError,
        r"batch_size \(--batch-size\) must be an integer >= 1, got 0",
    ),
    Case(
        "runner-batch-size-negative",
        _before_loading(batch_size=-1),
        InputError,
        r"batch_size \(--batch-size\) must be an integer >= 1, got -1",
    ),
    Case(
        "runner-max-memory-unit",
        _before_loading(max_memory="4XB"),
        InputError,
        r"max_memory \(--max-memory\) got '4XB'; pass a budget of at least 1kB like '4GB'",
    ),
    Case(
        "runner-kl-tau-negative",
        _before_loading(kl_tau=-1.0),
        InputError,
        r"kl_tau \(--kl-tau\) must be a finite number > 0, got -1.0",
    ),
    Case(
        "runner-kl-tau-zero",
        _before_loading(kl_tau=0.0),
        InputError,
        r"kl_tau \(--kl-tau\) must be a finite number > 0, got 0.0",
    ),
    Case(
        "runner-kl-tau-nan",
        _before_loading(kl_tau=float("nan")),
        InputError,
        r"kl_tau \(--kl-tau\) must be a finite number > 0, got nan",
    ),
    Case(
        "runner-companion-samples-negative",
        _before_loading(companions=CompanionOptions(noise=True, num_samples=-3)),
        InputError,
        r"num_samples \(--companion-samples\) must be an integer >= 1, got -3",
    ),
    Case(
        "runner-device-bogus",
        _before_loading(device="bogus"),
        InputError,
        r"--device 'bogus' is not a device torch knows.*use cpu, cuda or cuda:N",
    ),
    Case(
        "runner-device-cuda-missing",
        _before_loading(device="cuda", no_cuda=True),
        InputError,
        r"--device 'cuda' asks for CUDA, but torch .* sees no CUDA device",
    ),
    Case(
        "runner-device-index-missing",
        _before_loading(device="cuda:3", one_cuda=True),
        InputError,
        r"--device 'cuda:3': this machine has 1 CUDA device\(s\), cuda:0 to cuda:0",
    ),
    Case(
        "runner-top-k-0",
        _before_loading(top_k=0),
        InputError,
        r"top_k \(--top-k\) must be an integer >= 1, got 0",
    ),
    Case(
        "runner-num-probes-0",
        _before_loading(num_probes=0),
        InputError,
        r"num_probes \(--num-probes\) must be an integer >= 1, got 0",
    ),
    Case(
        "runner-tol-0",
        _before_loading(tol=0.0),
        InputError,
        r"tol \(--tol\) must be a finite number > 0, got 0.0",
    ),
    Case(
        "runner-tol-negative",
        _before_loading(tol=-1e-3),
        InputError,
        r"tol \(--tol\) must be a finite number > 0, got -0.001",
    ),
    Case(
        "runner-max-iter-0",
        _before_loading(max_iter=0),
        InputError,
        r"max_iter \(--max-iter\) must be an integer >= 1, got 0",
    ),
    Case(
        "runner-num-queries-2",
        _before_loading(black_box=True, num_queries=2),
        InputError,
        r"num_queries \(--num-queries\) must be an integer >= 3, got 2",
    ),
    Case(
        "runner-num-samples-0",
        _before_loading(num_samples=0),
        DatasetError,
        r"num_samples must be positive, got 0",
    ),
    Case(
        "runner-out-read-only",
        _before_loading(out_dir="READ-ONLY"),
        ResultsError,
        r"cannot write to --out .*out: Permission denied; choose a directory you can write",
    ),
    Case(
        "runner-out-is-a-file",
        _before_loading(out_dir="A-FILE"),
        ResultsError,
        r"--out .*results\.txt is a file; pass a directory",
    ),
    Case(
        "runner-cli-batch-size-0",
        _cli_before_loading("--batch-size", "0"),
        check=_one_line_exit_2("batch_size (--batch-size) must be an integer >= 1, got 0"),
    ),
    Case(
        "runner-cli-device-bogus",
        _cli_before_loading("--device", "bogus"),
        check=_one_line_exit_2("--device 'bogus' is not a device torch knows"),
    ),
    Case(
        "runner-cli-resume-without-out",
        _cli_before_loading("--resume"),
        check=_one_line_exit_2("--resume needs --out: pass the directory of the run to continue"),
    ),
    # 12. Damaged or foreign files: clear errors, and nothing of the user's is deleted.
    Case(
        "runner-resume-corrupt-middle-line",
        _resume_with_corrupt_middle_line,
        ResultsError,
        r"records-0\.jsonl, line 2: not a record hf-fisher wrote .*rerun with --overwrite",
    ),
    Case(
        "runner-foreign-partial-folder-is-kept",
        _resume_keeps_a_foreign_partial_folder,
        check=lambda outcome: (
            None
            if outcome[0] == "my own notes"
            and all("was not made by hf-fisher" in message for message in outcome[1])
            else pytest.fail(repr(outcome))
        ),
    ),
    Case(
        "runner-killed-overwrite-leaves-no-old-results",
        _killed_overwrite,
        check=lambda names: None if names == ["partial"] else pytest.fail(f"left behind: {names}"),
    ),
    Case(
        "runner-disk-full-at-the-end",
        _failed_results_write,
        check=lambda outcome: (
            None
            if "every per-sample record is kept in" in outcome[0]
            and "--resume" in outcome[0]
            and outcome[1] == ["partial", "per_sample.csv"]  # no .results.json.* temp file
            and outcome[2].count("\n") == 5
            else pytest.fail(repr(outcome))
        ),
    ),
    Case(
        "runner-disk-full-while-appending",
        _full_disk_while_appending,
        ResultsError,
        r"could not append records to .*records-0\.jsonl \(\[Errno 28\] No space left on "
        r"device\); the records written so far are kept there.*--resume",
    ),
    Case(
        "runner-table-write-is-atomic",
        _interrupted_table_write,
        check=lambda tables: None if tables[0] == tables[1] else pytest.fail(repr(tables)),
    ),
    # 12. Tolerances follow the dtype: float32 batch rounding sits well inside tolerance_for.
    Case(
        "runner-float32-batch-rounding-within-tolerance",
        _batch_rounding_within_tolerance,
        check=lambda ratio: None if ratio < 0.5 else pytest.fail(f"gap / tolerance {ratio}"),
    ),
    # 13. A zero-shot model (CLIP) has no head: its classes are candidate labels, checked.
    Case(
        "runner-zero-shot-model-without-candidate-labels",
        _zero_shot,
        error=InputError,
        match=r"zero-shot image model .* name the classes to score, e\.g\. --candidate-labels",
    ),
    Case(
        "runner-zero-shot-one-candidate-label",
        lambda tmp_path: _zero_shot(tmp_path, candidate_labels=["cat"]),
        error=InputError,
        match=r"got candidate labels \['cat'\]; pass at least two non-empty class names",
    ),
    Case(
        "runner-zero-shot-template-without-a-slot",
        lambda tmp_path: _zero_shot(
            tmp_path, candidate_labels=["cat", "dog"], hypothesis_template="a photo"
        ),
        error=InputError,
        match=r"hypothesis template 'a photo'; it needs exactly one \{\}",
    ),
    Case(
        "runner-candidate-labels-for-a-model-with-a-head",
        lambda tmp_path: evaluate_robustness(
            num_samples=2, progress=False, candidate_labels=["cat", "dog"]
        ),
        error=InputError,
        match=r"has its own classification head .* drop --candidate-labels",
    ),
    # 14. Multi-label rows (lists of labels) need a multi-label model.
    Case(
        "runner-list-labels-for-a-single-label-model",
        _list_labels_single_label_model,
        error=DatasetError,
        match=r"column 'labels' holds lists of labels .* the model is single-label \(softmax\)",
    ),
    # Path separation: a share outside (0, 1] is refused before the model loads.
    Case(
        "runner-path-separation-gamma-out-of-range",
        lambda tmp_path: evaluate_robustness(
            "not-a-model-that-would-load",
            num_samples=4,
            progress=False,
            companions=CompanionOptions(path_separation=True, path_gamma=1.5),
        ),
        error=InputError,
        match=r"path_gamma \(--path-gamma\) must be a share in \(0, 1\], got 1\.5",
    ),
    # --paper-compat measures in the normalised space: pixels with it is a contradiction.
    Case(
        "runner-paper-compat-with-pixel-input-space",
        lambda tmp_path: evaluate_robustness(
            num_samples=2, progress=False, paper_compat=True, input_space="pixels"
        ),
        error=InputError,
        match=r"paper_compat \(--paper-compat\) measures in the 'normalized' input space, but "
        r"input_space='pixels' \(--input-space\) was given: drop one of them",
    ),
    # tf32 is a switch: a string such as "yes" is refused before the model loads.
    Case(
        "runner-tf32-not-a-switch",
        lambda tmp_path: evaluate_robustness("not-a-model-that-would-load", tf32="yes"),
        error=InputError,
        match=r"tf32 \(--tf32\) is a switch: pass True or False, got 'yes'",
    ),
]

# --- report: cards, submissions, leaderboard ----------------------------------------------

REPORT_FIXTURE = Path(__file__).parent / "fixtures" / "results_example.json"
USER_CARD = """---
license: apache-2.0  # a comment the user wrote
my_key: {kept: [1, 2]}
model-index:
- name: my-model
  my_entry_key: kept
  results:
  - task:
      type: image-classification
    dataset:
      name: Digits
      type: sklearn-digits
      split: test
    metrics:
    - type: accuracy
      value: 0.97
    source:
      name: Paper
      url: https://example.org/paper
---

# My model

Hand-written text.
"""


def _report_results() -> dict:
    import json

    return json.loads(REPORT_FIXTURE.read_text(encoding="utf-8"))


def _only_insertions(original: str, merged: str) -> list[str]:
    """Chunks inserted into ``original`` to make ``merged``; fails if any original byte changed."""
    import difflib

    old, new = original.splitlines(keepends=True), merged.splitlines(keepends=True)
    ops = difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
    assert all(op[0] in ("equal", "insert") for op in ops), [op for op in ops if op[0] != "equal"]
    return ["".join(new[j1:j2]) for tag, _, _, j1, j2 in ops if tag == "insert"]


def _card_in_folder_with_readme(tmp_path: Path) -> str:
    import os

    from hf_fisher.cli import main

    (tmp_path / "README.md").write_text(USER_CARD, encoding="utf-8")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["card", str(REPORT_FIXTURE)]) == 0  # no --card, no --out
    finally:
        os.chdir(cwd)
    return (tmp_path / "README.md").read_text(encoding="utf-8")


def _check_user_card_kept(merged: str) -> None:
    from huggingface_hub import ModelCard

    group, section = _only_insertions(USER_CARD, merged)
    assert "fisher_robustness" in group and "hf-fisher:start" in section
    sources = {(r.metric_type, r.source_name) for r in ModelCard(merged).data.eval_results}
    assert sources == {("accuracy", "Paper"), ("fisher_robustness", "hf-fisher")}


def _merge_user_card(tmp_path: Path) -> tuple[str, str]:
    from hf_fisher.report import merge_card

    first = str(merge_card(_report_results(), USER_CARD))
    return first, str(merge_card(_report_results(), first))


def _check_merged_twice(cards: tuple[str, str]) -> None:
    first, second = cards
    _check_user_card_kept(first)
    assert second == first


EVIL = "x</a><script>alert(1)</script>\n---\nlicense: mit\n# a: b | c"


def _card_of_malicious_results(tmp_path: Path) -> str:
    from hf_fisher.report import merge_card

    results = _report_results()
    results["model"]["id"] = results["dataset"]["name"] = results["dataset"]["split"] = EVIL
    results["settings"]["input_space"] = results["settings"]["method"] = EVIL
    results["model"]["id2label"]["3"] = EVIL
    return str(merge_card(results, None))


def _check_no_injection(text: str) -> None:
    import yaml
    from huggingface_hub.repocard import REGEX_YAML_BLOCK
    from markdown_it import MarkdownIt

    match = REGEX_YAML_BLOCK.search(text)
    front = yaml.safe_load(match.group(2))
    assert set(front) == {"pipeline_tag", "tags", "model-index"}  # no injected license key
    (entry,) = front["model-index"]
    (group,) = entry["results"]
    assert entry["name"] == group["dataset"]["name"] == group["dataset"]["split"] == EVIL
    assert {m["args"]["input_space"] for m in group["metrics"]} == {EVIL}
    tokens = MarkdownIt("commonmark").enable("table").parse(text[match.end() :])
    html = [t.content.strip() for t in tokens if t.type == "html_block"]
    html += [c.content for t in tokens for c in t.children or [] if c.type == "html_inline"]
    template_html = ["<!-- hf-fisher:start -->", "<sub>", "</sub>", "<!-- hf-fisher:end -->"]
    assert sorted(html) == sorted(template_html)
    headings = [t.tag for t in tokens if t.type == "heading_open"]
    assert headings == ["h1", "h2", "h3", "h3"] and not any(t.type == "hr" for t in tokens)
    rows = [t for t in tokens if t.type == "tr_open"]
    cells = [t for t in tokens if t.type in ("td_open", "th_open")]
    assert len(cells) == 7 * 4 + 6 * 11  # summary 7 columns x 4 rows, per class 6 x 11
    assert len(rows) == 4 + 11


def _push_offline(tmp_path: Path) -> BaseException:
    from unittest import mock

    from huggingface_hub.errors import OfflineModeIsEnabled

    from hf_fisher.report import push_card

    card = tmp_path / "README.md"
    card.write_text("# card\n", encoding="utf-8")
    api = mock.Mock()
    api.create_commit.side_effect = OfflineModeIsEnabled(
        "offline mode is enabled; token hf_SECRETtoken1234567890"
    )
    try:
        push_card("user/model", card, api=api)
    except Exception as error:  # the check looks at which error and its message
        return error
    raise AssertionError("push_card did not raise")


def _check_push_error(error: BaseException) -> None:
    from hf_fisher.errors import HfFisherError

    assert isinstance(error, HfFisherError), repr(error)
    message = str(error)
    assert message.startswith("could not open a pull request on 'user/model': OfflineModeIs")
    assert "\n" not in message and "hf_SECRETtoken1234567890" not in message


def _submit_results_with_nan(tmp_path: Path) -> int:
    import json

    from hf_fisher.cli import build_parser

    results = _report_results()
    results["summary"]["metrics"]["trace"]["p95"] = float("nan")
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results), encoding="utf-8")  # writes the NaN token
    args = build_parser().parse_args(["submit", str(path), "--out", str(tmp_path / "s.json")])
    return args.func(args)


def _leaderboard_with(tmp_path: Path, **change: Any) -> list:
    import json

    from hf_fisher.report import load_submissions, make_submission

    submission = dict(make_submission(_report_results()), **change)
    (tmp_path / "entry.json").write_text(json.dumps(submission), encoding="utf-8")
    return load_submissions(tmp_path)


def _rank_inf_and_nan(tmp_path: Path) -> list[str]:
    from hf_fisher.report import make_submission
    from hf_fisher.report.leaderboard import leaderboard_rows

    base = make_submission(_report_results())
    entries = [
        dict(base, name="unknown", median_kl_radius=float("nan")),
        dict(base, name="finite"),
        dict(base, name="flat", median_kl_radius=float("inf")),
    ]
    return [row["name"][0] for row in leaderboard_rows(entries)]


def _expect(expected: Any) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        assert value == expected

    return check


def _negative_lambda(tmp_path: Path) -> list:
    from hf_fisher.report import make_submission

    submission = make_submission(_report_results())
    submission["metrics"]["spectral_norm"]["median"] = -3.0
    return _leaderboard_with(tmp_path, metrics=submission["metrics"])


def _pixel_and_embedding_tables(tmp_path: Path) -> list[list[str]]:
    from hf_fisher.report import make_submission
    from hf_fisher.report.leaderboard import group_submissions

    base = make_submission(_report_results())
    entries = [
        dict(base, name="image", median_kl_radius=0.1),
        dict(base, name="text", input_space="embeddings", median_kl_radius=2.0),
    ]
    return [[s["name"] for s in group] for group in group_submissions(entries).values()]


def _resubmitted(tmp_path: Path) -> list[float]:
    from hf_fisher.report import make_submission
    from hf_fisher.report.leaderboard import merge_resubmissions

    base = make_submission(_report_results())
    newer = dict(base, created="2099-01-01T00:00:00+00:00", median_kl_radius=0.5)
    return [s["median_kl_radius"] for s in merge_resubmissions([newer, base]).kept]


REPORT_CASES: list[Case] = [
    Case(
        "report-card-without-card-or-out-merges-into-existing-readme",
        _card_in_folder_with_readme,
        check=_check_user_card_kept,
    ),
    Case(
        "report-card-keeps-yaml-comments-unknown-keys-and-other-sources",
        _merge_user_card,
        check=_check_merged_twice,
    ),
    Case(
        "report-card-escapes-every-value-from-results",
        _card_of_malicious_results,
        check=_check_no_injection,
    ),
    Case("report-card-push-offline-one-line-error", _push_offline, check=_check_push_error),
    Case(
        "report-submit-refuses-nan-instead-of-writing-non-standard-json",
        _submit_results_with_nan,
        error=ResultsError,
        match=r"results\.json: summary\.metrics\.trace\.p95 = nan is not a finite number",
    ),
    Case(
        "report-leaderboard-refuses-negative-kl-radius",
        lambda tmp_path: _leaderboard_with(tmp_path, median_kl_radius=-0.5),
        error=ResultsError,
        match=r"entry\.json: invalid submission at median_kl_radius: -0\.5 is less than",
    ),
    Case(
        "report-leaderboard-refuses-750-percent-accuracy",
        lambda tmp_path: _leaderboard_with(tmp_path, clean_acc="750.00"),
        error=ResultsError,
        match=r"entry\.json: invalid submission at clean_acc: '750\.00' is not a percentage",
    ),
    Case(
        "report-leaderboard-ranks-inf-kl-radius-first-and-nan-last",
        _rank_inf_and_nan,
        check=_expect(["flat", "finite", "unknown"]),
    ),
    Case(
        "report-leaderboard-refuses-negative-lambda-max",
        _negative_lambda,
        error=SubmissionError,
        match=r"entry\.json: invalid submission at metrics/spectral_norm/median: -3\.0 is less",
    ),
    Case(
        "report-leaderboard-refuses-nan-kl-tau",
        lambda tmp_path: _leaderboard_with(tmp_path, kl_tau=float("nan")),
        error=SubmissionError,
        match=r"entry\.json: invalid submission at kl_tau = nan: not a finite number; write null",
    ),
    Case(
        "report-leaderboard-refuses-unparseable-created-time",
        lambda tmp_path: _leaderboard_with(tmp_path, created="last Tuesday"),
        error=SubmissionError,
        match=r"entry\.json: invalid submission at created: 'last Tuesday' is not an ISO-8601",
    ),
    Case(
        "report-leaderboard-never-ranks-pixels-against-embeddings",
        _pixel_and_embedding_tables,
        check=_expect([["text"], ["image"]]),
    ),
    Case(
        "report-leaderboard-keeps-only-the-newest-resubmission",
        _resubmitted,
        check=_expect([0.5]),
    ),
]


CASES = DATA_CASES + ESTIMATOR_CASES + RUNNER_CASES + REPORT_CASES


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, tmp_path: Path) -> None:
    assert (case.error is None) != (case.check is None), "a case either raises or checks"
    if case.error is not None:
        with pytest.raises(case.error, match=case.match):
            case.run(tmp_path)
    else:
        case.check(case.run(tmp_path))


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
