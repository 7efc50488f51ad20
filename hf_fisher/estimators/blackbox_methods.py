"""The black-box methods "sketch" and "rayleigh-max" as registered methods (softmax only).

Thin adapters from :mod:`hf_fisher.estimators.blackbox` (forward queries only) to
:class:`~hf_fisher.FisherSpectrum`; the statistics live there.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from hf_fisher.estimators.blackbox import SketchEstimate, rayleigh_max, sketch_fisher
from hf_fisher.estimators.result import FisherSpectrum, pad_eigenvalues
from hf_fisher.estimators.spec import Cost, EstimatorCall, MethodSpec, Problem, Returns

DEFAULT_NUM_QUERIES = 201
FLOAT64_BYTES = 8


def _run(
    call: EstimatorCall, *, name: str, estimator: Callable[..., SketchEstimate], top_k: bool
) -> FisherSpectrum:
    options = call.options
    queries = options["num_queries"]
    sketch = estimator(
        call.logit_fn,
        call.inputs,
        num_queries=DEFAULT_NUM_QUERIES if queries is None else queries,
        space_mask=call.space_mask,
        seed=options["seed"],
        sample_ids=call.sample_ids,
        step=options.get("fd_step"),  # None: the dtype's default step
        **({"top_k": options["top_k"]} if top_k else {}),
    )
    return FisherSpectrum(
        spectral_norm=sketch.eigenvalues[:, 0],
        trace=sketch.trace,
        eigenvalues=pad_eigenvalues(sketch.eigenvalues, options["top_k"]),
        logits=sketch.logits.double(),
        method=name if sketch.scheme != "coordinates" else f"{name}-coordinates",
        spectral_norm_ci=sketch.spectral_norm_ci,
        trace_ci=sketch.trace_ci,
        num_queries=sketch.num_queries,
        settings={"num_queries": sketch.num_queries, "scheme": sketch.scheme, "step": sketch.step},
    )


def _cost(problem: Problem, *, coordinates: bool) -> Cost:
    """Forward queries only: the budget, or ``2 d + 1`` when every coordinate fits it."""
    budget = DEFAULT_NUM_QUERIES if problem.num_queries is None else problem.num_queries
    queries = 2 * problem.dim + 1 if coordinates and 2 * problem.dim + 1 <= budget else budget
    directions = max(1, (queries - 1) // 2)
    return Cost(forward_equivalents=queries, memory_bytes=directions * problem.dim * FLOAT64_BYTES)


SKETCH = MethodSpec(
    name="sketch",
    black_box=True,
    returns=Returns(
        eigenvalues="top-k", eigenvalue_error="interval", trace="interval", queries=True
    ),
    cost=partial(_cost, coordinates=True),
    run=partial(_run, name="sketch", estimator=sketch_fisher, top_k=True),
    auto=True,
)
RAYLEIGH_MAX = MethodSpec(
    name="rayleigh-max",
    black_box=True,
    returns=Returns(
        eigenvalues="top-1", eigenvalue_error="lower-bound", trace="estimate", queries=True
    ),
    cost=partial(_cost, coordinates=False),
    run=partial(_run, name="rayleigh-max", estimator=rayleigh_max, top_k=False),
)
