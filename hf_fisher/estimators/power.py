"""Batched power iteration: the paper's estimator of lambda_max, kept for comparison."""

from __future__ import annotations

import torch

from hf_fisher._random import default_streams
from hf_fisher.estimators.lanczos import EigenEstimate, _start_vectors
from hf_fisher.operators import BatchedOperator, as_operator


def power_iteration(
    operator: BatchedOperator | torch.Tensor,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    sample_ids: list[int] | None = None,
) -> EigenEstimate:
    """Largest eigenvalue of every block by power iteration, stopping each sample at ``tol``.

    A sample converges when its Rayleigh quotient changes by at most ``tol`` relative between
    iterations. Power iteration needs ~log(1/tol) / log(lambda_1 / lambda_2) products and never
    converges when the top two eigenvalues are (nearly) equal: prefer :func:`lanczos`.

    >>> a = torch.diag(torch.tensor([4.0, 1.0, 0.5], dtype=torch.float64))
    >>> round(power_iteration(a, tol=1e-12, max_iter=200).eigenvalues.item(), 6)
    4.0
    """
    op = as_operator(operator)
    num_samples = op.shape[0]
    vectors = _start_vectors(op, default_streams(seed, num_samples, "start", sample_ids))
    estimate = torch.zeros(num_samples, dtype=torch.float64, device=op.device)
    change = torch.full_like(estimate, float("inf"))
    done = torch.zeros(num_samples, dtype=torch.bool, device=op.device)
    iterations = torch.zeros(num_samples, dtype=torch.long, device=op.device)
    tiny = torch.finfo(torch.float64).tiny
    for step in range(max_iter):
        product = op.matvec(vectors.to(op.dtype)).double()
        rayleigh = (product * vectors).sum(dim=1)
        norm = product.norm(dim=1)
        active = ~done
        change = torch.where(
            active, (rayleigh - estimate).abs() / rayleigh.abs().clamp_min(tiny), change
        )
        estimate = torch.where(active, rayleigh, estimate)
        iterations = torch.where(active, torch.full_like(iterations, step + 1), iterations)
        done |= (change <= tol) | (norm <= tiny)
        if done.all():
            break
        vectors = torch.where(
            (active & (norm > tiny))[:, None], product / norm.clamp_min(tiny)[:, None], vectors
        )
    return EigenEstimate(estimate.clamp_min(0)[:, None], change <= tol, iterations, change, None)
