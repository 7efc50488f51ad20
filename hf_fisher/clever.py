"""CLEVER scores (Weng et al. 2018), batched over samples, side by side with lambda_max(F).

CLEVER estimates a lower bound on the distance to the decision boundary: for the margin
``g_j(x) = z_c(x) - z_j(x)`` (c the predicted class), ``score_j = min(g_j(x0) / L_j, R)``, where
the local Lipschitz constant ``L_j`` is the location of a reverse Weibull distribution fitted by
maximum likelihood to ``num_batches`` batch maxima of ``||grad g_j||_q`` over ``batch_points``
points drawn uniformly in the Lp ball of radius R (q the dual norm of p). The untargeted score is
the minimum over all targets j != c, the top-2 score uses the runner-up class.

Departures from the plain procedure (docs/clever.md): a fit whose location runs to the top of its
search range is flagged ``at_edge`` and replaced by the largest observed gradient norm, other
locations are capped one spread above it (:func:`lipschitz_estimate`), and each sample draws its
ball points from its own random stream keyed by ``(seed, sample index)``.

Unlike the per-sample NumPy reference, one forward and T backward passes (T targets) serve a
whole batch of samples and ball points at once, and all reverse Weibull fits run as one batched
profile-likelihood search (:func:`reverse_weibull_fit`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from hf_fisher._progress import ProgressCallback, Steps
from hf_fisher.attacks import (
    DUAL_NORM,
    check_batch,
    check_clip,
    check_norm,
    lp_norm,
    sample_in_ball,
    select_rows,
)
from hf_fisher.correlation import (
    RankCorrelation,
    floats_from_json,
    json_float,
    json_floats,
    rank_correlation,
)
from hf_fisher.errors import InputError, NotAClassifierError
from hf_fisher.memory import chunk_size, run_in_chunks, sample_footprint, working_memory
from hf_fisher.operators import LogitFn, other_classes


@dataclass
class WeibullFit:
    """Reverse Weibull fits, one per row: density ``c/s ((loc - x)/s)^(c-1) exp(-((loc-x)/s)^c)``.

    Attributes:
        shape, location, scale: (P,) float64 parameters (scipy's ``weibull_max`` c, loc, scale).
        log_likelihood: (P,) float64 at the fitted parameters.
        at_edge: (P,) bool, True where the likelihood still rose at the top of the location
            search range (``max + spread * LOCATION_RANGE[1]``): the location is not identified
            by the batch maxima (a Gumbel-like tail), so :func:`clever_scores` does not use it.
    """

    shape: Tensor
    location: Tensor
    scale: Tensor
    log_likelihood: Tensor
    at_edge: Tensor


def _weibull_shape(log_y: Tensor, low: float, high: float, iterations: int) -> Tensor:
    """Solve the Weibull shape equation for samples ``y = exp(log_y)`` (rows), by bisection.

    ``h(c) = sum y^c log y / sum y^c - 1/c - mean(log y)`` is increasing in c; its root is the
    shape MLE. Computed on ``y / max(y)`` (the root is scale-invariant) to avoid overflow.
    """
    log_y = log_y - log_y.amax(dim=-1, keepdim=True)
    mean_log = log_y.mean(dim=-1)
    lo = torch.full_like(mean_log, math.log(low))
    hi = torch.full_like(mean_log, math.log(high))

    def h(log_c: Tensor) -> Tensor:
        c = log_c.exp()
        weights = torch.softmax(c.unsqueeze(-1) * log_y, dim=-1)
        return (weights * log_y).sum(dim=-1) - 1.0 / c - mean_log

    for _ in range(iterations):
        middle = 0.5 * (lo + hi)
        positive = h(middle) > 0
        hi = torch.where(positive, middle, hi)
        lo = torch.where(positive, lo, middle)
    return (0.5 * (lo + hi)).exp()


def _profile(samples: Tensor, location: Tensor, low: float, high: float) -> tuple[Tensor, ...]:
    """Shape, scale and log-likelihood maximised over (c, s) for fixed locations (P, G)."""
    log_y = (location.unsqueeze(-1) - samples.unsqueeze(-2)).log()  # (P, G, B)
    count = samples.shape[-1]
    shape = _weibull_shape(log_y, low, high, iterations=60)
    # log of mean(y^c), stably: c * max(log y) + log mean(exp(c (log y - max)))
    peak = log_y.amax(dim=-1)
    log_mean_power = (
        shape * peak
        + torch.logsumexp(shape.unsqueeze(-1) * (log_y - peak.unsqueeze(-1)), dim=-1)
        - math.log(count)
    )
    log_scale = log_mean_power / shape
    likelihood = count * (shape.log() - log_mean_power) + (shape - 1) * log_y.sum(dim=-1) - count
    return shape, log_scale.exp(), likelihood


LOCATION_RANGE = (1e-4, 10.0)
"""Searched Weibull locations, as ``t`` in ``max + spread * t`` (spread = max - min)."""

LOCATION_CAP = 1.0
"""Largest ``t`` a CLEVER Lipschitz estimate uses (:func:`lipschitz_estimate`)."""


def reverse_weibull_fit(
    samples: Tensor,  # (P, B)
    *,
    shape_bounds: tuple[float, float] = (1.0, 100.0),
    grid_size: int = 40,
    refinements: int = 3,
) -> WeibullFit:
    """Batched maximum-likelihood fit of a reverse Weibull to each row of ``samples``.

    The location is searched on a log grid above each row's maximum (``max + spread * t``,
    ``t`` in :data:`LOCATION_RANGE` = [1e-4, 10], refined ``refinements`` times around the best
    point and never leaving that range); for each location the shape solves the likelihood
    equation and the scale is in closed form. The shape is kept in ``shape_bounds``: below 1
    the likelihood is unbounded as the location approaches the sample maximum. Rows whose best
    location is the top of the range are flagged ``at_edge``. Rows with (almost) no spread get
    ``location = max`` (not flagged).

    >>> import scipy.stats
    >>> draws = scipy.stats.weibull_max.rvs(4.0, loc=2.0, size=(1, 4000), random_state=0)
    >>> fit = reverse_weibull_fit(torch.tensor(draws))
    >>> abs(fit.location.item() - 2.0) < 0.05, fit.at_edge.item()
    (True, False)
    """
    if samples.ndim != 2 or samples.shape[1] < 3:
        raise InputError(
            f"got Weibull samples of shape {tuple(samples.shape)}; pass (P, B) with B >= 3 "
            "maxima per row"
        )
    samples = samples.double()
    peak = samples.amax(dim=1)
    spread = peak - samples.amin(dim=1)
    flat = spread <= 1e-12 * peak.abs().clamp_min(1.0)
    spread = torch.where(flat, torch.ones_like(spread), spread)
    bottom, top = (math.log(t) for t in LOCATION_RANGE)
    low = torch.full_like(peak, bottom)
    high = torch.full_like(peak, top)
    grid = torch.linspace(0.0, 1.0, grid_size, dtype=torch.float64, device=samples.device)
    for _ in range(refinements + 1):
        log_t = low.unsqueeze(-1) + (high - low).unsqueeze(-1) * grid  # (P, G)
        location = peak.unsqueeze(-1) + spread.unsqueeze(-1) * log_t.exp()
        _, _, likelihood = _profile(samples, location, *shape_bounds)
        best_log_t = log_t.gather(1, likelihood.argmax(dim=1, keepdim=True))[:, 0]
        step = (high - low) / (grid_size - 1)
        low, high = (best_log_t - step).clamp_min(bottom), (best_log_t + step).clamp_max(top)
    location = peak + spread * best_log_t.exp()
    shape, scale, likelihood = (
        v[:, 0] for v in _profile(samples, location[:, None], *shape_bounds)
    )
    at_edge = (best_log_t >= top - 1e-12) & ~flat
    location = torch.where(flat, peak, location)
    return WeibullFit(shape, location, scale, likelihood, at_edge)


def lipschitz_estimate(maxima: Tensor) -> tuple[Tensor, Tensor]:  # (P, B) -> (P,), (P,)
    """Local Lipschitz estimates from batch maxima: a capped Weibull location, or the max.

    Where the fitted location sits at the top of :data:`LOCATION_RANGE` (``at_edge``), the
    maxima do not pin it down and an unbounded fit wanders off (scipy puts it up to 1e8 spreads
    above the data, and the score near zero). There the estimate falls back to the largest
    gradient norm observed over all batches, what ART uses when its fit fails: a lower estimate
    of L (a higher score), never an arbitrary one. Elsewhere the location is capped at
    :data:`LOCATION_CAP` spreads above that maximum: fits that extrapolate further are the
    seed-to-seed noise of a few dozen maxima (docs/clever.md has the measurement).

    Returns:
        The (P,) float64 estimates and the (P,) bool ``at_edge`` flags.
    """
    fit = reverse_weibull_fit(maxima)
    maxima = maxima.double()
    observed = maxima.amax(dim=1)
    cap = observed + LOCATION_CAP * (observed - maxima.amin(dim=1))
    return torch.where(fit.at_edge, observed, fit.location.minimum(cap)), fit.at_edge


EDGE_FALLBACK = "largest observed gradient norm over all batches"
"""The Lipschitz estimate of a (sample, target) whose Weibull fit is ``at_edge``."""


@dataclass
class CleverScores:
    """CLEVER scores per sample and their comparison with ``spectral_norm`` (``"clever"``).

    Attributes:
        untargeted: (N,) min over targets of ``min(g_j / L_j, radius)``; None if not computed.
        top2: (N,) the same for the runner-up class.
        lipschitz: (N, T) Lipschitz estimates (T = K-1 targets, or 1 for top-2 only): the
            fitted Weibull location capped at ``LOCATION_CAP`` spreads above the largest
            maximum, or that maximum where the fit is ``at_edge`` (:func:`lipschitz_estimate`);
            None when read back from results.json.
        targets: (N, T) target class of each column; None in results written before it.
        at_edge: (N, T) bool, the fit of that (sample, target) hit the top of its location
            range and fell back to the observed maximum; None in older results.
        maxima: (N, T, num_batches) float64 batch maxima of the gradient norm the estimates
            were fitted to; None when read back from results.json.
        norm, radius, num_batches, batch_points, seed: settings.
        forward_equivalents: per sample, counting a backward pass as 2 forwards:
            ``num_batches * batch_points * (1 + 2T)``; compare ``1 + 2(K-1)`` for exact
            ``spectral_norm`` (:func:`hf_fisher.estimators.exact.gradient_rows`).
        spectral_norm_forward_equivalents: that exact-engine cost, ``1 + 2(K-1)``.
        seconds_per_sample: measured wall time of CLEVER per sample.
        spectral_norm: (N,) the engine's values, if given; correlations: "untargeted" and
            "top2" -> rank correlation with spectral_norm (expected sign: negative).
    """

    untargeted: Tensor | None
    top2: Tensor
    lipschitz: Tensor | None
    targets: Tensor | None
    at_edge: Tensor | None
    maxima: Tensor | None
    norm: str
    radius: float
    num_batches: int
    batch_points: int
    seed: int
    forward_equivalents: int
    spectral_norm_forward_equivalents: int
    seconds_per_sample: float
    spectral_norm: Tensor | None
    correlations: dict[str, RankCorrelation]

    def to_json(self) -> dict:
        """Plain-Python dict with per-sample scores, costs, correlations and edge flags.

        The edge-fit keys are left out for results read back from files written before them.
        """
        section = {
            "norm": self.norm,
            "radius": float(self.radius),
            "num_batches": int(self.num_batches),
            "batch_points": int(self.batch_points),
            "seed": int(self.seed),
            "num_samples": int(self.top2.numel()),
            "cost": {
                "clever_forward_equivalents_per_sample": int(self.forward_equivalents),
                "spectral_norm_forward_equivalents_per_sample": int(
                    self.spectral_norm_forward_equivalents
                ),
                "clever_seconds_per_sample": float(self.seconds_per_sample),
                "convention": "one backward pass counts as two forward passes",
            },
            "median_untargeted": None
            if self.untargeted is None
            else json_float(self.untargeted.median()),
            "median_top2": json_float(self.top2.median()),
            "correlations": {name: c.to_json() for name, c in self.correlations.items()},
            "expected_sign": -1,
            "per_sample": {
                "untargeted": None if self.untargeted is None else json_floats(self.untargeted),
                "top2": json_floats(self.top2),
                "spectral_norm": None
                if self.spectral_norm is None
                else json_floats(self.spectral_norm),
            },
        }
        if self.at_edge is not None and self.targets is not None:
            section |= {
                "fits": int(self.at_edge.numel()),
                "fits_at_edge": int(self.at_edge.sum()),
                "edge_fallback": EDGE_FALLBACK,
                "location_cap_spreads": LOCATION_CAP,
            }
            section["per_sample"] |= {
                "targets": self.targets.tolist(),
                "fit_at_edge": self.at_edge.tolist(),
            }
        return section

    @classmethod
    def from_json(cls, data: dict) -> CleverScores:
        """Read back :meth:`to_json` (scores as float64 CPU tensors); ``lipschitz`` is None."""
        per_sample, cost = data["per_sample"], data["cost"]

        def scores(key: str) -> Tensor | None:
            return None if per_sample[key] is None else floats_from_json(per_sample[key])

        def flags(key: str, dtype: torch.dtype) -> Tensor | None:
            value = per_sample.get(key)
            return None if value is None else torch.tensor(value, dtype=dtype)

        return cls(
            untargeted=scores("untargeted"),
            top2=floats_from_json(per_sample["top2"]),
            lipschitz=None,
            targets=flags("targets", torch.long),
            at_edge=flags("fit_at_edge", torch.bool),
            maxima=None,
            norm=data["norm"],
            radius=float(data["radius"]),
            num_batches=data["num_batches"],
            batch_points=data["batch_points"],
            seed=data["seed"],
            forward_equivalents=cost["clever_forward_equivalents_per_sample"],
            spectral_norm_forward_equivalents=cost["spectral_norm_forward_equivalents_per_sample"],
            seconds_per_sample=float(cost["clever_seconds_per_sample"]),
            spectral_norm=scores("spectral_norm"),
            correlations={
                name: RankCorrelation.from_json(c) for name, c in data["correlations"].items()
            },
        )


def _batch_maxima(
    logit_fn: LogitFn,
    inputs: Tensor,  # (n, *shape)
    classes: Tensor,  # (n,)
    targets: Tensor,  # (n, T)
    *,
    norm: str,
    radius: float,
    batch_points: int,
    clip: tuple[float, float] | None,
    space_mask: Tensor | None,
    generators: list[torch.Generator],  # (n,) one random stream per sample
) -> Tensor:  # (n, T)
    """Max over ``batch_points`` ball points of ``||grad (z_c - z_j)||_q``, per sample/target.

    Each sample's points come from its own generator, so they do not depend on the batch.
    """
    count = inputs.shape[0]
    repeated = inputs.repeat_interleave(batch_points, dim=0)
    mask = None
    if space_mask is not None:
        mask = space_mask.to(inputs).expand_as(inputs).repeat_interleave(batch_points, dim=0)
    radii = torch.full((batch_points,), radius, dtype=inputs.dtype, device=inputs.device)
    offsets = [
        sample_in_ball(
            repeated[rows],
            radii,
            norm,
            space_mask=None if mask is None else mask[rows],
            generator=generator,
        )
        for generator, rows in zip(
            generators,
            (slice(i * batch_points, (i + 1) * batch_points) for i in range(count)),
            strict=True,
        )
    ]
    points = repeated + torch.cat(offsets)
    if clip is not None:
        points = points.clamp(clip[0], clip[1])
    leaf = points.detach().requires_grad_(True)
    rows = torch.arange(leaf.shape[0], device=inputs.device)
    point_class = classes.repeat_interleave(batch_points)
    maxima = []
    with torch.enable_grad():
        logits = logit_fn(leaf)
        for step in range(targets.shape[1]):
            selector = torch.zeros_like(logits)
            selector[rows, point_class] = 1.0
            selector[rows, targets[:, step].repeat_interleave(batch_points)] = -1.0
            (gradient,) = torch.autograd.grad(
                logits, leaf, selector, retain_graph=step < targets.shape[1] - 1
            )
            if mask is not None:
                gradient = gradient * mask
            norms = lp_norm(gradient, DUAL_NORM[norm]).double()
            maxima.append(norms.reshape(count, batch_points).amax(dim=1))
    return torch.stack(maxima, dim=1)


def _check_clever(
    inputs: Tensor,
    space_mask: Tensor | None,
    norm: str,
    clip: tuple[float, float] | None,
    radius: float,
    num_batches: int,
    batch_points: int,
    spectral_norm: Tensor | None,
) -> Tensor | None:
    """Raise InputError on bad arguments; return ``spectral_norm`` flattened (or None)."""
    check_batch(inputs, None, space_mask)
    check_norm(norm)
    check_clip(clip)
    if not radius > 0:
        raise InputError(f"got radius={radius}; pass the ball radius R > 0")
    if num_batches < 3 or batch_points < 1:
        raise InputError(
            f"got num_batches={num_batches}, batch_points={batch_points}; the Weibull fit needs "
            "num_batches >= 3 and batch_points >= 1"
        )
    if spectral_norm is None:
        return None
    spectral_norm = torch.as_tensor(spectral_norm).detach().reshape(-1)
    if spectral_norm.numel() != inputs.shape[0]:
        raise InputError(
            f"got {spectral_norm.numel()} spectral_norm values for {inputs.shape[0]} "
            "inputs; pass one per sample, shape (N,)"
        )
    return spectral_norm


def _targets(
    logit_fn: LogitFn, inputs: Tensor, untargeted: bool, chunk: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Clean logits (N, K), predicted classes (N,), target classes (N, T) and runner-up (N,).

    The clean forward runs ``chunk`` samples at a time (halved on out-of-memory).
    """

    def forward(part: slice) -> Tensor:
        with torch.no_grad():
            return select_rows(logit_fn, part)(inputs[part])

    logits = torch.cat(run_in_chunks(forward, inputs.shape[0], chunk, what="CLEVER: "))
    if logits.ndim != 2 or logits.shape[0] != inputs.shape[0] or logits.shape[1] < 2:
        raise NotAClassifierError(
            f"the model returned an output of shape {tuple(logits.shape)}; CLEVER needs "
            "classifier logits (N, K) with K >= 2"
        )
    classes = logits.argmax(dim=1)
    if untargeted:
        targets = other_classes(classes, logits.shape[1])
    else:
        targets = logits.scatter(1, classes[:, None], float("-inf")).argmax(dim=1, keepdim=True)
    runner_up = logits.scatter(1, classes[:, None], float("-inf")).argmax(dim=1)
    return logits, classes, targets, runner_up


