"""The exact estimator: every nonzero eigenvalue of F from its small dual, and the exact trace.

With the gradient rows R (one forward, then K-1 input backward passes; K for multi-label; T
times that for T output positions),
``F = R^T W R`` and its nonzero spectrum is that of the (K-1) x (K-1) dual ``B^T (R R^T) B``
(``W = B B^T`` in closed form, :func:`~hf_fisher.operators.covariance_factor`), solved in
float64. Registered as method "exact" (:data:`EXACT`); ``auto`` takes it while its rows fit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from hf_fisher.estimators.result import FisherSpectrum, pad_eigenvalues
from hf_fisher.estimators.spec import Cost, EstimatorCall, MethodSpec, Problem, Returns
from hf_fisher.memory import chunk_size, run_in_chunks, select_rows, working_memory
from hf_fisher.operators import (
    LogitFn,
    _as_mask,
    _check_logits,
    _input_gradient,
    bernoulli_variances,
    centered_class_covariance,
    check_likelihood,
    class_probabilities,
    covariance_factor,
    other_classes,
)


@dataclass
class GradientRows:
    """The gradient rows per sample, and the class weights that make F.

    Categorical: ``F_i = R_i^T W_i R_i`` with ``R_i`` the rows ``grad_x (z_k - z_top)`` for the
    K-1 classes k != top and ``W_i = diag(q) - q q^T``, q the probabilities of those classes.
    This is exact: ``diag(p) - p p^T`` annihilates the ones vector, so subtracting the top row
    changes nothing. Bernoulli: the K rows ``grad_x z_k`` and ``W_i = diag(s (1 - s))``.
    Structured (N, T, K) logits: the rows of every position, position-major, and a
    block-diagonal W (one block per position).

    Attributes:
        rows: (N, T (K-1), d) (bernoulli: (N, T K, d)) in the input dtype; T = 1 for (N, K).
        weights: (N, T (K-1), T (K-1)) (bernoulli: (N, T K, T K)) float64.
        classes: (N, T, K-1) (bernoulli: (N, T, K)) the class index of each row.
        probs: (N, [T,] K) float64 probabilities (softmax, or sigmoids); logits: detached.
        top_class: (N, [T]).
        likelihood: "categorical" or "bernoulli".

    """

    rows: Tensor
    weights: Tensor
    classes: Tensor
    probs: Tensor
    logits: Tensor
    top_class: Tensor
    likelihood: str = "categorical"

    @property
    def position_probs(self) -> Tensor:  # (N, T, K)
        """The probabilities with an explicit position axis (T = 1 for (N, K) logits)."""
        return self.probs if self.probs.ndim == 3 else self.probs[:, None]


def _block_diagonal(blocks: Tensor) -> Tensor:  # (N, T, m, m) -> (N, T m, T m)
    num_samples, positions, size, _ = blocks.shape
    if positions == 1:
        return blocks[:, 0]
    out = blocks.new_zeros(num_samples, positions * size, positions * size)
    for position in range(positions):
        part = slice(position * size, (position + 1) * size)
        out[:, part, part] = blocks[:, position]
    return out


def _row_classes(probs: Tensor, likelihood: str) -> tuple[Tensor, Tensor]:
    """Per position: the classes that get a row (N, T, m), and each row's subtracted class."""
    num_samples, positions, num_classes = probs.shape
    top = probs.argmax(dim=-1)  # (N, T)
    if likelihood == "bernoulli":
        classes = torch.arange(num_classes, device=probs.device).expand(num_samples, positions, -1)
    else:
        classes = other_classes(top.reshape(-1), num_classes).reshape(num_samples, positions, -1)
    return classes, top[:, :, None].expand_as(classes)


