"""Batched Lanczos for the top eigenvalues of per-sample symmetric PSD operators.

Lanczos starts from each sample's seeded random vector, or from a caller's informed direction
mixed with it (``start`` and ``start_mix``): the Fisher methods start from the top class's score
``grad_x log p_top`` (:data:`~hf_fisher.estimators.matrix_free.LANCZOS_STARTS`), which lies in
the Fisher's range and leans toward its top eigenvectors, and keep a random part so that no
eigenvector's component is zero. The Krylov basis it builds can be returned
(``return_basis``) for a deflated trace
(:func:`~hf_fisher.estimators.hutchinson.deflated_class_space_hutchinson`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hf_fisher._random import SampleStreams, default_streams
from hf_fisher.operators import BatchedOperator, as_operator

BREAKDOWN_RTOL = 1e-10
START_MIX = 1.0
"""Weight of the random unit vector added to an informed unit start (see :func:`lanczos`).

Equal weights: on config-built ViT/ResNet (K=100, 32x32) the informed start saved as many
iterations at 1.0 as at 0.1-0.3, and a larger random part finds a top eigenvector the informed
direction misses more often (benchmarks/bench_lanczos_cost.py, docs/guarantees.md)."""


@dataclass
class EigenEstimate:
    """Top eigenvalues per sample from an iterative method, with what ``converged`` guarantees.

    For a symmetric operator F, a unit vector y and ``theta = y^T F y``, the residual
    ``r = ||F y - theta y||`` bounds the distance from theta to the spectrum: some eigenvalue
    lambda of F has ``|theta - lambda| <= r``. ``converged`` is True exactly when every requested
    pair has ``r_j <= tol * theta_j`` (so its relative error is at most ``tol``), or when the
    values are exact up to rounding (see :func:`lanczos`). Ritz values never exceed the
    eigenvalue of the same rank (``theta_j <= lambda_j``, Cauchy interlacing), so the eigenvalue
    within ``r_j`` is lambda_j unless the random start vector is (nearly) orthogonal to an
    eigenvector above it, an event of probability about ``tol`` for a Gaussian start; a
    single start vector also sees one copy of a repeated eigenvalue only. An informed start
    (``lanczos(start=...)``) changes that clause: a miss then needs the informed direction
    (nearly) orthogonal to an eigenvector above. The random part keeps that eigenvector's
    component nonzero, but in d dimensions it is only about ``start_mix / sqrt(d)`` of the
    start, so Lanczos can meet ``tol`` on a lower eigenvalue first (measured on a 40-dimensional
    operator whose informed direction is orthogonal to the top eigenvector: ``start_mix=1``
    found lambda_1 from 39 of 40 seeds, a Gaussian start from 40 of 40, ``start_mix=0`` never).

    Attributes:
        eigenvalues: (N, top_k) float64, descending (zero past the Krylov space when it holds the
            whole range, else zero-padded and not converged).
        converged: (N,) bool, ``residual <= tol``.
        iterations: (N,) number of operator products each sample needed.
        residual: (N,) float64 ``max_j r_j / theta_j`` over the requested pairs (0 where the
            values are exact, inf where a requested pair was never formed).
        residuals: (N, top_k) float64 residual norms ``r_j = ||F y_j - theta_j y_j||``.
        ritz_sum: (N,) float64 sum of all (non-negative) Ritz values: a lower bound on trace(F)
            for PSD F (the trace of a compression ``Q^T F Q`` is at most the trace), and equal
            to it where ``complete``.
        complete: (N,) bool; the Krylov space holds the operator's whole range, so the Ritz
            values are all its nonzero eigenvalues and ``ritz_sum`` is its trace.
        eigenvectors: (N, d, top_k) float64 unit Ritz vectors, when requested.
        basis: (N, m, d) float64 orthonormal Krylov basis, when requested: sample i's first
            ``iterations[i]`` rows (the space its estimate was frozen in), zero rows after.
            ``Q^T F Q`` is then the tridiagonal whose eigenvalues sum to ``ritz_sum``.

    """

    eigenvalues: Tensor
    converged: Tensor
    iterations: Tensor
    residual: Tensor
    residuals: Tensor
    ritz_sum: Tensor
    complete: Tensor
    eigenvectors: Tensor | None = None
    basis: Tensor | None = None


def _start_vectors(op: BatchedOperator, streams: SampleStreams) -> Tensor:
    vectors = streams.normal((op.shape[1],), dtype=torch.float64, device=op.device)
    if op.space_mask is not None:
        vectors = vectors * op.space_mask.double()
    return vectors / vectors.norm(dim=1, keepdim=True)


def mixed_start(
    direction: Tensor, random_unit: Tensor, mix: float = START_MIX
) -> Tensor:  # (N, d), (N, d) -> (N, d) float64
    """Unit ``normalise(g / |g| + mix r)`` per sample for a direction g and a unit random r.

    A zero direction (no gradient) leaves the random vector alone.
    """
    direction = direction.double().reshape(random_unit.shape)
    norm = direction.norm(dim=1, keepdim=True)
    unit = torch.where(norm > 0, direction / norm.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    mixed = unit + mix * random_unit
    return mixed / mixed.norm(dim=1, keepdim=True)


def lanczos(
    operator: BatchedOperator | Tensor,
    *,
    top_k: int = 1,
    max_iter: int = 50,
    tol: float = 1e-3,
    seed: int = 0,
    sample_ids: list[int] | None = None,
    return_eigenvectors: bool = False,
    rank: int | None = None,
    start: Tensor | None = None,
    start_mix: float = START_MIX,
    return_basis: bool = False,
) -> EigenEstimate:
    """Top-k eigenvalues of every block by Lanczos with full reorthogonalisation.

    After m products the Ritz pair ``(theta_j, y_j = Q s_j)`` has the residual norm
    ``r_j = ||F y_j - theta_j y_j|| = |beta_m s_{m,j}|`` (Paige 1971), free to compute. A sample
    stops (its estimate is frozen) as soon as every requested pair has ``r_j <= tol * theta_j``,
    which bounds each relative eigenvalue error by ``tol`` (see :class:`EigenEstimate`). It
    also stops, with exact values, when

    - the Krylov space holds the whole range: m >= rank + 1 products (every product lies in
      the range, so m - 1 of the m basis vectors span a rank-dimensional range), or m = d;
    - the Krylov space becomes invariant (``beta_m <= 1e-10 theta_1``): the Ritz values it
      holds are eigenvalues, but requested pairs past its dimension stay unconverged (a single
      start vector cannot see repeated eigenvalues), unless the space is also complete.

    Args:
        operator: a :class:`~hf_fisher.operators.BatchedOperator` or dense (N, d, d) tensor.
        top_k: how many eigenvalues to return.
        max_iter: maximum number of products per sample.
        tol: relative tolerance on every requested eigenvalue.
        seed: seed of the per-sample start vectors.
        sample_ids: stable ids for the per-sample random streams (default ``0..N-1``).
        return_eigenvectors: also return the Ritz vectors.
        rank: an upper bound on every block's rank (an input Fisher: K-1, or K for a
            multi-label one); default the operator's ``rank_bound`` attribute, if any.
        start: (N, d) informed start directions; the start is then
            ``normalise(start / |start| + start_mix * r)`` with r each sample's seeded random
            unit vector (default: r alone).
        start_mix: the weight of the random part of an informed start.
        return_basis: also return the Krylov basis (for a deflated trace).

    Returns:
        An :class:`EigenEstimate`.

    >>> a = torch.diag(torch.tensor([5.0, 2.0, 1.0, 0.5], dtype=torch.float64))
    >>> est = lanczos(a, top_k=2, tol=1e-10)
    >>> [round(v, 6) for v in est.eigenvalues[0].tolist()], bool(est.converged[0])
    ([5.0, 2.0], True)

    """
    op = as_operator(operator)
    num_samples, dim = op.shape
    rank = getattr(op, "rank_bound", None) if rank is None else rank
    limit = min(max_iter, dim) if rank is None else min(max_iter, dim, rank + 1)
    streams = default_streams(seed, num_samples, "start", sample_ids)
    first = _start_vectors(op, streams)
    if start is not None:
        start = start.double().reshape(num_samples, dim)
        start = start if op.space_mask is None else start * op.space_mask.double()
        first = mixed_start(start, first, start_mix)
    basis = [first]
    alphas: list[Tensor] = []
    betas: list[Tensor] = []
    state = _LanczosState.empty(num_samples, top_k, op.device, return_eigenvectors)
    tiny = torch.finfo(torch.float64).tiny
    for step in range(limit):
        product, alpha, beta = _next_product(op, basis)
        alphas.append(alpha)
        betas.append(beta)
        size = step + 1
        theta, coefficients = _ritz_pairs(alphas, betas)
        count = min(top_k, size)
        pair_residuals = beta[:, None] * coefficients[:, -1, :count].abs()  # (N, count)
        relative = pair_residuals / theta[:, :count].clamp_min(tiny)
        relative = torch.where(theta[:, :count] > 0, relative, torch.inf).amax(dim=1)
        spans_range = (rank is not None and size >= rank + 1) or size == dim
        invariant = beta <= BREAKDOWN_RTOL * theta[:, 0].abs().clamp_min(tiny)
        exact = torch.full_like(invariant, spans_range) | (invariant & (count == top_k))
        if count < top_k and not spans_range:
            relative = torch.full_like(relative, float("inf"))
        relative = torch.where(exact, torch.zeros_like(relative), relative)
        newly_done = ~state.done & ((relative <= tol) | invariant | (step == limit - 1))
        if newly_done.any():
            state.freeze(newly_done, theta, coefficients, pair_residuals, relative, spans_range)
        if state.done.all():
            break
        safe_beta = torch.where(invariant, torch.ones_like(beta), beta)
        following = product / safe_beta[:, None]
        following[invariant] = 0.0
        basis.append(following)
    return EigenEstimate(
        eigenvalues=state.values,
        converged=state.residual <= tol,
        iterations=state.iterations,
        residual=state.residual,
        residuals=state.residuals,
        ritz_sum=state.ritz_sum,
        complete=state.complete,
        eigenvectors=None
        if state.ritz_coefficients is None
        else _ritz_vectors(basis, state.ritz_coefficients, top_k),
        basis=_frozen_basis(basis, state.iterations) if return_basis else None,
    )


def _frozen_basis(basis: list[Tensor], iterations: Tensor) -> Tensor:  # (N, m, d) float64
    """Each sample's basis at its freeze: its first ``iterations[i]`` vectors, zeros after."""
    size = int(iterations.max())
    stacked = torch.stack(basis[:size], dim=1)
    keep = torch.arange(size, device=stacked.device)[None, :] < iterations[:, None]
    return stacked * keep[:, :, None]


