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


def card_frequency(section: dict) -> str:
    """Markdown card subsection: per-band I-ASIDE importance and band Fisher, and the score.

    Args:
        section: the ``frequency`` section of results.json (:meth:`FrequencyReport.to_json`).

    Returns:
        Markdown without a heading.

    Raises:
        ResultsError: ``section`` is not a frequency section.
    """
    import torch

    from hf_fisher.iaside import spectral_robustness_score
    from hf_fisher.report.badge import format_sig
    from hf_fisher.report.card import md_escape

    num_bands = _bands_of(section, "the section")
    channels, height, width = section["image_shape"]
    iaside, fisher = section.get("iaside"), section.get("fisher")
    parts = []
    if iaside is not None:
        sigma = "" if iaside.get("sigma") is None else f", σ {format_sig(iaside['sigma'])}"
        parts.append(
            "I-ASIDE (Luo et al., TMLR 2024; black-box) gives each band its exact Shapley value "
            "φ in the mean true-label log-probability over "
            f"{iaside['num_samples']} samples (fill {md_escape(iaside['fill'])}{sigma}, "
            f"pixel map {md_escape(iaside['pixel_map'])}, seed {iaside['seed']}); its "
            "importance is max(φ, 0), normalised to sum to 1."
        )
    if fisher is not None:
        parts.append(
            f"The band-restricted Fisher (white-box, {fisher['num_samples']} samples) splits "
            "F(x) by band: the band's share of trace(F), λ_max of F restricted to the band and "
            "the fraction of F's top eigenvector in the band (both means over samples)."
        )
    lines = [
        f"Where in the image spectrum the model's sensitivity lives, over {num_bands} "
        f"square-ring frequency bands of the {channels}×{height}×{width} images (band 0 = "
        "lowest). " + " ".join(parts),
        "",
        "| band | Shapley φ | importance | Fisher energy share | band λ_max "
        "| top-eigenvector fraction |",
        "|---|---|---|---|---|---|",
    ]

    def column(source: dict | None, key: str) -> list[str]:
        return ["–"] * num_bands if source is None else [format_sig(v) for v in source[key]]

    columns = [
        column(iaside, "phi"),
        column(iaside, "distribution"),
        column(fisher, "energy_share"),
        column(fisher, "lambda_max"),
        column(fisher, "top_vector_fraction"),
    ]
    for band, cells in enumerate(zip(*columns, strict=True)):
        lines.append(f"| {band} | " + " | ".join(cells) + " |")
    notes = []
    if iaside is not None:
        beta = iaside["beta"]
        corners = torch.eye(num_bands, dtype=torch.float64)
        low = spectral_robustness_score(corners[-1], beta)
        high = spectral_robustness_score(corners[0], beta)
        notes.append(
            f"I-ASIDE score {format_sig(iaside['score'])}, hf-fisher's signed definition "
            f"(docs/frequency.md): (bᵀI − η) / (1 − η) with β = {format_sig(beta)}, 0 for "
            "uniform importance, positive when importance leans to low frequencies (more "
            "robust), negative when it leans to high ones; range "
            f"[{format_sig(low)}, {format_sig(high)}] for {num_bands} bands. The public "
            "code's definition (min-shifted distribution, absolute value, not monotone) gives "
            f"{format_sig(iaside['reference_score'])}. Shapley efficiency residual "
            f"Σφ − (v(all) − v(none)) = {format_sig(iaside['efficiency_residual'])}, with v the "
            "mean true-label log-probability: v(all bands) = "
            f"{format_sig(iaside['value_all'])}, v(no band) = {format_sig(iaside['value_none'])}."
        )
    if fisher is not None:
        notes.append(
            f"Fisher means over samples: trace {format_sig(fisher['trace'])}, λ_max "
            f"{format_sig(fisher['spectral_norm'])}."
        )
    lines += ["", " ".join(notes)] if notes else []
    return "\n".join(lines)
