"""The Hugging Face ``evaluate`` surface: the metric's library side, its installer, an evaluator.

The metric script ``metrics/fisher_robustness/fisher_robustness.py`` (shipped in the package as
``hf_fisher/metric_module/fisher_robustness.py``) only hands off to this module:

- :func:`per_sample_columns` scores one process's inputs (what ``add_batch`` queues), and
  :func:`scores_from_columns` turns the gathered per-sample columns into the flat result dict
  (what ``_compute`` returns). Scoring before gathering is what makes evaluate's
  ``num_process`` / ``process_id`` convention useful for a model-based metric: each process
  computes the Fisher spectra of its own shard; process 0 only summarises.
- :func:`fisher_robustness_scores` does both in one call, for direct use.
- :func:`install_metric` / :func:`ensure_metric_installed` put the script where
  ``evaluate.load("fisher_robustness")`` finds it offline (evaluate's modules cache); they live
  in the torch-free :mod:`hf_fisher._metric_install` (``import hf_fisher`` runs the check).
- :class:`FisherRobustnessEvaluator` is the evaluator-style entry point (model or pipeline plus
  a dataset), a wrapper rather than an ``evaluate.Evaluator`` subclass: see ``docs/metric.md``.

Images and texts go through an in-memory ``datasets.Dataset`` and
:func:`~hf_fisher.runner.evaluate_robustness`, so the numbers equal the Python API by
construction. Tensors (already in the model's input space) skip the dataset, which would
round them through float32 images, and go through the runner's own per-batch steps instead.
"""

from __future__ import annotations

import difflib
import math
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from hf_fisher._metric_install import (
    CACHE_FOLDER,
    METRIC_NAME,
    SCRIPT_PATH,
    ensure_metric_installed,
    install_metric,
    installed_script_path,
    modules_cache,
    script_hash,
)
from hf_fisher.errors import InputError
from hf_fisher.options import EstimatorOptions
from hf_fisher.summary import QUANTITIES, summarize

ESTIMATOR_OPTIONS = (
    "batch_size",
    *EstimatorOptions.names(),
    "kl_tau",
    "input_space",
    "device",
    "dtype",
    "label_mapping",
)
"""Keyword options that ``compute`` forwards to :func:`~hf_fisher.runner.evaluate_robustness`."""

STATISTICS = ("mean", "median", "p05", "p95", "median_ci_low", "median_ci_high")

RECORD_COLUMNS = {
    "label": "int64",
    "predicted": "int64",
    "correct": "bool",
    "probability": "float64",
    "spectral_norm": "float64",
    "trace": "float64",
    "kl_radius": "float64",
    "has_reference": "bool",
}
"""Per-sample columns that processes hand to process 0 (the metric's ``features``)."""

PER_SAMPLE_KEYS = ("spectral_norm", "trace", "kl_radius", "label", "predicted", "probability")


# --------------------------------------------------------------------------------------------
# Scoring.


def record_features():
    """The ``datasets.Features`` of the per-sample columns, for ``evaluate.MetricInfo``."""
    import datasets

    return datasets.Features({name: datasets.Value(kind) for name, kind in RECORD_COLUMNS.items()})