def _chunked_maxima(
    logit_fn: LogitFn,
    inputs: Tensor,  # (N, *shape)
    classes: Tensor,  # (N,)
    targets: Tensor,  # (N, T)
    *,
    chunk: int,
    space_mask: Tensor | None,
    generators: list[torch.Generator],
    **options,
) -> Tensor:  # (N, T)
    """One batch maximum per sample and target, ``chunk`` samples per forward pass.

    A chunk that runs out of memory is retried at half the size with its samples' generators
    rewound, so the maxima do not depend on the chunking.
    """

    def run(part: slice) -> Tensor:
        states = [generator.get_state() for generator in generators[part]]
        mask = None if space_mask is None else space_mask.expand_as(inputs)[part]
        try:
            return _batch_maxima(
                select_rows(logit_fn, part),
                inputs[part],
                classes[part],
                targets[part],
                space_mask=mask,
                generators=generators[part],
                **options,
            )
        except BaseException:
            for generator, state in zip(generators[part], states, strict=True):
                generator.set_state(state)
            raise

    return torch.cat(run_in_chunks(run, inputs.shape[0], chunk, what="CLEVER: "))


def sample_generators(
    seed: int, count: int, device: torch.device, sample_ids: Sequence[int] | None = None
) -> list[torch.Generator]:
    """One generator per sample, seeded from ``(seed, sample id)`` via NumPy's SeedSequence.

    A sample's ball points, hence its score, then depend on the seed and its id only (the
    dataset index; default its position ``0..N-1``), not on the other samples of the batch or
    on the chunking. Ids ``0..N-1`` give ``SeedSequence(seed).spawn(N)``.
    """
    ids = range(count) if sample_ids is None else sample_ids
    states = [np.random.SeedSequence(seed, spawn_key=(int(i),)) for i in ids]
    return [
        torch.Generator(device=device).manual_seed(int(state.generate_state(1, np.uint64)[0]))
        for state in states
    ]


