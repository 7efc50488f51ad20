"""Datasets for the runner: loading, column detection, deterministic sampling, safe decoding."""

from __future__ import annotations

import glob
import io
import itertools
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hf_fisher.errors import DatasetError
from hf_fisher.labels import LabelAlignment

logger = logging.getLogger(__name__)

IMAGE_COLUMN_NAMES = ("image", "img", "picture", "pixel_values")
TEXT_COLUMN_NAMES = ("text", "sentence", "content", "review", "document", "question")
TEXT_PAIR_COLUMN_NAMES = (
    ("sentence1", "sentence2"),
    ("premise", "hypothesis"),
    ("question1", "question2"),
    ("question", "sentence"),
    ("text", "text_pair"),
)
LABEL_COLUMN_NAMES = ("label", "labels", "fine_label", "target", "class")
DEFAULT_SPLIT = "test"

DATA_FILE_BUILDERS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".parquet": "parquet",
    ".txt": "text",
    ".arrow": "arrow",
}
"""Data-file suffixes that ``--dataset FILE`` and ``--data-files`` take, and their builder."""
PATH_PREFIXES = ("./", "../", "/", "~", ".\\", "..\\")
"""How a dataset argument says it is a local path (a Hub name never starts so)."""


@dataclass
class DatasetSource:
    """What was loaded, for provenance: name/config/split and the chosen columns."""

    name: str
    config: str | None
    split: str | None
    num_rows: int
    input_columns: list[str]
    label_column: str | None
    modality: str  # "image" or "text"


@dataclass
class DecodedRows:
    """Rows ready for ``Classifier.prepare``.

    Attributes:
        indices: dataset row index of each kept row.
        inputs: PIL images, strings, or (text, text_pair) tuples.
        labels: integer labels, or None when the dataset has none.
        skipped: ``{"index": i, "reason": ...}`` for rows that could not be decoded.
    """

    indices: list[int]
    inputs: list[Any]
    labels: list[int] | None
    skipped: list[dict] = field(default_factory=list)


@dataclass
class InMemoryRows:
    """Inputs already in memory, used like a one-column dataset by the runner.

    Attributes:
        inputs: an (N, ...) tensor in the model's input space (kept exact), or a list of
            images / arrays / texts.
        labels: one label per row (the model's class id, or a dataset label that
            ``label_mapping`` maps), or None.
    """

    inputs: Any
    labels: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if self.labels is not None:  # tensor / numpy entries become plain Python scalars
            self.labels = [v.item() if hasattr(v, "item") else v for v in self.labels]
        if self.labels is not None and len(self.labels) != len(self.inputs):
            raise DatasetError(
                f"got {len(self.labels)} labels for {len(self.inputs)} inputs; pass one label "
                "per input, or none to use the predicted labels"
            )

    def __len__(self) -> int:
        return len(self.inputs)


def load_any_dataset(
    dataset: Any,
    *,
    split: str | None = None,
    config: str | None = None,
    data_files: Any = None,
    revision: str | None = None,
    streaming: bool = False,
) -> tuple[Any, str, str | None]:
    """Load a Hub name, ``load_dataset`` kwargs, local directory or file, or a ``Dataset``.

    Args:
        dataset: what to load (None with ``data_files``: the files alone).
        split: the split to evaluate; None means "test", except for a ``datasets.Dataset``,
            which is its own split (recorded as ``dataset.split``).
        config: the dataset configuration.
        data_files: as ``load_dataset``'s (a path, glob, list, or split -> paths mapping);
            files not named by split, and a single ``dataset`` file, are the requested split.
        revision: the Hub revision (branch, tag or commit) of a Hub dataset.
        streaming: read it as a ``datasets.IterableDataset`` (``load_dataset(...,
            streaming=True)``; a ``Dataset`` passed in is iterated as one): rows are read as
            they are evaluated, never all at once. An ``IterableDataset`` passed in is always
            streamed.

    Returns:
        ``(dataset, name, split)`` where ``dataset`` is a ``datasets.Dataset`` (an
        ``IterableDataset`` when streaming) and ``split`` the split it really is.

    Raises:
        DatasetError: if it cannot be loaded (offline Hub name, missing split, unknown type),
            a ``datasets.Dataset`` of one split is passed with another ``split``, or an
            in-memory tensor is asked to be streamed.
    """
    loaded, name, split = _load_any(dataset, split, config, data_files, revision, streaming)
    if streaming and not is_stream(loaded):
        loaded = loaded.to_iterable_dataset()  # a Dataset passed in: read in order, as a stream
    return (_with_features(loaded) if is_stream(loaded) else loaded), name, split