def gradient_rows(
    logit_fn: LogitFn,
    inputs: Tensor,
    space_mask: Tensor | None = None,
    likelihood: str = "categorical",
) -> GradientRows:
    """Compute the exact dual factors of F: one forward, then T (K-1) (bernoulli: T K) backward.

    Args:
        logit_fn: maps (N, *input_shape) to (N, K) logits, or (N, T, K) for T positions.
        inputs: (N, *input_shape).
        space_mask: optional (N, *input_shape) 0/1 mask of coordinates in the space.
        likelihood: "categorical" (softmax) or "bernoulli" (multi-label sigmoids).

    Returns:
        The :class:`GradientRows` of the batch.

    """
    check_likelihood(likelihood)
    bernoulli = likelihood == "bernoulli"
    num_samples = inputs.shape[0]
    leaf = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = logit_fn(leaf)
        _check_logits(logits, num_samples)
        probs = class_probabilities(logits.detach(), likelihood)
        position_probs = probs if probs.ndim == 3 else probs[:, None]
        num_classes = logits.shape[-1]
        classes, subtracted = _row_classes(position_probs, likelihood)
        offsets = num_classes * torch.arange(classes.shape[1], device=logits.device)[None, :, None]
        flat_classes = (classes + offsets).reshape(num_samples, -1)  # indices into T K
        flat_subtracted = (subtracted + offsets).reshape(num_samples, -1)
        num_rows = flat_classes.shape[1]
        rows = inputs.new_empty(num_samples, num_rows, inputs[0].numel())
        sample_index = torch.arange(num_samples, device=logits.device)
        selector = logits.new_zeros(num_samples, logits[0].numel())
        for step in range(num_rows):
            if not bernoulli:
                selector[sample_index, flat_subtracted[:, step]] = -1.0
            selector[sample_index, flat_classes[:, step]] = 1.0
            grad = _input_gradient(
                logits, leaf, selector.reshape(logits.shape), retain_graph=step < num_rows - 1
            )
            selector.zero_()
            rows[:, step] = grad.reshape(num_samples, -1)
        mask = _as_mask(space_mask, inputs)
        if mask is not None:
            rows *= mask[:, None, :]
    if bernoulli:
        variances = bernoulli_variances(logits.detach()).reshape(num_samples, -1)
        weights = torch.diag_embed(variances)
    else:
        blocks = centered_class_covariance(
            position_probs.gather(2, classes).reshape(-1, num_classes - 1)
        )
        weights = _block_diagonal(blocks.reshape(num_samples, -1, *blocks.shape[1:]))
    return GradientRows(
        rows=rows,
        weights=weights,
        classes=classes,
        probs=probs,
        logits=logits.detach(),
        top_class=probs.argmax(dim=-1),
        likelihood=likelihood,
    )


@dataclass
class DualSpectrum:
    """Eigen-decomposition of F through its small dual Gram matrix (size: the number of rows).

    Attributes:
        eigenvalues: (N, R) float64, descending; R = T (K-1) (bernoulli: T K) rows.
        trace: (N,) float64, exact.
        class_vectors: (N, R, R) float64; column j maps to the j-th input-space eigenvector
            by :func:`input_eigenvectors`.
        weight_factor: (N, R, R) float64 ``B`` with ``B B^T = W``.
    """

    eigenvalues: Tensor
    trace: Tensor
    class_vectors: Tensor
    weight_factor: Tensor


def _weight_factor(factors: GradientRows) -> Tensor:  # (N, R, R) float64
    if factors.likelihood == "bernoulli":
        return torch.diag_embed(factors.weights.diagonal(dim1=1, dim2=2).sqrt())
    probs = factors.position_probs
    num_samples, positions, num_classes = probs.shape
    gathered = probs.gather(2, factors.classes).reshape(-1, num_classes - 1)
    blocks = covariance_factor(gathered)
    return _block_diagonal(blocks.reshape(num_samples, positions, *blocks.shape[1:]))


def dual_spectrum(factors: GradientRows) -> DualSpectrum:
    """Exact nonzero spectrum of ``F = R^T W R`` from the small matrix ``B^T (R R^T) B``.

    ``W = B B^T`` in closed form (:func:`covariance_factor` per position, or ``sqrt(W)`` for the
    diagonal bernoulli weights); the Gram ``R R^T`` is formed in the rows' dtype and everything
    after it in float64.
    """
    gram = (factors.rows @ factors.rows.transpose(1, 2)).double()  # (N, R, R)
    factor = _weight_factor(factors)
    dual = factor.transpose(1, 2) @ gram @ factor
    dual = 0.5 * (dual + dual.transpose(1, 2))
    values, vectors = torch.linalg.eigh(dual)
    values, vectors = values.flip(-1).clamp_min(0), vectors.flip(-1)
    trace = (factors.weights * gram).sum(dim=(1, 2))
    return DualSpectrum(values, trace, vectors, factor)


