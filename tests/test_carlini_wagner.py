"""Carlini-Wagner L2 against the closed-form boundary distance of linear classifiers."""

import json

import pytest
import torch

from hf_fisher import CompanionOptions, load_classifier
from hf_fisher.attacks import (
    AttackReport,
    CarliniWagnerSettings,
    attack_report,
    carlini_wagner_l2,
    lp_norm,
)
from hf_fisher.errors import InputError
from hf_fisher.estimators.exact import dual_spectrum, gradient_rows
from hf_fisher.report.sections.attacks import _carlini_wagner
from hf_fisher.testing.models import train_digits_mlp
from hf_fisher.testing.tolerances import tolerance_for

torch.set_num_threads(1)


def linear_model(num_classes, dim=6, seed=0, count=12, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_classes, dim, generator=generator, dtype=torch.float64)
    bias = torch.randn(num_classes, generator=generator, dtype=torch.float64)
    x = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    weight, bias, x = weight.to(dtype), bias.to(dtype), x.to(dtype)
    return (lambda inp: inp @ weight.T + bias), weight, x


def boundary_distance(weight, logits, labels):
    """min_j (z_y - z_j) / ||w_y - w_j||_2: the exact L2 distance to the decision boundary."""
    true = logits.gather(1, labels[:, None])
    norms = (weight[labels][:, None, :] - weight[None, :, :]).norm(dim=2)
    ratio = (true - logits) / norms
    ratio[torch.arange(len(labels)), labels] = float("inf")
    return ratio.min(dim=1).values, ratio.argmin(dim=1)


def assert_valid(logit_fn, x, labels, result):
    """Every reported norm belongs to a real, label-flipping adversarial input."""
    flipped = logit_fn(result.adversarial).argmax(1) != labels
    assert torch.equal(flipped, result.success)
    torch.testing.assert_close(
        lp_norm(result.adversarial - x, "l2").double(), result.norm, rtol=1e-12, atol=0
    )


def test_binary_linear_norm_is_the_closed_form_distance_from_above():
    logit_fn, weight, x = linear_model(num_classes=2)
    labels = logit_fn(x).argmax(1)
    truth, _ = boundary_distance(weight, logit_fn(x), labels)
    result = carlini_wagner_l2(logit_fn, x, labels, steps=300, learning_rate=0.01)
    assert result.success.all()
    assert_valid(logit_fn, x, labels, result)
    assert (result.norm >= truth).all()  # a real adversarial example is never closer
    assert (result.norm <= truth * 1.002).all()
    assert result.settings.gradient_evaluations_per_sample == 300 * 7


def test_multiclass_linear_norm_is_never_below_the_distance():
    # the margin hinge follows the currently strongest other class, which need not be the
    # nearest boundary: CW can stop at a farther one, never at a nearer one
    logit_fn, weight, x = linear_model(num_classes=5, seed=1, count=24)
    labels = logit_fn(x).argmax(1)
    truth, _ = boundary_distance(weight, logit_fn(x), labels)
    result = carlini_wagner_l2(logit_fn, x, labels, steps=200)
    assert_valid(logit_fn, x, labels, result)
    assert (result.norm >= truth).all()
    assert (result.norm / truth).median() < 1.002


@pytest.mark.slow
def test_clipped_box_keeps_inputs_valid_and_finds_an_interior_boundary():
    # boundary points well inside the box (-6, 6): the box must not change the distance; Adam
    # converges more slowly in tanh space, hence 2% rather than 0.2%
    logit_fn, weight, x = linear_model(num_classes=2, seed=2, count=16)
    labels = logit_fn(x).argmax(1)
    truth, nearest = boundary_distance(weight, logit_fn(x), labels)
    normal = weight[labels] - weight[nearest]
    foot = x - (truth / normal.norm(dim=1))[:, None] * normal / normal.norm(dim=1, keepdim=True)
    inside = foot.abs().amax(dim=1) < 5
    assert inside.sum() >= 8
    result = carlini_wagner_l2(logit_fn, x, labels, clip=(-6.0, 6.0), steps=300)
    assert_valid(logit_fn, x, labels, result)
    assert result.adversarial.min() >= -6 and result.adversarial.max() <= 6
    assert (result.norm >= truth).all()
    assert (result.norm[inside] <= truth[inside] * 1.02).all()