def check_streamable(dataset: Any, streaming: bool) -> None:
    """Refuse to stream an in-memory tensor (before any model is loaded).

    Raises:
        DatasetError: ``streaming`` with :class:`InMemoryRows` (a tensor or array).
    """
    if streaming and isinstance(dataset, InMemoryRows):
        raise DatasetError(
            "streaming reads a dataset from the Hub or from files, but this one is an "
            "in-memory tensor (already loaded): drop --streaming / streaming=True"
        )


def is_stream(rows: Any) -> bool:
    """Whether ``rows`` is a ``datasets.IterableDataset`` (read in order, no random access)."""
    import datasets

    return isinstance(rows, datasets.IterableDataset)


def _with_features(stream: Any) -> Any:
    """A stream whose features are known: csv/json streams infer them from their first rows."""
    return stream if stream.features is not None else stream._resolve_features()


def _load_any(
    dataset: Any,
    split: str | None,
    config: str | None,
    data_files: Any,
    revision: str | None,
    streaming: bool,
) -> tuple[Any, str, str | None]:
    """:func:`load_any_dataset`, streaming at the source when loading from the Hub or files."""
    import datasets

    check_streamable(dataset, streaming)
    if isinstance(dataset, InMemoryRows):
        return dataset, "in-memory", None
    if isinstance(dataset, (datasets.Dataset, datasets.IterableDataset)):
        return dataset, dataset.info.dataset_name or "in-memory", _own_split(dataset, split)
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        picked, split = _pick_split(dataset, split, "in-memory")
        return picked, "in-memory", split
    if isinstance(dataset, Mapping):
        kwargs = dict(dataset)
        kwargs.setdefault("split", split or DEFAULT_SPLIT)
        if streaming:
            kwargs["streaming"] = True
        name = str(kwargs.get("path", "load_dataset"))
        try:
            return datasets.load_dataset(**kwargs), name, kwargs["split"]
        except Exception as error:  # datasets raises many types; re-raise one clear error
            raise DatasetError(f"load_dataset(**{kwargs!r}) failed: {error}") from error
    if not isinstance(dataset, (str, os.PathLike)) and not (dataset is None and data_files):
        raise DatasetError(
            f"cannot use a dataset of type {type(dataset).__name__}; pass a Hub name, a local "
            "directory or file, a dict of load_dataset arguments or a datasets.Dataset"
        )
    name = str(dataset) if dataset is not None else ",".join(data_file_patterns(data_files))
    files = _files_of(dataset, data_files, split)
    loaded = _load_path(dataset, config, files, revision, streaming)
    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        loaded, split = _pick_split(loaded, split, name)
        return loaded, name, split
    return loaded, name, _own_split(loaded, split)


def _files_of(dataset: Any, data_files: Any, split: str | None) -> Any:
    """``data_files`` for ``load_dataset``: a dataset file, or unnamed files, as ``split``.

    ``load_dataset`` alone calls them "train", so the default split "test" would be missing.
    """
    if dataset is not None and Path(dataset).expanduser().is_file():
        data_files = str(Path(dataset).expanduser())
    if data_files is None or isinstance(data_files, Mapping):
        return data_files
    return {split or DEFAULT_SPLIT: data_files}


