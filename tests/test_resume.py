"""Resume: a killed run continues where it stopped, loses nothing and matches a full run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import hf_fisher.spectrum as spectrum_module
from hf_fisher.cli import main
from hf_fisher.digits import load_digits_dataset
from hf_fisher.errors import ResultsError
from hf_fisher.results import load_results
from hf_fisher.runner import evaluate_robustness
from hf_fisher.testing import tolerance_for
from hf_fisher.testing.models import build_mlp

REPO = Path(__file__).resolve().parents[1]
RECORDS = Path("partial") / "records-0.jsonl"
OPTIONS = {"num_samples": 7, "batch_size": 2, "progress": False}


class Interrupted(Exception):
    """Stands in for a kill in the middle of a run."""


class CountingSpectrum:
    """Wraps ``spectrum_of_batch``: counts samples computed, and can fail after N batches."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.fail_after = fail_after
        self.batches = 0
        self.ids: list[int] = []
        self.original = spectrum_module.spectrum_of_batch

    def __call__(self, *args, **kwargs):
        if self.fail_after is not None and self.batches == self.fail_after:
            raise Interrupted
        self.batches += 1
        self.ids += list(kwargs["sample_ids"])
        return self.original(*args, **kwargs)


def comparable(results: dict) -> dict:
    """Everything but the creation time, the wall times and the free-memory budget."""
    results = json.loads(json.dumps(results))
    del results["created"], results["environment"]["wall_time_s"]
    del results["environment"]["fisher_loop"]
    del results["environment"]["max_memory_bytes"], results["environment"]["max_fisher_batch"]
    return results


def assert_close(a, b, rel: float = tolerance_for(torch.float32), where: str = "results") -> None:
    """Equal structure and non-float values; floats equal up to batching's rounding."""
    if isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for key in b:
            assert_close(a[key], b[key], rel, f"{where}.{key}")
    elif isinstance(b, list):
        assert len(a) == len(b), where
        for position, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, rel, f"{where}[{position}]")
    elif isinstance(b, float):
        assert a == pytest.approx(b, rel=rel), where
    else:
        assert a == b, where


def record_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / RECORDS).read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("full") / "run"
    return evaluate_robustness(out_dir=out, **OPTIONS).results


def interrupt(monkeypatch: pytest.MonkeyPatch, out: Path, batches: int, **options) -> None:
    """Run until ``batches`` batches are done, then fail as a kill would."""
    spectrum = CountingSpectrum(fail_after=batches)
    with monkeypatch.context() as patch:
        patch.setattr(spectrum_module, "spectrum_of_batch", spectrum)
        with pytest.raises(Interrupted):
            evaluate_robustness(out_dir=out, **{**OPTIONS, **options})
    assert not (out / "results.json").exists()


def resume(monkeypatch: pytest.MonkeyPatch, out: Path, **options) -> tuple[dict, list[int]]:
    spectrum = CountingSpectrum()
    with monkeypatch.context() as patch:
        patch.setattr(spectrum_module, "spectrum_of_batch", spectrum)
        report = evaluate_robustness(out_dir=out, resume=True, **{**OPTIONS, **options})
    return report.results, spectrum.ids


def test_resume_computes_only_missing_samples(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, full_run: dict
) -> None:
    out = tmp_path / "run"
    interrupt(monkeypatch, out, batches=2)
    done = [record["index"] for record in record_lines(out)]
    assert done == full_run["dataset"]["indices"][:4]
    results, computed = resume(monkeypatch, out)
    assert computed == full_run["dataset"]["indices"][4:]
    assert comparable(results) == comparable(full_run)
    assert comparable(load_results(out)) == comparable(full_run)
    assert not (out / "partial").exists()


