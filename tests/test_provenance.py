"""Provenance flags: ``--revision``, ``--dataset-revision`` and ``card``/``submit --dataset-id``.

The model revision is exercised against a real (offline) Hub cache holding two revisions of a
model with different label names, so the test sees which one was loaded, not only what was
written down.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from huggingface_hub import ModelCard

from hf_fisher.cli import main
from hf_fisher.digits import DEFAULT_MODEL_DIR, load_digits_dataset
from hf_fisher.results import load_results
from hf_fisher.runner import evaluate_robustness

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "results_example.json"
COMMITS = {"main": "a" * 40, "v2": "b" * 40}


def run_cli(*args: str | os.PathLike, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``python -m hf_fisher ARGS`` in a fresh interpreter (so ``env`` reaches every library)."""
    environ = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(
        [sys.executable, "-m", "hf_fisher", *map(str, args)],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def hub_cache_with_two_revisions(cache: Path) -> dict[str, list[str]]:
    """``org/digits`` at ``main`` and ``v2``, as huggingface_hub lays out a download cache.

    Returns:
        The label names of each revision (v2 numbers its classes the other way round).
    """
    repo = cache / "models--org--digits"
    names = {"main": [str(i) for i in range(10)], "v2": [str(9 - i) for i in range(10)]}
    for ref, commit in COMMITS.items():
        snapshot = repo / "snapshots" / commit
        shutil.copytree(DEFAULT_MODEL_DIR, snapshot)
        config = json.loads((snapshot / "config.json").read_text())
        config["id2label"] = dict(enumerate(names[ref]))
        config["label2id"] = {name: i for i, name in enumerate(names[ref])}
        (snapshot / "config.json").write_text(json.dumps(config))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return names


@pytest.mark.slow
def test_model_revision_selects_the_checkpoint_and_is_recorded(tmp_path: Path) -> None:
    names = hub_cache_with_two_revisions(tmp_path / "hub")
    load_digits_dataset("test").select(range(4)).save_to_disk(str(tmp_path / "digits"))
    done = run_cli(
        "evaluate", "org/digits", "--revision", "v2", "--dataset", "digits", "--out", "out",
        "--no-progress", cwd=tmp_path, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    model = load_results(tmp_path / "out")["model"]
    assert model["revision"] == "v2" and model["commit_hash"] == COMMITS["v2"]
    assert list(model["id2label"].values()) == names["v2"]  # v2's weights and config loaded


def test_dataset_revision_reaches_load_dataset_and_is_recorded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls = []
    digits = load_digits_dataset("test").select(range(3))

    def hub(path, name=None, **kwargs):  # the Hub, offline: records what it was asked for
        calls.append((path, kwargs))
        return datasets.DatasetDict({"test": digits})

    monkeypatch.setattr(datasets, "load_dataset", hub)
    report = evaluate_robustness(
        str(DEFAULT_MODEL_DIR), "org/digits", dataset_revision="v1.1", progress=False,
        out_dir=tmp_path / "out",
    )  # fmt: skip
    assert calls == [("org/digits", {"data_files": None, "revision": "v1.1", "streaming": False})]
    assert report.results["dataset"]["revision"] == "v1.1"
    assert load_results(tmp_path / "out")["dataset"]["revision"] == "v1.1"  # schema-valid


def test_dataset_id_names_a_local_copy_in_card_and_submission(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    results = json.loads(FIXTURE.read_text())
    results["dataset"]["name"] = str(tmp_path / "shapes")  # a local folder, as evaluated
    source = tmp_path / "results.json"
    source.write_text(json.dumps(results))
    done = run_cli(
        "card", source, "--out", "README.md", "--dataset-id", "org/shapes", "--no-eval-results",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    entries = ModelCard.load(tmp_path / "README.md").data.eval_results
    assert {(e.dataset_type, e.dataset_name) for e in entries} == {("org/shapes", "org/shapes")}
    submission = tmp_path / "sub.json"
    assert main(["submit", str(source), "--out", str(submission), "--dataset-id", "org/x"]) == 0
    assert json.loads(submission.read_text())["dataset"] == "org/x"
    with pytest.raises(SystemExit) as usage:  # a usage error: argparse exits 2 before loading
        main(["submit", str(source), "--out", str(submission), "--dataset-id", "../x"])
    assert usage.value.code == 2
    assert "--dataset-id: '../x' is not a Hub dataset id" in capsys.readouterr().err
