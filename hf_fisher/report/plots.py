"""PNG plots for reports, drawn headless from ``results.json``.

Core plots come from ``per_sample``. Optional measurements (attacks, noise curves, ...) add
theirs through :data:`PLOT_REGISTRY`, which maps a results section name to the dotted name of
a plotter ``f(section: dict, path: Path) -> Path``. Plotters are imported only when their
section is present, so a report never imports a measurement module it does not need.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from matplotlib.figure import Figure

Plotter = Callable[[dict, Path], Path]

PLOT_REGISTRY: Mapping[str, str] = MappingProxyType(
    {
        "attacks": "hf_fisher.attacks:plot_attacks",
        "noise_curves": "hf_fisher.noise:plot_noise_curves",
        "kl_check": "hf_fisher.kl_check:plot_kl_check",
        "clever": "hf_fisher.clever:plot_clever",
        "frequency": "hf_fisher.frequency:plot_frequency",
    }
)
PLOT_TITLES: Mapping[str, str] = MappingProxyType(
    {
        "spectral_norm": "Per-sample spectral norm",
        "per_class": "Spectral norm by class",
        "attacks": "Attack correlation",
        "noise_curves": "Noise curves",
        "kl_check": "KL check",
        "clever": "CLEVER comparison",
        "frequency": "Frequency bands",
    }
)


def resolve_plotter(dotted: str) -> Plotter:
    """Import ``"package.module:function"`` and return the function.

    Raises:
        ImportError: The module or the attribute does not exist.
    """
    module_name, _, attr = dotted.partition(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ImportError(f"{module_name} has no plotter {attr!r}") from err


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_spectral_norm_distribution(results: dict[str, Any], path: Path) -> Path:
    """Histogram of per-sample ``spectral_norm`` on a log axis, correct vs misclassified.

    Misclassified samples tend to sit near a decision boundary, where the Fisher is large;
    showing the two groups apart makes that visible and keeps them from hiding each other.
    """
    rows = results["per_sample"]
    values = np.array([float(r["spectral_norm"]) for r in rows])
    correct = np.array([bool(r["correct"]) for r in rows])
    positive = values[np.isfinite(values) & (values > 0)]
    low, high = (positive.min(), positive.max()) if positive.size else (1e-3, 1.0)
    if low == high:
        low, high = low / 2, high * 2
    bins = np.geomspace(low, high, 25)
    fig = Figure(figsize=(6.4, 3.6))
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
    ax.set_title(f"{results['model']['id']} on {results['dataset']['name']}")
    ax.legend()
    return _save(fig, path)


def plot_per_class(results: dict[str, Any], path: Path) -> Path:
    """Box plot of per-sample ``spectral_norm`` for each true class, on a log axis."""
    id2label = results["model"]["id2label"]
    by_class: dict[int, list[float]] = {}
    for row in results["per_sample"]:
        value = float(row["spectral_norm"])
        if np.isfinite(value) and value > 0:
            by_class.setdefault(int(row["label"]), []).append(value)
    classes = sorted(by_class)
    fig = Figure(figsize=(max(6.4, 0.5 * len(classes)), 3.6))
    ax = fig.add_subplot()
    if classes:
        ax.boxplot([by_class[c] for c in classes], showfliers=True)
        ax.set_xticks(range(1, len(classes) + 1))
        ax.set_xticklabels([str(id2label.get(str(c), c)) for c in classes], rotation=45)
    ax.set_yscale("log")
    ax.set_xlabel("true class")
    ax.set_ylabel("spectral norm (log scale)")
    ax.set_title("Spectral norm by class")
    return _save(fig, path)


def make_plots(
    results: dict[str, Any],
    out_dir: str | Path,
    registry: Mapping[str, str | Plotter] | None = None,
) -> dict[str, Path]:
    """Draw every plot the results support and return ``{name: png_path}`` in display order.

    Args:
        results: Validated results (see :func:`hf_fisher.report.load_results`).
        out_dir: Folder for the PNG files; created if missing.
        registry: Section name -> plotter or dotted ``"module:function"`` name; defaults to
            :data:`PLOT_REGISTRY`. Sections absent from ``results`` are skipped. A plotter that
            cannot be imported or fails is skipped with a ``RuntimeWarning`` so that one
            optional plot cannot block a card.

    Returns:
        Plot name -> path of the written PNG.
    """
    out_dir = Path(out_dir)
    plots = {
        "spectral_norm": plot_spectral_norm_distribution(results, out_dir / "spectral_norm.png"),
        "per_class": plot_per_class(results, out_dir / "per_class.png"),
    }
    for section, plotter in (PLOT_REGISTRY if registry is None else registry).items():
        if not isinstance(results.get(section), dict):
            continue
        try:
            func = resolve_plotter(plotter) if isinstance(plotter, str) else plotter
            plots[section] = Path(func(results[section], out_dir / f"{section}.png"))
        except Exception as err:  # noqa: BLE001 - an optional plot must not block the report
            warnings.warn(
                f"skipped the {section!r} plot: {type(err).__name__}: {err}",
                RuntimeWarning,
                stacklevel=2,
            )
    return plots
