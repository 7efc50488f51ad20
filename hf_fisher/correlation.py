"""Rank correlations between per-sample robustness numbers, with p-values and bootstrap CIs.

Shared by the attack cross-check and the CLEVER baseline. Values may contain ``+inf`` (a sample
never flipped up to the attack budget): ranks are taken first, so such samples rank last, tied
with each other, and the count of them is reported.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from hf_fisher.errors import InputError

if TYPE_CHECKING:  # torch and scipy are imported where used: ``import hf_fisher`` stays light
    from torch import Tensor

    ArrayLike = Tensor | np.ndarray | list[float]


def json_float(value: float) -> float | None:
    """Return a plain Python float, or None for NaN and infinities (JSON has neither)."""
    value = float(value)
    return value if math.isfinite(value) else None


def json_floats(values: ArrayLike) -> list[float | None]:
    """Return a list of plain floats, None where the value is NaN or infinite."""
    return [json_float(value) for value in _as_array(values, "values")]


def float_from_json(value: float | None, missing: float = math.nan) -> float:
    """Inverse of :func:`json_float`: None (a NaN or infinity in the file) becomes ``missing``.

    >>> float_from_json(None), float_from_json(None, math.inf), float_from_json(2)
    (nan, inf, 2.0)
    """
    return missing if value is None else float(value)


def floats_from_json(values: list[float | None], missing: float = math.nan) -> Tensor:  # (n,)
    """Inverse of :func:`json_floats`: a float64 tensor, ``missing`` where the file has None.

    Why ``missing``: the file cannot say which non-finite value a None was; the caller knows
    (a never-flipped minimal epsilon is +inf, an undefined statistic NaN).
    """
    import torch

    return torch.tensor([float_from_json(v, missing) for v in values], dtype=torch.float64)


def _as_array(values: ArrayLike, name: str) -> np.ndarray:
    torch = sys.modules.get("torch")  # a tensor exists only once torch has been imported
    if torch is not None and isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if np.isnan(array).any():
        bad = np.flatnonzero(np.isnan(array))[:10].tolist()
        raise InputError(f"{name} has NaN at positions {bad}; drop or fix those samples first")
    if np.isneginf(array).any():
        raise InputError(f"{name} has -inf values; only +inf (rank last) is supported")
    return array


def _pair(x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x_arr, y_arr = _as_array(x, "x"), _as_array(y, "y")
    if x_arr.shape != y_arr.shape:
        raise InputError(
            f"got {x_arr.size} values for x and {y_arr.size} for y; pass one value per sample"
        )
    return x_arr, y_arr


def _row_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # (B, n), (B, n) -> (B,)
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (a * b).sum(axis=-1) / denominator, np.nan)


@dataclass
class RankCorrelation:
    """Spearman and Kendall correlation of two per-sample quantities.

    Attributes:
        spearman, spearman_p: Spearman's rho and its two-sided p-value (scipy).
        spearman_ci: percentile bootstrap CI of rho at ``confidence`` (NaN if n < 3).
        kendall, kendall_p: Kendall's tau-b and its two-sided p-value.
        num_samples: samples used; num_infinite: of those, with a +inf value in x or y.
        confidence, num_bootstrap: settings of the CI.
    """

    spearman: float
    spearman_p: float
    spearman_ci: tuple[float, float]
    kendall: float
    kendall_p: float
    num_samples: int
    num_infinite: int
    confidence: float
    num_bootstrap: int

    def to_json(self) -> dict:
        """Plain-Python dict; NaN (undefined, e.g. constant input) becomes None."""
        return {
            "spearman": json_float(self.spearman),
            "spearman_p": json_float(self.spearman_p),
            "spearman_ci": [json_float(bound) for bound in self.spearman_ci],
            "kendall": json_float(self.kendall),
            "kendall_p": json_float(self.kendall_p),
            "num_samples": int(self.num_samples),
            "num_infinite": int(self.num_infinite),
            "confidence": float(self.confidence),
            "num_bootstrap": int(self.num_bootstrap),
        }

    @classmethod
    def from_json(cls, data: dict) -> RankCorrelation:
        """Read back :meth:`to_json`; None (undefined) becomes NaN."""
        low, high = data["spearman_ci"]
        return cls(
            spearman=float_from_json(data["spearman"]),
            spearman_p=float_from_json(data["spearman_p"]),
            spearman_ci=(float_from_json(low), float_from_json(high)),
            kendall=float_from_json(data["kendall"]),
            kendall_p=float_from_json(data["kendall_p"]),
            num_samples=data["num_samples"],
            num_infinite=data["num_infinite"],
            confidence=data["confidence"],
            num_bootstrap=data["num_bootstrap"],
        )


def rank_correlation(
    x: ArrayLike,  # (n,)
    y: ArrayLike,  # (n,)
    *,
    confidence: float = 0.95,
    num_bootstrap: int = 1000,
    seed: int = 0,
) -> RankCorrelation:
    """Spearman and Kendall correlations, ``+inf`` ranked last, with a bootstrap CI for rho.

    The bootstrap resamples samples with replacement ``num_bootstrap`` times (all at once, ranks
    recomputed per resample) and reports the percentile interval.

    Args:
        x, y: one value per sample; +inf allowed, NaN not.
        confidence: level of the bootstrap interval, in (0, 1).
        num_bootstrap: resamples; 0 skips the CI (reported as NaN).
        seed: seed of the resampling, for reproducible intervals.

    Returns:
        The :class:`RankCorrelation`.

    Raises:
        InputError: NaN values, different lengths, or a confidence outside (0, 1).

    >>> round(rank_correlation([1, 2, 3, 4], [1, 3, 2, float("inf")]).spearman, 3)
    0.8
    """
    import scipy.stats

    x_arr, y_arr = _pair(x, y)
    if not 0.0 < confidence < 1.0:
        raise InputError(f"got confidence={confidence}; pass a level in (0, 1), e.g. 0.95")
    if num_bootstrap < 0:
        raise InputError(f"got num_bootstrap={num_bootstrap}; pass 0 (no CI) or more")
    size = x_arr.size
    num_infinite = int((np.isinf(x_arr) | np.isinf(y_arr)).sum())
    nan = float("nan")
    if size < 3:
        return RankCorrelation(nan, nan, (nan, nan), nan, nan, size, num_infinite, confidence, 0)
    x_rank, y_rank = scipy.stats.rankdata(x_arr), scipy.stats.rankdata(y_arr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN
        spearman = scipy.stats.spearmanr(x_rank, y_rank)
        kendall = scipy.stats.kendalltau(x_rank, y_rank)
    interval = (nan, nan)
    if num_bootstrap > 0:
        rng = np.random.default_rng(seed)
        index = rng.integers(0, size, size=(num_bootstrap, size))
        rhos = _row_pearson(
            scipy.stats.rankdata(x_arr[index], axis=1), scipy.stats.rankdata(y_arr[index], axis=1)
        )
        rhos = rhos[np.isfinite(rhos)]
        if rhos.size:
            alpha = 1.0 - confidence
            low, high = np.quantile(rhos, [alpha / 2, 1.0 - alpha / 2])
            interval = (float(low), float(high))
    return RankCorrelation(
        spearman=float(spearman.statistic),
        spearman_p=float(spearman.pvalue),
        spearman_ci=interval,
        kendall=float(kendall.statistic),
        kendall_p=float(kendall.pvalue),
        num_samples=size,
        num_infinite=num_infinite,
        confidence=confidence,
        num_bootstrap=num_bootstrap,
    )


@dataclass
class PartialCorrelation:
    """Partial Spearman correlation of x and y given z, with its t-test p-value."""

    value: float
    p_value: float
    num_samples: int

    def to_json(self) -> dict:
        """Plain-Python dict; NaN becomes None."""
        return {
            "spearman": json_float(self.value),
            "p_value": json_float(self.p_value),
            "num_samples": int(self.num_samples),
        }

    @classmethod
    def from_json(cls, data: dict) -> PartialCorrelation:
        """Read back :meth:`to_json`; None (undefined) becomes NaN."""
        return cls(
            float_from_json(data["spearman"]),
            float_from_json(data["p_value"]),
            data["num_samples"],
        )


def partial_rank_correlation(x: ArrayLike, y: ArrayLike, z: ArrayLike) -> PartialCorrelation:
    """Spearman correlation of x and y with the (rank-linear) effect of z removed.

    ``rho_xy.z = (rho_xy - rho_xz rho_yz) / sqrt((1 - rho_xz^2)(1 - rho_yz^2))`` on ranks;
    p-value from ``t = rho sqrt((n - 3) / (1 - rho^2))`` with n - 3 degrees of freedom.

    >>> x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    >>> partial_rank_correlation(x, x, [2.0, 1.0, 4.0, 3.0, 6.0, 5.0]).value
    1.0
    """
    import scipy.stats

    x_arr, y_arr = _pair(x, y)
    z_arr, _ = _pair(z, y)
    size = x_arr.size
    if size < 4:
        return PartialCorrelation(float("nan"), float("nan"), size)
    ranks = np.stack([scipy.stats.rankdata(v) for v in (x_arr, y_arr, z_arr)])
    with np.errstate(invalid="ignore", divide="ignore"):  # constant ranks: NaN, handled below
        rho = np.corrcoef(ranks)
    if not np.isfinite(rho).all():
        return PartialCorrelation(float("nan"), float("nan"), size)
    denominator = math.sqrt(max((1 - rho[0, 2] ** 2) * (1 - rho[1, 2] ** 2), 0.0))
    if denominator == 0.0:
        return PartialCorrelation(float("nan"), float("nan"), size)
    value = float(np.clip((rho[0, 1] - rho[0, 2] * rho[1, 2]) / denominator, -1.0, 1.0))
    dof = size - 3
    if abs(value) == 1.0:
        return PartialCorrelation(value, 0.0, size)
    t_stat = value * math.sqrt(dof / (1.0 - value**2))
    return PartialCorrelation(value, float(2 * scipy.stats.t.sf(abs(t_stat), dof)), size)
