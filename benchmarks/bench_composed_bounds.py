"""How loose the composed architecture bound is on the test-zoo ResNet, ConvNeXt and ViT.

Run: ``PYTHONPATH=. python benchmarks/bench_composed_bounds.py [--samples 8]``.

For each config-built tiny model (hf_fisher/testing/models.py, random weights, float64) it
prints the composed ``||J||`` bound (or estimate, for attention) of the logits with respect to
the model's input, the largest exact local ``||J(x)||_2`` over random inputs (dense Jacobian,
SVD), their ratio, and the largest per-block factors. Like is compared with like: a Lipschitz
constant of the logits against observed Jacobian norms at data points.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from hf_fisher.adapters import load_classifier
from hf_fisher.bounds import composed_bound
from hf_fisher.testing.models import build_convnext, build_resnet, build_vit


def dense_norm(model, x: torch.Tensor) -> float:
    jacobian = torch.autograd.functional.jacobian(
        lambda v: model(pixel_values=v[None]).logits[0], x
    )
    return float(torch.linalg.matrix_norm(jacobian.reshape(len(jacobian), -1), 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | kind | composed ||J|| | max observed ||J(x)|| | ratio | largest factors |")
    print("|---|---|---|---|---|---|")
    for name, build in (("ResNet", build_resnet), ("ConvNeXt", build_convnext), ("ViT", build_vit)):
        with tempfile.TemporaryDirectory() as directory:
            build(directory)
            classifier = load_classifier(directory, dtype=torch.float64)
        model = classifier.model
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(
            args.samples, *classifier.input_shape, generator=generator, dtype=torch.float64
        )
        bound = composed_bound(model, lambda v, m=model: m(pixel_values=v), inputs)
        observed = max(dense_norm(model, x) for x in inputs)
        top = sorted(bound.layer_norms, key=lambda e: -e.norm)[:2]
        factors = ", ".join(f"{e.type} {e.norm:.3g} ({e.kind})" for e in top)
        print(
            f"| {name} | {bound.kind} | {bound.jacobian_bound:.3g} | {observed:.3g} | "
            f"{bound.jacobian_bound / observed:.3g} | {factors} |"
        )


if __name__ == "__main__":
    main()
