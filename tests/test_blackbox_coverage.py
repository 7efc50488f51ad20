"""The black-box sketch's lambda_max, trace and intervals, tested for what they claim.

Synthetic linear models ``x @ W^T`` have an exactly known Fisher spectrum at x = 0, and every
sample id draws its own directions, so a batch of identical inputs is a batch of independent
replicates. Coverage is asserted per spectrum on 400 replicates (the binomial standard error at
0.95 is 0.011, so ">= 0.93" fails only for a real loss of coverage).
"""

import pytest
import torch

from hf_fisher.estimators import _spiked
from hf_fisher.estimators.blackbox import sketch_fisher
from hf_fisher.testing.dense import dense_fisher, dense_spectrum

DIM = 128
REPLICATES = 400


def linear_model(spectrum: torch.Tensor, dim: int = DIM, seed: int = 0):
    """``x -> x W^T`` whose Fisher at x = 0 (uniform p) has eigenvalues ``spectrum`` (K - 1)."""
    generator = torch.Generator().manual_seed(seed)
    classes = len(spectrum) + 1
    centred = torch.eye(classes, dtype=torch.float64) - 1 / classes
    draw = torch.randn(classes, classes - 1, generator=generator, dtype=torch.float64)
    left = torch.linalg.qr(centred @ draw).Q  # orthonormal columns orthogonal to ones
    right = torch.linalg.qr(
        torch.randn(dim, classes - 1, generator=generator, dtype=torch.float64)
    ).Q
    weight = classes**0.5 * left @ torch.diag(spectrum.sqrt()) @ right.T  # (K, d)
    return lambda inputs: inputs @ weight.T


SPECTRA = {
    "K=2": torch.ones(1, dtype=torch.float64),
    "flat-K=10": torch.ones(9, dtype=torch.float64),
    "peaked-K=10": 0.3 ** torch.arange(9, dtype=torch.float64),
    "rank-1-K=10": torch.cat([torch.ones(1), torch.zeros(8)]).double(),
    "flat-K=100": torch.ones(99, dtype=torch.float64),
    "peaked-K=100": 0.5 ** torch.arange(99, dtype=torch.float64),
}


@pytest.fixture(scope="module")
def runs():
    """Per spectrum: the estimate on REPLICATES independent direction draws, and the truth."""
    results = {}
    for name, spectrum in SPECTRA.items():
        logit_fn = linear_model(spectrum, seed=len(spectrum))
        inputs = torch.zeros(REPLICATES, DIM, dtype=torch.float64)
        results[name] = (sketch_fisher(logit_fn, inputs, seed=3), spectrum.max(), spectrum.sum())
    return results


def covered(interval: torch.Tensor, truth: torch.Tensor) -> float:
    return ((interval[:, 0] <= truth) & (truth <= interval[:, 1])).double().mean().item()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SPECTRA))
def test_lambda_max_interval_covers_over_spectrum_table(runs, name):
    # measured (seed 3): 0.96-0.99 per spectrum; the previous bootstrap gave 0.00 on flat spectra
    est, top, _ = runs[name]
    assert est.scheme == "gaussian-sketch" and est.num_queries == 201
    assert covered(est.spectral_norm_ci, top) >= 0.93


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SPECTRA))
def test_trace_interval_covers_and_trace_is_unbiased(runs, name):
    est, _, trace = runs[name]
    assert covered(est.trace_ci, trace) >= 0.93
    # unbiased: the mean over 400 replicates is within 4 standard errors of the truth
    relative = est.trace / trace - 1
    assert relative.mean().abs() <= 4 * relative.std() / REPLICATES**0.5


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "replicates"),
    [("flat-K=100", 400), ("flat-K=10", 2000), ("peaked-K=10", 2000), ("rank-1-K=10", 2000)],
)
def test_lambda_max_median_error_within_ten_percent(runs, name, replicates):
    # measured: 5.6% (flat, K=100; the raw top eigenvalue is 3.8x too high), 9.0% (flat, K=10;
    # raw +53%), 9.3-9.5% on peaked and rank-one spectra, which is the chi-square noise of 100
    # directions (the top eigenvalue of a rank-one sketch is lambda chi2_100 / 100: 9.4% for any
    # estimator). 2000 replicates put the standard error of a median near 0.002.
    spectrum = SPECTRA[name]
    if replicates == REPLICATES:
        est = runs[name][0]
    else:
        logit_fn = linear_model(spectrum, seed=len(spectrum))
        est = sketch_fisher(logit_fn, torch.zeros(replicates, DIM, dtype=torch.float64), seed=5)
    error = (est.eigenvalues[:, 0] / spectrum.max() - 1).abs().median().item()
    assert error <= 0.10


