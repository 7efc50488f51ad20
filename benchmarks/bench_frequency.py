"""Cost of the frequency view, in forward-equivalents, against plain batched inference.

Run: ``PYTHONPATH=. python benchmarks/bench_frequency.py [--threads 2] [--images 16]``.

1. Throughput of the I-ASIDE loop (2^M coalitions x N images, batched across both) against
   plain batched inference of the same model at the same batch size.
2. Cost of the band-restricted Fisher on top of the gradient rows it reuses.
3. The controlled low-pass / high-pass models under every fill and pixel map.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import ResNetConfig, ResNetForImageClassification

from hf_fisher.estimators.exact import gradient_rows
from hf_fisher.frequency_bands import band_fisher
from hf_fisher.iaside import spectral_importance


def tiny_resnet(channels: int = 3, num_classes: int = 10, large: bool = False):
    torch.manual_seed(0)
    config = ResNetConfig(
        num_channels=channels,
        embedding_size=32 if large else 16,
        hidden_sizes=[64, 128, 256] if large else [32, 64],
        depths=[2, 2, 2] if large else [1, 1],
        layer_type="basic",
        downsample_in_first_stage=False,
        num_labels=num_classes,
    )
    model = ResNetForImageClassification(config).eval()
    return lambda x: model(pixel_values=x).logits


def best_of(*fns, repeats: int = 5) -> list[float]:
    """Best wall time of each function, runs interleaved so that load bursts hit all alike."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            record.append(time.perf_counter() - start)
    return [min(record) for record in times]


def bench_shapley(num_images: int, batch_size: int, num_bands: int, large: bool) -> None:
    logit_fn = tiny_resnet(large=large)
    size = 64 if large else 32
    images = torch.rand(num_images, 3, size, size, generator=torch.Generator().manual_seed(0))
    num_forwards = 2**num_bands * num_images
    pool = torch.rand(batch_size, 3, size, size)

    def inference():
        with torch.no_grad():
            for _ in range(0, num_forwards, batch_size):
                logit_fn(pool)

    def shapley():
        spectral_importance(logit_fn, images, num_bands=num_bands, batch_size=batch_size)

    plain, loop = best_of(inference, shapley)
    print(
        f"I-ASIDE {'ResNet-18-like 3x64x64' if large else 'tiny ResNet 3x32x32'}, M={num_bands}, "
        f"N={num_images}, batch {batch_size}: {num_forwards} forwards; "
        f"plain inference {num_forwards / plain:,.0f} img/s, I-ASIDE loop "
        f"{num_forwards / loop:,.0f} img/s ({loop / plain:.2f}x the inference time), "
        f"{2**num_bands} forward-equivalents per image"
    )


def bench_band_fisher(num_images: int, num_bands: int) -> None:
    logit_fn = tiny_resnet()
    images = torch.rand(num_images, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def forward():
        with torch.no_grad():
            logit_fn(images)

    rows = gradient_rows(logit_fn, images)
    unit, rows_time, bands_time = best_of(
        forward,
        lambda: gradient_rows(logit_fn, images),
        lambda: band_fisher(rows, (3, 32, 32), num_bands),
    )
    print(
        f"band Fisher M={num_bands}, N={num_images}, K=10: gradient rows "
        f"{rows_time / unit:.1f} forward-equivalents, band split on top "
        f"{bands_time / unit:.1f} forward-equivalents ({bands_time * 1e3 / num_images:.2f} "
        f"ms/image, {bands_time / rows_time:.2f}x the gradient rows)"
    )


def controlled_models() -> None:
    def model(kind: str):
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(5, 256, generator=generator, dtype=torch.float64) * 0.5
        if kind == "low-pass":
            taps = torch.exp(-(torch.arange(-3, 4, dtype=torch.float64) ** 2) / 4.5)
            kernel = torch.outer(taps, taps) / taps.sum() ** 2
        else:
            kernel = torch.tensor([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], dtype=torch.float64)
        kernel, pad = kernel[None, None], kernel.shape[-1] // 2

        def logit_fn(x):
            padded = torch.nn.functional.pad(x.double(), (pad,) * 4, mode="circular")
            return torch.nn.functional.conv2d(padded, kernel).flatten(1) @ weight.T

        return logit_fn

    images = torch.rand(12, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    print("\nmodel      pixel_map fill         low-half share  score   reference score")
    for kind in ("low-pass", "high-pass"):
        for pixel_map in ("paper", "clip"):
            for fill in ("zero", "gaussian", "other_image"):
                result = spectral_importance(
                    model(kind), images.double(), fill=fill, pixel_map=pixel_map, batch_size=1024
                )
                print(
                    f"{kind:10s} {pixel_map:9s} {fill:12s} {result.distribution[:4].sum():14.2f}"
                    f"  {result.score:+.3f}  {result.reference_score:+.3f}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench_shapley(args.images, args.batch_size, num_bands=8, large=False)
    bench_shapley(4, 128, num_bands=8, large=True)
    bench_band_fisher(32, num_bands=8)
    controlled_models()


if __name__ == "__main__":
    main()