def recorded_data_files(data_files: Any, split: str | None) -> dict[str, list[str]] | None:
    """``data_files`` as results.json records them: split -> paths (unnamed files: ``split``).

    >>> recorded_data_files("s/test.csv", None)
    {'test': ['s/test.csv']}
    """
    if data_files is None:
        return None
    named = data_files if isinstance(data_files, Mapping) else {split or DEFAULT_SPLIT: data_files}
    return {str(name): data_file_patterns(value) for name, value in named.items()}


def _load_path(
    dataset: Any, config: str | None, data_files: Any, revision: str | None, streaming: bool
):
    """Load a local directory (saved, or files ``load_dataset`` reads), data files or a Hub name.

    Streaming, a folder written by ``save_to_disk`` (memory-mapped, not read into memory) is
    iterated as a stream by :func:`load_any_dataset`.
    """
    import datasets

    path = None if dataset is None else Path(str(dataset)).expanduser()
    if path is None or path.is_file():  # the files alone: read by the builder of their suffix
        target = builder_of(data_files)
    else:
        target = str(path) if path.exists() else str(dataset)
    name = str(dataset) if dataset is not None else ",".join(data_file_patterns(data_files))
    try:
        if data_files is None and _is_saved(path):
            return datasets.load_from_disk(str(path))
        return datasets.load_dataset(
            target, config, data_files=data_files, revision=revision, streaming=streaming
        )
    except Exception as error:
        raise DatasetError(
            f"could not load dataset {name!r}: {_load_hint(path, target)} ({error})"
        ) from error


def _is_saved(path: Path | None) -> bool:
    """Whether ``path`` is a folder written by ``save_to_disk``."""
    saved = ("state.json", "dataset_dict.json")
    return path is not None and path.is_dir() and any((path / n).exists() for n in saved)


def _load_hint(path: Path | None, target: str) -> str:
    """What to check when ``load_dataset`` failed, by what was being loaded."""
    if path is None or path.is_file():
        return f"check that the data files are valid {target} files"
    if path.exists():
        return (
            "check that the directory holds an imagefolder, parquet/csv/json files or a "
            "dataset saved with save_to_disk"
        )
    return (
        "it is not a local directory, and loading it from the Hub failed (no network, or "
        "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set?); pass a local directory or a "
        "datasets.Dataset instead, or a data file (.csv, .json, .jsonl, .parquet, .txt)"
    )


def data_file_patterns(data_files: Any) -> list[str]:
    """Every path or glob in ``data_files`` (a string, a list, or split -> paths).

    >>> data_file_patterns({"train": "a.csv", "test": ["b.csv", "c.csv"]})
    ['a.csv', 'b.csv', 'c.csv']
    """
    if data_files is None:
        return []
    if isinstance(data_files, (str, os.PathLike)):
        return [str(data_files)]
    if isinstance(data_files, Mapping):
        return [p for value in data_files.values() for p in data_file_patterns(value)]
    return [str(item) for item in data_files]


def builder_of(data_files: Any) -> str:
    """The ``datasets`` builder that reads these files, from their suffix.

    >>> builder_of({"test": ["a.jsonl", "b.json"]})
    'json'

    Raises:
        DatasetError: an unknown suffix, or files that need different builders.
    """
    builders = set()
    for pattern in data_file_patterns(data_files):
        suffix = Path(pattern).suffix.lower()
        if suffix not in DATA_FILE_BUILDERS:
            raise DatasetError(
                f"cannot read {pattern!r}: data files must end in "
                f"{', '.join(DATA_FILE_BUILDERS)}; for images pass the folder as --dataset"
            )
        builders.add(DATA_FILE_BUILDERS[suffix])
    if len(builders) != 1:
        raise DatasetError(
            f"data files {data_file_patterns(data_files)} need different readers "
            f"({', '.join(sorted(builders))}); pass files of one format"
        )
    return builders.pop()