def _next_product(op: BatchedOperator, basis: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """``F q`` for the newest basis vector q, orthogonalised against the basis; alpha, beta."""
    current = basis[-1]
    product = op.matvec(current.to(op.dtype)).double()
    alpha = (product * current).sum(dim=1)
    stacked = torch.stack(basis, dim=1)  # (N, m, d)
    for _ in range(2):  # full reorthogonalisation, twice is enough
        overlaps = torch.einsum("nmd,nd->nm", stacked, product)
        product = product - torch.einsum("nm,nmd->nd", overlaps, stacked)
    return product, alpha, product.norm(dim=1)


def _ritz_pairs(alphas: list[Tensor], betas: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Descending eigenpairs of the (N, m, m) tridiagonal Lanczos matrix."""
    tridiagonal = torch.diag_embed(torch.stack(alphas, dim=1))
    if len(alphas) > 1:
        off = torch.stack(betas[:-1], dim=1)
        tridiagonal = tridiagonal + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    theta, coefficients = torch.linalg.eigh(tridiagonal)
    return theta.flip(-1), coefficients.flip(-1)


@dataclass
class _LanczosState:
    """Per-sample results, frozen sample by sample as each one stops."""

    values: Tensor  # (N, top_k)
    residuals: Tensor  # (N, top_k)
    residual: Tensor  # (N,)
    ritz_sum: Tensor  # (N,)
    complete: Tensor  # (N,) bool
    iterations: Tensor  # (N,) long
    done: Tensor  # (N,) bool
    ritz_coefficients: list[Tensor | None] | None  # kept only when eigenvectors are wanted

    @staticmethod
    def empty(
        num_samples: int, top_k: int, device: torch.device, keep_vectors: bool
    ) -> _LanczosState:
        values = torch.zeros(num_samples, top_k, dtype=torch.float64, device=device)
        zeros = torch.zeros(num_samples, dtype=torch.float64, device=device)
        return _LanczosState(
            values=values,
            residuals=torch.full_like(values, float("inf")),
            residual=torch.full_like(zeros, float("inf")),
            ritz_sum=zeros,
            complete=torch.zeros(num_samples, dtype=torch.bool, device=device),
            iterations=torch.zeros(num_samples, dtype=torch.long, device=device),
            done=torch.zeros(num_samples, dtype=torch.bool, device=device),
            ritz_coefficients=[None] * num_samples if keep_vectors else None,
        )

    def freeze(
        self,
        newly_done: Tensor,
        theta: Tensor,
        coefficients: Tensor,
        pair_residuals: Tensor,
        relative: Tensor,
        spans_range: bool,
    ) -> None:
        """Record the samples in ``newly_done`` at the current Krylov size."""
        size, count = theta.shape[1], pair_residuals.shape[1]
        self.values[newly_done, :count] = theta[newly_done, :count].clamp_min(0)
        self.residuals[newly_done, :count] = pair_residuals[newly_done]
        if spans_range:
            self.residuals[newly_done, count:] = 0.0
        self.residual[newly_done] = relative[newly_done]
        self.ritz_sum[newly_done] = theta[newly_done].clamp_min(0).sum(dim=1)
        self.complete[newly_done] = spans_range
        self.iterations[newly_done] = size
        if self.ritz_coefficients is not None:
            for index in newly_done.nonzero().flatten().tolist():
                self.ritz_coefficients[index] = coefficients[index, :, :count].clone()
        self.done |= newly_done


def _ritz_vectors(
    basis: list[Tensor], ritz_coefficients: list[Tensor], top_k: int
) -> Tensor:  # (N, d, top_k) float64
    """Unit Ritz vectors ``Q s_j`` from each sample's frozen coefficients."""
    stacked = torch.stack(basis, dim=1)
    num_samples, _, dim = stacked.shape
    eigenvectors = stacked.new_zeros(num_samples, dim, top_k)
    for index, coefficients in enumerate(ritz_coefficients):
        size, count = coefficients.shape
        eigenvectors[index, :, :count] = stacked[index, :size].T @ coefficients
    return eigenvectors
