"""Check that a results file can be reported on, beyond the schema checks of hf_fisher.results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hf_fisher.errors import ResultsError
from hf_fisher.results import load_results as load_valid_results
from hf_fisher.results import validate_results as validate_schema

TASKS = ("image-classification", "text-classification")


def validate_reportable_results(results: dict[str, Any], source: str = "results") -> dict[str, Any]:
    """Check a parsed results object against the schema and what reports need; return it.

    Reports need at least one sample, a numeric headline median with its CI, and a Hub task.

    Raises:
        ResultsError: a schema problem (see :func:`hf_fisher.results.validate_results`), no
            samples, no numeric headline, or a task the Hub model-index does not know.
    """
    validate_schema(results, source)
    regenerate = "regenerate it with `hf-fisher evaluate`"
    if not results["per_sample"]:
        raise ResultsError(
            f"{source}: per_sample is empty; nothing to report. Please {regenerate}."
        )
    headline = results["summary"]["metrics"]["kl_radius"]
    if not all(
        isinstance(headline[s], int | float) for s in ("median", "median_ci_low", "median_ci_high")
    ):
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
