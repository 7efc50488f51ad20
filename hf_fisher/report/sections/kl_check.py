"""Card subsection and plot of the second-order KL check (results section ``"kl_check"``)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from hf_fisher.report.sections._common import (
    PlotContext,
    format_sig,
    new_figure,
    paragraphs,
    save_figure,
    table,
)


def kl_check_figure(section: dict, context: PlotContext | None = None) -> Figure:
    """The median (and p90) relative error of the quadratic form vs radius, log-log."""
    context = context or PlotContext()
    figure, axis = new_figure(5.5, 4.4)
    radii = section["radii"]
    for key, label in (("median_relative_error", "median"), ("p90_relative_error", "90th pct")):
        points = [(r, e) for r, e in zip(radii, section[key], strict=True) if e is not None]
        if points:
            axis.plot(*zip(*points, strict=True), marker="o", label=label)
    axis.axhline(section["tolerance"], color="grey", linestyle="--", label="tolerance")
    if section["valid_radius"] is not None:
        axis.axvline(
            section["valid_radius"],
            color="green",
            linestyle=":",
            label=f"valid up to r={section['valid_radius']:.3g}",
        )
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_title(context.title("Second-order KL check: error of ½ r² dᵀF d"), fontsize=10)
    axis.set_xlabel(context.distance_label("radius r", "l2"))
    axis.set_ylabel("relative error |KL − ½ r² dᵀF d| / (½ r² dᵀF d)")
    axis.legend()
    return figure


def plot_kl_check(section: dict, path: str | Path, context: PlotContext | None = None) -> Path:
    """Draw :func:`kl_check_figure` into ``path``."""
    return save_figure(kl_check_figure(section, context), path)


def card_kl_check(section: dict) -> str:
    """Markdown card subsection: how well 1/2 d^T F d predicts the measured KL, per radius.

    Says up to which radius the second-order picture behind lambda_max and the KL radius holds,
    and in plain words what it means when it holds nowhere on the grid.

    Args:
        section: the ``kl_check`` section of results.json (:meth:`KLCheck.to_json`).

    Returns:
        Markdown without a heading.
    """
    intro = (
        "Does the Fisher quadratic form predict the output change? For "
        f"{section['num_samples']} samples and {section['draws']} random unit directions d "
        f"each (seed {section['seed']}), the KL divergence KL(p(x) ‖ p(x + r d)) at L2 radius r "
        "is compared with its second-order prediction ½ r² dᵀF d; the relative error "
        "|KL − ½ r² dᵀF d| / (½ r² dᵀF d) is summarised over samples and directions."
    )
    columns = (
        "radii",
        "median_relative_error",
        "p90_relative_error",
        "median_kl",
        "median_quadratic",
    )
    rows = [
        [format_sig(value) for value in row]
        for row in zip(*(section[key] for key in columns), strict=True)
    ]
    header = [
        "radius",
        "median relative error",
        "90th pct relative error",
        "median KL",
        "median ½ r² dᵀF d",
    ]
    return paragraphs(intro, table(header, rows), _verdict(section))


def _verdict(section: dict) -> str:
    valid, radii = section["valid_radius"], section["radii"]
    tolerance = format_sig(section["tolerance"])
    if valid is None:
        return (
            f"Valid radius: none. Even at the smallest radius tried ({format_sig(radii[0])}) the "
            f"median relative error ({format_sig(section['median_relative_error'][0])}) exceeds "
            f"the tolerance {tolerance}: the second-order picture does not hold here, so "
            "λ_max and the KL radius summarise the local sensitivity only roughly. This happens "
            "when the network is not differentiable at the data, e.g. max-pool ties on constant "
            "backgrounds or ReLUs switching right at the input."
        )
    if valid == radii[-1]:
        return (
            f"Valid radius: {format_sig(valid)}, the largest radius tried; the median relative "
            f"error stays within the tolerance {tolerance} on the whole grid."
        )
    return (
        f"Valid radius: {format_sig(valid)}, the largest radius at which the median "
        f"relative error (and that at every smaller radius) is within the tolerance "
        f"{tolerance}; beyond it higher-order terms matter."
    )
