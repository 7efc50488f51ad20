"""Peak memory of one measurement at ImageNet size (224x224 RGB, K=1000), under a budget.

Builds a small conv net (3x224x224 -> 1000 logits, random weights: the gradient rows have the
ImageNet size whatever the model), runs ONE measurement on N random images and prints, as JSON,
the process's peak resident set (VmHWM), its resident set just before the call, and what the
measurement's per-sample buffers would take if all N samples were held at once. Run one
measurement per process (the peak is the process's):

    python benchmarks/bench_companion_memory.py kl_check --samples 8 --max-memory 4GB
    python benchmarks/bench_companion_memory.py exact --samples 8 --max-memory 4GB
    PYTHONPATH=/path/to/older/checkout python benchmarks/bench_companion_memory.py kl_check \
        --samples 3      # an older hf-fisher without --max-memory: the "before" figure

Measurements: kl_check, noise, clever (top-2 target), frequency (band Fisher only), exact.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time

import torch

SIZE, CLASSES = 224, 1000
DIM = 3 * SIZE * SIZE


def conv_net(seed: int = 0) -> torch.nn.Module:
    """3x224x224 -> 1000 logits in two cheap layers (patchify conv, linear head)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, kernel_size=16, stride=16),
        torch.nn.Tanh(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32, CLASSES),
    ).eval()


def _status(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as stream:
        for line in stream:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _supported(fn, **budget) -> dict:
    """The budget keywords ``fn`` takes (none in versions before --max-memory)."""
    names = inspect.signature(fn).parameters
    return {name: value for name, value in budget.items() if name in names}


def _kl_check(model, images, labels, budget):
    from hf_fisher.kl_check import kl_check

    return kl_check(
        model, images, radii=[1e-2, 1e-1], draws=2, **_supported(kl_check, max_memory=budget)
    )


def _noise(model, images, labels, budget):
    from hf_fisher.noise import noise_curves

    options = _supported(noise_curves, max_memory=budget)
    return noise_curves(model, images, labels, sigmas=[0.0, 0.1], draws=2, clip=(0, 1), **options)


def _clever(model, images, labels, budget):
    from hf_fisher.clever import clever_scores

    options = _supported(clever_scores, max_memory=budget)
    return clever_scores(
        model, images, radius=0.5, num_batches=3, batch_points=16, untargeted=False, **options
    )


def _frequency(model, images, labels, budget):
    from hf_fisher.frequency import analyze_frequency

    options = _supported(analyze_frequency, max_memory=budget)
    if "max_memory" in options:
        options["batch_size"] = None
    return analyze_frequency(model, images, num_bands=4, shapley=False, **options)


def _exact(model, images, labels, budget):
    from hf_fisher.spectrum import spectrum_of_batch

    options = _supported(spectrum_of_batch, max_memory=budget)
    return spectrum_of_batch(model, images, method="exact", **options)


MEASUREMENTS = {
    "kl_check": (_kl_check, 4 + 8),  # rows, and (before) their float64 copy per draw
    "noise": (_noise, 0),
    "clever": (_clever, 0),
    "frequency": (_frequency, 4 + 8 + 16 + 16),  # rows, float64, complex FFT, sorted copy
    "exact": (_exact, 4),
}
"""Name -> (run, bytes per gradient-row number that the unchunked measurement holds)."""


def main() -> None:
    """Run one measurement and print its peak memory as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("measurement", choices=sorted(MEASUREMENTS))
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-memory", default="4GB")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run, row_bytes = MEASUREMENTS[args.measurement]
    model = conv_net()
    images = torch.rand(args.samples, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        labels = model(images).argmax(dim=1)
    before = _status("VmRSS:")
    started = time.perf_counter()
    run(model, images, labels, args.max_memory)
    print(
        json.dumps(
            {
                "measurement": args.measurement,
                "samples": args.samples,
                "max_memory": args.max_memory,
                "rss_before_bytes": before,
                "peak_rss_bytes": _status("VmHWM:"),
                "unchunked_buffers_bytes": args.samples * (CLASSES - 1) * DIM * row_bytes,
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
