"""Hub evaluation results: legacy ``model-index`` entries and the newer ``.eval_results`` file.

Both formats carry the same three medians (KL radius, spectral norm, trace). Every value is cast
to a Python ``float`` (numpy scalars become binary YAML tags that the Hub cannot parse), and
every model-index entry shares one task, dataset and source: the Hub groups entries by
(task, dataset, config, split, revision) and takes shared fields from the first of a group, so
differing ones would silently change on reload.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import (
    EvalResult,
    EvalResultEntry,
    eval_result_entries_to_yaml,
    parse_eval_result_entries,
)

METRIC_TYPE = "fisher_robustness"
SOURCE_NAME = "hf-fisher"
SOURCE_URL = "https://pypi.org/project/hf-fisher/"
EVAL_RESULTS_FILE = ".eval_results/hf-fisher.yaml"

# (quantity, human name, direction) in the order they are reported.
HEADLINE_QUANTITIES: tuple[tuple[str, str, str], ...] = (
    ("kl_radius", "median KL radius", "higher is more robust"),
    ("spectral_norm", "median spectral norm", "lower is more robust"),
    ("trace", "median Fisher trace", "lower is more robust"),
)


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def _setup(results: dict[str, Any]) -> dict[str, Any]:
    settings = results["settings"]
    setup = {
        "estimator": str(settings["method"]),
        "input_space": str(settings["input_space"]),
        "num_samples": int(results["summary"]["num_samples"]),
        "kl_tau": float(settings["kl_tau"]),
        "hf_fisher_version": str(results["hf_fisher_version"]),
    }
    if settings.get("seed") is not None:
        setup["seed"] = int(settings["seed"])
    return setup


def build_eval_results(results: dict[str, Any]) -> list[EvalResult]:
    """Turn results into ``model-index`` entries (``metric_type: fisher_robustness``).

    Args:
        results: Validated results.

    Returns:
        One :class:`~huggingface_hub.EvalResult` per finite headline median, all in one group.
    """
    dataset = results["dataset"]
    setup = _setup(results)
    entries = []
    for quantity, name, direction in HEADLINE_QUANTITIES:
        stats = results["summary"]["metrics"][quantity]
        if not _finite(stats["median"]):
            continue
        args = {"statistic": "median", "quantity": quantity, "direction": direction, **setup}
        if _finite(stats["median_ci_low"]) and _finite(stats["median_ci_high"]):
            args["ci95_low"] = float(stats["median_ci_low"])
            args["ci95_high"] = float(stats["median_ci_high"])
        entries.append(
            EvalResult(
                task_type=results["model"]["task"],
                dataset_type=str(dataset["name"]),
                dataset_name=str(dataset["name"]),
                dataset_config=dataset.get("config"),
                dataset_split=dataset.get("split"),
                dataset_revision=dataset.get("revision"),
                metric_type=METRIC_TYPE,
                metric_name=f"{name} ({setup['input_space']}, tau={setup['kl_tau']:g})",
                metric_config=quantity,
                metric_value=float(stats["median"]),
                metric_args=args,
                source_name=SOURCE_NAME,
                source_url=SOURCE_URL,
            )
        )
    return entries


def build_eval_result_entries(results: dict[str, Any]) -> list[EvalResultEntry]:
    """Turn results into entries of the newer ``.eval_results/*.yaml`` Hub format.

    ``dataset_id`` is the evaluated dataset and ``task_id`` names the quantity, e.g.
    ``fisher_robustness/kl_radius``; the setup and the median's CI go into ``notes``.
    """
    setup = _setup(results)
    dataset = results["dataset"]
    dataset_id = str(dataset["name"])
    entries = []
    for quantity, name, direction in HEADLINE_QUANTITIES:
        stats = results["summary"]["metrics"][quantity]
        if not _finite(stats["median"]):
            continue
        notes = (
            f"hf-fisher {setup['hf_fisher_version']}: {name} ({direction}) over "
            f"{setup['num_samples']} samples of split {dataset['split']!s}; "
            f"estimator={setup['estimator']}; input_space={setup['input_space']}; "
            f"kl_tau={setup['kl_tau']:g}; seed={setup.get('seed')}; "
            f"95% CI of the median [{float(stats['median_ci_low']):.6g}, "
            f"{float(stats['median_ci_high']):.6g}]"
        )
        entries.append(
            EvalResultEntry(
                dataset_id=dataset_id,
                task_id=f"{METRIC_TYPE}/{quantity}",
                value=float(stats["median"]),
                dataset_revision=dataset.get("revision"),
                date=str(results["created"]),
                source_url=SOURCE_URL,
                source_name=SOURCE_NAME,
                notes=notes,
            )
        )
    return entries


def eval_results_yaml(results: dict[str, Any]) -> str:
    """Serialise :func:`build_eval_result_entries` to the ``.eval_results`` YAML text."""
    data = eval_result_entries_to_yaml(build_eval_result_entries(results))
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def read_eval_results(path: str | Path) -> list[EvalResultEntry]:
    """Parse an ``.eval_results`` YAML file back into entries (the round trip of the writer)."""
    return parse_eval_result_entries(yaml.safe_load(Path(path).read_text(encoding="utf-8")))


def write_eval_results(results: dict[str, Any], repo_dir: str | Path) -> Path:
    """Write ``<repo_dir>/.eval_results/hf-fisher.yaml`` and return its path."""
    path = Path(repo_dir) / EVAL_RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(eval_results_yaml(results), encoding="utf-8")
    return path