@pytest.mark.slow
@pytest.mark.parametrize("name", ["flat-K=10", "flat-K=100"])
def test_flat_spectrum_bias_is_removed(runs, name):
    # the sketch's raw top eigenvalue is +53% (K=10) and +280% (K=100) high on flat spectra; the
    # estimate's median is within 3% (measured +1.0% and +0.8%)
    est, top, _ = runs[name]
    assert abs((est.eigenvalues[:, 0] / top).median().item() - 1) <= 0.03


def test_draws_are_keyed_by_sample_id():
    logit_fn = linear_model(SPECTRA["peaked-K=10"])
    inputs = torch.zeros(3, DIM, dtype=torch.float64)
    together = sketch_fisher(logit_fn, inputs, sample_ids=[4, 9, 11])
    alone = sketch_fisher(logit_fn, inputs[1:2], sample_ids=[9])
    torch.testing.assert_close(alone.eigenvalues, together.eigenvalues[1:2], rtol=1e-12, atol=0)
    torch.testing.assert_close(
        alone.spectral_norm_ci, together.spectral_norm_ci[1:2], rtol=1e-12, atol=0
    )
    torch.testing.assert_close(alone.trace_ci, together.trace_ci[1:2], rtol=1e-12, atol=0)


@pytest.mark.slow
def test_other_confidence_levels_are_honoured(runs):
    logit_fn = linear_model(SPECTRA["peaked-K=10"], seed=9)
    inputs = torch.zeros(REPLICATES, DIM, dtype=torch.float64)
    wide = sketch_fisher(logit_fn, inputs, seed=3)
    narrow = sketch_fisher(logit_fn, inputs, seed=3, confidence=0.5)
    top = SPECTRA["peaked-K=10"].max()
    assert (narrow.spectral_norm_ci[:, 1] < wide.spectral_norm_ci[:, 1]).all()
    assert 0.4 <= covered(narrow.spectral_norm_ci, top) <= 0.65  # measured 0.55


def wavy(weight: torch.Tensor, frequency: float):
    """A strongly nonlinear classifier: logits ``sin(frequency * W x)``."""
    return lambda inputs: torch.sin(frequency * inputs @ weight.T)


@pytest.mark.parametrize("step", [0.05, 0.2, 0.4])
def test_coordinate_interval_contains_truth_despite_large_steps(step):
    torch.manual_seed(0)
    weight = torch.randn(4, 6, dtype=torch.float64)
    logit_fn = wavy(weight, 2.0)
    x = torch.randn(16, 6, dtype=torch.float64)
    values, trace = dense_spectrum(dense_fisher(logit_fn, x))
    est = sketch_fisher(logit_fn, x, num_queries=4 * 6 + 1, step=step)
    assert est.scheme == "coordinates" and est.num_queries == 25
    low, high = est.spectral_norm_ci.T
    assert ((low <= values[:, 0]) & (values[:, 0] <= high)).all()
    assert ((est.trace_ci[:, 0] <= trace) & (trace <= est.trace_ci[:, 1])).all()
    if step >= 0.2:  # the finite-difference error is far from negligible here
        assert ((est.eigenvalues[:, 0] / values[:, 0] - 1).abs().max() > 1e-3).item()
        plain = sketch_fisher(logit_fn, x, num_queries=4 * 6 + 1, step=step / 2)
        assert not torch.equal(plain.eigenvalues, est.eigenvalues)


