"""Merge a robustness section and ``model-index`` results into a Hugging Face model card.

The section lives between ``<!-- hf-fisher:start -->`` and ``<!-- hf-fisher:end -->``. Re-running
replaces only what is between the markers; the rest of the Markdown body is kept byte for byte.
In the YAML front matter our results are one ``model-index`` group of their own (``source``
hf-fisher), spliced in as text: comments, unknown keys and other groups are kept byte for byte.

Every value taken from results.json is escaped before it reaches the card: Markdown text and
table cells through :func:`md_escape`, inline code through :func:`md_code`, YAML through
``yaml.safe_dump``, so a model, dataset or label name cannot inject HTML, Markdown or YAML.
"""

from __future__ import annotations

import copy
import os
import re
import string
import tempfile
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard import REGEX_YAML_BLOCK
from huggingface_hub.repocard_data import eval_results_to_model_index

from hf_fisher.errors import InputError
from hf_fisher.report._front_matter import splice_group
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
_MD_SPECIAL = str.maketrans({c: f"\\{c}" for c in "\\`*_[]<>|#&!~$"})
# A "<" that the Markdown source does not escape (preceded by an even number of backslashes).
_RAW_LT = re.compile(r"(?<!\\)((?:\\\\)*)<")
BOM = "\ufeff"


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


def _one_line(text: Any) -> str:
    # Line breaks would let a value start a heading, list, "---" rule or HTML block.
    return "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in str(text))


def md_escape(text: Any) -> str:
    r"""Escape text for Markdown prose or a table cell (labels and names can contain anything).

    Line breaks and control characters become spaces; ``\ ` * _ [ ] < > | # & ! ~ $`` get a
    backslash, so the text renders literally: no HTML, link, emphasis, table column or math.

    >>> md_escape("a|b_c <x>\n# h")
    'a\\|b\\_c \\<x\\> \\# h'
    """
    return _one_line(text).translate(_MD_SPECIAL)


