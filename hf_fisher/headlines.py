"""Headline numbers of each companion measurement, and their two lines on the terminal.

Each function reads one results.json section (plain JSON, never tensors or the model), so the
same headline serves the terminal summary, ``hf-fisher evaluate --json`` and any later reader
of results.json. :data:`hf_fisher.companions.COMPANIONS` names one per measurement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Headline:
    """What a companion's result says at a glance.

    Attributes:
        values: the headline numbers (JSON values; None where undefined).
        lines: two terminal lines, without the measurement's name.
    """

    values: dict[str, Any]
    lines: tuple[str, str]


def _num(value: float | None, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)


def _pairs(values: Sequence[float | None], at: Sequence[float], spec: str = ".2f") -> str:
    return ", ".join(f"{_num(v, spec)} @ {a:.3g}" for v, a in zip(values, at, strict=True))


def attacks_headline(section: dict) -> Headline:
    """Robust accuracy per budget and the Spearman correlation of lambda_max with minimal eps."""
    correlations = section["correlations"]
    spearman = {name: c["spearman"] for name, c in correlations.items()}
    interval = correlations["spectral_norm"]["spearman_ci"]
    values = {
        "norm": section["norm"],
        "epsilons": section["epsilons"],
        "clean_accuracy": section["clean_accuracy"],
        "robust_accuracy": section["robust_accuracy"],
        "median_minimal_epsilon": section["median_minimal_epsilon"],
        "spearman": spearman,
        "spearman_ci": interval,
    }
    robust = section["robust_accuracy"]
    first = (
        f"{section['norm']} PGD robust accuracy {_pairs(robust['pgd'], section['epsilons'])} "
        f"(clean {section['clean_accuracy']:.2f})"
    )
    second = (
        f"Spearman with minimal eps: lambda_max {_num(spearman['spectral_norm'], '.2f')} "
        f"[{_num(interval[0], '.2f')}, {_num(interval[1], '.2f')}], "
        f"confidence {_num(spearman.get('confidence'), '.2f')}, "
        f"first-order {_num(spearman.get('first_order'), '.2f')}"
    )
    return Headline(values, (first, second))


def noise_headline(section: dict) -> Headline:
    """Areas under the accuracy and Brier curves, and where the Brier bound crosses tolerance."""
    sigmas, crossing = section["sigmas"], section["crossing_sigma"]
    values = {
        key: section[key] for key in ("auc_accuracy", "auc_brier", "crossing_sigma", "tolerance")
    }
    first = (
        f"accuracy AUC {_num(section['auc_accuracy'])} and Brier AUC "
        f"{_num(section['auc_brier'])} over sigma {sigmas[0]:g} to {sigmas[-1]:g} "
        f"({section['kind']}, {section['draws']} draws)"
    )
    bound = f"{section['confidence']:.0%} upper bound on the Brier error"
    tolerance = section["tolerance"]
    if crossing is None:
        second = f"{bound} stays below {tolerance:g} up to sigma {sigmas[-1]:g}"
    elif crossing <= sigmas[0]:
        second = (
            f"{bound} is above {tolerance:g} already at sigma {sigmas[0]:g} (too few samples "
            "x draws for a tight bound?)"
        )
    else:
        second = f"{bound} crosses {tolerance:g} at sigma {crossing:.3g}"
    return Headline(values, (first, second))


def kl_check_headline(section: dict) -> Headline:
    """Relative error of the second-order KL at the smallest and largest radius, valid radius."""
    radii, errors = section["radii"], section["median_relative_error"]
    valid = section["valid_radius"]
    values = {
        "radii": radii,
        "median_relative_error": errors,
        "valid_radius": valid,
        "tolerance": section["tolerance"],
    }
    first = (
        "median relative error of 1/2 d^T F d vs measured KL: "
        f"{_num(errors[0])} at r={radii[0]:g}, {_num(errors[-1])} at r={radii[-1]:g}"
    )
    holds = f"second-order KL within {section['tolerance']:g} (median)"
    second = (
        f"{holds} up to r={valid:g}"
        if valid is not None
        else f"{holds} at no radius of the grid (smallest r={radii[0]:g})"
    )
    return Headline(values, (first, second))


def clever_headline(section: dict) -> Headline:
    """Median CLEVER scores and their Spearman correlation with lambda_max."""
    spearman = {name: c["spearman"] for name, c in section["correlations"].items()}
    values = {
        "median_untargeted": section["median_untargeted"],
        "median_top2": section["median_top2"],
        "spearman": spearman,
    }
    first = (
        f"median CLEVER score untargeted {_num(section['median_untargeted'])}, top-2 "
        f"{_num(section['median_top2'])} ({section['norm']}, radius {section['radius']:g})"
    )
    second = (
        f"Spearman(lambda_max, CLEVER) untargeted {_num(spearman.get('untargeted'), '.2f')}, "
        f"top-2 {_num(spearman.get('top2'), '.2f')} (expected < 0)"
    )
    return Headline(values, (first, second))


def frequency_headline(section: dict) -> Headline:
    """The I-ASIDE spectral robustness score and the band Fisher's energy share per band."""
    iaside, fisher = section.get("iaside"), section.get("fisher")
    score = None if iaside is None else iaside["score"]
    share = None if fisher is None else fisher["energy_share"]
    values = {"score": score, "energy_share": share}
    first = f"I-ASIDE spectral robustness score {_num(score)} ({section['num_bands']} bands)"
    second = "band Fisher energy share, low to high frequency: " + (
        "n/a" if share is None else " ".join(f"{v:.2f}" for v in share)
    )
    return Headline(values, (first, second))


def path_separation_headline(section: dict) -> Headline:
    """Class separation S in weight-activation paths vs activations alone (1 = none)."""
    boot = section.get("bootstrap")
    interval = None if boot is None else boot["intervals"].get("score")
    values = {
        "score": section["score"],
        "score_ci": interval,
        "activation_score": section["activation_score"],
        "excess_score": section["excess_score"],
        "num_layers": len(section["layers"]),
    }
    ci = "" if interval is None else f" [{_num(interval[0])}, {_num(interval[1])}]"
    first = (
        f"path separation S {_num(section['score'])}{ci} over {len(section['layers'])} layers "
        "(1 = no class separation)"
    )
    second = (
        f"activation-only S {_num(section['activation_score'])}; "
        f"excess divergence {_num(section['excess_score'])} nats (reconstructed definition)"
    )
    return Headline(values, (first, second))


def bound_headline(section: dict) -> Headline:
    """The data-free bound on lambda_max and how loose it is against the measured values."""
    values = {
        key: section[key]
        for key in ("lambda_bound", "ratio_to_max", "ratio_to_median", "num_above_bound")
    }
    first = f"data-free bound lambda_max <= {_num(section['lambda_bound'])}"
    if section.get("kind") == "estimate":  # attention blocks entered as local estimates
        first = f"estimate (attention blocks local) lambda_max ~ {_num(section['lambda_bound'])}"
    second = (
        f"{_num(section['ratio_to_max'], '.2g')}x the largest measured lambda_max, "
        f"{_num(section['ratio_to_median'], '.2g')}x the median; "
        f"{section['num_above_bound']} samples above it"
    )
    return Headline(values, (first, second))
