"""The ``evaluate`` surface: the fisher_robustness metric, its installer and the evaluator."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import datasets
import evaluate
import pytest
import torch

from hf_fisher import metric
from hf_fisher.adapters import load_classifier
from hf_fisher.digits import load_digits_dataset
from hf_fisher.errors import InputError
from hf_fisher.runner import evaluate_robustness
from hf_fisher.testing import tolerance_for
from hf_fisher.testing.dense import dense_fisher, dense_spectrum

REPO = Path(__file__).resolve().parent.parent
METRIC_DIR = REPO / "metrics" / "fisher_robustness"


def assert_close(result: dict, expected: dict, rel: float) -> None:
    """Same keys; floats and lists of floats equal up to ``rel``."""
    assert result.keys() == expected.keys()
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=rel, nan_ok=True), key


TEXTS = ["a fine film", "dull and far too long", "the cast is great", "not worth it at all"]


@pytest.fixture(scope="module")
def digits() -> datasets.Dataset:
    """Six real held-out digits (PIL images + labels)."""
    return load_digits_dataset("test").select(range(6))


@pytest.fixture(scope="module")
def fisher() -> evaluate.EvaluationModule:
    """The metric loaded by path, the way a checkout of the Space is used."""
    return evaluate.load(str(METRIC_DIR))


@pytest.fixture(scope="module")
def digits_expected(default_model_dir: Path, digits: datasets.Dataset) -> dict:
    """The Python API's results on the same digits, flattened to the metric's dict."""
    report = evaluate_robustness(str(default_model_dir), digits, progress=False)
    return metric.flatten_results(report.summary, report.per_sample)


def test_packaged_script_is_the_space_script() -> None:
    assert metric.SCRIPT_PATH.read_bytes() == (METRIC_DIR / "fisher_robustness.py").read_bytes()
    shipped = {path.name for path in METRIC_DIR.iterdir()}
    assert {"README.md", "app.py", "fisher_robustness.py", "requirements.txt"} <= shipped


def test_script_hash_is_evaluates() -> None:
    assert metric.script_hash() == evaluate.loading.files_to_hash([str(metric.SCRIPT_PATH)])


def test_install_metric_layout_and_ensure(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    metric.ensure_metric_installed()
    target = metric.installed_script_path()
    expected = (
        tmp_path
        / "modules"
        / "evaluate_modules"
        / "metrics"
        / "evaluate-metric--fisher_robustness"
        / metric.script_hash()
        / "fisher_robustness.py"
    )
    assert target == expected and target.read_bytes() == metric.SCRIPT_PATH.read_bytes()
    for folder in (expected.parents[i] for i in range(4)):
        assert (folder / "__init__.py").exists()
    os.utime(target, (1, 1))
    metric.ensure_metric_installed()  # present: nothing is rewritten
    assert target.stat().st_mtime == 1
    assert metric.install_metric(force=True) == target and target.stat().st_mtime > 1


def test_modules_cache_follows_hf_home(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("HF_MODULES_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert metric.modules_cache() == tmp_path / "hf" / "modules"


def test_ensure_metric_installed_never_raises_on_read_only_cache(tmp_path: Path, monkeypatch):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache should be")
    monkeypatch.setenv("HF_MODULES_CACHE", str(blocker))
    metric.ensure_metric_installed()  # logs at debug level and moves on
    with pytest.raises(OSError):
        metric.install_metric()


@pytest.mark.slow
def test_bare_name_load_offline_from_any_directory(
    tmp_path: Path, default_model_dir: Path, digits: datasets.Dataset, digits_expected: dict
) -> None:
    modules = tmp_path / "modules"
    metric.install_metric(modules)
    code = (
        "import json, evaluate\n"
        "from hf_fisher.digits import load_digits_dataset\n"
        "d = load_digits_dataset('test').select(range(6))\n"
        "m = evaluate.load('fisher_robustness')\n"
        f"r = m.compute(model={str(default_model_dir)!r}, inputs=d['image'], "
        "references=d['label'])\n"
        "print(json.dumps({'class': type(m).__name__, **r}))\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_MODULES_CACHE": str(modules),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result.pop("class") == "FisherRobustness"
    summary = {k: v for k, v in digits_expected.items() if k not in metric.PER_SAMPLE_KEYS}
    assert result == summary


def test_load_by_path_pil_equals_python_api(
    fisher, default_model_dir: Path, digits: datasets.Dataset, digits_expected: dict
) -> None:
    result = fisher.compute(
        model=str(default_model_dir),
        inputs=digits["image"],
        references=digits["label"],
        return_per_sample=True,
    )
    assert type(fisher).__name__ == "FisherRobustness"
    assert result == digits_expected
    for key in ("spectral_norm_mean", "spectral_norm_median", "trace_mean", "kl_radius_median"):
        assert isinstance(result[key], float) and result[key] > 0
    assert result["num_samples"] == 6 and 0.0 <= result["accuracy"] <= 1.0
    assert result["label"] == digits["label"]


def test_tensor_images_equal_pil_images(
    fisher, default_model_dir: Path, digits: datasets.Dataset, digits_expected: dict
) -> None:
    pixels = load_classifier(str(default_model_dir)).prepare(digits["image"]).inputs
    result = fisher.compute(
        model=str(default_model_dir),
        inputs=pixels,
        references=digits["label"],
        return_per_sample=True,
    )
    assert_close(result, digits_expected, rel=tolerance_for(torch.float32))
    assert result["predicted"] == digits_expected["predicted"]


def test_tensor_inputs_stay_exact_against_dense_float64(fisher, mlp: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(5, 2, 3, 4, generator=generator, dtype=torch.float64) * 1.234567
    result = fisher.compute(
        model=mlp, inputs=inputs, return_per_sample=True, dtype="float64", method="exact"
    )
    module = mlp.double()
    eigenvalues, trace = dense_spectrum(dense_fisher(module, inputs))
    assert result["spectral_norm"] == pytest.approx(eigenvalues[:, 0].tolist(), rel=1e-9)
    assert result["trace"] == pytest.approx(trace.tolist(), rel=1e-9)
    assert math.isnan(result["accuracy"])  # no references: accuracy is not defined
    assert result["predicted"] == module(inputs).argmax(-1).tolist()


def test_text_strings_equal_python_api(fisher, bert_dir: Path) -> None:
    result = fisher.compute(model=str(bert_dir), inputs=TEXTS, references=[0, 1, 2, 0])
    dataset = datasets.Dataset.from_dict({"text": TEXTS, "label": [0, 1, 2, 0]})
    report = evaluate_robustness(str(bert_dir), dataset, progress=False)
    assert result == metric.flatten_results(report.summary)
    assert result["num_samples"] == 4 and result["trace_mean"] >= result["spectral_norm_mean"]


def test_add_batch_then_compute_equals_one_call(fisher, bert_dir: Path) -> None:
    one_call = fisher.compute(model=str(bert_dir), inputs=TEXTS, return_per_sample=True, seed=2)
    fisher.add_batch(model=str(bert_dir), inputs=TEXTS[:3], seed=2)
    fisher.add_batch(model=str(bert_dir), inputs=TEXTS[3:], seed=2)
    batched = fisher.compute(return_per_sample=True, seed=2)
    # other batches pad texts to other lengths: equal up to float32 rounding
    assert_close(batched, one_call, rel=tolerance_for(torch.float32))
    assert batched["predicted"] == one_call["predicted"] and batched["num_samples"] == 4


def test_evaluate_save_takes_the_result(tmp_path: Path, bert_dir: Path) -> None:
    result = metric.fisher_robustness_scores(
        str(bert_dir), TEXTS[:2], references=[0, 1], return_per_sample=True
    )
    path = evaluate.save(str(tmp_path), **result)
    saved = json.loads(Path(path).read_text())
    assert {k: saved[k] for k in result} == result
    unlabelled = metric.fisher_robustness_scores(str(bert_dir), TEXTS[:2])
    saved = json.loads(Path(evaluate.save(str(tmp_path), **unlabelled)).read_text())
    assert math.isnan(saved["accuracy"]) and saved["num_samples"] == 2


def test_evaluator_with_pipeline_equals_python_api(bert_dir: Path) -> None:
    from transformers import pipeline

    dataset = datasets.Dataset.from_dict({"sentence": TEXTS, "label": [2, 1, 0, 1]})
    pipe = pipeline("text-classification", model=str(bert_dir))
    result = metric.fisher_evaluator("text-classification").compute(pipe, dataset)
    report = evaluate_robustness(str(bert_dir), dataset, progress=False)
    assert result == metric.flatten_results(report.summary)
    with pytest.raises(InputError, match="this evaluator is for image-classification"):
        metric.fisher_evaluator("image-classification").compute(str(bert_dir), dataset)
    with pytest.raises(InputError, match="got task 'audio-classification'"):
        metric.fisher_evaluator("audio-classification")


def test_combine_passes_predictions_which_the_metric_ignores(bert_dir: Path) -> None:
    references = [0, 1, 2, 1]
    direct = metric.fisher_robustness_scores(str(bert_dir), TEXTS, references=references)
    combined = evaluate.combine([str(METRIC_DIR)])  # passes predictions=None to every module
    assert combined.compute(model=str(bert_dir), inputs=TEXTS, references=references) == direct
    fisher = evaluate.load(str(METRIC_DIR))
    given = fisher.compute(
        model=str(bert_dir), inputs=TEXTS, references=references, predictions=[9, 9, 9, 9]
    )
    assert given == direct  # the model's own predictions are used, never the ones passed


def test_evaluator_takes_evaluate_style_metric_and_label_mapping(bert_dir: Path) -> None:
    dataset = datasets.Dataset.from_dict({"sentence": TEXTS, "label": [2, 1, 0, 1]})
    mapping = {"class_0": 1.0, "class_1": 2.0, "class_2": 0.0}  # model label -> dataset label
    evaluator = metric.fisher_evaluator("text-classification")
    result = evaluator.compute(
        str(bert_dir),
        dataset,
        metric=evaluate.load(str(METRIC_DIR)),
        label_mapping=mapping,
        return_per_sample=True,
    )
    assert result["label"] == [1, 0, 2, 0]  # dataset 2 is class_1, 1 is class_0, 0 is class_2
    correct = [p == y for p, y in zip(result["predicted"], result["label"], strict=True)]
    assert result["accuracy"] == pytest.approx(sum(correct) / 4)
    assert evaluator.compute(str(bert_dir), dataset, metric="fisher_robustness")["num_samples"] == 4
    with pytest.raises(InputError, match="this evaluator computes fisher_robustness only"):
        evaluator.compute(str(bert_dir), dataset, metric="accuracy")


def test_infinite_statistics_are_inf() -> None:
    columns = {
        "label": [0, 1],
        "predicted": [0, 1],
        "correct": [True, True],
        "probability": [1.0, 1.0],
        "spectral_norm": [0.0, 0.0],
        "trace": [0.0, 0.0],
        "kl_radius": [None, None],
        "has_reference": [True, True],
    }
    result = metric.scores_from_columns(columns, return_per_sample=True)
    assert result["kl_radius_median"] == math.inf and result["kl_radius"] == [math.inf] * 2
    assert result["spectral_norm_mean"] == 0.0 and result["accuracy"] == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"inputs": TEXTS}, "model is missing; pass model="),
        ({"model": "m", "inputs": []}, "inputs are empty"),
        ({"model": "m", "inputs": torch.zeros(0, 3)}, r"inputs are empty \(a tensor of shape"),
        ({"model": "m", "inputs": TEXTS, "references": [0, 1]}, "got 4 inputs but 2 references"),
        ({"model": "m", "inputs": TEXTS, "references": ["a"] * 4}, "reference 0 is 'a'"),
        ({"model": "m", "inputs": "one string"}, "got inputs of type str"),
        ({"model": "m", "inputs": ["text", ("a", "b")]}, r"inputs mix \['pair', 'text'\]"),
        ({"model": "m", "inputs": TEXTS, "metod": "exact"}, "did you mean 'method'"),
    ],
    ids=["no-model", "empty", "empty-tensor", "lengths", "label-type", "str", "mixed", "typo"],
)
def test_clear_errors(fisher, kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        fisher.compute(**kwargs)


def test_compute_after_add_batch_rejects_estimator_options(fisher, bert_dir: Path) -> None:
    fisher.add_batch(model=str(bert_dir), inputs=TEXTS[:1])
    with pytest.raises(InputError, match="option 'method' has no effect here"):
        fisher.compute(method="exact")
    assert fisher.compute()["num_samples"] == 1


@pytest.mark.slow
def test_num_process_convention_two_processes(
    tmp_path: Path, default_model_dir: Path, digits_expected: dict
) -> None:
    """evaluate's convention: each process scores its shard; process 0 gathers and summarises."""
    code = (
        "import json, sys, evaluate\n"
        "from hf_fisher.digits import load_digits_dataset\n"
        "rank = int(sys.argv[1])\n"
        "part = load_digits_dataset('test').select(range(3 * rank, 3 * rank + 3))\n"
        f"m = evaluate.load({str(METRIC_DIR)!r}, num_process=2, process_id=rank, "
        "experiment_id='fisher-test')\n"
        f"r = m.compute(model={str(default_model_dir)!r}, inputs=part['image'], "
        "references=part['label'], return_per_sample=True)\n"
        "print(json.dumps(r))\n"
    )
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_EVALUATE_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(rank)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
    main, other = (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)
    assert other is None
    # Two shards of 3 against one batch of 6: float32 rounding differs in the last bits.
    assert_close(main, digits_expected, rel=tolerance_for(torch.float32))
    assert main["label"] == digits_expected["label"] and main["num_samples"] == 6
