"""ImageNet-scale cost of the Fisher engine: config-built ViT-B/16 and ResNet-50, 224x224, K=1000.

Random weights (``torch.manual_seed(0)``, parameters frozen), so figures are about cost, not
about any trained model. Two sections:

1. Cost, per method row: forward-equivalents per sample (time per sample / time of one batched
   no-grad forward per sample; the forward, the reference and every row run interleaved,
   round-robin over ``--rounds`` after a warm-up, median and min-max), Lanczos iterations
   (mean / max over the batch), Fisher products and the backward passes outside them per
   batch (the trace's class-space probes, an informed start vector; counted and timed by
   wrapping ``FisherOperator.matvec`` and ``.vjp``) with their forward-equivalents, the trace's
   relative standard error (mean), the share of samples whose lambda_max converged, peak
   memory per sample (CPU: peak RSS above the RSS before the call, in a fresh process per row; CUDA:
   ``max_memory_allocated`` above the allocation before it; see ``_timing.py``) and the speedup
   over the per-sample reference. The reference (batch 1, weight gradients on, one backward
   pass per class) is far too slow to run at K=1000 on a CPU: each round times its forward
   pass and ``--ref-classes`` class backward passes and EXTRAPOLATES to K backward passes.
   ``--clock cpu`` times with this process's CPU time instead of wall time: on a shared CPU
   machine a short forward pass and a long Fisher run see different background load, and
   wall-clock ratios between them drift by tens of percent (CPU time, with ``--threads 1``,
   does not).
2. Accuracy, on a reduced case where ``exact`` (K-1 backward passes, exact to rounding) is
   affordable: the same two architectures, shallower and at 64x64, still K=1000. Relative error
   of lambda_max and of the trace against ``exact``, and how many samples have
   ``|trace error| <= 2 SE``.

Rows: ``auto`` (whatever the defaults are: Lanczos at K=1000), ``lanczos-random-16`` (a random
start and all 16 class-space trace probes: the default before issue 14) and ``hutchpp``
(Lanczos for lambda_max, input-space Hutch++ trace). ``--head-scale`` scales the classifier
head for confident, trained-like predictions. Run:

    python benchmarks/bench_scale.py --quick                          # tiny smoke run, seconds
    python benchmarks/bench_scale.py --model resnet --batch 2 --rounds 3 --threads 2
    python benchmarks/bench_scale.py --model vit --batch 2 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from hf_fisher.operators import FisherOperator
from hf_fisher.spectrum import spectrum_of_batch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Timing, cuda_peak_delta, interleave, peak_rss_delta, run_child  # noqa: E402

NUM_CLASSES = 1000

Clock = Callable[[], float]
CLOCKS: dict[str, Clock] = {
    "wall": time.perf_counter,
    # this process's CPU time: on a shared machine, other processes' load barely moves it
    "cpu": time.process_time,
}


@dataclass(frozen=True)
class Row:
    """One method configuration: a label and the options passed to ``spectrum_of_batch``."""

    label: str
    options: dict


# "lanczos-random-16" is the closest the options come to the default before issue 14: a random
# start and all 16 trace probes (a tiny trace_rtol never stops early; the probes are then
# deflated by the Krylov basis).
ROWS = (
    Row("auto", {"method": "auto"}),
    Row(
        "lanczos-random-16",
        {"method": "lanczos", "lanczos_start": "random", "trace_rtol": 1e-9, "num_probes": 16},
    ),
    Row("hutchpp", {"method": "hutchpp"}),
)


def chosen_rows(args: argparse.Namespace) -> list[Row]:
    """The rows named by ``--rows`` (all by default), in table order."""
    return [row for row in ROWS if args.rows is None or row.label in args.rows]


# --- models ---------------------------------------------------------------------------------

SIZES = {  # (kind, size) -> (config kwargs, image size)
    ("vit", "full"): ({}, 224),  # ViTConfig defaults: ViT-B/16
    ("resnet", "full"): ({}, 224),  # ResNetConfig defaults: ResNet-50
    ("vit", "reduced"): (
        dict(
            hidden_size=192,
            num_hidden_layers=2,
            num_attention_heads=3,
            intermediate_size=768,
            image_size=64,
        ),
        64,
    ),  # fmt: skip
    ("resnet", "reduced"): (
        dict(embedding_size=32, hidden_sizes=[64, 128, 256, 512], depths=[1, 1, 1, 1]),
        64,
    ),
    ("vit", "quick"): (
        dict(
            hidden_size=48,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=96,
            image_size=32,
        ),
        32,
    ),  # fmt: skip
    ("resnet", "quick"): (
        dict(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"),
        32,
    ),
}


def build(kind: str, size: str, num_classes: int, device: torch.device, head_scale: float = 1.0):
    """A frozen, eval-mode model with seeded random weights, and its image size.

    ``head_scale`` multiplies the classification head's weights and bias: random weights give
    near-uniform probabilities (a flat Fisher spectrum, Lanczos's slowest case); a scaled head
    gives confident predictions, as a trained classifier's are.
    """
    overrides, image_size = SIZES[kind, size]
    torch.manual_seed(0)
    if kind == "vit":
        config = ViTConfig(num_labels=num_classes, attn_implementation="eager", **overrides)
        model = ViTForImageClassification(config)
    else:
        model = ResNetForImageClassification(ResNetConfig(num_labels=num_classes, **overrides))
    model = model.eval().to(device)
    head = (
        model.classifier[-1]
        if isinstance(model.classifier, torch.nn.Sequential)
        else model.classifier
    )
    with torch.no_grad():
        head.weight.mul_(head_scale)
        head.bias.mul_(head_scale)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model, image_size


def make_inputs(batch: int, image_size: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(batch, 3, image_size, image_size, generator=generator).to(device)


def logits_of(model) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: model(pixel_values=x).logits


# --- measurements ---------------------------------------------------------------------------


@dataclass
class PassCounter:
    """Fisher products (``matvec``) and backward passes outside them, with their seconds."""

    products: int = 0
    product_seconds: float = 0.0
    backward: int = 0
    backward_seconds: float = 0.0
    inside_product: bool = False


@contextmanager
def counting_passes(device: torch.device, clock: Clock) -> Iterator[PassCounter]:
    """Count and time ``FisherOperator.matvec`` and the ``vjp`` calls outside it (batched).

    A product is one double backward (``J v``) and one backward (``J^T w``); the other backward
    passes are class-space trace probes, ``exact`` traces and informed start vectors. On CUDA
    each call is synchronised so that its seconds are its own.
    """
    counter = PassCounter()
    original_matvec, original_vjp = FisherOperator.matvec, FisherOperator.vjp

    def matvec(self, vectors):
        start = clock()
        counter.inside_product = True
        try:
            out = original_matvec(self, vectors)
            synchronize(device)
        finally:
            counter.inside_product = False
        counter.products += 1
        counter.product_seconds += clock() - start
        return out

    def vjp(self, cotangents):
        if counter.inside_product:
            return original_vjp(self, cotangents)
        start = clock()
        out = original_vjp(self, cotangents)
        synchronize(device)
        counter.backward += 1
        counter.backward_seconds += clock() - start
        return out

    FisherOperator.matvec, FisherOperator.vjp = matvec, vjp
    try:
        yield counter
    finally:
        FisherOperator.matvec, FisherOperator.vjp = original_matvec, original_vjp


def run_row(row: Row, model, inputs: torch.Tensor, tol: float, num_classes: int):
    return spectrum_of_batch(
        logits_of(model), inputs, num_classes=num_classes, tol=tol,
        **row.options,
    )  # fmt: skip


def reference_extrapolated(
    model, sample: torch.Tensor, num_classes: int, classes: int, clock: Clock
) -> float:
    """Seconds of the per-sample reference for one sample, extrapolated from ``classes`` of K.

    Batch 1, weight gradients on, ``log_softmax``, then one backward pass per class: the time
    of the forward pass plus K times the mean time of the ``classes`` backward passes timed.
    """
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    try:
        start = clock()
        x = sample[None].clone().requires_grad_(True)
        log_probs = torch.log_softmax(model(pixel_values=x).logits, dim=1)[0]
        synchronize(sample.device)
        forward = clock() - start
        start = clock()
        for k in range(classes):
            model.zero_grad(set_to_none=True)
            x.grad = None
            log_probs[k].backward(retain_graph=k < classes - 1)
            x.grad.reshape(-1).double().clone()
        synchronize(sample.device)
        backward = (clock() - start) / classes
    finally:
        model.zero_grad(set_to_none=True)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
    return forward + num_classes * backward


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synced(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    def call() -> None:
        fn()
        synchronize(device)

    return call


@dataclass
class RowStats:
    """What one row's last run reports, besides its time."""

    method: str = ""
    iterations: list[float] = field(default_factory=list)
    counter: PassCounter = field(default_factory=PassCounter)
    reported_probes: str = ""
    trace_rse: float = float("nan")
    converged: float = float("nan")


def reported_probes(result) -> str:
    """Trace probes per sample, mean/max (``FisherSpectrum.trace_probes``; empty if absent)."""
    probes = result.trace_probes
    if probes is None:
        return ""
    return f"{probes.double().mean().item():.1f}/{probes.max().item():.0f}"


def row_stats(result, counter: PassCounter) -> RowStats:
    stats = RowStats(method=result.method)
    if result.iterations is not None:
        stats.iterations = [float(v) for v in result.iterations.tolist()]
    stats.counter = counter
    stats.reported_probes = reported_probes(result)
    if result.trace_standard_error is not None:
        stats.trace_rse = (result.trace_standard_error / result.trace).mean().item()
    if result.converged is not None:
        stats.converged = result.converged.double().mean().item()
    return stats


def timed_rows(model, inputs, rows, args, num_classes) -> tuple[dict[str, Timing], dict, Timing]:
    """Interleave forward, reference and rows; return timings, row stats and the reference."""
    device = inputs.device
    clock = CLOCKS[args.clock]
    stats: dict[str, RowStats] = {}
    reference: list[float] = []

    def forward() -> None:
        with torch.no_grad():
            model(pixel_values=inputs)

    callables = {"forward": synced(forward, device)}
    callables["reference"] = lambda: reference.append(
        reference_extrapolated(model, inputs[0], num_classes, args.ref_classes, clock)
    )
    for row in rows:

        def run(row=row) -> None:
            with counting_passes(device, clock) as counter:
                result = run_row(row, model, inputs, args.tol, num_classes)
                synchronize(device)
            stats[row.label] = row_stats(result, counter)

        callables[row.label] = run
    timings = interleave(callables, rounds=args.rounds, warmup=args.warmup, clock=clock)
    return timings, stats, Timing("reference", tuple(reference[args.warmup :]))


def peak_memory(kind: str, size: str, row: Row, args, device: torch.device) -> int:
    """Peak memory of one run of ``row`` beyond the model and a no-grad forward pass (bytes)."""
    if device.type == "cuda":
        num_classes = NUM_CLASSES_OF_SIZE[size]
        model, image_size = build(kind, size, num_classes, device, args.head_scale)
        inputs = make_inputs(args.batch, image_size, device)
        return cuda_peak_delta(lambda: run_row(row, model, inputs, args.tol, num_classes), device)
    argv = [
        str(Path(__file__).resolve()), "--memory-child", f"{kind},{size},{ROWS.index(row)}",
        "--batch", str(args.batch), "--threads", str(torch.get_num_threads()),
        "--tol", str(args.tol), "--head-scale", str(args.head_scale),
    ]  # fmt: skip
    return run_child(argv)["bytes"]


def memory_child(spec: str, args) -> None:
    """In a fresh process: build, one no-grad forward, then measure one run's peak RSS."""
    kind, size, index = spec.split(",")
    num_classes = NUM_CLASSES_OF_SIZE[size]
    model, image_size = build(kind, size, num_classes, torch.device("cpu"), args.head_scale)
    inputs = make_inputs(args.batch, image_size, torch.device("cpu"))
    with torch.no_grad():
        model(pixel_values=inputs)
    row = ROWS[int(index)]
    used, how = peak_rss_delta(lambda: run_row(row, model, inputs, args.tol, num_classes))
    print(json.dumps({"bytes": used, "how": how}))


NUM_CLASSES_OF_SIZE = {"full": NUM_CLASSES, "reduced": NUM_CLASSES, "quick": 100}


# --- sections -------------------------------------------------------------------------------


def cost_section(kind: str, size: str, args, device: torch.device) -> None:
    num_classes = NUM_CLASSES_OF_SIZE[size]
    model, image_size = build(kind, size, num_classes, device, args.head_scale)
    inputs = make_inputs(args.batch, image_size, device)
    rows = chosen_rows(args)
    timings, stats, reference = timed_rows(model, inputs, rows, args, num_classes)
    per_forward = timings["forward"].median / args.batch
    ref_eq = reference.median / per_forward
    with torch.no_grad():
        p_top = torch.softmax(model(pixel_values=inputs).logits.double(), 1).amax(1).mean()
    print(f"\n## cost: {kind} ({size}), {image_size}x{image_size}, K={num_classes}, "
          f"head scale {args.head_scale:g}, mean top-class probability {p_top:.3f}, "
          f"batch {args.batch}, forward {per_forward * 1e3:.0f} ms/sample "
          f"(rounds span {timings['forward'].relative_spread:.0%} of the median)")  # fmt: skip
    print(f"per-sample reference (EXTRAPOLATED from {args.ref_classes} of {num_classes} class "
          f"backward passes): {ref_eq:.0f} fwd-eq [{reference.low / per_forward:.0f}-"
          f"{reference.high / per_forward:.0f}]")  # fmt: skip
    header = (f"{'row':<27}{'method':<9}{'fwd-eq [min-max]':>20}{'speedup':>9}"
              f"{'iter mean/max':>15}{'products':>9}{'other bwd':>10}{'fwd-eq prod/bwd':>16}"
              f"{'probes':>8}{'trace RSE':>11}{'conv':>6}{'peak MB/sample':>16}")  # fmt: skip
    print(header)
    for row in rows:
        timing, row_stat = timings[row.label], stats[row.label]
        seconds = timing.median / args.batch
        spread = (f"{seconds / per_forward:.1f} [{timing.low / args.batch / per_forward:.1f}-"
                  f"{timing.high / args.batch / per_forward:.1f}]")  # fmt: skip
        its = row_stat.iterations
        its_text = f"{sum(its) / len(its):.1f}/{max(its):.0f}" if its else "-"
        memory = "-"
        if args.memory:
            memory = f"{peak_memory(kind, size, row, args, device) / args.batch / 2**20:.0f}"
        count = row_stat.counter
        split = (f"{count.product_seconds / args.batch / per_forward:.1f}/"
                 f"{count.backward_seconds / args.batch / per_forward:.1f}")  # fmt: skip
        print(f"{row.label:<27}{row_stat.method:<9}{spread:>20}"
              f"{reference.median / seconds:>8.0f}x{its_text:>15}"
              f"{count.products:>9}{count.backward:>10}{split:>16}"
              f"{row_stat.reported_probes or '-':>8}{row_stat.trace_rse:>11.2%}"
              f"{row_stat.converged:>6.0%}{memory:>16}")  # fmt: skip


def accuracy_section(kind: str, size: str, args, device: torch.device) -> None:
    num_classes = NUM_CLASSES_OF_SIZE[size]
    model, image_size = build(kind, size, num_classes, device, args.head_scale)
    inputs = make_inputs(args.accuracy_batch, image_size, device)
    truth = run_row(Row("exact", {"method": "exact"}), model, inputs, args.tol, num_classes)
    print(
        f"\n## accuracy: {kind} ({size}), {image_size}x{image_size}, K={num_classes}, "
        f"{args.accuracy_batch} samples, against method='exact' (K-1 backward passes)"
    )
    print(
        f"{'row':<27}{'max rel err lambda':>19}{'trace rel err mean/max':>24}"
        f"{'trace RSE mean':>16}{'|err|<=2SE':>12}"
    )
    for row in chosen_rows(args):
        result = run_row(row, model, inputs, args.tol, num_classes)
        lam = ((result.spectral_norm - truth.spectral_norm).abs() / truth.spectral_norm).max()
        error = result.trace - truth.trace
        relative = error.abs() / truth.trace
        se = result.trace_standard_error
        covered = int((error.abs() <= 2 * se).sum()) if se is not None else 0
        rse = (se / result.trace).mean().item() if se is not None else float("nan")
        print(f"{row.label:<27}{lam.item():>19.1e}"
              f"{f'{relative.mean().item():.1e}/{relative.max().item():.1e}':>24}"
              f"{rse:>16.2%}{f'{covered}/{len(error)}':>12}")  # fmt: skip


def header(args, device: torch.device) -> None:
    rows = ", ".join(row.label for row in chosen_rows(args))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
          f"float32, {args.clock} clock, load average {os.getloadavg()[0]:.2f}, "
          f"{args.rounds} interleaved rounds after {args.warmup} warm-up, tol {args.tol}; "
          f"rows: {rows}")  # fmt: skip
    if device.type == "cuda":
        print(f"GPU {torch.cuda.get_device_name(device)}, TF32 matmul "
              f"{torch.backends.cuda.matmul.allow_tf32}, cuDNN TF32 "
              f"{torch.backends.cudnn.allow_tf32}")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("vit", "resnet", "both"), default="both")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument(
        "--rows",
        type=lambda text: text.split(","),
        default=None,
        help=f"comma-separated subset of {','.join(row.label for row in ROWS)}",
    )
    parser.add_argument("--accuracy-batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--ref-classes",
        type=int,
        default=4,
        help="class backward passes timed for the extrapolated reference",
    )
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument(
        "--head-scale",
        type=float,
        default=1.0,
        help="multiply the classifier head's weights (random weights predict near-uniformly; "
        "a larger head gives confident, trained-like predictions)",
    )
    parser.add_argument(
        "--clock",
        choices=tuple(CLOCKS),
        default="wall",
        help="wall time, or this process's CPU time (CPU device only; robust to "
        "other processes on a shared machine, use it with --threads 1)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny models (K=100): a smoke run")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--no-accuracy", dest="accuracy", action="store_false")
    parser.add_argument("--no-cost", dest="cost", action="store_false")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("batch", "accuracy_batch", "rounds", "ref_classes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    unknown = sorted(set(args.rows or ()) - {row.label for row in ROWS})
    if unknown:
        parser.error(
            f"unknown --rows {', '.join(unknown)}; choose from "
            f"{', '.join(row.label for row in ROWS)}"
        )
    if args.device.startswith("cuda") and args.clock == "cpu":
        parser.error("--clock cpu does not see GPU time; use --clock wall with --device cuda")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}, but this torch has no CUDA device; use --device cpu")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args)
        return
    device = torch.device(args.device)
    kinds = ("vit", "resnet") if args.model == "both" else (args.model,)
    header(args, device)
    for kind in kinds if args.cost else ():
        cost_section(kind, "quick" if args.quick else "full", args, device)
    if args.accuracy:
        for kind in kinds:
            accuracy_section(kind, "quick" if args.quick else "reduced", args, device)


if __name__ == "__main__":
    main()
