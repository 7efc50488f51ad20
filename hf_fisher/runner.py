"""The dataset runner: dataset -> batches -> process shards -> per-sample records -> results.

The same code runs on one CPU, several CPU processes (``torchrun``) or N GPUs (``accelerate
launch``): samples are split into contiguous shards by process rank, each process appends its
records to its own file as it goes (so a killed run resumes where it stopped), and the main
process gathers everything and writes ``results.json``.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_fisher.adapters import Classifier, load_classifier
from hf_fisher.companions import CompanionOptions, check_companions, run_companions
from hf_fisher.data import (
    InMemoryRows,
    decode_rows,
    detect_columns,
    label_domain,
    load_any_dataset,
    sample_indices,
)
from hf_fisher.digits import DEFAULT_MODEL_DIR as BUNDLED_MODEL_DIR
from hf_fisher.errors import DatasetError, InputError, ResultsError
from hf_fisher.labels import align_labels, check_label_mapping
from hf_fisher.results import RESULTS_FILE, SCHEMA_VERSION, to_jsonable, write_results
from hf_fisher.spectrum import FisherSpectrum, spectrum_of_prepared
from hf_fisher.summary import kl_radius, summarize

logger = logging.getLogger(__name__)

BUNDLED_MODEL_ID = "hf_fisher/assets/digits-resnet"
PARTIAL_DIR = "partial"
RUN_FILE = "run.json"
PACKAGES = (
    "hf-fisher",
    "torch",
    "transformers",
    "datasets",
    "accelerate",
    "evaluate",
    "huggingface_hub",
    "numpy",
)


@dataclass
class RobustnessReport:
    """What :func:`evaluate_robustness` returns: the results dict and where it was written."""

    results: dict
    out_dir: Path | None

    @property
    def summary(self) -> dict:
        """The ``summary`` section."""
        return self.results["summary"]

    @property
    def per_sample(self) -> list[dict]:
        """The per-sample records, in dataset order."""
        return self.results["per_sample"]

    def format_summary(self) -> str:
        """A short terminal table of the headline statistics."""
        summary = self.summary
        settings = self.results["settings"]
        lines = [
            f"model {self.results['model']['id']}  dataset {self.results['dataset']['name']}"
            f" [{self.results['dataset']['split']}]  method {settings['method']}"
            f"  input space {settings['input_space']}",
            f"samples {summary['num_samples']}  accuracy "
            + ("n/a" if summary["accuracy"] is None else f"{summary['accuracy']:.4f}")
            + (f"  skipped {len(self.results['skipped'])}" if self.results["skipped"] else ""),
            f"{'quantity':<14}{'mean':>11}{'median':>11}{'p05':>11}{'p95':>11}"
            f"{'median 95% CI':>25}",
        ]
        for name, stats in summary["metrics"].items():
            cells = [_fmt(stats[key]) for key in ("mean", "median", "p05", "p95")]
            interval = f"[{_fmt(stats['median_ci_low'])}, {_fmt(stats['median_ci_high'])}]"
            lines.append(f"{name:<14}" + "".join(f"{c:>11}" for c in cells) + f"{interval:>25}")
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "inf" if value is None else f"{value:.4g}"


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that shape the numbers, for provenance."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def make_state(device: str | None = None):
    """An accelerate ``PartialState``: CPU (gloo under torchrun) unless CUDA is asked for/there."""
    from accelerate import PartialState

    use_cpu = device == "cpu" or (device is None and not torch.cuda.is_available())
    return PartialState(cpu=use_cpu)


def _dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """The compute dtype; None keeps the model's own (float32 for Hub checkpoints)."""
    options = {None: None, "float32": torch.float32, "float64": torch.float64}
    if isinstance(name, torch.dtype):
        name = str(name).removeprefix("torch.")
    if name not in options:
        raise InputError(
            f"dtype {name!r} is not supported for Fisher products; use float32 (default) or "
            "float64 (reference runs). Half precision loses the small class probabilities"
        )
    return options[name]


