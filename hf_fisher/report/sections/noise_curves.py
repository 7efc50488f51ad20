"""Card subsection and plot of the random-noise curves (results section ``"noise_curves"``)."""

from __future__ import annotations

from pathlib import Path

from hf_fisher.report.sections._common import (
    format_sig,
    md_escape,
    new_figure,
    or_na,
    paragraphs,
    save_figure,
    table,
)


def plot_noise_curves(section: dict, path: str | Path) -> Path:
    """Draw accuracy and Brier error vs sigma, with the upper-bound band, from the JSON."""
    sigmas = section["sigmas"]
    figure, (accuracy, brier) = new_figure(10, 4, columns=2)
    accuracy.plot(sigmas, section["accuracy"], marker="o")
    accuracy.set_ylim(0, 1.02)
    accuracy.set_xlabel(f"sigma ({section['kind']})")
    accuracy.set_ylabel("accuracy under noise")
    accuracy.set_title("normalised AUC " + or_na(section["auc_accuracy"], ".3f"))
    brier.plot(sigmas, section["brier"], marker="o", label="mean Brier error")
    brier.fill_between(
        sigmas,
        section["brier"],
        section["brier_upper"],
        alpha=0.3,
        label=f"{section['confidence']:.0%} upper bound",
    )
    brier.axhline(section["tolerance"], color="grey", linestyle="--", label="tolerance")
    if section["crossing_sigma"] is not None:
        brier.axvline(
            section["crossing_sigma"],
            color="red",
            linestyle=":",
            label=f"bound crosses at sigma={section['crossing_sigma']:.3g}",
        )
    brier.set_xlabel(f"sigma ({section['kind']})")
    brier.set_ylabel("Brier error")
    brier.legend()
    return save_figure(figure, path)


def card_noise_curves(section: dict) -> str:
    """Markdown card subsection: accuracy, Brier error and its upper bound per noise level.

    Args:
        section: the ``noise_curves`` section of results.json (:meth:`NoiseCurves.to_json`).

    Returns:
        Markdown without a heading.
    """
    level = f"{100 * section['confidence']:g}%"
    intro = (
        f"Accuracy and Brier error under random {md_escape(section['kind'])} noise of scale "
        f"σ, {section['draws']} draws on each of {section['num_samples']} samples (seed "
        f"{section['seed']}); the upper bound on the noise-expected Brier error holds at "
        f"{level} confidence (the tighter of Hoeffding and empirical Bernstein)."
    )
    columns = ("sigmas", "accuracy", "brier", "brier_upper")
    rows = [
        [format_sig(value) for value in row]
        for row in zip(*(section[key] for key in columns), strict=True)
    ]
    header = ["σ", "accuracy", "Brier error", f"Brier upper bound ({level})"]
    sigma = section["crossing_sigma"]
    tolerance = format_sig(section["tolerance"])
    crossing = (
        f"the bound stays below the tolerance {tolerance} up to σ = "
        f"{format_sig(section['sigmas'][-1])}, the largest σ tried"
        if sigma is None
        else f"the bound crosses the tolerance {tolerance} at σ = {format_sig(sigma)}"
    )
    areas = (
        f"Area under the curves, normalised by the σ range: accuracy "
        f"{format_sig(section['auc_accuracy'])}, Brier error {format_sig(section['auc_brier'])}; "
        f"{crossing}. Assumptions: {md_escape(section['assumptions'])}."
    )
    return paragraphs(intro, table(header, rows), areas)
