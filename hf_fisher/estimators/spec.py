"""What a registered method declares: its kind, what it returns, its cost, and how to run it.

Every method of :func:`~hf_fisher.fisher_spectrum` is one :class:`MethodSpec`, defined in the
method's own module and listed once in :mod:`hf_fisher.estimators.registry`. Its
:class:`Returns` says which error information the :class:`~hf_fisher.FisherSpectrum` carries,
and its cost model (:class:`Cost` per sample of a :class:`Problem`) is what ``method="auto"``
weighs against an :class:`AutoBudget`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import Tensor

from hf_fisher.estimators.result import FisherSpectrum
from hf_fisher.operators import LogitFn

EigenvalueKind = Literal["all", "top-k", "top-1"]
EigenvalueError = Literal["exact", "converged", "interval", "lower-bound"]
TraceKind = Literal["exact", "standard-error", "interval", "estimate"]

# The optional FisherSpectrum fields, by the declaration that makes a method fill them.
_EIGENVALUE_ERROR_FIELDS = {
    "exact": (),
    "converged": ("converged", "iterations"),
    "interval": ("spectral_norm_ci",),
    "lower-bound": (),
}
_TRACE_ERROR_FIELDS = {
    "exact": (),
    "standard-error": ("trace_standard_error",),
    "interval": ("trace_ci",),
    "estimate": (),
}
OPTIONAL_FIELDS = (
    "converged",
    "iterations",
    "trace_standard_error",
    "spectral_norm_ci",
    "trace_ci",
    "num_queries",
)


@dataclass(frozen=True)
class Returns:
    """What a method's :class:`~hf_fisher.FisherSpectrum` holds.

    Attributes:
        eigenvalues: "all" (every nonzero eigenvalue), "top-k" (the ``top_k`` largest) or
            "top-1" (lambda_max only; later columns are zero).
        eigenvalue_error: "exact" (to rounding), "converged" (residual-norm flags and
            iteration counts), "interval" (a confidence interval on lambda_max) or
            "lower-bound" (a value that can only be low, with no error bar).
        trace: "exact", "standard-error" (stochastic, with a standard error that is 0 where
            the value is exact), "interval" (a confidence interval) or "estimate" (no error bar).
        queries: the number of forward queries per sample is reported (black-box methods).
    """

    eigenvalues: EigenvalueKind
    eigenvalue_error: EigenvalueError
    trace: TraceKind
    queries: bool = False

    @property
    def filled_fields(self) -> frozenset[str]:
        """The optional :class:`~hf_fisher.FisherSpectrum` fields this method fills."""
        names = _EIGENVALUE_ERROR_FIELDS[self.eigenvalue_error] + _TRACE_ERROR_FIELDS[self.trace]
        return frozenset(names + (("num_queries",) if self.queries else ()))


@dataclass(frozen=True)
class Problem:
    """The sizes a cost model needs: one sample's classes and input size, and the knobs.

    ``max_iter`` and ``num_queries`` of None mean the method's own default; ``num_positions``
    is T for structured outputs (a product of T categoricals), 1 otherwise.
    """

    num_classes: int
    dim: int
    itemsize: int = 4
    likelihood: str = "categorical"
    top_k: int = 1
    max_iter: int | None = None
    num_probes: int = 16
    num_queries: int | None = None
    num_positions: int = 1

    @property
    def rank_bound(self) -> int:
        """Rank bound of the Fisher: T (K-1) (categorical) or T K (bernoulli), T positions."""
        per_position = self.num_classes if self.likelihood == "bernoulli" else self.num_classes - 1
        return self.num_positions * per_position


@dataclass(frozen=True)
class Cost:
    """A method's cost per sample, at its budget (worst case, not typical).

    Attributes:
        forward_equivalents: model evaluations per sample, counting one input backward pass
            as one forward and a Fisher product (double-backward ``J v`` plus ``J^T w``) as two.
        memory_bytes: working memory per sample beyond the model's own activations.
    """

    forward_equivalents: float
    memory_bytes: int


@dataclass(frozen=True)
class AutoBudget:
    """What ``method="auto"`` may spend on one batch; see :func:`registry.choose_auto`.

    Attributes:
        max_forward_equivalents: per sample.
        max_batch_bytes: working memory of the whole batch.
        batch: samples per batch.
    """

    max_forward_equivalents: float
    max_batch_bytes: int
    batch: int

    def allows(self, cost: Cost) -> bool:
        """Whether a method of this per-sample cost fits the budget."""
        return (
            cost.forward_equivalents <= self.max_forward_equivalents
            and self.batch * cost.memory_bytes <= self.max_batch_bytes
        )


@dataclass
class EstimatorCall:
    """One batch handed to a method's ``run``.

    Attributes:
        logit_fn: maps (N, *shape) inputs to (N, K) logits; samples must be independent.
        inputs: (N, *shape) batch in the input space.
        space_mask: optional 0/1 mask broadcastable to ``inputs`` (text padding).
        sample_ids: stable per-sample ids for the random streams.
        likelihood: "categorical" (softmax) or "bernoulli" (multi-label sigmoids).
        options: the estimator knobs ``top_k``, ``max_iter``, ``tol``, ``num_queries``,
            ``num_probes`` and ``seed`` (see :func:`~hf_fisher.spectrum.spectrum_of_batch`),
            and ``shares``: also return the top eigenvector and the output positions' shares.
    """

    logit_fn: LogitFn
    inputs: Tensor
    space_mask: Tensor | None
    sample_ids: list[int]
    likelihood: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    """One estimation method, as the registry knows it.

    Attributes:
        name: the ``method=`` string.
        black_box: True when it needs forward queries only, False when it needs gradients.
        returns: what its result holds (:class:`Returns`).
        cost: its cost model: per-sample :class:`Cost` of a :class:`Problem`.
        run: estimates one batch; the result's ``settings`` hold the knobs it used beyond
            ``top_k``, ``tol`` and ``seed``.
        auto: whether ``method="auto"`` may choose it.
        structured_outputs: whether it handles (N, T, K) logits (a product of T categoricals);
            black-box methods never do.
    """

    name: str
    black_box: bool
    returns: Returns
    cost: Callable[[Problem], Cost]
    run: Callable[[EstimatorCall], FisherSpectrum]
    auto: bool = False
    structured_outputs: bool = True
