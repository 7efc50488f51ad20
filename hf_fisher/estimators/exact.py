"""The exact estimator: every nonzero eigenvalue of F from its small dual, and the exact trace.

With the gradient rows R (one forward, then K-1 input backward passes; K for multi-label),
``F = R^T W R`` and its nonzero spectrum is that of the (K-1) x (K-1) dual ``B^T (R R^T) B``
(``W = B B^T`` in closed form, :func:`~hf_fisher.operators.covariance_factor`), solved in
float64. Registered as method "exact" (:data:`EXACT`); ``auto`` takes it while its rows fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hf_fisher.estimators.result import FisherSpectrum, pad_eigenvalues
from hf_fisher.estimators.spec import Cost, EstimatorCall, MethodSpec, Problem, Returns
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

    Attributes:
        rows: (N, K-1, d) (bernoulli: (N, K, d)) in the input dtype.
        weights: (N, K-1, K-1) (bernoulli: (N, K, K)) float64.
        classes: (N, K-1) (bernoulli: (N, K)) the class index of each row.
        probs: (N, K) float64 probabilities (softmax, or sigmoids); logits: (N, K) detached.
        top_class: (N,).
        likelihood: "categorical" or "bernoulli".

    """

    rows: Tensor
    weights: Tensor
    classes: Tensor
    probs: Tensor
    logits: Tensor
    top_class: Tensor
    likelihood: str = "categorical"


def gradient_rows(
    logit_fn: LogitFn,
    inputs: Tensor,
    space_mask: Tensor | None = None,
    likelihood: str = "categorical",
) -> GradientRows:
    """Compute the exact dual factors of F: one forward, then K-1 (bernoulli: K) backward passes.

    Args:
        logit_fn: maps (N, *input_shape) to (N, K) logits.
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
        top_class = probs.argmax(dim=1)
        num_classes = logits.shape[1]
        if bernoulli:
            classes = torch.arange(num_classes, device=logits.device).expand(num_samples, -1)
        else:
            classes = other_classes(top_class, num_classes)
        num_rows = classes.shape[1]
        mask = _as_mask(space_mask, inputs)
        rows = inputs.new_empty(num_samples, num_rows, inputs[0].numel())
        sample_index = torch.arange(num_samples, device=logits.device)
        selector = torch.zeros_like(logits)
        if not bernoulli:
            selector[sample_index, top_class] = -1.0
        for step in range(num_rows):
            selector[sample_index, classes[:, step]] = 1.0
            grad = _input_gradient(logits, leaf, selector, retain_graph=step < num_rows - 1)
            selector[sample_index, classes[:, step]] = 0.0
            rows[:, step] = grad.reshape(num_samples, -1)
        if mask is not None:
            rows *= mask[:, None, :]
    if bernoulli:
        weights = torch.diag_embed(bernoulli_variances(logits.detach()))
    else:
        weights = centered_class_covariance(probs.gather(1, classes))
    return GradientRows(
        rows=rows,
        weights=weights,
        classes=classes,
        probs=probs,
        logits=logits.detach(),
        top_class=top_class,
        likelihood=likelihood,
    )


@dataclass
class DualSpectrum:
    """Eigen-decomposition of F through its (K-1) x (K-1) (bernoulli: K x K) dual Gram matrix.

    Attributes:
        eigenvalues: (N, K-1) (bernoulli: (N, K)) float64, descending.
        trace: (N,) float64, exact.
        class_vectors: (N, K-1, K-1) float64; column j maps to the j-th input-space eigenvector
            by :func:`input_eigenvectors`.
        weight_factor: (N, K-1, K-1) float64 ``B`` with ``B B^T = W``.
    """

    eigenvalues: Tensor
    trace: Tensor
    class_vectors: Tensor
    weight_factor: Tensor


def dual_spectrum(factors: GradientRows) -> DualSpectrum:
    """Exact nonzero spectrum of ``F = R^T W R`` from the small matrix ``B^T (R R^T) B``.

    ``W = B B^T`` in closed form (:func:`covariance_factor`, or ``sqrt(W)`` for the diagonal
    bernoulli weights); the Gram ``R R^T`` is formed in
    the rows' dtype and everything after it in float64.
    """
    gram = (factors.rows @ factors.rows.transpose(1, 2)).double()  # (N, K-1, K-1)
    if factors.likelihood == "bernoulli":
        factor = torch.diag_embed(factors.weights.diagonal(dim1=1, dim2=2).sqrt())
    else:
        factor = covariance_factor(factors.probs.gather(1, factors.classes))
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


def run_exact(call: EstimatorCall) -> FisherSpectrum:
    """Method "exact": all nonzero eigenvalues and the trace, exact up to rounding."""
    factors = gradient_rows(call.logit_fn, call.inputs, call.space_mask, call.likelihood)
    exact = dual_spectrum(factors)
    return FisherSpectrum(
        spectral_norm=exact.eigenvalues[:, 0],
        trace=torch.maximum(exact.trace, exact.eigenvalues[:, 0]),  # equal up to rounding
        eigenvalues=pad_eigenvalues(exact.eigenvalues, call.options["top_k"]),
        logits=factors.logits.double(),
        method="exact",
        likelihood=call.likelihood,
    )


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