def test_torn_last_line_is_dropped_and_that_sample_recomputed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, full_run: dict
) -> None:
    out = tmp_path / "run"
    interrupt(monkeypatch, out, batches=2)
    text = (out / RECORDS).read_text()
    (out / RECORDS).write_text(text[: len(text) - 25])  # a kill in the middle of a write
    results, computed = resume(monkeypatch, out)
    indices = full_run["dataset"]["indices"]
    assert computed == indices[3:]
    assert [record["index"] for record in results["per_sample"]] == indices
    resumed, full = comparable(results), comparable(full_run)
    # The resumed part ran in other batches ((2, 2) instead of (1, 2)), so only rounding differs.
    for part in (resumed, full):
        part["settings"].pop("batch_sizes_used")
    assert_close(resumed, full)


@pytest.mark.slow
def test_killed_cli_run_resumes_without_loss(tmp_path: Path) -> None:
    """SIGKILL a real ``hf-fisher evaluate`` process once it has written records; resume it."""
    out = tmp_path / "run"
    args = ["--num-samples", "150", "--batch-size", "1", "--no-progress", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "hf_fisher", "evaluate", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (out / RECORDS).exists() and (out / RECORDS).read_text().count("\n") >= 5:
                break
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert not (out / "results.json").exists(), "the run finished before it was killed"
    written = (out / RECORDS).read_text().count("\n")
    assert 5 <= written < 150
    assert main(["evaluate", *args, "--resume"]) == 0
    resumed = load_results(out)
    full = evaluate_robustness(num_samples=150, batch_size=1, progress=False).results
    assert [r["index"] for r in resumed["per_sample"]] == full["dataset"]["indices"]
    assert_close(resumed["per_sample"], full["per_sample"])
    assert_close(resumed["summary"], full["summary"])


@pytest.mark.parametrize(
    ("change", "difference"),
    [
        (
            {"method": "lanczos"},
            "settings.requested_method: partial run has 'exact', this run 'lanczos'",
        ),
        ({"seed": 3}, "settings.seed: partial run has 0, this run 3"),
        ({"num_samples": 6}, "dataset.indices: partial run has"),
        ({"kl_tau": 0.1}, "settings.kl_tau: partial run has 0.01, this run 0.1"),
    ],
    ids=["method", "seed", "num_samples", "kl_tau"],
)
def test_mismatched_resume_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, change: dict, difference: str
) -> None:
    out = tmp_path / "run"
    interrupt(monkeypatch, out, batches=1, method="exact")
    before = (out / RECORDS).read_text()
    with pytest.raises(ResultsError, match="refusing to resume") as refused:
        evaluate_robustness(out_dir=out, resume=True, **{**OPTIONS, "method": "exact", **change})
    assert difference in str(refused.value)
    assert "use --overwrite to start again" in str(refused.value)
    assert (out / RECORDS).read_text() == before


def test_resume_with_another_model_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, resnet_dir: Path
) -> None:
    out = tmp_path / "run"
    interrupt(monkeypatch, out, batches=1)
    with pytest.raises(ResultsError, match="refusing to resume") as refused:
        evaluate_robustness(
            resnet_dir, load_digits_dataset("test"), out_dir=out, resume=True, **OPTIONS
        )
    message = str(refused.value)
    assert "model.id: partial run has '" in message
    assert f"this run '{resnet_dir}'" in message