def _local_base(dataset: Any) -> Path | None:
    """The folder ``data_files`` are relative to, or None for a Hub dataset (checked there)."""
    if dataset is None:
        return Path.cwd()
    path = Path(dataset).expanduser()
    return path if path.is_dir() else None


def _missing(pattern: str, base: Path) -> bool:
    path = base / Path(pattern).expanduser()
    return not (glob.glob(str(path)) if glob.has_magic(pattern) else path.exists())


def check_data_source(dataset: Any, data_files: Any = None, revision: str | None = None) -> None:
    """Refuse a missing local file or an unreadable one before any model is loaded.

    A ``dataset`` string that ends in a data-file suffix or starts like a path (``./``,
    ``/``, ``~``) must exist; ``data_files`` must match files, relative to a local dataset
    folder or else the working directory (a Hub dataset's are checked when it loads). A
    ``revision`` needs a Hub dataset: ``load_dataset`` ignores it for local data.

    Raises:
        DatasetError: naming the path, "no such file or directory", and what to pass.
    """
    _check_dataset_path(dataset)
    if not isinstance(dataset, (str, os.PathLike, type(None))):
        if data_files is not None or revision is not None:
            raise DatasetError(
                f"data_files= and dataset_revision= go with a Hub name, a local folder or no "
                f"dataset, not a {type(dataset).__name__}: load it with them yourself"
            )
        return
    path = None if dataset is None else Path(dataset).expanduser()
    if path is not None and path.is_file() and data_files:
        raise DatasetError(
            f"got --dataset {dataset} (a file) and --data-files; pass the files one way: "
            "--data-files alone, or --dataset with a folder the data files are in"
        )
    if revision is not None and (path is None or path.exists()):
        raise DatasetError(
            f"--dataset-revision {revision} applies to Hub datasets, but the data here are "
            "local files; leave it out (a local copy of a Hub dataset is named on the card "
            "with `hf-fisher card --dataset-id`)"
        )
    _check_data_files(dataset, data_files)


def _check_data_files(dataset: str | os.PathLike | None, data_files: Any) -> None:
    """Each local pattern matches a file, and files alone have one known reader."""
    base = _local_base(dataset)
    if data_files is None or base is None:
        return
    for pattern in data_file_patterns(data_files):
        if _missing(pattern, base):
            raise DatasetError(
                f"--data-files {pattern}: no such file or directory (looked in {base.absolute()})"
                "; pass paths or globs that match files"
            )
    if dataset is None:
        builder_of(data_files)


def _check_dataset_path(dataset: Any) -> None:
    """A dataset string that names a local file must exist and have a readable suffix."""
    if not isinstance(dataset, (str, os.PathLike)):
        return
    text = str(dataset)
    path = Path(text).expanduser()
    suffix = path.suffix.lower()
    if (suffix in DATA_FILE_BUILDERS or text.startswith(PATH_PREFIXES)) and not path.exists():
        raise DatasetError(
            f"--dataset {text}: no such file or directory ({path.absolute()}); pass an "
            "existing file (.csv, .json, .jsonl, .parquet, .txt), a folder or a Hub name"
        )
    if path.is_file():
        builder_of(text)  # a known suffix


def _own_split(dataset, split: str | None) -> str | None:
    """The split a ``datasets.Dataset`` is; refuse another one asked for by name."""
    own = str(dataset.split) if dataset.split is not None else None
    if split is not None and own is not None and split != own:
        raise DatasetError(
            f"the dataset passed is the {own!r} split, but split {split!r} was asked for; pass "
            f"the {split!r} split itself, or leave the split out"
        )
    return own or split


def _pick_split(dataset_dict, split: str | None, name: str):
    split = split or DEFAULT_SPLIT
    if split in dataset_dict:
        return dataset_dict[split], split
    raise DatasetError(
        f"dataset {name!r} has no split {split!r}; available splits: "
        f"{', '.join(dataset_dict.keys())} (choose one with --split)"
    )


