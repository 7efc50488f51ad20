"""Fisher engine benchmark: every method against a faithful per-sample reference.

Prints, per model, samples/s, forward-equivalents per sample (time / time of one batched no-grad
forward, per sample), the speedup over the reference, and the relative error of lambda_max
against dense float64 ground truth (torch.func.jacrev). Run:

    python benchmarks/bench_engine.py                 # CNN and ViT (K=10), K=100, K=1000
    python benchmarks/bench_engine.py --quick         # smaller batch, for a smoke run
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import (
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from hf_fisher.spectrum import spectrum_of_batch
from hf_fisher.testing.dense import dense_jacobian


def resnet(num_labels: int) -> torch.nn.Module:
    torch.manual_seed(0)  # the same weights every run, so figures are comparable across runs
    config = ResNetConfig(
        num_channels=3, embedding_size=32, hidden_sizes=[32, 64, 128], depths=[1, 1, 1],
        layer_type="basic", num_labels=num_labels,
    )
    return ResNetForImageClassification(config).eval()


def vit(num_labels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32, patch_size=4, num_channels=3, hidden_size=96, num_hidden_layers=4,
        num_attention_heads=4, intermediate_size=192, num_labels=num_labels,
        attn_implementation="eager",
    )
    return ViTForImageClassification(config).eval()


def logits_of(model: torch.nn.Module):
    return lambda x: model(pixel_values=x).logits


def timed(fn, repeats: int = 1) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def reference_lambda_max(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The per-sample method: batch 1, one backward per class, weight gradients on."""
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    values = []
    for sample in inputs:
        x = sample[None].clone().requires_grad_(True)
        log_probs = torch.log_softmax(model(pixel_values=x).logits, dim=1)[0]
        probs = log_probs.detach().exp().double()
        grads = []
        for k in range(log_probs.shape[0]):
            model.zero_grad(set_to_none=True)
            x.grad = None
            log_probs[k].backward(retain_graph=k < log_probs.shape[0] - 1)
            grads.append(x.grad.reshape(-1).double().clone())
        rows = torch.stack(grads)  # F = sum_k p_k g_k g_k^T
        weighted = probs.sqrt()[:, None] * rows
        values.append(torch.linalg.eigvalsh(weighted @ weighted.T)[-1])
    return torch.stack(values)


def floor_time(model: torch.nn.Module, inputs: torch.Tensor) -> float:
    """1 forward + K-1 input-gradient backward passes over the batch, nothing else."""

    def run():
        x = inputs.clone().requires_grad_(True)
        logits = logits_of(model)(x)
        for k in range(logits.shape[1] - 1):
            torch.autograd.grad(logits[:, k].sum(), x, retain_graph=k < logits.shape[1] - 2)

    return timed(run)


def ground_truth(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    model64 = model.double()
    fn = logits_of(model64)
    jac = dense_jacobian(fn, inputs.double())
    with torch.no_grad():
        p = torch.softmax(fn(inputs.double()), dim=1)
    cov = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    gram = jac @ jac.transpose(1, 2)
    values, vectors = torch.linalg.eigh(cov)
    root = vectors @ torch.diag_embed(values.clamp_min(0).sqrt()) @ vectors.transpose(1, 2)
    model.float()
    return torch.linalg.eigvalsh(root @ gram @ root)[:, -1]


def bench(name: str, model: torch.nn.Module, batch: int, ref_samples: int, truth_samples: int,
          methods: list[str]) -> None:
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    torch.manual_seed(0)
    inputs = torch.rand(batch, 3, 32, 32)
    fn = logits_of(model)
    with torch.no_grad():
        forward = timed(lambda: fn(inputs), repeats=3)
    per_forward = forward / batch
    truth = ground_truth(model, inputs[:truth_samples])
    ref_inputs = inputs[:ref_samples]
    start = time.perf_counter()
    reference = reference_lambda_max(model, ref_inputs)
    ref_time = (time.perf_counter() - start) / ref_samples
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    num_classes = fn(inputs[:1]).shape[1]
    ref_err = ((reference[:truth_samples].float() - truth).abs() / truth).max().item()
    print(f"\n## {name}: K={num_classes}, d={inputs[0].numel()}, batch {batch}, "
          f"forward {1 / per_forward:.0f} samples/s")
    print(f"{'method':<16}{'samples/s':>11}{'fwd-equiv':>11}{'speedup':>9}{'max rel err':>13}")
    print(f"{'reference':<16}{1 / ref_time:>11.1f}{ref_time / per_forward:>11.1f}{1.0:>9.1f}"
          f"{ref_err:>13.1e}")
    if "exact" in methods:
        floor = floor_time(model, inputs) / batch
        print(f"{'floor (1F+(K-1)B)':<16}{1 / floor:>11.1f}{floor / per_forward:>11.1f}"
              f"{ref_time / floor:>9.1f}{'':>13}")
    for method in methods:
        result = {}

        def run(method=method, result=result):
            result["s"] = spectrum_of_batch(fn, inputs, method=method, num_classes=num_classes,
                                            tol=1e-3)

        seconds = timed(run) / batch
        estimate = result["s"].spectral_norm[:truth_samples]
        err = ((estimate - truth).abs() / truth).max().item()
        note = ""
        if method == "exact":
            note = f"  ({seconds / floor:.2f}x floor)"
        print(f"{method:<16}{1 / seconds:>11.1f}{seconds / per_forward:>11.1f}"
              f"{ref_time / seconds:>9.1f}{err:>13.1e}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = 16 if args.quick else 64
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32")
    bench("CNN (ResNet)", resnet(10), batch, 4, 4, ["exact", "lanczos", "power", "sketch"])
    bench("ViT", vit(10), batch, 4, 4, ["exact", "lanczos", "sketch"])
    bench("CNN K=100", resnet(100), batch, 2, 2, ["exact", "lanczos"])
    bench("CNN K=1000", resnet(1000), batch, 1, 1, ["lanczos"])


if __name__ == "__main__":
    main()
