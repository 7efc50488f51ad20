"""The white-box matrix-free methods: Fisher products by double backward, never the rows.

Each pairs an eigenvalue estimator (Lanczos, or the paper's power iteration) with a trace
estimator over one :class:`~hf_fisher.operators.FisherOperator`:

- "lanczos": Lanczos from an informed start (option ``lanczos_start``, default "informed": the
  top class's score ``grad_x log p_top`` mixed with a seeded random vector, one backward pass;
  :data:`LANCZOS_STARTS`), then its Krylov basis Q is reused for the trace:
  ``tr(F) = tr(Q^T F Q) + tr((I - QQ^T) F (I - QQ^T))``, the first term the sum of the Ritz
  values (exact, free), the remainder by class-space probes added until its standard error is
  at most ``trace_rtol`` times the trace (at least 6, at most ``num_probes``;
  :func:`~hf_fisher.estimators.hutchinson.deflated_class_space_hutchinson`);
- "power": power iteration, with a plain class-space Hutchinson trace of ``num_probes``
  probes;
- "hutchinson" and "hutchpp": input-space probes, for comparison (lambda_max by Lanczos).

"lanczos" and "power" take the exact trace (standard error 0) when the exact dual is no dearer
than the probes (``K - 1 <= num_probes``, K for multi-label: that many backward passes against
``num_probes``). The trace is also exact where Lanczos's Krylov space spans the Fisher's whole
range (then it is the sum of the Ritz values). A stochastic trace is raised to the sum of the
Ritz values found when it falls below it: that sum is a lower bound on trace(F), so the raise
only shrinks the error, and every white-box record has ``trace >= spectral_norm``
(:func:`trace_with_ritz_bounds`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from hf_fisher.estimators.hutchinson import (
    TraceEstimate,
    class_space_hutchinson,
    deflated_class_space_hutchinson,
    hutchinson,
    hutchpp,
)
from hf_fisher.estimators.lanczos import EigenEstimate, lanczos
from hf_fisher.estimators.power import power_iteration
from hf_fisher.estimators.result import FisherSpectrum, pad_eigenvalues
from hf_fisher.estimators.spec import Cost, EstimatorCall, MethodSpec, Problem, Returns
from hf_fisher.operators import FisherOperator

DEFAULT_MAX_ITER = 100
PRODUCT_FORWARD_EQUIVALENTS = 2  # a double-backward J v and a backward J^T w (measured ~2.1)
FLOAT64_BYTES = 8

DEFAULT_TRACE_RTOL = 0.05

TopEstimator = Callable[[FisherOperator, EstimatorCall, int], EigenEstimate]
TraceEstimator = Callable[[FisherOperator, EstimatorCall, EigenEstimate], TraceEstimate]


def _top_class_score(operator: FisherOperator) -> Tensor:  # (N, d)
    """``grad_x log p(y* | x)`` for the most probable outcome y* (one backward pass).

    Categorical: ``J^T (e_top - p)``, the top class's score (structured outputs: the sum over
    positions, the score of the joint argmax). Multi-label: ``J^T (y* - s)`` with
    ``y* = [z > 0]``, the most probable label set. Cotangents are formed without cancellation.
    """
    logits = operator.logits.detach().double()
    if operator.likelihood == "bernoulli":
        cotangent = torch.where(logits > 0, torch.sigmoid(-logits), -torch.sigmoid(logits))
    else:
        top = operator.top_class[..., None]
        cotangent = -operator.probs
        rest = operator.probs.sum(dim=-1, keepdim=True) - operator.probs.gather(-1, top)
        cotangent = cotangent.scatter(-1, top, rest)
    return operator.vjp(cotangent)


LANCZOS_STARTS: dict[str, Callable[[FisherOperator], Tensor | None]] = {
    "informed": _top_class_score,  # mixed with the random start (lanczos.START_MIX)
    "random": lambda operator: None,  # each sample's seeded "start" stream
}
"""Where Lanczos starts, by the ``lanczos_start`` option's value."""


def _lanczos_top(
    operator: FisherOperator, call: EstimatorCall, max_iter: int, *, basis: bool = False
) -> EigenEstimate:
    options = call.options
    return lanczos(
        operator,
        top_k=options["top_k"],
        max_iter=max_iter,
        tol=options["tol"],
        seed=options["seed"],
        sample_ids=call.sample_ids,
        return_eigenvectors=bool(options.get("shares")),
        start=LANCZOS_STARTS[options.get("lanczos_start", "informed")](operator),
        return_basis=basis,
    )