def check_options(options: Mapping[str, Any], allowed: Sequence[str] = ESTIMATOR_OPTIONS) -> None:
    """Reject option names that are not estimator options, suggesting the closest one.

    Args:
        options: keyword options as passed by the user.
        allowed: the names accepted here (after ``add_batch``, ``compute()`` takes only seed).

    Raises:
        InputError: for any unknown name (a typo must not be silently ignored).

    >>> check_options({"method": "exact"})
    >>> check_options({"metod": "exact"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    hf_fisher.errors.InputError: unknown option 'metod' (did you mean 'method'?); ...
    """
    for name in options:
        if name in allowed:
            continue
        if name in ESTIMATOR_OPTIONS:
            raise InputError(
                f"option {name!r} has no effect here: after add_batch(), compute() takes only "
                f"return_per_sample and {', '.join(allowed)}; pass {name} to add_batch()"
            )
        close = difflib.get_close_matches(name, ESTIMATOR_OPTIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(
            f"unknown option {name!r}{hint}; fisher_robustness accepts model, inputs, "
            f"references, return_per_sample and {', '.join(ESTIMATOR_OPTIONS)}"
        )


def _input_kind(inputs: Any) -> str:
    """Classify ``inputs``: "tensor", "image", "text", "pair" or "arrays"."""
    if isinstance(inputs, (torch.Tensor, np.ndarray)):
        if inputs.ndim == 0 or inputs.shape[0] == 0:
            raise InputError(
                f"inputs are empty (a tensor of shape {tuple(inputs.shape)}); pass at least one "
                "sample, as an (N, ...) tensor in the model's input space"
            )
        return "tensor"
    if isinstance(inputs, (str, bytes, Mapping)) or not isinstance(inputs, Sequence):
        raise InputError(
            f"got inputs of type {type(inputs).__name__}; pass a list of PIL images, a list of "
            "strings, a list of (text, text_pair) tuples, or an (N, ...) tensor"
        )
    if len(inputs) == 0:
        raise InputError("inputs are empty; pass at least one image, text or tensor row")
    kinds = {_item_kind(item) for item in inputs}
    if len(kinds) > 1:
        raise InputError(f"inputs mix {sorted(kinds)}; pass one kind of input per call")
    return kinds.pop()


def _item_kind(item: Any) -> str:
    """The kind of one input: "image", "text", "pair" or "arrays"."""
    from PIL import Image

    if isinstance(item, Image.Image):
        return "image"
    if isinstance(item, str):
        return "text"
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(p, str) for p in item):
        return "pair"
    if isinstance(item, (torch.Tensor, np.ndarray)):
        return "arrays"
    raise InputError(
        f"input of type {type(item).__name__} is not supported; pass PIL images, "
        "strings, (text, text_pair) tuples or arrays"
    )


def _labels(references: Any, num_inputs: int) -> list[int] | None:
    if references is None:
        return None
    if isinstance(references, (torch.Tensor, np.ndarray)):
        references = references.tolist()
    if isinstance(references, (str, bytes)) or not isinstance(references, Sequence):
        raise InputError(
            f"got references of type {type(references).__name__}; pass a list of integer labels"
        )
    if len(references) != num_inputs:
        raise InputError(
            f"got {num_inputs} inputs but {len(references)} references; pass one integer label "
            "per input, or omit references to use the predicted labels"
        )
    labels = []
    for index, label in enumerate(references):
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
            raise InputError(
                f"reference {index} is {label!r}; references must be integer class indices"
            )
        labels.append(int(label))
    return labels


def _check_model(model: Any) -> None:
    if model is None:
        raise InputError(
            "model is missing; pass model=<Hub id | local directory | nn.Module>, e.g. "
            'compute(model="./my-classifier", inputs=images, references=labels)'
        )


def per_sample_records(
    model: Any, inputs: Any, references: Sequence[int] | None = None, **options: Any
) -> list[dict]:
    """Per-sample records, exactly as :func:`~hf_fisher.runner.evaluate_robustness` writes them.

    Args:
        model: a Hub id, local directory, ``nn.Module`` or :class:`~hf_fisher.Classifier`.
        inputs: a list of PIL images, strings or (text, text_pair) tuples, a list of arrays,
            or an (N, ...) tensor/array in the model's input space (kept exact).
        references: integer labels, one per input: the model's class ids, or the dataset ids
            of ``label_mapping``; None uses the predicted labels.
        **options: the :data:`ESTIMATOR_OPTIONS` (batch_size, the
            :class:`~hf_fisher.options.EstimatorOptions` knobs, kl_tau, input_space, device,
            dtype, label_mapping), with the defaults of ``evaluate_robustness``;
            ``label_mapping``: model label name -> reference value, as in ``evaluate``.

    Returns:
        One record per input, in input order.

    Raises:
        InputError: an unknown option, a missing model, empty inputs, or references of the
            wrong length.
    """
    check_options(options)
    _check_model(model)
    kind = _input_kind(inputs)
    labels = _labels(references, len(inputs))
    from hf_fisher.data import InMemoryRows
    from hf_fisher.runner import evaluate_robustness

    rows = torch.as_tensor(inputs) if kind == "tensor" else list(inputs)
    report = evaluate_robustness(model, InMemoryRows(rows, labels), progress=False, **options)
    if report.results["skipped"]:
        reasons = "; ".join(f"input {s['index']}: {s['reason']}" for s in report.results["skipped"])
        raise InputError(f"some inputs could not be read ({reasons}); remove or repair them")
    return report.per_sample


