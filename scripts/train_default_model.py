"""Train the bundled default model: a tiny ResNet on scikit-learn's digits (offline, ~10 s on CPU).

Writes ``hf_fisher/assets/digits-resnet/`` (safetensors weights, config, image processor) and the
model card ``model_cards/digits-resnet.md``, then reloads the checkpoint through
``hf_fisher.load_classifier`` and checks its accuracy matches.

    python scripts/train_default_model.py
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import ResNetConfig, ResNetForImageClassification, ViTImageProcessor

from hf_fisher.adapters import load_classifier
from hf_fisher.digits import DEFAULT_MODEL_DIR, SPLIT_SEED, TEST_FRACTION, load_digits_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
CARD_PATH = REPO_ROOT / "model_cards" / "digits-resnet.md"
COMMAND = "python scripts/train_default_model.py"
IMAGE_SIZE = 32
SEED = 0
EPOCHS = 8
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4


def build_model() -> ResNetForImageClassification:
    labels = [str(digit) for digit in range(10)]
    config = ResNetConfig(
        num_channels=1, embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1],
        layer_type="basic", downsample_in_first_stage=False, image_size=IMAGE_SIZE,
        num_labels=10, id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
    )
    return ResNetForImageClassification(config)


def pixel_values(processor: ViTImageProcessor, images: list) -> torch.Tensor:
    """Normalised inputs exactly as the saved processor produces them."""
    return processor(images=images, return_tensors="pt")["pixel_values"]


def accuracy(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(pixel_values=chunk).logits.argmax(1) for chunk in
                                 inputs.split(256)])
    return (predictions == labels).double().mean().item()


def train(output_dir: Path) -> dict:
    torch.manual_seed(SEED)
    train_set, test_set = load_digits_dataset("train"), load_digits_dataset("test")
    stats = np.stack([np.asarray(image, dtype=np.float64) / 255.0 for image in train_set["image"]])
    mean, std = round(float(stats.mean()), 4), round(float(stats.std()), 4)
    processor = ViTImageProcessor(
        do_resize=True, size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_normalize=True, image_mean=[mean], image_std=[std],
    )
    train_x = pixel_values(processor, list(train_set["image"]))
    test_x = pixel_values(processor, list(test_set["image"]))
    train_y, test_y = torch.tensor(list(train_set["label"])), torch.tensor(list(test_set["label"]))

    model = build_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    steps = EPOCHS * -(-len(train_y) // BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LEARNING_RATE, total_steps=steps)
    generator = torch.Generator().manual_seed(SEED)
    start = time.perf_counter()
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(train_y), generator=generator)
        for batch in order.split(BATCH_SIZE):
            loss = torch.nn.functional.cross_entropy(
                model(pixel_values=train_x[batch]).logits, train_y[batch]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"epoch {epoch + 1}/{EPOCHS}: loss {loss.item():.4f}")
    train_seconds = time.perf_counter() - start
    model.eval()
    metrics = {
        "train_accuracy": accuracy(model, train_x, train_y),
        "test_accuracy": accuracy(model, test_x, test_y),
        "train_seconds": train_seconds,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "mean": mean,
        "std": std,
        "num_train": len(train_y),
        "num_test": len(test_y),
    }
    if output_dir.exists():
        shutil.rmtree(output_dir)
    model.save_pretrained(output_dir, safe_serialization=True)
    processor.save_pretrained(output_dir)
    metrics["checkpoint_bytes"] = sum(f.stat().st_size for f in output_dir.iterdir())
    return metrics


def reloaded_accuracy(output_dir: Path) -> float:
    """Accuracy through the library's own path: load_classifier + prepare (pixel space)."""
    classifier = load_classifier(output_dir, device="cpu")
    test_set = load_digits_dataset("test")
    batch = classifier.prepare(test_set["image"])
    with torch.no_grad():
        predictions = classifier(batch.inputs).argmax(1).cpu()
    return (predictions == torch.tensor(list(test_set["label"]))).double().mean().item()


def write_card(metrics: dict, path: Path) -> None:
    accuracy_value = round(metrics["test_accuracy"], 4)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""---
