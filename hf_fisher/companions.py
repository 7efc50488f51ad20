"""Companion measurements that show how far to trust the Fisher number, run after the main pass.

Each one fills a section of results.json ("attacks", "noise_curves", "kl_check", "clever",
"frequency", "bound", "path_separation") on the first ``num_samples`` evaluated samples, in the
same input space as the Fisher. They are run by the main process only; under a launcher the other
processes return once the Fisher records are gathered, without waiting at a (timed) barrier.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from hf_fisher import headlines
from hf_fisher._progress import ProgressCallback
from hf_fisher.adapters import Classifier, ImageClassifier, PreparedBatch
from hf_fisher.errors import InputError
from hf_fisher.headlines import Headline
from hf_fisher.options import (
    DEFAULT_EPSILONS,
    CompanionOptions,
)

FREQUENCY_TEXT_REASON = (
    "--frequency is not available for text models: frequency bands are an image concept (2-D "
    "spatial frequencies of a pixel grid) and token embeddings have no spatial grid; drop "
    "--frequency"
)


@dataclass
class CompanionInputs:
    """What every measurement reads: the batch in the Fisher's input space and its labels."""

    classifier: Classifier
    logit_fn: Callable[[Tensor], Tensor]
    inputs: Tensor  # (N, *shape)
    labels: Tensor  # (N,)
    spectral_norm: Tensor  # (N,)
    clip: tuple[float, float] | None
    space_mask: Tensor | None
    options: CompanionOptions
    seed: int
    progress: ProgressCallback | None = None
    sample_ids: list[int] | None = None  # keys of the per-sample random streams
    max_memory: int | str = "auto"  # the budget each measurement sizes its chunks from


ProgressFactory = Callable[["Companion"], AbstractContextManager[ProgressCallback | None]]
"""Given a measurement, a context that yields the progress callback it reports to (or None)."""


@dataclass(frozen=True)
class Companion:
    """One companion measurement.

    Attributes:
        flag: the command-line switch that requests it (named in errors).
        section: the results.json section it fills.
        wanted: whether ``options`` request it.
        applies_to: why it cannot run on this classifier with these options (None: it can, if
            its name is also among ``classifier.capabilities``).
        run: the measurement; returns its results.json section.
        headline: the section's headline numbers and two terminal lines
            (:mod:`hf_fisher.headlines`).
    """

    flag: str
    section: str
    wanted: Callable[[CompanionOptions], bool]
    applies_to: Callable[[Classifier, CompanionOptions], str | None]
    run: Callable[[CompanionInputs], dict]
    headline: Callable[[dict], Headline]

    @property
    def name(self) -> str:
        """The name ``Classifier.capabilities`` lists it under (``kl_check`` for ``--kl-check``)."""
        return self.flag.removeprefix("--").replace("-", "_")


def _any_model(classifier: Classifier, options: CompanionOptions) -> str | None:
    return None


def _attacks_apply(classifier: Classifier, options: CompanionOptions) -> str | None:
    if classifier.input_space != "pixels" and options.eps_max is None:
        return (
            f"input space {classifier.input_space!r} has no natural bound: pass --eps-max "
            "(the largest perturbation the bisection may try)"
        )
    return None


def _frequency_applies(classifier: Classifier, options: CompanionOptions) -> str | None:
    if classifier.modality == "text":
        return FREQUENCY_TEXT_REASON
    if classifier.input_space != "pixels":
        return (
            f"the frequency view needs images in pixel space, not {classifier.input_space!r}; "
            "drop --frequency or use --input-space pixels"
        )
    return None


def _path_separation_applies(classifier: Classifier, options: CompanionOptions) -> str | None:
    if classifier.modality == "text":
        return (
            "--path-separation is not available for text models: padding tokens would be "
            "counted as draws of each layer's edges"
        )
    return None


def _bound_applies(classifier: Classifier, options: CompanionOptions) -> str | None:
    if classifier.modality == "text":
        return (
            "--bound is not available for text models: the architecture bound needs a plain "
            "feed-forward stack (nn.Sequential) on fixed-shape inputs, and text models use "
            "attention over per-sample lengths; drop --bound"
        )
    if classifier.input_shape is None:
        return None  # checked when the shape is known
    from hf_fisher.bounds import lipschitz_bound

    try:
        lipschitz_bound(classifier.model, classifier.input_shape, num_iterations=1)
    except InputError as error:
        if not isinstance(classifier, ImageClassifier):
            return str(error)
        try:  # residual networks and transformers: the composed bound (docs/bounds.md)
            _composed(classifier, classifier.probe_batch().inputs, num_iterations=1, seed=0)
        except InputError as composed_error:
            return str(composed_error)
    return None