def _local_lipschitz(
    logit_fn: LogitFn,
    inputs: Tensor,  # (N, *shape)
    classes: Tensor,  # (N,)
    targets: Tensor,  # (N, T)
    *,
    num_batches: int,
    steps: Steps,
    **options,
) -> tuple[Tensor, Tensor, Tensor]:  # (N, T), (N, T), (N, T, num_batches)
    """Lipschitz estimates, edge flags and the ``num_batches`` batch maxima they come from."""
    maxima = torch.empty(
        inputs.shape[0], targets.shape[1], num_batches, dtype=torch.float64, device=inputs.device
    )
    for batch in range(num_batches):
        maxima[:, :, batch] = _chunked_maxima(logit_fn, inputs, classes, targets, **options)
        steps.advance()
    lipschitz, at_edge = lipschitz_estimate(maxima.flatten(0, 1))
    return lipschitz.reshape(targets.shape), at_edge.reshape(targets.shape), maxima


def _correlations(
    spectral_norm: Tensor | None,
    untargeted: Tensor | None,
    top2: Tensor,
    *,
    num_bootstrap: int,
    seed: int,
) -> dict[str, RankCorrelation]:
    """Rank correlation of each computed score with ``spectral_norm`` (none without it)."""
    correlations: dict[str, RankCorrelation] = {}
    if spectral_norm is None:
        return correlations
    for name, values in (("untargeted", untargeted), ("top2", top2)):
        if values is not None:
            correlations[name] = rank_correlation(
                spectral_norm.cpu(), values.cpu(), num_bootstrap=num_bootstrap, seed=seed
            )
    return correlations


