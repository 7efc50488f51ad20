"""The bundled real-data example: scikit-learn's handwritten digits and a tiny ResNet for them.

Both work offline. The digits are the 1,797 real 8x8 scans that ship with scikit-learn; the
default model in :data:`DEFAULT_MODEL_DIR` was trained on the "train" split by
``scripts/train_default_model.py`` (see ``model_cards/digits-resnet.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hf_fisher.errors import DatasetError

if TYPE_CHECKING:  # imported in load_digits_dataset: DEFAULT_MODEL_DIR alone stays light
    import datasets

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "digits-resnet"
"""Directory of the bundled digits ResNet; ``load_classifier(DEFAULT_MODEL_DIR)`` loads it."""

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
    from sklearn.datasets import load_digits

    digits = load_digits()
    indices = _split_indices(digits.target)[split]
    scans = np.rint(digits.images[indices] * (255.0 / 16.0)).astype(np.uint8)
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
        {"image": images, "label": digits.target[indices].tolist()}, features=features, split=split
    )
