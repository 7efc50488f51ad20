"""Card subsection and plot of Bernoulli path separation (results section ``"path_separation"``)."""

from __future__ import annotations

from pathlib import Path

from hf_fisher.report.sections._common import (
    estimate_with_ci,
    format_sig,
    md_escape,
    new_figure,
    paragraphs,
    save_figure,
    table,
)

_SCORES = (
    ("score", "path separation S (mean over layers)"),
    ("activation_score", "activation-only separation (mean over layers)"),
    ("pooled_score", "edge-weighted path separation"),
    ("excess_score", "path excess divergence, between − within (nats)"),
    ("activation_excess_score", "activation excess divergence (nats)"),
)


def plot_path_separation(section: dict, path: str | Path) -> Path:
    """Per-layer separation, weight x activation paths vs activations alone (log scale)."""
    figure, axis = new_figure(max(5, 0.5 * len(section["layers"]) + 2), 4)
    layers = section["layers"]
    positions = range(len(layers))
    for key, label, marker in (
        ("separation", "paths (W·a top-γ edges)", "o"),
        ("activation_separation", "activations only (a > 0)", "s"),
    ):
        points = [(i, layer[key]) for i, layer in zip(positions, layers, strict=True)]
        points = [(i, v) for i, v in points if v is not None and v > 0]
        if points:
            axis.plot(*zip(*points, strict=True), marker=marker, label=label)
    axis.axhline(1.0, color="grey", linestyle="--", label="random halves of a class (S = 1)")
    axis.set_yscale("log")
    axis.set_xticks(list(positions), [_short(layer["name"]) for layer in layers], rotation=60)
    axis.tick_params(axis="x", labelsize=7)
    axis.set_ylabel("separation S = between / within")
    axis.set_title("Class separation per layer")
    axis.legend(fontsize=8)
    return save_figure(figure, path)


def _short(name: str, keep: int = 28) -> str:
    return name if len(name) <= keep else "…" + name[-keep:]


def card_path_separation(section: dict) -> str:
    """Markdown card subsection: the scores, the per-layer profile, and what they mean.

    Says plainly that the metric is our reconstruction of a paper whose definition is not public,
    and that S grows with the samples per class, so only runs on the same data compare.

    Args:
        section: the ``path_separation`` section of results.json (``PathSeparation.to_json()``).

    Returns:
        Markdown without a heading.
    """
    settings = section["settings"]
    intro = (
        "How differently do the classes route their signal through the network? Following "
        "Khaitan & Banerjee (arXiv 2605.21313), each edge (input unit j → output unit i) of every "
        "linear and convolutional layer is a Bernoulli event: on when the edge is among those "
        f"carrying the top γ = {format_sig(settings['gamma'])} share of unit i's positive input "
        "W_ij·a_j. S compares the per-class event rates between classes with the same comparison "
        "between two random halves of one class (mean edge Jensen–Shannon divergence): S ≈ 1 "
        "means no more separation than sampling noise. **This definition is our reconstruction**: "
        "the paper's exact definition and code are not public (see docs/path-separation.md). "
        f"Measured on {settings['num_samples']} samples of {len(settings['classes'])} classes "
        f"(seed {settings['seed']}); S grows with the samples per class, so compare models on "
        "the same data."
    )
    return paragraphs(intro, _scores_table(section), _layers_table(section["layers"]))


def _scores_table(section: dict) -> str:
    boot = section.get("bootstrap")
    rows = []
    for key, label in _SCORES:
        if boot is not None:
            value = estimate_with_ci(section[key], boot["intervals"][key])
        else:
            value = format_sig(section[key])
        rows.append([label, value])
    header = "value" if boot is None else f"value [95% interval, {boot['resamples']} resamples]"
    return table(["quantity", header], rows)


def _layers_table(layers: list[dict]) -> str:
    rows = [
        [
            md_escape(layer["name"]),
            md_escape(layer["kind"]),
            str(layer["num_edges"]),
            format_sig(layer["separation"]),
            format_sig(layer["activation_separation"]),
        ]
        for layer in layers
    ]
    return table(["layer", "kind", "edges", "path S", "activation S"], rows)
