"""Card subsection and plot of the CLEVER comparison (results section ``"clever"``)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from hf_fisher.report.sections._common import (
    PlotContext,
    estimate_with_ci,
    format_sig,
    log_scatter,
    md_escape,
    new_figure,
    paragraphs,
    save_figure,
    table,
)

SCORE_LABELS = {"untargeted": "untargeted (all classes)", "top2": "top-2 class"}


def clever_figure(section: dict, context: PlotContext | None = None) -> Figure:
    """Scatter each sample's CLEVER score against its λ_max (log-log), cost in a corner."""
    context = context or PlotContext()
    figure, axis = new_figure(6.4, 4.4)
    per_sample = section["per_sample"]
    key = "untargeted" if per_sample["untargeted"] is not None else "top2"
    if per_sample["spectral_norm"] is not None:
        log_scatter(axis, per_sample["spectral_norm"], per_sample[key], log_y=True)
    axis.set_title(
        context.title(f"CLEVER {SCORE_LABELS[key]} score vs λ_max, per sample"),
        fontsize=9,
    )
    cost = section["cost"]
    axis.text(
        0.02,
        0.02,
        f"cost/sample: CLEVER {cost['clever_forward_equivalents_per_sample']} vs "
        f"λ_max {cost['spectral_norm_forward_equivalents_per_sample']} forward-equivalents",
        transform=axis.transAxes,
        fontsize=7,
    )
    axis.set_xlabel("λ_max(F) (log scale; larger = less robust)")
    note = f"R = {section['radius']:g}"
    axis.set_ylabel(context.distance_label("CLEVER score", section["norm"], note))
    return figure


def plot_clever(section: dict, path: str | Path, context: PlotContext | None = None) -> Path:
    """Draw :func:`clever_figure` into ``path``."""
    return save_figure(clever_figure(section, context), path)


def card_clever(section: dict) -> str:
    """Markdown card subsection: CLEVER scores, their agreement with lambda_max, and the cost.

    Args:
        section: the ``clever`` section of results.json (:meth:`CleverScores.to_json`).

    Returns:
        Markdown without a heading.
    """
    norm = md_escape(section["norm"].upper())
    intro = (
        f"CLEVER (Weng et al., 2018) estimates the {norm} distance to the decision boundary "
        "as min(margin / L, R): L, the local Lipschitz constant of the logit margin, is the "
        "location of a reverse Weibull law fitted to the maxima of its gradient norm over "
        f"{section['num_batches']} batches of {section['batch_points']} points drawn in the "
        f"ball of radius R = {format_sig(section['radius'])} (seed {section['seed']}); "
        f"{section['num_samples']} samples. A larger score means more robust, so it should "
        "fall as λ_max rises (negative rank correlation)."
    )
    if section.get("fits_at_edge") is not None:
        intro += (
            f" {section['fits_at_edge']} of {section['fits']} (sample, target) fits ran to the "
            "edge of their location range and used the largest observed gradient norm instead "
            "(docs/clever.md)."
        )
    cost = section["cost"]
    cost_table = table(
        ["cost per sample", "CLEVER", "λ_max (exact engine)"],
        [
            [
                "forward-equivalents",
                str(cost["clever_forward_equivalents_per_sample"]),
                str(cost["spectral_norm_forward_equivalents_per_sample"]),
            ]
        ],
    )
    cost_note = (
        f"Cost convention: {md_escape(cost['convention'])}. CLEVER took "
        f"{format_sig(cost['clever_seconds_per_sample'])} s per sample in this run."
    )
    return paragraphs(intro, _score_table(section), cost_table, cost_note)


def _score_table(section: dict) -> str:
    rows = []
    for key, label in SCORE_LABELS.items():
        median = section[f"median_{key}"]
        stats = section["correlations"].get(key)
        if median is None and stats is None:
            continue
        if stats is None:
            agreement = ["not computed", "–", "–"]
        else:
            agreement = [
                estimate_with_ci(stats["spearman"], stats["spearman_ci"]),
                format_sig(stats["kendall"]),
                str(stats["num_samples"]),
            ]
        rows.append([label, format_sig(median), *agreement])
    header = ["CLEVER score", "median", "Spearman ρ with λ_max [CI]", "Kendall τ", "samples"]
    return table(header, rows)
