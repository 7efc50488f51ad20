"""Black-box sketch: coverage of its 95% intervals and error of its lambda_max, previous vs new.

Every figure is measured against an exact truth: synthetic linear models ``x @ W^T`` whose Fisher
spectrum at x = 0 is chosen (flat, peaked, rank-1; K = 2, 10, 100; each sample id draws its own
directions, so N samples are N independent replicates), a small random CNN (K=10, d=768,
float64) and the bundled digits ResNet (K=10, d=1024, float32 as users run it) against the exact
dual method. "previous" is the estimator before issue 11 (Gaussian directions, raw top
eigenvalue, percentile bootstrap over directions), kept here verbatim for the comparison.

    python benchmarks/bench_blackbox_coverage.py          # 2000 replicates (400 at K=100)
    python benchmarks/bench_blackbox_coverage.py --quick  # 500 (100), 64 CNN and digits inputs
"""

from __future__ import annotations

import argparse
import time

import torch

from hf_fisher import fisher_spectrum, load_classifier
from hf_fisher._random import default_streams
from hf_fisher.digits import DEFAULT_MODEL_DIR, load_digits_dataset
from hf_fisher.estimators.blackbox import _directional_derivatives, default_step, sketch_fisher
from hf_fisher.operators import covariance_factor, dual_eigenvalues, dual_spectrum, gradient_rows


def previous_sketch(logit_fn, inputs, num_queries=201, seed=0, num_bootstrap=200):
    """The estimator as it was: Gaussian directions, top eigenvalue, percentile bootstrap."""
    num_samples, dim = inputs.shape[0], inputs[0].numel()
    with torch.no_grad():
        probs = torch.softmax(logit_fn(inputs).double(), dim=1)
    factor = covariance_factor(probs)
    count = (num_queries - 1) // 2
    normals = default_streams(seed, num_samples, "direction").normal(
        (count, dim), dtype=torch.float64, device=inputs.device
    )
    lengths = normals.norm(dim=2, keepdim=True)
    step = default_step(inputs.dtype)
    columns = _directional_derivatives(logit_fn, inputs, normals / lengths, step, 16)
    columns = columns * lengths.transpose(1, 2)
    whitened = factor.transpose(1, 2) @ columns
    values = dual_eigenvalues(factor, columns @ columns.transpose(1, 2) / count)
    energy = whitened.pow(2).sum(dim=1) / count
    picks = default_streams(seed, num_samples, "bootstrap").integers(count, (num_bootstrap, count))
    chosen = torch.gather(
        whitened[:, None].expand(-1, num_bootstrap, -1, -1),
        3,
        picks[:, :, None, :].expand(-1, -1, whitened.shape[1], -1),
    )
    tops = torch.linalg.eigvalsh(chosen @ chosen.transpose(2, 3) / count)[..., -1]
    traces = torch.gather(energy[:, None].expand(-1, num_bootstrap, -1), 2, picks).sum(dim=2)
    levels = torch.tensor([0.025, 0.975], dtype=torch.float64)
    return (
        values[:, 0],
        torch.quantile(tops, levels, dim=1).T,
        energy.sum(dim=1),
        torch.quantile(traces, levels, dim=1).T,
    )


def linear_model(spectrum: torch.Tensor, dim: int, seed: int):
    """``x -> x W^T`` whose Fisher at x = 0 (uniform p) has eigenvalues ``spectrum`` (K - 1)."""
    generator = torch.Generator().manual_seed(seed)
    classes = len(spectrum) + 1
    centred = torch.eye(classes, dtype=torch.float64) - 1 / classes
    left = torch.linalg.qr(
        centred @ torch.randn(classes, classes - 1, generator=generator, dtype=torch.float64)
    ).Q  # orthogonal to 1
    right = torch.linalg.qr(
        torch.randn(dim, classes - 1, generator=generator, dtype=torch.float64)
    ).Q
    weight = classes**0.5 * left @ torch.diag(spectrum.sqrt()) @ right.T  # (K, d)
    return lambda inputs: inputs @ weight.T