license: apache-2.0
library_name: transformers
pipeline_tag: image-classification
tags:
- hf-fisher
- resnet
- digits
datasets:
- sklearn-digits
metrics:
- accuracy
model-index:
- name: digits-resnet
  results:
  - task:
      type: image-classification
      name: Image Classification
    dataset:
      type: sklearn-digits
      name: scikit-learn digits (test split)
      split: test
    metrics:
    - type: accuracy
      value: {accuracy_value}
      name: Test accuracy
---

# digits-resnet

The default model of [hf-fisher](../README.md): a tiny `ResNetForImageClassification`
({metrics["num_parameters"]:,} parameters, {metrics["checkpoint_bytes"] / 1024:.0f} KiB on disk)
that classifies 32x32 greyscale handwritten digits into the ten classes "0".."9". It ships inside
the package (`hf_fisher/assets/digits-resnet/`) so that examples, tests and the CLI have a real,
trained classifier without downloading anything.

## Results

| split | rows | accuracy |
|---|---|---|
| train | {metrics["num_train"]} | {metrics["train_accuracy"]:.4f} |
| test | {metrics["num_test"]} | {metrics["test_accuracy"]:.4f} |

## Data

scikit-learn's bundled `load_digits()`: 1,797 real 8x8 scans of handwritten digits (UCI
"Optical Recognition of Handwritten Digits", 43 writers), ink levels 0..16.
`hf_fisher.digits.load_digits_dataset(split)` scales them to 0..255, resizes them to 32x32
(bilinear) and splits them {1 - TEST_FRACTION:.0%}/{TEST_FRACTION:.0%} into "train"/"test",
stratified by label with seed {SPLIT_SEED}. The test split was used only for the figure above.

## Architecture and training

- `ResNetConfig(num_channels=1, embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1],
  layer_type="basic", downsample_in_first_stage=False)`, 10 labels.
- Inputs: the saved `ViTImageProcessor` resizes to 32x32, rescales to [0, 1] and normalises with
  the train-set mean {metrics["mean"]} and standard deviation {metrics["std"]} (one channel). In
  hf-fisher's default "pixels" input space this normalisation is part of the model's map, so
  Fisher quantities are measured with respect to [0, 1] pixels.
- AdamW (lr {LEARNING_RATE}, one-cycle schedule, weight decay {WEIGHT_DECAY}), batch size
  {BATCH_SIZE}, {EPOCHS} epochs, cross-entropy, no augmentation, seed {SEED}; about
  {metrics["train_seconds"]:.0f} s on a 2-core CPU with transformers {transformers.__version__}
  and torch {torch.__version__}.

## Limitations

- A demonstration model, not a product: trained on 1,437 small scans from 43 writers. It has not
  seen other digit styles (MNIST, street numbers), other resolutions or colour images, and its
  confidence on such inputs means nothing.
- The digits were upsampled from 8x8, so the 32x32 images are smooth; robustness figures
  measured on it describe this data, not natural images.
- No adversarial or noise training: it is expected to be fragile, which is what hf-fisher's
  measurements are meant to show.

## Regenerate

```bash
{COMMAND}
```

The script trains from seed {SEED}, overwrites `hf_fisher/assets/digits-resnet/` and this card,
and checks that `hf_fisher.load_classifier` on the saved checkpoint reproduces the test accuracy.
Results can differ in the last digits across torch versions and CPUs.
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--card", type=Path, default=CARD_PATH)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    transformers.logging.set_verbosity_error()
    metrics = train(args.output_dir)
    reloaded = reloaded_accuracy(args.output_dir)
    print(
        f"test accuracy {metrics['test_accuracy']:.4f} (reloaded: {reloaded:.4f}), "
        f"train accuracy {metrics['train_accuracy']:.4f}, {metrics['num_parameters']} parameters, "
        f"{metrics['checkpoint_bytes']} bytes, {metrics['train_seconds']:.1f} s"
    )
    if abs(reloaded - metrics["test_accuracy"]) > 1.5 / metrics["num_test"]:
        raise SystemExit("the reloaded checkpoint does not reproduce the test accuracy")
    write_card(metrics, args.card)
    print(f"wrote {args.output_dir} and {args.card}")


if __name__ == "__main__":
    main()
