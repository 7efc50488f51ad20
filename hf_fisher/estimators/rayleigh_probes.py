"""Method "rayleigh-probes": the SRP code's white-box "Hutchinson" estimator, kept to reproduce it.

The public code of "Measuring Model Robustness via Fisher Information" (arXiv 2606.04767)
forms the K x K class-space matrix ``G = C^{1/2} J J^T C^{1/2}`` (J the K x d logits Jacobian,
``C = diag(p) - p p^T``, ``C^{1/2}`` its symmetric square root), whose eigenvalues are the
nonzero spectrum of ``F = J^T C J``, and reports ``max_j u_j^T G u_j`` over random unit probes
``u_j`` in R^K. A Rayleigh quotient never exceeds lambda_max, so the value is a lower bound of
unknown slack (the method declares ``eigenvalue_error="lower-bound"``); the trace of G is
tr(F) exactly. Prefer "exact" (the same K backward passes give every eigenvalue exactly);
this method exists for ``paper_compat`` (see docs/paper-compat.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hf_fisher._random import default_streams
from hf_fisher.errors import InputError
from hf_fisher.estimators.result import FisherSpectrum, pad_eigenvalues
from hf_fisher.estimators.spec import Cost, EstimatorCall, MethodSpec, Problem, Returns
from hf_fisher.operators import (
    LogitFn,
    _as_mask,
    _check_logits,
    _input_gradient,
    bernoulli_variances,
    check_likelihood,
    class_probabilities,
)

DEFAULT_NUM_PROBES = 100
"""The SRP code's probe count; ``num_probes`` (default 16 for the trace estimators) sets it."""


