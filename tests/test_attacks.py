import json
import math

import numpy as np
import pytest
import scipy.stats
import torch

from hf_fisher._random import SampleStreams
from hf_fisher.attacks import (
    attack_report,
    baseline_scores,
    fgsm,
    minimal_epsilon,
    pgd,
    sample_in_ball,
    sanity_flags,
)
from hf_fisher.correlation import partial_rank_correlation, rank_correlation
from hf_fisher.errors import InputError, NotAClassifierError
from hf_fisher.estimators.exact import dual_spectrum, gradient_rows
from hf_fisher.report.sections.attacks import plot_attacks
from hf_fisher.testing.models import train_digits_mlp

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits_model():
    """A tanh MLP trained on real sklearn digits (pixels in [0, 1]); ~96% test accuracy."""
    model, inputs, labels = train_digits_mlp()
    return model, inputs[:80], labels[:80]


def linear_model(num_classes=5, dim=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_classes, dim, generator=generator, dtype=torch.float64)
    bias = torch.randn(num_classes, generator=generator, dtype=torch.float64)
    x = torch.randn(12, dim, generator=generator, dtype=torch.float64)
    return (lambda inp: inp @ weight.T + bias), weight, x


def exact_distance(weight, logits, labels, dual):
    """Distance to the nearest decision boundary of a linear classifier (no box)."""
    true = logits.gather(1, labels[:, None])
    differences = weight[labels][:, None, :] - weight[None, :, :]  # (N, K, d)
    norms = differences.norm(p=dual, dim=2)
    ratio = (true - logits) / norms
    ratio[torch.arange(len(labels)), labels] = float("inf")
    return ratio.min(dim=1).values


def test_attacks_reduce_accuracy_on_trained_model(digits_model):
    model, x, y = digits_model
    clean = (model(x).argmax(1) == y).double().mean().item()
    assert clean > 0.9
    for norm, eps in (("l2", 1.0), ("linf", 0.1)):
        strong = pgd(model, x, y, eps, norm=norm, clip=(0.0, 1.0),
                     generator=torch.Generator().manual_seed(0))
        weak = fgsm(model, x, y, eps, norm=norm, clip=(0.0, 1.0))
        pgd_acc = 1 - strong.success.double().mean().item()
        fgsm_acc = 1 - weak.success.double().mean().item()
        assert pgd_acc < clean - 0.4
        assert pgd_acc <= fgsm_acc + 1e-9  # the iterative attack is at least as strong
        # adversarial inputs respect the budget and the pixel box
        delta = (strong.adversarial - x).reshape(len(x), -1)
        size = delta.norm(dim=1) if norm == "l2" else delta.abs().amax(dim=1)
        assert size.max() <= eps * (1 + 1e-5)
        assert strong.adversarial.min() >= 0 and strong.adversarial.max() <= 1
        # success flags are true: the returned adversarial inputs are misclassified
        assert torch.equal(model(strong.adversarial).argmax(1) != y, strong.success)


def test_bisection_brackets_the_flip(digits_model):
    model, x, y = digits_model
    x, y = x[:20], y[:20]
    result = minimal_epsilon(model, x, y, norm="l2", clip=(0.0, 1.0), bisection_steps=8, seed=3,
                             tolerance=None, restarts=1)
    correct = model(x).argmax(1) == y
    assert torch.isfinite(result.epsilon).all()
    assert (result.epsilon[~correct] == 0).all()
    upper, lower = result.epsilon[correct], result.lower[correct]
    assert torch.allclose(upper - lower, torch.full_like(upper, 8.0 / 2**8))

    def same_attack(eps):  # the same per-sample streams: keyed by (seed, index in the batch)
        streams = SampleStreams(3, correct.nonzero().flatten().tolist(), "attack")
        return pgd(model, x[correct], y[correct], eps.float(), norm="l2", clip=(0.0, 1.0),
                   generator=streams).success

    assert same_attack(upper).all()
    assert not same_attack(lower).any()


