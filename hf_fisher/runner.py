"""The dataset runner: dataset -> batches -> process shards -> per-sample records -> results.

The same code runs on one CPU, several CPU processes (``torchrun``) or N GPUs (``accelerate
launch``): samples are split into contiguous shards by process rank, each process appends its
records to its own file as it goes (so a killed run resumes where it stopped), and the main
process gathers everything and writes ``results.json``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import numbers
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_fisher._content import dataset_content, model_content
from hf_fisher._device import tf32_mode
from hf_fisher._progress import ProgressCallback
from hf_fisher.adapters import Classifier, load_classifier
from hf_fisher.companions import Companion, check_companions, companion_headlines, run_companions
from hf_fisher.data import (
    InMemoryRows,
    check_data_source,
    check_streamable,
    decode_rows,
    detect_columns,
    is_stream,
    known_num_rows,
    label_domain,
    load_any_dataset,
    planned_indices,
    recorded_data_files,
)
from hf_fisher.digits import DEFAULT_MODEL_DIR as BUNDLED_MODEL_DIR
from hf_fisher.errors import DatasetError, InputError, ResultsError
from hf_fisher.estimators.registry import method_spec
from hf_fisher.flip import flip_radius, kl_to_flip
from hf_fisher.labels import align_labels, check_label_mapping, label_set
from hf_fisher.memory import chunk_size, is_out_of_memory, resolve_budget, working_memory
from hf_fisher.options import (
    DEFAULT_HYPOTHESIS_TEMPLATE,
    CompanionOptions,
    EstimatorOptions,
    RunOptions,
    SourceOptions,
    ZeroShotOptions,
)
from hf_fisher.paper_compat import (
    PAPER_COMPAT,
    apply_paper_compat,
    apply_paper_compat_companions,
    check_paper_compat_space,
)
from hf_fisher.prefetch import ReadyBatch, RowReader, WaitClock, prefetched, shard_of_stream
from hf_fisher.results import (
    RESULTS_FILE,
    SCHEMA_VERSION,
    TABLE_FILE,
    atomic_write_text,
    to_jsonable,
    write_results,
)
from hf_fisher.spectrum import (
    FisherSpectrum,
    per_sample_memory,
    resolve_run_method,
    spectrum_of_prepared,
)
from hf_fisher.summary import kl_radius, summarize

logger = logging.getLogger(__name__)

BUNDLED_MODEL_ID = "hf_fisher/assets/digits-resnet"
NO_SOURCE = SourceOptions()
"""No revisions and no data files: where a run's model and data are named by themselves."""
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
            + (
                f"  next-token accuracy {summary['position_accuracy']:.4f}"
                if summary.get("position_accuracy") is not None
                else ""
            )
            + (f"  skipped {len(self.results['skipped'])}" if self.results["skipped"] else ""),
            f"{'quantity':<14}{'mean':>11}{'median':>11}{'p05':>11}{'p95':>11}"
            f"{'median 95% CI':>25}",
        ]
        for name, stats in summary["metrics"].items():
            cells = [_fmt(stats[key]) for key in ("mean", "median", "p05", "p95")]
            interval = f"[{_fmt(stats['median_ci_low'])}, {_fmt(stats['median_ci_high'])}]"
            lines.append(f"{name:<14}" + "".join(f"{c:>11}" for c in cells) + f"{interval:>25}")
        return "\n".join(lines + self._companion_lines())

    def _companion_lines(self) -> list[str]:
        """Two lines per companion measurement, after the Fisher table (none without any)."""
        found = companion_headlines(self.results)
        if not found:
            return []
        counts = {len(self.results[name].get("sample_indices", ())) for name in found}
        lines = [f"companion measurements on {'/'.join(map(str, sorted(counts)))} samples"]
        for name, headline in found.items():
            first, second = headline.lines
            lines += [f"{name:<14}{first}", f"{'':<14}{second}"]
        return lines

    def summary_json(self) -> dict:
        """The summary as one JSON document (``hf-fisher evaluate --json``).

        The ``summary`` section of results.json, what was evaluated, and each companion's
        headline numbers (:mod:`hf_fisher.headlines`).
        """
        results = self.results
        return {
            "model": results["model"]["id"],
            "dataset": {key: results["dataset"][key] for key in ("name", "config", "split")},
            "method": results["settings"]["method"],
            "input_space": results["settings"]["input_space"],
            "skipped": len(results["skipped"]),
            "summary": self.summary,
            "companions": {
                name: headline.values for name, headline in companion_headlines(results).items()
            },
        }


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

    if device is None:
        use_cpu = not torch.cuda.is_available()
    else:
        use_cpu = torch.device(device).type == "cpu"
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


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_device(device: str | None) -> None:
    """Refuse a device torch does not know, or one this machine does not have."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as error:
        raise InputError(
            f"--device {device!r} is not a device torch knows ({str(error).splitlines()[0]}); "
            "use cpu, cuda or cuda:N"
        ) from error
    if parsed.type == "cpu":
        return
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"--device {device!r} asks for CUDA, but torch {torch.__version__} sees no CUDA "
                "device here; use --device cpu, or run on a GPU machine with a CUDA build of torch"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise InputError(
                f"--device {device!r}: this machine has {count} CUDA device(s), cuda:0 to "
                f"cuda:{count - 1}"
            )
        return
    accelerator = (
        torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    )
    if accelerator is None or accelerator.type != parsed.type:
        raise InputError(
            f"--device {device!r}: no {parsed.type} device is available here; use --device cpu"
            + (f" or {accelerator.type}" if accelerator is not None else "")
        )


def _compute_device(device: str | None, state) -> torch.device:
    """Where the model goes: an explicit ``cuda:N`` in one process, else the process's own."""
    if device is None or torch.device(device).index is None:
        return state.device
    if state.num_processes > 1:
        raise InputError(
            f"--device {device!r} names one device, but this run has {state.num_processes} "
            f"processes, each on its own; pass --device {torch.device(device).type}"
        )
    return torch.device(device)


def _check_out_dir(directory: Path) -> None:
    """Fail before the model loads when ``directory`` cannot hold results.

    Also refuses a ``partial/`` folder that hf-fisher did not make: it must never touch it.
    """
    if directory.exists() and not directory.is_dir():
        raise ResultsError(
            f"--out {directory} is a file; pass a directory (it is created if missing)"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=directory, prefix=".hf-fisher-probe-")
        try:
            os.write(handle, b"hf-fisher write probe\n")
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as error:
        raise ResultsError(
            f"cannot write to --out {directory}: {error.strerror or error}; choose a directory "
            "you can write to (and with free space)"
        ) from error
    partial = directory / PARTIAL_DIR
    if partial.exists() and not (partial / RUN_FILE).is_file():
        raise ResultsError(
            f"{partial} was not made by hf-fisher (it has no {RUN_FILE}); hf-fisher keeps its "
            "resumable records in that folder and will not write into or delete yours: move "
            "it away or choose another --out"
        )


