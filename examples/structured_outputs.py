"""Tiny models and datasets for the README's structured-output examples (no downloads).

Builds a causal LM, a BERT token classifier and a SegFormer from configs (random, seeded
weights: the numbers only show the format) and the small datasets the README evaluates, made
the way users make them: a ``.jsonl`` of prompts, a ``.csv`` of sentences and a
``save_to_disk`` image dataset.

Run: python examples/structured_outputs.py [FOLDER]   (default: the current folder)
"""

import csv
import json
import sys
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from hf_fisher.testing.models import build_bert_token_classifier, build_causal_lm, build_segformer

PROMPTS = ["the movie was", "a dull film with a terrible", "the food was fine but", "the plot"]
SENTENCES = ["the movie was wonderful", "great music, great cast", "the plot was slow"]


def main(folder: Path) -> None:
    """Write tiny-lm, tiny-ner, tiny-segformer, prompts/, sentences/ and street-scenes/."""
    build_causal_lm(folder / "tiny-lm")
    build_bert_token_classifier(folder / "tiny-ner")
    build_segformer(folder / "tiny-segformer")

    (folder / "prompts").mkdir(exist_ok=True)
    with open(folder / "prompts" / "prompts.jsonl", "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps({"text": text}) + "\n" for text in PROMPTS)

    (folder / "sentences").mkdir(exist_ok=True)
    with open(folder / "sentences" / "test.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["sentence"], *([text] for text in SENTENCES)])

    rng = np.random.default_rng(0)  # 8 random 20x24 RGB "scenes"
    images = [Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)) for _ in range(8)]
    features = datasets.Features({"image": datasets.Image()})
    scenes = datasets.Dataset.from_dict({"image": images}, features=features)
    scenes.save_to_disk(folder / "street-scenes")
    print(f"wrote tiny-lm, tiny-ner, tiny-segformer, prompts, sentences, street-scenes in {folder}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
