"""CLEVER on the bundled digits ResNet: stability across seeds and agreement with the reference.

Run: ``PYTHONPATH=. python benchmarks/bench_clever_agreement.py [--samples 40] [--threads 1]``.

Pixel-space model (inputs in [0, 1], the processor's normalisation inside), the first
``--samples`` test digits, the companion's settings (L2, R = 2, 20 batches of 32 points).

1. Spearman between the untargeted scores of seeds 0 and 1, for the shipped estimator
   (:func:`hf_fisher.clever.lipschitz_estimate`) and for the raw Weibull location it replaces.
2. Median ratio and Spearman of the shipped scores to the reference procedure (scipy's
   ``weibull_max.fit`` location per (sample, target), the largest maximum where that fit leaves
   the search range) fed with the same batch maxima.
3. Share of (sample, target) fits flagged ``at_edge``.
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.stats
import torch
from transformers import ResNetForImageClassification

from hf_fisher.clever import LOCATION_RANGE, clever_scores, reverse_weibull_fit
from hf_fisher.digits import DEFAULT_MODEL_DIR, load_digits_dataset

RADIUS = 2.0


def pixel_model():
    """The bundled ResNet as a function of [0, 1] pixels (normalisation of its processor)."""
    model = ResNetForImageClassification.from_pretrained(DEFAULT_MODEL_DIR, dtype=torch.float32)
    model.eval()
    return lambda x: model(pixel_values=(x - 0.3057) / 0.3235).logits


def digits(count: int) -> torch.Tensor:
    data = load_digits_dataset("test")
    images = [np.asarray(data[i]["image"], dtype=np.float32) / 255.0 for i in range(count)]
    return torch.tensor(np.stack(images))[:, None]


def scores_from(lipschitz: np.ndarray, margins: np.ndarray) -> np.ndarray:
    return np.minimum(margins / lipschitz, RADIUS).min(axis=1)


def reference_lipschitz(maxima: np.ndarray) -> np.ndarray:
    """scipy's reverse Weibull location; the largest maximum where it leaves the range."""
    out = np.empty(maxima.shape[:2])
    for index in np.ndindex(*maxima.shape[:2]):
        row = maxima[index]
        location = scipy.stats.weibull_max.fit(row)[1]
        top = row.max()
        usable = np.isfinite(location) and location <= top + LOCATION_RANGE[1] * (top - row.min())
        out[index] = location if usable else top
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, x = pixel_model(), digits(args.samples)
    runs = [
        clever_scores(
            model, x, radius=RADIUS, num_batches=20, batch_points=32, clip=(0.0, 1.0), seed=seed
        )
        for seed in (0, 1)
    ]
    with torch.no_grad():
        logits = model(x).double()
    margins = [
        (logits.gather(1, logits.argmax(1, keepdim=True)) - logits.gather(1, r.targets)).numpy()
        for r in runs
    ]
    shipped = [r.untargeted.numpy() for r in runs]
    raw = [
        scores_from(
            reverse_weibull_fit(r.maxima.flatten(0, 1)).location.reshape(r.targets.shape).numpy(), m
        )
        for r, m in zip(runs, margins, strict=True)
    ]
    reference = [
        scores_from(reference_lipschitz(r.maxima.numpy()), m)
        for r, m in zip(runs, margins, strict=True)
    ]
    print(f"{args.samples} digits, L2, R={RADIUS}, 20 batches x 32 points, seeds 0 and 1")
    for name, pair in (
        ("shipped", shipped),
        ("raw Weibull location", raw),
        ("reference (scipy)", reference),
    ):
        rho = scipy.stats.spearmanr(*pair).statistic
        print(f"seed-to-seed Spearman, {name}: {rho:.3f}")
    for seed, ours, ref in zip((0, 1), shipped, reference, strict=True):
        rho = scipy.stats.spearmanr(ours, ref).statistic
        print(
            f"seed {seed}: median ratio shipped/reference {np.median(ours / ref):.3f}, "
            f"Spearman {rho:.3f}"
        )
    for seed, run in zip((0, 1), runs, strict=True):
        print(f"seed {seed}: fits at edge {int(run.at_edge.sum())} of {run.at_edge.numel()}")


if __name__ == "__main__":
    main()