def _top_class_gradient(operator: FisherOperator) -> Tensor:  # (N, d)
    """Each sample's top-class logit gradient ``grad_x z_top`` (one backward pass)."""
    selector = torch.zeros_like(operator.logits)
    selector[torch.arange(selector.shape[0], device=selector.device), operator.top_class] = 1.0
    return operator.vjp(selector)


POWER_STARTS: dict[str, Callable[[FisherOperator], Tensor | None]] = {
    "random": lambda operator: None,  # each sample's seeded "start" stream
    "top-class-gradient": _top_class_gradient,  # the SRP code's start (paper_compat)
}
"""Where power iteration starts, by the ``power_start`` option's value."""


def _power_top(operator: FisherOperator, call: EstimatorCall, max_iter: int) -> EigenEstimate:
    options = call.options
    return power_iteration(
        operator,
        max_iter=max_iter,
        tol=options["tol"],
        seed=options["seed"],
        sample_ids=call.sample_ids,
        return_eigenvectors=bool(options.get("shares")),
        start=POWER_STARTS[options.get("power_start", "random")](operator),
    )


def _exact_trace(operator: FisherOperator) -> TraceEstimate:
    exact_trace = operator.exact_trace()
    return TraceEstimate(exact_trace, torch.zeros_like(exact_trace), operator.rank_bound)


def _class_space_trace(
    operator: FisherOperator, call: EstimatorCall, eigen: EigenEstimate
) -> TraceEstimate:
    """Exact when ``rank_bound <= num_probes`` backward passes, else class-space probes."""
    num_probes = call.options["num_probes"]
    if operator.rank_bound <= num_probes:
        return _exact_trace(operator)
    seed = call.options["seed"]
    return class_space_hutchinson(
        operator, num_probes=num_probes, seed=seed, sample_ids=call.sample_ids
    )


def _deflated_trace(
    operator: FisherOperator, call: EstimatorCall, eigen: EigenEstimate
) -> TraceEstimate:
    """Exact as in :func:`_class_space_trace`, else the Krylov-deflated adaptive trace."""
    options = call.options
    if operator.rank_bound <= options["num_probes"]:
        return _exact_trace(operator)
    if eigen.complete.all():  # the Ritz values are the whole spectrum: no probes needed
        return TraceEstimate(eigen.ritz_sum, torch.zeros_like(eigen.ritz_sum), 0)
    return deflated_class_space_hutchinson(
        operator,
        eigen.basis,
        eigen.ritz_sum,
        max_probes=options["num_probes"],
        rtol=options.get("trace_rtol", DEFAULT_TRACE_RTOL),
        seed=options["seed"],
        sample_ids=call.sample_ids,
    )


def _input_trace(
    estimator: Callable[..., TraceEstimate],
    operator: FisherOperator,
    call: EstimatorCall,
    eigen: EigenEstimate,
) -> TraceEstimate:
    options = call.options
    return estimator(
        operator,
        num_matvecs=options["num_probes"],
        seed=options["seed"],
        sample_ids=call.sample_ids,
    )


def trace_with_ritz_bounds(trace: TraceEstimate, top: EigenEstimate) -> tuple[Tensor, Tensor]:
    """The trace to report: the Ritz sum where the Krylov space spans the range, else the estimate.

    The sum of the Ritz values is the trace of a compression of the PSD Fisher, so it never
    exceeds trace(F): raising an estimate to it only moves it toward the truth, and the standard
    error of the estimate stays a valid (conservative) error bar. A trace its estimator reports
    exact (standard error 0: the K backward passes of the class-space trace) is kept (raised to
    lambda_max through rounding only), even where the space spans the range: it spans the whole
    range in exact arithmetic only, and with float32 products its Ritz sum loses eigenvalues far
    below lambda_max (measured: 1.6e-3 of a multi-label BERT's trace).
    """
    exact = trace.standard_error == 0
    bounded = torch.maximum(trace.trace, top.ritz_sum)
    value = torch.where(top.complete, top.ritz_sum, bounded)
    value = torch.where(exact, torch.maximum(trace.trace, top.eigenvalues[:, 0]), value)
    error = torch.where(top.complete, torch.zeros_like(trace.standard_error), trace.standard_error)
    return value, error


KNOB_DEFAULTS = {"lanczos_start": "informed", "trace_rtol": DEFAULT_TRACE_RTOL}
"""Method knobs recorded in the result's settings (beyond ``max_iter`` and ``num_probes``)."""


