"""Coverage of +-1.96 reported standard errors of the class-space Hutchinson trace.

The probe values of ``class_space_hutchinson`` are ``||J^T u||^2 = z^T M z`` with z ~ N(0, I_K)
and M having the nonzero eigenvalues mu_i of the Fisher, i.e. sums ``sum_i mu_i chi^2_1``. This
script draws them directly for a table of spectra and probe counts and prints how often the
estimate lies within 1.96 reported standard errors (sample std / sqrt(m)) of the true trace.

A second table is the "lanczos" trace's remainder (issue 14): probes added one at a time (6 to
16) until the standard error is at most 5% of the whole trace (the remainder plus an exact
Krylov part, here as large as the remainder), with the standard error from the sample std or
from the squared cross products ``(w_j . w_k)^2`` (estimating ``2 tr(M^2)``, what
``deflated_class_space_hutchinson`` reports). It prints the fraction within 2 standard errors
and the relative bias that stopping on the standard error causes.

    python benchmarks/bench_trace_coverage.py
"""

import math

import torch

from hf_fisher.estimators.hutchinson import student_widening

SPECTRA = {
    "flat, K=10": [1.0] * 9,
    "geometric (ratio 10), K=10": [10.0**-i for i in range(9)],
    "rank 1": [1.0] + [0.0] * 8,
    "1/i, K=100": [1 / (i + 1) for i in range(99)],
}


def coverage(
    spectrum: list[float], probes: int, draws: int, generator: torch.Generator, widen: bool
) -> float:
    eigenvalues = torch.tensor(spectrum, dtype=torch.float64)
    normals = torch.randn(draws, probes, len(spectrum), dtype=torch.float64, generator=generator)
    values = (normals.pow(2) * eigenvalues).sum(dim=2)  # (draws, probes)
    estimate = values.mean(dim=1)
    standard_error = values.std(dim=1) / math.sqrt(probes)
    if widen:
        count = torch.full_like(estimate, probes)
        standard_error = standard_error * student_widening(estimate, values.var(dim=1), count)
    inside = (estimate - eigenvalues.sum()).abs() <= 1.96 * standard_error
    return inside.double().mean().item()


def _standard_error(values: torch.Tensor, vectors: torch.Tensor, m: int, kind: str):
    if kind == "std":
        return values[:, :m].std(dim=1) / math.sqrt(m)
    gram = vectors[:, :m] @ vectors[:, :m].transpose(1, 2)
    cross = (gram.pow(2).sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).pow(2).sum(dim=1)) / 2
    variance = 2 * cross / (m * (m - 1) / 2)
    error = (variance / m).sqrt()
    if kind == "pairs, widened":
        count = torch.full_like(error, m)
        error = error * student_widening(values[:, :m].mean(dim=1), variance, count)
    return error


def adaptive(spectrum: list[float], kind: str, draws: int, generator: torch.Generator):
    """Coverage of 2 standard errors and relative bias of the early-stopped remainder."""
    eigenvalues = torch.tensor(spectrum, dtype=torch.float64)
    vectors = torch.randn(draws, 16, len(spectrum), dtype=torch.float64, generator=generator)
    vectors = vectors * eigenvalues.sqrt()
    values = vectors.pow(2).sum(dim=2)
    total = 2 * eigenvalues.sum()  # an exact Krylov part as large as the remainder
    used = torch.full((draws,), 16)
    for m in range(6, 17):
        error = _standard_error(values, vectors, m, kind)
        stops = (used == 16) & (error <= 0.05 * (total / 2 + values[:, :m].mean(dim=1)))
        used = torch.where(stops, torch.full_like(used, m), used)
    estimate = torch.stack([values[i, : used[i]].mean() for i in range(draws)])
    error = torch.stack(
        [_standard_error(values[i : i + 1], vectors[i : i + 1], used[i].item(), kind)[0]
         for i in range(draws)]
    )  # fmt: skip
    inside = (estimate - eigenvalues.sum()).abs() <= 2 * error
    return inside.double().mean().item(), ((estimate.mean() - eigenvalues.sum()) / total).item()


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    counts = (4, 8, 16)
    header = "".join(f"{f'm={m}':>8}" for m in counts)
    print(f"{'spectrum':<28}{header}{header}   (target 0.95)")
    print(f"{'':<28}{'sample std':>24}{'t-widened':>24}")
    for name, spectrum in SPECTRA.items():
        cells = [coverage(spectrum, m, 4000, generator, widen) for widen in (False, True)
                 for m in counts]  # fmt: skip
        print(f"{name:<28}" + "".join(f"{c:>8.3f}" for c in cells))
    kinds = ("std", "pairs", "pairs, widened")
    print(f"\n{'adaptive remainder (2 SE)':<28}" + "".join(f"{k:>16}{'bias':>7}" for k in kinds))
    for name, spectrum in SPECTRA.items():
        cells = [x for kind in kinds for x in adaptive(spectrum, kind, 2000, generator)]
        print(f"{name:<28}" + "".join(f"{c:>16.3f}" if i % 2 == 0 else f"{c:>+7.3f}"
                                      for i, c in enumerate(cells)))  # fmt: skip


if __name__ == "__main__":
    main()
