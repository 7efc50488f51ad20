import json

import numpy as np
import pytest
import scipy.stats
import torch

from hf_fisher.attacks import minimal_epsilon
from hf_fisher.clever import (
    LOCATION_CAP,
    LOCATION_RANGE,
    CleverScores,
    clever_scores,
    lipschitz_estimate,
    reverse_weibull_fit,
)
from hf_fisher.errors import InputError
from hf_fisher.estimators.exact import dual_spectrum, gradient_rows
from hf_fisher.report.sections.clever import card_clever, plot_clever
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
    # per-sample random streams: chunking changes only float32 rounding of the forward pass
    assert torch.allclose(full.maxima, big.maxima, rtol=1e-5)
    assert torch.allclose(full.untargeted, big.untargeted, rtol=1e-5)
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


def test_fit_without_an_upper_endpoint_is_flagged_and_falls_back_to_the_observed_max():
    rng = np.random.default_rng(3)
    weibull = scipy.stats.weibull_max.rvs(3.0, loc=2.0, size=(3, 200), random_state=rng)
    exponential = -rng.exponential(size=(3, 200))  # light tail but no finite endpoint nearby
    gumbel = scipy.stats.gumbel_r.rvs(size=(3, 200), random_state=rng)
    samples = torch.tensor(np.concatenate([weibull, exponential, gumbel]))
    fit = reverse_weibull_fit(samples)
    peak, low = samples.amax(1), samples.amin(1)
    assert (fit.location <= peak + LOCATION_RANGE[1] * (peak - low) * (1 + 1e-9)).all()
    assert not fit.at_edge[:3].any()
    assert fit.at_edge[6:].any()  # Gumbel maxima (no upper endpoint): some fits run off
    for row in fit.at_edge.nonzero()[:, 0].tolist():
        top = (peak + LOCATION_RANGE[1] * (peak - low))[row].item()
        assert fit.location[row].item() == pytest.approx(top, rel=1e-12)
        # the likelihood is still rising there: scipy's MLE with the location held lower is worse
        inner = peak[row].item() + 0.5 * LOCATION_RANGE[1] * (peak - low)[row].item()
        c, loc, scale = scipy.stats.weibull_max.fit(samples[row].numpy(), floc=inner)
        inner_ll = scipy.stats.weibull_max.logpdf(samples[row].numpy(), c, loc, scale).sum()
        assert inner_ll < fit.log_likelihood[row].item()
    estimate, at_edge = lipschitz_estimate(samples)
    assert torch.equal(at_edge, fit.at_edge)
    assert torch.equal(estimate[at_edge], peak[at_edge])
    cap = peak + LOCATION_CAP * (peak - low)
    assert torch.equal(estimate[~at_edge], fit.location.minimum(cap)[~at_edge])


def reference_clever(maxima, margins, radius):
    """Weng et al. 2018 / ART's CLEVER on given batch maxima: scipy's reverse Weibull MLE.

    Per (sample, target): location of ``scipy.stats.weibull_max.fit`` as L; where the fit is
    unusable (not finite or beyond max + 10 spreads, the documented search range) L is the
    largest observed maximum. Score ``min(margin / L, R)``.
    """
    lipschitz = np.empty(maxima.shape[:2])
    for index in np.ndindex(*maxima.shape[:2]):
        row = maxima[index]
        _, location, _ = scipy.stats.weibull_max.fit(row)
        top, spread = row.max(), row.max() - row.min()
        usable = np.isfinite(location) and location <= top + LOCATION_RANGE[1] * spread
        lipschitz[index] = location if usable else top
    return np.minimum(margins / lipschitz, radius)


@pytest.mark.slow
def test_clever_agrees_with_reference_procedure_on_the_same_gradient_samples():
    model, x, _ = train_digits_mlp()
    xs = x[:10].double()
    model = model.double()
    scores = clever_scores(model, xs, radius=1.0, num_batches=20, batch_points=16,
                           clip=(0.0, 1.0))
    logits = model(xs).detach()
    margins = (logits.gather(1, logits.argmax(1, keepdim=True))
               - logits.gather(1, scores.targets)).numpy()
    reference = reference_clever(scores.maxima.numpy(), margins, 1.0)
    ours = np.minimum(margins / scores.lipschitz.numpy(), 1.0)
    assert scores.at_edge.any() and not scores.at_edge.all()  # both code paths exercised
    for a, b in ((ours.ravel(), reference.ravel()),
                 (scores.untargeted.numpy(), reference.min(axis=1))):
        assert scipy.stats.spearmanr(a, b).statistic >= 0.9
        assert abs(np.median(a / b) - 1) <= 0.1
    assert np.allclose(scores.untargeted.numpy(), ours.min(axis=1), rtol=1e-12)


def test_sample_score_does_not_depend_on_its_batch():
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    x = torch.randn(7, 5)
    batch = clever_scores(model, x, radius=0.5, num_batches=5, batch_points=8)
    alone = clever_scores(model, x[:1], radius=0.5, num_batches=5, batch_points=8)
    assert torch.allclose(alone.maxima, batch.maxima[:1], rtol=1e-5)
    assert torch.allclose(alone.untargeted, batch.untargeted[:1], rtol=1e-5)
    other_seed = clever_scores(model, x[:1], radius=0.5, num_batches=5, batch_points=8, seed=1)
    assert not torch.allclose(other_seed.maxima, alone.maxima, rtol=1e-3)


def test_edge_flags_are_counted_and_read_back():
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    scores = clever_scores(model, torch.randn(6, 5), radius=1.0, num_batches=8, batch_points=4)
    section = json.loads(json.dumps(scores.to_json()))
    assert section["fits"] == 6 * 3
    assert section["fits_at_edge"] == int(scores.at_edge.sum())
    assert np.array(section["per_sample"]["fit_at_edge"]).shape == (6, 3)
    back = CleverScores.from_json(section)
    assert torch.equal(back.at_edge, scores.at_edge)
    assert torch.equal(back.targets, scores.targets)
    assert (scores.untargeted <= scores.top2 + 1e-12).all()
    text = card_clever(section)
    assert f"{section['fits_at_edge']} of 18 (sample, target) fits ran to the edge" in text
