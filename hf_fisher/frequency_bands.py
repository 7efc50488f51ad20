"""Square frequency bands of an image and the band-restricted input-space Fisher.

Band i of an (H, W) image, ``dim = min(H, W)``, holds the 2-D frequencies between the centred
squares of side ``floor(dim * i / M)`` and ``floor(dim * (i + 1) / M)``; band 0 is the lowest.
Frequencies are taken on the *signed* grid (``torch.fft.fftfreq``), so a frequency ``k = (ky, kx)``
has Chebyshev radius ``r = max(|ky|, |kx|)`` and lies inside the centred square of side ``s`` when
``2 r + 1 <= s``. The radius is the same for ``k`` and ``-k``, so every band mask is Hermitian
symmetric: the band projector ``P_B x = ifft2(mask_B * fft2(x))`` maps real images to real images
and is the orthogonal projector onto the real Fourier basis vectors (cos/sin pairs) of the band.
Everything outside the largest square (the Nyquist row/column, the extra frequencies of the longer
side of a non-square image) belongs to the last band, so the projectors sum to the identity.

With ``F = R^T W R`` (:func:`~hf_fisher.estimators.exact.gradient_rows`), the band-restricted
Fisher is
``P_B F P_B = (R P_B)^T W (R P_B)``: its trace and its nonzero spectrum come from the
(K-1) x (K-1) matrices ``W`` and ``G_B = (R P_B)(R P_B)^T``, and Parseval gives
``G_B = Re(R_hat_B R_hat_B^H)`` from an orthonormal FFT of each row, restricted to the band.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from hf_fisher.errors import InputError
from hf_fisher.estimators.exact import GradientRows, dual_spectrum, input_eigenvectors
from hf_fisher.operators import dual_eigenvalues


def band_sides(size: int, num_bands: int) -> list[int]:
    """Return the sides ``floor(size * i / M)`` of the M + 1 centred squares that bound the bands.

    >>> band_sides(32, 8)
    [0, 4, 8, 12, 16, 20, 24, 28, 32]
    """
    return [size * i // num_bands for i in range(num_bands + 1)]


def band_index(height: int, width: int, num_bands: int = 8, device=None) -> Tensor:
    """Return the (H, W) band of every 2-D frequency, in ``torch.fft.fft2`` (unshifted) order.

    Args:
        height, width: image size.
        num_bands: M, the number of square-ring bands.
        device: where to build the map.

    Returns:
        (H, W) long tensor with values in ``[0, M)``.

    Raises:
        InputError: ``num_bands`` is below 1, or so large that a band holds no frequency.

    >>> band_index(8, 8, 4)[:, 0].tolist()
    [0, 1, 2, 3, 3, 3, 2, 1]
    """
    if num_bands < 1:
        raise InputError(f"got num_bands={num_bands}; use at least 1 frequency band")
    size = min(height, width)
    ky = (torch.fft.fftfreq(height, device=device) * height).round().abs().long()
    kx = (torch.fft.fftfreq(width, device=device) * width).round().abs().long()
    radius = torch.maximum(ky[:, None], kx[None, :])
    sides = torch.tensor(band_sides(size, num_bands)[1:num_bands], device=radius.device)
    bands = (sides[None, None, :] <= 2 * radius[:, :, None]).sum(dim=-1)
    counts = torch.bincount(bands.flatten(), minlength=num_bands)
    if (counts == 0).any():
        largest = max(m for m in range(1, size + 1) if _all_bands_filled(size, m))
        raise InputError(
            f"num_bands={num_bands} leaves frequency band(s) "
            f"{(counts == 0).nonzero().flatten().tolist()} empty for {height}x{width} images; "
            f"use num_bands <= {largest} for this image size"
        )
    return bands


def _all_bands_filled(size: int, num_bands: int) -> bool:
    radii = torch.arange(size // 2 + 1)
    sides = torch.tensor(band_sides(size, num_bands)[1:num_bands])
    bands = (sides[None, :] <= 2 * radii[:, None]).sum(dim=-1)
    return bool((torch.bincount(bands, minlength=num_bands) > 0).all())


def project_band(images: Tensor, bands: Tensor, band: int) -> Tensor:  # (..., H, W)
    """Apply the orthogonal band projector ``P_B`` to real images (any leading dimensions).

    >>> x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    >>> bands = band_index(8, 8, 4)
    >>> parts = [project_band(x, bands, b) for b in range(4)]
    >>> torch.allclose(sum(parts), x)
    True
    """
    spectrum = torch.fft.fft2(images)
    return torch.fft.ifft2(spectrum * (bands == band)).real


def band_projectors(image_shape: tuple[int, ...], num_bands: int = 8) -> Tensor:
    """Return the dense projectors ``P_B`` as an (M, d, d) float64 tensor; for tiny images only.

    ``d = prod(image_shape)`` with image_shape ``(C, H, W)``; channels are projected independently.
    """
    *_, height, width = image_shape
    bands = band_index(height, width, num_bands)
    dim = int(torch.tensor(image_shape).prod())
    basis = torch.eye(dim, dtype=torch.float64).reshape(dim, *image_shape)
    return torch.stack(
        [project_band(basis, bands, b).reshape(dim, dim).T for b in range(num_bands)]
    )


def band_energy(images: Tensor, bands: Tensor, num_bands: int) -> Tensor:  # (N, C, H, W)
    """Return ``||P_B x_n||^2`` per sample and band, shape (N, M) float64 (Parseval)."""
    power = torch.fft.fft2(images.double(), norm="ortho").abs().square().sum(dim=1)  # (N, H, W)
    out = torch.zeros(images.shape[0], num_bands, dtype=torch.float64, device=images.device)
    return out.index_add_(1, bands.flatten(), power.flatten(1))


@dataclass
class BandFisher:
    """Per-sample, per-band Fisher quantities; all float64.

    Attributes:
        energy: (N, M) ``trace(P_B F P_B)``; sums over bands to ``trace``.
        trace: (N,) ``trace(F)``.
        lambda_max: (N, M) ``lambda_max(P_B F P_B)``, the worst case restricted to the band.
        spectral_norm: (N,) ``lambda_max(F)``.
        top_vector_fraction: (N, M) ``||P_B u||^2`` for the top unit eigenvector u of F.
    """

    energy: Tensor
    trace: Tensor
    lambda_max: Tensor
    spectral_norm: Tensor
    top_vector_fraction: Tensor

    @property
    def num_bands(self) -> int:
        """M, the number of bands."""
        return self.energy.shape[1]

    @classmethod
    def cat(cls, parts: list[BandFisher]) -> BandFisher:
        """Concatenate results of several sample chunks along the sample dimension."""
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__))

    def energy_share(self) -> Tensor:  # (M,)
        """Return each band's share of the total Fisher energy over the samples (sums to 1)."""
        total = self.trace.sum()
        return self.energy.sum(dim=0) / total.clamp_min(torch.finfo(torch.float64).tiny)

    def summary(self) -> BandFisherSummary:
        """Means over samples, and each band's share of the total energy."""
        tiny = torch.finfo(torch.float64).tiny
        return BandFisherSummary(
            num_samples=int(self.energy.shape[0]),
            energy=self.energy.mean(dim=0).tolist(),
            energy_share=self.energy_share().tolist(),
            lambda_max=self.lambda_max.mean(dim=0).tolist(),
            lambda_max_ratio=(self.lambda_max / self.spectral_norm.clamp_min(tiny)[:, None])
            .mean(dim=0)
            .tolist(),
            top_vector_fraction=self.top_vector_fraction.mean(dim=0).tolist(),
            trace=float(self.trace.mean()),
            spectral_norm=float(self.spectral_norm.mean()),
        )

    def to_json(self) -> dict:
        """Return the band summary as plain Python numbers (means over samples)."""
        return self.summary().to_json()