def _composed(classifier, inputs: Tensor, **settings):
    """The composed bound of an image classifier at ``inputs`` (in its input space)."""
    from hf_fisher.bounds import composed_bound

    values = classifier.normalize(inputs) if classifier.input_space == "pixels" else inputs
    return composed_bound(
        classifier.model,
        lambda v: classifier.model(pixel_values=v),
        values,
        input_scale=_input_scale(classifier),
        **settings,
    )


def _run_bound(batch: CompanionInputs) -> dict:
    from hf_fisher.bounds import BoundReport, bound_report

    classifier = batch.classifier
    try:
        return bound_report(
            classifier.model,
            classifier.input_shape,
            batch.spectral_norm,
            input_scale=_input_scale(classifier),
            seed=batch.seed,
        ).to_json()
    except InputError:  # not a plain stack: _bound_applies checked the composed bound applies
        bound = _composed(classifier, batch.inputs, seed=batch.seed)
        return BoundReport(bound, batch.spectral_norm.detach().double().cpu()).to_json()


def _run_attacks(batch: CompanionInputs) -> dict:
    from hf_fisher.attacks import CarliniWagnerSettings, attack_report

    options = batch.options
    epsilons = options.attack_epsilons or DEFAULT_EPSILONS[options.attack_norm]
    cw = None
    if options.attacks == "cw":
        cw = CarliniWagnerSettings(
            steps=options.cw_steps,
            binary_search_steps=options.cw_binary_search_steps,
            initial_const=options.cw_initial_const,
            learning_rate=options.cw_learning_rate,
        )
    return attack_report(
        batch.logit_fn,
        batch.inputs,
        batch.labels,
        batch.spectral_norm.to(batch.inputs.device),
        epsilons=list(epsilons),
        norm=options.attack_norm,
        eps_max=options.eps_max,
        steps=options.attack_steps,
        restarts=options.attack_restarts,
        bisection_steps=options.bisection_steps,
        tolerance=options.bisection_tolerance,
        carlini_wagner=cw,
        lipschitz_radius=options.lipschitz_radius,
        lipschitz_points=options.lipschitz_points,
        clip=batch.clip,
        space_mask=batch.space_mask,
        seed=batch.seed,
        sample_ids=batch.sample_ids,
        max_memory=batch.max_memory,
        progress=batch.progress,
    ).to_json()


def _run_noise(batch: CompanionInputs) -> dict:
    from hf_fisher.noise import noise_curves

    return noise_curves(
        batch.logit_fn,
        batch.inputs,
        batch.labels,
        sigmas=list(batch.options.noise_sigmas),
        kind=batch.options.noise_kind,
        draws=batch.options.noise_draws,
        clip=batch.clip,
        space_mask=batch.space_mask,
        seed=batch.seed,
        sample_ids=batch.sample_ids,
        max_memory=batch.max_memory,
        progress=batch.progress,
    ).to_json()


def _run_kl_check(batch: CompanionInputs) -> dict:
    from hf_fisher.kl_check import kl_check

    return kl_check(
        batch.logit_fn,
        batch.inputs,
        radii=list(batch.options.kl_radii),
        space_mask=batch.space_mask,
        seed=batch.seed,
        sample_ids=batch.sample_ids,
        max_memory=batch.max_memory,
        progress=batch.progress,
    ).to_json()


def _run_clever(batch: CompanionInputs) -> dict:
    from hf_fisher.clever import clever_scores

    return clever_scores(
        batch.logit_fn,
        batch.inputs,
        radius=batch.options.clever_radius,
        num_batches=20,
        batch_points=32,
        clip=batch.clip,
        space_mask=batch.space_mask,
        spectral_norm=batch.spectral_norm.to(batch.inputs.device),
        seed=batch.seed,
        sample_ids=batch.sample_ids,
        max_memory=batch.max_memory,
        progress=batch.progress,
    ).to_json()


def _run_frequency(batch: CompanionInputs) -> dict:
    from hf_fisher.frequency import analyze_frequency

    return analyze_frequency(
        batch.logit_fn,
        batch.inputs,
        batch.labels,
        num_bands=batch.options.frequency_bands,
        fill=batch.options.frequency_fill,
        pixel_map=batch.options.frequency_pixel_map,
        seed=batch.seed,
        max_memory=batch.max_memory,
        progress=batch.progress,
    ).to_json()


def _run_path_separation(batch: CompanionInputs) -> dict:
    from hf_fisher.path_separation import path_separation

    return path_separation(
        batch.classifier.model,
        batch.inputs,
        batch.labels,
        forward=batch.logit_fn,
        batch_size=len(batch.labels),
        gamma=batch.options.path_gamma,
        bootstrap=batch.options.path_bootstrap,
        seed=batch.seed,
    ).to_json()


