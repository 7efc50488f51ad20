"""Companion measurements that show how far to trust the Fisher number, run after the main pass.

Each one fills a section of results.json ("attacks", "noise_curves", "kl_check", "clever",
"frequency", "bound") on the first ``num_samples`` evaluated samples, in the same input space as the
Fisher. They are run by the main process only; under a launcher the other processes return
once the Fisher records are gathered, without waiting at a (timed) barrier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hf_fisher.adapters import Classifier, ImageClassifier, PreparedBatch
from hf_fisher.errors import InputError

DEFAULT_EPSILONS = {"l2": (0.25, 0.5, 1.0, 2.0), "linf": (1 / 255, 2 / 255, 4 / 255, 8 / 255)}
DEFAULT_SIGMAS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
DEFAULT_RADII = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


@dataclass
class CompanionOptions:
    """Which companion measurements to run, and their knobs (see each module for details).

    Attributes:
        attacks: "l2" or "linf" for the attack cross-check (PGD, FGSM, minimal epsilon), or
            None.
        attack_epsilons: budgets of the robust-accuracy curve (default per norm).
        eps_max: largest epsilon of the bisection (default: the pixel box; required for
            embeddings).
        noise: random-noise robustness curves with Hoeffding / empirical-Bernstein bounds.
        noise_sigmas, noise_kind, noise_draws: the noise grid, "gaussian" or "uniform", and
            draws per sample.
        kl_check: compare measured KL with the second-order prediction at ``kl_radii``.
        clever: CLEVER scores (untargeted and top-2) with radius ``clever_radius``.
        frequency: I-ASIDE Shapley values and the band-restricted Fisher (images only).
        frequency_bands, frequency_fill, frequency_pixel_map: I-ASIDE knobs.
        bound: the data-free architecture bound on lambda_max, set against the measured
            values (plain ``nn.Sequential`` stacks only; see :mod:`hf_fisher.bounds`).
        num_samples: how many of the evaluated samples the companions use.
    """

    attacks: str | None = None
    attack_epsilons: Sequence[float] | None = None
    eps_max: float | None = None
    noise: bool = False
    noise_sigmas: Sequence[float] = DEFAULT_SIGMAS
    noise_kind: str = "gaussian"
    noise_draws: int = 16
    kl_check: bool = False
    kl_radii: Sequence[float] = DEFAULT_RADII
    clever: bool = False
    clever_radius: float = 2.0
    frequency: bool = False
    frequency_bands: int = 8
    frequency_fill: str = "other_image"
    frequency_pixel_map: str = "paper"
    bound: bool = False
    num_samples: int = 64

    @property
    def requested(self) -> bool:
        """Whether any measurement is requested."""
        wanted = (self.attacks, self.noise, self.kl_check, self.clever, self.frequency, self.bound)
        return any(wanted)

    def settings(self) -> dict:
        """The knobs of the requested measurements, for provenance."""
        return {
            key: (list(value) if isinstance(value, tuple) else value)
            for key, value in vars(self).items()
        }


def check_companion_options(options: CompanionOptions) -> None:
    """Refuse knob values no measurement can use, before any model is loaded.

    Raises:
        InputError: a non-positive sample count, draw count, band count, CLEVER radius or
            ``eps_max``.
    """
    for name, flag, value in (
        ("num_samples", "--companion-samples", options.num_samples),
        ("noise_draws", "--noise-draws", options.noise_draws),
        ("frequency_bands", "--frequency-bands", options.frequency_bands),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} ({flag}) must be an integer >= 1, got {value!r}")
    for name, flag, value in (
        ("clever_radius", "--clever-radius", options.clever_radius),
        ("eps_max", "--eps-max", options.eps_max),
    ):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise InputError(f"{name} ({flag}) must be a finite number > 0, got {value!r}")


def check_companions(classifier: Classifier, options: CompanionOptions) -> None:
    """Fail fast, before the Fisher pass, when a requested measurement does not apply.

    Raises:
        InputError: text models support the KL check only; the frequency view needs images in
            pixel space; attacks in an unbounded space need ``eps_max``; the architecture bound
            needs a plain feed-forward stack.
    """
    is_text = classifier.modality == "text"
    unsupported = [
        name
        for name, wanted in (
            ("--attacks", options.attacks),
            ("--noise", options.noise),
            ("--clever", options.clever),
            ("--frequency", options.frequency),
        )
        if wanted
    ]
    if is_text and unsupported:
        raise InputError(
            f"{', '.join(unsupported)} are not available for text models yet (their inputs "
            "have per-sample attention masks); --kl-check is (it perturbs the embeddings of "
            "non-padded tokens)"
        )
    if options.frequency and classifier.input_space != "pixels":
        raise InputError(
            f"the frequency view needs images in pixel space, not {classifier.input_space!r}; "
            "drop --frequency or use --input-space pixels"
        )
    if options.bound and is_text:
        raise InputError(
            "--bound is not available for text models: the architecture bound needs a plain "
            "feed-forward stack (nn.Sequential) on fixed-shape inputs, and text models use "
            "attention over per-sample lengths; drop --bound"
        )
    if options.attacks and options.attacks not in DEFAULT_EPSILONS:
        raise InputError(f"attacks={options.attacks!r}; choose 'l2' or 'linf'")
    if options.attacks and classifier.input_space != "pixels" and options.eps_max is None:
        raise InputError(
            f"input space {classifier.input_space!r} has no natural bound: pass --eps-max "
            "(the largest perturbation the bisection may try)"
        )
    if options.bound and classifier.input_shape is not None:  # else: checked when it is known
        from hf_fisher.bounds import lipschitz_bound

        lipschitz_bound(classifier.model, classifier.input_shape, num_iterations=1)


def run_companions(
    classifier: Classifier,
    batch: PreparedBatch,
    labels: Tensor,  # (N,)
    spectral_norm: Tensor,  # (N,)
    options: CompanionOptions,
    *,
    seed: int = 0,
) -> dict[str, dict]:
    """Run the requested measurements on one prepared batch; return results.json sections.

    Raises:
        InputError: a measurement that does not apply to this model (see
            :func:`check_companions`).
    """
    check_companions(classifier, options)
    batch = batch.to(classifier.device, classifier.dtype)
    logit_fn = classifier.logit_fn(batch)
    inputs = batch.inputs
    labels = labels.to(classifier.device)
    clip = (0.0, 1.0) if classifier.input_space == "pixels" else None
    mask = batch.space_mask
    sections: dict[str, dict] = {}
    if options.bound:  # data-free and cheap: first, so an unsupported model fails early
        from hf_fisher.bounds import bound_report

        sections["bound"] = bound_report(
            classifier.model,
            classifier.input_shape,
            spectral_norm,
            input_scale=_input_scale(classifier),
            seed=seed,
        ).to_json()
    if options.attacks:
        from hf_fisher.attacks import attack_report

        epsilons = options.attack_epsilons or DEFAULT_EPSILONS[options.attacks]
        sections["attacks"] = attack_report(
            logit_fn,
            inputs,
            labels,
            spectral_norm.to(inputs.device),
            epsilons=list(epsilons),
            norm=options.attacks,
            eps_max=options.eps_max,
            clip=clip,
            space_mask=mask,
            seed=seed,
        ).to_json()
    if options.noise:
        from hf_fisher.noise import noise_curves

        sections["noise_curves"] = noise_curves(
            logit_fn,
            inputs,
            labels,
            sigmas=list(options.noise_sigmas),
            kind=options.noise_kind,
            draws=options.noise_draws,
            clip=clip,
            space_mask=mask,
            seed=seed,
        ).to_json()
    if options.kl_check:
        from hf_fisher.kl_check import kl_check

        sections["kl_check"] = kl_check(
            logit_fn, inputs, radii=list(options.kl_radii), space_mask=mask, seed=seed
        ).to_json()
    if options.clever:
        from hf_fisher.clever import clever_scores

        sections["clever"] = clever_scores(
            logit_fn,
            inputs,
            radius=options.clever_radius,
            num_batches=20,
            batch_points=32,
            clip=clip,
            space_mask=mask,
            spectral_norm=spectral_norm.to(inputs.device),
            seed=seed,
        ).to_json()
    if options.frequency:
        from hf_fisher.frequency import analyze_frequency

        sections["frequency"] = analyze_frequency(
            logit_fn,
            inputs,
            labels,
            num_bands=options.frequency_bands,
            fill=options.frequency_fill,
            pixel_map=options.frequency_pixel_map,
            seed=seed,
        ).to_json()
    return sections


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