SPECTRA = {
    "flat": lambda k: torch.ones(k - 1, dtype=torch.float64),
    "peaked": lambda k: 0.3 ** torch.arange(k - 1, dtype=torch.float64),
    "rank-1": lambda k: torch.cat([torch.ones(1), torch.zeros(k - 2)]).double(),
    "decaying": lambda k: 1 / torch.arange(1, k, dtype=torch.float64),
}


def summarise(name, top, top_ci, trace, trace_ci, true_top, true_trace):
    """Median relative error, CI coverage and median relative CI width."""
    error = ((top - true_top).abs() / true_top).median().item()
    covered = ((top_ci[:, 0] <= true_top) & (true_top <= top_ci[:, 1])).double().mean().item()
    width = ((top_ci[:, 1] - top_ci[:, 0]) / true_top).median().item()
    t_cov = ((trace_ci[:, 0] <= true_trace) & (true_trace <= trace_ci[:, 1])).double().mean()
    return (
        f"{name:9s} err {error:6.1%}  cover {covered:5.3f}  width {width:5.2f}  "
        f"tr-cover {t_cov:5.3f}"
    )


def report(label, logit_fn, inputs, true_top, true_trace, new=None):
    start = time.perf_counter()
    old = previous_sketch(logit_fn, inputs)
    if new is None:
        est = sketch_fisher(logit_fn, inputs, sample_ids=list(range(len(inputs))))
        new = (est.eigenvalues[:, 0], est.spectral_norm_ci, est.trace, est.trace_ci)
    print(
        f"{label:24s} {summarise('previous', *old, true_top, true_trace)} | "
        f"{summarise('new', *new, true_top, true_trace)}  ({time.perf_counter() - start:.0f}s)",
        flush=True,
    )


def synthetic(replicates: int, dim: int) -> None:
    for classes in (2, 10, 100):
        count = replicates if classes < 100 else replicates // 5  # the old bootstrap is slow
        for name, build in SPECTRA.items():
            if classes == 2 and name != "flat":
                continue  # K = 2 has a single eigenvalue
            spectrum = build(classes)
            logit_fn = linear_model(spectrum, dim, seed=classes)
            inputs = torch.zeros(count, dim, dtype=torch.float64)
            label = f"linear K={classes} {name if classes > 2 else ''}"
            report(label, logit_fn, inputs, spectrum.max(), spectrum.sum())


def random_cnn(samples: int) -> None:
    torch.manual_seed(0)
    net = (
        torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1),
            torch.nn.Tanh(),
            torch.nn.Conv2d(16, 16, 3, padding=1, stride=2),
            torch.nn.Tanh(),
            torch.nn.Flatten(),
            torch.nn.Linear(16 * 8 * 8, 10),
        )
        .double()
        .eval()
    )
    inputs = torch.randn(samples, 3, 16, 16, dtype=torch.float64)
    exact = dual_spectrum(gradient_rows(net, inputs))
    report("random CNN K=10 d=768", net, inputs, exact.eigenvalues[:, 0], exact.trace)


def digits(samples: int) -> None:
    classifier = load_classifier(DEFAULT_MODEL_DIR)
    images = load_digits_dataset("test")["image"][:samples]
    batch = classifier.prepare(images)
    exact = fisher_spectrum(classifier, batch.inputs, method="exact")
    black = fisher_spectrum(classifier, batch.inputs, black_box=True, batch_size=None)
    new = (black.spectral_norm, black.spectral_norm_ci, black.trace, black.trace_ci)
    report(
        "digits ResNet float32",
        classifier.logit_fn(batch),
        batch.inputs,
        exact.spectral_norm,
        exact.trace,
        new,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer replicates and inputs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    replicates = 500 if args.quick else 2000
    print(
        "201 queries (100 directions); err = median |lambda_hat / lambda - 1|; cover = share of "
        "95% intervals holding the truth; width = median (high - low) / lambda\n"
    )
    synthetic(replicates, dim=300)
    random_cnn(64 if args.quick else 256)
    digits(64 if args.quick else 256)


if __name__ == "__main__":
    main()
