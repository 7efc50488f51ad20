"""``paper_compat``: reproduce the public SRP code of the paper, setting by setting.

"Measuring Model Robustness via Fisher Information" (arXiv 2606.04767) ships code whose defaults
differ from hf-fisher's in ways that change the numbers (docs/paper-compat.md has the table).
:data:`PAPER_COMPAT` holds those choices as data; :func:`apply_paper_compat` turns
``paper_compat=True`` into concrete :class:`~hf_fisher.options.EstimatorOptions` and an input
space, refusing any explicit setting that contradicts the preset. Torch-free, so the command
line checks it before anything loads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from hf_fisher.errors import InputError
from hf_fisher.options import CompanionOptions, EstimatorOptions


@dataclass(frozen=True)
class PaperCompat:
    """The SRP code's settings, one field each (add a field to add a setting).

    Attributes:
        input_space: where the Fisher is measured: the model's normalised inputs.
        module_input_space: the same for a plain ``nn.Module``, whose own inputs are its
            normalised inputs.
        method: the white-box estimator for ``method="auto"`` (SRP's "Hutchinson").
        black_box_method: the estimator for ``method="auto"`` with ``black_box=True``.
        methods: the estimators the paper's code has; any other method is refused.
        num_probes: random unit probes of "rayleigh-probes".
        num_queries: black-box queries per sample (100 directions, two queries each, plus one).
        power_start: where "power" starts.
        fd_step: the black-box central-difference step, in normalised input units.
        attacks: the attack companions' budgets, in normalised input units (epsilon and
            step as absolute values); "cw" applies once a CW attack is available.
        attack_options: the PGD budget as :class:`~hf_fisher.options.CompanionOptions`
            fields, applied to an ``attacks="linf"`` run by :func:`apply_paper_compat_companions`
            (``attack_step_size`` is PGD's step as a fraction of epsilon: 2/255 of 8/255). A
            name that is not (yet) a companion option is recorded as not applied.
    """

    input_space: str = "normalized"
    module_input_space: str = "raw"
    method: str = "rayleigh-probes"
    black_box_method: str = "rayleigh-max"
    methods: tuple[str, ...] = ("rayleigh-probes", "power", "rayleigh-max")
    num_probes: int = 100
    num_queries: int = 201
    power_start: str = "top-class-gradient"
    fd_step: float = 1e-3
    attacks: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "pgd": {"norm": "linf", "epsilon": 8 / 255, "step": 2 / 255, "steps": 20},
            "cw": {"c": 1.0, "steps": 20},
        }
    )

    attack_options: dict[str, Any] = field(
        default_factory=lambda: {
            "attack_epsilons": [8 / 255],
            "attack_steps": 20,
            "attack_step_size": 0.25,
        }
    )

    def to_settings(self) -> dict[str, Any]:
        """Every setting as plain JSON (results.json ``settings.paper_compat_settings``)."""
        data = asdict(self)
        data["methods"] = list(self.methods)
        data["attack_options_not_applied"] = not_applied_attack_options(self)
        return data


def not_applied_attack_options(preset: PaperCompat) -> list[str]:
    """The preset's attack options that :class:`CompanionOptions` has no field for (yet)."""
    known = {item.name for item in fields(CompanionOptions)}
    return sorted(name for name in preset.attack_options if name not in known)


PAPER_COMPAT = PaperCompat()
"""The preset that ``paper_compat=True`` applies."""

# Estimator knobs the preset sets directly: an explicit value must be the default or the preset's.
_DIRECT_KNOBS = ("num_probes", "num_queries", "power_start", "fd_step")


def _defaults() -> dict[str, Any]:
    return {item.name: item.default for item in fields(EstimatorOptions)}


def _method(options: EstimatorOptions, preset: PaperCompat) -> str:
    if options.method == "auto":
        return preset.black_box_method if options.black_box else preset.method
    if options.method not in preset.methods:
        raise InputError(
            f"paper_compat (--paper-compat) reproduces the paper's estimators "
            f"({', '.join(preset.methods)}), not method {options.method!r}: drop --method or "
            "--paper-compat"
        )
    return options.method


def apply_paper_compat(
    options: EstimatorOptions,
    input_space: str | None,
    preset: PaperCompat = PAPER_COMPAT,
    *,
    plain_module: bool = False,
) -> tuple[EstimatorOptions, str | None]:
    """The concrete options and input space of a run; unchanged unless ``options.paper_compat``.

    Idempotent: the resolved options resolve to themselves. ``plain_module``: the model is a
    plain ``nn.Module`` (its space is ``preset.module_input_space``).

    Raises:
        InputError: an explicit input space, method or knob that contradicts the preset,
            naming both values and the flag to drop.

    >>> resolved, space = apply_paper_compat(EstimatorOptions(paper_compat=True), None)
    >>> resolved.method, resolved.num_probes, resolved.power_start, space
    ('rayleigh-probes', 100, 'top-class-gradient', 'normalized')
    """
    if not options.paper_compat:
        return options, input_space
    space = preset.module_input_space if plain_module else preset.input_space
    if input_space not in (None, space):
        raise InputError(
            f"paper_compat (--paper-compat) measures in the {space!r} input space, "
            f"but input_space={input_space!r} (--input-space) was given: drop one of them"
        )
    defaults = _defaults()
    changes: dict[str, Any] = {"method": _method(options, preset)}
    for name in _DIRECT_KNOBS:
        value, wanted = getattr(options, name), getattr(preset, name)
        if value not in (defaults[name], wanted):
            flag = "--" + name.replace("_", "-")
            raise InputError(
                f"paper_compat (--paper-compat) sets {name}={wanted!r}, but {name}={value!r} "
                f"({flag}) was given: drop {flag} or --paper-compat"
            )
        changes[name] = wanted
    return replace(options, **changes), space


def check_paper_compat_space(
    options: EstimatorOptions, input_space: str, preset: PaperCompat = PAPER_COMPAT
) -> None:
    """Refuse a ``paper_compat`` run on an already loaded classifier in another input space.

    Raises:
        InputError: the classifier measures in, e.g., pixel space.
    """
    if options.paper_compat and input_space not in (preset.input_space, preset.module_input_space):
        raise InputError(
            f"paper_compat (--paper-compat) measures in the model's {preset.input_space!r} "
            f"inputs, but the classifier given measures in {input_space!r}: load it with "
            f"load_classifier(..., input_space={preset.input_space!r}), or pass the model itself"
        )


def apply_paper_compat_companions(
    companions: CompanionOptions | None,
    estimator: EstimatorOptions,
    preset: PaperCompat = PAPER_COMPAT,
) -> CompanionOptions | None:
    """The companions of a ``paper_compat`` run: the paper's PGD budget on ``attacks="linf"``.

    Only the preset's ``attack_options`` that are companion options apply (the rest are listed
    in ``settings.paper_compat_settings.attack_options_not_applied``); other companions, and
    ``attacks="l2"`` (the paper's L2 attack is CW), are left as given. Idempotent.

    Raises:
        InputError: an explicit attack option that contradicts the preset.
    """
    pgd = preset.attacks["pgd"]["norm"]
    if not estimator.paper_compat or companions is None or companions.attacks != pgd:
        return companions
    defaults = {item.name: item.default for item in fields(CompanionOptions)}
    changes = {}
    for name, wanted in preset.attack_options.items():
        if name not in defaults:
            continue
        value = getattr(companions, name)
        plain = list(value) if isinstance(value, (list, tuple)) else value
        if plain not in (defaults[name], wanted):
            flag = "--" + name.replace("_", "-")
            raise InputError(
                f"paper_compat (--paper-compat) sets {name}={wanted!r} for --attacks {pgd}, but "
                f"{name}={plain!r} ({flag}) was given: drop {flag} or --paper-compat"
            )
        changes[name] = wanted
    return replace(companions, **changes)