def _input_numel(classifier: Classifier) -> int:
    """Numbers per sample in the input space, for the memory check of ``auto``.

    For text, at the longest input the model takes: padded lengths vary between batches.
    """
    if classifier.input_shape is not None:
        return math.prod(classifier.input_shape)
    limits = (
        getattr(getattr(classifier, "tokenizer", None), "model_max_length", None),
        getattr(classifier.model.config, "max_position_embeddings", None),
    )
    lengths = [int(x) for x in limits if _is_int(x) and 0 < x < 1_000_000] or [512]
    return min(lengths) * classifier.embeddings.embedding_dim


def run_method(
    classifier: Classifier, method: str, black_box: bool, batch_size: int, input_numel: int
) -> str:
    """Resolve ``auto`` once for the whole run, from the configured batch size.

    Resolved per batch, the memory check of ``auto`` gave full batches ``lanczos`` (with a
    stochastic trace) and short last batches, smaller shards, OOM retries and resumed
    remainders ``exact``: two estimators in one run.
    """
    return resolve_run_method(classifier, method, black_box, batch_size, input_numel)


def _fingerprint(classifier: Classifier, dataset_info: dict, settings: dict, content: dict) -> dict:
    # only rounding depends on these; the method the batch size may pick is listed
    ignored = {"batch_size", "max_memory"}
    model = {k: classifier.source.get(k) for k in ("id", "revision", "commit_hash")}
    if model["id"] and Path(model["id"]).exists():  # the same folder, however it was spelled
        model["id"] = str(Path(model["id"]).resolve())
    model.update(_zero_shot_section(classifier))  # a zero-shot model's classes are its prompts
    return {
        "model": {**model, "content": content["model"]},
        "dataset": {**dataset_info, "content": content["dataset"]},
        "settings": {k: v for k, v in settings.items() if k not in ignored},
    }