@pytest.mark.parametrize("norm, num_classes, dual", [("l2", 5, 2), ("linf", 2, 1)])
def test_minimal_epsilon_matches_linear_closed_form(norm, num_classes, dual):
    logit_fn, weight, x = linear_model(num_classes=num_classes)
    labels = logit_fn(x).argmax(1)
    truth = exact_distance(weight, logit_fn(x), labels, dual)
    # the margin of a linear model is convex, so single-start PGD can stall at a local maximum
    # (the boundary of a farther class): random restarts are what make it find the nearest one
    result = minimal_epsilon(logit_fn, x, labels, norm=norm, eps_max=20.0, bisection_steps=14,
                             steps=40, restarts=10, loss="margin", tolerance=None)
    # no attack can succeed below the true distance; a good one gets within 3%
    assert (result.epsilon >= truth * (1 - 1e-6)).all()
    assert (result.epsilon <= truth * 1.03 + 20.0 / 2**14).all()
    # the first-order baseline is exact for a linear binary classifier
    if num_classes == 2:
        estimate = baseline_scores(logit_fn, x, norm=norm).first_order
        assert torch.allclose(estimate, truth, rtol=1e-9)


@pytest.mark.parametrize("tolerance", [0.01, 0.002])
def test_relative_bisection_is_within_its_tolerance_of_the_linear_boundary(tolerance):
    # binary linear model: the margin gradient is constant, so PGD-L2 with the margin loss moves
    # straight to the boundary and succeeds exactly when epsilon >= the closed-form distance
    logit_fn, weight, x = linear_model(num_classes=2, dim=6, seed=4)
    labels = logit_fn(x).argmax(1)
    truth = exact_distance(weight, logit_fn(x), labels, 2)
    result = minimal_epsilon(logit_fn, x, labels, eps_max=50.0, bisection_steps=40,
                             tolerance=tolerance, steps=60, step_size=1.0, restarts=1,
                             loss="margin")
    assert (result.epsilon >= truth * (1 - 1e-9)).all()
    assert (result.epsilon <= truth / (1 - tolerance)).all()
    assert (result.lower <= truth).all()
    # the stopping rule holds per sample, and it stopped there (not at the step cap)
    width = result.epsilon - result.lower
    assert (width <= tolerance * result.epsilon).all()
    assert (width > tolerance * result.epsilon / 2 - 1e-12).all()
    assert result.budget.tolerance == tolerance
    assert result.budget.to_json()["tolerance"] == tolerance


def test_unflipped_samples_get_inf_and_rank_last():
    weight = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    x = torch.tensor([[0.1, 0.0], [0.2, 0.0], [5.0, 0.0]], dtype=torch.float64)
    labels = torch.zeros(3, dtype=torch.long)
    result = minimal_epsilon(lambda inp: inp @ weight.T, x, labels, eps_max=1.0,
                             bisection_steps=10, loss="margin")
    assert math.isinf(result.epsilon[2].item()) and result.epsilon[:2].isfinite().all()
    assert result.epsilon[0] < result.epsilon[1]


def test_attack_report_json_and_plot(digits_model, tmp_path):
    model, x, y = digits_model
    x, y = x[:30], y[:30]
    spectral = dual_spectrum(gradient_rows(model, x)).eigenvalues[:, 0]
    report = attack_report(model, x, y, spectral, epsilons=[0.5, 1.0], clip=(0.0, 1.0),
                           bisection_steps=6, steps=10, num_bootstrap=200)
    section = json.loads(json.dumps(report.to_json()))
    assert section == report.to_json()  # plain Python types only
    assert section["robust_accuracy"]["pgd"][1] < section["clean_accuracy"]
    # on this model, large lambda_max means a small flipping budget
    assert section["correlations"]["spectral_norm"]["spearman"] < -0.5
    low, high = section["correlations"]["spectral_norm"]["spearman_ci"]
    assert low <= section["correlations"]["spectral_norm"]["spearman"] <= high
    assert section["sanity"]["ok"] and len(section["sanity"]["messages"]) == 1
    assert section["budget"]["gradient_evaluations_per_sample"] == 7 * 10 * 2  # 2 restarts
    assert section["budget"]["tolerance"] == 0.01
    path = plot_attacks(section, tmp_path / "attacks.png")
    assert path.stat().st_size > 1000


def test_rank_correlation_matches_scipy_and_ranks_inf_last():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=40), rng.normal(size=40)
    y[:5] = np.inf
    result = rank_correlation(x, y, num_bootstrap=300, seed=1)
    capped = np.where(np.isinf(y), 1e9, y)
    assert result.spearman == pytest.approx(scipy.stats.spearmanr(x, capped).statistic)
    assert result.kendall == pytest.approx(scipy.stats.kendalltau(x, capped).statistic)
    assert result.num_infinite == 5
    assert result.spearman_ci == rank_correlation(x, y, num_bootstrap=300, seed=1).spearman_ci