def test_secular_root_matches_dense_eigenvalues():
    generator = torch.Generator().manual_seed(0)
    bulk = torch.rand(5, 3, generator=generator, dtype=torch.float64).sort(dim=1).values
    rho = torch.rand(5, generator=generator, dtype=torch.float64) + 0.5
    unit = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    unit = unit / unit.norm(dim=1, keepdim=True)  # 3 bulk directions and one null direction
    weights = torch.cat([unit[:, :3] ** 2, unit[:, 3:] ** 2], dim=1)
    ratios = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    roots = _spiked._top_root(ratios, bulk, rho, weights)
    for i, ratio in enumerate(ratios):
        for r in range(5):
            matrix = torch.diag(torch.cat([ratio * bulk[r], torch.zeros(1).double()]))
            matrix = matrix + rho[r] * torch.outer(unit[r], unit[r])
            expected = torch.linalg.eigvalsh(matrix)[-1]
            torch.testing.assert_close(roots[i, r], expected, rtol=1e-10, atol=0)


def test_tabulated_quantiles_match_simulated_wishart():
    # top eigenvalue of diag(1, 0.5, 0.5, 0.5)^1/2 W diag(...)^1/2 / 100, W ~ Wishart_4(I, 100)
    generator = torch.Generator().manual_seed(1)
    draws = torch.randn(8000, 4, 100, generator=generator, dtype=torch.float64)
    scale = torch.tensor([1.0, 0.5, 0.5, 0.5], dtype=torch.float64).sqrt()[None, :, None]
    sample = (scale * draws) @ (scale * draws).transpose(1, 2) / 100
    levels = (0.1, 0.5, 0.9)
    simulated = torch.quantile(torch.linalg.eigvalsh(sample)[:, -1], torch.tensor(levels).double())
    table = _spiked._quantile_table(3, 100, 3, levels, torch.tensor([16]))[:, 16]  # ratio 0.5
    torch.testing.assert_close(table, simulated, rtol=0.02, atol=0)


def test_top_k_keeps_order_and_num_bootstrap_warns():
    logit_fn = linear_model(SPECTRA["flat-K=10"])
    inputs = torch.zeros(8, DIM, dtype=torch.float64)
    est = sketch_fisher(logit_fn, inputs, top_k=3)
    assert est.eigenvalues.shape == (8, 3)
    assert (est.eigenvalues[:, 1:] <= est.eigenvalues[:, :1]).all()
    with pytest.warns(FutureWarning, match="num_bootstrap"):
        sketch_fisher(logit_fn, inputs[:1], num_bootstrap=200)


def test_zero_signal_gives_zero_estimates_and_intervals():
    masked = torch.zeros(2, DIM, dtype=torch.float64)
    masked[0, :10] = 1  # sample 1 has an empty space
    est = sketch_fisher(linear_model(SPECTRA["peaked-K=10"]), masked * 0, space_mask=masked)
    assert est.eigenvalues[1, 0] == 0 and (est.spectral_norm_ci[1] == 0).all()
    assert (est.trace_ci[1] == 0).all() and est.eigenvalues[0, 0] > 0


def test_float32_coordinate_interval_covers_float64_truth():
    # rounding noise of float32 logits (~1e-7) at step 1e-2: measured width ~0.15%, error ~1e-4
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1),
        torch.nn.Tanh(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 5 * 5, 5),
    ).double()
    x = torch.randn(32, 2, 5, 5, dtype=torch.float64)
    values, trace = dense_spectrum(dense_fisher(net, x))
    est = sketch_fisher(net.float(), x.float(), num_queries=201)
    assert est.scheme == "coordinates" and est.step == 1e-2
    assert covered(est.spectral_norm_ci, values[:, 0]) == 1.0
    assert covered(est.trace_ci, trace) == 1.0
    assert ((est.spectral_norm_ci[:, 1] - est.spectral_norm_ci[:, 0]) / values[:, 0]).max() < 0.02
