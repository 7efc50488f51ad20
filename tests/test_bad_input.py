"""Every way a new user's input has made hf-fisher silently wrong or crash, one row each.

Each row ends in either a correct result (``check`` asserts it against an independent truth)
or a clear typed error raised before any compute is spent (``error`` and ``match``). The rows
are grouped by the layer that owns the fix; add new rows to the matching section so the list
keeps growing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


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

DATA_CASES: list[Case] = []

# --- estimators: methods, traces, convergence, intervals, dtypes, multi-label --------------

ESTIMATOR_CASES: list[Case] = []

# --- runner and CLI: options, resume, output directories ----------------------------------

RUNNER_CASES: list[Case] = []

# --- report: cards, submissions, leaderboard ----------------------------------------------

REPORT_CASES: list[Case] = []


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
