"""A shields.io-style badge for the headline score: the median KL radius.

The KL radius of a sample is ``sqrt(2 * kl_tau / spectral_norm)``: the L2 input perturbation
at which the second-order KL divergence between clean and perturbed outputs reaches
``kl_tau``. Larger is more robust. The colour thresholds are stated in input units and
anchored on RobustBench's L2 threat model for images in [0, 1] (epsilon = 0.5):

=================  ===============
median KL radius   colour
=================  ===============
>= 0.5             brightgreen
>= 0.25            green
>= 0.1             yellowgreen
>= 0.05            yellow
>= 0.01            orange
< 0.01 or NaN      red
=================  ===============

They are comparable across models only for the same ``input_space`` and ``kl_tau``; the badge
therefore states both.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import quote

# (lower bound, colour), checked from the top; a tuple so that nobody can mutate it.
BADGE_THRESHOLDS: tuple[tuple[float, str], ...] = (
    (0.5, "brightgreen"),
    (0.25, "green"),
    (0.1, "yellowgreen"),
    (0.05, "yellow"),
    (0.01, "orange"),
)
BADGE_FLOOR_COLOR = "red"
SHIELDS_URL = "https://img.shields.io/badge"


def format_sig(value: float | None, digits: int = 3) -> str:
    """Format a number with ``digits`` significant digits, as shown in cards and badges.

    >>> format_sig(0.0777752), format_sig(1234.5), format_sig(float("nan")), format_sig(None)
    ('0.0778', '1.23e+03', 'nan', '–')
    """
    if value is None:
        return "–"
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def badge_color(median_kl_radius: float) -> str:
    """Colour of the badge for a median KL radius, from :data:`BADGE_THRESHOLDS`.

    >>> badge_color(0.6), badge_color(0.0778), badge_color(0.001)
    ('brightgreen', 'yellow', 'red')
    """
    for bound, color in BADGE_THRESHOLDS:
        if median_kl_radius >= bound:
            return color
    return BADGE_FLOOR_COLOR


def _shields_escape(text: str) -> str:
    # shields.io static badges: '-' and '_' are separators, doubled to stay literal.
    return quote(text.replace("-", "--").replace("_", "__"), safe="")


def badge_url(results: dict[str, Any]) -> str:
    """Return the shields.io static-badge URL showing the median KL radius.

    >>> r = {"summary": {"metrics": {"kl_radius": {"median": 0.0777}}},
    ...      "settings": {"input_space": "pixels", "kl_tau": 0.01}}
    >>> badge_url(r)
    'https://img.shields.io/badge/fisher%20robustness-KL%20radius%200.0777%20%28pixels%2C%20%CF%84%3D0.01%29-yellow'
    """
    median = float(results["summary"]["metrics"]["kl_radius"]["median"])
    settings = results["settings"]
    message = (
        f"KL radius {format_sig(median)} "
        f"({settings['input_space']}, τ={format_sig(float(settings['kl_tau']))})"
    )
    return (
        f"{SHIELDS_URL}/{_shields_escape('fisher robustness')}-{_shields_escape(message)}"
        f"-{badge_color(median)}"
    )


def badge_markdown(results: dict[str, Any], link: str = "#robustness-hf-fisher") -> str:
    """Return the badge as a Markdown image that links to ``link`` (the card's section)."""
    median = float(results["summary"]["metrics"]["kl_radius"]["median"])
    alt = f"fisher robustness: median KL radius {format_sig(median)}"
    return f"[![{alt}]({badge_url(results)})]({link})"
