"""I-ASIDE: exact Shapley values of frequency bands for the true-label log-probability.

Luo, McDermott and O'Riordan, "Interpreting Global Perturbation Robustness of Image Models using
Axiomatic Spectral Importance Decomposition", arXiv:2408.01139. The M frequency bands of
:mod:`hf_fisher.frequency_bands` are the players. A coalition S keeps the 2-D spectrum of every
image on the bands in S and replaces the other bands by a fill; the inverse FFT is mapped back to
pixels and ``v(S)`` is the mean log-probability of the true label over a fixed sample set. The
Shapley value of band i is

    phi_i = sum_{S not containing i} |S|! (M - |S| - 1)! / M! * (v(S + i) - v(S)),

computed exactly from all 2^M coalitions, each image of each coalition one row of a batched
forward pass. Black-box: forward passes only. See docs/frequency.md for the score definition
and the quirks of the public reference code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from hf_fisher._progress import ProgressCallback, Steps
from hf_fisher.errors import InputError
from hf_fisher.frequency_bands import band_index
from hf_fisher.operators import LogitFn

Fill = Literal["zero", "gaussian", "other_image"]
PixelMap = Literal["paper", "clip"]
FILLS = ("zero", "gaussian", "other_image")
PIXEL_MAPS = ("paper", "clip")
MAX_BANDS = 16


def coalition_masks(num_bands: int, device=None) -> Tensor:  # -> (2^M, M) bool
    """Return every coalition as a row of M booleans; row c has band i iff bit i of c is set.

    >>> coalition_masks(2).tolist()
    [[False, False], [True, False], [False, True], [True, True]]
    """
    index = torch.arange(2**num_bands, device=device)
    return (index[:, None] >> torch.arange(num_bands, device=device)) & 1 == 1


def shapley_values(values: Tensor) -> Tensor:  # (..., 2^M) -> (..., M) float64
    """Exact Shapley values of a game given by its value on every coalition.

    Args:
        values: (..., 2^M) with ``values[..., c]`` the worth of the coalition whose members are
            the set bits of c (the order of :func:`coalition_masks`).

    Returns:
        (..., M) float64; efficiency: they sum to ``values[..., -1] - values[..., 0]``.

    >>> v = torch.tensor([0.0, 1.0, 2.0, 5.0])  # v({0,1}) = 5 has a synergy of 2
    >>> shapley_values(v).tolist()
    [2.0, 3.0]
    """
    num_coalitions = values.shape[-1]
    num_bands = num_coalitions.bit_length() - 1
    if num_coalitions < 2 or 2**num_bands != num_coalitions:
        raise InputError(
            f"got {num_coalitions} coalition values; pass 2^M values, one per coalition of M "
            "players, in the order of coalition_masks(M)"
        )
    values = values.double()
    index = torch.arange(num_coalitions, device=values.device)
    sizes = torch.stack([(index >> i) & 1 for i in range(num_bands)]).sum(dim=0)
    factorial = torch.tensor(
        [float(math.factorial(k)) for k in range(num_bands + 1)],
        dtype=torch.float64,
        device=values.device,
    )
    phi = []
    for player in range(num_bands):
        without = index[(index >> player) & 1 == 0]
        size = sizes[without]
        weight = factorial[size] * factorial[num_bands - size - 1] / factorial[num_bands]
        gain = values[..., without | (1 << player)] - values[..., without]
        phi.append((gain * weight).sum(dim=-1))
    return torch.stack(phi, dim=-1)


def importance_distribution(phi: Tensor) -> Tensor:  # (M,) -> (M,)
    """Normalise Shapley values to a distribution: negative values count as no importance.

    >>> importance_distribution(torch.tensor([3.0, 1.0, -1.0])).tolist()
    [0.75, 0.25, 0.0]
    """
    positive = phi.double().clamp_min(0)
    total = positive.sum()
    if total <= 0:
        return torch.full_like(positive, 1.0 / len(positive))
    return positive / total


def reference_distribution(phi: Tensor) -> Tensor:  # (M,) -> (M,)
    """The public reference code's normalisation: shift by the minimum, then divide by the sum.

    This forces the weakest band to 0 whatever its value; kept for comparison with published
    numbers only.

    >>> reference_distribution(torch.tensor([3.0, 2.0, 1.0])).tolist()
    [0.6666666666666666, 0.3333333333333333, 0.0]
    """
    shifted = phi.double() - phi.double().min()
    total = shifted.sum()
    if total <= 0:
        return torch.full_like(shifted, 1.0 / len(shifted))
    return shifted / total


def _score_terms(num_bands: int, beta: float) -> tuple[Tensor, float]:
    if not 0.0 < beta < 1.0:
        raise InputError(f"got beta={beta}; the spectral decay beta must lie strictly in (0, 1)")
    decay = beta ** torch.arange(num_bands, dtype=torch.float64)
    norm2 = decay.norm()
    return decay / norm2, float(decay.sum() / (num_bands * norm2))


def spectral_robustness_score(distribution: Tensor, beta: float = 0.75) -> float:
    """Spectral robustness score ``(b^T I - eta) / (1 - eta)``, signed; larger is more robust.

    ``b = (beta^0, ..., beta^(M-1)) / ||.||_2`` favours low bands, ``I`` is the importance
    distribution (summing to 1) and ``eta = ||b||_1 / M`` is ``b^T I`` for the uniform
    distribution, so the score is 0 for uniform importance, positive when importance leans to low
    frequencies and negative when it leans to high ones. It is linear, hence monotone, in I.

    >>> round(spectral_robustness_score(torch.full((8,), 1 / 8)), 12)
    0.0
    """
    weights, eta = _score_terms(len(distribution), beta)
    return float(((weights * distribution.double().cpu()).sum() - eta) / (1 - eta))


def reference_score(distribution: Tensor, beta: float = 0.75) -> float:
    """The public reference code's score ``|b^T I - eta| / |1 - eta|`` (absolute value).

    The absolute value maps importance leaning to high frequencies onto positive, "robust"
    scores; kept for comparison with published numbers only.
    """
    weights, eta = _score_terms(len(distribution), beta)
    return float(abs((weights * distribution.double().cpu()).sum() - eta) / abs(1 - eta))


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fill_spectra(
    spectra: Tensor, fill: Fill = "other_image", sigma: float = 0.5, seed: int = 0
) -> Tensor:  # (N, C, H, W) complex -> (N, C, H, W) complex
    """Return the spectrum that replaces the bands outside a coalition, one per image.

    ``zero``: nothing. ``gaussian``: complex noise, real and imaginary parts N(0, sigma^2).
    ``other_image``: the spectrum of another image of the batch, by a seeded cyclic derangement
    (no image is filled with itself). The fill is drawn once and shared by every coalition, so
    ``v`` is a fixed set function and its Shapley values are exact.
    """
    if fill not in FILLS:
        raise InputError(f"got fill={fill!r}; use one of {FILLS}")
    generator = _generator(seed)
    if fill == "zero":
        return torch.zeros_like(spectra)
    if fill == "gaussian":
        real = torch.randn(spectra.shape, generator=generator, dtype=spectra.real.dtype)
        imag = torch.randn(spectra.shape, generator=generator, dtype=spectra.real.dtype)
        return (sigma * torch.complex(real, imag)).to(spectra.device)
    num_images = spectra.shape[0]
    if num_images < 2:
        raise InputError(
            f"fill='other_image' needs at least 2 images to swap spectra, got {num_images}; "
            "pass more images or use fill='zero' or fill='gaussian'"
        )
    order = torch.randperm(num_images, generator=generator)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)
    return spectra[partner.to(spectra.device)]


def to_pixels(complex_images: Tensor, pixel_map: PixelMap = "paper") -> Tensor:
    """Map inverse-FFT output (N, C, H, W) complex back to valid pixels in [0, 1].

    ``paper``: the modulus, then min-max scaling to [0, 1] (per image here; an all-constant image
    becomes 0). ``clip``: the real part clipped to [0, 1], which returns an unmodified image
    unchanged.
    """
    if pixel_map not in PIXEL_MAPS:
        raise InputError(f"got pixel_map={pixel_map!r}; use one of {PIXEL_MAPS}")
    if pixel_map == "clip":
        return complex_images.real.clamp(0, 1)
    modulus = complex_images.abs()
    low = modulus.flatten(1).amin(dim=1)[:, None, None, None]
    span = modulus.flatten(1).amax(dim=1)[:, None, None, None] - low
    tiny = torch.finfo(modulus.dtype).eps
    return torch.where(span > tiny, (modulus - low) / span.clamp_min(tiny), 0.0)


# keys of SpectralImportance.to_json() that are results, not settings
_RESULT_KEYS = frozenset(
    {
        "phi",
        "distribution",
        "score",
        "value_all",
        "value_none",
        "efficiency_residual",
        "reference_distribution",
        "reference_score",
    }
)


@dataclass
class SpectralImportance:
    """I-ASIDE result for one model on one sample set.

    Attributes:
        phi: (M,) float64 Shapley value of each band (nats of true-label log-probability).
        values: (2^M,) float64 ``v(S)`` per coalition, in the order of :func:`coalition_masks`.
        distribution: (M,) normalised importance (:func:`importance_distribution`).
        score: :func:`spectral_robustness_score` of ``distribution``.
        efficiency_residual: ``sum(phi) - (v(all) - v(none))``; rounding error only.
        reference_distribution, reference_score: the reference code's variants, for comparison.
        settings: the knobs used (fill, sigma, pixel_map, seed, beta, num_samples).
    """

    phi: Tensor
    values: Tensor
    distribution: Tensor
    score: float
    efficiency_residual: float
    reference_distribution: Tensor
    reference_score: float
    settings: dict

    def to_json(self) -> dict:
        """Return plain Python floats and lists for the results file."""
        return {
            "phi": self.phi.tolist(),
            "distribution": self.distribution.tolist(),
            "score": self.score,
            "value_all": float(self.values[-1]),
            "value_none": float(self.values[0]),
            "efficiency_residual": self.efficiency_residual,
            "reference_distribution": self.reference_distribution.tolist(),
            "reference_score": self.reference_score,
            **self.settings,
        }

    @classmethod
    def from_json(cls, data: dict) -> SpectralImportance:
        """Read back :meth:`to_json`.

        results.json keeps only v(no band) and v(all bands) of the ``2^M`` coalition values:
        ``values`` has them at its ends and NaN in between. Every other key is a setting.
        """

        def tensor(key: str) -> Tensor:
            return torch.tensor(data[key], dtype=torch.float64)

        phi = tensor("phi")
        values = torch.full((2 ** len(phi),), math.nan, dtype=torch.float64)
        values[0], values[-1] = data["value_none"], data["value_all"]
        return cls(
            phi=phi,
            values=values,
            distribution=tensor("distribution"),
            score=data["score"],
            efficiency_residual=data["efficiency_residual"],
            reference_distribution=tensor("reference_distribution"),
            reference_score=data["reference_score"],
            settings={key: value for key, value in data.items() if key not in _RESULT_KEYS},
        )


def _check_images(images: Tensor) -> None:
    if images.ndim != 4 or images.shape[0] < 1:
        raise InputError(
            f"got images of shape {tuple(images.shape)}; expected pixels (N, C, H, W) with N >= 1"
        )
    if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise InputError(
            f"got pixel values in [{float(images.min()):.4g}, {float(images.max()):.4g}]; the "
            "frequency view works on pixels in [0, 1] (before any mean/std normalisation)"
        )


def _check_knobs(num_bands: int, fill: str, pixel_map: str, batch_size: int) -> None:
    if not 1 <= num_bands <= MAX_BANDS:
        raise InputError(
            f"got num_bands={num_bands}; exact Shapley values need 2^M model calls per image, "
            f"use 1 <= num_bands <= {MAX_BANDS}"
        )
    if batch_size < 1:
        raise InputError(f"got batch_size={batch_size}; use a positive number of images per pass")
    if fill not in FILLS:
        raise InputError(f"got fill={fill!r}; use one of {FILLS}")
    if pixel_map not in PIXEL_MAPS:
        raise InputError(f"got pixel_map={pixel_map!r}; use one of {PIXEL_MAPS}")


def _labels_of(logit_fn: LogitFn, images: Tensor, labels: Tensor | None) -> Tensor:  # (N,)
    """The given labels as a long tensor on the images' device, or the model's predictions."""
    if labels is None:
        with torch.no_grad():
            labels = logit_fn(images).argmax(dim=1)
    labels = torch.as_tensor(labels, device=images.device).long()
    if labels.shape != (images.shape[0],):
        raise InputError(
            f"got labels of shape {tuple(labels.shape)} for {images.shape[0]} images; pass one "
            "integer class per image"
        )
    return labels


def _coalition_values(
    logit_fn: LogitFn,
    images: Tensor,  # (N, C, H, W)
    labels: Tensor,  # (N,)
    *,
    keep: Tensor,  # (2^M, H, W) bool: the frequencies each coalition keeps
    spectra: Tensor,  # (N, C, H, W) complex
    fills: Tensor,  # (N, C, H, W) complex
    pixel_map: PixelMap,
    batch_size: int,
    steps: Steps,
) -> Tensor:  # (2^M,) float64 on the CPU
    """``v(S)``: mean true-label log-probability over the images, per coalition S."""
    num_images, device = images.shape[0], images.device
    num_coalitions = keep.shape[0]
    values = torch.zeros(num_coalitions, dtype=torch.float64, device=device)
    with torch.no_grad():
        for start in range(0, num_coalitions * num_images, batch_size):
            item = torch.arange(
                start, min(start + batch_size, num_coalitions * num_images), device=device
            )
            coalition, image = item // num_images, item % num_images
            mixed = torch.where(keep[coalition, None], spectra[image], fills[image])
            pixels = to_pixels(torch.fft.ifft2(mixed), pixel_map).to(images.dtype)
            log_probs = logit_fn(pixels).double().log_softmax(dim=1)
            if start == 0 and (labels.min() < 0 or labels.max() >= log_probs.shape[1]):
                raise InputError(
                    f"got labels in [{int(labels.min())}, {int(labels.max())}] for a model with "
                    f"{log_probs.shape[1]} classes; pass class indices in [0, K)"
                )
            worth = log_probs.gather(1, labels[image, None])[:, 0]
            values.index_add_(0, coalition, worth / num_images)
            steps.advance()
    values = values.cpu()
    if not torch.isfinite(values).all():
        raise InputError(
            "the model produced non-finite log-probabilities on band-filtered images; check the "
            "model's dtype (float16 overflows easily) and its input range"
        )
    return values


def spectral_importance(
    logit_fn: LogitFn,
    images: Tensor,  # (N, C, H, W) pixels in [0, 1]
    labels: Tensor | None = None,  # (N,)
    *,
    num_bands: int = 8,
    fill: Fill = "other_image",
    sigma: float = 0.5,
    pixel_map: PixelMap = "paper",
    beta: float = 0.75,
    seed: int = 0,
    batch_size: int = 256,
    progress: ProgressCallback | None = None,
) -> SpectralImportance:
    """Exact I-ASIDE Shapley values of M frequency bands, batched across coalitions and images.

    Cost: ``2^M`` forward passes per image (256 for M = 8) plus FFTs; no gradients.

    Args:
        logit_fn: maps (B, C, H, W) pixels to (B, K) logits; samples independent (eval mode).
        images: the fixed sample set, used for every coalition.
        labels: true labels; None uses the model's predictions on the unmodified images.
        num_bands: M players, at most 16 (2^M coalitions).
        fill: what replaces the bands outside a coalition (:func:`fill_spectra`).
        sigma: standard deviation of each part of the Gaussian fill.
        pixel_map: how inverse-FFT output becomes pixels (:func:`to_pixels`).
        beta: spectral decay of the robustness score.
        seed: seeds the fill.
        batch_size: images per forward pass.
        progress: called as ``progress(done, total)`` after each forward pass.

    Returns:
        The :class:`SpectralImportance`.

    Raises:
        InputError: bad images, labels, num_bands, fill, pixel_map or batch_size.
    """
    _check_images(images)
    _check_knobs(num_bands, fill, pixel_map, batch_size)
    labels = _labels_of(logit_fn, images, labels)
    _score_terms(num_bands, beta)
    height, width = images.shape[2:]
    bands = band_index(height, width, num_bands, device=images.device)
    masks = coalition_masks(num_bands, device=images.device)
    spectra = torch.fft.fft2(images)
    values = _coalition_values(
        logit_fn,
        images,
        labels,
        keep=masks[:, bands],
        spectra=spectra,
        fills=fill_spectra(spectra, fill, sigma, seed),
        pixel_map=pixel_map,
        batch_size=batch_size,
        steps=Steps(progress, math.ceil(masks.shape[0] * images.shape[0] / batch_size)),
    )
    phi = shapley_values(values)
    distribution = importance_distribution(phi)
    ref_distribution = reference_distribution(phi)
    return SpectralImportance(
        phi=phi,
        values=values,
        distribution=distribution,
        score=spectral_robustness_score(distribution, beta),
        efficiency_residual=float(phi.sum() - (values[-1] - values[0])),
        reference_distribution=ref_distribution,
        reference_score=reference_score(ref_distribution, beta),
        settings={
            "fill": fill,
            "sigma": sigma if fill == "gaussian" else None,
            "pixel_map": pixel_map,
            "beta": beta,
            "seed": seed,
            "num_samples": images.shape[0],
        },
    )