def _run(
    call: EstimatorCall,
    *,
    name: str,
    top: TopEstimator,
    trace: TraceEstimator,
    knobs: tuple[str, ...],
) -> FisherSpectrum:
    """Run one matrix-free method: ``top`` for the eigenvalues, ``trace`` for the trace."""
    operator = FisherOperator(call.logit_fn, call.inputs, call.space_mask, call.likelihood)
    options = call.options
    max_iter = DEFAULT_MAX_ITER if options["max_iter"] is None else options["max_iter"]
    eigen = top(operator, call, max_iter)
    estimate = trace(operator, call, eigen)
    trace_value, trace_error = trace_with_ritz_bounds(estimate, eigen)
    probes = estimate.per_sample
    if probes is None:
        probes = torch.full_like(eigen.iterations, estimate.num_matvecs)
    result = FisherSpectrum(
        spectral_norm=eigen.eigenvalues[:, 0],
        trace=trace_value,
        eigenvalues=pad_eigenvalues(eigen.eigenvalues, options["top_k"]),
        logits=operator.logits.detach().double(),
        method=name,
        converged=eigen.converged,
        iterations=eigen.iterations,
        trace_standard_error=trace_error,
        settings={
            "max_iter": max_iter,
            "num_probes": options["num_probes"],
            **{knob: options.get(knob, KNOB_DEFAULTS[knob]) for knob in knobs},
        },
        likelihood=call.likelihood,
        trace_probes=probes,
    )
    if eigen.eigenvectors is not None:  # shares asked for: one more double backward
        vector = eigen.eigenvectors[:, :, 0]
        result.attach_shares(vector, operator.position_quadratic_forms(vector))
    return result


def _products(problem: Problem, krylov: bool) -> int:
    """Fisher products at the budget: Lanczos is exact after rank + 1, power may use all."""
    max_iter = DEFAULT_MAX_ITER if problem.max_iter is None else problem.max_iter
    return min(max_iter, problem.rank_bound + 1) if krylov else max_iter


def _cost(problem: Problem, *, krylov: bool, input_probes: bool) -> Cost:
    """One forward, the informed start's backward, the products, and the trace's passes.

    Lanczos counts its informed start (the default ``lanczos_start``) and the trace its most
    probes, ``num_probes`` (the adaptive trace usually stops earlier): a budget, not a typical
    cost.
    """
    products = _products(problem, krylov)
    vectors = products + 1 if krylov else 3  # Krylov basis, or power's few vectors (float64)
    if input_probes:
        trace_cost = PRODUCT_FORWARD_EQUIVALENTS * problem.num_probes
        vectors += problem.num_probes
    else:
        trace_cost = min(problem.rank_bound, problem.num_probes)  # one backward each
        if krylov and problem.rank_bound > problem.num_probes:  # the deflated probes' vectors
            vectors += problem.num_probes
    start_cost = 1 if krylov else 0
    return Cost(
        forward_equivalents=1 + start_cost + PRODUCT_FORWARD_EQUIVALENTS * products + trace_cost,
        memory_bytes=vectors * problem.dim * FLOAT64_BYTES,
    )


def _spec(
    name: str,
    top: TopEstimator,
    trace: TraceEstimator,
    *,
    krylov: bool,
    input_probes: bool,
    knobs: tuple[str, ...] = (),
    auto: bool = False,
) -> MethodSpec:
    return MethodSpec(
        name=name,
        black_box=False,
        returns=Returns(
            eigenvalues="top-k" if krylov else "top-1",
            eigenvalue_error="converged",
            trace="standard-error",
        ),
        cost=partial(_cost, krylov=krylov, input_probes=input_probes),
        run=partial(_run, name=name, top=top, trace=trace, knobs=knobs),
        auto=auto,
    )


LANCZOS = _spec(
    "lanczos",
    partial(_lanczos_top, basis=True),
    _deflated_trace,
    krylov=True,
    input_probes=False,
    knobs=("lanczos_start", "trace_rtol"),
    auto=True,
)
POWER = _spec("power", _power_top, _class_space_trace, krylov=False, input_probes=False)
HUTCHINSON = _spec(
    "hutchinson",
    _lanczos_top,
    partial(_input_trace, hutchinson),
    krylov=True,
    input_probes=True,
    knobs=("lanczos_start",),
)
HUTCHPP = _spec(
    "hutchpp",
    _lanczos_top,
    partial(_input_trace, hutchpp),
    krylov=True,
    input_probes=True,
    knobs=("lanczos_start",),
)
