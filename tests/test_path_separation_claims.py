"""The claims script behind docs/path-separation.md: its committed numbers and a reduced rerun.

``scripts/path_separation_claims.py`` takes about two minutes of CPU for three seeds; the fast
check reads the committed results, the slow one reruns one seed with two resamples.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "path-separation.md"
CLAIMS = ROOT / "docs" / "path-separation-claims.json"


@pytest.fixture(scope="module")
def script():
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(ROOT / "scripts"))
        return importlib.import_module("path_separation_claims")


def test_the_doc_quotes_the_committed_results(script):
    records = json.loads(CLAIMS.read_text(encoding="utf-8"))["records"]
    text = DOC.read_text(encoding="utf-8")
    assert len(records) == 3
    for record in records:
        for name in ("true", "random"):
            clean = record[name]["clean"]
            assert script.cell(clean["score"]) in text, (record["seed"], name)
            assert script.cell(clean["activation_score"]) in text, (record["seed"], name)
        for condition in record["shift"].values():
            assert script.cell(condition["score"]) in text
        assert f"{record['score_gap']['value']:.2f}" in text


@pytest.mark.slow
def test_one_seed_memorises_and_separates_less(script, tmp_path):
    output = script.main(["--out", str(tmp_path), "--seeds", "1", "--bootstrap", "2"])
    (record,) = output["records"]
    true, random = record["true"], record["random"]
    assert random["train_accuracy"] == 1.0 and random["test_accuracy"] < 0.25  # memorised
    assert true["test_accuracy"] > 0.9
    assert true["clean"]["score"]["value"] > random["clean"]["score"]["value"]
    assert (tmp_path / "path-separation.png").stat().st_size > 1000
    assert json.loads((tmp_path / "path-separation-claims.json").read_text())["records"]
