"""PNG plots for reports, drawn headless from ``results.json``, and the companion registry.

Core plots come from ``per_sample``. Optional measurements (attacks, noise curves, ...) write
their own top-level section of results.json and report it through :data:`REPORT_REGISTRY`: each
:class:`Companion` entry names, as dotted ``"module:function"`` strings, a plotter
``f(section: dict, path: Path, context: PlotContext | None = None) -> Path`` (``context`` is
optional: a plotter without it is called with two arguments) and a card renderer
``f(section: dict) -> str`` (Markdown). Every plot's title names the model and the dataset, and
every radius or noise axis its units (:class:`~hf_fisher.report.sections._common.PlotContext`).
Both are imported only when their section is present, so a report never imports a measurement
module it does not need, and one that fails is skipped with a warning.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

if TYPE_CHECKING:  # matplotlib is imported by the plotters: importing the registry stays light
    from matplotlib.figure import Figure

    from hf_fisher.report.sections._common import PlotContext

Plotter = Callable[[dict, Path], Path]
CardRenderer = Callable[[dict], str]
_T = TypeVar("_T")


@dataclass(frozen=True)
class Companion:
    """How reports show one optional results section.

    Attributes:
        title: Heading of the card subsection and alt text of the plot.
        plotter: ``f(section, path) -> path`` or its dotted name; None draws no plot.
        card: ``f(section) -> Markdown`` or its dotted name; None writes no card subsection.
    """

    title: str
    plotter: str | Plotter | None = None
    card: str | CardRenderer | None = None


REPORT_REGISTRY: Mapping[str, Companion] = MappingProxyType(
    {
        "attacks": Companion(
            "Attack cross-check",
            "hf_fisher.report.sections.attacks:plot_attacks",
            "hf_fisher.report.sections.attacks:card_attacks",
        ),
        "noise_curves": Companion(
            "Noise curves",
            "hf_fisher.report.sections.noise_curves:plot_noise_curves",
            "hf_fisher.report.sections.noise_curves:card_noise_curves",
        ),
        "kl_check": Companion(
            "KL check",
            "hf_fisher.report.sections.kl_check:plot_kl_check",
            "hf_fisher.report.sections.kl_check:card_kl_check",
        ),
        "clever": Companion(
            "CLEVER comparison",
            "hf_fisher.report.sections.clever:plot_clever",
            "hf_fisher.report.sections.clever:card_clever",
        ),
        "frequency": Companion(
            "Frequency bands",
            "hf_fisher.report.sections.frequency:plot_frequency",
            "hf_fisher.report.sections.frequency:card_frequency",
        ),
        "bound": Companion(
            "Architecture bound",
            "hf_fisher.report.sections.bound:plot_bound",
            "hf_fisher.report.sections.bound:card_bound",
        ),
        "path_separation": Companion(
            "Path separation",
            "hf_fisher.report.sections.path_separation:plot_path_separation",
            "hf_fisher.report.sections.path_separation:card_path_separation",
        ),
        "pixel_sensitivity": Companion(
            "Per-pixel sensitivity",
            "hf_fisher.report.sections.pixel_sensitivity:plot_pixel_sensitivity",
            "hf_fisher.report.sections.pixel_sensitivity:card_pixel_sensitivity",
        ),
    }
)
# Views of REPORT_REGISTRY, derived so that they cannot drift from it.
PLOT_REGISTRY: Mapping[str, str | Plotter | None] = MappingProxyType(
    {section: entry.plotter for section, entry in REPORT_REGISTRY.items()}
)
PLOT_TITLES: Mapping[str, str] = MappingProxyType(
    {
        "spectral_norm": "Per-sample spectral norm",
        "per_class": "Spectral norm by class",
        **{section: entry.title for section, entry in REPORT_REGISTRY.items()},
    }
)
_ROLES = {"plotter": "plot", "card": "card subsection"}


def resolve_dotted(dotted: str, what: str = "function") -> Callable:
    """Import ``"package.module:function"`` and return the function.

    Args:
        dotted: ``"module:attribute"``.
        what: What the attribute is, for the error message (``"plotter"``, ``"card renderer"``).

    Raises:
        ImportError: The module or the attribute does not exist.
    """
    module_name, _, attr = dotted.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ImportError(f"{module_name} has no {what} {attr!r}") from err


def resolve_plotter(dotted: str) -> Plotter:
    """Import ``"package.module:function"`` and return the plotter.

    Raises:
        ImportError: The module or the attribute does not exist.
    """
    return resolve_dotted(dotted, "plotter")


def run_registry(
    results: dict[str, Any],
    registry: Mapping[str, Companion | str | Callable],
    role: Literal["plotter", "card"],
    call: Callable[[Callable, dict, str], _T],
) -> dict[str, _T]:
    """Call each present section's plotter or card renderer; skip absent and failing ones.

    Why one loop for both: plots and card subsections must agree on which sections are
    present, import lazily in the same way, and fail in the same soft way.

    Args:
        results: Validated results.
        registry: Section name -> :class:`Companion`, or a bare plotter (or its dotted name),
            which has no card renderer.
        role: ``"plotter"`` or ``"card"``: which function of a :class:`Companion` to call.
        call: ``call(func, section_dict, section_name)`` runs one function.

    Returns:
        Section name -> what ``call`` returned, in registry order. Sections absent from
        ``results`` (or not a JSON object there) and entries without a function for ``role``
        are left out; a function that cannot be imported or raises is left out with a
        ``RuntimeWarning``, so that one optional measurement cannot block a report.
    """
    out: dict[str, _T] = {}
    for section, entry in registry.items():
        if not isinstance(results.get(section), dict):
            continue
        if isinstance(entry, Companion):
            target = getattr(entry, role)
        else:  # a bare function or dotted name is a plotter (the registry's older form)
            target = entry if role == "plotter" else None
        if target is None:
            continue
        try:
            func = (
                resolve_dotted(target, "card renderer" if role == "card" else role)
                if isinstance(target, str)
                else target
            )
            out[section] = call(func, results[section], section)
        except Exception as err:  # noqa: BLE001 - an optional measurement must not block a report
            warnings.warn(
                f"skipped the {section!r} {_ROLES[role]}: {type(err).__name__}: {err}",
                RuntimeWarning,
                stacklevel=3,
            )
    return out


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def spectral_norm_figure(results: dict[str, Any]) -> Figure:
    """Histogram of per-sample ``spectral_norm`` on a log axis, correct vs misclassified.

    Misclassified samples tend to sit near a decision boundary, where the Fisher is large;
    showing the two groups apart makes that visible and keeps them from hiding each other.
    """
    from hf_fisher.report.sections._common import PlotContext

    rows = results["per_sample"]
    values = np.array([float(r["spectral_norm"]) for r in rows])
    correct = np.array([bool(r["correct"]) for r in rows])
    positive = values[np.isfinite(values) & (values > 0)]
    low, high = (positive.min(), positive.max()) if positive.size else (1e-3, 1.0)
    if low == high:
        low, high = low / 2, high * 2
    bins = np.geomspace(low, high, 25)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot()
    for mask, label, color in (
        (correct, "correct", "tab:blue"),
        (~correct, "misclassified", "tab:red"),
    ):
        group = values[mask]
        group = group[np.isfinite(group) & (group > 0)]
        if group.size:
            ax.hist(group, bins=bins, alpha=0.6, color=color, label=f"{label} (n={group.size})")
    ax.set_xscale("log")
    ax.set_xlabel("spectral norm λ_max(F)  (log scale; larger = less robust)")
    ax.set_ylabel("samples")
    ax.set_title(PlotContext.of(results).title("Per-sample λ_max(F), correct vs misclassified"))
    ax.legend()
    return fig


def plot_spectral_norm_distribution(results: dict[str, Any], path: Path) -> Path:
    """Draw :func:`spectral_norm_figure` into ``path``."""
    return _save(spectral_norm_figure(results), path)


def per_class_figure(results: dict[str, Any]) -> Figure:
    """Box plot of per-sample ``spectral_norm`` for each true class, on a log axis."""
    from hf_fisher.report.sections._common import PlotContext

    id2label = results["model"]["id2label"]
    by_class: dict[int, list[float]] = {}
    for row in results["per_sample"]:
        value = float(row["spectral_norm"])
        labels = row["label"] if isinstance(row["label"], list) else [row["label"]]
        for label in labels if np.isfinite(value) and value > 0 else ():  # multi-label: each
            by_class.setdefault(int(label), []).append(value)
    classes = sorted(by_class)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.4, 0.5 * len(classes)), 3.8))
    ax = fig.add_subplot()
    if classes:
        ax.boxplot([by_class[c] for c in classes], showfliers=True)
        ax.set_xticks(range(1, len(classes) + 1))
        ax.set_xticklabels([str(id2label.get(str(c), c)) for c in classes], rotation=45)
    ax.set_yscale("log")
    ax.set_xlabel("true class")
    ax.set_ylabel("spectral norm λ_max(F) (log scale)")
    ax.set_title(PlotContext.of(results).title("Spectral norm λ_max(F) by true class"))
    return fig


def plot_per_class(results: dict[str, Any], path: Path) -> Path:
    """Draw :func:`per_class_figure` into ``path``."""
    return _save(per_class_figure(results), path)


def call_plotter(func: Callable[..., Any], section: dict, path: Path, context: PlotContext) -> Path:
    """Call a section plotter, with ``context=`` when its signature takes it.

    Why: plotters written for the two-argument form (``f(section, path)``) keep working.
    """
    try:
        takes_context = "context" in inspect.signature(func).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        takes_context = False
    if takes_context:
        return Path(func(section, path, context=context))
    return Path(func(section, path))


def make_plots(
    results: dict[str, Any],
    out_dir: str | Path,
    registry: Mapping[str, Companion | str | Plotter] | None = None,
) -> dict[str, Path]:
    """Draw every plot the results support and return ``{name: png_path}`` in display order.

    Args:
        results: Validated results (see :func:`hf_fisher.report.load_reportable_results`).
        out_dir: Folder for the PNG files; created if missing.
        registry: Section name -> :class:`Companion`, plotter or dotted ``"module:function"``
            name; defaults to :data:`REPORT_REGISTRY`. Sections absent from ``results`` are
            skipped. A plotter that cannot be imported or fails is skipped with a
            ``RuntimeWarning`` so that one optional plot cannot block a card.

    Returns:
        Plot name -> path of the written PNG.
    """
    from hf_fisher.report.sections._common import PlotContext

    out_dir = Path(out_dir)
    context = PlotContext.of(results)
    plots = {
        "spectral_norm": plot_spectral_norm_distribution(results, out_dir / "spectral_norm.png"),
        "per_class": plot_per_class(results, out_dir / "per_class.png"),
    }
    plots.update(
        run_registry(
            results,
            REPORT_REGISTRY if registry is None else registry,
            "plotter",
            lambda func, section, name: call_plotter(
                func, section, out_dir / f"{name}.png", context
            ),
        )
    )
    return plots
