"""Batched Lanczos for the top eigenvalues of per-sample symmetric PSD operators."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hf_fisher._random import SampleStreams, default_streams
from hf_fisher.operators import BatchedOperator, as_operator


@dataclass
class EigenEstimate:
    """Top eigenvalues per sample from an iterative method.

    Attributes:
        eigenvalues: (N, top_k) float64, descending.
        converged: (N,) bool; True when the residual bound met ``tol`` or the Krylov space was
            exhausted (then the values are exact up to rounding).
        iterations: (N,) number of operator products each sample needed.
        residual: (N,) relative residual bound ``|beta_m s_m| / theta`` of the top Ritz pair.
        eigenvectors: (N, d, top_k) float64 unit Ritz vectors, when requested.

    """

    eigenvalues: Tensor
    converged: Tensor
    iterations: Tensor
    residual: Tensor
    eigenvectors: Tensor | None = None


def _start_vectors(op: BatchedOperator, streams: SampleStreams) -> Tensor:
    vectors = streams.normal((op.shape[1],), dtype=torch.float64, device=op.device)
    if op.space_mask is not None:
        vectors = vectors * op.space_mask.double()
    return vectors / vectors.norm(dim=1, keepdim=True)


def lanczos(
    operator: BatchedOperator | Tensor,
    *,
    top_k: int = 1,
    max_iter: int = 50,
    tol: float = 1e-3,
    seed: int = 0,
    sample_ids: list[int] | None = None,
    return_eigenvectors: bool = False,
) -> EigenEstimate:
    """Top-k eigenvalues of every block by Lanczos with full reorthogonalisation.

    Each sample stops (its estimate is frozen) as soon as the residual bound of its top Ritz
    pair satisfies ``|beta_m s_m| <= tol * theta``, or when its Krylov space is exhausted (an
    input Fisher has rank <= K-1, so this happens after at most K-1 products).

    Args:
        operator: a :class:`~hf_fisher.operators.BatchedOperator` or dense (N, d, d) tensor.
        top_k: how many eigenvalues to return.
        max_iter: maximum number of products per sample.
        tol: relative residual tolerance.
        seed: seed of the per-sample start vectors.
        sample_ids: stable ids for the per-sample random streams (default ``0..N-1``).
        return_eigenvectors: also return the Ritz vectors.

    Returns:
        An :class:`EigenEstimate`.

    >>> a = torch.diag(torch.tensor([5.0, 2.0, 1.0, 0.5], dtype=torch.float64))
    >>> est = lanczos(a, top_k=2, tol=1e-10)
    >>> [round(v, 6) for v in est.eigenvalues[0].tolist()], bool(est.converged[0])
    ([5.0, 2.0], True)

    """
    op = as_operator(operator)
    num_samples, dim = op.shape
    streams = default_streams(seed, num_samples, "start", sample_ids)
    basis = [_start_vectors(op, streams)]
    alphas: list[Tensor] = []
    betas: list[Tensor] = []
    done = torch.zeros(num_samples, dtype=torch.bool, device=op.device)
    values = torch.zeros(num_samples, top_k, dtype=torch.float64, device=op.device)
    ritz_coefficients: list[Tensor | None] = [None] * num_samples
    iterations = torch.zeros(num_samples, dtype=torch.long, device=op.device)
    residual = torch.full((num_samples,), float("inf"), dtype=torch.float64, device=op.device)
    tiny = torch.finfo(torch.float64).eps
    for step in range(min(max_iter, dim)):
        current = basis[-1]
        product = op.matvec(current.to(op.dtype)).double()
        alpha = (product * current).sum(dim=1)
        stacked = torch.stack(basis, dim=1)  # (N, m, d)
        for _ in range(2):  # full reorthogonalisation, twice is enough
            overlaps = torch.einsum("nmd,nd->nm", stacked, product)
            product = product - torch.einsum("nm,nmd->nd", overlaps, stacked)
        beta = product.norm(dim=1)
        alphas.append(alpha)
        betas.append(beta)
        size = step + 1
        tridiagonal = torch.diag_embed(torch.stack(alphas, dim=1))
        if size > 1:
            off = torch.stack(betas[:-1], dim=1)
            tridiagonal = tridiagonal + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
        theta, coefficients = torch.linalg.eigh(tridiagonal)
        theta, coefficients = theta.flip(-1), coefficients.flip(-1)
        scale = theta[:, :1].abs().clamp_min(tiny)
        bound = beta * coefficients[:, -1, 0].abs() / scale[:, 0]
        exhausted = beta <= 1e-10 * scale[:, 0]
        newly_done = ~done & ((bound <= tol) | exhausted | (step == min(max_iter, dim) - 1))
        if newly_done.any():
            count = min(top_k, size)
            values[newly_done, :count] = theta[newly_done, :count].clamp_min(0)
            iterations[newly_done] = size
            residual[newly_done] = torch.where(exhausted, torch.zeros_like(bound), bound)[
                newly_done
            ]
            if return_eigenvectors:
                for index in newly_done.nonzero().flatten().tolist():
                    ritz_coefficients[index] = coefficients[index, :, :count].clone()
            done |= newly_done
        if done.all():
            break
        safe_beta = torch.where(exhausted, torch.ones_like(beta), beta)
        following = product / safe_beta[:, None]
        following[exhausted] = 0.0
        basis.append(following)
    converged = residual <= tol
    eigenvectors = None
    if return_eigenvectors:
        eigenvectors = torch.zeros(num_samples, dim, top_k, dtype=torch.float64, device=op.device)
        stacked = torch.stack(basis, dim=1)
        for index, coefficients in enumerate(ritz_coefficients):
            size, count = coefficients.shape
            eigenvectors[index, :, :count] = stacked[index, :size].T @ coefficients
    return EigenEstimate(values, converged, iterations, residual, eigenvectors)
