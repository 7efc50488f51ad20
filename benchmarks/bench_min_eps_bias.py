"""Upward bias of the minimal-epsilon bisection against a stronger attack, on the digits ResNet.

The cross-check's minimal epsilon is the smallest PGD-L2 budget the bisection finds that flips a
sample. A weak attack or a coarse bracket makes it too large. Each configuration below is
compared per sample with the best known distance: the smallest flipping L2 norm any row found
(PGD-L2 with 50 steps x 4 restarts bisected to 0.1%, every configuration, and with ``--cw``
Carlini-Wagner L2). Every row is a real adversarial example, so the best known distance is an
upper bound on the true one and each ratio a lower bound on the row's bias. Printed per row: the
median ratio, the fraction of samples more than 10% above the best known, and the forward passes
per sample (each gradient pass is one forward).

    python benchmarks/bench_min_eps_bias.py             # 64 correct test digits
    python benchmarks/bench_min_eps_bias.py --samples 128 --cw
"""

from __future__ import annotations

import argparse
import time

import torch

from hf_fisher import load_classifier
from hf_fisher.attacks import minimal_epsilon
from hf_fisher.digits import DEFAULT_MODEL_DIR, load_digits_dataset

CONFIGURATIONS = {
    "previous: 20 steps, 1 restart, 10 halvings of eps_max": {
        "steps": 20,
        "restarts": 1,
        "bisection_steps": 10,
        "tolerance": None,
    },
    "1 restart, 1% relative bracket": {"steps": 20, "restarts": 1, "tolerance": 0.01},
    "default: 2 restarts, 1% relative bracket": {"steps": 20, "restarts": 2, "tolerance": 0.01},
    "4 restarts, 1% relative bracket": {"steps": 20, "restarts": 4, "tolerance": 0.01},
}
REFERENCE = {"steps": 50, "restarts": 4, "tolerance": 0.001, "bisection_steps": 30}


class Counted:
    """A logit function that counts the rows it is called on (forward passes)."""

    def __init__(self, logit_fn):
        self.logit_fn, self.rows = logit_fn, 0

    def __call__(self, inputs):
        self.rows += inputs.shape[0]
        return self.logit_fn(inputs)


def measure(logit_fn, inputs, labels, clip, settings):
    counted = Counted(logit_fn)
    start = time.perf_counter()
    settings = {"bisection_steps": 20, **settings}
    result = minimal_epsilon(counted, inputs, labels, clip=clip, **settings)
    return result.epsilon.double(), counted.rows / len(inputs), time.perf_counter() - start


def summary(name, epsilon, reference, forwards, seconds):
    ratio = epsilon / reference
    print(
        f"{name:55s} median ratio {ratio.median():.3f}  "
        f">10% above {(ratio > 1.1).double().mean():5.1%}"
        f"  forwards/sample {forwards:6.0f}"
        f"  ({seconds:.0f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64, help="test digits to attack")
    parser.add_argument("--cw", action="store_true", help="also run CW-L2 in the reference")
    args = parser.parse_args()
    torch.manual_seed(0)
    classifier = load_classifier(DEFAULT_MODEL_DIR)
    data = load_digits_dataset("test")[: args.samples]
    batch = classifier.prepare(data["image"])
    labels = torch.tensor(data["label"])
    with torch.no_grad():
        correct = classifier.logit_fn(batch)(batch.inputs).argmax(1) == labels
    batch, labels = batch.select(correct.nonzero().flatten()), labels[correct]
    logit_fn, inputs, clip = classifier.logit_fn(batch), batch.inputs, classifier.clip
    print(f"{len(inputs)} correct test digits, inputs {tuple(inputs.shape[1:])}, box {clip}")
    runs = {"reference: PGD-L2 50 steps x 4 restarts, 0.1% bracket": REFERENCE, **CONFIGURATIONS}
    results = {name: measure(logit_fn, inputs, labels, clip, s) for name, s in runs.items()}
    if args.cw:
        from hf_fisher.attacks import carlini_wagner_l2

        counted, start = Counted(logit_fn), time.perf_counter()
        cw = carlini_wagner_l2(counted, inputs, labels, clip=clip)
        results[f"CW-L2 {cw.settings.steps} steps x {cw.settings.binary_search_steps} c"] = (
            cw.norm.double(),
            counted.rows / len(inputs),
            time.perf_counter() - start,
        )
    best = torch.stack([epsilon for epsilon, _, _ in results.values()]).amin(dim=0)
    print(
        "ratios to the best known per-sample distance (min over every row; median "
        f"{best.median():.4f})"
    )
    for name, (epsilon, forwards, seconds) in results.items():
        summary(name, epsilon, best, forwards, seconds)


if __name__ == "__main__":
    main()