def clever_scores(
    logit_fn: LogitFn,
    inputs: Tensor,  # (N, *shape)
    *,
    radius: float,
    norm: Literal["l2", "linf"] = "l2",
    num_batches: int = 50,
    batch_points: int = 64,
    untargeted: bool = True,
    clip: tuple[float, float] | None = None,
    space_mask: Tensor | None = None,
    spectral_norm: Tensor | None = None,  # (N,)
    max_points: int = 4096,
    num_bootstrap: int = 1000,
    seed: int = 0,
    sample_ids: Sequence[int] | None = None,
    max_memory: int | str = "auto",
    progress: ProgressCallback | None = None,
) -> CleverScores:
    """CLEVER scores of the predicted class, batched over samples, optionally vs spectral_norm.

    Args:
        logit_fn: (N, *shape) -> (N, K) logits; deterministic.
        inputs: the batch.
        radius: R, radius of the sampling ball and cap of the score.
        norm: perturbation norm p ("l2" or "linf"); gradients use the dual norm.
        num_batches: Weibull samples (batch maxima) per sample and target (paper: 500).
        batch_points: ball points per batch (paper: 1024).
        untargeted: also compute all K-1 targets (cost x (K-1)); else only the top-2 target.
        clip: valid input box for the sampled points; None for embeddings.
        space_mask: 0/1 tensor broadcastable to inputs; zeros are never perturbed.
        spectral_norm: the engine's per-sample lambda_max, to correlate with.
        max_points: most ball points per forward pass; fewer when ``max_memory`` needs it.
        num_bootstrap: resamples for the correlation CIs.
        seed: seed of the ball sampling.
        sample_ids: stable per-sample ids (the dataset indices; default ``0..N-1``) that key
            each sample's generator, so scores do not depend on the batch or the chunking.
        max_memory: byte budget ("4GB", bytes, or "auto"; :mod:`hf_fisher.memory`): samples
            per forward pass are sized to fit it and halved on out-of-memory.
        progress: called as ``progress(done, total)`` after each of the ``num_batches``.

    Raises:
        InputError: bad shapes, norm, radius or counts.
    """
    spectral_norm = _check_clever(
        inputs, space_mask, norm, clip, radius, num_batches, batch_points, spectral_norm
    )
    start = time.perf_counter()
    inputs = inputs.detach()
    chunk = max(1, min(max_points, _points_per_pass(logit_fn, inputs, max_memory)) // batch_points)
    logits, classes, targets, runner_up = _targets(logit_fn, inputs, untargeted, chunk)
    lipschitz, at_edge, maxima = _local_lipschitz(
        logit_fn,
        inputs,
        classes,
        targets,
        num_batches=num_batches,
        steps=Steps(progress, num_batches),
        chunk=chunk,
        norm=norm,
        radius=radius,
        batch_points=batch_points,
        clip=clip,
        space_mask=space_mask,
        generators=sample_generators(seed, inputs.shape[0], inputs.device, sample_ids),
    )
    margins = logits.double().gather(1, classes[:, None]) - logits.double().gather(1, targets)
    scores = (margins / lipschitz.clamp_min(1e-300)).clamp(max=radius)
    top2 = scores[targets == runner_up[:, None]]
    untargeted_scores = scores.amin(dim=1) if untargeted else None
    elapsed = time.perf_counter() - start
    return CleverScores(
        untargeted=untargeted_scores,
        top2=top2,
        lipschitz=lipschitz,
        targets=targets,
        at_edge=at_edge,
        maxima=maxima,
        norm=norm,
        radius=float(radius),
        num_batches=num_batches,
        batch_points=batch_points,
        seed=seed,
        forward_equivalents=num_batches * batch_points * (1 + 2 * targets.shape[1]),
        spectral_norm_forward_equivalents=1 + 2 * (logits.shape[1] - 1),
        seconds_per_sample=elapsed / inputs.shape[0],
        spectral_norm=spectral_norm,
        correlations=_correlations(
            spectral_norm, untargeted_scores, top2, num_bootstrap=num_bootstrap, seed=seed
        ),
    )


def _points_per_pass(logit_fn: LogitFn, inputs: Tensor, max_memory: int | str) -> int:
    """Ball points per forward pass that fit the budget.

    Each point costs the autograd activations of one forward and a few input-sized buffers.
    """
    budget = working_memory(max_memory, inputs.device)
    activations, _ = sample_footprint(logit_fn, inputs)
    per_point = activations + 4 * inputs[0].numel() * inputs.element_size()
    return chunk_size(budget, per_point, 2**40)