def _fingerprint(classifier: Classifier, dataset_info: dict, settings: dict) -> dict:
    ignored = {"batch_size"}
    model = {k: classifier.source.get(k) for k in ("id", "revision", "commit_hash")}
    if model["id"] and Path(model["id"]).exists():  # the same folder, however it was spelled
        model["id"] = str(Path(model["id"]).resolve())
    return {
        "model": model,
        "dataset": dataset_info,
        "settings": {k: v for k, v in settings.items() if k not in ignored},
    }


def _short(value: Any) -> Any:
    return f"{len(value)} items" if isinstance(value, list) and len(value) > 8 else value


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: partial run has {_short(a)!r}, this run {_short(b)!r}")
    return found


def _read_partial(directory: Path) -> list[dict]:
    """Read every rank's record file; drop a torn last line left by a kill."""
    records = []
    for path in sorted(directory.glob("records-*.jsonl")):
        data = path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            path.write_bytes(complete)
        for line in complete.decode("utf-8").splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records


def _records_from_spectrum(
    spectrum: FisherSpectrum, indices: list[int], labels: list[int] | None, kl_tau: float
) -> list[dict]:
    probabilities = spectrum.probabilities
    predicted = spectrum.predicted.tolist()
    records = []
    for row, index in enumerate(indices):
        label = predicted[row] if labels is None else labels[row]
        norm = float(spectrum.spectral_norm[row])
        record = {
            "index": index,
            "label": int(label),
            "predicted": int(predicted[row]),
            "probability": float(probabilities[row, predicted[row]]),
            "correct": bool(predicted[row] == label),
            "spectral_norm": norm,
            "trace": float(spectrum.trace[row]),
            "kl_radius": kl_radius(norm, kl_tau),
            "method": spectrum.method,
        }
        if spectrum.converged is not None:
            record["converged"] = bool(spectrum.converged[row])
            record["iterations"] = int(spectrum.iterations[row])
        if spectrum.trace_standard_error is not None:
            record["trace_standard_error"] = float(spectrum.trace_standard_error[row])
        if spectrum.spectral_norm_ci is not None:
            record["spectral_norm_ci"] = spectrum.spectral_norm_ci[row].tolist()
            record["trace_ci"] = spectrum.trace_ci[row].tolist()
        if spectrum.eigenvalues.shape[1] > 1:
            record["eigenvalues"] = spectrum.eigenvalues[row].tolist()
        records.append(to_jsonable(record))
    return records


