"""Card subsection and plots of the frequency view (results section ``"frequency"``).

:func:`plot_frequency` and :func:`card_frequency` render one model's section;
:func:`plot_frequency_comparison` (``hf-fisher compare-frequency``) overlays several models.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from hf_fisher.errors import ResultsError
from hf_fisher.report.sections._common import (
    PlotContext,
    format_sig,
    md_escape,
    new_figure,
    paragraphs,
    save_figure,
    table,
)

BAND_AXIS_LABEL = "frequency band (0 = lowest)"


def _bands_of(section: dict, where: str) -> int:
    if not isinstance(section, dict) or "num_bands" not in section:
        raise ResultsError(
            f"{where} is not a frequency section (no 'num_bands'); pass "
            "results['frequency'] as written by FrequencyReport.to_json()"
        )
    if section.get("iaside") is None and section.get("fisher") is None:
        raise ResultsError(f"{where} holds neither 'iaside' nor 'fisher' results; nothing to plot")
    return int(section["num_bands"])


def frequency_figure(section: dict, context: PlotContext | None = None) -> Figure:
    """Bar chart per band: Shapley importance distribution and Fisher energy share side by side.

    Raises:
        ResultsError: ``section`` is not a frequency section.
    """
    context = context or PlotContext()
    num_bands = _bands_of(section, "the section")
    series = []
    if section.get("iaside") is not None:
        iaside = section["iaside"]
        series.append((f"I-ASIDE importance (score {iaside['score']:.3f})", iaside["distribution"]))
    if section.get("fisher") is not None:
        series.append(("Fisher energy share", section["fisher"]["energy_share"]))
    width = 0.8 / len(series)
    figure, axis = new_figure(6.4, 4)
    for offset, (label, heights) in enumerate(series):
        positions = [b - 0.4 + width * (offset + 0.5) for b in range(num_bands)]
        axis.bar(positions, heights, width=width, label=label)
    axis.set_xticks(range(num_bands))
    axis.set_title(context.title("Frequency bands: importance and Fisher energy"), fontsize=10)
    axis.set_xlabel(BAND_AXIS_LABEL)
    axis.set_ylabel("share")
    axis.legend(fontsize="small")
    return figure


def plot_frequency(section: dict, path: str | Path, context: PlotContext | None = None) -> Path:
    """Draw :func:`frequency_figure` into ``path``.

    Args:
        section: the ``frequency`` section of results.json.
        path: output image path (format from the suffix).
        context: model, dataset and input space for the title.

    Returns:
        The written path.

    Raises:
        ResultsError: ``section`` is not a frequency section.
    """
    return save_figure(frequency_figure(section, context), path)


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
    if not sections:
        raise ResultsError("got no frequency sections to compare; pass {model name: section}")
    counts = {name: _bands_of(section, f"sections[{name!r}]") for name, section in sections.items()}
    if len(set(counts.values())) != 1:
        raise ResultsError(
            f"the models were measured with different numbers of bands {counts}; rerun them "
            "with the same num_bands to compare"
        )
    figure, axes = new_figure(10, 3.6, columns=2, sharey=True)
    for name, section in sections.items():
        if section.get("iaside") is not None:
            axes[0].plot(section["iaside"]["distribution"], marker="o", label=name)
        if section.get("fisher") is not None:
            axes[1].plot(section["fisher"]["energy_share"], marker="o", label=name)
    axes[0].set_title("I-ASIDE importance distribution")
    axes[1].set_title("Fisher energy share")
    for axis in axes:
        axis.set_xlabel(BAND_AXIS_LABEL)
        axis.legend(fontsize="small")
    axes[0].set_ylabel("share")
    return save_figure(figure, path)


def card_frequency(section: dict) -> str:
    """Markdown card subsection: per-band I-ASIDE importance and band Fisher, and the score.

    Args:
        section: the ``frequency`` section of results.json (:meth:`FrequencyReport.to_json`).

    Returns:
        Markdown without a heading.

    Raises:
        ResultsError: ``section`` is not a frequency section.
    """
    num_bands = _bands_of(section, "the section")
    iaside, fisher = section.get("iaside"), section.get("fisher")

    def column(source: dict | None, key: str) -> list[str]:
        return ["–"] * num_bands if source is None else [format_sig(v) for v in source[key]]

    columns = [
        column(iaside, "phi"),
        column(iaside, "distribution"),
        column(fisher, "energy_share"),
        column(fisher, "lambda_max"),
        column(fisher, "top_vector_fraction"),
    ]
    rows = [[str(band), *cells] for band, cells in enumerate(zip(*columns, strict=True))]
    header = [
        "band",
        "Shapley φ",
        "importance",
        "Fisher energy share",
        "band λ_max",
        "top-eigenvector fraction",
    ]
    notes = [_iaside_note(iaside, num_bands), _fisher_note(fisher)]
    return paragraphs(
        _intro(section, num_bands), table(header, rows), " ".join(n for n in notes if n)
    )


def _intro(section: dict, num_bands: int) -> str:
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
    return (
        f"Where in the image spectrum the model's sensitivity lives, over {num_bands} "
        f"square-ring frequency bands of the {channels}×{height}×{width} images (band 0 = "
        "lowest). " + " ".join(parts)
    )


def _iaside_note(iaside: dict | None, num_bands: int) -> str:
    if iaside is None:
        return ""
    import torch  # lazily: plotting a comparison needs neither torch nor the measurement

    from hf_fisher.iaside import spectral_robustness_score

    beta = iaside["beta"]
    corners = torch.eye(num_bands, dtype=torch.float64)
    low = spectral_robustness_score(corners[-1], beta)
    high = spectral_robustness_score(corners[0], beta)
    return (
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


def _fisher_note(fisher: dict | None) -> str:
    if fisher is None:
        return ""
    return (
        f"Fisher means over samples: trace {format_sig(fisher['trace'])}, λ_max "
        f"{format_sig(fisher['spectral_norm'])}."
    )
