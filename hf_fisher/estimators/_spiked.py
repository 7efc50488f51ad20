"""Debiasing and intervals for the top eigenvalue of a sketched covariance (a spiked Wishart model).

The black-box sketch observes ``S ~ Wishart(Sigma, M) / M`` (M Gaussian directions), an unbiased
estimate of a K x K covariance ``Sigma`` whose eigenvalues are the nonzero Fisher spectrum. The
top eigenvalue ``l1`` of ``S`` is biased up (Jensen; a flat spectrum is the worst case, like a
Wishart's edge), by an amount that depends on the rest of the spectrum.

The rest is summarised by a *spiked-flat working model*: ``Sigma`` has eigenvalues ``lam`` and
``k`` copies of ``c <= lam`` (k fractional). For a candidate ``lam``, ``c`` and ``k`` match the
unbiased estimates of the trace and of ``tr(Sigma^2)``: ``lam + k c = T`` and
``lam^2 + k c^2 = P2`` (capped so that ``c <= lam`` and ``k <= rank - 1``). This is exact for flat,
tied and rank-one spectra, and matches the first-order bias ``(lam / M) sum_j c_j / (lam - c_j)``
of decaying spectra closely. The quantiles of ``l1 / lam`` under the model are universal functions
of ``(c / lam, k, M)``; they are simulated once per process (Dumitriu-Edelman bidiagonal Wishart
eigenvalues plus the rank-one secular equation, common random numbers, fixed seed) and
interpolated. Solving ``lam * quantile_q(c / lam, k) = l1`` gives the estimate (q slightly above
1/2, see ``blackbox.POINT_LEVEL``) and the two ends of the interval (q = 1 - alpha/2 and alpha/2:
inverting the test). The draws of ``chi2_M`` are stratified, so rank-one quantiles are exact.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy.linalg import eigvalsh_tridiagonal
from scipy.special import chdtri
from torch import Tensor

DRAWS = 2048
X_GRID = torch.linspace(0, 1, 33, dtype=torch.float64, device="cpu")
_BASE_K = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768)


def _k_grid(rank: int) -> tuple[int, ...]:
    """Tabulated copy counts: a geometric grid up to ``rank - 1``, which is always included."""
    top = max(rank - 1, 0)
    grid = [k for k in _BASE_K if k < top]
    grid += [int(768 * 1.5**i) for i in range(1, 64) if 768 * 1.5**i < top]
    return tuple(sorted(set(grid) | {top}))


@functools.lru_cache(maxsize=16)
def _base_draws(dof: int, width: int) -> tuple[Tensor, Tensor]:
    """Common random numbers: ``rho ~ chi2_M / M`` and squared weights of a uniform unit vector.

    Returns rho (R,) and weights (R, width + 1): the first ``width`` squared coordinates of a
    uniform unit vector in R^M and the rest of its mass in the last column.
    """
    rng = np.random.default_rng(20261121 + dof)
    # stratified: the exact chi2 quantiles at (i + 1/2) / R in random order, so that the
    # no-bulk (rank-one) quantiles are exact and the dominant noise term is nearly noiseless
    rho = rng.permutation(chdtri(dof, 1 - (np.arange(DRAWS) + 0.5) / DRAWS)) / dof
    head = rng.standard_normal((DRAWS, width)) ** 2
    tail = rng.chisquare(dof - width, DRAWS) if dof > width else np.zeros(DRAWS)
    weights = np.concatenate([head, tail[:, None]], axis=1)
    weights /= weights.sum(axis=1, keepdims=True)
    return torch.from_numpy(rho), torch.from_numpy(weights)


@functools.lru_cache(maxsize=128)
def _bulk_eigenvalues(copies: int, dof: int) -> Tensor:
    """Nonzero eigenvalues of ``Wishart_M(I, copies) / M``: (R, min(copies, M)), ascending.

    From the bidiagonal model (Dumitriu & Edelman, 2002): ``B B^T`` with ``B`` lower bidiagonal,
    diagonal ``chi_{p}, ..., chi_{p-n+1}`` and subdiagonal ``chi_{n-1}, ..., chi_1``.
    """
    size, larger = min(copies, dof), max(copies, dof)
    rng = np.random.default_rng(7919 * copies + dof)
    diagonal = np.sqrt(rng.chisquare(larger - np.arange(size), (DRAWS, size)))
    below = np.sqrt(rng.chisquare(size - 1 - np.arange(size - 1), (DRAWS, max(size - 1, 0))))
    values = np.empty((DRAWS, size))
    for row in range(DRAWS):  # tridiagonal B B^T: diagonal a_i^2 + b_{i-1}^2, off-diagonal a_i b_i
        main = diagonal[row] ** 2
        main[1:] += below[row] ** 2
        values[row] = eigvalsh_tridiagonal(
            main, diagonal[row, :-1] * below[row], lapack_driver="sterf"
        )
    return torch.from_numpy(values / dof)


def _top_root(ratio: Tensor, bulk: Tensor, rho: Tensor, weights: Tensor) -> Tensor:
    """Top eigenvalue of ``ratio * diag(bulk) + rho u u^T`` for each draw and ratio.

    Solves the secular equation ``g(mu) = rho * sum_j u_j^2 / (mu - ratio * bulk_j) - 1 = 0``
    (null directions enter through the last weight, with pole 0). ``g`` is convex and decreasing
    right of the largest pole, so Newton's method started at a lower bound of the root (the
    larger of two Rayleigh quotients) increases monotonically to it.

    Args:
        ratio: (X,) values of c / lam; bulk: (R, n) ascending; rho: (R,); weights: (R, n + 1).

    Returns:
        (X, R).
    """
    poles = ratio[:, None, None] * bulk[None]  # (X, R, n)
    head, rest = weights[:, :-1], weights[:, -1]
    root = rho + (head * poles).sum(dim=2)  # u^T A u
    if bulk.shape[1]:
        root = root.maximum(poles[..., -1] + rho * head[:, -1])  # e_top^T A e_top
    for _ in range(100):
        gaps = root[..., None] - poles
        total = (head / gaps).sum(dim=2) + rest / root
        slope = (head / gaps**2).sum(dim=2) + rest / root**2
        step = (rho * total - 1).clamp_min(0) / (rho * slope)
        root = root + step
        if (step <= 1e-13 * root).all():
            break
    return root


_TABLES: dict[tuple[int, int, int, tuple[float, ...]], Tensor] = {}


def _quantile_table(
    copies: int, dof: int, width: int, levels: tuple[float, ...], columns: Tensor
) -> Tensor:
    """Quantiles of ``l1 / lam`` under (lam; ratio * lam x copies): (len(levels), len(X_GRID)).

    Columns (ratios in X_GRID) are simulated when first asked for and kept for the process;
    columns never asked for stay NaN.
    """
    key = (copies, dof, width, levels)
    if key not in _TABLES:
        _TABLES[key] = torch.full(
            (len(levels), len(X_GRID)), math.nan, dtype=torch.float64, device="cpu"
        )
    table = _TABLES[key]
    missing = [c for c in columns.unique().tolist() if math.isnan(table[0, c])]
    if missing:
        rho, weights = _base_draws(dof, width)
        probabilities = torch.tensor(levels, dtype=torch.float64, device="cpu")
        if copies == 0:  # no bulk: l1 / lam = rho whatever the ratio
            table[:] = torch.quantile(rho, probabilities)[:, None]
            return table
        bulk = _bulk_eigenvalues(copies, dof)
        size = bulk.shape[1]
        merged = torch.cat([weights[:, :size], weights[:, size:].sum(dim=1, keepdim=True)], 1)
        picked = torch.tensor(missing, device="cpu")
        roots = torch.cat([_top_root(part, bulk, rho, merged) for part in X_GRID[picked].split(4)])
        table[:, picked] = torch.quantile(roots, probabilities, dim=1)
    return table


def _interpolate(
    copies: Tensor, ratio: Tensor, dof: int, rank: int, levels: tuple[float, ...], level: int
) -> Tensor:
    """Piecewise-linear interpolation of the tabulated quantile in (copies, ratio)."""
    grid = _k_grid(rank)
    knots = torch.tensor(grid, dtype=torch.float64, device="cpu")
    width = max(min(rank - 1, dof), 1)
    position = ratio.clamp(0, 1) * (len(X_GRID) - 1)
    left = position.floor().long().clamp(max=len(X_GRID) - 2)
    frac = position - left
    columns = torch.cat([left, left + 1])
    if len(grid) == 1:
        table = _quantile_table(grid[0], dof, width, levels, columns)[level]
        return table[left] * (1 - frac) + table[left + 1] * frac
    copies = copies.clamp(0, grid[-1])
    upper = torch.searchsorted(knots, copies).clamp(1, len(grid) - 1)
    lower = upper - 1
    share = (copies - knots[lower]) / (knots[upper] - knots[lower])
    result = torch.zeros_like(copies)
    for index in torch.unique(torch.cat([lower, upper])).tolist():
        weight = torch.where(lower == index, 1 - share, 0.0)
        weight = weight + torch.where(upper == index, share, 0.0)
        used = weight > 0
        if not used.any():
            continue  # a knot hit exactly: its neighbour's table is not needed
        needed = torch.cat([left[used], left[used] + 1])
        table = _quantile_table(grid[index], dof, width, levels, needed)[level]
        value = table[left] * (1 - frac) + table[left + 1] * frac
        result = result + torch.where(used, weight * value, 0.0)
    return result


def working_model(lam: Tensor, trace: Tensor, second: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Bulk of the spiked-flat model for candidate top eigenvalues: (c / lam, k).

    ``k`` copies of ``c`` carry the remaining trace and second moment: ``k c = T - lam``,
    ``k c^2 = P2 - lam^2``; ``c <= lam`` and ``k <= rank - 1`` (then ``c`` keeps the trace).

    >>> lam = torch.tensor([1.0], dtype=torch.float64)
    >>> working_model(lam, torch.tensor([9.0]).double(), torch.tensor([9.0]).double(), 9)
    (tensor([1.], dtype=torch.float64), tensor([8.], dtype=torch.float64))
    """
    rest = (trace - lam).clamp_min(0)
    square = (second - lam**2).clamp_min(0)
    level = torch.where(rest > 0, square / rest.clamp_min(1e-300), 0.0).minimum(lam)
    copies = torch.where(level > 0, rest / level.clamp_min(1e-300), 0.0)
    most = max(rank - 1, 0)
    over = copies > most
    copies = torch.where(over, float(most), copies)
    level = torch.where(over, (rest / max(most, 1)).minimum(lam), level)
    level = torch.where(copies > 0, level, 0.0)
    return level / lam, copies


