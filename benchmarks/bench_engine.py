"""Fisher engine benchmark: every method against a faithful per-sample reference.

Prints, per model, samples/s, forward-equivalents per sample (time / time of one batched no-grad
forward, per sample), the speedup over the reference, and the relative error of lambda_max
against dense float64 ground truth (torch.func.jacrev). The forward pass, the reference, the
floor and every method run interleaved (round-robin, ``--rounds``, after a warm-up round), and
each row gives the median over the rounds with the min-max range of its forward-equivalents.
Run:

    python benchmarks/bench_engine.py                 # CNN and ViT (K=10), K=100, K=1000
    python benchmarks/bench_engine.py --quick         # smaller batch, for a smoke run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import (
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from hf_fisher.spectrum import spectrum_of_batch
from hf_fisher.testing.dense import dense_jacobian

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Timing, interleave  # noqa: E402


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


def reference_lambda_max(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The per-sample method: batch 1, one backward per class, weight gradients on."""
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    values = []
    try:
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
    finally:  # the methods run without weight gradients
        model.zero_grad(set_to_none=True)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
    return torch.stack(values)


def floor(model: torch.nn.Module, inputs: torch.Tensor) -> None:
    """1 forward + K-1 input-gradient backward passes over the batch, nothing else."""
    x = inputs.clone().requires_grad_(True)
    logits = logits_of(model)(x)
    for k in range(logits.shape[1] - 1):
        torch.autograd.grad(logits[:, k].sum(), x, retain_graph=k < logits.shape[1] - 2)


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


def row(label: str, timing: Timing, count: int, per_forward: float, ref_time: float,
        err: str, note: str = "") -> str:
    """One table row: per-sample rate, forward-equivalents (median and min-max), speedup."""
    seconds = timing.median / count
    spread = f"{timing.low / count / per_forward:.1f}-{timing.high / count / per_forward:.1f}"
    return (f"{label:<18}{1 / seconds:>11.1f}{seconds / per_forward:>12.1f}{spread:>19}"
            f"{ref_time / seconds:>9.1f}{err:>13}{note}")


def bench(name: str, model: torch.nn.Module, batch: int, ref_samples: int, truth_samples: int,
          methods: list[str], rounds: int) -> None:
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    torch.manual_seed(0)
    inputs = torch.rand(batch, 3, 32, 32)
    fn = logits_of(model)
    truth = ground_truth(model, inputs[:truth_samples])
    ref_inputs = inputs[:ref_samples]
    num_classes = fn(inputs[:1]).shape[1]
    results: dict[str, torch.Tensor] = {}

    def forward():
        with torch.no_grad():
            fn(inputs)

    def reference():
        results["reference"] = reference_lambda_max(model, ref_inputs)

    callables = {"forward": forward, "reference": reference}
    if "exact" in methods:
        callables["floor"] = lambda: floor(model, inputs)
    for method in methods:

        def run(method=method):
            results[method] = spectrum_of_batch(
                fn, inputs, method=method, num_classes=num_classes, tol=1e-3
            ).spectral_norm

        callables[method] = run
    timings = interleave(callables, rounds=rounds, warmup=1)
    per_forward = timings["forward"].median / batch
    ref_time = timings["reference"].median / ref_samples

    def error(label: str) -> str:
        estimate = results[label][:truth_samples].to(truth.dtype)
        return f"{((estimate - truth).abs() / truth).max().item():.1e}"

    print(f"\n## {name}: K={num_classes}, d={inputs[0].numel()}, batch {batch}, "
          f"forward {1 / per_forward:.0f} samples/s, {rounds} rounds interleaved "
          f"(forward min-max {timings['forward'].relative_spread:.0%} of its median)")
    print(f"{'method':<18}{'samples/s':>11}{'fwd-equiv':>12}{'[min-max]':>19}{'speedup':>9}"
          f"{'max rel err':>13}")
    print(row("reference", timings["reference"], ref_samples, per_forward, ref_time,
              error("reference")))
    if "floor" in timings:
        print(row("floor (1F+(K-1)B)", timings["floor"], batch, per_forward, ref_time, ""))
    for method in methods:
        note = ""
        if method == "exact":
            note = f"  ({timings['exact'].median / timings['floor'].median:.2f}x floor)"
        print(row(method, timings[method], batch, per_forward, ref_time, error(method), note))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3, help="timed interleaved rounds (>= 1)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = 16 if args.quick else 64
    rounds = args.rounds
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, "
          f"median of {rounds} interleaved rounds")
    bench("CNN (ResNet)", resnet(10), batch, 4, 4, ["exact", "lanczos", "power", "sketch"], rounds)
    bench("ViT", vit(10), batch, 4, 4, ["exact", "lanczos", "sketch"], rounds)
    bench("CNN K=100", resnet(100), batch, 2, 2, ["exact", "lanczos"], rounds)
    bench("CNN K=1000", resnet(1000), batch, 1, 1, ["lanczos"], rounds)


if __name__ == "__main__":
    main()
