"""The flip radius: closed-form KL to the nearest decision boundary, records, cross-check."""

import csv
import math

import numpy as np
import pytest
import scipy.optimize
import torch

from hf_fisher.errors import InputError
from hf_fisher.flip import flip_radii, flip_radius, kl_to_flip

torch.set_num_threads(1)


def kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * np.log(p / q)))


def numerical_kl_flip(p: np.ndarray, a: int, b: int) -> tuple[float, np.ndarray]:
    """min KL(p || q) over q with q_a = q_b, by BFGS over softmax parameters (w_b tied to w_a)."""
    free = [i for i in range(len(p)) if i != b]

    def q_of(w: np.ndarray) -> np.ndarray:
        full = np.zeros(len(p))
        full[free] = w
        full[b] = full[a]
        e = np.exp(full - full.max())
        return e / e.sum()

    start = np.log(p[free])
    result = scipy.optimize.minimize(
        lambda w: kl(p, q_of(w)), start, method="BFGS", options={"gtol": 1e-12}
    )
    return float(result.fun), q_of(result.x)


@pytest.mark.parametrize("seed", range(4))
def test_closed_form_matches_numerical_minimisation(seed):
    generator = np.random.default_rng(seed)
    logits = generator.normal(scale=2.0, size=6)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    a, b = np.argsort(-p)[:2]
    numeric, q = numerical_kl_flip(p, a, b)
    closed = float(kl_to_flip(torch.tensor(logits[None]))[0])
    assert closed == pytest.approx(numeric, rel=1e-6, abs=1e-10)
    # the minimiser: arithmetic mean on the tied pair, every other class untouched
    assert q[a] == pytest.approx((p[a] + p[b]) / 2, rel=1e-4)
    others = [i for i in range(len(p)) if i not in (a, b)]
    np.testing.assert_allclose(q[others], p[others], rtol=1e-4)
    # the runner-up is the nearest boundary: tying with any other class costs more
    for j in others:
        assert numerical_kl_flip(p, a, j)[0] > closed
    # the geometric-mean candidate (the I-projection, min KL(q || p)) is not the minimiser here
    geometric = p.copy()
    geometric[[a, b]] = math.sqrt(p[a] * p[b])
    assert kl(p, geometric / geometric.sum()) > closed + 1e-9


def test_two_class_reduction():
    z = torch.linspace(-8.0, 8.0, 17, dtype=torch.float64)
    p = torch.sigmoid(z)
    entropy = -(p * p.log() + (1 - p) * (1 - p).log())
    expected = math.log(2.0) - entropy
    two_class = kl_to_flip(torch.stack([z, torch.zeros_like(z)], dim=1))
    torch.testing.assert_close(two_class, expected, rtol=1e-10, atol=1e-12)
    # one sigmoid label is the same two-class problem
    torch.testing.assert_close(kl_to_flip(z[:, None], "bernoulli"), expected, rtol=1e-10, atol=0)
    # K classes: s * (log 2 - H(p_a / s)) on the renormalised top pair
    logits = torch.tensor([[3.0, 1.0, 0.5, -1.0]], dtype=torch.float64)
    probs = logits.softmax(dim=1)[0]
    s = probs[0] + probs[1]
    pair = kl_to_flip(torch.stack([probs[0].log(), probs[1].log()])[None])
    torch.testing.assert_close(kl_to_flip(logits)[0], s * pair[0], rtol=1e-10, atol=0)


def test_multi_label_takes_the_nearest_label():
    logits = torch.tensor([[4.0, -0.3, -6.0], [0.0, 5.0, 5.0]], dtype=torch.float64)
    per_label = math.log(2.0) + torch.sigmoid(logits) * torch.nn.functional.logsigmoid(logits)
    per_label += torch.sigmoid(-logits) * torch.nn.functional.logsigmoid(-logits)
    torch.testing.assert_close(kl_to_flip(logits, "bernoulli"), per_label.amin(dim=1))
    assert float(kl_to_flip(logits, "bernoulli")[1]) == 0.0  # label 0 sits on its boundary


