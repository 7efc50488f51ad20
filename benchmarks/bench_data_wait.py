"""How long the Fisher loop waits for data: in memory or streamed, with and without prefetch.

Run: ``PYTHONPATH=. python benchmarks/bench_data_wait.py [--images 360] [--rounds 3]``.

The data are the bundled digits written as a class-folder imagefolder of PNG files (decoded
and put through the image processor for every batch, as a user's folder is); the model is
the bundled digits ResNet (the default ``hf-fisher evaluate`` job). Each configuration runs
once per round, interleaved, and the table gives the median and the range over the rounds
of ``environment.fisher_loop.data_wait_fraction`` (the share of the loop's wall time spent
waiting for the next batch) and of the loop's throughput. Issue 14's target: < 10% waiting.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from hf_fisher.adapters import load_classifier
from hf_fisher.digits import DEFAULT_MODEL_DIR, load_digits_dataset
from hf_fisher.runner import evaluate_robustness

CONFIGS = (
    ("in memory", False, 0),
    ("in memory", False, 2),
    ("streamed", True, 0),
    ("streamed", True, 2),
)


def write_imagefolder(root: Path, count: int) -> Path:
    """``count`` held-out digits as PNGs, one folder per class."""
    rows = load_digits_dataset("test")
    rows = rows.select(range(min(count, len(rows))))
    for position, (image, digit) in enumerate(zip(rows["image"], rows["label"], strict=True)):
        (root / str(digit)).mkdir(parents=True, exist_ok=True)
        image.save(root / str(digit) / f"{position:04d}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=360)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    classifier = load_classifier(str(DEFAULT_MODEL_DIR))
    found: dict[tuple, list[dict]] = {config: [] for config in CONFIGS}
    with tempfile.TemporaryDirectory() as scratch:
        folder = write_imagefolder(Path(scratch) / "digits", args.images)
        for _ in range(args.rounds):
            for config in CONFIGS:
                _, streaming, prefetch = config
                report = evaluate_robustness(
                    classifier,
                    str(folder),
                    split="train",
                    streaming=streaming,
                    prefetch=prefetch,
                    batch_size=args.batch_size,
                    progress=False,
                )
                loop = report.results["environment"]["fisher_loop"]
                loop["samples"] = report.summary["num_samples"]
                found[config].append(loop)
    print(
        f"{args.images} digit PNGs, batch {args.batch_size}, {args.threads} torch thread(s), "
        f"{args.rounds} interleaved rounds (median [min, max])"
    )
    print(f"{'data':<11}{'prefetch':>9}{'waiting on data':>26}{'samples/s in the loop':>30}")
    for config, loops in found.items():
        waits = [loop["data_wait_fraction"] for loop in loops]
        rates = [loop["samples"] / loop["wall_time_s"] for loop in loops]
        print(
            f"{config[0]:<11}{config[2]:>9}{_cell(waits, '{:.1%}'):>26}{_cell(rates, '{:.0f}'):>30}"
        )


def _cell(values: list[float], style: str) -> str:
    median = style.format(statistics.median(values))
    return f"{median} [{style.format(min(values))}, {style.format(max(values))}]"


if __name__ == "__main__":
    main()
