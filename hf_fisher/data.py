"""Datasets for the runner: loading, column detection, deterministic sampling, safe decoding."""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hf_fisher.errors import DatasetError

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
        labels: one integer label per row, or None.
    """

    inputs: Any
    labels: Sequence[int] | None = None

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.inputs):
            raise DatasetError(
                f"got {len(self.labels)} labels for {len(self.inputs)} inputs; pass one label "
                "per input, or none to use the predicted labels"
            )

    def __len__(self) -> int:
        return len(self.inputs)


def load_any_dataset(
    dataset: Any, *, split: str | None = "test", config: str | None = None
) -> tuple[Any, str, str | None]:
    """Load a Hub name, ``load_dataset`` kwargs, local directory or ``datasets.Dataset``.

    Returns:
        ``(dataset, name, split)`` where ``dataset`` is a ``datasets.Dataset``.

    Raises:
        DatasetError: if it cannot be loaded (offline Hub name, missing split, unknown type).
    """
    import datasets

    if isinstance(dataset, InMemoryRows):
        return dataset, "in-memory", None
    if isinstance(dataset, datasets.Dataset):
        return dataset, dataset.info.dataset_name or "in-memory", split
    if isinstance(dataset, datasets.DatasetDict):
        return _pick_split(dataset, split, "in-memory"), "in-memory", split
    if isinstance(dataset, Mapping):
        kwargs = dict(dataset)
        kwargs.setdefault("split", split)
        name = str(kwargs.get("path", "load_dataset"))
        try:
            return datasets.load_dataset(**kwargs), name, kwargs["split"]
        except Exception as error:  # datasets raises many types; re-raise one clear error
            raise DatasetError(f"load_dataset(**{kwargs!r}) failed: {error}") from error
    if not isinstance(dataset, (str, os.PathLike)):
        raise DatasetError(
            f"cannot use a dataset of type {type(dataset).__name__}; pass a Hub name, a local "
            "directory, a dict of load_dataset arguments or a datasets.Dataset"
        )
    name = str(dataset)
    path = Path(dataset)
    try:
        if path.is_dir() and (
            (path / "state.json").exists() or (path / "dataset_dict.json").exists()
        ):
            loaded = datasets.load_from_disk(str(path))
        elif path.exists():
            loaded = datasets.load_dataset(str(path), config)
        else:
            loaded = datasets.load_dataset(name, config)
    except Exception as error:
        hint = (
            "it is not a local directory, and loading it from the Hub failed (no network, or "
            "HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set?); pass a local directory or a "
            "datasets.Dataset instead"
            if not path.exists()
            else "check that the directory holds an imagefolder, parquet/csv files or a "
            "dataset saved with save_to_disk"
        )
        raise DatasetError(f"could not load dataset {name!r}: {hint} ({error})") from error
    if isinstance(loaded, datasets.DatasetDict):
        loaded = _pick_split(loaded, split, name)
    return loaded, name, split


def _pick_split(dataset_dict, split: str | None, name: str):
    if split in dataset_dict:
        return dataset_dict[split]
    if split is None and len(dataset_dict) == 1:
        return next(iter(dataset_dict.values()))
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
    import datasets

    if isinstance(dataset, InMemoryRows):
        return ["inputs"], None if dataset.labels is None else "label", "in-memory"
    features = dataset.features
    names = list(features)

    def check(column: str) -> str:
        if column not in features:
            raise DatasetError(f"column {column!r} does not exist; the dataset has columns {names}")
        return column

    if input_columns:
        chosen = [check(column) for column in input_columns]
    else:
        images = [n for n, f in features.items() if isinstance(f, datasets.Image)]
        images += [n for n in IMAGE_COLUMN_NAMES if n in features and n not in images]
        pairs = [pair for pair in TEXT_PAIR_COLUMN_NAMES if all(n in features for n in pair)]
        texts = [n for n in TEXT_COLUMN_NAMES if n in features]
        strings = [
            n
            for n, f in features.items()
            if isinstance(f, datasets.Value) and f.dtype in ("string", "large_string")
        ]
        if images:
            chosen = images[:1]
        elif pairs:
            chosen = list(pairs[0])
        elif texts or strings:
            chosen = (texts or strings)[:1]
        else:
            raise DatasetError(
                f"found no image or text column among {names}; name it with --input-column"
            )
    modality = (
        "image"
        if isinstance(features[chosen[0]], datasets.Image) or (chosen[0] in IMAGE_COLUMN_NAMES)
        else "text"
    )
    if label_column is not None:
        label = check(label_column)
    else:
        labels = [n for n, f in features.items() if isinstance(f, datasets.ClassLabel)]
        labels += [n for n in LABEL_COLUMN_NAMES if n in features and n not in labels]
        label = labels[0] if labels else None
    return chosen, label, modality


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


def decode_rows(
    dataset,
    indices: Sequence[int],
    input_columns: Sequence[str],
    label_column: str | None,
    modality: str,
    label2id: Mapping[str, int] | None = None,
) -> DecodedRows:
    """Read ``indices`` from the dataset; unreadable images are skipped and listed, not fatal."""
    import datasets

    if isinstance(dataset, InMemoryRows):
        values = dataset.inputs
        chosen = values[list(indices)] if hasattr(values, "shape") else [values[i] for i in indices]
        labels = None if dataset.labels is None else [int(dataset.labels[i]) for i in indices]
        return DecodedRows([int(i) for i in indices], chosen, labels)
    subset = dataset.select(indices)
    if modality == "image" and isinstance(subset.features[input_columns[0]], datasets.Image):
        subset = subset.cast_column(input_columns[0], datasets.Image(decode=False))
    kept, inputs, labels, skipped = [], [], [], []
    label_feature = subset.features[label_column] if label_column else None
    for position, row in zip(indices, subset, strict=True):
        try:
            if modality == "image":
                value = _decode_image(row[input_columns[0]])
            elif len(input_columns) == 2:
                value = (str(row[input_columns[0]]), str(row[input_columns[1]]))
            else:
                value = str(row[input_columns[0]])
        except Exception as error:  # PIL raises many types for corrupt files
            skipped.append({"index": int(position), "reason": f"unreadable input: {error}"})
            continue
        if label_column is not None:
            labels.append(_label_id(row[label_column], label_feature, label2id, label_column))
        kept.append(int(position))
        inputs.append(value)
    if skipped:
        logger.warning(
            "skipped %d unreadable rows: %s", len(skipped), [s["index"] for s in skipped][:20]
        )
    return DecodedRows(kept, inputs, labels if label_column is not None else None, skipped)


def _label_id(value, feature, label2id, column) -> int:
    import datasets

    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        if isinstance(feature, datasets.ClassLabel):
            return feature.str2int(value)
        if label2id and value in label2id:
            return int(label2id[value])
    raise DatasetError(
        f"label {value!r} in column {column!r} is not a class index or a known class name; "
        "pass --label-column with integer labels or labels matching the model's id2label"
    )