def _spectrum_with_oom_retry(classifier, batch, ids, options) -> tuple[FisherSpectrum, int]:
    """Compute a batch; on CUDA out-of-memory, halve it and retry. Returns the size that ran."""
    size = len(batch)
    while True:
        try:
            spectrum = spectrum_of_prepared(
                classifier, batch, batch_size=size, sample_ids=ids, **options
            )
            return spectrum, size
        except torch.OutOfMemoryError:
            if size == 1:
                raise
            size = max(1, size // 2)
            torch.cuda.empty_cache()
            logger.warning("CUDA out of memory: retrying with batch size %d", size)


def evaluate_robustness(
    model: Any = None,
    dataset: Any = None,
    *,
    split: str | None = None,
    config: str | None = None,
    num_samples: int | None = None,
    batch_size: int = 32,
    method: str = "auto",
    black_box: bool = False,
    top_k: int = 1,
    max_iter: int | None = None,
    tol: float = 1e-3,
    num_queries: int | None = None,
    num_probes: int = 16,
    seed: int = 0,
    kl_tau: float = 0.01,
    input_columns: list[str] | None = None,
    label_column: str | None = None,
    input_space: str | None = None,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    trust_remote_code: bool = False,
    companions: CompanionOptions | None = None,
    labels: list[int] | None = None,
    label_mapping: dict[str, int | str] | None = None,
) -> RobustnessReport:
    """Evaluate per-sample Fisher robustness of a classifier on a dataset split.

    With no ``model``, evaluates the bundled digits ResNet on its held-out digits split.

    Args:
        model: a Hub id, local directory, ``nn.Module`` or :class:`~hf_fisher.Classifier`.
        dataset: a Hub name, ``load_dataset`` kwargs, local directory, ``datasets.Dataset``,
            or an (N, ...) tensor / array in the model's input space (kept exact).
        split, config: the dataset split (default "test") and configuration.
        num_samples: evaluate a deterministic sample of this many rows (default all).
        batch_size: samples per batch (halved automatically on CUDA out-of-memory).
        method, black_box, top_k, max_iter, tol, num_queries, num_probes, seed: estimator
            options of :func:`~hf_fisher.fisher_spectrum`.
        kl_tau: KL level that defines ``kl_radius = sqrt(2 kl_tau / lambda_max)``.
        input_columns, label_column: override column detection (two input columns for text
            pairs). Without a label column, predicted labels are used and the file says so.
        input_space: "pixels" (default for images), "normalized" or "embeddings".
        device, dtype: where and in what precision to compute (float32 or float64).
        out_dir: write results.json, per_sample.csv and resumable partial records here.
        overwrite: replace results already in ``out_dir``.
        resume: continue a killed run in ``out_dir``, computing only missing samples.
        progress: show a progress bar (main process only).
        trust_remote_code: allow Hub models with custom code (off by default).
        labels: integer labels of a tensor ``dataset`` (None: predicted labels are used).
        label_mapping: the model's label name -> the dataset's label (its id or name), as in
            ``evaluate``'s evaluators. Without it, named dataset labels (``ClassLabel`` or
            strings) are matched to the model's ``id2label`` by name (refused if any does not
            match) and integer labels are the model's ids; see :mod:`hf_fisher.labels`.
        companions: companion measurements (attacks, noise curves, KL check, CLEVER,
            frequency view) to run on the first evaluated samples, by the main process.

    Returns:
        A :class:`RobustnessReport`.
    """
    started = time.perf_counter()
    state = make_state(device)
    compute_dtype = _dtype(dtype)
    label_mapping = check_label_mapping(label_mapping)
    if model is None:
        from hf_fisher.digits import load_digits_dataset

        model = str(BUNDLED_MODEL_DIR)
        if dataset is None:
            dataset = load_digits_dataset(split or "test")  # refuses splits it does not have
            dataset.info.dataset_name = "sklearn-digits"
    if dataset is None:
        raise DatasetError("no dataset given; pass --dataset (a Hub name or a local directory)")
    if isinstance(dataset, (torch.Tensor, np.ndarray)):
        dataset = InMemoryRows(torch.as_tensor(dataset), labels)
    elif labels is not None:
        raise DatasetError(
            "labels= goes with a tensor dataset; for a datasets.Dataset name its label column "
            "with label_column="
        )
    classifier = load_classifier(
        model,
        input_space=input_space,
        device=state.device,
        dtype=compute_dtype,
        trust_remote_code=trust_remote_code,
    )
    if classifier.dtype not in (torch.float32, torch.float64):
        raise InputError(
            f"the model computes in {classifier.dtype}; pass dtype='float32' (default) or "
            "'float64': half precision loses the small class probabilities of the Fisher"
        )
    if str(model) == str(BUNDLED_MODEL_DIR):
        classifier.source["id"] = BUNDLED_MODEL_ID
    if companions is not None and companions.requested:
        check_companions(classifier, companions)
    rows, dataset_name, split = load_any_dataset(dataset, split=split, config=config)
    columns, label_col, modality = detect_columns(
        rows, input_columns=input_columns, label_column=label_column
    )
    alignment = None
    if label_col is not None:
        names, values = label_domain(rows, label_col)
        alignment = align_labels(
            classifier.id2label, names=names, values=values, label_mapping=label_mapping
        )
    elif label_mapping is not None:
        raise DatasetError("label_mapping was given, but the dataset has no label column")
    indices = sample_indices(len(rows), num_samples, seed)
    settings = {
        "requested_method": method,
        "black_box": black_box,
        "input_space": classifier.input_space,
        "top_k": top_k,
        "tol": tol,
        "max_iter": max_iter,
        "num_queries": num_queries,
        "num_probes": num_probes,
        "seed": seed,
        "batch_size": batch_size,
        "dtype": str(classifier.dtype).removeprefix("torch."),
        "kl_tau": kl_tau,
    }
    dataset_info = {
        "name": dataset_name,
        "config": config,
        "split": split,
        "num_rows": len(rows),
        "indices": indices,
        "input_columns": columns,
        "label_column": label_col,
        "labels_from": "dataset" if label_col else "predictions",
        "label_mapping": None if alignment is None else alignment.recorded,
        "label_mapping_source": None if alignment is None else alignment.source,
    }
    if label_col is None:
        logger.warning("dataset has no label column: predicted labels are used as labels")
    fingerprint = _fingerprint(classifier, dataset_info, settings)
    directory = Path(out_dir) if out_dir is not None else None
    done: list[dict] = []
    if directory is not None:
        done = _prepare_directory(directory, fingerprint, overwrite, resume, state)
    finished = {record["index"] for record in done}
    pending = [index for index in indices if index not in finished]

    shard = _shard(pending, state.num_processes, state.process_index)
    steps = (
        math.ceil(
            max(len(_shard(pending, state.num_processes, r)) for r in range(state.num_processes))
            / batch_size
        )
        if pending
        else 0
    )
    options = {
        "method": method,
        "black_box": black_box,
        "top_k": top_k,
        "max_iter": max_iter,
        "tol": tol,
        "num_queries": num_queries,
        "num_probes": num_probes,
        "seed": seed,
    }
    records: list[dict] = []
    used_batch_sizes: set[int] = set()
    record_file = None
    if directory is not None:
        record_file = open(  # noqa: SIM115 - kept open for the whole loop, closed below
            directory / PARTIAL_DIR / f"records-{state.process_index}.jsonl",
            "a",
            encoding="utf-8",
        )
    bar = _progress_bar(len(pending), progress and state.is_main_process)
    try:
        for step in range(steps):
            batch_indices = shard[step * batch_size : (step + 1) * batch_size]
            new: list[dict] = []
            if batch_indices:
                decoded = decode_rows(rows, batch_indices, columns, label_col, modality, alignment)
                new += [{**skip, "skipped": True} for skip in decoded.skipped]
                if decoded.indices:
                    prepared = classifier.prepare(decoded.inputs)
                    _check_label_range(decoded.labels, classifier.num_classes, label_col)
                    spectrum, used = _spectrum_with_oom_retry(
                        classifier, prepared, decoded.indices, options
                    )
                    used_batch_sizes.add(used)
                    new += _records_from_spectrum(spectrum, decoded.indices, decoded.labels, kl_tau)
            if record_file is not None and new:
                record_file.write("".join(json.dumps(r) + "\n" for r in new))
                record_file.flush()
                os.fsync(record_file.fileno())
            records += new
            bar.update(_global_count(len(batch_indices), state))
    finally:
        bar.close()
        if record_file is not None:
            record_file.close()

    from accelerate.utils import gather_object

    if state.num_processes > 1:
        records = gather_object(records)
        used_batch_sizes = set(gather_object(sorted(used_batch_sizes)))
    everything = {record["index"]: record for record in done + records}
    ordered = [everything[index] for index in indices if index in everything]
    skipped = [{"index": r["index"], "reason": r["reason"]} for r in ordered if r.get("skipped")]
    per_sample = [r for r in ordered if not r.get("skipped")]
    if not per_sample:
        raise DatasetError(f"no sample could be evaluated ({len(skipped)} unreadable rows)")
    resolved = sorted({record["method"] for record in per_sample})
    summary = summarize(per_sample, seed=seed)
    if label_col is None:
        summary["accuracy"] = None  # the labels are the predictions: 1.0 by construction
    results = {
        "schema_version": SCHEMA_VERSION,
        "hf_fisher_version": package_versions()["hf-fisher"] or "0+unknown",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {
            **{k: classifier.source.get(k) for k in ("id", "revision", "commit_hash")},
            "architecture": classifier.source.get("architecture")
            or type(classifier.model).__name__,
            "task": classifier.source.get("task"),
            "num_classes": classifier.num_classes,
            "id2label": {str(k): str(v) for k, v in classifier.id2label.items()},
        },
        "dataset": dataset_info,
        "settings": {
            **settings,
            "method": "+".join(resolved),
            "batch_sizes_used": sorted(used_batch_sizes),
        },
        "environment": {
            "device": _describe_device(state.device),
            "num_processes": state.num_processes,
            "wall_time_s": time.perf_counter() - started,
            "packages": package_versions(),
        },
        "summary": summary,
        "per_sample": per_sample,
        "skipped": skipped,
    }
    if companions is not None and companions.requested and state.is_main_process:
        companions_started = time.perf_counter()
        chosen = per_sample[: companions.num_samples]
        decoded = decode_rows(
            rows, [r["index"] for r in chosen], columns, label_col, modality, alignment
        )
        sections = run_companions(
            classifier,
            classifier.prepare(decoded.inputs),
            torch.tensor([r["label"] for r in chosen]),
            torch.tensor([r["spectral_norm"] for r in chosen], dtype=torch.float64),
            companions,
            seed=seed,
        )
        for section in sections.values():
            section["sample_indices"] = decoded.indices  # per-sample lists follow this order
        results.update(sections)
        results["settings"]["companions"] = companions.settings()
        results["environment"]["companions_wall_time_s"] = time.perf_counter() - companions_started
    results = to_jsonable(results)
    if directory is not None and state.is_main_process:
        write_results(results, directory)
        shutil.rmtree(directory / PARTIAL_DIR, ignore_errors=True)
    state.wait_for_everyone()
    return RobustnessReport(results, directory)


def _check_label_range(labels: list[int] | None, num_classes: int, column: str | None) -> None:
    """Labels must be class indices of this model; a -1 test split has no labels at all."""
    bad = sorted({label for label in labels or () if not 0 <= label < num_classes})
    if bad:
        raise DatasetError(
            f"labels {bad[:10]} in column {column!r} are outside [0, {num_classes}) for this "
            "model; choose the dataset/split the model was trained for, another "
            "--label-column, or a split with labels (test splits with -1 have none)"
        )


def _shard(items: list[int], num_processes: int, rank: int) -> list[int]:
    """Contiguous, deterministic, non-overlapping shard; no padding, nothing dropped."""
    base, extra = divmod(len(items), num_processes)
    start = rank * base + min(rank, extra)
    return items[start : start + base + (1 if rank < extra else 0)]


def _global_count(count: int, state) -> int:
    if state.num_processes == 1:
        return count
    total = torch.tensor([count], device=state.device)
    torch.distributed.all_reduce(total)
    return int(total.item())


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="sample", desc="Fisher", smoothing=0.1)


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return str(device)