def detect_columns(
    dataset, *, input_columns: Sequence[str] | None = None, label_column: str | None = None
) -> tuple[list[str], str | None, str]:
    """Find the input column(s), label column and modality; explicit names are checked.

    Returns:
        ``(input_columns, label_column_or_None, modality)``.
    """
    if isinstance(dataset, InMemoryRows):
        return ["inputs"], None if dataset.labels is None else "label", "in-memory"
    features = dataset.features
    if input_columns:
        chosen = [_check_column(features, column) for column in input_columns]
    else:
        chosen = _guess_input_columns(features)
    modality = _modality(features, chosen)
    if label_column is not None:
        label = _check_column(features, label_column)
    else:
        label = _guess_label_column(features)
    return chosen, label, modality


def _check_column(features: Mapping, column: str) -> str:
    if column not in features:
        raise DatasetError(
            f"column {column!r} does not exist; the dataset has columns {list(features)}"
        )
    return column


def _guess_input_columns(features: Mapping) -> list[str]:
    """An image column, else a known text pair, else a known text column, else any string."""
    import datasets

    images = _columns_of(features, lambda f: isinstance(f, datasets.Image), IMAGE_COLUMN_NAMES)
    if images:
        return images[:1]
    pairs = [pair for pair in TEXT_PAIR_COLUMN_NAMES if all(n in features for n in pair)]
    if pairs:
        return list(pairs[0])
    texts = [n for n in TEXT_COLUMN_NAMES if n in features]
    if texts:
        return texts[:1]
    strings = _columns_of(
        features, lambda f: isinstance(f, datasets.Value) and f.dtype in ("string", "large_string")
    )
    if strings:
        return strings[:1]
    raise DatasetError(
        f"found no image or text column among {list(features)}; name it with --input-column"
    )


def _columns_of(
    features: Mapping, matches: Callable[[Any], bool], usual_names: Sequence[str] = ()
) -> list[str]:
    """Columns whose feature ``matches``, then columns with a usual name, in that order."""
    found = [name for name, feature in features.items() if matches(feature)]
    return found + [name for name in usual_names if name in features and name not in found]


def _modality(features: Mapping, chosen: list[str]) -> str:
    """The modality of the chosen columns; refuses more than two, or two with an image."""
    import datasets

    is_image = [
        isinstance(features[name], datasets.Image) or name in IMAGE_COLUMN_NAMES for name in chosen
    ]
    if len(chosen) > 2 or (len(chosen) == 2 and any(is_image)):
        raise DatasetError(
            f"got input columns {chosen}; hf-fisher takes one image column, one text column, or "
            "two text columns (a text pair): pass --input-column once, or twice for a text pair"
        )
    return "image" if is_image[0] else "text"


def _guess_label_column(features: Mapping) -> str | None:
    """The first ``ClassLabel`` column, else the first column with a usual label name."""
    import datasets

    labels = _columns_of(features, lambda f: isinstance(f, datasets.ClassLabel), LABEL_COLUMN_NAMES)
    return labels[0] if labels else None


def sample_indices(num_rows: int, num_samples: int | None, seed: int) -> list[int]:
    """Deterministic sample of row indices (sorted); all rows when ``num_samples`` is None.

    >>> sample_indices(10, 3, seed=0) == sample_indices(10, 3, seed=0)
    True
    """
    if num_rows == 0:
        raise DatasetError("the dataset split is empty; choose another split or dataset")
    if num_samples is None or num_samples >= num_rows:
        if num_samples is not None and num_samples > num_rows:
            warnings.warn(
                f"--num-samples {num_samples} is larger than the split ({num_rows} rows); "
                "evaluating all of them",
                stacklevel=2,
            )
        return list(range(num_rows))
    if num_samples <= 0:
        raise DatasetError(f"num_samples must be positive, got {num_samples}")
    chosen = np.random.default_rng(seed).choice(num_rows, size=num_samples, replace=False)
    return sorted(int(i) for i in chosen)