@dataclass(frozen=True)
class BandFisherSummary:
    """What results.json keeps of a :class:`BandFisher`: per-band means over the samples.

    Attributes:
        num_samples: N.
        energy, lambda_max, top_vector_fraction: (M,) means of the per-sample values.
        energy_share: (M,) each band's share of the summed energy (sums to 1).
        lambda_max_ratio: (M,) mean of ``lambda_max(P_B F P_B) / lambda_max(F)``.
        trace, spectral_norm: means of ``trace(F)`` and ``lambda_max(F)``.
    """

    num_samples: int
    energy: list[float]
    energy_share: list[float]
    lambda_max: list[float]
    lambda_max_ratio: list[float]
    top_vector_fraction: list[float]
    trace: float
    spectral_norm: float

    def to_json(self) -> dict:
        """Plain Python numbers (the ``fisher`` entry of results.json's frequency section)."""
        return {
            "num_samples": int(self.num_samples),
            "energy": list(self.energy),
            "energy_share": list(self.energy_share),
            "lambda_max": list(self.lambda_max),
            "lambda_max_ratio": list(self.lambda_max_ratio),
            "top_vector_fraction": list(self.top_vector_fraction),
            "trace": float(self.trace),
            "spectral_norm": float(self.spectral_norm),
        }

    @classmethod
    def from_json(cls, data: dict) -> BandFisherSummary:
        """Read back :meth:`to_json`."""
        return cls(**{key: data[key] for key in cls.__dataclass_fields__})


