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

from hf_fisher.errors import InputError


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


ESTIMATOR_CASES: list[Case] = [
    # black-box sketch
    Case("sketch-flat-spectrum-lambda-max", _flat_spectrum_sketch, check=_check_flat_sketch),
    Case("sketch-coordinates-fd-error", _wavy_coordinates, check=_check_wavy_coordinates),
    Case("sketch-confidence-range", _sketch_confidence, error=InputError, match="confidence=1.5"),
]

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
