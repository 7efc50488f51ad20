"""Two CPU processes (torchrun + gloo) give the single-process results, sample for sample."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_fisher.results import load_results
from hf_fisher.runner import evaluate_robustness

REPO = Path(__file__).resolve().parents[1]
NUM_SAMPLES = 7  # odd: the two shards differ in size
NUMBERS = ("probability", "spectral_norm", "trace", "kl_radius")


def torchrun(out: Path, *args: str) -> subprocess.CompletedProcess:
    """``hf-fisher evaluate`` under ``torchrun --standalone --nproc_per_node 2``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)  # the runner itself must choose CPU + gloo
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "hf_fisher", "evaluate", "--num-samples", str(NUM_SAMPLES), "--batch-size", "2",
        "--no-progress", "--out", str(out), *args,
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def assert_same_records(many: list[dict], one: list[dict], rel: float) -> None:
    """Same fields; integers, booleans and strings equal, floats equal up to rounding."""
    assert [r["index"] for r in many] == [r["index"] for r in one]
    for a, b in zip(many, one, strict=True):
        assert a.keys() == b.keys()
        for key, value in b.items():
            if isinstance(value, float) or (isinstance(value, list) and value):
                assert a[key] == pytest.approx(value, rel=rel), key
            else:
                assert a[key] == value, key


def assert_same_summary(many: dict, one: dict, rel: float) -> None:
    if isinstance(one, dict):
        assert many.keys() == one.keys()
        for key in one:
            assert_same_summary(many[key], one[key], rel)
    elif isinstance(one, float):
        assert many == pytest.approx(one, rel=rel)
    else:
        assert many == one


@pytest.fixture(scope="module")
def exact_runs(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("exact") / "run"
    done = torchrun(out)
    # Batch size 3 here: batches that differ from both shards' batches of 2.
    single = evaluate_robustness(num_samples=NUM_SAMPLES, batch_size=3, progress=False)
    return out, done, single.results


def test_two_processes_equal_one_process(exact_runs) -> None:
    out, _, single = exact_runs
    results = load_results(out)
    assert results["environment"]["num_processes"] == 2
    assert single["environment"]["num_processes"] == 1
    indices = results["dataset"]["indices"]
    assert indices == single["dataset"]["indices"]
    assert len(indices) == NUM_SAMPLES == len(set(indices))
    assert [r["index"] for r in results["per_sample"]] == indices  # none dropped or repeated
    assert results["settings"]["method"] == "exact"
    assert_same_records(results["per_sample"], single["per_sample"], rel=1e-5)
    assert_same_summary(results["summary"], single["summary"], rel=1e-5)


def test_only_rank_zero_writes(exact_runs) -> None:
    out, done, single = exact_runs
    assert sorted(path.name for path in out.iterdir()) == ["per_sample.csv", "results.json"]
    assert done.stdout.count("wrote ") == 1
    assert done.stdout.count("samples 7  accuracy") == 1
    with open(out / "per_sample.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert [int(row["index"]) for row in rows] == single["dataset"]["indices"]
    for row, record in zip(rows, single["per_sample"], strict=True):
        assert row["correct"] == str(record["correct"])
        for key in NUMBERS:
            assert float(row[key]) == pytest.approx(record[key], rel=1e-5)


def test_lanczos_per_sample_streams_do_not_depend_on_sharding(tmp_path: Path, exact_runs) -> None:
    options = {"method": "lanczos", "max_iter": 4, "tol": 1e-12}
    torchrun(tmp_path / "run", "--method", "lanczos", "--max-iter", "4", "--tol", "1e-12")
    results = load_results(tmp_path / "run")
    single = evaluate_robustness(
        num_samples=NUM_SAMPLES, batch_size=3, progress=False, **options
    ).results
    assert results["environment"]["num_processes"] == 2
    assert results["settings"]["method"] == "lanczos"
    assert_same_records(results["per_sample"], single["per_sample"], rel=1e-4)
    # 4 Lanczos steps (< K-1 = 9) are not exact, so the values depend on each start vector.
    exact = [record["spectral_norm"] for record in exact_runs[2]["per_sample"]]
    approx = [record["spectral_norm"] for record in single["per_sample"]]
    assert approx != pytest.approx(exact, rel=1e-3)
    assert not all(record["converged"] for record in single["per_sample"])