def _band_grams(
    rows: Tensor,  # (N, R, C*H*W)
    image_shape: tuple[int, int, int],
    bands: Tensor,  # (H, W) band of each frequency
    num_bands: int,
) -> Tensor:  # (M, N, R, R) float64
    """``G_B = Re(A_B A_B^H)`` per band, one channel at a time (Parseval).

    ``G_B = [Re A_B, Im A_B] [Re A_B, Im A_B]^T`` summed over channels; the frequencies are
    sorted by band so that each band is a contiguous slice. One channel's float64 FFT is held at
    a time (``16 R H W`` bytes per sample, and its sorted copy), not all C at once.
    """
    num_samples, num_rows, _ = rows.shape
    order = torch.argsort(bands.flatten(), stable=True)
    counts = torch.bincount(bands.flatten(), minlength=num_bands).tolist()
    images = rows.reshape(num_samples, num_rows, *image_shape)
    grams = rows.new_zeros(num_bands, num_samples, num_rows, num_rows, dtype=torch.float64)
    for channel in range(image_shape[0]):
        freq = torch.fft.fft2(images[:, :, channel].double(), norm="ortho").flatten(2)
        freq = torch.view_as_real(freq[..., order])  # (N, R, H*W, 2)
        for band, part in enumerate(freq.split(counts, dim=2)):
            part = part.reshape(num_samples, num_rows, -1)  # (N, R, 2*|B|)
            grams[band] += part @ part.transpose(1, 2)
    return grams


def band_fisher(
    factors: GradientRows, image_shape: tuple[int, int, int], num_bands: int = 8
) -> BandFisher:
    """Exact band-restricted Fisher energy, worst case and eigenvector split for every sample.

    Costs one orthonormal FFT per gradient row plus M small (K-1) x (K-1) eigenproblems; no model
    call beyond the K-1 backward passes already in ``factors``.

    Args:
        factors: the gradient rows of F for a batch of images, rows (N, K-1, C*H*W).
        image_shape: ``(C, H, W)`` of the images the rows were taken on.
        num_bands: M.

    Returns:
        The :class:`BandFisher` of the batch.

    Raises:
        InputError: ``image_shape`` does not match the length of the rows.
    """
    rows = factors.rows
    num_samples, num_rows, dim = rows.shape
    if len(image_shape) != 3 or int(torch.tensor(image_shape).prod()) != dim:
        raise InputError(
            f"got image_shape={tuple(image_shape)} for gradient rows of length {dim}; pass the "
            "(C, H, W) shape of the images the rows were computed on"
        )
    _, height, width = image_shape
    bands = band_index(height, width, num_bands, device=rows.device)
    spectrum = dual_spectrum(factors)
    energy, lambda_max = [], []
    for gram in _band_grams(rows, image_shape, bands, num_bands):
        energy.append((factors.weights * gram).sum(dim=(1, 2)))
        lambda_max.append(dual_eigenvalues(spectrum.weight_factor, gram)[:, 0])
    top = input_eigenvectors(factors, spectrum, top_k=1)[:, :, 0]
    return BandFisher(
        energy=torch.stack(energy, dim=1),
        trace=spectrum.trace,
        lambda_max=torch.stack(lambda_max, dim=1),
        spectral_norm=spectrum.eigenvalues[:, 0],
        top_vector_fraction=band_energy(top.reshape(num_samples, *image_shape), bands, num_bands),
    )