def _decode_image(value: Any):
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, Mapping):
        if value.get("bytes") is not None:
            image = Image.open(io.BytesIO(value["bytes"]))
        elif value.get("path"):
            image = Image.open(value["path"])
        else:
            raise ValueError("image entry has neither bytes nor path")
        image.load()
        return image
    if isinstance(value, np.ndarray):
        return value
    raise ValueError(f"unsupported image value of type {type(value).__name__}")


def label_domain(
    dataset, column: str | None, limit: int | None = None
) -> tuple[list[str] | None, list | None]:
    """What the label column can hold, for :func:`~hf_fisher.labels.align_labels`.

    A stream's ``ClassLabel`` names come from its features; any other label column of a
    stream is read (that column alone) over the rows to be evaluated: the first ``limit``,
    or all of them.

    Returns:
        ``(names, None)`` for a ``ClassLabel`` column (rows hold positions in ``names``),
        ``(None, values)`` with the distinct values of any other column, ``(None, None)``
        without a label column.
    """
    import datasets

    if column is None:
        return None, None
    if isinstance(dataset, InMemoryRows):
        return None, sorted(set(dataset.labels), key=str)
    feature = dataset.features[column]
    inner = getattr(feature, "feature", None)  # a List / Sequence column: multi-label rows
    if isinstance(inner, datasets.ClassLabel):
        return list(inner.names), None
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names), None
    if is_stream(dataset):
        return None, _streamed_values(dataset, column, limit)
    if isinstance(inner, datasets.Value):
        values = {v for row in dataset[column] if row is not None for v in row if v is not None}
        return None, sorted(values, key=str)
    if isinstance(feature, datasets.Value):
        return None, sorted((v for v in dataset.unique(column) if v is not None), key=str)
    return None, None


def _streamed_values(stream: Any, column: str, limit: int | None) -> list:
    """The distinct non-missing values of one column over a stream's first ``limit`` rows."""
    values: set = set()
    for row in itertools.islice(stream.select_columns([column]), limit):
        value = row[column]
        values.update(value if isinstance(value, list) else [value])
    values.discard(None)
    return sorted(values, key=str)


def planned_indices(rows: Any, num_samples: int | None, seed: int) -> list[int] | None:
    """The rows to evaluate: a seeded sample (:func:`sample_indices`), or a stream's first rows.

    A stream cannot be sampled without reading it whole, so ``num_samples`` takes its first N
    rows (positions 0 to N-1); None for a whole stream, whose length is known once read.
    """
    if not is_stream(rows):
        return sample_indices(len(rows), num_samples, seed)
    return None if num_samples is None else list(range(num_samples))


def known_num_rows(rows: Any, split: str | None) -> int | None:
    """The split's row count: ``len`` of a ``Dataset``; a stream's from its metadata, if any."""
    if not is_stream(rows):
        return len(rows)
    splits = rows.info.splits or {}
    found = splits.get(split) if split is not None else None
    return None if found is None or not found.num_examples else int(found.num_examples)


def stream_rows(stream: Any, input_columns: Sequence[str], modality: str) -> Iterator:
    """``(position, row)`` of a stream, images left encoded: a row passed over costs no decode."""
    import datasets

    column = input_columns[0]
    if modality == "image" and isinstance(stream.features[column], datasets.Image):
        stream = stream.cast_column(column, datasets.Image(decode=False))
    return enumerate(stream)


def is_missing_text(value: Any) -> bool:
    r"""True for None, NaN (a CSV's empty cell) and empty or whitespace-only strings.

    >>> [is_missing_text(v) for v in (None, float("nan"), "", "  \t", "None", 0)]
    [True, True, True, True, False, False]
    """
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()