COMPANIONS: tuple[Companion, ...] = (
    # data-free and cheap: first, so an unsupported model fails early
    Companion(
        "--bound", "bound", lambda o: o.bound, _bound_applies, _run_bound, headlines.bound_headline
    ),
    Companion(
        "--attacks",
        "attacks",
        lambda o: bool(o.attacks),
        _attacks_apply,
        _run_attacks,
        headlines.attacks_headline,
    ),
    Companion(
        "--noise",
        "noise_curves",
        lambda o: o.noise,
        _any_model,
        _run_noise,
        headlines.noise_headline,
    ),
    Companion(
        "--kl-check",
        "kl_check",
        lambda o: o.kl_check,
        _any_model,
        _run_kl_check,
        headlines.kl_check_headline,
    ),
    Companion(
        "--clever", "clever", lambda o: o.clever, _any_model, _run_clever, headlines.clever_headline
    ),
    Companion(
        "--frequency",
        "frequency",
        lambda o: o.frequency,
        _frequency_applies,
        _run_frequency,
        headlines.frequency_headline,
    ),
    Companion(
        "--path-separation",
        "path_separation",
        lambda o: o.path_separation,
        _path_separation_applies,
        _run_path_separation,
        headlines.path_separation_headline,
    ),
)
"""The companion measurements, in the order they run; each says which classifiers it fits."""


def requested_companions(options: CompanionOptions) -> list[Companion]:
    """The registry entries that ``options`` ask for, in run order."""
    return [companion for companion in COMPANIONS if companion.wanted(options)]


def check_companions(classifier: Classifier, options: CompanionOptions) -> None:
    """Fail fast, before the Fisher pass, when a requested measurement does not apply.

    Raises:
        InputError: the frequency view needs images in pixel space; attacks in an unbounded
            space (embeddings) need ``eps_max``; the architecture bound needs a plain
            feed-forward stack; a measurement outside the input space's capabilities.
    """
    for companion in requested_companions(options):
        reason = companion.applies_to(classifier, options)
        if reason is None and companion.name not in classifier.capabilities:
            reason = (
                f"{companion.flag} does not apply to this {classifier.modality} model in input "
                f"space {classifier.input_space!r} (it supports "
                f"{sorted(classifier.capabilities) or 'no companion measurement'}); drop "
                f"{companion.flag}"
            )
        if reason is not None:
            raise InputError(reason)


def run_companions(
    classifier: Classifier,
    batch: PreparedBatch,
    labels: Tensor,  # (N,)
    spectral_norm: Tensor,  # (N,)
    options: CompanionOptions,
    *,
    seed: int = 0,
    progress: ProgressFactory | None = None,
    sample_ids: list[int] | None = None,
    max_memory: int | str = "auto",
) -> dict[str, dict]:
    """Run the requested measurements on one prepared batch; return results.json sections.

    ``progress`` gives each measurement, in turn, the callback it reports its steps to
    (the runner passes tqdm bars; the measurements themselves never render anything).
    ``sample_ids`` (the dataset indices; default ``0..N-1``) key the per-sample random streams
    of the noise curves, the KL check and CLEVER, so their values do not depend on which
    samples share the batch; each measurement runs in chunks that fit ``max_memory``
    (:mod:`hf_fisher.memory`), halved on out-of-memory.

    Raises:
        InputError: bad knobs, or a measurement that does not apply to this model (see
            :func:`check_companions`).
    """
    options.validate()
    check_companions(classifier, options)
    batch = batch.to(classifier.device, classifier.dtype)
    shared = CompanionInputs(
        classifier=classifier,
        logit_fn=classifier.logit_fn(batch),
        inputs=batch.inputs,
        labels=labels.to(classifier.device),
        spectral_norm=spectral_norm,
        clip=classifier.clip,
        space_mask=batch.space_mask,
        options=options,
        seed=seed,
        sample_ids=sample_ids,
        max_memory=max_memory,
    )
    sections = {}
    for companion in requested_companions(options):
        with (progress or _no_progress)(companion) as callback:
            sections[companion.section] = companion.run(replace(shared, progress=callback))
    return sections


def _no_progress(companion: Companion) -> AbstractContextManager[None]:
    return nullcontext()


def companion_headlines(results: dict) -> dict[str, Headline]:
    """The headline of every companion section in ``results``, in run order, by section name."""
    return {c.section: c.headline(results[c.section]) for c in COMPANIONS if c.section in results}


def _input_scale(classifier: Classifier) -> Tensor | float:
    """Per-channel slope of the map from the input space to the model's input (1: none).

    In pixel space an image classifier feeds ``(x * pixel_scale - mean) / std`` to the model;
    the slope ``pixel_scale / std`` is read off the affine map itself.
    """
    if not isinstance(classifier, ImageClassifier) or classifier.input_space != "pixels":
        return 1.0
    channels = classifier.input_shape[0]
    ones = torch.ones((1, channels, 1, 1), dtype=classifier.dtype, device=classifier.device)
    return (classifier.normalize(ones) - classifier.normalize(torch.zeros_like(ones))).flatten()