def md_code(text: Any) -> str:
    """Inline code showing ``text`` literally, with a backtick fence longer than any inside.

    >>> md_code("exact"), md_code("a`b")
    ('`exact`', '``a`b``')
    """
    text = _one_line(text)
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text[:1] in ("`", " ") or text[-1:] in ("`", " ") else ""
    return f"{fence}{pad}{text}{pad}{fence}" if text else "` `"


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
    space = md_escape(settings["input_space"])
    units = _SPACE_UNITS.get(settings["input_space"], f"{space} units")
    config = f", config {md_code(dataset['config'])}" if dataset.get("config") else ""
    split = md_code(dataset.get("split") or "unspecified")
    access = "black-box (output queries only)" if settings.get("black_box") else "white-box"
    return (
        "These numbers measure how fast the model's predicted distribution changes under small "
        "input perturbations, through the input-space Fisher information "
        "F(x) = Jᵀ(diag(p) − ppᵀ)J, where J is the Jacobian of the logits with respect to the "
        f"input ({space}) and p the softmax output. For each of "
        f"{int(results['summary']['num_samples'])} samples of "
        f"{md_code(dataset['name'])} (split {split}{config}) we "
        "report the spectral norm λ_max(F) (sensitivity in the worst direction), the trace of "
        "F (sensitivity summed over all directions) and the KL radius "
        f"√(2τ/λ_max), τ = {format_sig(float(settings['kl_tau']))}: the L2 perturbation, in "
        f"{units}, at which the second-order KL divergence between clean and perturbed outputs "
        "reaches τ. A larger KL radius, or a smaller spectral norm and trace, means a more "
        f"robust model. Computed {access} with the {md_code(settings['method'])} estimator, "
        f"seed {md_escape(settings.get('seed'))}; brackets give 95% confidence intervals of the "
        "median. "
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
        return md_escape(entry.title)
    return md_escape(PLOT_TITLES.get(name, name.replace("_", " ")))


def _image(name: str, path: Path, card_dir: Path, registry: Mapping[str, Any]) -> str:
    rel = Path(os.path.relpath(Path(path).resolve(), Path(card_dir).resolve())).as_posix()
    return f"![{_title(name, registry)}]({quote(rel)})"


def plots_markdown(
    plots: Mapping[str, Path],
    card_dir: Path,
    registry: Mapping[str, Companion | str | Plotter] | None = None,
) -> str:
    """Markdown images that link each plot by its path relative to the card."""
    registry = REPORT_REGISTRY if registry is None else registry
    return "\n\n".join(_image(name, path, card_dir, registry) for name, path in plots.items())


def _inert(value: Any) -> Any:
    """A copy of a results section whose strings hold no line breaks."""
    if isinstance(value, dict):
        return {_inert(key): _inert(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_inert(item) for item in value]
    return _one_line(value) if isinstance(value, str) else value


def _render_body(func: Callable[[dict], str], section: dict, _name: str) -> str:
    # Renderers interpolate values of their section into Markdown, not all of them escaped:
    # give them strings without line breaks (no block-level injection) and escape any raw "<"
    # in what they return (no HTML; the renderers write none themselves).
    body = func(_inert(section))
    if not isinstance(body, str):
        raise TypeError(f"card renderer returned {type(body).__name__}, expected Markdown text")
    return _RAW_LT.sub(r"\1\\<", body.strip())


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


class MergedCard(ModelCard):
    """The card :func:`merge_card` returns: ``str()`` and ``save()`` give its text byte for byte.

    ``huggingface_hub.ModelCard`` writes its front matter back from ``data``, which drops YAML
    comments, unknown keys and key order. This subclass returns the merged text as it is while
    ``data`` is unchanged (``text`` may be edited); after an edit of ``data`` it falls back to
    ``huggingface_hub``'s serialisation, so the edit is not lost.
    """

    @property
    def content(self) -> str:
        """The merged card, or huggingface_hub's rendering once ``data`` was edited."""
        if self.data.to_dict() == self._data_snapshot:
            return self._front + self.text
        return ModelCard.content.fget(self)

    @content.setter
    def content(self, content: str) -> None:
        ModelCard.content.fset(self, content)
        self._front = content[: len(content) - len(self.text)]
        self._data_snapshot = copy.deepcopy(self.data.to_dict())


def _our_group(results: dict[str, Any]) -> dict[str, Any]:
    """Our model-index results group, in the Hub's layout (task, dataset, metrics, source)."""
    index = eval_results_to_model_index("hf-fisher", build_eval_results(results))
    (group,) = index[0]["results"]
    return group


def merge_card(
    results: dict[str, Any],
    card_text: str | None = None,
    plots: Mapping[str, Path] | None = None,
    card_dir: str | Path = ".",
    template: str | None = None,
    source: str = "model card",
    registry: Mapping[str, Companion | str | Plotter] | None = None,
) -> MergedCard:
    """Return a model card holding the robustness section and model-index results.

    Every byte of ``card_text`` outside the hf-fisher markers and our own model-index entries is
    kept: the Markdown body, YAML comments, unknown keys, other results groups and their
    ``source``. Our results form one group of their own (``source.name: hf-fisher``), appended
    to the first model-index entry's ``results`` (a new model-index is created when there is
    none) and replaced in place on re-runs, so merging twice gives the same text.

    Args:
        results: Validated results.
        card_text: The existing card (YAML front matter optional); ``None`` starts a new card.
        plots: Plot name -> PNG path, linked from the section.
        card_dir: Folder of the card, for relative plot links.
        template: Optional section template (see :func:`render_section`).
        source: Name of the card in error messages.
        registry: Companion registry, see :func:`companion_subsections`.

    Raises:
        InputError: The card's markers are broken, its front matter is not a YAML mapping, or
            its model-index is in a layout that cannot be edited without rewriting it.
    """
    section = render_section(results, plots, card_dir, template, registry)
    model_id = str(results["model"]["id"])
    if card_text is None:
        head = yaml.safe_dump(
            {"pipeline_tag": results["model"]["task"], "tags": ["hf-fisher", "robustness"]},
            sort_keys=False,
        )
        card_text = f"---\n{head}---\n\n# {md_escape(model_id)}\n"
    newline = "\r\n" if "\r\n" in card_text else "\n"
    group = _our_group(results)
    match = REGEX_YAML_BLOCK.search(card_text)
    if match:
        front = splice_group(match.group(2), group, model_id, METRIC_TYPE, newline, source)
        head = card_text[: match.start(2)] + front + card_text[match.end(2) : match.end()]
        body = card_text[match.end() :]
    else:
        front = splice_group("", group, model_id, METRIC_TYPE, newline, source)
        head, body = f"---{newline}{front}{newline}---{newline}", card_text
    merged = head + _replace_section(body, section.replace("\n", newline), source, newline)
    try:
        return MergedCard(merged)
    except ValueError as err:
        detail = " ".join(str(err).split())
        raise InputError(
            f"{source}: huggingface_hub cannot read the card's metadata ({detail}); fix the YAML "
            "front matter and re-run."
        ) from err


def _write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file and a rename: a crash never leaves half a card."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
        card: Existing card to merge into. ``None`` merges into ``out`` when that file exists
            (an existing card is never replaced) and writes a new card otherwise.
        plots_dir: PNG folder; defaults to ``robustness_plots/`` next to ``out``.
        template: Path of a custom section template.
        registry: Companion registry for plots and card subsections; defaults to
            :data:`~hf_fisher.report.plots.REPORT_REGISTRY` (see :func:`companion_subsections`).
        eval_results: Also write ``.eval_results/hf-fisher.yaml`` next to ``out``.

    Raises:
        InputError: ``card`` or ``template`` does not exist, or the card cannot be merged.
    """
    out = Path(out)
    if card is None and out.is_file():
        card = out
    for label, path in (("--card", card), ("--template", template)):
        if path is not None and not Path(path).is_file():
            raise InputError(f"{label} {str(path)!r} is not a file; pass an existing file.")
    card_text, bom = None, ""
    if card is not None:
        try:
            card_text = Path(card).read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(f"{card}: not UTF-8 text ({err}); save the card as UTF-8.") from err
        if card_text.startswith(BOM):
            bom, card_text = BOM, card_text[len(BOM) :]
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
    _write_atomic(out, (bom + str(merged)).encode("utf-8"))
    written = write_eval_results(results, out.parent) if eval_results else None
    return CardOutputs(card=out, plots=plots, eval_results=written)