def test_saturated_softmax_stays_finite():
    """A logit gap of 200 underflows p_b; KL_flip -> p_a log 2 = log 2, no NaN."""
    kl_flip = kl_to_flip(torch.tensor([[200.0, 0.0, -5.0], [0.0, 0.0, -1.0]]))
    assert kl_flip[0] == pytest.approx(math.log(2.0), rel=1e-12)
    assert kl_flip[1] == 0.0  # a tie is on the boundary
    assert math.isinf(kl_to_flip(torch.zeros(2, 1))[0])  # one class: nothing to flip to


def test_flip_radius_formula_and_vectorised_form():
    assert flip_radius(0.5, 0.25) == pytest.approx(1.0)
    assert math.isinf(flip_radius(0.0, 0.2)) and math.isinf(flip_radius(1.0, math.inf))
    norms = torch.tensor([0.5, 0.0, 2.0, 3.0])
    kls = torch.tensor([0.25, 0.2, 0.0, math.inf])
    radii = flip_radii(norms, kls)
    assert radii.tolist() == [
        flip_radius(n, k) for n, k in zip(norms.tolist(), kls.tolist(), strict=True)
    ]


def test_records_carry_kl_flip_and_flip_radius(tmp_path):
    from hf_fisher.runner import evaluate_robustness
    from hf_fisher.testing.models import build_mlp

    model = build_mlp().eval()
    inputs = torch.randn(6, 2, 3, 4, generator=torch.Generator().manual_seed(1))
    report = evaluate_robustness(model, inputs, out_dir=tmp_path / "run", progress=False)
    with torch.no_grad():
        expected = kl_to_flip(model(inputs).double())
    for row, record in enumerate(report.per_sample):
        assert record["kl_flip"] == pytest.approx(float(expected[row]), rel=1e-5)
        radius = math.sqrt(2 * record["kl_flip"] / record["spectral_norm"])
        assert record["flip_radius"] == pytest.approx(radius, rel=1e-12)
    metrics = report.results["summary"]["metrics"]
    median = float(np.median([r["flip_radius"] for r in report.per_sample]))
    assert metrics["flip_radius"]["median"] == pytest.approx(median, rel=1e-12)
    with open(tmp_path / "run" / "per_sample.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert [float(r["flip_radius"]) for r in rows] == [r["flip_radius"] for r in report.per_sample]


def test_summary_reads_records_written_before_flip_radius():
    from hf_fisher.summary import summarize

    old = [{"label": 0, "correct": True, "spectral_norm": 1.0, "trace": 1.0, "kl_radius": 0.1}]
    assert "flip_radius" not in summarize(old)["metrics"]
    new = [{**old[0], "flip_radius": 0.3}]
    assert summarize(new)["metrics"]["flip_radius"]["median"] == 0.3


def test_attack_report_correlates_flip_radius():
    from hf_fisher.attacks import attack_report
    from hf_fisher.attacks.cross_check import AttackReport
    from hf_fisher.estimators.exact import dual_spectrum, gradient_rows
    from hf_fisher.testing.models import train_digits_mlp

    model, x, y = train_digits_mlp(steps=100)
    x, y = x[:24], y[:24]
    spectral = dual_spectrum(gradient_rows(model, x)).eigenvalues[:, 0]
    report = attack_report(model, x, y, spectral, epsilons=[0.5], clip=(0.0, 1.0),
                           bisection_steps=4, steps=5, num_bootstrap=50)  # fmt: skip
    with torch.no_grad():
        expected = flip_radii(spectral, kl_to_flip(model(x)))
    torch.testing.assert_close(report.flip_radius, expected, rtol=0, atol=0)
    section = report.to_json()
    assert section["expected_signs"]["flip_radius"] == 1
    assert section["correlations"]["flip_radius"]["num_samples"] == int(report.correct.sum())
    again = AttackReport.from_json(section)
    torch.testing.assert_close(again.flip_radius, expected)
    del section["per_sample"]["flip_radius"]  # a section written before the flip radius
    assert AttackReport.from_json(section).flip_radius is None


def test_bad_input_is_refused():
    with pytest.raises(InputError, match="likelihood='poisson'"):
        kl_to_flip(torch.zeros(2, 3), "poisson")
    with pytest.raises(InputError, match=r"shape \(3,\); pass \(N, K\)"):
        kl_to_flip(torch.zeros(3))