def calibrate_top(
    top: Tensor, trace: Tensor, second: Tensor, rank: int, dof: int, levels: tuple[float, ...]
) -> Tensor:
    """Solve ``lam * quantile_q(model(lam)) = l1`` for each sample and level q.

    Args:
        top: (N,) top eigenvalue ``l1`` of the sketch.
        trace, second: (N,) unbiased estimates of ``tr(Sigma)`` and ``tr(Sigma^2)``.
        rank: an upper bound on the rank of Sigma (K - 1, or d if smaller).
        dof: the Wishart degrees of freedom M (the number of directions).
        levels: quantile levels q; 1/2 gives the median-unbiased estimate, 1 - alpha/2 the lower
            and alpha/2 the upper end of a 1 - alpha interval.

    Returns:
        (N, len(levels)) float64; zero where ``l1`` is zero.
    """
    result = torch.zeros(len(top), len(levels), dtype=torch.float64, device="cpu")
    positive = top > 0  # a zero sketch (no signal, or an empty space) has lambda_max = 0
    if not positive.any():
        return result
    top, trace, second = top[positive], trace[positive], second[positive]
    # lam * quantile(model) lies between lam * quantile(no bulk) and lam * quantile(flat), and
    # the flat quantile is below (1 + sqrt(rank / M))^2 (1 + 10 / sqrt(M)) (edge plus fluctuations)
    edge = (1 + math.sqrt(rank / dof)) ** 2 * (1 + 10 / math.sqrt(dof))
    for level in range(len(levels)):
        floor = _interpolate(top.new_zeros(1), top.new_zeros(1), dof, rank, levels, level)
        low = top.log() - math.log(edge)
        high = (top / floor).log() + 0.01
        for _ in range(48):  # bisection in log(lam): lam * quantile increases with lam
            middle = 0.5 * (low + high)
            lam = middle.exp()
            ratio, copies = working_model(lam, trace, second, rank)
            value = lam * _interpolate(copies, ratio, dof, rank, levels, level)
            below = value < top
            low = torch.where(below, middle, low)
            high = torch.where(below, high, middle)
        result[positive, level] = (0.5 * (low + high)).exp()
    return result
