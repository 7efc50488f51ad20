"""The attack cross-check: does a large lambda_max(F) mean a small adversarial distance?

:func:`attack_report` runs PGD and FGSM over a grid of budgets, bisects each sample's minimal
PGD epsilon, and ranks ``spectral_norm`` against it side by side with the two cheap baselines,
over the correctly classified samples; :class:`AttackReport` is results.json's ``"attacks"``
section.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from hf_fisher._progress import ProgressCallback, Steps
from hf_fisher._random import SampleStreams
from hf_fisher.attacks._geometry import Loss, Norm, _logits, check_batch
from hf_fisher.attacks.baselines import (
    SanityFlags,
    _flag_messages,
    baseline_scores,
    lipschitz_scores,
    sanity_flags,
)
from hf_fisher.attacks.carlini_wagner import CarliniWagnerSettings, carlini_wagner_l2
from hf_fisher.attacks.gradient import fgsm, pgd
from hf_fisher.attacks.minimal import AttackBudget, MinimalEpsilon, minimal_epsilon
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
from hf_fisher.memory import plan_chunks, run_in_chunks, select_rows
from hf_fisher.operators import LogitFn

_CW_KNOBS = ("steps", "binary_search_steps", "initial_const", "learning_rate", "kappa", "clip")
EXPECTED_SIGNS = {
    "spectral_norm": -1,
    "confidence": -1,
    "first_order": 1,
    "lipschitz": -1,
    "flip_radius": 1,
}


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
        cw_norm: (N,) Carlini-Wagner L2 minimal perturbation norms (+inf: not flipped), or
            None when CW did not run; ``cw_settings`` its budget.
        cw_correlation: spectral_norm vs the CW norm over the correct samples.
        lipschitz: (N,) local Lipschitz baseline (max spectral norm of the softmax Jacobian
            over the sample and ``lipschitz_points`` points in its L2 ball of
            ``lipschitz_radius``), or None when it did not run.
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
    cw_norm: Tensor | None = None
    cw_settings: CarliniWagnerSettings | None = None
    cw_correlation: RankCorrelation | None = None
    lipschitz: Tensor | None = None
    lipschitz_radius: float | None = None
    lipschitz_points: int | None = None
    flip_radius: Tensor | None = None

    def to_json(self) -> dict:
        """Plain-Python dict; +inf minimal epsilons become null."""
        data = self._pgd_json()
        if self.cw_norm is not None:
            data["cw"] = _cw_json(self)
            data["per_sample"]["cw_norm"] = json_floats(self.cw_norm)
        if self.lipschitz is not None:
            data["lipschitz_baseline"] = {
                "radius": float(self.lipschitz_radius),
                "num_points": int(self.lipschitz_points),
                "norm": "spectral norm of the softmax Jacobian (diag p - p p^T) J",
            }
            data["per_sample"]["lipschitz"] = json_floats(self.lipschitz)
        if self.flip_radius is not None:
            data["per_sample"]["flip_radius"] = json_floats(self.flip_radius)
        return data

    def _pgd_json(self) -> dict:
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
            "expected_signs": {name: EXPECTED_SIGNS[name] for name in self.correlations},
            "partial_spectral_norm_given_confidence": self.partial.to_json(),
            "sanity": self.sanity.to_json(),
            "per_sample": {
                "minimal_epsilon": json_floats(self.minimal.epsilon),
                "lower_epsilon": json_floats(self.minimal.lower),
                "spectral_norm": json_floats(self.spectral_norm),
                "confidence": json_floats(self.confidence),
                "first_order": json_floats(self.first_order),
                "correct": [bool(c) for c in self.correct.tolist()],
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
        cw, lipschitz = data.get("cw"), data.get("lipschitz_baseline")
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
            cw_norm=None if cw is None else floats_from_json(per_sample["cw_norm"], math.inf),
            cw_settings=None if cw is None else CarliniWagnerSettings.from_json(cw["settings"]),
            cw_correlation=None
            if cw is None
            else RankCorrelation.from_json(cw["correlation_spectral_norm"]),
            lipschitz=None if lipschitz is None else floats_from_json(per_sample["lipschitz"]),
            lipschitz_radius=None if lipschitz is None else lipschitz["radius"],
            lipschitz_points=None if lipschitz is None else lipschitz["num_points"],
            flip_radius=(
                floats_from_json(per_sample["flip_radius"], math.inf)
                if "flip_radius" in per_sample
                else None
            ),
        )


def _cw_json(report: AttackReport) -> dict:
    """The ``"cw"`` subsection: CW's budget, its norms, and how far PGD's epsilon sits above."""
    keep = report.correct.cpu()
    cw = report.cw_norm.cpu().double()[keep]
    pgd_eps = report.minimal.epsilon.cpu().double()[keep]
    both = torch.isfinite(cw) & torch.isfinite(pgd_eps) & (cw > 0)
    ratio = pgd_eps[both] / cw[both]
    return {
        "settings": report.cw_settings.to_json(),
        "median_norm": json_float(cw.median() if len(cw) else math.nan),
        "num_not_flipped": int(torch.isinf(cw).sum()),
        "median_ratio_minimal_epsilon_to_cw": json_float(
            ratio.median() if len(ratio) else math.nan
        ),
        "fraction_minimal_epsilon_above_cw_by_10_percent": json_float(
            (ratio > 1.1).double().mean() if len(ratio) else math.nan
        ),
        "correlation_spectral_norm": report.cw_correlation.to_json(),
    }


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


def _robust_flags(
    logit_fn: LogitFn,
    inputs: Tensor,
    labels: Tensor,
    epsilons: list[float],
    steps: Steps,
    *,
    pgd_options: dict,
    common: dict,
    seed: int,
    ids: Tensor,
) -> dict[str, Tensor]:  # name -> (n, E) bool: still correct under the attack
    """Per sample and budget, whether PGD and FGSM left the label correct.

    PGD's random starts come from per-sample streams keyed by ``(seed, sample id)``, restarted
    per budget, so a sample's result does not depend on the other samples of its chunk.
    """
    robust: dict[str, list[Tensor]] = {"pgd": [], "fgsm": []}
    for epsilon in epsilons:
        generator = SampleStreams(seed, ids, "attack")
        result = pgd(
            logit_fn, inputs, labels, epsilon, generator=generator, **pgd_options, **common
        )
        robust["pgd"].append(~result.success)
        robust["fgsm"].append(~fgsm(logit_fn, inputs, labels, epsilon, **common).success)
        steps.advance()
    return {name: torch.stack(values, dim=1) for name, values in robust.items()}


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
    bisection_steps: int = 20,
    tolerance: float | None = 0.01,
    steps: int = 20,
    restarts: int = 2,
    step_size: float | None = None,
    loss: Loss = "ce",
    clip: tuple[float, float] | None = None,
    space_mask: Tensor | None = None,
    confidence_level: float = 0.95,
    num_bootstrap: int = 1000,
    seed: int = 0,
    sample_ids: Sequence[int] | None = None,
    max_memory: int | str = "auto",
    chunk_size: int | None = None,
    carlini_wagner: CarliniWagnerSettings | None = None,
    lipschitz_radius: float | None = None,
    lipschitz_points: int = 8,
    progress: ProgressCallback | None = None,
) -> AttackReport:
    """Attack cross-check: robust accuracy, minimal epsilons, and what predicts them.

    Runs PGD and FGSM at each epsilon, bisects each sample's minimal PGD epsilon (to a relative
    ``tolerance``, at most ``bisection_steps`` halvings; see :func:`minimal_epsilon`), computes the
    baselines and sanity flags, and correlates every predictor with the minimal epsilon over
    the correctly classified samples (samples never flipped rank last). With
    ``carlini_wagner`` settings (L2 only; their ``clip`` is replaced by ``clip``), Carlini-Wagner
    L2 also runs and its per-sample norms sit next to PGD's minimal epsilon. ``progress(done,
    total)`` counts one step per epsilon, per bisection PGD run, for CW and for the baselines.
    With ``lipschitz_radius`` (0: at the sample only), the Lipschitz baseline
    (:func:`~hf_fisher.attacks.baselines.lipschitz_scores`) joins the correlation table.
    Samples run in chunks that fit ``max_memory`` (or ``chunk_size`` at a time), halved on
    out-of-memory; every random draw comes from per-sample streams keyed by ``(seed, sample
    id)`` (``sample_ids``, default ``0..N-1``), so no per-sample number depends on the chunking.

    Raises:
        InputError: bad shapes, norm, clip or epsilons, or CW with ``norm="linf"``.
    """
    check_batch(inputs, labels, space_mask)
    spectral_norm, epsilons = _check_report_inputs(inputs, spectral_norm, epsilons)
    plan = {
        "epsilons": epsilons,
        "cw": _cw_settings(carlini_wagner, norm, clip),
        "common": {"norm": norm, "loss": loss, "clip": clip},
        "pgd": {"steps": steps, "restarts": restarts, "step_size": step_size},
        "bisection": {"eps_max": eps_max, "bisection_steps": bisection_steps},
        "lipschitz": {"radius": lipschitz_radius, "num_points": lipschitz_points, "clip": clip},
        "seed": seed,
    }
    plan["bisection"]["tolerance"] = tolerance
    measures, budget = _measure_in_chunks(
        logit_fn,
        inputs,
        labels,
        spectral_norm,
        space_mask,
        sample_ids,
        plan,
        progress,
        max_memory=max_memory,
        chunk_size=chunk_size,
    )
    stats = {"confidence_level": confidence_level, "num_bootstrap": num_bootstrap, "seed": seed}
    minimal = MinimalEpsilon(measures["epsilon"], measures["lower"], budget)
    return _assemble(measures, minimal, labels, spectral_norm, plan, stats)


def _assemble(
    measures: dict[str, Tensor],
    minimal: MinimalEpsilon,
    labels: Tensor,
    spectral_norm: Tensor,
    plan: dict,
    stats: dict,
) -> AttackReport:
    """The report from every sample's numbers: accuracies, correlations, merged flags."""
    correct = measures["logits"].argmax(dim=1) == labels
    predictors = {
        name.removeprefix("predictor."): values
        for name, values in measures.items()
        if name.startswith("predictor.")
    }
    correlations, partial = _correlate(predictors, minimal.epsilon, correct, **stats)
    cw = measures.get("cw")
    cw_correlations = None if cw is None else _correlate(predictors, cw, correct, **stats)[0]
    return AttackReport(
        epsilons=plan["epsilons"],
        clean_accuracy=float(correct.double().mean()),
        robust_accuracy={
            name: [float(v) for v in measures[name].double().mean(dim=0)]
            for name in ("pgd", "fgsm")
        },
        minimal=minimal,
        spectral_norm=spectral_norm,
        confidence=predictors["confidence"],
        first_order=predictors["first_order"],
        correct=correct,
        correlations=correlations,
        partial=partial,
        sanity=_merged_flags(measures["flags"], int(torch.isinf(minimal.epsilon).sum())),
        cw_norm=cw,
        cw_settings=plan["cw"],
        cw_correlation=None if cw is None else cw_correlations["spectral_norm"],
        lipschitz=predictors.get("lipschitz"),
        lipschitz_radius=plan["lipschitz"]["radius"],
        lipschitz_points=(
            None if plan["lipschitz"]["radius"] is None else plan["lipschitz"]["num_points"]
        ),
        flip_radius=predictors["flip_radius"],
    )