def _missing_in_memory(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return any(is_missing_text(part) for part in value)
    return is_missing_text(value)


class _Skip(Exception):  # noqa: N818 - a signal, not an error
    """A row to skip, with the reason recorded for it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _decode_input(row: Mapping, input_columns: Sequence[str], modality: str) -> Any:
    """One row's input: a decoded image, a text, or a (text, text_pair) tuple."""
    if modality == "image":
        return _decode_image(row[input_columns[0]])
    texts = [row[column] for column in input_columns]
    empty = [c for c, t in zip(input_columns, texts, strict=True) if is_missing_text(t)]
    if empty:
        raise _Skip(f"missing text in column(s) {empty}")
    return tuple(str(t) for t in texts) if len(texts) == 2 else str(texts[0])


def _decode_in_memory(
    dataset: InMemoryRows,
    indices: Sequence[int],
    label_column: str | None,
    alignment: LabelAlignment,
) -> DecodedRows:
    """Rows of an in-memory batch: a tensor is taken whole; missing texts are skipped."""
    values = dataset.inputs
    if hasattr(values, "shape"):
        chosen = values[list(indices)]
        kept = [int(i) for i in indices]
        skipped = []
    else:
        kept = [int(i) for i in indices if not _missing_in_memory(values[i])]
        chosen = [values[i] for i in kept]
        skipped = [
            {"index": int(i), "reason": "missing input (None, NaN or empty text)"}
            for i in indices
            if _missing_in_memory(values[i])
        ]
    labels = (
        None
        if dataset.labels is None
        else [alignment.model_id(dataset.labels[i], label_column) for i in kept]
    )
    return DecodedRows(kept, chosen, labels, skipped)


def decode_rows(
    dataset,
    indices: Sequence[int],
    input_columns: Sequence[str],
    label_column: str | None,
    modality: str,
    alignment: LabelAlignment | None = None,
) -> DecodedRows:
    """Read ``indices`` from the dataset; unreadable or empty inputs are skipped and listed.

    Labels become the model's class ids through ``alignment`` (integers are taken as ids
    without one).
    """
    import datasets

    alignment = alignment or LabelAlignment(None, None, "ids")
    if isinstance(dataset, InMemoryRows):
        return _decode_in_memory(dataset, indices, label_column, alignment)
    if is_stream(dataset):
        pairs = _stream_pick(stream_rows(dataset, input_columns, modality), indices)
        return decode_pairs(pairs, input_columns, label_column, modality, alignment)
    subset = dataset.select(indices)
    if modality == "image" and isinstance(subset.features[input_columns[0]], datasets.Image):
        subset = subset.cast_column(input_columns[0], datasets.Image(decode=False))
    pairs = zip(indices, subset, strict=True)
    return decode_pairs(pairs, input_columns, label_column, modality, alignment)


def _stream_pick(pairs: Iterator, indices: Sequence[int]) -> list[tuple[int, Any]]:
    """The rows at ``indices`` of a stream (read up to the last one), in stream order."""
    wanted = set(indices)
    last = max(wanted, default=-1)
    stop = itertools.takewhile(lambda pair: pair[0] <= last, pairs)
    return [(position, row) for position, row in stop if position in wanted]


def decode_pairs(
    pairs: Iterable[tuple[int, Mapping]],
    input_columns: Sequence[str],
    label_column: str | None,
    modality: str,
    alignment: LabelAlignment,
) -> DecodedRows:
    """Decode ``(position, row)`` pairs; unreadable or empty inputs are skipped and listed."""
    kept, inputs, labels, skipped = [], [], [], []
    for position, row in pairs:
        try:
            value = _decode_input(row, input_columns, modality)
        except _Skip as skip:
            skipped.append({"index": int(position), "reason": skip.reason})
            continue
        except Exception as error:  # PIL raises many types for corrupt files
            skipped.append({"index": int(position), "reason": f"unreadable input: {error}"})
            continue
        if label_column is not None:
            labels.append(alignment.model_id(row[label_column], label_column))
        kept.append(int(position))
        inputs.append(value)
    if skipped:
        logger.warning(
            "skipped %d rows (unreadable or missing input): %s",
            len(skipped),
            [s["index"] for s in skipped][:20],
        )
    return DecodedRows(kept, inputs, labels if label_column is not None else None, skipped)
