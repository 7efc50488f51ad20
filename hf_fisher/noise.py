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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from hf_fisher._progress import ProgressCallback, Steps
from hf_fisher.attacks import check_batch, check_clip
from hf_fisher.correlation import float_from_json, json_float
from hf_fisher.errors import InputError, NotAClassifierError
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


def _noise(inputs: Tensor, kind: str, generator: torch.Generator) -> Tensor:
    if kind == "gaussian":
        return torch.randn(inputs.shape, generator=generator, device=inputs.device).to(inputs)
    unit = torch.rand(inputs.shape, generator=generator, device=inputs.device).to(inputs)
    return 2.0 * unit - 1.0


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
    inputs: Tensor,  # (N, *shape)
    labels: Tensor,  # (N,)
    sigma: float,
    *,
    kind: str,
    draws: int,
    clip: tuple[float, float] | None,
    mask: Tensor | None,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """Over ``draws`` noisy copies of the batch: correct count, sum and sum of squares of Brier."""
    correct = torch.zeros((), dtype=torch.float64, device=inputs.device)
    total = torch.zeros_like(correct)
    total_sq = torch.zeros_like(correct)
    for _ in range(draws):
        noise = sigma * _noise(inputs, kind, generator)
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
        correct += (logits.argmax(dim=1) == labels).double().sum()
        total += brier.sum()
        total_sq += (brier**2).sum()
    return correct, total, total_sq


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
        progress: called as ``progress(done, total)`` after each sigma.

    Raises:
        InputError: bad sigmas, kind, draws, confidence or shapes.
    """
    check_batch(inputs, labels, space_mask)
    check_clip(clip)
    sigmas = _check_settings(sigmas, kind, draws, confidence)
    generator = torch.Generator(device=inputs.device).manual_seed(seed)
    inputs = inputs.detach()
    mask = None if space_mask is None else space_mask.to(inputs)
    delta = (1.0 - confidence) / 2.0
    count = inputs.shape[0] * draws
    columns: dict[str, list[float]] = {
        key: [] for key in ("accuracy", "brier", "brier_std", "hoeffding", "bernstein", "upper")
    }
    steps = Steps(progress, len(sigmas))
    with torch.no_grad():
        for sigma in sigmas:
            sums = _noisy_sums(
                logit_fn,
                inputs,
                labels,
                sigma,
                kind=kind,
                draws=draws,
                clip=clip,
                mask=mask,
                generator=generator,
            )
            for key, value in _level(*sums, count, delta).items():
                columns[key].append(value)
            steps.advance()
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