def per_sample_columns(
    model: Any = None, inputs: Any = None, references: Any = None, **options: Any
) -> dict[str, list]:
    """Score one batch and return it as the metric's feature columns (what ``add_batch`` adds).

    Raises:
        InputError: an unknown option, a missing model, empty inputs, mismatched references.
    """
    records = per_sample_records(model, inputs, references, **options)
    columns = {name: [record.get(name) for record in records] for name in RECORD_COLUMNS}
    columns["has_reference"] = [references is not None] * len(records)
    return columns


def _number(value: float | None) -> float:
    """Statistics are null in results.json where infinite (F = 0); the metric says inf."""
    return math.inf if value is None else float(value)


def flatten_results(summary: Mapping, per_sample: Sequence[Mapping] | None = None) -> dict:
    """The flat metric dict of a results ``summary`` (plus per-sample lists if given).

    Keys are ``<quantity>_<statistic>`` for quantities spectral_norm, trace, kl_radius and
    statistics mean, median, p05, p95, median_ci_low, median_ci_high, then ``accuracy`` and
    ``num_samples``. Values are plain Python floats (``num_samples`` an int), so
    ``evaluate.save`` and ``json.dump`` take them; infinite statistics are ``inf``, and
    ``accuracy`` is ``nan`` when no references were given (the labels are the predictions).
    """
    flat: dict[str, Any] = {}
    for quantity in QUANTITIES:
        for statistic in STATISTICS:
            flat[f"{quantity}_{statistic}"] = _number(summary["metrics"][quantity][statistic])
    flat["accuracy"] = math.nan if summary["accuracy"] is None else float(summary["accuracy"])
    flat["num_samples"] = int(summary["num_samples"])
    if per_sample is not None:
        for key in PER_SAMPLE_KEYS:
            values = [record[key] for record in per_sample]
            if key in ("label", "predicted"):
                flat[key] = [int(value) for value in values]
            else:
                flat[key] = [_number(value) for value in values]
    return flat


def scores_from_columns(
    columns: Mapping[str, Sequence], *, return_per_sample: bool = False, seed: int = 0
) -> dict:
    """Summarise gathered per-sample columns into the flat metric dict (what ``_compute`` does).

    Args:
        columns: the :data:`RECORD_COLUMNS`, one value per sample.
        return_per_sample: add per-sample lists.
        seed: seed of the bootstrap confidence interval (the estimator seed, as in the runner).

    Raises:
        InputError: if there are no samples.
    """
    names = list(RECORD_COLUMNS)
    rows = zip(*(columns[name] for name in names), strict=True)
    records = [dict(zip(names, row, strict=True)) for row in rows]
    if not records:
        raise InputError("no samples to score; pass model= and a non-empty inputs= to compute()")
    records = [{**r, "label": int(r["label"]), "predicted": int(r["predicted"])} for r in records]
    summary = summarize(records, seed=seed)
    if not all(record["has_reference"] for record in records):
        summary["accuracy"] = None  # the labels are the predictions: 1.0 by construction
    return flatten_results(summary, records if return_per_sample else None)


def fisher_robustness_scores(
    model: Any,
    inputs: Any,
    references: Sequence[int] | None = None,
    *,
    return_per_sample: bool = False,
    **options: Any,
) -> dict:
    """The metric in one call: Fisher robustness scores of ``model`` on ``inputs``.

    Equal to ``flatten_results`` of :func:`~hf_fisher.runner.evaluate_robustness` on the same
    inputs and options. ``options`` are the :data:`ESTIMATOR_OPTIONS`; unknown names raise.

    Returns:
        A flat dict: ``spectral_norm_mean``, ``spectral_norm_median``, ..., ``trace_mean``, ...,
        ``kl_radius_median``, ..., ``accuracy``, ``num_samples`` (+ per-sample lists).
    """
    columns = per_sample_columns(model, inputs, references, **options)
    return scores_from_columns(
        columns,
        return_per_sample=return_per_sample,
        seed=options.get("seed", EstimatorOptions.seed),
    )


# --------------------------------------------------------------------------------------------
# Evaluator-style entry point.

TASKS = ("image-classification", "text-classification")


