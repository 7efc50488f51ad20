"""Coverage of +-1.96 reported standard errors of the class-space Hutchinson trace.

The probe values of ``class_space_hutchinson`` are ``||J^T u||^2 = z^T M z`` with z ~ N(0, I_K)
and M having the nonzero eigenvalues mu_i of the Fisher, i.e. sums ``sum_i mu_i chi^2_1``. This
script draws them directly for a table of spectra and probe counts and prints how often the
estimate lies within 1.96 reported standard errors (sample std / sqrt(m)) of the true trace.

    python benchmarks/bench_trace_coverage.py
"""

import math

import torch

SPECTRA = {
    "flat, K=10": [1.0] * 9,
    "geometric (ratio 10), K=10": [10.0**-i for i in range(9)],
    "rank 1": [1.0] + [0.0] * 8,
    "1/i, K=100": [1 / (i + 1) for i in range(99)],
}


def coverage(spectrum: list[float], probes: int, draws: int, generator: torch.Generator) -> float:
    eigenvalues = torch.tensor(spectrum, dtype=torch.float64)
    normals = torch.randn(draws, probes, len(spectrum), dtype=torch.float64, generator=generator)
    values = (normals.pow(2) * eigenvalues).sum(dim=2)  # (draws, probes)
    estimate = values.mean(dim=1)
    standard_error = values.std(dim=1) / math.sqrt(probes)
    inside = (estimate - eigenvalues.sum()).abs() <= 1.96 * standard_error
    return inside.double().mean().item()


def main() -> None:
    generator = torch.Generator().manual_seed(0)
    counts = (4, 8, 16)
    print(f"{'spectrum':<28}" + "".join(f"{f'm={m}':>8}" for m in counts) + "   (target 0.95)")
    for name, spectrum in SPECTRA.items():
        cells = [coverage(spectrum, m, 4000, generator) for m in counts]
        print(f"{name:<28}" + "".join(f"{c:>8.3f}" for c in cells))


if __name__ == "__main__":
    main()
