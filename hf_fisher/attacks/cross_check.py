"""The attack cross-check: does a large lambda_max(F) mean a small adversarial distance?

:func:`attack_report` runs PGD and FGSM over a grid of budgets, bisects each sample's minimal
PGD epsilon, and ranks ``spectral_norm`` against it side by side with the two cheap baselines,
over the correctly classified samples; :class:`AttackReport` is results.json's ``"attacks"``
section.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hf_fisher._progress import ProgressCallback, Steps
from hf_fisher.attacks._geometry import Loss, Norm, _logits, check_batch
from hf_fisher.attacks.baselines import SanityFlags, baseline_scores, sanity_flags
from hf_fisher.attacks.gradient import fgsm, pgd
from hf_fisher.attacks.minimal import AttackBudget, MinimalEpsilon, _seeded, minimal_epsilon
from hf_fisher.correlation import (
    PartialCorrelation,
    RankCorrelation,
    floats_from_json,
    json_float,
    json_floats,
    partial_rank_correlation,
    rank_correlation,
)
from hf_fisher.errors import InputError
from hf_fisher.flip import flip_radii, kl_to_flip
from hf_fisher.operators import LogitFn

EXPECTED_SIGNS = {"spectral_norm": -1, "confidence": -1, "first_order": 1, "flip_radius": 1}


@dataclass
class AttackReport:
    """The attack cross-check of one model (results.json section ``"attacks"``).

    Attributes:
        epsilons: budgets of the robust-accuracy curve; ``robust_accuracy`` maps "pgd" and
            "fgsm" to one accuracy per epsilon; clean_accuracy at epsilon 0.
        minimal: per-sample bisection result and its budget.
        spectral_norm, confidence, first_order: (N,) per-sample predictors.
        correct: (N,) bool, correctly classified on clean inputs; correlations use these only.
        correlations: "spectral_norm", "confidence", "first_order" -> correlation with the
            minimal epsilon (expected signs: negative, negative, positive).
        partial: spectral_norm vs minimal epsilon given confidence.
        sanity: the flags.
        flip_radius: (N,) ``sqrt(2 KL_flip / lambda_max)`` (:mod:`hf_fisher.flip`), correlated
            as "flip_radius" (expected sign positive); None in sections written before it.
    """

    epsilons: list[float]
    clean_accuracy: float
    robust_accuracy: dict[str, list[float]]
    minimal: MinimalEpsilon
    spectral_norm: Tensor
    confidence: Tensor
    first_order: Tensor
    correct: Tensor
    correlations: dict[str, RankCorrelation]
    partial: PartialCorrelation
    sanity: SanityFlags
    flip_radius: Tensor | None = None

    def to_json(self) -> dict:
        """Plain-Python dict; +inf minimal epsilons become null."""
        extra = {} if self.flip_radius is None else {"flip_radius": json_floats(self.flip_radius)}
        return {
            "norm": self.minimal.budget.norm,
            "budget": self.minimal.budget.to_json(),
            "epsilons": [float(e) for e in self.epsilons],
            "clean_accuracy": float(self.clean_accuracy),
            "robust_accuracy": {
                name: [float(a) for a in values] for name, values in self.robust_accuracy.items()
            },
            "num_samples": int(self.correct.numel()),
            "num_correct": int(self.correct.sum()),
            "num_not_flipped": int(torch.isinf(self.minimal.epsilon).sum()),
            "median_minimal_epsilon": json_float(
                self.minimal.epsilon[self.correct].double().median()
                if bool(self.correct.any())
                else float("nan")
            ),
            "correlations": {name: c.to_json() for name, c in self.correlations.items()},
            "expected_signs": dict(EXPECTED_SIGNS),
            "partial_spectral_norm_given_confidence": self.partial.to_json(),
            "sanity": self.sanity.to_json(),
            "per_sample": {
                "minimal_epsilon": json_floats(self.minimal.epsilon),
                "lower_epsilon": json_floats(self.minimal.lower),
                "spectral_norm": json_floats(self.spectral_norm),
                "confidence": json_floats(self.confidence),
                "first_order": json_floats(self.first_order),
                "correct": [bool(c) for c in self.correct.tolist()],
                **extra,
            },
        }

    @classmethod
    def from_json(cls, data: dict) -> AttackReport:
        """Read back :meth:`to_json` (per-sample values as float64 tensors on the CPU).

        Summaries (counts, median, ``expected_signs``) are recomputed from the per-sample
        values, not read. A null minimal epsilon or first-order distance is +inf (never flipped,
        zero gradient), any other null NaN.
        """
        per_sample = data["per_sample"]
        minimal = MinimalEpsilon(
            floats_from_json(per_sample["minimal_epsilon"], math.inf),
            floats_from_json(per_sample["lower_epsilon"]),
            AttackBudget.from_json(data["budget"]),
        )
        return cls(
            epsilons=[float(e) for e in data["epsilons"]],
            clean_accuracy=float(data["clean_accuracy"]),
            robust_accuracy={k: [float(a) for a in v] for k, v in data["robust_accuracy"].items()},
            minimal=minimal,
            spectral_norm=floats_from_json(per_sample["spectral_norm"]),
            confidence=floats_from_json(per_sample["confidence"]),
            first_order=floats_from_json(per_sample["first_order"], math.inf),
            correct=torch.tensor(per_sample["correct"], dtype=torch.bool),
            correlations={
                name: RankCorrelation.from_json(c) for name, c in data["correlations"].items()
            },
            partial=PartialCorrelation.from_json(data["partial_spectral_norm_given_confidence"]),
            sanity=SanityFlags.from_json(data["sanity"]),
            flip_radius=(
                floats_from_json(per_sample["flip_radius"], math.inf)
                if "flip_radius" in per_sample
                else None
            ),
        )


def _check_report_inputs(
    inputs: Tensor, spectral_norm: Tensor, epsilons: Sequence[float]
) -> tuple[Tensor, list[float]]:
    spectral_norm = torch.as_tensor(spectral_norm).detach().reshape(-1)
    if spectral_norm.numel() != inputs.shape[0]:
        raise InputError(
            f"got {spectral_norm.numel()} spectral_norm values for {inputs.shape[0]} inputs; "
            "pass the engine's per-sample spectral_norm, shape (N,)"
        )
    epsilons = [float(e) for e in epsilons]
    if not epsilons or min(epsilons) < 0:
        raise InputError(f"got epsilons={epsilons}; pass a non-empty list of budgets >= 0")
    return spectral_norm, epsilons


def _robust_accuracy(
    logit_fn: LogitFn,
    inputs: Tensor,
    labels: Tensor,
    epsilons: list[float],
    steps: Steps,
    *,
    pgd_options: dict,
    common: dict,
    seed: int,
) -> dict[str, list[float]]:
    """Accuracy under PGD and FGSM at each budget; PGD restarts its random source per budget."""
    robust: dict[str, list[float]] = {"pgd": [], "fgsm": []}
    for epsilon in epsilons:
        generator = _seeded(seed, inputs.device)
        result = pgd(
            logit_fn, inputs, labels, epsilon, generator=generator, **pgd_options, **common
        )
        robust["pgd"].append(float((~result.success).double().mean()))
        result = fgsm(logit_fn, inputs, labels, epsilon, **common)
        robust["fgsm"].append(float((~result.success).double().mean()))
        steps.advance()
    return robust


def _correlate(
    predictors: dict[str, Tensor],  # name -> (N,)
    target: Tensor,  # (N,) minimal epsilon
    keep: Tensor,  # (N,) bool
    *,
    confidence_level: float,
    num_bootstrap: int,
    seed: int,
) -> tuple[dict[str, RankCorrelation], PartialCorrelation]:
    """Rank-correlate each predictor with the target over the kept samples, on the CPU."""
    keep = keep.cpu()
    target = target.cpu()[keep]
    predictors = {name: values.cpu() for name, values in predictors.items()}
    correlations = {
        name: rank_correlation(
            values[keep],
            target,
            confidence=confidence_level,
            num_bootstrap=num_bootstrap,
            seed=seed,
        )
        for name, values in predictors.items()
    }
    partial = partial_rank_correlation(
        predictors["spectral_norm"][keep], target, predictors["confidence"][keep]
    )
    return correlations, partial


def attack_report(
    logit_fn: LogitFn,
    inputs: Tensor,  # (N, *shape)
    labels: Tensor,  # (N,)
    spectral_norm: Tensor,  # (N,)
    *,
    epsilons: Sequence[float],
    norm: Norm = "l2",
    eps_max: float | None = None,
    bisection_steps: int = 10,
    steps: int = 20,
    restarts: int = 1,
    step_size: float | None = None,
    loss: Loss = "ce",
    clip: tuple[float, float] | None = None,
    space_mask: Tensor | None = None,
    confidence_level: float = 0.95,
    num_bootstrap: int = 1000,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> AttackReport:
    """Attack cross-check: robust accuracy, minimal epsilons, and what predicts them.

    Runs PGD and FGSM at each epsilon, bisects each sample's minimal PGD epsilon, computes the
    baselines and sanity flags, and correlates every predictor with the minimal epsilon over
    the correctly classified samples (samples never flipped rank last). ``progress(done,
    total)`` counts one step per epsilon, per bisection PGD run and for the baselines.

    Raises:
        InputError: bad shapes, norm, clip or epsilons.
    """
    check_batch(inputs, labels, space_mask)
    spectral_norm, epsilons = _check_report_inputs(inputs, spectral_norm, epsilons)
    common = {"norm": norm, "loss": loss, "clip": clip, "space_mask": space_mask}
    pgd_options = {"steps": steps, "restarts": restarts, "step_size": step_size}
    with torch.no_grad():
        logits = _logits(logit_fn, inputs)
    correct = logits.argmax(dim=1) == labels
    flip_radius = flip_radii(spectral_norm, kl_to_flip(logits))
    steps = Steps(progress, len(epsilons) + bisection_steps + 2)
    robust = _robust_accuracy(
        logit_fn, inputs, labels, epsilons, steps, pgd_options=pgd_options, common=common, seed=seed
    )
    minimal = minimal_epsilon(
        logit_fn,
        inputs,
        labels,
        eps_max=eps_max,
        bisection_steps=bisection_steps,
        seed=seed,
        progress=lambda done, total: steps.advance(),
        **pgd_options,
        **common,
    )
    baselines = baseline_scores(logit_fn, inputs, norm=norm, space_mask=space_mask)
    predictors = {
        "spectral_norm": spectral_norm,
        "confidence": baselines.confidence,
        "first_order": baselines.first_order,
        "flip_radius": flip_radius,
    }
    correlations, partial = _correlate(
        predictors,
        minimal.epsilon,
        correct,
        confidence_level=confidence_level,
        num_bootstrap=num_bootstrap,
        seed=seed,
    )
    unflipped = int(torch.isinf(minimal.epsilon).sum())
    sanity = sanity_flags(
        logit_fn, inputs, labels, space_mask=space_mask, unflipped_at_eps_max=unflipped
    )
    steps.advance()
    return AttackReport(
        epsilons=epsilons,
        clean_accuracy=float(correct.double().mean()),
        robust_accuracy=robust,
        minimal=minimal,
        spectral_norm=spectral_norm,
        confidence=baselines.confidence,
        first_order=baselines.first_order,
        correct=correct,
        correlations=correlations,
        partial=partial,
        sanity=sanity,
        flip_radius=flip_radius,
    )