def test_already_wrong_samples_cost_nothing_and_unreachable_ones_are_inf():
    weight = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    x = torch.tensor([[0.5, 0.0], [-0.5, 0.0], [0.5, 0.5]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0])
    result = carlini_wagner_l2(lambda inp: inp @ weight.T, x, labels, steps=100, learning_rate=0.05)
    assert result.norm[1] == 0 and bool(result.success[1])
    torch.testing.assert_close(
        result.norm[0], torch.tensor(0.5, dtype=torch.float64), rtol=0.01, atol=0
    )
    # in the box [0.1, 1] the first coordinate cannot cross 0: no adversarial example exists
    boxed = carlini_wagner_l2(
        lambda inp: inp @ weight.T, x[2:], labels[2:], clip=(0.1, 1.0), steps=50
    )
    assert torch.isinf(boxed.norm).all() and not boxed.success.any()
    torch.testing.assert_close(boxed.adversarial, x[2:])


# float64 only: the norm is that of the first Adam iterate that flips the label, and in float32
# batched and single-sample kernels round differently (~1e-7), which can move a borderline flip
# by a whole step on another CPU: a machine-dependent test.
@pytest.mark.parametrize("dtype", [torch.float64])
def test_a_sample_gets_the_same_norm_alone_and_in_a_batch(dtype):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    model = model.to(dtype).eval()
    x = torch.rand(6, 8, generator=torch.Generator().manual_seed(1)).to(dtype)
    labels = model(x).argmax(1)
    options = {"steps": 20, "binary_search_steps": 3, "clip": (0.0, 1.0), "learning_rate": 0.05}
    batched = carlini_wagner_l2(model, x, labels, **options)
    alone = torch.cat(
        [
            carlini_wagner_l2(model, x[i : i + 1], labels[i : i + 1], **options).norm
            for i in range(len(x))
        ]
    )
    assert torch.isfinite(batched.norm).sum() >= 3
    torch.testing.assert_close(alone, batched.norm, rtol=tolerance_for(dtype), atol=0)


def test_bad_knobs_raise_before_any_forward_pass():
    logit_fn, _, x = linear_model(num_classes=3)
    labels = torch.zeros(len(x), dtype=torch.long)
    with pytest.raises(InputError, match="steps=0"):
        carlini_wagner_l2(logit_fn, x, labels, steps=0)
    with pytest.raises(InputError, match="kappa=-1"):
        carlini_wagner_l2(logit_fn, x, labels, kappa=-1.0)
    with pytest.raises(InputError, match=r"outside clip=\(0.0, 1.0\)"):
        carlini_wagner_l2(logit_fn, x, labels, clip=(0.0, 1.0))