def logit_jacobian(
    logit_fn: LogitFn, inputs: Tensor, space_mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The full (N, K, d) logits Jacobian (K input backward passes) and the (N, K) logits."""
    num_samples = inputs.shape[0]
    leaf = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = logit_fn(leaf)
        _check_logits(logits, num_samples)
        if logits.ndim != 2:  # before K backward passes, not after
            raise InputError(
                f"method 'rayleigh-probes' (the paper code's estimator) takes one prediction per "
                f"input, got logits of shape {tuple(logits.shape)} (several output positions); "
                "use 'exact' or 'lanczos'"
            )
        num_classes = logits.shape[1]
        rows = inputs.new_empty(num_samples, num_classes, inputs[0].numel())
        for k in range(num_classes):
            selector = torch.zeros_like(logits)
            selector[:, k] = 1.0
            grad = _input_gradient(logits, leaf, selector, retain_graph=k < num_classes - 1)
            rows[:, k] = grad.reshape(num_samples, -1)
    mask = _as_mask(space_mask, inputs)
    if mask is not None:
        rows *= mask[:, None, :]
    return rows, logits.detach()


def class_root(logits: Tensor, likelihood: str = "categorical") -> Tensor:  # (N, K, K) float64
    """``C^{1/2}``: the symmetric PSD square root of the class covariance, accurate near 0.

    Categorical ``C = diag(p) - p p^T`` has the exact null vector 1, and the square root of an
    eigenvalue of size 1e-17 (rounding) would be 3e-9: an eigendecomposition of C puts
    batch-dependent noise of that size into ``C^{1/2}``. Instead ``B = diag(s) (I - t t^T)``
    (``s = sqrt(p)``, ``t = s / ||s||``) has ``B B^T = C`` (``sum(p) = 1``) and an exact null
    vector, and ``C^{1/2} = U Sigma U^T`` from the SVD ``B = U Sigma V^T``. Bernoulli:
    ``diag(sqrt(s (1 - s)))``.

    >>> logits = torch.tensor([[2.0, 0.5, -1.0]], dtype=torch.float64)
    >>> p = torch.softmax(logits, dim=1)[0]
    >>> root = class_root(logits)[0]
    >>> torch.allclose(root @ root, torch.diag(p) - torch.outer(p, p))
    True
    """
    if likelihood == "bernoulli":
        return torch.diag_embed(bernoulli_variances(logits).sqrt())
    roots = class_probabilities(logits, likelihood).sqrt()  # (N, K)
    unit = roots / roots.norm(dim=1, keepdim=True)
    eye = torch.eye(roots.shape[1], dtype=torch.float64, device=roots.device)
    factor = roots[:, :, None] * (eye - unit[:, :, None] * unit[:, None, :])
    left, values, _ = torch.linalg.svd(factor)
    root = (left * values[:, None, :]) @ left.transpose(1, 2)
    return 0.5 * (root + root.transpose(1, 2))


def class_space_matrix(jacobian: Tensor, root: Tensor) -> Tensor:  # -> (N, K, K) float64
    """``G = C^{1/2} J J^T C^{1/2}`` from (N, K, d) ``J`` and (N, K, K) ``C^{1/2}``."""
    rows = jacobian.double()  # float64: the rows share a common part that would cancel
    matrix = root @ (rows @ rows.transpose(1, 2)) @ root
    return 0.5 * (matrix + matrix.transpose(1, 2))


def max_rayleigh_quotient(
    matrices: Tensor, *, num_probes: int, seed: int = 0, sample_ids: list[int] | None = None
) -> Tensor:  # (N, K, K) -> (N,) float64
    """``max_j u_j^T G u_j`` over ``num_probes`` unit Gaussian probes drawn per sample.

    The probes come from the sample's own "probe" stream (:mod:`hf_fisher._random`), so a
    value does not depend on batching. It never exceeds the top eigenvalue.

    >>> g = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))[None]
    >>> value = max_rayleigh_quotient(g, num_probes=100).item()
    >>> 1.0 <= value <= 3.0
    True
    """
    num_samples, size, _ = matrices.shape
    probes = default_streams(seed, num_samples, "probe", sample_ids).normal(
        (num_probes, size), dtype=torch.float64, device=matrices.device
    )
    probes = probes / probes.norm(dim=2, keepdim=True)
    quotients = torch.einsum("npk,nkl,npl->np", probes, matrices.double(), probes)
    return quotients.amax(dim=1).clamp_min(0)


def run_rayleigh_probes(call: EstimatorCall) -> FisherSpectrum:
    """Method "rayleigh-probes": a lower bound on lambda_max, and the exact trace."""
    check_likelihood(call.likelihood)
    jacobian, logits = logit_jacobian(call.logit_fn, call.inputs, call.space_mask)
    matrix = class_space_matrix(jacobian, class_root(logits.double(), call.likelihood))
    options = call.options
    num_probes = options["num_probes"]
    top = max_rayleigh_quotient(
        matrix, num_probes=num_probes, seed=options["seed"], sample_ids=call.sample_ids
    )
    trace = matrix.diagonal(dim1=1, dim2=2).sum(dim=1)
    return FisherSpectrum(
        spectral_norm=top,
        trace=torch.maximum(trace, top),
        eigenvalues=pad_eigenvalues(top[:, None], options["top_k"]),
        logits=logits.double(),
        method="rayleigh-probes",
        settings={"num_probes": num_probes, "probe_space": "class", "is_lower_bound": True},
        likelihood=call.likelihood,
    )


def rayleigh_probes_cost(problem: Problem) -> Cost:
    """One forward and K backward passes; the K Jacobian rows are held in the input dtype."""
    rows = problem.num_classes
    return Cost(forward_equivalents=1 + rows, memory_bytes=rows * problem.dim * problem.itemsize)


RAYLEIGH_PROBES = MethodSpec(
    name="rayleigh-probes",
    black_box=False,
    returns=Returns(eigenvalues="top-1", eigenvalue_error="lower-bound", trace="exact"),
    cost=rayleigh_probes_cost,
    run=run_rayleigh_probes,
    structured_outputs=False,  # the paper's estimator: one K x K matrix per sample
)
