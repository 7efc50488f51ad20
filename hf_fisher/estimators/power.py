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
    return_eigenvectors: bool = False,
    start: torch.Tensor | None = None,
) -> EigenEstimate:
    """Largest eigenvalue of every block by power iteration, stopping each sample at ``tol``.

    Each product ``F v`` of a unit vector v gives the Rayleigh quotient ``rho = v^T F v`` and the
    residual ``r = ||F v - rho v||`` at no extra cost. A sample converges when
    ``r <= tol * rho``: then some eigenvalue lies within ``tol * rho`` of rho, and since
    ``rho <= lambda_max`` that eigenvalue is lambda_max unless the random start is (nearly)
    orthogonal to the top eigenvector (see :class:`~hf_fisher.estimators.lanczos.EigenEstimate`).
    Power iteration needs ~log(1/tol) / log(lambda_1 / lambda_2) products and never converges
    when the top two eigenvalues are (nearly) equal: prefer :func:`lanczos`. With
    ``return_eigenvectors`` the last iterate (unit norm) is returned as the eigenvector.

    ``start`` (N, d) replaces the random start vectors (drawn from each sample's "start"
    stream); the SRP code starts from the top class's logit gradient (see
    :data:`~hf_fisher.estimators.matrix_free.POWER_STARTS`).

    >>> a = torch.diag(torch.tensor([4.0, 1.0, 0.5], dtype=torch.float64))
    >>> round(power_iteration(a, tol=1e-12, max_iter=200).eigenvalues.item(), 6)
    4.0
    """
    op = as_operator(operator)
    num_samples = op.shape[0]
    if start is None:
        vectors = _start_vectors(op, default_streams(seed, num_samples, "start", sample_ids))
    else:
        vectors = start.double().reshape(num_samples, -1)
        vectors = vectors / vectors.norm(dim=1, keepdim=True).clamp_min(
            torch.finfo(torch.float64).tiny
        )
    estimate = torch.zeros(num_samples, dtype=torch.float64, device=op.device)
    residual = torch.full_like(estimate, float("inf"))
    relative = torch.full_like(estimate, float("inf"))
    done = torch.zeros(num_samples, dtype=torch.bool, device=op.device)
    iterations = torch.zeros(num_samples, dtype=torch.long, device=op.device)
    tiny = torch.finfo(torch.float64).tiny
    for step in range(max_iter):
        product = op.matvec(vectors.to(op.dtype)).double()
        rayleigh = (product * vectors).sum(dim=1)
        norm = product.norm(dim=1)
        active = ~done
        step_residual = (product - rayleigh[:, None] * vectors).norm(dim=1)
        step_relative = torch.where(
            norm <= tiny, torch.zeros_like(norm), step_residual / rayleigh.clamp_min(tiny)
        )
        residual = torch.where(active, step_residual, residual)
        relative = torch.where(active, step_relative, relative)
        estimate = torch.where(active, rayleigh, estimate)
        iterations = torch.where(active, torch.full_like(iterations, step + 1), iterations)
        done |= relative <= tol
        if done.all():
            break
        vectors = torch.where(active[:, None], product / norm.clamp_min(tiny)[:, None], vectors)
    estimate = estimate.clamp_min(0)
    return EigenEstimate(
        eigenvalues=estimate[:, None],
        converged=relative <= tol,
        iterations=iterations,
        residual=relative,
        residuals=residual[:, None],
        ritz_sum=estimate,
        complete=torch.zeros_like(done),
        eigenvectors=vectors[:, :, None] if return_eigenvectors else None,
    )
