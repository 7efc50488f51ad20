"""The frequency view: where in the image spectrum a classifier's sensitivity lives.

Two measurements over the same M square-ring frequency bands (:mod:`hf_fisher.frequency_bands`):

* I-ASIDE (:mod:`hf_fisher.iaside`, black-box): exact Shapley values of the bands for the
  true-label log-probability, their importance distribution and the spectral robustness score.
* Band-restricted Fisher (white-box): ``trace(P_B F P_B)`` and its share of ``trace(F)``,
  ``lambda_max(P_B F P_B)`` and the share of the top eigenvector's energy in each band.

:func:`analyze_frequency` runs both and returns a :class:`FrequencyReport` whose ``to_json()`` is
the ``frequency`` section of results.json (``from_json`` reads it back); its card subsection and
plots live in :mod:`hf_fisher.report.sections.frequency` and read only that section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from hf_fisher._progress import ProgressCallback, Steps
from hf_fisher.errors import InputError
from hf_fisher.estimators.exact import gradient_rows
from hf_fisher.frequency_bands import (
    BandFisher,
    BandFisherSummary,
    band_fisher,
    band_index,
    band_sides,
)
from hf_fisher.iaside import Fill, PixelMap, SpectralImportance, spectral_importance
from hf_fisher.memory import chunk_size, run_in_chunks, sample_footprint, working_memory
from hf_fisher.operators import LogitFn


@dataclass
class FrequencyReport:
    """Both frequency measurements of one model on one sample set.

    Attributes:
        image_shape: ``(C, H, W)``.
        num_bands: M.
        iaside: the Shapley result, or None when not requested.
        fisher: the per-sample band Fisher, or None when not requested or when read back from
            results.json (which keeps only ``fisher_summary``).
        fisher_summary: its means over samples; computed from ``fisher`` when not given.
    """

    image_shape: tuple[int, int, int]
    num_bands: int
    iaside: SpectralImportance | None
    fisher: BandFisher | None
    fisher_summary: BandFisherSummary | None = None

    def __post_init__(self) -> None:
        if self.fisher_summary is None and self.fisher is not None:
            self.fisher_summary = self.fisher.summary()

    def to_json(self) -> dict:
        """Return the ``frequency`` section of results.json (plain Python numbers only)."""
        channels, height, width = self.image_shape
        summary = self.fisher_summary
        return {
            "num_bands": self.num_bands,
            "image_shape": [channels, height, width],
            "band_sides": band_sides(min(height, width), self.num_bands),
            "iaside": None if self.iaside is None else self.iaside.to_json(),
            "fisher": None if summary is None else summary.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict) -> FrequencyReport:
        """Read back :meth:`to_json` (``band_sides`` is recomputed; ``fisher`` is None)."""
        iaside, fisher = data["iaside"], data["fisher"]
        return cls(
            image_shape=tuple(data["image_shape"]),
            num_bands=data["num_bands"],
            iaside=None if iaside is None else SpectralImportance.from_json(iaside),
            fisher=None,
            fisher_summary=None if fisher is None else BandFisherSummary.from_json(fisher),
        )


def analyze_frequency(
    logit_fn: LogitFn,
    images: Tensor,  # (N, C, H, W) pixels in [0, 1]
    labels: Tensor | None = None,  # (N,)
    *,
    num_bands: int = 8,
    shapley: bool = True,
    fisher: bool = True,
    fill: Fill = "other_image",
    sigma: float = 0.5,
    pixel_map: PixelMap = "paper",
    beta: float = 0.75,
    seed: int = 0,
    batch_size: int | None = None,
    max_memory: int | str = "auto",
    progress: ProgressCallback | None = None,
) -> FrequencyReport:
    """Run I-ASIDE and the band-restricted Fisher on one batch of images.

    Cost per image: ``2^M`` forward passes for I-ASIDE, one forward and K-1 backward passes for
    the Fisher (see docs/frequency.md).

    Args:
        logit_fn: maps (B, C, H, W) pixels in [0, 1] to (B, K) logits; differentiable when
            ``fisher`` is True.
        images: the fixed sample set.
        labels: true labels for I-ASIDE; None uses the model's predictions.
        num_bands: M.
        shapley, fisher: which measurements to run.
        fill, sigma, pixel_map, beta, seed: see :func:`hf_fisher.iaside.spectral_importance`.
        batch_size: images per forward pass (Shapley) and per gradient-rows chunk (Fisher);
            None: what fits ``max_memory``. Fisher chunks are halved on out-of-memory.
        max_memory: byte budget ("4GB", bytes, or "auto"; :mod:`hf_fisher.memory`).
        progress: called as ``progress(done, total)`` after the Shapley values (one step per
            image) and after each Fisher chunk.

    Returns:
        The :class:`FrequencyReport`.

    Raises:
        InputError: bad images or knobs, or neither measurement requested.
    """
    if not (shapley or fisher):
        raise InputError("got shapley=False and fisher=False; request at least one measurement")
    if images.ndim != 4:
        raise InputError(f"got images of shape {tuple(images.shape)}; expected pixels (N, C, H, W)")
    image_shape = tuple(images.shape[1:])
    band_index(image_shape[1], image_shape[2], num_bands)
    if batch_size is not None and batch_size < 1:
        raise InputError(f"got batch_size={batch_size}; use a positive number of images")
    forward_size, fisher_size = _chunk_sizes(logit_fn, images, batch_size, max_memory)
    forward_batches = math.ceil(2**num_bands * images.shape[0] / forward_size)
    chunks = math.ceil(images.shape[0] / fisher_size)
    steps = Steps(progress, (forward_batches if shapley else 0) + (chunks if fisher else 0))
    importance = None
    if shapley:
        importance = spectral_importance(
            logit_fn,
            images,
            labels,
            num_bands=num_bands,
            fill=fill,
            sigma=sigma,
            pixel_map=pixel_map,
            beta=beta,
            seed=seed,
            batch_size=forward_size,
            progress=lambda done, total: steps.advance(),
        )
    bands_fisher = None
    if fisher:

        def run(part: slice) -> BandFisher:
            chunk = band_fisher(gradient_rows(logit_fn, images[part]), image_shape, num_bands)
            steps.advance()
            return chunk

        parts = run_in_chunks(run, images.shape[0], fisher_size, what="frequency: ")
        bands_fisher = BandFisher.cat(parts)
    return FrequencyReport(image_shape, num_bands, importance, bands_fisher)


def _chunk_sizes(
    logit_fn: LogitFn, images: Tensor, batch_size: int | None, max_memory: int | str
) -> tuple[int, int]:
    """Images per forward pass (Shapley) and per gradient-rows chunk (Fisher).

    A Fisher chunk holds, per image, K-1 gradient rows in the input dtype, the float64 top
    eigenvector's product with them, and one channel at a time of their float64 copy and
    complex FFT (twice: sorted by band): ``(itemsize + 8) (K-1) d + 56 (K-1) d / C`` bytes.
    """
    if batch_size is not None:
        return batch_size, batch_size
    budget = working_memory(max_memory, images.device)
    activations, num_classes = sample_footprint(logit_fn, images)
    dim, itemsize = images[0].numel(), images.element_size()
    forward = chunk_size(budget, activations + 4 * dim * itemsize, 2**30)
    rows = (num_classes - 1) * ((itemsize + 8) * dim + 56 * dim // images.shape[1])
    return forward, chunk_size(budget, activations + rows, images.shape[0])
