"""The committed example leaderboard (docs/leaderboard/) is consistent and reproducible.

``scripts/example_leaderboard.py`` trains models for about a minute, too slow for the suite; these
checks are fast: the committed site is what the committed submissions build, every submission is a
full exact run on the 360 test digits, the bundled model's row matches a fresh evaluation, and the
script's training loop is deterministic.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import pytest
import torch

from hf_fisher import evaluate_robustness
from hf_fisher.digits import load_digits_dataset
from hf_fisher.report import build_leaderboard, make_submission, validate_submission

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "docs" / "leaderboard"
SUBMISSIONS = SITE / "submissions"


@pytest.fixture(scope="module")
def script():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT / "scripts"))
        return importlib.import_module("example_leaderboard")


@pytest.fixture(scope="module")
def submissions() -> dict[str, dict]:
    return {
        path.stem: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(SUBMISSIONS.glob("*.json"))
    }


def test_committed_site_is_built_from_committed_submissions(script, tmp_path):
    md_path, html_path = build_leaderboard(SUBMISSIONS, tmp_path, script.TITLE)
    assert md_path.read_text(encoding="utf-8") == (SITE / "leaderboard.md").read_text(
        encoding="utf-8"
    ), f"docs/leaderboard/ is stale: run `{script.COMMAND}`"
    assert html_path.read_text(encoding="utf-8") == (SITE / "index.html").read_text(
        encoding="utf-8"
    ), f"docs/leaderboard/ is stale: run `{script.COMMAND}`"
    assert (ROOT / "docs" / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_full_exact_run_per_entry(script, submissions):
    assert sorted(submissions) == sorted(entry.slug for entry in script.ENTRIES)
    for entry in script.ENTRIES:
        sub = validate_submission(submissions[entry.slug], source=entry.slug)
        assert (sub["name"], sub["footnote"]) == (entry.name, entry.footnote)
        assert (sub["dataset"], sub["split"], sub["n"]) == ("sklearn-digits", "test", 360)
        assert (sub["estimator"], sub["input_space"], sub["seed"]) == ("exact", "pixels", 0)
        assert not Path(sub["model_id"]).is_absolute(), sub["model_id"]
        low, high = sub["median_kl_radius_ci"]
        assert 0 < low <= sub["median_kl_radius"] <= high


def test_bundled_row_matches_a_fresh_evaluation(submissions):
    test_set = load_digits_dataset("test")
    test_set.info.dataset_name = "sklearn-digits"
    report = evaluate_robustness(None, test_set, split="test", method="exact", progress=False)
    fresh = make_submission(report.results)
    committed = submissions["digits-resnet"]
    assert fresh["model_id"] == committed["model_id"] == "hf_fisher/assets/digits-resnet"
    assert fresh["clean_acc"] == committed["clean_acc"]
    assert fresh["median_kl_radius"] == pytest.approx(committed["median_kl_radius"], rel=1e-4)
    assert fresh["median_kl_radius_ci"] == pytest.approx(committed["median_kl_radius_ci"], rel=1e-4)
    for key in ("spectral_norm", "trace"):
        assert fresh["metrics"][key]["median"] == pytest.approx(
            committed["metrics"][key]["median"], rel=1e-4
        )


def test_fit_is_deterministic_and_applies_noise(script):
    torch.manual_seed(1)
    inputs, labels = torch.randn(96, 1, 32, 32), torch.arange(96) % 10
    entry = next(e for e in script.ENTRIES if e.noise_std > 0)
    short = dataclasses.replace(entry, epochs=1)
    clean = dataclasses.replace(short, noise_std=0.0)

    def weights(which):
        model = script.fit(which, inputs, labels, pixel_std=0.3)
        assert not model.training
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    first = weights(short)
    torch.manual_seed(5)  # fit seeds itself: the global state before the call does not matter
    assert torch.equal(weights(short), first)
    assert not torch.allclose(weights(clean), first)
