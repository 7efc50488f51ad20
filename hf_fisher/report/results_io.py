"""Check that a results file can be reported on, beyond the schema checks of hf_fisher.results."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hf_fisher.errors import ResultsError
from hf_fisher.results import load_results as load_valid_results
from hf_fisher.results import validate_results as validate_schema

TASKS = (
    "image-classification",
    "text-classification",
    "text-generation",
    "token-classification",
    "image-segmentation",
    "zero-shot-image-classification",
)
NON_NEGATIVE = ("spectral_norm", "kl_radius")


def _path(parts: tuple[Any, ...]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f"{'.' if text else ''}{part}"
    return text


def _numbers(value: Any, parts: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], float]]:
    """Every float in a JSON-like value, with its path."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, (*parts, key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _numbers(item, (*parts, index))
    elif isinstance(value, float):
        yield parts, value


def non_finite_field(value: Any) -> str | None:
    """Path and value of the first NaN or infinite number in ``value``, else ``None``.

    >>> non_finite_field({"a": [1.0, float("nan")]})
    'a[1] = nan'
    """
    for parts, number in _numbers(value):
        if not math.isfinite(number):
            return f"{_path(parts)} = {number}"
    return None


def _groups(summary: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "summary", summary
    for key, group in summary["by_class"].items():
        yield f"summary.by_class.{key}", group
    for key, group in summary["by_correctness"].items():
        yield f"summary.by_correctness.{key}", group


def _check_ranges(results: dict[str, Any], source: str) -> None:
    for where, group in _groups(results["summary"]):
        accuracy = group.get("accuracy")
        if accuracy is not None and not 0 <= accuracy <= 1:
            raise ResultsError(
                f"{source}: {where}.accuracy = {accuracy!r} is not a fraction in [0, 1]. "
                "Regenerate the file with `hf-fisher evaluate`."
            )
        for quantity in NON_NEGATIVE:
            for statistic, value in group["metrics"][quantity].items():
                if value is not None and value < 0:
                    raise ResultsError(
                        f"{source}: {where}.metrics.{quantity}.{statistic} = {value!r} is "
                        f"negative; a {quantity.replace('_', ' ')} is >= 0. Regenerate the "
                        "file with `hf-fisher evaluate`."
                    )


def validate_reportable_results(results: dict[str, Any], source: str = "results") -> dict[str, Any]:
    """Check a parsed results object against the schema and what reports need; return it.

    Reports need at least one sample, a numeric headline median with its CI, a Hub task, only
    finite numbers (hf-fisher writes a non-finite value as null, and NaN slips through every
    JSON-schema bound), accuracies in [0, 1], and non-negative spectral norms and KL radii.

    Raises:
        ResultsError: a schema problem (see :func:`hf_fisher.results.validate_results`), a
            NaN/infinite or out-of-range number, no samples, no numeric headline, or a task the
            Hub model-index does not know.
    """
    validate_schema(results, source)
    regenerate = "regenerate it with `hf-fisher evaluate`"
    bad = non_finite_field(results)
    if bad is not None:
        raise ResultsError(
            f"{source}: {bad} is not a finite number; hf-fisher writes a value that is not "
            f"finite as null, so the file was edited or written by another tool. Replace it by "
            f"null or {regenerate}."
        )
    _check_ranges(results, source)
    if not results["per_sample"]:
        raise ResultsError(
            f"{source}: per_sample is empty; nothing to report. Please {regenerate}."
        )
    headline = results["summary"]["metrics"]["kl_radius"]
    missing = [
        statistic
        for statistic in ("median", "median_ci_low", "median_ci_high")
        if not isinstance(headline[statistic], int | float)
    ]
    flat = sum(row["kl_radius"] is None for row in results["per_sample"])
    if missing and flat:
        raise ResultsError(
            f"{source}: summary.metrics.kl_radius {', '.join(missing)} is null, i.e. infinite: "
            f"λ_max(F) = 0 at {flat} of {len(results['per_sample'])} samples (e.g. a saturated "
            "softmax). Cards and leaderboard entries need a finite median KL radius and CI; "
            "evaluate on inputs the model is less certain about, or in float64."
        )
    if missing:
        raise ResultsError(
            f"{source}: summary.metrics.kl_radius has no numeric median and CI (got "
            f"{headline['median']!r}); no sample was measured. Please {regenerate}."
        )
    task = results["model"]["task"]
    if task not in TASKS:
        raise ResultsError(
            f"{source}: model.task {task!r} is not one of {', '.join(TASKS)}; reports need it "
            "for the Hub model-index. Set model.task in the file or re-run `hf-fisher evaluate` "
            "with a Hugging Face classifier."
        )
    return results


def load_reportable_results(path: str | Path) -> dict[str, Any]:
    """Read a ``results.json`` and check it can be reported on.

    Raises:
        ResultsError: the file is missing, is not JSON, or fails
            :func:`validate_reportable_results`.
    """
    return validate_reportable_results(load_valid_results(path), source=str(path))
