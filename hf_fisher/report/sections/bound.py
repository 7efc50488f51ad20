"""Card subsection and plot of the data-free architecture bound (results section ``"bound"``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from hf_fisher.report.sections._common import (
    PlotContext,
    format_sig,
    md_escape,
    new_figure,
    paragraphs,
    save_figure,
    table,
)


def bound_figure(section: dict, context: PlotContext | None = None) -> Figure:
    """The measured λ_max distribution and the architecture bound, log scale."""
    context = context or PlotContext()
    figure, axis = new_figure(5.5, 4.4)
    values = np.array([v for v in section["spectral_norm"] if v is not None and v > 0])
    bound = section["lambda_bound"]
    if len(values):
        low, high = values.min(), max(values.max(), values.min() * 1.01)
        bins = np.geomspace(low, high, 20)
        axis.hist(values, bins=bins, color="tab:blue", alpha=0.7, label="measured λ_max")
    if bound is not None:
        label = "architecture bound"
        if section["ratio_to_max"] is not None:
            label += f" ({section['ratio_to_max']:.3g}× max)"
        axis.axvline(bound, color="tab:red", linestyle="--", label=label)
    axis.set_xscale("log")
    axis.set_title(context.title("Measured λ_max vs the data-free bound"), fontsize=10)
    axis.set_xlabel("λ_max of the input Fisher")
    axis.set_ylabel("samples")
    axis.legend()
    return figure


def plot_bound(section: dict, path: str | Path, context: PlotContext | None = None) -> Path:
    """Draw :func:`bound_figure` into ``path``."""
    return save_figure(bound_figure(section, context), path)


def card_bound(section: dict) -> str:
    """Markdown card subsection: the data-free bound, its layer factors and its looseness.

    Args:
        section: the ``bound`` section of results.json (:meth:`BoundReport.to_json`).

    Returns:
        Markdown without a heading.
    """
    intro = (
        "A data-free worst case: for every input, λ_max ≤ ½ ‖J‖₂² (the softmax covariance has "
        "norm at most ½) and ‖J‖₂ ≤ s · ∏ ‖layer‖₂ (input scale s times the layers' L2 "
        "Lipschitz constants). It ignores how layers align, so it is usually far above the "
        "measured values; the ratio says by how much."
    )
    rows = []
    for layer in section["layers"]:
        method = layer["method"]
        if layer["relative_change"] is not None:
            method += f" (last change {format_sig(layer['relative_change'], 2)})"
        rows.append(
            [md_escape(layer["name"]), md_escape(layer["type"]), format_sig(layer["norm"]), method]
        )
    summary = (
        f"Input scale {format_sig(section['input_scale'])}; ‖J‖₂ ≤ "
        f"{format_sig(section['jacobian_bound'])}, so λ_max ≤ "
        f"**{format_sig(section['lambda_bound'])}**. Measured on {section['num_samples']} "
        f"samples: max {format_sig(section['measured_max'])}, median "
        f"{format_sig(section['measured_median'])}; the bound is "
        f"{format_sig(section['ratio_to_max'])}× the max and "
        f"{format_sig(section['ratio_to_median'])}× the median."
    )
    if section.get("kind") == "estimate":
        summary += (
            " Some blocks (attention) have no global Lipschitz constant and enter with their "
            "largest local Jacobian norm at these samples (kind: estimate), so these figures "
            "are estimates, not bounds."
        )
    return paragraphs(
        intro,
        table(["layer", "type", "L2 constant", "method"], rows),
        summary,
        _power_iteration_note(section),
        _above_bound_warning(section),
    )


def _power_iteration_note(section: dict) -> str:
    if not any(layer["method"] == "power iteration" for layer in section["layers"]):
        return ""
    return (
        "Convolution and pooling constants come from power iteration, which approaches "
        "each norm from below; a large last relative change means more iterations are "
        "needed."
    )


def _above_bound_warning(section: dict) -> str:
    if not section["num_above_bound"]:
        return ""
    return (
        f"**Warning:** {section['num_above_bound']} measured value(s) exceed the bound. "
        "That cannot happen for the function the bound describes: the power iteration "
        "has not converged, or the measured model is not the eval-mode stack."
    )
