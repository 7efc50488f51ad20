import json

import numpy as np
import pytest
import scipy.stats
import torch

from hf_fisher.attacks import minimal_epsilon
from hf_fisher.clever import clever_scores, reverse_weibull_fit
from hf_fisher.errors import InputError
from hf_fisher.estimators.exact import dual_spectrum, gradient_rows
from hf_fisher.report.sections.clever import plot_clever
from hf_fisher.testing.models import train_digits_mlp

torch.set_num_threads(1)


def synthetic_weibull(rows, size, seed):
    rng = np.random.default_rng(seed)
    shapes = rng.uniform(2.5, 6.0, size=rows)
    locations = rng.uniform(0.5, 5.0, size=rows)
    scales = rng.uniform(0.2, 2.0, size=rows)
    draws = np.stack([
        scipy.stats.weibull_max.rvs(c, loc=loc, scale=s, size=size, random_state=rng)
        for c, loc, s in zip(shapes, locations, scales, strict=True)
    ])
    return draws, locations, scales


@pytest.mark.slow
def test_weibull_fit_recovers_location_of_synthetic_samples():
    draws, locations, scales = synthetic_weibull(rows=6, size=3000, seed=0)
    fit = reverse_weibull_fit(torch.tensor(draws))
    error = np.abs(fit.location.numpy() - locations) / scales
    assert error.max() < 0.1
    # the sample maximum alone is a much worse estimate
    assert error.mean() < 0.5 * np.abs(draws.max(axis=1) - locations).mean() / scales.mean()


def test_batched_weibull_fit_is_scipys_maximum_likelihood():
    draws, _, scales = synthetic_weibull(rows=12, size=400, seed=1)
    fit = reverse_weibull_fit(torch.tensor(draws))
    assert (fit.location.numpy() >= draws.max(axis=1)).all()
    agreed = 0
    for row in range(len(draws)):
        c, loc, scale = scipy.stats.weibull_max.fit(draws[row])
        scipy_ll = scipy.stats.weibull_max.logpdf(draws[row], c, loc, scale).sum()
        assert fit.log_likelihood[row].item() >= scipy_ll - 1e-3
        if abs(fit.log_likelihood[row].item() - scipy_ll) < 1e-3:  # scipy's optimiser converged
            assert abs(fit.location[row].item() - loc) < 0.01 * scales[row]
            agreed += 1
        ours = scipy.stats.weibull_max.logpdf(
            draws[row], fit.shape[row].item(), fit.location[row].item(), fit.scale[row].item()
        ).sum()
        assert ours == pytest.approx(fit.log_likelihood[row].item(), rel=1e-9)
    assert agreed >= len(draws) // 2


def test_weibull_fit_of_constant_maxima_is_the_constant():
    fit = reverse_weibull_fit(torch.full((2, 10), 3.5, dtype=torch.float64))
    assert torch.equal(fit.location, torch.full((2,), 3.5, dtype=torch.float64))


@pytest.mark.parametrize("norm, dual", [("l2", 2), ("linf", 1)])
def test_clever_is_exact_distance_for_linear_model(norm, dual):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    x = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    logits = x @ weight.T
    top = logits.argmax(1)
    ratio = (logits.gather(1, top[:, None]) - logits) / (
        weight[top][:, None, :] - weight[None]
    ).norm(p=dual, dim=2)
    ratio[torch.arange(7), top] = float("inf")
    runner_up = logits.scatter(1, top[:, None], float("-inf")).argmax(1)
    scores = clever_scores(lambda inp: inp @ weight.T, x, radius=100.0, norm=norm,
                           num_batches=5, batch_points=4)
    assert torch.allclose(scores.untargeted, ratio.min(dim=1).values, rtol=1e-9)
    assert torch.allclose(scores.top2, ratio.gather(1, runner_up[:, None])[:, 0], rtol=1e-9)
    capped = clever_scores(lambda inp: inp @ weight.T, x, radius=0.05, norm=norm,
                           num_batches=5, batch_points=4)
    assert torch.allclose(capped.untargeted, torch.minimum(ratio.min(1).values,
                                                           torch.tensor(0.05, dtype=torch.float64)))


def test_clever_on_trained_digits_model_vs_spectral_norm_and_pgd(tmp_path):
    model, x, _ = train_digits_mlp()
    xs = x[:30]
    spectral = dual_spectrum(gradient_rows(model, xs)).eigenvalues[:, 0]
    scores = clever_scores(model, xs, radius=0.5, num_batches=20, batch_points=16,
                           clip=(0.0, 1.0), spectral_norm=spectral, num_bootstrap=200)
    assert scores.correlations["untargeted"].spearman < -0.5
    # CLEVER estimates a lower bound on the distance: PGD (an upper bound) should not beat it
    labels = model(xs).argmax(1)
    pgd_eps = minimal_epsilon(model, xs, labels, clip=(0.0, 1.0), bisection_steps=8).epsilon
    assert (scores.untargeted <= pgd_eps.double() * 1.05).double().mean() >= 0.9
    assert scores.forward_equivalents == 20 * 16 * (1 + 2 * 9)
    assert scores.spectral_norm_forward_equivalents == 19
    section = scores.to_json()
    assert json.loads(json.dumps(section)) == section
    assert section == clever_scores(model, xs, radius=0.5, num_batches=20, batch_points=16,
                                    clip=(0.0, 1.0), spectral_norm=spectral,
                                    num_bootstrap=200).to_json() | {"cost": section["cost"]}
    assert plot_clever(section, tmp_path / "clever.png").stat().st_size > 1000


def test_top2_only_and_chunking_agree_with_full_run():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x = torch.randn(6, 5)
    full = clever_scores(model, x, radius=0.5, num_batches=6, batch_points=8, max_points=8)
    big = clever_scores(model, x, radius=0.5, num_batches=6, batch_points=8, max_points=4096)
    # chunks draw their ball points in another order: same estimate, different random stream
    assert torch.allclose(full.untargeted, big.untargeted, rtol=0.1)
    top2 = clever_scores(model, x, radius=0.5, num_batches=6, batch_points=8, untargeted=False)
    assert top2.untargeted is None and top2.lipschitz.shape == (6, 1)
    assert top2.forward_equivalents == 6 * 8 * 3
    assert (full.untargeted <= full.top2 + 1e-12).all()


def test_bad_input_raises():
    model = torch.nn.Linear(5, 3)
    x = torch.randn(4, 5)
    with pytest.raises(InputError, match="radius=0"):
        clever_scores(model, x, radius=0)
    with pytest.raises(InputError, match="num_batches=2"):
        clever_scores(model, x, radius=1.0, num_batches=2)
    with pytest.raises(InputError, match="norm='l1'"):
        clever_scores(model, x, radius=1.0, norm="l1")
    with pytest.raises(InputError, match="3 spectral_norm values"):
        clever_scores(model, x, radius=1.0, spectral_norm=torch.ones(3))
    with pytest.raises(InputError, match=r"shape \(5,\)"):
        reverse_weibull_fit(torch.ones(5))
