"""Every companion result reads back from its results.json section: from_json inverts to_json.

Checked on small results computed here (a tanh MLP trained on real sklearn digits) and on the
sections of the bundled model's real results file, which the runner wrote.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from hf_fisher.attacks import AttackReport, attack_report
from hf_fisher.bounds import BoundReport, bound_report
from hf_fisher.clever import CleverScores, clever_scores
from hf_fisher.estimators.exact import dual_spectrum, gradient_rows
from hf_fisher.frequency import FrequencyReport, analyze_frequency
from hf_fisher.kl_check import KLCheck, kl_check
from hf_fisher.noise import NoiseCurves, noise_curves
from hf_fisher.testing.models import train_digits_mlp

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "model_cards" / "digits-resnet-results" / "results.json"
RUNNER_KEYS = {"sample_indices"}  # added by the runner next to what to_json returns


@pytest.fixture(scope="module")
def digits():
    model, inputs, labels = train_digits_mlp(steps=100)
    x, y = inputs[:24], labels[:24]
    spectral_norm = dual_spectrum(gradient_rows(model, x)).eigenvalues[:, 0]
    return model, x, y, spectral_norm


def _computed(name, digits):
    model, x, y, spectral_norm = digits
    if name == "attacks":
        return attack_report(
            model,
            x,
            y,
            spectral_norm,
            epsilons=[0.5, 1.0],
            clip=(0.0, 1.0),
            steps=5,
            bisection_steps=3,
            eps_max=2.0,
            num_bootstrap=20,
        )
    if name == "noise_curves":
        return noise_curves(model, x, y, sigmas=[0.0, 0.2, 0.5], draws=4, clip=(0.0, 1.0))
    if name == "kl_check":
        return kl_check(model, x, radii=[1e-2, 1e-1, 1.0], draws=3)
    if name == "clever":
        return clever_scores(
            model,
            x,
            radius=1.0,
            num_batches=4,
            batch_points=8,
            clip=(0.0, 1.0),
            spectral_norm=spectral_norm,
            num_bootstrap=20,
        )
    if name == "frequency":
        images = x.reshape(-1, 1, 8, 8)
        return analyze_frequency(
            lambda pixels: model(pixels.reshape(pixels.shape[0], -1)), images, y, num_bands=3
        )
    if name == "bound":
        return bound_report(model, (64,), spectral_norm.double())
    raise AssertionError(name)


CLASSES = {
    "attacks": AttackReport,
    "noise_curves": NoiseCurves,
    "kl_check": KLCheck,
    "clever": CleverScores,
    "frequency": FrequencyReport,
    "bound": BoundReport,
}


def _strict_json(data):
    """What results.json holds: the dict through a strict JSON round trip."""
    return json.loads(json.dumps(data, allow_nan=False))


@pytest.mark.parametrize("name", list(CLASSES))
def test_from_json_inverts_to_json_on_a_computed_result(name, digits):
    result = _computed(name, digits)
    data = result.to_json()
    again = CLASSES[name].from_json(_strict_json(data))
    assert isinstance(again, CLASSES[name])
    assert again.to_json() == data
    assert _strict_json(again.to_json()) == _strict_json(data)


@pytest.mark.parametrize("name", [n for n in CLASSES if n != "bound"])
def test_from_json_reads_the_real_results_file(name):
    section = json.loads(RESULTS.read_text(encoding="utf-8"))[name]
    stored = {key: value for key, value in section.items() if key not in RUNNER_KEYS}
    assert CLASSES[name].from_json(section).to_json() == stored


def test_attack_report_nulls_read_back_as_what_they_were(digits):
    model, x, y, spectral_norm = digits
    # eps_max far too small to flip anything: every minimal epsilon is +inf (null in the file)
    report = attack_report(
        model,
        x,
        y,
        spectral_norm,
        epsilons=[0.01],
        clip=(0.0, 1.0),
        steps=2,
        bisection_steps=1,
        eps_max=1e-3,
        num_bootstrap=0,
    )
    again = AttackReport.from_json(_strict_json(report.to_json()))
    correct = report.correct
    assert torch.isinf(again.minimal.epsilon[correct]).all()
    assert torch.equal(again.minimal.epsilon, report.minimal.epsilon.double().cpu())
    assert torch.equal(again.correct, report.correct.cpu())
    assert math.isnan(again.correlations["spectral_norm"].spearman_ci[0])
    assert again.minimal.budget == report.minimal.budget
    assert again.sanity.ok == report.sanity.ok and again.sanity.messages == report.sanity.messages


def test_noise_curves_infinite_bound_reads_back_as_inf(digits):
    model, x, y, _ = digits
    curves = noise_curves(model, x[:1], y[:1], sigmas=[0.1], draws=1)  # one value: no Bernstein
    data = _strict_json(curves.to_json())
    assert data["brier_upper_bernstein"] == [None]
    again = NoiseCurves.from_json(data)
    assert again.bernstein == [math.inf] and again.hoeffding == curves.hoeffding
    assert again.upper == curves.upper and again.crossing_sigma == curves.crossing_sigma


def test_read_back_results_keep_what_the_file_stores(digits):
    check = _computed("kl_check", digits)
    kl = KLCheck.from_json(_strict_json(check.to_json()))
    assert kl.kl is None and kl.relative_error is None
    assert kl.median_relative_error() == check.median_relative_error()
    assert kl.valid_radius == check.valid_radius

    scores = _computed("clever", digits)
    clever = CleverScores.from_json(_strict_json(scores.to_json()))
    assert clever.lipschitz is None
    assert torch.equal(clever.top2, scores.top2.double())
    assert torch.equal(clever.untargeted, scores.untargeted.double())
    assert clever.correlations == scores.correlations

    report = _computed("frequency", digits)
    frequency = FrequencyReport.from_json(_strict_json(report.to_json()))
    assert frequency.fisher is None and frequency.fisher_summary == report.fisher_summary
    values = frequency.iaside.values
    assert values.shape == report.iaside.values.shape  # 2^M coalitions
    assert values[0] == report.iaside.values[0] and values[-1] == report.iaside.values[-1]
    assert torch.isnan(values[1:-1]).all()  # not stored: unknown, not zero
    assert torch.equal(frequency.iaside.phi, report.iaside.phi)

    bound = _computed("bound", digits)
    again = BoundReport.from_json(_strict_json(bound.to_json()))
    assert again.bound == bound.bound
    assert torch.equal(again.spectral_norm, bound.spectral_norm)
