"""Summary statistics of per-sample records: quantiles, bootstrap CIs, per-class splits."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

QUANTITIES = ("spectral_norm", "trace", "kl_radius")
OPTIONAL_QUANTITIES = ("flip_radius",)
"""Summarised when every record has them (records written before they existed do not)."""


def kl_radius(spectral_norm: float, tau: float) -> float:
    """L2 input perturbation at which the second-order KL reaches ``tau``: sqrt(2 tau / lambda).

    >>> round(kl_radius(2.0, 0.01), 4)
    0.1
    """
    return math.sqrt(2.0 * tau / spectral_norm) if spectral_norm > 0 else math.inf


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def describe(values: Sequence[float], *, seed: int = 0, num_bootstrap: int = 1000) -> dict:
    """Mean, median, 5th/95th percentiles and a percentile-bootstrap 95% CI of the median.

    Infinite values (an infinite ``kl_radius`` where F = 0) take part in the ranks; statistics
    that come out infinite are written as null.
    """
    array = np.asarray([math.inf if v is None else v for v in values], dtype=np.float64)
    if array.size == 0:
        return {
            k: None for k in ("mean", "median", "p05", "p95", "median_ci_low", "median_ci_high")
        }
    rng = np.random.default_rng(seed)
    resampled = np.median(rng.choice(array, size=(num_bootstrap, array.size)), axis=1)
    with np.errstate(invalid="ignore"):
        stats = {
            "mean": float(np.mean(array)),
            "median": float(np.median(array)),
            "p05": float(np.quantile(array, 0.05, method="linear")),
            "p95": float(np.quantile(array, 0.95, method="linear")),
            "median_ci_low": float(np.quantile(resampled, 0.025)),
            "median_ci_high": float(np.quantile(resampled, 0.975)),
        }
    return {key: _finite_or_none(value) for key, value in stats.items()}


def _classes(row: dict) -> list[int]:
    return row["label"] if isinstance(row["label"], list) else [row["label"]]


def _quantities(records: Sequence[dict]) -> tuple[str, ...]:
    """QUANTITIES plus the optional ones that every record carries."""
    present = [q for q in OPTIONAL_QUANTITIES if records and all(q in row for row in records)]
    return (*QUANTITIES, *present)


def summarize(records: Sequence[dict], *, seed: int = 0) -> dict:
    """The ``summary`` section of results.json from per-sample records."""
    quantities = _quantities(records)

    def block(rows: Sequence[dict]) -> dict:
        return {
            quantity: describe([row[quantity] for row in rows], seed=seed)
            for quantity in quantities
        }

    by_class = {}  # a multi-label row (a list of labels) counts in each of its classes
    for label in sorted({label for row in records for label in _classes(row)}):
        rows = [row for row in records if label in _classes(row)]
        by_class[str(label)] = {
            "num_samples": len(rows),
            "accuracy": float(np.mean([row["correct"] for row in rows])),
            "metrics": block(rows),
        }
    correct = [row for row in records if row["correct"]]
    wrong = [row for row in records if not row["correct"]]
    return {
        "num_samples": len(records),
        "accuracy": float(np.mean([row["correct"] for row in records])) if records else None,
        "metrics": block(records),
        "by_class": by_class,
        "by_correctness": {
            "correct": {"num_samples": len(correct), "metrics": block(correct)},
            "misclassified": {"num_samples": len(wrong), "metrics": block(wrong)},
        },
    }