def test_cw_sits_next_to_pgd_in_the_attack_report_and_round_trips():
    model, inputs, labels = train_digits_mlp()
    x, y = inputs[:16], labels[:16]
    spectral = dual_spectrum(gradient_rows(model, x)).eigenvalues[:, 0]
    settings = CarliniWagnerSettings(steps=40, binary_search_steps=4, learning_rate=0.05)
    report = attack_report(
        model,
        x,
        y,
        spectral,
        epsilons=[1.0],
        clip=(0.0, 1.0),
        steps=10,
        restarts=1,
        bisection_steps=8,
        num_bootstrap=50,
        carlini_wagner=settings,
    )
    section = json.loads(json.dumps(report.to_json()))
    cw = section["cw"]
    assert cw["settings"]["clip"] == [0.0, 1.0]  # the report's box, not the settings' None
    assert cw["settings"]["gradient_evaluations_per_sample"] == 160
    assert len(section["per_sample"]["cw_norm"]) == 16
    correct = report.correct
    both = correct & torch.isfinite(report.cw_norm) & torch.isfinite(report.minimal.epsilon)
    ratio = (report.minimal.epsilon[both] / report.cw_norm[both]).median()
    assert cw["median_ratio_minimal_epsilon_to_cw"] == pytest.approx(float(ratio))
    assert -1 <= cw["correlation_spectral_norm"]["spearman"] <= 1
    back = AttackReport.from_json(section)
    torch.testing.assert_close(back.cw_norm, report.cw_norm.double())
    assert back.cw_settings == report.cw_settings
    assert back.to_json() == section
    without = attack_report(
        model,
        x[:4],
        y[:4],
        spectral[:4],
        epsilons=[1.0],
        clip=(0.0, 1.0),
        steps=2,
        bisection_steps=1,
        num_bootstrap=10,
    ).to_json()
    assert "cw" not in without and "cw_norm" not in without["per_sample"]
    with pytest.raises(InputError, match="Carlini-Wagner is an L2 attack"):
        attack_report(
            model,
            x,
            y,
            spectral,
            epsilons=[0.1],
            norm="linf",
            clip=(0.0, 1.0),
            carlini_wagner=settings,
        )


def test_cw_moves_only_real_tokens_and_a_padded_sample_matches_itself_alone(bert_dir):
    bert64 = load_classifier(bert_dir, dtype=torch.float64, device="cpu")
    batch = bert64.prepare(["good", "a very bad and long film indeed", "fine film"])
    alone = bert64.prepare(["good"])
    norms = []
    for prepared in (batch, alone):
        logit_fn = bert64.logit_fn(prepared)
        labels = logit_fn(prepared.inputs).argmax(dim=1)
        result = carlini_wagner_l2(
            logit_fn,
            prepared.inputs,
            labels,
            steps=15,
            binary_search_steps=2,
            learning_rate=0.05,
            space_mask=prepared.space_mask,
        )
        delta = result.adversarial - prepared.inputs
        assert (delta * (1 - prepared.space_mask)).abs().max() == 0  # padding never moves
        assert_valid(logit_fn, prepared.inputs, labels, result)
        norms.append(result.norm[0])
    assert torch.isfinite(norms[0])
    # HF eager attention keeps its softmax in float32: float32 tolerance, as for PGD
    torch.testing.assert_close(norms[0], norms[1], rtol=tolerance_for(torch.float32), atol=1e-8)


def test_attacks_cw_option_runs_the_l2_cross_check_with_cw():
    options = CompanionOptions(attacks="cw", cw_steps=5)
    assert options.attack_norm == "l2" and CompanionOptions(attacks="linf").attack_norm == "linf"
    with pytest.raises(InputError, match="choose 'l2' or 'linf', or 'cw'"):
        CompanionOptions(attacks="cw-linf").validate()
    with pytest.raises(InputError, match=r"bisection_tolerance \(--bisection-tolerance\)"):
        CompanionOptions(attacks="l2", bisection_tolerance=1.5).validate()


def test_card_shows_cw_next_to_pgd():
    section = {
        "settings": CarliniWagnerSettings(steps=40, binary_search_steps=4).to_json(),
        "median_norm": 0.5,
        "num_not_flipped": 1,
        "median_ratio_minimal_epsilon_to_cw": 1.08,
        "fraction_minimal_epsilon_above_cw_by_10_percent": 0.25,
        "correlation_spectral_norm": {"spearman": -0.8, "spearman_ci": [-0.9, -0.6]},
    }
    text = _carlini_wagner({"cw": section})
    assert "40 Adam steps × 4 rounds" in text and "1.08× the CW norm" in text
    assert "fraction 0.25" in text and "-0.8 [-0.9, -0.6]" in text.replace("−", "-")
    assert _carlini_wagner({}) == ""