def _content(model: Any, classifier: Classifier, dataset: Any, rows: Any, state) -> dict:
    """Content hashes of the weights and the data, computed once and shared by all ranks."""
    content = [None]
    if state.is_main_process:
        content[0] = {
            "model": model_content(
                model, classifier.model, revision=classifier.source.get("revision")
            ),
            "dataset": dataset_content(dataset, rows),
        }
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(content)
    return content[0]


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
    """Every rank's records.

    A torn last line (a kill in the middle of a write) is left out; any other unreadable line
    means the files were damaged, and is an error.
    """
    records = []
    for path in sorted(directory.glob("records-*.jsonl")):
        data = path.read_bytes()
        lines = data[: data.rfind(b"\n") + 1].split(b"\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                record = error
            if not isinstance(record, dict) or "index" not in record:
                raise ResultsError(
                    f"{path}, line {number}: not a record hf-fisher wrote ({_short(record)}); "
                    "the partial run is damaged, so it cannot be resumed: rerun with "
                    "--overwrite to start again"
                )
            records.append(record)
    return records


def _trim_torn_lines(directory: Path) -> None:
    """Cut a torn last line, so that appended records start on a line of their own."""
    for path in sorted(directory.glob("records-*.jsonl")):
        data = path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            path.write_bytes(complete)


def _remove_partial(partial: Path) -> None:
    """Delete what hf-fisher wrote in ``partial`` and the folder once empty; nothing else."""
    for path in [*partial.glob("records-*.jsonl"), partial / RUN_FILE]:
        path.unlink(missing_ok=True)
    try:
        partial.rmdir()
    except OSError:
        logger.warning("kept %s: it holds files that hf-fisher did not write", partial)


@dataclass
class Positions:
    """What per-position records need from a prepared batch (structured outputs).

    Attributes:
        output_mask: (N, T) 0/1 output positions that count, or None when all do.
        targets: (N, T) the known class at each output position (a text's next token), or None.
        real: (N, L) bool, the real (non-padded) tokens of a text batch, or None (images).
        names: per sample, the real input positions' names (text: tokens), or None.
    """

    output_mask: torch.Tensor | None
    targets: torch.Tensor | None
    real: torch.Tensor | None
    names: list[list[str]] | None

    @staticmethod
    def of(classifier: Classifier, batch: Any) -> Positions:
        """Read them from the classifier (which knows its batches' layout)."""
        real = None
        if batch.space_mask is not None and batch.inputs.ndim == 3:  # text: (N, L, H)
            real = batch.space_mask[:, :, 0].bool().cpu()
        mask = classifier.output_mask(batch)
        targets = classifier.output_targets(batch)
        return Positions(
            output_mask=None if mask is None else mask.cpu(),
            targets=None if targets is None else targets.cpu(),
            real=real,
            names=classifier.input_position_names(batch),
        )

    def kept(self, values: torch.Tensor, row: int) -> torch.Tensor:
        """A text's values at its real tokens (padding left out, either side); else all."""
        if self.real is None or len(values) != self.real.shape[1]:
            return values
        return values[self.real[row]]


def _position_fields(spectrum: FisherSpectrum, row: int, positions: Positions) -> dict:
    """Per-position shares of one sample, and its prediction at its most sensitive output.

    Structured (N, T, K) logits: ``predicted`` and ``probability`` are the class and its
    probability at the output position with the largest share of lambda_max.
    """
    fields: dict = {}
    if spectrum.input_shares is not None:
        shares = positions.kept(spectrum.input_shares[row], row)
        fields["input_shares"] = shares.tolist()
        fields["most_sensitive_input"] = int(shares.argmax())
        if positions.names is not None:
            fields["input_tokens"] = positions.names[row]
    if spectrum.output_shares is None:
        return fields
    logits = spectrum.logits[row]  # (T, K)
    mask = positions.output_mask
    counted = torch.ones(len(logits), dtype=torch.bool) if mask is None else mask[row].bool()
    shares = positions.kept(spectrum.output_shares[row], row)
    top = int(shares.argmax())
    probs = torch.softmax(positions.kept(logits, row)[top], dim=-1)
    fields.update(
        output_shares=shares.tolist(),
        most_sensitive_output=top,
        num_positions=int(counted.sum()),
        predicted=int(probs.argmax()),
        probability=float(probs.max()),
    )
    if positions.targets is not None and counted.any():
        hits = logits.argmax(dim=-1) == positions.targets[row][: len(logits)]
        fields["position_accuracy"] = float(hits[counted].double().mean())
    return fields


def _records_from_spectrum(
    spectrum: FisherSpectrum,
    indices: list[int],
    labels: list[int] | None,
    kl_tau: float,
    positions: Positions | None = None,
) -> list[dict]:
    probabilities = spectrum.probabilities
    predicted = spectrum.predicted.tolist() if spectrum.logits.ndim == 2 else None
    # one prediction per input: the KL to the nearest decision boundary (not for structured outputs)
    kl_flip = None if predicted is None else kl_to_flip(spectrum.logits, spectrum.likelihood)
    records = []
    for row, index in enumerate(indices):
        structured = {} if positions is None else _position_fields(spectrum, row, positions)
        if predicted is None:
            record_predicted, probability = structured["predicted"], structured["probability"]
        else:
            record_predicted = predicted[row]
            probability = float(probabilities[row, record_predicted])
        label = record_predicted if labels is None else labels[row]
        guess = record_predicted
        if isinstance(label, list):  # multi-label: every class with sigmoid > 1/2, exact match
            guess = (probabilities[row] > 0.5).nonzero().flatten().tolist()
        norm = float(spectrum.spectral_norm[row])
        record = {
            "index": index,
            "label": label if isinstance(label, list) else int(label),
            "predicted": guess if isinstance(label, list) else int(guess),
            "probability": probability,
            "correct": bool(guess == label),
            "spectral_norm": norm,
            "trace": float(spectrum.trace[row]),
            "kl_radius": kl_radius(norm, kl_tau),
            "method": spectrum.method,
        }
        if kl_flip is not None:
            record["kl_flip"] = float(kl_flip[row])
            record["flip_radius"] = flip_radius(norm, record["kl_flip"])
        record.update(_estimator_fields(spectrum, row))
        record.update({k: v for k, v in structured.items() if k not in record})
        records.append(to_jsonable(record))
    return records


def _estimator_fields(spectrum: FisherSpectrum, row: int) -> dict:
    """The fields a method reports beyond lambda_max and the trace (convergence, error bars)."""
    fields: dict[str, Any] = {}
    if spectrum.converged is not None:
        fields["converged"] = bool(spectrum.converged[row])
        fields["iterations"] = int(spectrum.iterations[row])
    if spectrum.trace_standard_error is not None:
        fields["trace_standard_error"] = float(spectrum.trace_standard_error[row])
    if spectrum.trace_probes is not None:
        fields["trace_probes"] = int(spectrum.trace_probes[row])
    if spectrum.spectral_norm_ci is not None:
        fields["spectral_norm_ci"] = spectrum.spectral_norm_ci[row].tolist()
        fields["trace_ci"] = spectrum.trace_ci[row].tolist()
    if spectrum.eigenvalues.shape[1] > 1:
        fields["eigenvalues"] = spectrum.eigenvalues[row].tolist()
    return fields


def _spectrum_with_oom_retry(
    classifier, batch, ids, options, limit: int | None = None
) -> tuple[FisherSpectrum, int]:
    """Compute a batch in chunks of at most ``limit``; halve them on out-of-memory and retry.

    ``limit`` is what the memory budget allows; out-of-memory is CUDA's or a failed CPU
    allocation (:func:`~hf_fisher.memory.is_out_of_memory`). Returns the size that ran.
    """
    size = min(len(batch), limit or len(batch))
    while True:
        try:
            spectrum = spectrum_of_prepared(
                classifier, batch, batch_size=size, sample_ids=ids, **options
            )
            return spectrum, size
        except (RuntimeError, MemoryError) as error:
            if size == 1 or not is_out_of_memory(error):
                raise
            size = max(1, size // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            logger.warning("out of memory: retrying with batch size %d", size)


@dataclass
class RunPlan:
    """Everything :func:`compute_records` and :func:`gather_results` need, decided up front.

    Made by :func:`plan_run` before any Fisher product: options checked, model and data loaded,
    ``auto`` resolved once, the run fingerprinted and the output directory prepared (with the
    records of a partial run when resuming).
    """

    classifier: Classifier
    rows: Any
    columns: list[str]
    label_col: str | None
    modality: str
    alignment: Any
    indices: list[int] | None  # None: a whole stream, whose rows are known once read
    estimator: EstimatorOptions  # with the concrete method
    run: RunOptions
    settings: dict
    dataset_info: dict
    directory: Path | None
    done: list[dict]
    state: Any
    companions: CompanionOptions | None
    progress: bool
    started: float
    memory: dict = field(default_factory=dict)  # max_memory_bytes, max_fisher_batch

    @property
    def wants_companions(self) -> bool:
        """Whether companion measurements follow the Fisher pass."""
        return self.companions is not None and self.companions.requested


@dataclass
class Computed:
    """What one process computed: its records, the batch sizes that ran, its data wait."""

    records: list[dict]
    batch_sizes: set[int]
    clock: WaitClock = field(default_factory=WaitClock)


def evaluate_robustness(
    model: Any = None,
    dataset: Any = None,
    *,
    split: str | None = None,
    config: str | None = None,
    num_samples: int | None = None,
    batch_size: int = 32,
    streaming: bool = False,
    prefetch: int = 2,
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
    options: EstimatorOptions | None = None,
    revision: str | None = None,
    dataset_revision: str | None = None,
    data_files: Any = None,
    candidate_labels: Sequence[str] | None = None,
    hypothesis_template: str = DEFAULT_HYPOTHESIS_TEMPLATE,
    position: str | None = None,
    power_start: str = "random",
    fd_step: float | None = None,
    paper_compat: bool = False,
    tf32: bool = False,
    lanczos_start: str = "informed",
    trace_rtol: float = 0.05,
    max_memory: int | str = "auto",
) -> RobustnessReport:
    """Evaluate per-sample Fisher robustness of a classifier on a dataset split.

    With no ``model``, evaluates the bundled digits ResNet on its held-out digits split.
    The run is :func:`plan_run` -> :func:`compute_records` -> :func:`gather_results` ->
    :func:`write_run`.

    Args:
        model: a Hub id, local directory, ``nn.Module`` or :class:`~hf_fisher.Classifier`.
        dataset: a Hub name, ``load_dataset`` kwargs, local directory, ``datasets.Dataset``,
            or an (N, ...) tensor / array in the model's input space (kept exact).
        split, config: the dataset split (default "test") and configuration.
        num_samples, batch_size, kl_tau: the :class:`~hf_fisher.options.RunOptions`: a
            deterministic sample of this many rows (default all), samples per batch (halved
            automatically on CUDA out-of-memory), and the KL level of
            ``kl_radius = sqrt(2 kl_tau / lambda_max)``.
        streaming, prefetch: read the dataset as a stream (``num_samples`` then takes its
            first N rows; sample ids are stream positions), and how many batches a thread
            decodes and prepares ahead of the Fisher compute (0: inline).
        method, black_box, top_k, max_iter, tol, num_queries, num_probes, seed: estimator
            options of :func:`~hf_fisher.fisher_spectrum` (see
            :class:`~hf_fisher.options.EstimatorOptions`), or pass ``options=`` instead.
        input_columns, label_column: override column detection (two input columns for text
            pairs). Without a label column, predicted labels are used and the file says so.
        input_space: "pixels" (default for images), "normalized" or "embeddings".
        device, dtype: where and in what precision to compute (float32 or float64).
        out_dir: write results.json, per_sample.csv and resumable partial records here.
        overwrite: replace results already in ``out_dir``.
        resume: continue a killed run in ``out_dir``, computing only missing samples.
        progress: show progress bars for the Fisher loop and each companion measurement
            (main process only).
        trust_remote_code: allow Hub models with custom code (off by default).
        companions: companion measurements (attacks, noise curves, KL check, CLEVER,
            frequency view) to run on the first evaluated samples, by the main process.
        labels: integer labels of a tensor ``dataset`` (None: predicted labels are used).
        label_mapping: the model's label name -> the dataset's label (its id or name), as in
            ``evaluate``'s evaluators. Without it, named dataset labels (``ClassLabel`` or
            strings) are matched to the model's ``id2label`` by name (refused if any does not
            match) and integer labels are the model's ids; see :mod:`hf_fisher.labels`.
        options: an :class:`~hf_fisher.options.EstimatorOptions`, instead of the estimator
            keywords.
        revision, dataset_revision: Hub revisions (branch, tag or commit) of the model and the
            dataset, recorded in results.json.
        data_files: files to read, as ``load_dataset``'s ``data_files`` (a path or glob, a
            list, or split -> paths); alone (``dataset=None``) their suffix picks the reader.
            Unnamed files, and a ``dataset`` that is one file, are the evaluated ``split``.
        candidate_labels, hypothesis_template: a zero-shot image model's classes and their
            prompt (see :class:`~hf_fisher.options.ZeroShotOptions`); dataset labels are
            matched to the candidate labels by name.
        position: causal language models: "last" (default, the next token after each text)
            or "all" (every next token of the text, teacher-forced).
        power_start, fd_step: where method "power" starts and the black-box step (see
            :class:`~hf_fisher.options.EstimatorOptions`).
        paper_compat: reproduce the paper's public code (docs/paper-compat.md); recorded as
            ``settings.paper_compat`` and ``settings.paper_compat_settings``.
        tf32: allow TensorFloat-32 in CUDA float32 matmuls and convolutions while the run
            computes (off: strict float32; torch's flags are restored afterwards). Recorded as
            ``settings.tf32`` and part of the resume fingerprint; no effect on a CPU.
        lanczos_start, trace_rtol: where "lanczos" starts and the relative standard error its
            trace stops at (see :class:`~hf_fisher.options.EstimatorOptions`).
        max_memory: memory budget ("4GB", "512MiB", bytes, or "auto": half of the free RAM or
            GPU memory): Fisher batches are clamped to it and companions run in chunks that fit
            it (:mod:`hf_fisher.memory`); recorded as ``settings.max_memory`` (the request) and
            ``environment.max_memory_bytes`` (what it resolved to here).

    Returns:
        A :class:`RobustnessReport`.
    """
    given = locals()
    estimator = EstimatorOptions.from_keywords(options, **_knobs(given, EstimatorOptions))
    plan = plan_run(
        model,
        dataset,
        estimator,
        RunOptions(**_knobs(given, RunOptions)),
        split=split,
        config=config,
        input_columns=input_columns,
        label_column=label_column,
        input_space=input_space,
        device=device,
        dtype=dtype,
        out_dir=out_dir,
        overwrite=overwrite,
        resume=resume,
        progress=progress,
        trust_remote_code=trust_remote_code,
        companions=companions,
        labels=labels,
        label_mapping=label_mapping,
        source=SourceOptions(revision, dataset_revision, data_files),
        zero_shot=ZeroShotOptions(candidate_labels, hypothesis_template),
        position=position,
    )
    with tf32_mode(plan.run.tf32):  # strict float32 unless the run allows TF32; restored after
        return _finish_run(plan, gather_results(plan, compute_records(plan)))


def _knobs(given: dict, options: type) -> dict:
    """The keyword arguments that are fields of the ``options`` dataclass, by name."""
    return {name: given[name] for name in options.names()}


def _finish_run(plan: RunPlan, results: Any) -> RobustnessReport:
    """Add the companion measurements (main process) and write the run."""
    if plan.wants_companions:
        if not plan.state.is_main_process:
            # No barrier: the main process may measure for longer than a process-group
            # timeout (30 min gloo, 10 min NCCL). Nothing below needs this rank.
            return RobustnessReport(to_jsonable(results), plan.directory)
        _add_companions(plan, results)
    return write_run(plan, to_jsonable(results))


def _validate(
    estimator: EstimatorOptions,
    run: RunOptions,
    companions: CompanionOptions | None,
    dtype: str | torch.dtype | None,
    label_mapping: Any,
    device: str | None,
    out_dir: str | os.PathLike | None,
) -> tuple[torch.dtype | None, Any, Path | None]:
    """Refuse values that cannot work, before a model is loaded.

    Returns:
        The compute dtype, the checked label mapping and the output directory.
    """
    directory = Path(out_dir) if out_dir is not None else None
    run.validate()
    estimator.validate()
    if companions is not None:
        companions.validate()
    compute_dtype = _dtype(dtype)
    label_mapping = check_label_mapping(label_mapping)
    _check_device(device)
    if directory is not None:
        _check_out_dir(directory)
    return compute_dtype, label_mapping, directory


def _load_dataset(
    model: Any,
    dataset: Any,
    split: str | None,
    labels: list[int] | None,
    source: SourceOptions,
    streaming: bool = False,
):
    """The model reference and dataset, with the bundled defaults filled in.

    Local files are checked here, before the model loads: a missing one is a one-line error,
    and so is a tensor asked to be streamed.
    """
    check_data_source(dataset, source.data_files, source.dataset_revision)
    if model is None:
        from hf_fisher.digits import load_digits_dataset

        model = str(BUNDLED_MODEL_DIR)
        if dataset is None and source.data_files is None:
            dataset = load_digits_dataset(split or "test")  # refuses splits it does not have
            dataset.info.dataset_name = "sklearn-digits"
    if dataset is None and source.data_files is None:
        raise DatasetError(
            "no dataset given; pass --dataset (a Hub name, a local directory or file) or "
            "--data-files"
        )
    if isinstance(dataset, (torch.Tensor, np.ndarray)):
        dataset = InMemoryRows(torch.as_tensor(dataset), labels)
        check_streamable(dataset, streaming)
    elif labels is not None:
        raise DatasetError(
            "labels= goes with a tensor dataset; for a datasets.Dataset name its label column "
            "with label_column="
        )
    return model, dataset


def _load_model(
    model: Any,
    device: torch.device,
    dtype: torch.dtype | None,
    zero_shot: ZeroShotOptions,
    **kwargs,
) -> Classifier:
    zero_shot.validate()  # a zero-shot model's classes, before its weights load
    classifier = load_classifier(
        model, device=device, dtype=dtype, **zero_shot.to_settings(), **kwargs
    )
    if classifier.dtype not in (torch.float32, torch.float64):
        raise InputError(
            f"the model computes in {classifier.dtype}; pass dtype='float32' (default) or "
            "'float64': half precision loses the small class probabilities of the Fisher"
        )
    if str(model) == str(BUNDLED_MODEL_DIR):
        classifier.source["id"] = BUNDLED_MODEL_ID
    return classifier


def _paper_compat(
    estimator: EstimatorOptions,
    input_space: str | None,
    companions: CompanionOptions | None,
    model: Any,
) -> tuple[EstimatorOptions, str | None, CompanionOptions | None]:
    """The concrete options of a ``paper_compat`` run (unchanged without it), before loading."""
    plain_module = isinstance(model, torch.nn.Module)
    estimator, input_space = apply_paper_compat(estimator, input_space, plain_module=plain_module)
    return estimator, input_space, apply_paper_compat_companions(companions, estimator)


def _check_loaded(
    classifier: Classifier, estimator: EstimatorOptions, companions: CompanionOptions | None
) -> None:
    """Checks that need the loaded model and no data: its input space, the companions' fit."""
    check_paper_compat_space(estimator, classifier.input_space)
    if companions is not None and companions.requested:
        check_companions(classifier, companions)


def plan_run(
    model: Any,
    dataset: Any,
    estimator: EstimatorOptions,
    run: RunOptions,
    *,
    split: str | None = None,
    config: str | None = None,
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
    source: SourceOptions = NO_SOURCE,
    zero_shot: ZeroShotOptions | None = None,
    position: str | None = None,
) -> RunPlan:
    """Check the options, load the model and data, resolve the method, prepare the directory.

    Every check that needs no model runs before the model loads; the companions' fit to the
    model is checked before the data are read. Arguments as :func:`evaluate_robustness`.
    """
    started = time.perf_counter()
    compute_dtype, label_mapping, directory = _validate(
        estimator, run, companions, dtype, label_mapping, device, out_dir
    )
    estimator, input_space, companions = _paper_compat(estimator, input_space, companions, model)
    state = make_state(device)
    model, dataset = _load_dataset(model, dataset, split, labels, source, run.streaming)
    classifier = _load_model(
        model,
        _compute_device(device, state),
        compute_dtype,
        input_space=input_space,
        trust_remote_code=trust_remote_code,
        revision=source.revision,
        zero_shot=zero_shot or ZeroShotOptions(),
        position=position,
    )
    _check_loaded(classifier, estimator, companions)
    rows, dataset_name, split = load_any_dataset(
        dataset, split=split, config=config, streaming=run.streaming, **source.dataset_keywords()
    )
    columns, label_col, modality = _columns(classifier, rows, input_columns, label_column)
    alignment = _alignment(classifier, rows, label_col, label_mapping, run.num_samples)
    indices = planned_indices(rows, run.num_samples, estimator.seed)
    concrete = _concrete_method(classifier, estimator, run, rows, indices, columns, modality)
    settings = _settings(classifier, estimator, run, concrete)
    dataset_info = _dataset_info(
        rows, dataset_name, config, split, indices, columns, label_col, alignment, source
    )
    _log_plan(classifier, dataset_info, settings)
    done: list[dict] = []
    if directory is not None:
        content = _content(model, classifier, dataset, rows, state)
        fingerprint = _fingerprint(classifier, dataset_info, settings, content)
        done = _prepare_directory(directory, fingerprint, overwrite, resume, state)
    return RunPlan(
        classifier=classifier,
        rows=rows,
        columns=columns,
        label_col=label_col,
        modality=modality,
        alignment=alignment,
        indices=indices,
        estimator=replace(estimator, method=concrete),
        run=run,
        settings=settings,
        dataset_info=dataset_info,
        directory=directory,
        done=done,
        state=state,
        companions=companions,
        progress=progress,
        started=started,
        memory=_memory_plan(classifier, estimator, run, concrete),
    )


def _concrete_method(
    classifier: Classifier,
    estimator: EstimatorOptions,
    run: RunOptions,
    rows: Any,
    indices: list[int] | None,
    columns: list[str],
    modality: str,
) -> str:
    """The run's method; a plain module first learns its input shape from the first row.

    ``indices`` are the planned rows (None for a whole stream: then the stream's first row).
    """
    if classifier.input_shape is None and classifier.modality != "text":  # a plain module
        first = (indices or [0])[:1]
        classifier.prepare(decode_rows(rows, first, columns, None, modality).inputs)
    return run_method(
        classifier, estimator.method, estimator.black_box, run.batch_size, _input_numel(classifier)
    )


def _log_plan(classifier: Classifier, dataset_info: dict, settings: dict) -> None:
    """What was loaded and decided, for ``-v``; a ``--tf32`` that cannot act is a warning."""
    if settings["tf32"] and classifier.device.type != "cuda":
        logger.warning("--tf32 has no effect on %s: TF32 is a CUDA setting", classifier.device)
    logger.debug(
        "loaded %s: %d classes, input space %s, %s on %s",
        classifier.source.get("id"),
        classifier.num_classes,
        classifier.input_space,
        settings["dtype"],
        classifier.device,
    )
    logger.debug(
        "dataset %s [%s]: %s rows, %s to evaluate; method %s (asked: %s)",
        dataset_info["name"],
        dataset_info["split"],
        dataset_info["num_rows"] or "?",
        "all" if dataset_info["indices"] is None else len(dataset_info["indices"]),
        settings["method"],
        settings["requested_method"],
    )


def _columns(
    classifier: Classifier, rows: Any, input_columns: list[str] | None, label_column: str | None
) -> tuple[list[str], str | None, str]:
    """Input columns, label column and modality; structured outputs read no labels."""
    columns, label_col, modality = detect_columns(
        rows, input_columns=input_columns, label_column=label_column
    )
    return columns, _readable_label_column(classifier, label_col), modality


def _readable_label_column(classifier: Classifier, label_col: str | None) -> str | None:
    """The label column, or None for structured outputs (their labels are not read)."""
    outputs = classifier.outputs_info()
    if outputs is None or label_col is None:
        return label_col
    logger.warning(
        "ignoring the label column %r: labels are not read for %s outputs (the records "
        "describe the model's own predictions)",
        label_col,
        outputs["kind"],
    )
    return None


def _dataset_info(
    rows: Any,
    name: str,
    config: str | None,
    split: str | None,
    indices: list[int] | None,
    columns: list[str],
    label_col: str | None,
    alignment: Any,
    source: SourceOptions,
) -> dict:
    """The ``dataset`` section of results.json (and of the fingerprint).

    A stream's ``num_rows`` and ``indices`` can be unknown (None) until it is read; the
    results then record the rows read (:func:`_streamed_dataset_info`).
    """
    if label_col is None:
        logger.warning("dataset has no label column: predicted labels are used as labels")
    streamed = {"streaming": True, "sampling": "first-rows"} if is_stream(rows) else {}
    return {
        **streamed,
        "name": name,
        "config": config,
        "split": split,
        "num_rows": known_num_rows(rows, split),
        "indices": indices,
        "input_columns": columns,
        "label_column": label_col,
        "labels_from": "dataset" if label_col else "predictions",
        "label_mapping": None if alignment is None else alignment.recorded,
        "label_mapping_source": None if alignment is None else alignment.source,
        "revision": source.dataset_revision,
        "data_files": recorded_data_files(source.data_files, split),
    }


def _alignment(
    classifier: Classifier,
    rows: Any,
    label_col: str | None,
    label_mapping: Any,
    num_samples: int | None = None,
):
    """How dataset labels map to the model's ids (None without a label column)."""
    if label_col is not None:
        names, values = label_domain(rows, label_col, limit=num_samples)
        return align_labels(
            classifier.id2label, names=names, values=values, label_mapping=label_mapping
        )
    if label_mapping is not None:
        raise DatasetError("label_mapping was given, but the dataset has no label column")
    return None


def _settings(
    classifier: Classifier, estimator: EstimatorOptions, run: RunOptions, concrete: str
) -> dict:
    """The settings section (and the fingerprint's): every knob that shapes the numbers."""
    settings = {
        **estimator.to_settings(),
        "method": concrete,
        "requested_method": estimator.method,
        "input_space": classifier.input_space,
        "batch_size": run.batch_size,
        "dtype": str(classifier.dtype).removeprefix("torch."),
        "kl_tau": run.kl_tau,
        "likelihood": classifier.likelihood,
        "tf32": run.tf32,
        "max_memory": run.max_memory,
    }
    outputs = classifier.outputs_info()
    if outputs is not None:  # structured outputs: what the output positions are
        settings["outputs"] = outputs
    if method_spec(concrete).returns.eigenvalue_error == "lower-bound":
        settings["spectral_norm_is_lower_bound"] = True
    if estimator.paper_compat:
        settings["paper_compat_settings"] = PAPER_COMPAT.to_settings()
    return settings


def _memory_plan(
    classifier: Classifier, estimator: EstimatorOptions, run: RunOptions, concrete: str
) -> dict:
    """The resolved memory budget, and the Fisher batch it allows the concrete method.

    Both depend on the machine's free memory, so they go to the ``environment`` section.
    """
    budget = resolve_budget(run.max_memory, classifier.device)
    per_sample = per_sample_memory(
        classifier, concrete, estimator.to_settings(), _input_numel(classifier)
    )
    work = working_memory(budget, classifier.device)
    return {
        "max_memory_bytes": budget,
        "max_fisher_batch": chunk_size(work, per_sample, run.batch_size),
    }


def compute_records(plan: RunPlan) -> Computed:
    """Compute this process's shard of the pending samples, batch by batch.

    Each batch's records are appended to ``partial/records-<rank>.jsonl`` as soon as they exist.
    The next batches are read and prepared by a thread meanwhile (``prefetch``); the time the
    loop still waits for them is measured.
    """
    state = plan.state
    finished = {record["index"] for record in plan.done}
    computed = Computed(records=[], batch_sizes=set())
    record_file = None
    if plan.directory is not None:
        record_file = open(  # noqa: SIM115 - kept open for the whole loop, closed below
            plan.directory / PARTIAL_DIR / f"records-{state.process_index}.jsonl",
            "a",
            encoding="utf-8",
        )
    pending = None if plan.indices is None else [i for i in plan.indices if i not in finished]
    total = None if pending is None else len(pending)
    bar = _progress_bar(total, plan.progress and state.is_main_process)
    batches = prefetched(_ready_batches(plan, finished, pending), plan.run.prefetch)
    try:
        for batch in computed.clock.timed(batches):
            new = _batch_records(plan, batch, computed.batch_sizes)
            if record_file is not None and new:
                _append(record_file, new)
            computed.records += new
            bar.update(_bar_count(len(batch.positions), plan))
    finally:
        batches.close()
        bar.close()
        if record_file is not None:
            record_file.close()
    return computed


def _ready_batches(
    plan: RunPlan, finished: set[int], pending: list[int] | None
) -> Iterator[ReadyBatch]:
    """This process's batches: contiguous shards of the pending rows, or its share of a stream."""
    state = plan.state
    reader = RowReader(
        plan.rows,
        plan.columns,
        plan.label_col,
        plan.modality,
        plan.alignment,
        plan.classifier.prepare,
    )
    size = plan.run.batch_size
    if is_stream(plan.rows):
        keep = shard_of_stream(state.num_processes, state.process_index, finished)
        return reader.streamed(keep, plan.run.num_samples, size)
    shard = _shard(pending, state.num_processes, state.process_index)
    longest = max(len(_shard(pending, state.num_processes, r)) for r in range(state.num_processes))
    steps = math.ceil(longest / size)  # the same on every rank: collectives stay in step
    return reader.indexed(shard[step * size : (step + 1) * size] for step in range(steps))


def _bar_count(count: int, plan: RunPlan) -> int:
    """Samples done by all processes in this step; a stream's ranks are not in step: estimated."""
    if is_stream(plan.rows):
        return count * plan.state.num_processes
    return _global_count(count, plan.state)


def _batch_records(plan: RunPlan, batch: ReadyBatch, used: set[int]) -> list[dict]:
    """Records of one batch: skipped rows, then one record per evaluated sample."""
    decoded = batch.decoded
    new = [{**skip, "skipped": True} for skip in decoded.skipped]
    if decoded.indices:
        classifier = plan.classifier
        prepared = batch.prepared
        labels = _multi_label_rows(decoded.labels, classifier, plan.alignment, plan.label_col)
        _check_label_range(labels, classifier.num_classes, plan.label_col)
        spectrum, size = _spectrum_with_oom_retry(
            classifier,
            prepared,
            decoded.indices,
            {**plan.estimator.to_settings(), "max_memory": plan.memory["max_memory_bytes"]},
            plan.memory["max_fisher_batch"],
        )
        used.add(size)
        positions = Positions.of(classifier, prepared) if classifier.position_summaries else None
        new += _records_from_spectrum(spectrum, decoded.indices, labels, plan.run.kl_tau, positions)
    return new


def gather_results(plan: RunPlan, computed: Computed) -> dict:
    """Every process's records, in dataset order, summarised into the results dict."""
    records, used, clocks = _gathered(plan, computed)
    everything = {record["index"]: record for record in plan.done + records}
    wanted = sorted(everything) if plan.indices is None else plan.indices
    ordered = [everything[index] for index in wanted if index in everything]
    skipped = [{"index": r["index"], "reason": r["reason"]} for r in ordered if r.get("skipped")]
    per_sample = [r for r in ordered if not r.get("skipped")]
    if not per_sample:
        raise DatasetError(f"no sample could be evaluated ({len(skipped)} unreadable rows)")
    summary = summarize(per_sample, seed=plan.estimator.seed)
    if plan.label_col is None:
        summary["accuracy"] = None  # the labels are the predictions: 1.0 by construction
    if any("position_accuracy" in record for record in per_sample):
        summary["position_accuracy"] = _position_accuracy(per_sample)
    sections = _pixel_sensitivity(plan, per_sample)
    return {
        **sections,
        "schema_version": SCHEMA_VERSION,
        "hf_fisher_version": package_versions()["hf-fisher"] or "0+unknown",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": _model_section(plan.classifier),
        "dataset": _streamed_dataset_info(plan, ordered),
        "settings": {
            **plan.settings,
            "method": "+".join(sorted({record["method"] for record in per_sample})),
            "batch_sizes_used": sorted(used),
        },
        "environment": {
            "device": _describe_device(plan.classifier.device),
            "num_processes": plan.state.num_processes,
            "wall_time_s": time.perf_counter() - plan.started,
            **plan.memory,
            "packages": package_versions(),
            "fisher_loop": _loop_timing(clocks, plan.run.prefetch),
        },
        "summary": summary,
        "per_sample": per_sample,
        "skipped": skipped,
    }


def _gathered(plan: RunPlan, computed: Computed) -> tuple[list[dict], set[int], list[WaitClock]]:
    """Every process's records, batch sizes and data-wait clocks."""
    from accelerate.utils import gather_object

    records, used, clocks = computed.records, computed.batch_sizes, [computed.clock]
    if plan.state.num_processes > 1:
        records = gather_object(records)
        used = set(gather_object(sorted(used)))
        clocks = gather_object(clocks)
    return records, used, clocks


def _streamed_dataset_info(plan: RunPlan, ordered: list[dict]) -> dict:
    """The ``dataset`` section; a stream's rows are the positions read (skipped ones too)."""
    info = plan.dataset_info
    if not info.get("streaming"):
        return info
    read = [record["index"] for record in ordered]
    if plan.run.num_samples is not None and len(read) < plan.run.num_samples:
        logger.warning(
            "--num-samples %d: the stream held only %d rows; evaluated all of them",
            plan.run.num_samples,
            len(read),
        )
    num_rows = info["num_rows"] if info["num_rows"] is not None else len(read)
    return {**info, "indices": read, "num_rows": num_rows}


def _loop_timing(clocks: list[WaitClock], prefetch: int) -> dict:
    """``environment.fisher_loop``: the processes' data wait over their loop time, summed."""
    total = WaitClock(
        waited_s=sum(clock.waited_s for clock in clocks),
        loop_s=sum(clock.loop_s for clock in clocks),
    )
    return total.to_json(prefetch)


def _position_accuracy(per_sample: list[dict]) -> float | None:
    """Next-token accuracy over every counted position of every text (position="all")."""
    counted = [
        (r["position_accuracy"], r["num_positions"]) for r in per_sample if r.get("num_positions")
    ]
    total = sum(count for _, count in counted)
    return sum(value * count for value, count in counted) / total if total else None


def _pixel_sensitivity(plan: RunPlan, per_sample: list[dict]) -> dict:
    """A segmenter's mean per-pixel shares, as the ``pixel_sensitivity`` section (else none)."""
    outputs = plan.settings.get("outputs") or {}
    if outputs.get("kind") != "pixels" or "output_shares" not in per_sample[0]:
        return {}
    return {
        "pixel_sensitivity": {
            "num_samples": len(per_sample),
            "output_grid": outputs["grid"],
            "input_grid": list(plan.classifier.input_shape[1:]),
            "mean_output_shares": np.mean([r["output_shares"] for r in per_sample], 0).tolist(),
            "mean_input_shares": np.mean([r["input_shares"] for r in per_sample], 0).tolist(),
        }
    }


def _model_section(classifier: Classifier) -> dict:
    """The ``model`` section of results.json."""
    return {
        **{k: classifier.source.get(k) for k in ("id", "revision", "commit_hash")},
        "architecture": classifier.source.get("architecture") or type(classifier.model).__name__,
        "task": classifier.source.get("task"),
        "num_classes": classifier.num_classes,
        "id2label": {str(k): str(v) for k, v in classifier.id2label.items()},
        **_zero_shot_section(classifier),
    }


def _zero_shot_section(classifier: Classifier) -> dict:
    """A zero-shot model's prompt template (its classes are ``id2label``); else nothing."""
    template = getattr(classifier, "hypothesis_template", None)
    return {} if template is None else {"hypothesis_template": template}


def _add_companions(plan: RunPlan, results: dict) -> None:
    """Run the companion measurements on the first evaluated samples (main process only)."""
    started = time.perf_counter()
    chosen = results["per_sample"][: plan.companions.num_samples]
    if any(isinstance(row["label"], list) for row in chosen):
        raise InputError(
            "the companion measurements need one label per sample, and these rows are "
            "multi-label; drop the companion flags (the Fisher records are kept in --out: "
            "rerun with --resume)"
        )
    decoded = decode_rows(
        plan.rows,
        [r["index"] for r in chosen],
        plan.columns,
        plan.label_col,
        plan.modality,
        plan.alignment,
    )
    sections = run_companions(
        plan.classifier,
        plan.classifier.prepare(decoded.inputs),
        torch.tensor([r["label"] for r in chosen]),
        torch.tensor([r["spectral_norm"] for r in chosen], dtype=torch.float64),
        plan.companions,
        seed=plan.estimator.seed,
        progress=_companion_bar if plan.progress else None,
        sample_ids=decoded.indices,
        max_memory=plan.memory["max_memory_bytes"],
    )
    for section in sections.values():
        section["sample_indices"] = decoded.indices  # per-sample lists follow this order
    results.update(sections)
    results["settings"]["companions"] = plan.companions.settings()
    results["environment"]["companions_wall_time_s"] = time.perf_counter() - started


def write_run(plan: RunPlan, results: dict) -> RobustnessReport:
    """Write results.json and per_sample.csv (main process), then drop the partial records."""
    directory = plan.directory
    if directory is not None and plan.state.is_main_process:
        try:
            write_results(results, directory)
        except OSError as error:
            raise ResultsError(
                f"could not write the results to {directory} ({error}); every per-sample "
                f"record is kept in {directory / PARTIAL_DIR}: free space or fix permissions, "
                "then rerun the same command with --resume to write them without recomputing"
            ) from error
        _remove_partial(directory / PARTIAL_DIR)
    if not plan.wants_companions:
        plan.state.wait_for_everyone()
    return RobustnessReport(results, directory)


def _append(record_file, records: list[dict]) -> None:
    """Append records durably (a kill loses at most the line being written)."""
    try:
        record_file.write("".join(json.dumps(r) + "\n" for r in records))
        record_file.flush()
        os.fsync(record_file.fileno())
    except OSError as error:
        raise ResultsError(
            f"could not append records to {record_file.name} ({error}); the records written so "
            "far are kept there: free space or fix permissions, then rerun the same command "
            "with --resume"
        ) from error


def _multi_label_rows(
    labels: list | None, classifier: Classifier, alignment: Any, column: str | None
) -> list | None:
    """Rows holding lists of labels become sorted class-id lists (multi-label models only).

    Raises:
        DatasetError: list labels for a single-label (categorical) model.
    """
    if not labels or not any(isinstance(label, list) for label in labels):
        return labels
    if classifier.likelihood != "bernoulli":
        raise DatasetError(
            f"column {column!r} holds lists of labels (multi-label rows), but the model is "
            "single-label (softmax); measure a multi-label model (problem_type "
            "'multi_label_classification'), or pass a --label-column with one label per row"
        )
    multi_hot = alignment is None or alignment.to_model is None  # numbers, not names
    return [
        label_set(label if isinstance(label, list) else [label], classifier.num_classes, multi_hot)
        for label in labels
    ]


def _check_label_range(labels: list | None, num_classes: int, column: str | None) -> None:
    """Labels must be class indices of this model; a -1 test split has no labels at all."""
    ids = [i for label in labels or () for i in (label if isinstance(label, list) else [label])]
    bad = sorted({label for label in ids if not 0 <= label < num_classes})
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


def _progress_bar(total: int | None, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="sample", desc="Fisher", smoothing=0.1)


@contextlib.contextmanager
def _companion_bar(companion: Companion) -> Iterator[ProgressCallback]:
    """A bar like the Fisher loop's for one companion measurement, fed by its callback."""
    from tqdm.auto import tqdm

    bar = tqdm(total=1, desc=companion.flag.removeprefix("--"), unit="step", smoothing=0.1)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
        bar.update(bar.total - bar.n)  # a measurement that reports no steps is one step
    finally:
        bar.close()


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return str(device)


def _prepare_directory(
    directory: Path, fingerprint: dict, overwrite: bool, resume: bool, state
) -> list[dict]:
    """Check/prepare ``directory``; return records of a partial run when resuming.

    Every rank takes the same decision from the same files before the first barrier, so a
    refusal stops all of them. Only a ``partial/`` that holds our ``run.json`` is ever resumed,
    replaced or deleted (:func:`_check_out_dir` refuses any other).
    """
    partial = directory / PARTIAL_DIR
    run_file = partial / RUN_FILE
    has_results = (directory / RESULTS_FILE).exists()
    ours = run_file.is_file()
    if resume and ours:
        return _resume_partial(directory, fingerprint, state)
    if resume and has_results:
        raise ResultsError(
            f"{directory} holds a finished run ({RESULTS_FILE}); nothing to resume. Use "
            "--overwrite to recompute it"
        )
    if (has_results or ours) and not (overwrite or resume):
        what = RESULTS_FILE if has_results else "a partial run"
        raise ResultsError(
            f"{directory} already holds {what}; pass --resume to continue a partial run or "
            "--overwrite to replace it"
        )
    state.wait_for_everyone()
    if state.is_main_process:
        _start_fresh(directory, fingerprint, ours)
    state.wait_for_everyone()
    return []


def _resume_partial(directory: Path, fingerprint: dict, state) -> list[dict]:
    """The records of our partial run in ``directory``, if it was made with this fingerprint."""
    partial = directory / PARTIAL_DIR
    previous = json.loads((partial / RUN_FILE).read_text(encoding="utf-8"))
    differences = _differences(previous, json.loads(json.dumps(to_jsonable(fingerprint))))
    if differences:
        raise ResultsError(
            "refusing to resume: this run differs from the partial run in "
            f"{directory}:\n  - "
            + "\n  - ".join(differences)
            + "\nrerun with the original options, or use --overwrite to start again"
        )
    done = _read_partial(partial)  # every rank: a damaged file stops them all
    state.wait_for_everyone()
    if state.is_main_process:
        _trim_torn_lines(partial)  # before anyone appends
    state.wait_for_everyone()
    return done


def _start_fresh(directory: Path, fingerprint: dict, ours: bool) -> None:
    """Remove old results and our old partial run; create ``partial/`` with its run.json."""
    partial = directory / PARTIAL_DIR
    # Old results go first: a killed --overwrite must not leave them for `card` to read.
    for name in (RESULTS_FILE, TABLE_FILE):
        (directory / name).unlink(missing_ok=True)
    if ours:
        _remove_partial(partial)
        if partial.exists():
            raise ResultsError(
                f"{partial} holds files hf-fisher did not write; move them away to start again"
            )
    try:
        staging = Path(tempfile.mkdtemp(dir=directory, prefix=f".{PARTIAL_DIR}-"))
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes 0700; a plain mkdir would not
        atomic_write_text(staging / RUN_FILE, json.dumps(to_jsonable(fingerprint), indent=2))
        staging.rename(partial)  # partial/ never exists without its run.json
    except OSError as error:
        raise ResultsError(
            f"could not create {partial} ({error}); free space or fix permissions in "
            f"{directory} and run again"
        ) from error
