"""Merge a robustness section and ``model-index`` results into a Hugging Face model card.

The section lives between ``<!-- hf-fisher:start -->`` and ``<!-- hf-fisher:end -->``. Re-running
replaces only what is between the markers; the rest of the Markdown body is kept byte for byte,
and in the YAML front matter only the ``fisher_robustness`` results of the model-index change.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hf_fisher.errors import InputError
from hf_fisher.report.badge import badge_markdown, format_sig
from hf_fisher.report.eval_results import METRIC_TYPE, build_eval_results, write_eval_results
from hf_fisher.report.plots import (
    PLOT_TITLES,
    REPORT_REGISTRY,
    Companion,
    Plotter,
    make_plots,
    run_registry,
)

START_MARKER = "<!-- hf-fisher:start -->"
END_MARKER = "<!-- hf-fisher:end -->"
TEMPLATE_FIELDS = (
    "badge",
    "explanation",
    "summary_table",
    "per_class_table",
    "companions",
    "plots",
    "version",
    "created",
)
_SPACE_UNITS = {
    "pixels": "pixel units (inputs scaled to [0, 1] before normalisation)",
    "normalized": "units of the normalised model input",
    "embeddings": "input-embedding units",
    "raw": "units of the raw model input",
}
# "$companions" or "${companions}" not preceded by the "$$" escape.
_USES_COMPANIONS = re.compile(r"(?<!\$)(?:\$\$)*\$(?:companions\b|\{companions\})")
_MD_SPECIAL = str.maketrans({c: f"\\{c}" for c in "\\`*_[]<>|#"} | {"\n": " ", "\r": " "})


@dataclass(frozen=True)
class CardOutputs:
    """Paths written by :func:`write_card`."""

    card: Path
    plots: dict[str, Path]
    eval_results: Path | None


def default_template() -> str:
    """Return the packaged section template (a :class:`string.Template`, ``$field`` syntax)."""
    return (
        resources.files("hf_fisher.report")
        .joinpath("templates/robustness_section.md")
        .read_text(encoding="utf-8")
    )


def md_escape(text: Any) -> str:
    r"""Escape text for a Markdown table cell (labels and names can contain anything).

    >>> md_escape("a|b_c <x>")
    'a\\|b\\_c \\<x\\>'
    """
    return str(text).translate(_MD_SPECIAL)


def _ci(stats: Mapping[str, Any]) -> str:
    return (
        f"{format_sig(stats.get('median'))} "
        f"[{format_sig(stats.get('median_ci_low'))}, {format_sig(stats.get('median_ci_high'))}]"
    )


def _percent(value: float | None) -> str:
    return "n/a (no labels)" if value is None else f"{100 * float(value):.1f}%"


def explanation(results: dict[str, Any]) -> str:
    """One paragraph on what the numbers mean and how they were computed."""
    settings, dataset = results["settings"], results["dataset"]
    space = settings["input_space"]
    units = _SPACE_UNITS.get(space, f"{space} units")
    config = f", config `{md_escape(dataset['config'])}`" if dataset.get("config") else ""
    split = md_escape(dataset.get("split") or "unspecified")
    access = "black-box (output queries only)" if settings.get("black_box") else "white-box"
    return (
        "These numbers measure how fast the model's predicted distribution changes under small "
        "input perturbations, through the input-space Fisher information "
        "F(x) = Jᵀ(diag(p) − ppᵀ)J, where J is the Jacobian of the logits with respect to the "
        f"input ({space}) and p the softmax output. For each of "
        f"{int(results['summary']['num_samples'])} samples of "
        f"`{md_escape(dataset['name'])}` (split `{split}`{config}) we "
        "report the spectral norm λ_max(F) (sensitivity in the worst direction), the trace of "
        "F (sensitivity summed over all directions) and the KL radius "
        f"√(2τ/λ_max), τ = {format_sig(float(settings['kl_tau']))}: the L2 perturbation, in "
        f"{units}, at which the second-order KL divergence between clean and perturbed outputs "
        "reaches τ. A larger KL radius, or a smaller spectral norm and trace, means a more "
        f"robust model. Computed {access} with the `{md_escape(settings['method'])}` estimator, "
        f"seed {settings.get('seed')}; brackets give 95% confidence intervals of the median. "
        "The numbers are local: they describe infinitesimal perturbations around these inputs, "
        "not a certified bound against attacks."
    )


def summary_table(results: dict[str, Any]) -> str:
    """Markdown table: median with CI, mean, percentiles, and medians by correctness."""
    metrics = results["summary"]["metrics"]
    by_corr = results["summary"].get("by_correctness", {})
    n_ok = by_corr.get("correct", {}).get("num_samples", "–")
    n_bad = by_corr.get("misclassified", {}).get("num_samples", "–")
    lines = [
        f"| quantity | median [95% CI] | mean | 5th pct | 95th pct "
        f"| median, correct (n={n_ok}) | median, misclassified (n={n_bad}) |",
        "|---|---|---|---|---|---|---|",
    ]
    names = (
        ("kl_radius", "KL radius (↑ more robust)"),
        ("spectral_norm", "spectral norm λ_max (↓)"),
        ("trace", "trace (↓)"),
    )
    for key, name in names:
        stats = metrics[key]
        group = [
            format_sig(by_corr[g]["metrics"][key]["median"])
            if by_corr.get(g, {}).get("num_samples") and key in by_corr[g].get("metrics", {})
            else "–"
            for g in ("correct", "misclassified")
        ]
        lines.append(
            f"| {name} | {_ci(stats)} | {format_sig(stats['mean'])} "
            f"| {format_sig(stats['p05'])} | {format_sig(stats['p95'])} "
            f"| {group[0]} | {group[1]} |"
        )
    lines.append("")
    lines.append(
        f"Samples: {int(results['summary']['num_samples'])}; accuracy on them: "
        f"{_percent(results['summary']['accuracy'])}; "
        f"skipped: {len(results.get('skipped') or [])}."
    )
    return "\n".join(lines)


def per_class_table(results: dict[str, Any]) -> str:
    """Markdown table with one row per true class."""
    id2label = results["model"]["id2label"]
    lines = [
        "| class | samples | accuracy | median KL radius [95% CI] | median spectral norm "
        "| median trace |",
        "|---|---|---|---|---|---|",
    ]

    def order(key: str) -> tuple[int, Any]:
        return (0, int(key)) if key.lstrip("-").isdigit() else (1, key)

    for key in sorted(results["summary"]["by_class"], key=order):
        entry = results["summary"]["by_class"][key]
        metrics = entry["metrics"]
        lines.append(
            f"| {md_escape(id2label.get(key, key))} | {int(entry['num_samples'])} "
            f"| {_percent(entry.get('accuracy'))} | {_ci(metrics['kl_radius'])} "
            f"| {format_sig(metrics['spectral_norm']['median'])} "
            f"| {format_sig(metrics['trace']['median'])} |"
        )
    return "\n".join(lines)


def _title(name: str, registry: Mapping[str, Any]) -> str:
    entry = registry.get(name)
    if isinstance(entry, Companion):
        return entry.title
    return PLOT_TITLES.get(name, name.replace("_", " "))


def _image(name: str, path: Path, card_dir: Path, registry: Mapping[str, Any]) -> str:
    rel = Path(os.path.relpath(Path(path).resolve(), Path(card_dir).resolve())).as_posix()
    return f"![{_title(name, registry)}]({rel})"


def plots_markdown(
    plots: Mapping[str, Path],
    card_dir: Path,
    registry: Mapping[str, Companion | str | Plotter] | None = None,
) -> str:
    """Markdown images that link each plot by its path relative to the card."""
    registry = REPORT_REGISTRY if registry is None else registry
    return "\n\n".join(_image(name, path, card_dir, registry) for name, path in plots.items())


def _render_body(func: Callable[[dict], str], section: dict, _name: str) -> str:
    body = func(section)
    if not isinstance(body, str):
        raise TypeError(f"card renderer returned {type(body).__name__}, expected Markdown text")
    return body.strip()


def companion_subsections(
    results: dict[str, Any],
    plots: Mapping[str, Path] | None = None,
    card_dir: str | Path = ".",
    registry: Mapping[str, Companion | str | Plotter] | None = None,
) -> dict[str, str]:
    """Render one ``###`` subsection per companion measurement present in ``results``.

    Each subsection is the entry's title, the Markdown of its card renderer (what was
    measured, with which settings, and a small table) and, when drawn, its plot, so that the
    reader finds numbers and figure together.

    Args:
        results: Validated results.
        plots: Plot name -> PNG path; a companion's plot is embedded in its subsection.
        card_dir: Folder of the card; plot links are relative to it.
        registry: Section name -> :class:`~hf_fisher.report.plots.Companion`; defaults to
            :data:`~hf_fisher.report.plots.REPORT_REGISTRY`. Entries that are a bare plotter
            have no card renderer. Absent sections are skipped; a renderer that cannot be
            imported, raises or returns something other than text is skipped with a
            ``RuntimeWarning``.

    Returns:
        Section name -> subsection Markdown, in registry order.
    """
    registry = REPORT_REGISTRY if registry is None else registry
    plots = plots or {}
    bodies = run_registry(results, registry, "card", _render_body)
    out = {}
    for name, body in bodies.items():
        parts = [f"### {_title(name, registry)}", body]
        if name in plots:
            parts.append(_image(name, plots[name], Path(card_dir), registry))
        out[name] = "\n\n".join(parts)
    return out


def render_section(
    results: dict[str, Any],
    plots: Mapping[str, Path] | None = None,
    card_dir: str | Path = ".",
    template: str | None = None,
    registry: Mapping[str, Companion | str | Plotter] | None = None,
) -> str:
    """Render the section, markers included.

    Args:
        results: Validated results.
        plots: Plot name -> PNG path, as returned by :func:`~hf_fisher.report.make_plots`.
        card_dir: Folder of the card; plot links are relative to it.
        template: A :class:`string.Template` text using the fields in :data:`TEMPLATE_FIELDS`;
            defaults to :func:`default_template`. ``$companions`` holds the companion
            subsections with their plots and ``$plots`` the other plots; a template without
            ``$companions`` gets every plot in ``$plots`` and no companion subsections.
        registry: Companion registry, see :func:`companion_subsections`.

    Raises:
        InputError: The template uses an unknown ``$field``.
    """
    text = default_template() if template is None else template
    plots = dict(plots or {})
    companions = {}
    if _USES_COMPANIONS.search(text):
        companions = companion_subsections(results, plots, card_dir, registry)
        plots = {name: path for name, path in plots.items() if name not in companions}
    fields = {
        "badge": badge_markdown(results),
        "explanation": explanation(results),
        "summary_table": summary_table(results),
        "per_class_table": per_class_table(results),
        "companions": "\n\n".join(companions.values()),
        "plots": plots_markdown(plots, Path(card_dir), registry),
        "version": md_escape(results["hf_fisher_version"]),
        "created": md_escape(results["created"]),
    }
    try:
        body = string.Template(text).substitute(fields)
    except (KeyError, ValueError) as err:
        raise InputError(
            f"section template uses an unknown or malformed field {err}; use only "
            f"{', '.join('$' + f for f in TEMPLATE_FIELDS)} (write $$ for a literal $)."
        ) from err
    body = re.sub(r"\n{3,}", "\n\n", body)  # an empty field leaves no gap
    if START_MARKER in body or END_MARKER in body:
        raise InputError("section template must not contain the hf-fisher markers; remove them.")
    return f"{START_MARKER}\n{body.strip()}\n{END_MARKER}"


def _replace_section(text: str, section: str, source: str, newline: str = "\n") -> str:
    starts, ends = text.count(START_MARKER), text.count(END_MARKER)
    if starts == 0 and ends == 0:
        if not text:
            return f"{section}{newline}"
        sep = "" if text.endswith("\n") else newline
        return f"{text}{sep}{newline}{section}{newline}"
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if starts != 1 or ends != 1 or end < start:
        raise InputError(
            f"{source}: found {starts} {START_MARKER!r} and {ends} {END_MARKER!r} marker(s); "
            "expected exactly one start marker followed by one end marker. Delete the broken "
            "hf-fisher section by hand and re-run."
        )
    return text[:start] + section + text[end + len(END_MARKER) :]


def _merge_eval_results(existing: list[EvalResult], ours: list[EvalResult]) -> list[EvalResult]:
    kept = [r for r in existing if r.metric_type != METRIC_TYPE]
    # The Hub takes a group's shared fields from its first entry: adopt those of any existing
    # group we join so that neither our entries nor theirs change on reload.
    first = {}
    for r in kept:
        first.setdefault(r.unique_identifier, r)
    for r in ours:
        head = first.get(r.unique_identifier)
        if head is not None:
            r.task_name, r.dataset_name, r.dataset_args = (
                head.task_name,
                head.dataset_name,
                head.dataset_args,
            )
            r.source_name, r.source_url = head.source_name, head.source_url
    return kept + ours


def merge_card(
    results: dict[str, Any],
    card_text: str | None = None,
    plots: Mapping[str, Path] | None = None,
    card_dir: str | Path = ".",
    template: str | None = None,
    source: str = "model card",
    registry: Mapping[str, Companion | str | Plotter] | None = None,
) -> ModelCard:
    """Return a model card holding the robustness section and model-index results.

    Args:
        results: Validated results.
        card_text: The existing card (YAML front matter optional); ``None`` starts a new card.
        plots: Plot name -> PNG path, linked from the section.
        card_dir: Folder of the card, for relative plot links.
        template: Optional section template (see :func:`render_section`).
        source: Name of the card in error messages.
        registry: Companion registry, see :func:`companion_subsections`.

    Raises:
        InputError: The card's markers are broken or its front matter is not a mapping.
    """
    section = render_section(results, plots, card_dir, template, registry)
    model_id = str(results["model"]["id"])
    if card_text is None:
        data = ModelCardData(
            model_name=model_id,
            pipeline_tag=results["model"]["task"],
            tags=["hf-fisher", "robustness"],
            eval_results=build_eval_results(results),
        )
        body = f"\n# {md_escape(model_id)}\n\n{section}\n"
        return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
    try:
        card = ModelCard(card_text)
    except ValueError as err:
        raise InputError(
            f"{source}: the YAML front matter is not a mapping ({err}); fix or remove it."
        ) from err
    newline = "\r\n" if "\r\n" in card_text else "\n"
    card.text = _replace_section(card.text, section.replace("\n", newline), source, newline)
    card.data.eval_results = _merge_eval_results(
        list(card.data.eval_results or []), build_eval_results(results)
    )
    if not card.data.model_name:
        card.data.model_name = model_id
    return card


def write_card(
    results: dict[str, Any],
    out: str | Path,
    card: str | Path | None = None,
    plots_dir: str | Path | None = None,
    template: str | Path | None = None,
    registry: Mapping[str, Companion | str | Plotter] | None = None,
    eval_results: bool = True,
) -> CardOutputs:
    """Draw the plots, merge the section into ``card`` (if given) and save to ``out``.

    Args:
        results: Validated results.
        out: Where to save the card, e.g. ``README.md``.
        card: Existing card to merge into; ``None`` writes a new card.
        plots_dir: PNG folder; defaults to ``robustness_plots/`` next to ``out``.
        template: Path of a custom section template.
        registry: Companion registry for plots and card subsections; defaults to
            :data:`~hf_fisher.report.plots.REPORT_REGISTRY` (see :func:`companion_subsections`).
        eval_results: Also write ``.eval_results/hf-fisher.yaml`` next to ``out``.

    Raises:
        InputError: ``card`` or ``template`` does not exist, or the card cannot be merged.
    """
    out = Path(out)
    for label, path in (("--card", card), ("--template", template)):
        if path is not None and not Path(path).is_file():
            raise InputError(f"{label} {str(path)!r} is not a file; pass an existing file.")
    card_text = None
    if card is not None:
        with open(card, encoding="utf-8-sig", newline="") as f:
            card_text = f.read()
    template_text = None if template is None else Path(template).read_text(encoding="utf-8")
    plots = make_plots(
        results,
        out.parent / "robustness_plots" if plots_dir is None else Path(plots_dir),
        registry,
    )
    merged = merge_card(
        results,
        card_text,
        plots,
        out.parent,
        template_text,
        source=str(card or out),
        registry=registry,
    )
    merged.save(out)
    written = write_eval_results(results, out.parent) if eval_results else None
    return CardOutputs(card=out, plots=plots, eval_results=written)
