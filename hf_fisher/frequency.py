"""The frequency view: where in the image spectrum a classifier's sensitivity lives.

Two measurements over the same M square-ring frequency bands (:mod:`hf_fisher.frequency_bands`):

* I-ASIDE (:mod:`hf_fisher.iaside`, black-box): exact Shapley values of the bands for the
  true-label log-probability, their importance distribution and the spectral robustness score.
* Band-restricted Fisher (white-box): ``trace(P_B F P_B)`` and its share of ``trace(F)``,
  ``lambda_max(P_B F P_B)`` and the share of the top eigenvector's energy in each band.

:func:`analyze_frequency` runs both and returns a :class:`FrequencyReport` whose ``to_json()`` is
the ``frequency`` section of results.json; :func:`plot_frequency` and
:func:`plot_frequency_comparison` read only that section.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from hf_fisher.errors import InputError, ResultsError
from hf_fisher.frequency_bands import BandFisher, band_fisher, band_index, band_sides
from hf_fisher.iaside import Fill, PixelMap, SpectralImportance, spectral_importance
from hf_fisher.operators import LogitFn, gradient_rows


@dataclass
class FrequencyReport:
    """Both frequency measurements of one model on one sample set.

    Attributes:
        image_shape: ``(C, H, W)``.
        num_bands: M.
        iaside: the Shapley result, or None when not requested.
        fisher: the per-sample band Fisher, or None when not requested.
    """

    image_shape: tuple[int, int, int]
    num_bands: int
    iaside: SpectralImportance | None
    fisher: BandFisher | None

    def to_json(self) -> dict:
        """Return the ``frequency`` section of results.json (plain Python numbers only)."""
        channels, height, width = self.image_shape
        return {
            "num_bands": self.num_bands,
            "image_shape": [channels, height, width],
            "band_sides": band_sides(min(height, width), self.num_bands),
            "iaside": None if self.iaside is None else self.iaside.to_json(),
            "fisher": None if self.fisher is None else self.fisher.to_json(),
        }


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
    batch_size: int = 256,
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
        batch_size: images per forward pass (Shapley) and per gradient-rows chunk (Fisher).

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
            batch_size=batch_size,
        )
    bands_fisher = None
    if fisher:
        if batch_size < 1:
            raise InputError(f"got batch_size={batch_size}; use a positive number of images")
        bands_fisher = BandFisher.cat(
            [
                band_fisher(gradient_rows(logit_fn, chunk), image_shape, num_bands)
                for chunk in images.split(batch_size)
            ]
        )
    return FrequencyReport(image_shape, num_bands, importance, bands_fisher)


def _bands_of(section: dict, where: str) -> int:
    if not isinstance(section, dict) or "num_bands" not in section:
        raise ResultsError(
            f"{where} is not a frequency section (no 'num_bands'); pass "
            "results['frequency'] as written by FrequencyReport.to_json()"
        )
    if section.get("iaside") is None and section.get("fisher") is None:
        raise ResultsError(f"{where} holds neither 'iaside' nor 'fisher' results; nothing to plot")
    return int(section["num_bands"])


def plot_frequency(section: dict, path: str | Path) -> Path:
    """Bar chart per band: Shapley importance distribution and Fisher energy share side by side.

    Args:
        section: the ``frequency`` section of results.json.
        path: output image path (format from the suffix).

    Returns:
        The written path.

    Raises:
        ResultsError: ``section`` is not a frequency section.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    num_bands = _bands_of(section, "the section")
    series = []
    if section.get("iaside") is not None:
        iaside = section["iaside"]
        series.append((f"I-ASIDE importance (score {iaside['score']:.3f})", iaside["distribution"]))
    if section.get("fisher") is not None:
        series.append(("Fisher energy share", section["fisher"]["energy_share"]))
    width = 0.8 / len(series)
    figure, axis = plt.subplots(figsize=(6.4, 3.6))
    for offset, (label, heights) in enumerate(series):
        positions = [b - 0.4 + width * (offset + 0.5) for b in range(num_bands)]
        axis.bar(positions, heights, width=width, label=label)
    axis.set_xticks(range(num_bands))
    axis.set_xlabel("frequency band (0 = lowest)")
    axis.set_ylabel("share")
    axis.legend(fontsize="small")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_frequency_comparison(sections: dict[str, dict], path: str | Path) -> Path:
    """One line per model: importance distribution and Fisher energy share across bands.

    Args:
        sections: model name -> its ``frequency`` section.
        path: output image path.

    Returns:
        The written path.

    Raises:
        ResultsError: empty input, a section that is not a frequency section, or models measured
            with different numbers of bands.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not sections:
        raise ResultsError("got no frequency sections to compare; pass {model name: section}")
    counts = {name: _bands_of(section, f"sections[{name!r}]") for name, section in sections.items()}
    if len(set(counts.values())) != 1:
        raise ResultsError(
            f"the models were measured with different numbers of bands {counts}; rerun them "
            "with the same num_bands to compare"
        )
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for name, section in sections.items():
        if section.get("iaside") is not None:
            axes[0].plot(section["iaside"]["distribution"], marker="o", label=name)
        if section.get("fisher") is not None:
            axes[1].plot(section["fisher"]["energy_share"], marker="o", label=name)
    axes[0].set_title("I-ASIDE importance distribution")
    axes[1].set_title("Fisher energy share")
    for axis in axes:
        axis.set_xlabel("frequency band (0 = lowest)")
        axis.legend(fontsize="small")
    axes[0].set_ylabel("share")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path)
    plt.close(figure)
    return path
