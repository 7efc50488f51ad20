"""The bundled real-data example: scikit-learn's handwritten digits and a tiny ResNet for them.

Both work offline. The digits are the 1,797 real 8x8 scans that ship with scikit-learn; the
default model in :data:`DEFAULT_MODEL_DIR` was trained on the "train" split by
``scripts/train_default_model.py`` (see ``model_cards/digits-resnet.md``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hf_fisher.errors import DatasetError

if TYPE_CHECKING:  # imported in load_digits_dataset: DEFAULT_MODEL_DIR alone stays light
    import datasets

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "digits-resnet"
"""Directory of the bundled digits ResNet; ``load_classifier(DEFAULT_MODEL_DIR)`` loads it."""
SPLIT_FILE = DEFAULT_MODEL_DIR.parent / "digits-test-indices.json"
"""The rows of the "test" split, frozen from :func:`_split_indices` (a test checks they agree)."""

SPLITS = ("train", "test")
SPLIT_SEED = 0
TEST_FRACTION = 0.2
_NATIVE_SIZE = 8


def _split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Stratified 80/20 split with a fixed seed; sorted so row order is stable."""
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    return {"train": np.sort(train), "test": np.sort(test)}


def _frozen_split(num_rows: int) -> dict[str, np.ndarray]:
    """The split of :func:`_split_indices`, read from :data:`SPLIT_FILE` (no scikit-learn)."""
    test = np.asarray(json.loads(SPLIT_FILE.read_text(encoding="utf-8"))["test"])
    return {"train": np.setdiff1d(np.arange(num_rows), test), "test": test}


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: (1797, 8, 8) float64 ink levels 0..16 and (1797,) int labels.

    ``import sklearn`` costs ~1 s of CPU (it imports scipy.stats), more than the rest of the
    loading; the digits are one gzipped CSV inside the package, which ``load_digits`` parses
    the same way. So read that file where the package lies, without importing it, and fall
    back to ``load_digits()`` if the file is not there.
    """
    spec = importlib.util.find_spec("sklearn")  # finds the package; runs none of its code
    origin = Path(spec.origin).parent if spec is not None and spec.origin else None
    path = origin / "datasets" / "data" / "digits.csv.gz" if origin is not None else None
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1].reshape(-1, _NATIVE_SIZE, _NATIVE_SIZE), table[:, -1].astype(int)


def load_digits_dataset(split: str = "test", *, upsample: int = 32) -> datasets.Dataset:
    """Return a split of scikit-learn's digits as an image-classification ``datasets.Dataset``.

    Real data that needs no download: each 8x8 scan (ink levels 0..16) is scaled to 0..255 and
    resized to ``upsample`` x ``upsample`` with bilinear interpolation, the resolution at which the
    default model works.

    Args:
        split: "train" (1,437 rows) or "test" (360 rows); stratified by label, fixed seed.
        upsample: side length of the returned images, at least 8 (8 keeps the native scans).

    Returns:
        A dataset with columns ``image`` (greyscale PIL, ``datasets.Image()``) and ``label``
        (``ClassLabel`` with names "0".."9").

    Raises:
        DatasetError: for an unknown split or an invalid ``upsample``.

    >>> ds = load_digits_dataset("test", upsample=16)
    >>> len(ds), ds[0]["image"].size, ds.features["label"].names[:3]
    (360, (16, 16), ['0', '1', '2'])
    """
    if split not in SPLITS:
        raise DatasetError(f"got split {split!r}; the digits dataset has splits {list(SPLITS)}")
    if not isinstance(upsample, int) or isinstance(upsample, bool) or upsample < _NATIVE_SIZE:
        raise DatasetError(
            f"got upsample={upsample!r}; pass an integer side length >= {_NATIVE_SIZE} "
            "(the default model expects 32)"
        )
    import datasets
    from PIL import Image

    images_8x8, labels = _digits_arrays()
    indices = _frozen_split(len(labels))[split]
    scans = np.rint(images_8x8[indices] * (255.0 / 16.0)).astype(np.uint8)
    images = [Image.fromarray(scan, mode="L") for scan in scans]
    if upsample != _NATIVE_SIZE:
        images = [image.resize((upsample, upsample), Image.Resampling.BILINEAR) for image in images]
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=[str(digit) for digit in range(10)]),
        }
    )
    return datasets.Dataset.from_dict(
        {"image": images, "label": labels[indices].tolist()}, features=features, split=split
    )
