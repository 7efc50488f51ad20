"""GPU smoke test: the Fisher engine on ViT-B/16 at 224x224 (K=1000), checked against float64.

On a CUDA machine this builds a ViT-B/16 from ``ViTConfig`` defaults (random weights,
``torch.manual_seed(0)``, eager attention, 1000 classes), runs ``fisher_spectrum`` (method
``auto``) on 64 random 224x224 images in float32 (``--tf32`` allows TF32), and prints images/s,
forward-equivalents per image (the engine's time per image over a batched no-grad forward's),
the Lanczos iterations and the peak GPU memory. It then recomputes lambda_max of 2 of the images
in float64 on the CPU (Lanczos to 1e-8) and exits 1 if any relative error exceeds
``--tolerance`` (1e-3).

Without a CUDA device the default run prints "no CUDA device; nothing measured" and exits 0.
``--device cpu --images 2 --small`` is the same pipeline on a tiny ViT (image 32, K=10), a smoke
run that the test suite executes.

    python scripts/gpu_smoke.py                 # on a GPU machine
    python scripts/gpu_smoke.py --tf32          # TF32 matmuls: faster, lambda moves ~1e-3
    python scripts/gpu_smoke.py --device cpu --images 2 --small --method lanczos
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
from transformers import ViTConfig, ViTForImageClassification

from hf_fisher import fisher_spectrum, load_classifier
from hf_fisher._device import tf32_mode

FULL = {"image_size": 224, "num_labels": 1000}  # every other field: ViTConfig's (ViT-B/16)
SMALL = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "num_labels": 10,
}
REFERENCE = {"method": "lanczos", "tol": 1e-8, "max_iter": 400}


def build_vit(small: bool) -> ViTForImageClassification:
    """A seeded ViT with random weights, eval mode, frozen (only input gradients are used)."""
    torch.manual_seed(0)
    config = ViTConfig(**(SMALL if small else FULL), attn_implementation="eager")
    return ViTForImageClassification(config).eval().requires_grad_(False)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], device: torch.device) -> tuple[object, float]:
    """``function()`` and its wall time in seconds, the device's queue drained at both ends."""
    _synchronize(device)
    start = time.perf_counter()
    value = function()
    _synchronize(device)
    return value, time.perf_counter() - start


def forward_seconds(classifier, images: torch.Tensor, batch_size: int) -> float:
    """Seconds of one batched no-grad forward pass over ``images`` (after a warm-up batch)."""
    chunks = images.split(batch_size)
    with torch.no_grad():
        classifier(chunks[0])  # warm-up: kernels chosen, memory pools filled
        _, seconds = timed(lambda: [classifier(chunk) for chunk in chunks], classifier.device)
    return seconds


def reference_errors(model, images: torch.Tensor, measured: torch.Tensor) -> list[float]:
    """Relative errors of ``measured`` lambda_max against a float64 CPU Lanczos run."""
    shape = tuple(images.shape[1:])
    reference = load_classifier(model, device="cpu", dtype=torch.float64, input_shape=shape)
    exact = fisher_spectrum(reference, images.to("cpu", torch.float64), **REFERENCE)
    truth = exact.spectral_norm
    return ((measured.cpu() - truth).abs() / truth).tolist()


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--images", type=int, default=64, help="random images to measure")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--method", default="auto", help="the engine's method (default auto)")
    parser.add_argument("--check", type=int, default=2, help="images checked in float64")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="relative, lambda_max")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions")
    parser.add_argument("--small", action="store_true", help="a tiny ViT (image 32, K=10)")
    return parser.parse_args(argv)


def _iterations(result) -> str:
    if result.iterations is None:
        return f"none (method {result.method})"
    counts = [int(count) for count in result.iterations]
    return f"median {statistics.median(counts):g}, max {max(counts)} (method {result.method})"


def _peak_memory(device: torch.device) -> str:
    if device.type != "cuda":
        return "n/a (CPU run)"
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print and check; 0 when every checked lambda_max is within the tolerance."""
    args = parse(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; nothing measured (try --device cpu --images 2 --small)")
        return 0
    model = build_vit(args.small)
    size = model.config.image_size
    images = torch.rand(args.images, 3, size, size, generator=torch.Generator().manual_seed(0))
    reference_model = copy.deepcopy(model)  # before the classifier moves the model
    classifier = load_classifier(
        model, device=device, dtype=torch.float32, input_shape=(3, size, size)
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tf32_mode(args.tf32):
        forward = forward_seconds(classifier, images.to(device), args.batch_size)
        result, seconds = timed(
            lambda: fisher_spectrum(
                classifier, images, method=args.method, batch_size=args.batch_size
            ),
            device,
        )
    checked = slice(0, args.check)
    errors = reference_errors(reference_model, images[checked], result.spectral_norm[checked])
    worst = max(errors)
    name = "tiny ViT" if args.small else "ViT-B/16"
    print(f"device: {device} ({_device_name(device)}), torch {torch.__version__}")
    print(f"model: {name}, image {size}, K={model.config.num_labels}, float32, "
          f"tf32 {'on' if args.tf32 else 'off'}")  # fmt: skip
    print(f"images: {args.images}, batch size {args.batch_size}")
    print(f"images/s: {args.images / seconds:.3g}")
    print(f"forward-equivalents per image: {seconds / forward:.3g}")
    print(f"Lanczos iterations: {_iterations(result)}")
    print(f"peak GPU memory: {_peak_memory(device)}")
    verdict = "ok" if worst <= args.tolerance else "FAILED"
    print(
        f"lambda_max vs float64 CPU ({args.check} images): max relative error {worst:.3g} "
        f"(tolerance {args.tolerance:g}): {verdict}"
    )
    return 0 if verdict == "ok" else 1


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


if __name__ == "__main__":
    sys.exit(main())