def _prepare_directory(
    directory: Path, fingerprint: dict, overwrite: bool, resume: bool, state
) -> list[dict]:
    """Check/prepare ``directory``; return records of a partial run when resuming."""
    partial = directory / PARTIAL_DIR
    run_file = partial / RUN_FILE
    done: list[dict] = []
    has_results = (directory / RESULTS_FILE).exists()
    if resume and run_file.exists():
        previous = json.loads(run_file.read_text(encoding="utf-8"))
        differences = _differences(previous, json.loads(json.dumps(to_jsonable(fingerprint))))
        if differences:
            raise ResultsError(
                "refusing to resume: this run differs from the partial run in "
                f"{directory}:\n  - "
                + "\n  - ".join(differences)
                + "\nrerun with the original options, or use --overwrite to start again"
            )
        state.wait_for_everyone()
        if state.is_main_process:
            _read_partial(partial)  # trims torn lines before anyone appends
        state.wait_for_everyone()
        done = _read_partial(partial)
    elif resume and has_results:
        raise ResultsError(
            f"{directory} holds a finished run ({RESULTS_FILE}); nothing to resume. Use "
            "--overwrite to recompute it"
        )
    elif (has_results or partial.exists()) and not (overwrite or (resume and not has_results)):
        what = RESULTS_FILE if has_results else "a partial run"
        raise ResultsError(
            f"{directory} already holds {what}; pass --resume to continue a partial run or "
            "--overwrite to replace it"
        )
    else:
        state.wait_for_everyone()
        if state.is_main_process:
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir(parents=True, exist_ok=True)
            from hf_fisher.results import atomic_write_text

            atomic_write_text(run_file, json.dumps(to_jsonable(fingerprint), indent=2))
        state.wait_for_everyone()
    return done
