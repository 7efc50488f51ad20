"""The registry of estimation methods: one line per method, and how ``auto`` chooses.

A method is a :class:`~hf_fisher.estimators.spec.MethodSpec` in its own module; adding one
means writing that module and listing its spec in :data:`REGISTRY` below. Everything else
(method names of the CLI and runner, dispatch, ``auto``, black-box checks) reads the registry.
"""

from __future__ import annotations

from hf_fisher.errors import InputError
from hf_fisher.estimators import blackbox_methods, exact, matrix_free, rayleigh_probes
from hf_fisher.estimators.spec import AutoBudget, MethodSpec, Problem

REGISTRY: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        exact.EXACT,
        matrix_free.LANCZOS,
        matrix_free.POWER,
        matrix_free.HUTCHINSON,
        matrix_free.HUTCHPP,
        rayleigh_probes.RAYLEIGH_PROBES,
        blackbox_methods.SKETCH,
        blackbox_methods.RAYLEIGH_MAX,
    )
}


def method_names(black_box: bool | None = None) -> tuple[str, ...]:
    """Registered names in registry order: all, or only the black- or white-box ones."""
    return tuple(
        name for name, spec in REGISTRY.items() if black_box is None or spec.black_box == black_box
    )


def method_spec(name: str) -> MethodSpec:
    """The spec of a registered method; InputError naming the choices otherwise."""
    if name not in REGISTRY:
        choices = ", ".join(("auto", *REGISTRY))
        raise InputError(f"unknown method {name!r}; choose one of {choices}")
    return REGISTRY[name]


def choose_auto(black_box: bool, problem: Problem, budget: AutoBudget) -> str:
    """The first ``auto`` candidate, in registry order, whose cost fits the budget.

    Candidates are the registered methods with ``auto=True`` of the requested kind, listed most
    informative first (exact before Lanczos); when none fits, the last one is taken, so the
    registry holds at least one candidate of each kind and the last must run at any size.
    """
    candidates = [spec for spec in REGISTRY.values() if spec.auto and spec.black_box == black_box]
    for spec in candidates:
        if budget.allows(spec.cost(problem)):
            return spec.name
    return candidates[-1].name