class _ChunkSteps(Steps):
    """A chunk's stages; each advances the report's steps (samples x stages) by the chunk size."""

    def __init__(self, outer: Steps, size: int) -> None:
        super().__init__(None, outer.total)
        self.outer = outer
        self.size = size

    def advance(self, count: int = 1) -> None:
        """Mark ``count`` more stages of this chunk as finished."""
        self.done += count
        self.outer.advance(count * self.size)


def _measure_in_chunks(
    logit_fn: LogitFn,
    inputs: Tensor,
    labels: Tensor,
    spectral_norm: Tensor,
    space_mask: Tensor | None,
    sample_ids: Sequence[int] | None,
    plan: dict,
    progress: ProgressCallback | None,
    *,
    max_memory: int | str,
    chunk_size: int | None,
) -> tuple[dict[str, Tensor], AttackBudget]:
    """Every per-sample number of the report, chunk by chunk, concatenated."""
    count, dim, itemsize = inputs.shape[0], inputs[0].numel(), inputs.element_size()
    size = plan_chunks(
        logit_fn,
        inputs,
        max_memory=max_memory,
        chunk_size_override=chunk_size,
        working_bytes=lambda k: 12 * dim * itemsize,  # iterates, steps, starts, CW's state
    )
    ids = torch.arange(count) if sample_ids is None else torch.as_tensor(list(sample_ids))
    mask = None if space_mask is None else space_mask.expand_as(inputs)
    stages = len(plan["epsilons"]) + plan["bisection"]["bisection_steps"] + 2
    outer = Steps(progress, count * (stages + (plan["cw"] is not None)))

    def run(part: slice) -> tuple[dict[str, Tensor], AttackBudget]:
        return _measure_chunk(
            select_rows(logit_fn, part),
            inputs[part],
            labels[part],
            spectral_norm[part],
            None if mask is None else mask[part],
            ids[part],
            plan,
            _ChunkSteps(outer, len(ids[part])),
        )

    parts = run_in_chunks(run, count, size, what="attacks: ")
    joined = {name: torch.cat([part[name] for part, _ in parts]) for name in parts[0][0]}
    return joined, parts[0][1]


