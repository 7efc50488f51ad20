"""Stochastic trace estimators (Hutchinson, Hutch++) with standard errors."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hf_fisher._random import default_streams
from hf_fisher.operators import BatchedOperator, FisherOperator, as_operator


@dataclass
class TraceEstimate:
    """Per-sample trace estimates.

    Attributes:
        trace: (N,) float64.
        standard_error: (N,) float64 standard error of the estimate (0 where it is exact).
        num_matvecs: products (or class-space probes) spent per sample.

    """

    trace: Tensor
    standard_error: Tensor
    num_matvecs: int


def _probes(op: BatchedOperator, count: int, seed: int, sample_ids, purpose: str = "probe"):
    signs = default_streams(seed, op.shape[0], purpose, sample_ids).rademacher(
        (count, op.shape[1]), dtype=torch.float64, device=op.device
    )
    return signs if op.space_mask is None else signs * op.space_mask.double()[:, None, :]


def _mean_and_error(samples: Tensor) -> tuple[Tensor, Tensor]:  # (N, m)
    count = samples.shape[1]
    error = (
        samples.std(dim=1) / math.sqrt(count)
        if count > 1
        else torch.full_like(samples[:, 0], float("inf"))
    )
    return samples.mean(dim=1), error


def hutchinson(
    operator: BatchedOperator | Tensor,
    *,
    num_matvecs: int = 10,
    seed: int = 0,
    sample_ids: list[int] | None = None,
) -> TraceEstimate:
    """Hutchinson's estimator ``tr(A) ~ mean_j v_j^T A v_j`` with Rademacher probes.

    >>> a = torch.diag(torch.arange(1.0, 5.0, dtype=torch.float64))
    >>> est = hutchinson(a, num_matvecs=4)
    >>> est.trace.item()  # Rademacher probes are exact on diagonal matrices
    10.0
    """
    op = as_operator(operator)
    probes = _probes(op, num_matvecs, seed, sample_ids)
    quadratic = torch.stack(
        [
            (op.matvec(probes[:, j].to(op.dtype)).double() * probes[:, j]).sum(dim=1)
            for j in range(num_matvecs)
        ],
        dim=1,
    )
    trace, error = _mean_and_error(quadratic)
    return TraceEstimate(trace, error, num_matvecs)


def hutchpp(
    operator: BatchedOperator | Tensor,
    *,
    num_matvecs: int = 12,
    seed: int = 0,
    sample_ids: list[int] | None = None,
) -> TraceEstimate:
    """Hutch++ (Meyer, Musco, Musco & Woodruff, 2021): low-rank sketch plus Hutchinson.

    A third of the products sketch the range (``Q = orth(A S)``), ``tr(Q^T A Q)`` is exact, and
    Hutchinson estimates the rest on ``(I - QQ^T) A (I - QQ^T)``. Once the sketch reaches the
    rank of A (K-1 for an input Fisher) the estimate is exact and its standard error 0.

    >>> _ = torch.manual_seed(0)
    >>> b = torch.randn(6, 2, dtype=torch.float64)
    >>> a = b @ b.T
    >>> est = hutchpp(a, num_matvecs=9)
    >>> bool(torch.isclose(est.trace, torch.trace(a)))
    True
    """
    op = as_operator(operator)
    sketch_size = max(1, num_matvecs // 3)
    probe_count = max(1, num_matvecs - 2 * sketch_size)
    sketch = _probes(op, sketch_size, seed, sample_ids, "start")
    images = torch.stack(
        [op.matvec(sketch[:, j].to(op.dtype)).double() for j in range(sketch_size)], dim=2
    )  # (N, d, s)
    basis, _ = torch.linalg.qr(images)  # (N, d, s)
    applied = torch.stack(
        [op.matvec(basis[:, :, j].to(op.dtype)).double() for j in range(sketch_size)], dim=2
    )
    low_rank = (basis * applied).sum(dim=(1, 2))
    probes = _probes(op, probe_count, seed, sample_ids)
    projected = probes - torch.einsum(
        "nds,nms->nmd", basis, torch.einsum("nds,nmd->nms", basis, probes)
    )
    quadratic = torch.stack(
        [
            (op.matvec(projected[:, j].to(op.dtype)).double() * projected[:, j]).sum(dim=1)
            for j in range(probe_count)
        ],
        dim=1,
    )
    rest, error = _mean_and_error(quadratic)
    scale = low_rank.abs() + rest.abs()
    exact = quadratic.abs().amax(dim=1) <= 1e-10 * scale.clamp_min(torch.finfo(torch.float64).tiny)
    error = torch.where(exact, torch.zeros_like(error), error)
    return TraceEstimate(low_rank + rest, error, 2 * sketch_size + probe_count)


def class_space_hutchinson(
    operator: FisherOperator,
    *,
    num_probes: int = 16,
    seed: int = 0,
    sample_ids: list[int] | None = None,
) -> TraceEstimate:
    """Trace of an input Fisher from probes in class space: one backward pass per probe.

    With ``s = sqrt(p)`` and ``z ~ N(0, I_K)``, ``u = s * z - p (s . z)`` has covariance
    ``diag(p) - p p^T`` exactly, so ``E ||J^T u||^2 = tr(J^T (diag(p) - pp^T) J) = tr(F)``. It
    costs one vector-Jacobian product per probe (no double backward) and its variance is
    governed by the K class directions rather than the d input directions. For a multi-label
    (bernoulli) operator ``u = sqrt(s (1 - s)) * z`` has covariance ``diag(s (1 - s))``. For
    structured (N, T, K) outputs each position gets its own independent probe and one backward
    pass covers all of them: ``E ||sum_t J_t^T u_t||^2 = sum_t tr(F_t)``.
    """
    streams = default_streams(seed, operator.shape[0], "probe", sample_ids)
    class_shape = tuple(operator.probs.shape[1:])  # (K,) or, structured, (T, K)
    normals = streams.normal(
        (num_probes, *class_shape), dtype=torch.float64, device=operator.device
    )
    if operator.likelihood == "bernoulli":
        probes = operator.class_factor().diagonal(dim1=-2, dim2=-1)[:, None] * normals
    else:  # independent per position: the cross terms of ||sum_t J_t^T u_t||^2 average to 0
        sqrt_probs = operator.probs.sqrt()[:, None]
        probes = sqrt_probs * normals - operator.probs[:, None] * (sqrt_probs * normals).sum(
            dim=-1, keepdim=True
        )  # (N, m, [T,] K)
    norms = torch.stack(
        [operator.vjp(probes[:, j]).double().pow(2).sum(dim=1) for j in range(num_probes)], dim=1
    )
    trace, error = _mean_and_error(norms)
    return TraceEstimate(trace, error, num_probes)
