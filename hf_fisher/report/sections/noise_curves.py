"""Card subsection and plot of the random-noise curves (results section ``"noise_curves"``)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from hf_fisher.report.sections._common import (
    PlotContext,
    format_sig,
    md_escape,
    new_figure,
    or_na,
    paragraphs,
    save_figure,
    table,
)


def crossing_words(section: dict) -> str | None:
    """Where the Brier upper bound meets the tolerance, for a legend; None if it never does.

    ``crossing_sigma`` is the first σ tried when the bound is already above the tolerance
    there; at σ = 0 that is the clean error, and saying "crosses at σ=0" would suggest noise
    did it.

    >>> crossing_words({"crossing_sigma": 0.0, "sigmas": [0.0, 0.1], "brier_upper": [0.3, 0.4],
    ...                 "tolerance": 0.25})
    'clean error already above tolerance (bound 0.3 at σ=0)'
    """
    sigma = section["crossing_sigma"]
    if sigma is None:
        return None
    first, upper = section["sigmas"][0], section["brier_upper"][0]
    if _above_from_start(section) and first == 0:
        return f"clean error already above tolerance (bound {upper:.3g} at σ=0)"
    if _above_from_start(section):
        return f"already above tolerance at the smallest σ={first:.3g}"
    return f"bound crosses tolerance at σ={sigma:.3g}"


def noise_curves_figure(section: dict, context: PlotContext | None = None) -> Figure:
    """Accuracy and Brier error vs σ, with the upper-bound band and where it meets the tolerance."""
    context = context or PlotContext()
    sigmas = section["sigmas"]
    figure, (accuracy, brier) = new_figure(10, 4, columns=2)
    figure.suptitle(context.title(f"Random {section['kind']} noise: accuracy and Brier error"))
    accuracy.plot(sigmas, section["accuracy"], marker="o")
    accuracy.set_ylim(0, 1.02)
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
    words = crossing_words(section)
    if _above_from_start(section):  # mark the first point, not a crossing
        first = ([sigmas[0]], [section["brier_upper"][0]])
        brier.scatter(*first, color="red", marker="x", zorder=3, label=words)
    elif words is not None:
        brier.axvline(section["crossing_sigma"], color="red", linestyle=":", label=words)
    brier.set_ylabel("Brier error")
    brier.legend(fontsize="small")
    for axis in (accuracy, brier):
        axis.set_xlabel(context.sigma_label(section["kind"]))
    return figure


def plot_noise_curves(section: dict, path: str | Path, context: PlotContext | None = None) -> Path:
    """Draw :func:`noise_curves_figure` into ``path``."""
    return save_figure(noise_curves_figure(section, context), path)


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
    crossing = _crossing_sentence(section)
    areas = (
        f"Area under the curves, normalised by the σ range: accuracy "
        f"{format_sig(section['auc_accuracy'])}, Brier error {format_sig(section['auc_brier'])}; "
        f"{crossing}. Assumptions: {md_escape(section['assumptions'])}."
    )
    return paragraphs(intro, table(header, rows), areas)


def _above_from_start(section: dict) -> bool:
    # crossing() returns the first sigma when the bound is already above the tolerance there
    sigma, first = section["crossing_sigma"], section["sigmas"][0]
    return sigma == first and section["brier_upper"][0] > section["tolerance"]


def _crossing_sentence(section: dict) -> str:
    sigma, tolerance = section["crossing_sigma"], format_sig(section["tolerance"])
    first = section["sigmas"][0]
    if sigma is None:
        return (
            f"the bound stays below the tolerance {tolerance} up to σ = "
            f"{format_sig(section['sigmas'][-1])}, the largest σ tried"
        )
    if _above_from_start(section) and first == 0:
        return (
            f"the clean error is already above the tolerance {tolerance}: the bound is "
            f"{format_sig(section['brier_upper'][0])} without noise (σ = 0)"
        )
    if _above_from_start(section):
        return (
            f"the bound is already above the tolerance {tolerance} at the smallest σ tried, "
            f"{format_sig(first)}"
        )
    return f"the bound crosses the tolerance {tolerance} at σ = {format_sig(sigma)}"