def _measure_chunk(
    logit_fn: LogitFn,
    inputs: Tensor,
    labels: Tensor,
    spectral_norm: Tensor,
    space_mask: Tensor | None,
    ids: Tensor,
    plan: dict,
    steps: Steps,
) -> tuple[dict[str, Tensor], AttackBudget]:
    """One chunk: clean logits, robust flags, minimal epsilons, predictors, sanity, CW."""
    common = {**plan["common"], "space_mask": space_mask}
    with torch.no_grad():
        logits = _logits(logit_fn, inputs)
    measures = {"logits": logits}
    measures.update(
        _robust_flags(
            logit_fn,
            inputs,
            labels,
            plan["epsilons"],
            steps,
            pgd_options=plan["pgd"],
            common=common,
            seed=plan["seed"],
            ids=ids,
        )
    )
    options = {**plan["bisection"], **plan["pgd"], **common, "sample_ids": ids}
    minimal = _bisected(logit_fn, inputs, labels, plan["seed"], steps, options)
    measures.update(epsilon=minimal.epsilon, lower=minimal.lower)
    predictors = _predictors(
        logit_fn,
        inputs,
        logits,
        spectral_norm,
        common["norm"],
        space_mask,
        plan["lipschitz"],
        plan["seed"],
        ids,
    )
    measures.update({f"predictor.{name}": values for name, values in predictors.items()})
    measures["flags"] = _flag_counts(
        sanity_flags(logit_fn, inputs, labels, space_mask=space_mask), len(ids)
    )
    steps.advance()
    cw = _run_cw(logit_fn, inputs, labels, space_mask, plan["cw"], steps)
    if cw is not None:
        measures["cw"] = cw
    return measures, minimal.budget


