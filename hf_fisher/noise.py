"""Black-box random-noise robustness curves with high-probability bounds.

For each noise level sigma, every sample gets ``draws`` independent perturbations
(Gaussian ``N(0, sigma^2 I)`` or uniform on ``[-sigma, sigma]`` per coordinate, restricted to
``space_mask``, then clipped). Reported per sigma: accuracy under noise, the mean Brier error
``||p(x + noise) - onehot(y)||^2`` (in [0, 2]) and two upper confidence bounds on the expected
Brier error, following "Robustness of neural networks to random noise perturbations of their
inputs" (arXiv 2606.31581).

Target and assumptions. The bound is on ``B(sigma) = (1/N) sum_i E_noise[brier_i(sigma)]``, the
noise-expected error *on the evaluated samples*. Given the samples, the N * draws values are
independent (independent noise per draw and per sample, a deterministic model in eval mode) and
bounded in [0, 2]. Hoeffding's inequality needs only that. The empirical Bernstein bound
(Maurer & Pontil 2009, Thm 4) is stated for identically distributed values; with per-sample
means that differ, the sample variance over-estimates the average variance, which keeps it
conservative. Each bound runs at ``delta / 2`` and the reported ``upper`` is the smaller one,
so it holds with probability >= ``confidence`` at each sigma (not simultaneously over sigmas).
Reading it as an error on the data distribution also needs the samples to be an i.i.d. draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from hf_fisher._progress import ProgressCallback, Steps
from hf_fisher._random import SampleStreams
from hf_fisher.attacks import check_batch, check_clip
from hf_fisher.correlation import float_from_json, json_float
from hf_fisher.errors import InputError, NotAClassifierError
from hf_fisher.memory import plan_chunks, run_in_chunks, select_rows
from hf_fisher.operators import LogitFn

NoiseKind = Literal["gaussian", "uniform"]
BRIER_RANGE = 2.0


def hoeffding_upper(mean: float, count: int, delta: float, value_range: float) -> float:
    """Upper bound on the expectation: ``mean + R sqrt(log(1/delta) / (2n))``.

    >>> round(hoeffding_upper(0.1, 200, 0.05, 1.0), 4)
    0.1865
    """
    return mean + value_range * math.sqrt(math.log(1.0 / delta) / (2.0 * count))


def empirical_bernstein_upper(
    mean: float, variance: float, count: int, delta: float, value_range: float
) -> float:
    """Maurer-Pontil empirical Bernstein bound, rescaled to values in ``[0, R]``.

    ``mean + sqrt(2 V log(2/delta) / n) + 7 R log(2/delta) / (3 (n - 1))``, V the unbiased
    sample variance. Tighter than Hoeffding when the variance is small.

    >>> round(empirical_bernstein_upper(0.1, 0.0, 1001, 0.05, 1.0), 4)
    0.1086
    """
    if count < 2:
        return math.inf
    log_term = math.log(2.0 / delta)
    return (
        mean
        + math.sqrt(2.0 * variance * log_term / count)
        + 7.0 * value_range * log_term / (3.0 * (count - 1))
    )


@dataclass
class NoiseCurves:
    """Accuracy and Brier error under random noise, with upper confidence bounds.

    Attributes:
        sigmas, kind, draws, confidence, tolerance, seed: the settings.
        accuracy, brier: one value per sigma (means over samples and draws).
        brier_std: per sigma, the standard deviation of the N * draws Brier values.
        hoeffding, bernstein: per sigma, each bound at ``(1 - confidence) / 2``.
        upper: per sigma, ``min(hoeffding, bernstein, 2)``, valid at ``confidence``.
        auc_accuracy, auc_brier: trapezoid areas under the curves, divided by the sigma range.
        crossing_sigma: sigma at which ``upper`` first exceeds ``tolerance`` (linear
            interpolation between grid points); None if it never does on the grid.
        num_samples: N.
    """

    sigmas: list[float]
    kind: str
    draws: int
    confidence: float
    tolerance: float
    seed: int
    accuracy: list[float]
    brier: list[float]
    brier_std: list[float]
    hoeffding: list[float]
    bernstein: list[float]
    upper: list[float]
    auc_accuracy: float
    auc_brier: float
    crossing_sigma: float | None
    num_samples: int

    def to_json(self) -> dict:
        """Plain-Python dict (results.json section ``"noise_curves"``)."""
        return {
            "sigmas": [float(s) for s in self.sigmas],
            "kind": self.kind,
            "draws": int(self.draws),
            "confidence": float(self.confidence),
            "tolerance": float(self.tolerance),
            "seed": int(self.seed),
            "num_samples": int(self.num_samples),
            "accuracy": [float(v) for v in self.accuracy],
            "brier": [float(v) for v in self.brier],
            "brier_std": [float(v) for v in self.brier_std],
            "brier_upper_hoeffding": [json_float(v) for v in self.hoeffding],
            "brier_upper_bernstein": [json_float(v) for v in self.bernstein],
            "brier_upper": [float(v) for v in self.upper],
            "auc_accuracy": json_float(self.auc_accuracy),
            "auc_brier": json_float(self.auc_brier),
            "crossing_sigma": None if self.crossing_sigma is None else float(self.crossing_sigma),
            "assumptions": (
                "bound on the noise-expected Brier error of the evaluated samples; the "
                "N x draws values are independent given the samples and lie in [0, 2]; "
                "each bound at (1 - confidence) / 2, per sigma, not uniform over sigmas"
            ),
        }

    @classmethod
    def from_json(cls, data: dict) -> NoiseCurves:
        """Read back :meth:`to_json`; a null bound is +inf (too few values), a null area NaN."""
        return cls(
            sigmas=[float(s) for s in data["sigmas"]],
            kind=data["kind"],
            draws=data["draws"],
            confidence=data["confidence"],
            tolerance=data["tolerance"],
            seed=data["seed"],
            accuracy=[float(v) for v in data["accuracy"]],
            brier=[float(v) for v in data["brier"]],
            brier_std=[float(v) for v in data["brier_std"]],
            hoeffding=[float_from_json(v, math.inf) for v in data["brier_upper_hoeffding"]],
            bernstein=[float_from_json(v, math.inf) for v in data["brier_upper_bernstein"]],
            upper=[float(v) for v in data["brier_upper"]],
            auc_accuracy=float_from_json(data["auc_accuracy"]),
            auc_brier=float_from_json(data["auc_brier"]),
            crossing_sigma=data["crossing_sigma"],
            num_samples=data["num_samples"],
        )


def _normalised_area(sigmas: np.ndarray, values: np.ndarray) -> float:
    if len(sigmas) < 2 or sigmas[-1] == sigmas[0]:
        return float("nan")
    area = (np.diff(sigmas) * (values[1:] + values[:-1]) / 2).sum()
    return float(area / (sigmas[-1] - sigmas[0]))


def crossing(sigmas: Sequence[float], values: Sequence[float], tolerance: float) -> float | None:
    """First sigma where ``values`` exceeds ``tolerance``, interpolated linearly; None if never.

    >>> crossing([0.0, 1.0, 2.0], [0.0, 0.1, 0.3], 0.2)
    1.5
    """
    for index, value in enumerate(values):
        if value > tolerance:
            if index == 0:
                return float(sigmas[0])
            s0, s1, v0 = sigmas[index - 1], sigmas[index], values[index - 1]
            return float(s0 + (s1 - s0) * (tolerance - v0) / (value - v0))
    return None


def _noise(inputs: Tensor, kind: str, streams: SampleStreams) -> Tensor:
    shape, where = inputs.shape[1:], {"dtype": inputs.dtype, "device": inputs.device}
    if kind == "gaussian":
        return streams.normal(shape, **where)
    return 2.0 * streams.uniform(shape, **where) - 1.0


def _check_settings(
    sigmas: Sequence[float], kind: str, draws: int, confidence: float
) -> list[float]:
    sigmas = [float(s) for s in sigmas]
    increasing = all(b >= a for a, b in zip(sigmas, sigmas[1:], strict=False))
    if not sigmas or min(sigmas) < 0 or not increasing:
        raise InputError(f"got sigmas={sigmas}; pass a non-empty increasing list of levels >= 0")
    if kind not in ("gaussian", "uniform"):
        raise InputError(f"got kind={kind!r}; pass 'gaussian' or 'uniform'")
    if draws < 1:
        raise InputError(f"got draws={draws}; pass at least 1 noise draw per sample")
    if not 0.0 < confidence < 1.0:
        raise InputError(f"got confidence={confidence}; pass a level in (0, 1), e.g. 0.95")
    return sigmas


def _noisy_sums(
    logit_fn: LogitFn,
    inputs: Tensor,  # (n, *shape)
    labels: Tensor,  # (n,)
    sigmas: Sequence[float],
    *,
    kind: str,
    draws: int,
    clip: tuple[float, float] | None,
    mask: Tensor | None,
    streams: SampleStreams,
    after_level: Callable[[], None],
) -> Tensor:  # (S, 3) float64
    """Per sigma, over ``draws`` noisy copies of the chunk: correct count, Brier sum and squares.

    ``after_level`` is called as each sigma finishes (progress).
    """
    sums = torch.zeros(len(sigmas), 3, dtype=torch.float64, device=inputs.device)
    for level, sigma in enumerate(sigmas):
        for _ in range(draws):
            noise = sigma * _noise(inputs, kind, streams)
            noisy = inputs + (noise if mask is None else noise * mask)
            if clip is not None:
                noisy = noisy.clamp(clip[0], clip[1])
            logits = logit_fn(noisy)
            if logits.ndim != 2 or logits.shape[0] != inputs.shape[0]:
                raise NotAClassifierError(
                    f"the model returned an output of shape {tuple(logits.shape)}; noise "
                    "curves need classifier logits (N, K)"
                )
            probs = torch.softmax(logits.double(), dim=1)
            onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).double()
            brier = ((probs - onehot) ** 2).sum(dim=1)
            sums[level, 0] += (logits.argmax(dim=1) == labels).double().sum()
            sums[level, 1] += brier.sum()
            sums[level, 2] += (brier**2).sum()
        after_level()
    return sums


def _level(correct: Tensor, total: Tensor, total_sq: Tensor, count: int, delta: float) -> dict:
    """Accuracy, Brier mean and spread, and both upper bounds at one noise level."""
    mean = float(total) / count
    variance = max(float(total_sq) - count * mean**2, 0.0) / max(count - 1, 1)
    hoeffding = hoeffding_upper(mean, count, delta, BRIER_RANGE)
    bernstein = empirical_bernstein_upper(mean, variance, count, delta, BRIER_RANGE)
    return {
        "accuracy": float(correct) / count,
        "brier": mean,
        "brier_std": math.sqrt(variance),
        "hoeffding": hoeffding,
        "bernstein": bernstein,
        "upper": min(hoeffding, bernstein, BRIER_RANGE),
    }


def noise_curves(
    logit_fn: LogitFn,
    inputs: Tensor,  # (N, *shape)
    labels: Tensor,  # (N,)
    *,
    sigmas: Sequence[float],
    kind: NoiseKind = "gaussian",
    draws: int = 16,
    confidence: float = 0.95,
    tolerance: float = 0.25,
    clip: tuple[float, float] | None = None,
    space_mask: Tensor | None = None,
    seed: int = 0,
    sample_ids: Sequence[int] | None = None,
    max_memory: int | str = "auto",
    chunk_size: int | None = None,
    progress: ProgressCallback | None = None,
) -> NoiseCurves:
    """Accuracy and Brier error under random noise, per sigma, with Hoeffding/Bernstein bounds.

    Cost: ``len(sigmas) * draws`` forward passes of the batch (no gradients). Sigma is the
    Gaussian standard deviation, or the half-width of the uniform noise.

    Args:
        logit_fn: (N, *shape) -> (N, K) logits; deterministic (eval mode).
        inputs, labels: the batch and its integer labels.
        sigmas: noise levels, >= 0, increasing.
        kind: "gaussian" or "uniform".
        draws: noise draws per sample and sigma (m).
        confidence: level of the upper bounds, in (0, 1).
        tolerance: Brier error tolerance for ``crossing_sigma``.
        clip: valid input box (pixels (0.0, 1.0)); None for embeddings.
        space_mask: 0/1 tensor broadcastable to inputs; zeros get no noise.
        seed: seed of the noise; results are deterministic under a fixed seed.
        sample_ids: stable per-sample ids (the dataset indices; default ``0..N-1``): each
            sample's noise comes from its own stream keyed by ``(seed, sample id)``, so the
            curves do not depend on the chunking or on the other samples of the batch.
        max_memory: byte budget ("4GB", bytes, or "auto"; :mod:`hf_fisher.memory`); samples
            run in chunks that fit it, halved on out-of-memory.
        chunk_size: samples per chunk (None: from ``max_memory``).
        progress: called as ``progress(done, total)`` as each sigma of each chunk finishes,
            counting (sample, sigma) pairs.

    Raises:
        InputError: bad sigmas, kind, draws, confidence or shapes.
    """
    check_batch(inputs, labels, space_mask)
    check_clip(clip)
    sigmas = _check_settings(sigmas, kind, draws, confidence)
    inputs = inputs.detach()
    num_samples = inputs.shape[0]
    ids = list(range(num_samples)) if sample_ids is None else [int(i) for i in sample_ids]
    mask = None if space_mask is None else space_mask.to(inputs).expand_as(inputs)
    dim, itemsize = inputs[0].numel(), inputs.element_size()
    size = plan_chunks(
        logit_fn,
        inputs,
        max_memory=max_memory,
        chunk_size_override=chunk_size,
        working_bytes=lambda k: 4 * dim * itemsize + dim * 8,
    )
    steps = Steps(progress, num_samples * len(sigmas))

    def run(part: slice) -> Tensor:
        with torch.no_grad():
            sums = _noisy_sums(
                select_rows(logit_fn, part),
                inputs[part],
                labels[part],
                sigmas,
                kind=kind,
                draws=draws,
                clip=clip,
                mask=None if mask is None else mask[part],
                streams=SampleStreams(seed, ids[part], "noise"),
                after_level=lambda: steps.advance(len(ids[part])),
            )
        return sums

    sums = sum(run_in_chunks(run, num_samples, size, what="noise: "))
    delta = (1.0 - confidence) / 2.0
    count = num_samples * draws
    columns: dict[str, list[float]] = {
        key: [] for key in ("accuracy", "brier", "brier_std", "hoeffding", "bernstein", "upper")
    }
    for level in range(len(sigmas)):
        for key, value in _level(*sums[level], count, delta).items():
            columns[key].append(value)
    grid = np.asarray(sigmas)
    return NoiseCurves(
        sigmas=sigmas,
        kind=kind,
        draws=draws,
        confidence=confidence,
        tolerance=tolerance,
        seed=seed,
        auc_accuracy=_normalised_area(grid, np.asarray(columns["accuracy"])),
        auc_brier=_normalised_area(grid, np.asarray(columns["brier"])),
        crossing_sigma=crossing(sigmas, columns["upper"], tolerance),
        num_samples=inputs.shape[0],
        **columns,
    )
