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
from hf_fisher.operators import dual_spectrum, gradient_rows
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
    raise AssertionError(name)


CLASSES = {"attacks": AttackReport}


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