def _flag_counts(flags: SanityFlags, count: int) -> Tensor:  # (1, 5) float64
    """A chunk's sanity flags as sums that add up over chunks."""
    return torch.tensor(
        [
            [
                flags.zero_gradient_fraction * count,
                flags.nonfinite_gradient_fraction * count,
                float(flags.random_forward),
                float(not flags.probability_outputs),
                count,
            ]
        ],
        dtype=torch.float64,
    )


def _merged_flags(counts: Tensor, unflipped: int) -> SanityFlags:  # (chunks, 5)
    """The whole batch's sanity flags from its chunks' :func:`_flag_counts`."""
    total = counts.sum(dim=0)
    flags = SanityFlags(
        zero_gradient_fraction=float(total[0] / total[4]),
        nonfinite_gradient_fraction=float(total[1] / total[4]),
        random_forward=bool(total[2] > 0),
        probability_outputs=bool(total[3] == 0),
        unflipped_at_eps_max=unflipped,
    )
    flags.messages.extend(_flag_messages(flags))
    return flags


def _bisected(
    logit_fn: LogitFn, inputs: Tensor, labels: Tensor, seed: int, steps: Steps, options: dict
) -> MinimalEpsilon:
    """Each sample's minimal PGD epsilon, its bisection runs counted on ``steps``."""
    before = steps.done
    return minimal_epsilon(
        logit_fn,
        inputs,
        labels,
        seed=seed,
        progress=lambda done, total: steps.advance(before + done - steps.done),
        **options,
    )


def _predictors(
    logit_fn: LogitFn,
    inputs: Tensor,
    logits: Tensor,  # (N, K) at ``inputs``
    spectral_norm: Tensor,  # (N,)
    norm: str,
    space_mask: Tensor | None,
    lipschitz: dict,
    seed: int,
    ids: Tensor,
) -> dict[str, Tensor]:  # name -> (N,)
    """lambda_max, the flip radius and the baselines they are ranked against (+ Lipschitz)."""
    baselines = baseline_scores(logit_fn, inputs, norm=norm, space_mask=space_mask)
    predictors = {
        "spectral_norm": spectral_norm,
        "confidence": baselines.confidence,
        "first_order": baselines.first_order,
        "flip_radius": flip_radii(spectral_norm, kl_to_flip(logits)),
    }
    if lipschitz["radius"] is not None:
        predictors["lipschitz"] = lipschitz_scores(
            logit_fn,
            inputs,
            space_mask=space_mask,
            generator=SampleStreams(seed, ids, "attack"),
            **lipschitz,
        )
    return predictors


def _cw_settings(
    settings: CarliniWagnerSettings | None, norm: str, clip: tuple[float, float] | None
) -> CarliniWagnerSettings | None:
    """The CW budget in the report's box, checked before any work (None: not requested)."""
    if settings is None:
        return None
    if norm != "l2":
        raise InputError(
            f"got norm={norm!r} with carlini_wagner; Carlini-Wagner is an L2 attack: pass "
            "norm='l2' or leave carlini_wagner out"
        )
    settings = replace(settings, clip=None if clip is None else tuple(clip))
    settings.check()
    return settings


def _run_cw(
    logit_fn: LogitFn,
    inputs: Tensor,
    labels: Tensor,
    space_mask: Tensor | None,
    settings: CarliniWagnerSettings | None,
    steps: Steps,
) -> Tensor | None:  # (N,)
    """Carlini-Wagner L2 norms under ``settings`` (None: not requested)."""
    if settings is None:
        return None
    options = {name: getattr(settings, name) for name in _CW_KNOBS}
    norms = carlini_wagner_l2(logit_fn, inputs, labels, space_mask=space_mask, **options).norm
    steps.advance()
    return norms