def test_resume_of_a_finished_run_is_refused(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["evaluate", "--num-samples", "2", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    assert main([*args, "--resume"]) == 1
    err = capsys.readouterr().err
    assert "holds a finished run (results.json); nothing to resume" in err


def test_partial_run_is_refused_without_resume_and_replaced_with_overwrite(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, full_run: dict
) -> None:
    out = tmp_path / "run"
    interrupt(monkeypatch, out, batches=1)
    with pytest.raises(ResultsError, match="already holds a partial run; pass --resume"):
        evaluate_robustness(out_dir=out, **OPTIONS)
    spectrum = CountingSpectrum()
    monkeypatch.setattr(spectrum_module, "spectrum_of_batch", spectrum)
    results = evaluate_robustness(out_dir=out, overwrite=True, **OPTIONS).results
    assert spectrum.ids == full_run["dataset"]["indices"]
    assert comparable(results) == comparable(full_run)


MLP_ROW_BYTES = 3 * 24 * 4  # build_mlp: K = 4 classes, d = 24 inputs; float32 gradient rows


def mlp_inputs(count: int = 7) -> torch.Tensor:
    return torch.randn(count, 2, 3, 4, generator=torch.Generator().manual_seed(0))


def test_auto_method_is_the_same_after_kill_and_resume(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Exact fits 3 samples here: per batch, the full run's last batch of 3 got exact; once
    per run (batch size 4), the full and the resumed run use lanczos for every sample."""
    monkeypatch.setattr(spectrum_module, "EXACT_MAX_ROW_BYTES", 3 * MLP_ROW_BYTES)
    options = {"batch_size": 4, "progress": False}
    full = evaluate_robustness(build_mlp(), mlp_inputs(), **options).results
    out = tmp_path / "run"
    spectrum = CountingSpectrum(fail_after=1)
    with monkeypatch.context() as patch, pytest.raises(Interrupted):
        patch.setattr(spectrum_module, "spectrum_of_batch", spectrum)
        evaluate_robustness(build_mlp(), mlp_inputs(), out_dir=out, **options)
    text = (out / RECORDS).read_text()
    (out / RECORDS).write_text(text[: len(text) - 25])  # torn: samples 3..6 are recomputed
    with monkeypatch.context() as patch:
        patch.setattr(spectrum_module, "spectrum_of_batch", CountingSpectrum())
        resumed = evaluate_robustness(build_mlp(), mlp_inputs(), out_dir=out, resume=True,
                                      **options).results  # fmt: skip
    for results in (full, resumed):
        assert results["settings"]["method"] == "lanczos"
        assert {record["method"] for record in results["per_sample"]} == {"lanczos"}
    assert_close(resumed["per_sample"], full["per_sample"])


def test_resume_where_the_batch_size_changes_auto_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(spectrum_module, "EXACT_MAX_ROW_BYTES", 3 * MLP_ROW_BYTES)
    out = tmp_path / "run"
    spectrum = CountingSpectrum(fail_after=1)
    with monkeypatch.context() as patch, pytest.raises(Interrupted):
        patch.setattr(spectrum_module, "spectrum_of_batch", spectrum)
        evaluate_robustness(build_mlp(), mlp_inputs(), out_dir=out, batch_size=4, progress=False)
    with pytest.raises(ResultsError, match="refusing to resume") as refused:
        evaluate_robustness(build_mlp(), mlp_inputs(), out_dir=out, resume=True, batch_size=2,
                            progress=False)  # fmt: skip
    assert "settings.method: partial run has 'lanczos', this run 'exact'" in str(refused.value)
    resumed = evaluate_robustness(  # another batch size that keeps the method is fine
        build_mlp(), mlp_inputs(), out_dir=out, resume=True, batch_size=5, progress=False
    )
    assert resumed.results["settings"]["method"] == "lanczos"


@pytest.mark.parametrize(
    ("model", "inputs", "difference"),
    [
        (build_mlp(seed=1), mlp_inputs(), "model.content.state_dict_sha256: partial run has '"),
        (build_mlp(), mlp_inputs() + 0.5, "dataset.content.sha256: partial run has '"),
    ],
    ids=["weights", "data"],
)
def test_resume_with_changed_in_memory_content_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model, inputs, difference: str
) -> None:
    """The same module class and tensor shape, other numbers: names alone cannot tell."""
    out = tmp_path / "run"
    spectrum = CountingSpectrum(fail_after=1)
    with monkeypatch.context() as patch, pytest.raises(Interrupted):
        patch.setattr(spectrum_module, "spectrum_of_batch", spectrum)
        evaluate_robustness(build_mlp(), mlp_inputs(), out_dir=out, batch_size=2, progress=False)
    before = (out / RECORDS).read_text()
    with pytest.raises(ResultsError, match="refusing to resume") as refused:
        evaluate_robustness(model, inputs, out_dir=out, resume=True, batch_size=2, progress=False)
    assert difference in str(refused.value)
    assert "model.id" not in str(refused.value) and "dataset.num_rows" not in str(refused.value)
    assert (out / RECORDS).read_text() == before