def input_eigenvectors(factors: GradientRows, spectrum: DualSpectrum, top_k: int = 1) -> Tensor:
    """Return the top-k unit input-space eigenvectors of F, shape (N, d, top_k), float64.

    ``F u = lambda u`` with ``u = R^T B y / sqrt(lambda)`` for a dual eigenvector y.
    """
    coefficients = spectrum.weight_factor @ spectrum.class_vectors[:, :, :top_k]
    vectors = factors.rows.double().transpose(1, 2) @ coefficients  # (N, d, top_k)
    return vectors / vectors.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)


def position_terms(factors: GradientRows, vector: Tensor) -> Tensor:  # (N, d) -> (N, T)
    """Each output position's term of ``u^T F u``: ``(R_t u)^T W_t (R_t u)``, from the rows."""
    directional = factors.rows.double() @ vector.double()[:, :, None]  # (N, R, 1)
    weighted = (factors.weights @ directional)[:, :, 0] * directional[:, :, 0]
    return weighted.reshape(len(vector), factors.position_probs.shape[1], -1).sum(dim=2)


def _exact_batch(call: EstimatorCall) -> FisherSpectrum:
    """Method "exact" on one chunk of samples, all held at once."""
    factors = gradient_rows(call.logit_fn, call.inputs, call.space_mask, call.likelihood)
    exact = dual_spectrum(factors)
    result = FisherSpectrum(
        spectral_norm=exact.eigenvalues[:, 0],
        trace=torch.maximum(exact.trace, exact.eigenvalues[:, 0]),  # equal up to rounding
        eigenvalues=pad_eigenvalues(exact.eigenvalues, call.options["top_k"]),
        logits=factors.logits.double(),
        method="exact",
        likelihood=call.likelihood,
    )
    if call.options.get("shares"):
        vector = input_eigenvectors(factors, exact)[:, :, 0]
        result.attach_shares(vector, position_terms(factors, vector))
    return result


def exact_chunk_size(call: EstimatorCall) -> int:
    """Samples whose gradient rows fit ``call.options["max_memory"]`` (default "auto").

    One sample's rows take ``T (K-1) d`` numbers in the input dtype (``T K d`` multi-label),
    with one more input-sized gradient per backward pass; K and T come from a forward pass of
    the first sample.
    """
    num_samples = call.inputs.shape[0]
    budget = working_memory(call.options.get("max_memory", "auto"), call.inputs.device)
    with torch.no_grad():
        shape = select_rows(call.logit_fn, slice(0, 1))(call.inputs[:1]).shape
    problem = Problem(
        shape[-1],
        call.inputs[0].numel(),
        call.inputs.element_size(),
        call.likelihood,
        num_positions=shape[1] if len(shape) == 3 else 1,
    )
    per_sample = exact_cost(problem).memory_bytes + problem.dim * problem.itemsize
    return chunk_size(budget, per_sample, num_samples)


def run_exact(call: EstimatorCall) -> FisherSpectrum:
    """Method "exact": all nonzero eigenvalues and the trace, exact up to rounding.

    With ``call.options["shares"]`` it also returns the top eigenvector and, for structured
    outputs, each position's share of lambda_max. Samples run in chunks whose gradient rows fit
    the memory budget (:func:`exact_chunk_size`), halved on out-of-memory; each sample's result
    is its own, so the chunking changes nothing but rounding.
    """
    size = exact_chunk_size(call)
    if size >= call.inputs.shape[0]:
        return _exact_batch(call)
    mask = call.space_mask
    if mask is not None:
        mask = mask.expand_as(call.inputs)

    def run(part: slice) -> FisherSpectrum:
        chunk = replace(
            call,
            logit_fn=select_rows(call.logit_fn, part),
            inputs=call.inputs[part],
            space_mask=None if mask is None else mask[part],
            sample_ids=call.sample_ids[part],
        )
        return _exact_batch(chunk)

    parts = run_in_chunks(run, call.inputs.shape[0], size, what="exact: ")
    return FisherSpectrum.concatenate(parts)


def exact_cost(problem: Problem) -> Cost:
    """One forward and one backward per gradient row; the rows are held in the input dtype."""
    rows = problem.rank_bound
    return Cost(forward_equivalents=1 + rows, memory_bytes=rows * problem.dim * problem.itemsize)


EXACT = MethodSpec(
    name="exact",
    black_box=False,
    returns=Returns(eigenvalues="all", eigenvalue_error="exact", trace="exact"),
    cost=exact_cost,
    run=run_exact,
    auto=True,
)
