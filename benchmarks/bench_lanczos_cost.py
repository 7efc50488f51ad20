"""Products per sample and errors of the "lanczos" method: old (random start, 16 class-space
probes) against new (informed start, Krylov-deflated adaptive trace), against exact values.

Config-built models with random weights at 32x32 (d = 3072), float64, one thread. For each
model and K: mean Lanczos iterations (Fisher products) to ``tol``, mean trace probes (backward
passes), the forward-equivalents per sample they add up to (1 forward + 1 backward for the
informed start + ``PRODUCT_FWD`` per product + 1 per probe; ``PRODUCT_FWD`` = 2.1 measured on
CPU, ~2.25 on ViT-B/16), the worst relative error of lambda_max, the mean relative trace error
and reported relative standard error, and the fraction of samples within 2 reported standard
errors of the exact trace.

    python benchmarks/bench_lanczos_cost.py [--classes 100 1000] [--batch 8] [--mix 0.2]
"""

from __future__ import annotations

import argparse

import torch
from transformers import (
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from hf_fisher.estimators.hutchinson import class_space_hutchinson, deflated_class_space_hutchinson
from hf_fisher.estimators.lanczos import lanczos
from hf_fisher.estimators.matrix_free import _top_class_score, trace_with_ritz_bounds
from hf_fisher.operators import FisherOperator

PRODUCT_FWD = 2.1
IMAGE = 32


def vit(num_labels: int, init: float) -> torch.nn.Module:
    config = ViTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        image_size=IMAGE, patch_size=4, num_labels=num_labels, initializer_range=init,
        attn_implementation="eager",
    )  # fmt: skip
    return ViTForImageClassification(config)


def resnet(num_labels: int, init: float) -> torch.nn.Module:
    config = ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1], layer_type="basic",
        num_labels=num_labels,
    )  # fmt: skip
    model = ResNetForImageClassification(config)
    with torch.no_grad():
        model.classifier[-1].weight.mul_(init / 0.02)
    return model


MODELS = {"vit": vit, "resnet": resnet}


def measure(name: str, classes: int, init: float, batch: int, tol: float, mix: float) -> None:
    torch.manual_seed(0)
    model = MODELS[name](classes, init).double().eval()
    inputs = torch.rand(batch, 3, IMAGE, IMAGE, dtype=torch.float64)

    def logit_fn(x: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=x).logits

    op = FisherOperator(logit_fn, inputs)
    exact = op.exact_trace()
    truth = lanczos(op, tol=1e-9, max_iter=classes + 1, seed=99).eigenvalues[:, 0]
    p_top = op.probs.max(dim=1).values.mean().item()
    print(f"\n{name} K={classes} init={init} p_top={p_top:.2f}  (exact trace / lambda = "
          f"{(exact / truth).mean().item():.1f})")  # fmt: skip
    header = "variant", "iter", "probes", "fwd-eq", "lam err", "tr err", "tr SE", "in 2SE"
    print("{:<22}{:>6}{:>8}{:>8}{:>10}{:>8}{:>8}{:>8}".format(*header))
    for variant in ("old", "random+deflated", "informed+deflated"):
        start = None if variant != "informed+deflated" else _top_class_score(op)
        eigen = lanczos(op, tol=tol, start=start, start_mix=mix, return_basis=True)
        if variant == "old":
            estimate = class_space_hutchinson(op, num_probes=16)
            probes = torch.full((batch,), 16.0)
        else:
            estimate = deflated_class_space_hutchinson(op, eigen.basis, eigen.ritz_sum)
            probes = estimate.per_sample.double()
        trace, error = trace_with_ritz_bounds(estimate, eigen)
        iterations = eigen.iterations.double()
        fwd = 1 + (start is not None) + PRODUCT_FWD * iterations + probes
        lam_err = ((eigen.eigenvalues[:, 0] - truth).abs() / truth).max().item()
        tr_err = ((trace - exact).abs() / exact).mean().item()
        inside = ((trace - exact).abs() <= 2 * error).double().mean().item()
        row = (variant, iterations.mean().item(), probes.mean().item(), fwd.mean().item(),
               lam_err, tr_err, (error / trace).mean().item(), inside)  # fmt: skip
        print("{:<22}{:>6.1f}{:>8.1f}{:>8.1f}{:>10.1e}{:>8.3f}{:>8.3f}{:>8.2f}".format(*row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--inits", type=float, nargs="+", default=[0.02, 0.3])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--mix", type=float, default=0.2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.models:
        for classes in args.classes:
            for init in args.inits:
                measure(name, classes, init, args.batch, args.tol, args.mix)


if __name__ == "__main__":
    main()