def test_partial_correlation_matches_residual_method():
    rng = np.random.default_rng(1)
    z = rng.normal(size=60)
    x, y = z + rng.normal(size=60), z + 0.3 * rng.normal(size=60)
    ranks = [scipy.stats.rankdata(v) for v in (x, y, z)]
    design = np.stack([np.ones(60), ranks[2]], axis=1)
    residuals = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0] for r in ranks[:2]]
    expected = np.corrcoef(*residuals)[0, 1]
    assert partial_rank_correlation(x, y, z).value == pytest.approx(expected)


def test_sanity_flags_catch_bad_models():
    x = torch.rand(16, 8)
    y = torch.zeros(16, dtype=torch.long)
    linear = torch.nn.Linear(8, 3)
    dropout = torch.nn.Sequential(linear, torch.nn.Dropout(0.5)).train()
    assert sanity_flags(dropout, x, y).random_forward
    softmax = torch.nn.Sequential(linear, torch.nn.Softmax(dim=1))
    assert sanity_flags(softmax, x, y).probability_outputs
    flat = sanity_flags(lambda inp: torch.round(linear(inp)), x, y)
    assert flat.zero_gradient_fraction == 1.0 and not flat.ok
    good = sanity_flags(linear, x, y)
    assert good.ok and not good.random_forward and not good.probability_outputs


def test_sample_in_ball_respects_radius_and_mask():
    x = torch.zeros(500, 4, 3)
    mask = torch.zeros(1, 4, 1)
    mask[:, :2] = 1
    radius = torch.linspace(0.1, 2.0, 500)
    for norm in ("l2", "linf"):
        points = sample_in_ball(x, radius, norm, space_mask=mask,
                                generator=torch.Generator().manual_seed(0))
        flat = points.reshape(500, -1)
        size = flat.norm(dim=1) if norm == "l2" else flat.abs().amax(dim=1)
        assert (size <= radius * (1 + 1e-6)).all() and (size > 0.5 * radius).double().mean() > 0.9
        assert (points[:, 2:] == 0).all()


def test_bad_input_raises():
    logit_fn, _, x = linear_model()
    labels = torch.zeros(len(x), dtype=torch.long)
    with pytest.raises(InputError, match="norm='l3'"):
        pgd(logit_fn, x, labels, 0.1, norm="l3")
    with pytest.raises(InputError, match=r"labels of shape \(3,\)"):
        pgd(logit_fn, x, labels[:3], 0.1)
    with pytest.raises(InputError, match="loss='hinge'"):
        pgd(logit_fn, x, labels, 0.1, loss="hinge")
    with pytest.raises(InputError, match="steps=0"):
        pgd(logit_fn, x, labels, 0.1, steps=0)
    with pytest.raises(InputError, match="epsilon"):
        pgd(logit_fn, x, labels, -0.1)
    with pytest.raises(InputError, match=r"clip=\(1.0, 0.0\)"):
        pgd(logit_fn, x, labels, 0.1, clip=(1.0, 0.0))
    with pytest.raises(InputError, match="pass eps_max"):
        minimal_epsilon(logit_fn, x, labels)
    with pytest.raises(InputError, match="token ids"):
        pgd(logit_fn, x.long(), labels, 0.1)
    with pytest.raises(InputError, match="space_mask of shape"):
        pgd(logit_fn, x, labels, 0.1, space_mask=torch.ones(3, 2))
    with pytest.raises(InputError, match="5 spectral_norm values"):
        attack_report(logit_fn, x, labels, torch.ones(5), epsilons=[0.1], eps_max=1.0)
    with pytest.raises(InputError, match="epsilons=\\[\\]"):
        attack_report(logit_fn, x, labels, torch.ones(len(x)), epsilons=[], eps_max=1.0)
    with pytest.raises(NotAClassifierError, match="shape"):
        pgd(lambda inp: inp.sum(dim=1), x, labels, 0.1)
    with pytest.raises(InputError, match="confidence=1.5"):
        rank_correlation([1, 2, 3], [1, 2, 3], confidence=1.5)
    with pytest.raises(InputError, match="NaN"):
        rank_correlation([1, float("nan"), 3], [1, 2, 3])
