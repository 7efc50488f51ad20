"""The Lipschitz baseline against dense float64 softmax Jacobians."""

import json

import pytest
import torch

from hf_fisher import CompanionOptions
from hf_fisher.attacks import (
    AttackReport,
    attack_report,
    lipschitz_scores,
    softmax_jacobian_norm,
)
from hf_fisher.errors import InputError
from hf_fisher.estimators.exact import dual_spectrum, gradient_rows
from hf_fisher.report.sections.attacks import card_attacks
from hf_fisher.testing.dense import dense_jacobian
from hf_fisher.testing.models import train_digits_mlp
from hf_fisher.testing.tolerances import tolerance_for

torch.set_num_threads(1)


def mlp(num_classes=5, dim=7):
    torch.manual_seed(0)
    layers = [torch.nn.Linear(dim, 12), torch.nn.Tanh(), torch.nn.Linear(12, num_classes)]
    return torch.nn.Sequential(*layers).double().eval()


def dense_truth(model, x, mask=None):
    """||(diag p - p p^T) J||_2 from the full K x d Jacobian (no logit differences)."""
    jacobian = dense_jacobian(model, x)  # (N, K, d)
    if mask is not None:
        jacobian = jacobian * mask.reshape(1, 1, -1)
    probs = torch.softmax(model(x), dim=1)
    covariance = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    return torch.linalg.matrix_norm(covariance @ jacobian, ord=2)


@pytest.mark.parametrize("num_classes", [2, 5])
def test_radius_zero_is_the_dense_softmax_jacobian_norm(num_classes):
    model = mlp(num_classes)
    x = torch.randn(6, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    truth = dense_truth(model, x)
    rtol = tolerance_for(torch.float64)
    torch.testing.assert_close(softmax_jacobian_norm(model, x), truth, rtol=rtol, atol=0)
    torch.testing.assert_close(lipschitz_scores(model, x, radius=0.0), truth, rtol=rtol, atol=0)
    mask = torch.tensor([1, 1, 0, 1, 0, 1, 1], dtype=torch.float64)
    torch.testing.assert_close(
        softmax_jacobian_norm(model, x, mask.expand_as(x)),
        dense_truth(model, x, mask),
        rtol=rtol,
        atol=0,
    )


def test_neighbourhood_max_covers_the_sample_and_stays_in_the_box():
    model = mlp()
    x = torch.rand(5, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    at_sample = lipschitz_scores(model, x, radius=0.0)
    seen = []

    def recording(inputs):
        seen.append(inputs.detach())
        return model(inputs)

    local = lipschitz_scores(
        recording,
        x,
        radius=0.5,
        num_points=4,
        clip=(0.0, 1.0),
        generator=torch.Generator().manual_seed(0),
    )
    assert (local >= at_sample).all() and (local > at_sample).any()
    points = torch.stack(seen)
    assert len(seen) == 5 and points.min() >= 0 and points.max() <= 1
    assert ((points - x).reshape(5, 5, -1).norm(dim=2) <= 0.5 + 1e-12).all()
    # the maximum is one of the evaluated points' dense norms
    candidates = torch.stack([dense_truth(model, p) for p in seen])
    torch.testing.assert_close(local, candidates.amax(dim=0), rtol=1e-10, atol=0)


def test_bad_radius_raises():
    with pytest.raises(InputError, match="radius=-1"):
        lipschitz_scores(mlp(), torch.zeros(2, 7, dtype=torch.float64), radius=-1.0)


def test_lipschitz_joins_the_correlation_table_and_round_trips():
    model, inputs, labels = train_digits_mlp()
    x, y = inputs[:16], labels[:16]
    spectral = dual_spectrum(gradient_rows(model, x)).eigenvalues[:, 0]
    common = {
        "epsilons": [1.0],
        "clip": (0.0, 1.0),
        "steps": 5,
        "restarts": 1,
        "bisection_steps": 4,
        "num_bootstrap": 20,
    }
    report = attack_report(model, x, y, spectral, lipschitz_radius=0.0, **common)
    torch.testing.assert_close(report.lipschitz, softmax_jacobian_norm(model, x))
    section = json.loads(json.dumps(report.to_json()))
    assert section["expected_signs"]["lipschitz"] == -1
    assert section["lipschitz_baseline"]["radius"] == 0.0
    assert section["correlations"]["lipschitz"]["num_samples"] == int(report.correct.sum())
    assert AttackReport.from_json(section).to_json() == section
    assert "local Lipschitz" in card_attacks(section)
    without = attack_report(model, x, y, spectral, **common).to_json()
    assert "lipschitz" not in without["correlations"]
    assert "lipschitz" not in without["expected_signs"]
    with pytest.raises(InputError, match=r"lipschitz_radius \(--lipschitz-radius\) must be"):
        CompanionOptions(lipschitz_radius=-0.1).validate()