class FisherRobustnessEvaluator:
    """``evaluate.evaluator``-style: a model or pipeline plus a dataset in, flat scores out.

    evaluate's own ``Evaluator`` passes only predictions and references to its metric, and
    fails on pipeline objects under transformers 5, so this wraps the runner instead of
    subclassing it: a pipeline is saved (model + processor/tokenizer) to a temporary
    directory and loaded from there, so exactly the pipeline's weights are measured.

    Args:
        task: "image-classification" or "text-classification"; the model must match it.
    """

    def __init__(self, task: str = "image-classification") -> None:
        if task not in TASKS:
            raise InputError(f"got task {task!r}; fisher_robustness supports {list(TASKS)}")
        self.task = task

    def compute(
        self,
        model_or_pipeline: Any = None,
        data: Any = None,
        *,
        subset: str | None = None,
        split: str | None = None,
        input_column: str | Sequence[str] | None = None,
        label_column: str | None = None,
        num_samples: int | None = None,
        return_per_sample: bool = False,
        metric: Any = None,
        label_mapping: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> dict:
        """Score ``model_or_pipeline`` on ``data`` (a ``datasets.Dataset``, name or directory).

        Args:
            model_or_pipeline: a transformers ``Pipeline``, Hub id, directory or model.
            data: as ``evaluate_robustness``'s ``dataset``.
            subset, split: dataset configuration and split.
            input_column, label_column: column names (default: detected; a list for pairs).
            num_samples: a deterministic sample of this many rows.
            return_per_sample: add per-sample lists.
            metric: accepted as ``evaluate.evaluator(...).compute`` takes it: None,
                ``"fisher_robustness"`` or the loaded module; this evaluator computes no other.
            label_mapping: the model's label name -> the dataset's label (its id or name), as
                in ``evaluate``'s evaluators (e.g. ``{"NEGATIVE": 0, "POSITIVE": 1}``); without
                it, the dataset's label names are matched to the model's by name.
            **options: the other :data:`ESTIMATOR_OPTIONS`.

        Returns:
            The same flat dict as the metric.

        Raises:
            InputError: a missing model, another metric, an unknown option, or a model of
                another task.
        """
        from hf_fisher.runner import evaluate_robustness

        _check_model(model_or_pipeline)
        _check_metric(metric)
        check_options(options)
        if label_mapping is not None:
            options["label_mapping"] = label_mapping
        columns = [input_column] if isinstance(input_column, str) else input_column
        with tempfile.TemporaryDirectory(prefix="hf-fisher-pipeline-") as scratch:
            model = _model_of(model_or_pipeline, scratch)
            report = evaluate_robustness(
                model,
                data,
                config=subset,
                split=split,
                num_samples=num_samples,
                input_columns=list(columns) if columns else None,
                label_column=label_column,
                progress=False,
                **options,
            )
        task = report.results["model"]["task"]
        if task is not None and task != self.task:
            raise InputError(
                f"this evaluator is for {self.task} but the model is a {task} model; use "
                f"fisher_evaluator({task!r})"
            )
        return flatten_results(report.summary, report.per_sample if return_per_sample else None)


def _check_metric(metric: Any) -> None:
    """Accept ``metric=`` only when it names this metric (evaluate's evaluators take one)."""
    name = metric if metric is None or isinstance(metric, str) else getattr(metric, "name", None)
    if name not in (None, METRIC_NAME):
        raise InputError(
            f"got metric={metric!r:.80}; this evaluator computes {METRIC_NAME} only: leave "
            f"metric out, or compute {name!r} with evaluate.evaluator(task).compute(...)"
        )


def _model_of(model_or_pipeline: Any, scratch: str) -> Any:
    """A pipeline becomes the directory it is saved to; anything else passes through."""
    from hf_fisher.adapters import is_pipeline

    if is_pipeline(model_or_pipeline):
        model_or_pipeline.save_pretrained(scratch)
        return scratch
    return model_or_pipeline


def fisher_evaluator(task: str = "image-classification") -> FisherRobustnessEvaluator:
    """The counterpart of ``evaluate.evaluator(task)`` for Fisher robustness.

    >>> fisher_evaluator("text-classification").task
    'text-classification'
    """
    return FisherRobustnessEvaluator(task)


__all__ = [
    "CACHE_FOLDER",
    "ESTIMATOR_OPTIONS",
    "FisherRobustnessEvaluator",
    "METRIC_NAME",
    "SCRIPT_PATH",
    "ensure_metric_installed",
    "fisher_evaluator",
    "fisher_robustness_scores",
    "flatten_results",
    "install_metric",
    "installed_script_path",
    "modules_cache",
    "per_sample_columns",
    "per_sample_records",
    "scores_from_columns",
    "script_hash",
]
