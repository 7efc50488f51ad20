"""The tiny CLIP and the class-folder images of the README's zero-shot example (no downloads).

Builds the test zoo's CLIPModel from a config (random, seeded weights: the numbers only show
the format) and an imagefolder of 12 random 32x32 RGB images, 4 in each of the class-name
folders cat/, dog/ and bird/, made the way users make one.

Run: python examples/zero_shot.py [FOLDER]   (default: the current folder)
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from hf_fisher.testing.models import CLIP_LABELS, build_clip


def main(folder: Path) -> None:
    """Write tiny-clip/ and photos/train/{cat,dog,bird}/*.png."""
    build_clip(folder / "tiny-clip")
    rng = np.random.default_rng(0)
    for label in CLIP_LABELS:
        (folder / "photos" / "train" / label).mkdir(parents=True, exist_ok=True)
        for index in range(4):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "photos" / "train" / label / f"{index}.png")
    print(f"wrote tiny-clip and photos (12 images in cat/, dog/, bird/) in {folder}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
