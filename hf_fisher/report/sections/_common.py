"""What every companion section renderer shares: headless figures, Markdown tables, formatting.

Why one place: the six renderers used to repeat the same pyplot set-up and table code in six
measurement modules; here a figure is a detached :class:`matplotlib.figure.Figure` (no pyplot
state, no GUI backend, safe in threads and servers) and every number goes through the report's
:func:`~hf_fisher.report.badge.format_sig` and every free text through
:func:`~hf_fisher.report.card.md_escape`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from matplotlib.figure import Figure

from hf_fisher.report.badge import format_sig
from hf_fisher.report.card import md_escape

__all__ = [
    "PlotContext",
    "Units",
    "format_sig",
    "md_escape",
    "new_figure",
    "save_figure",
    "log_scatter",
    "or_na",
    "table",
    "paragraphs",
    "estimate_with_ci",
]


@dataclass(frozen=True)
class Units:
    """How a distance and a per-coordinate noise scale in one input space are named on axes."""

    distance: str
    coordinate: str
    scale: str


INPUT_UNITS: Mapping[str | None, Units] = MappingProxyType(
    {
        "pixels": Units("pixel units [0,1]", "pixel", "[0,1] scale"),
        "normalized": Units(
            "normalised model-input units", "coordinate", "normalised model-input units"
        ),
        "embeddings": Units("token-embedding units", "coordinate", "token-embedding units"),
        "raw": Units("raw input units", "coordinate", "raw input units"),
        None: Units("input units", "coordinate", "input units"),
    }
)
"""Units per ``settings.input_space``: every companion measures in the Fisher's input space."""

NORM_NAMES = MappingProxyType({"l2": "L2", "linf": "L∞", "l1": "L1"})


@dataclass(frozen=True)
class PlotContext:
    """Which model, data and input space a plot shows: its title and the units of its axes.

    Why: a PNG is shared on its own (in a card, a chat, a paper draft) and must say what it is
    about; a radius or noise level without its units cannot be read.

    >>> ctx = PlotContext("org/net", "digits (test)", "pixels")
    >>> ctx.distance_label("ε", "l2"), ctx.sigma_label("gaussian")
    ('ε (L2, pixel units [0,1])', 'σ (pixel std, [0,1] scale)')
    """

    model: str | None = None
    dataset: str | None = None
    input_space: str | None = None

    @classmethod
    def of(cls, results: dict[str, Any]) -> PlotContext:
        """The context of validated results: model id, dataset name (split) and input space."""
        data = results["dataset"]
        split = data.get("split")
        dataset = str(data["name"]) + (f" ({split})" if split else "")
        return cls(str(results["model"]["id"]), dataset, results["settings"].get("input_space"))

    @property
    def units(self) -> Units:
        """The input space's units; generic "input units" for an unknown or new space."""
        return INPUT_UNITS.get(self.input_space, INPUT_UNITS[None])

    def title(self, what: str) -> str:
        """``what`` and, on a second line, ``model on dataset`` when they are known."""
        if self.model is None:
            return what
        return f"{what}\n{self.model} on {self.dataset}"

    def distance_label(self, symbol: str, norm: str = "l2", note: str | None = None) -> str:
        """An axis label for a perturbation size, e.g. ``ε (L2, pixel units [0,1])``."""
        extra = f"; {note}" if note else ""
        return f"{symbol} ({NORM_NAMES.get(norm, norm)}, {self.units.distance}{extra})"

    def sigma_label(self, kind: str) -> str:
        """An axis label for a noise level: a Gaussian std or a uniform half-width."""
        what = "std" if kind == "gaussian" else "half-width"
        return f"σ ({self.units.coordinate} {what}, {self.units.scale})"


def new_figure(
    width: float, height: float, columns: int = 1, **subplots: Any
) -> tuple[Figure, Any]:
    """A detached figure of ``width x height`` inches and its axes (an array if ``columns > 1``).

    Args:
        width, height: Figure size in inches.
        columns: Axes side by side.
        **subplots: Passed to :meth:`~matplotlib.figure.Figure.subplots` (e.g. ``sharey``).
    """
    figure = Figure(figsize=(width, height))
    return figure, figure.subplots(1, columns, **subplots)


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Lay out ``figure`` tightly and write it to ``path`` (format from the suffix).

    Returns:
        The written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path)
    return path


def log_scatter(
    axis: Any,
    xs: Sequence[float | None],
    ys: Sequence[float | None],
    *,
    log_y: bool = False,
    keep: Sequence[bool] | None = None,
) -> None:
    """Scatter the pairs a log x axis (and, with ``log_y``, a log y axis) can show.

    Pairs with a missing value (None: NaN or infinite in results.json), a non-positive
    coordinate on a log axis, or ``keep`` False are left out; nothing is drawn (and the axes stay
    linear) when no pair is left.
    """
    keep = [True] * len(xs) if keep is None else keep
    pairs = [
        (x, y)
        for x, y, ok in zip(xs, ys, keep, strict=True)
        if ok and x is not None and y is not None and x > 0 and (y > 0 or not log_y)
    ]
    if pairs:
        axis.scatter(*zip(*pairs, strict=True), s=10)
        axis.set_xscale("log")
        if log_y:
            axis.set_yscale("log")


def or_na(value: float | None, spec: str) -> str:
    """``format(value, spec)`` for plot labels, ``"n/a"`` for a missing value.

    >>> or_na(0.12345, ".2f"), or_na(None, ".2f")
    ('0.12', 'n/a')
    """
    return "n/a" if value is None else format(value, spec)


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table of already formatted (and escaped) cells.

    >>> print(table(["σ", "accuracy"], [["0", "0.99"], ["0.1", "0.5"]]))
    | σ | accuracy |
    |---|---|
    | 0 | 0.99 |
    | 0.1 | 0.5 |
    """
    lines = [_row(header), "|---" * len(header) + "|", *(_row(cells) for cells in rows)]
    return "\n".join(lines)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def paragraphs(*blocks: str) -> str:
    r"""Join Markdown blocks with one blank line, leaving out empty ones.

    >>> paragraphs("a", "", "| t |")
    'a\n\n| t |'
    """
    return "\n\n".join(block for block in blocks if block)


def estimate_with_ci(value: float | None, interval: Sequence[float | None]) -> str:
    """``value [low, high]`` with every number through :func:`format_sig`.

    >>> estimate_with_ci(-0.869, [-0.9216, None])
    '-0.869 [-0.922, –]'
    """
    low, high = interval
    return f"{format_sig(value)} [{format_sig(low)}, {format_sig(high)}]"
