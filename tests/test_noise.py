import json
import math

import pytest
import scipy.stats
import torch

from hf_fisher.errors import InputError
from hf_fisher.noise import crossing, noise_curves
from hf_fisher.report.sections.noise_curves import plot_noise_curves

torch.set_num_threads(1)


def small_mlp(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    model = model.double().eval()
    x = torch.randn(6, 5, dtype=torch.float64)
    return model, x, model(x).argmax(1)


def test_accuracy_matches_gaussian_closed_form_for_linear_binary_model():
    weight = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 1.0]], dtype=torch.float64)
    x = torch.tensor([[0.5, 0.2, 0.1], [1.0, 1.0, 0.0], [0.1, 0.0, 0.0]], dtype=torch.float64)
    labels = torch.zeros(3, dtype=torch.long)
    sigmas = [0.1, 0.5, 1.0]
    curves = noise_curves(lambda inp: inp @ weight.T, x, labels, sigmas=sigmas, draws=4000)
    margin = x @ (weight[0] - weight[1])
    spread = (weight[0] - weight[1]).norm()
    for sigma, measured in zip(sigmas, curves.accuracy, strict=True):
        exact = scipy.stats.norm.cdf((margin / (sigma * spread)).numpy()).mean()
        std = math.sqrt(exact * (1 - exact) / (3 * 4000))
        assert abs(measured - exact) < 5 * std + 1e-12


def test_bound_holds_against_many_draw_truth():
    model, x, labels = small_mlp()
    sigmas = [0.0, 0.5, 1.5]
    repeats = 2000  # the mean over repeated copies is the same target, with tiny variance
    reference = noise_curves(model, x.repeat(repeats, 1), labels.repeat(repeats), sigmas=sigmas,
                             draws=10, seed=123)
    truth = reference.brier
    covered, estimates = 0, []
    trials = 40
    for seed in range(trials):
        curves = noise_curves(model, x, labels, sigmas=sigmas, draws=32, confidence=0.9,
                              seed=seed)
        covered += all(u >= t for u, t in zip(curves.upper, truth, strict=True))
        estimates.append(curves.brier)
    assert covered >= 0.9 * trials
    mean_estimate = torch.tensor(estimates).mean(dim=0)
    assert torch.allclose(mean_estimate, torch.tensor(truth), atol=0.03)
    # small variance (no noise: only the spread over samples): empirical Bernstein is tighter
    excess = [bound - reference.brier[0] for bound in (reference.bernstein[0],
                                                       reference.hoeffding[0])]
    assert 0 < excess[0] < 0.5 * excess[1]
    assert reference.upper[0] == pytest.approx(reference.bernstein[0])
    # the bound is informative: well below the trivial value 2 at this sample size
    assert max(curves.upper) < max(truth) + 0.3


def test_uniform_noise_stays_in_its_box_mask_and_clip():
    seen = []
    model = torch.nn.Linear(4, 2).double()

    def recording(inp):
        seen.append(inp.clone())
        return model(inp)

    x = torch.full((8, 4), 0.5, dtype=torch.float64)
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    noise_curves(recording, x, torch.zeros(8, dtype=torch.long), sigmas=[0.3, 0.8],
                 kind="uniform", draws=3, clip=(0.0, 1.0), space_mask=mask,
                 chunk_size=8)  # one chunk: no memory probe among the recorded calls
    first = torch.stack(seen[:3]) - x
    assert first.abs().max() <= 0.3 and first.abs().max() > 0.2
    assert (first[..., 2] == 0).all()
    later = torch.stack(seen[3:])
    assert later.min() >= 0.0 and later.max() <= 1.0


def test_json_determinism_auc_crossing_and_plot(tmp_path):
    model, x, labels = small_mlp(1)
    sigmas = [0.0, 0.5, 1.0, 2.0, 4.0]
    first = noise_curves(model, x, labels, sigmas=sigmas, draws=8, tolerance=0.3, seed=5)
    second = noise_curves(model, x, labels, sigmas=sigmas, draws=8, tolerance=0.3, seed=5)
    section = first.to_json()
    assert section == second.to_json()
    assert json.loads(json.dumps(section)) == section
    assert section["accuracy"][0] == 1.0 and section["accuracy"][-1] < 1.0
    expected_auc = sum(
        (b - a) * (u + v) / 2
        for a, b, u, v in zip(sigmas, sigmas[1:], first.accuracy, first.accuracy[1:], strict=False)
    ) / 4.0
    assert section["auc_accuracy"] == pytest.approx(expected_auc)
    if section["crossing_sigma"] is not None:
        index = next(i for i, u in enumerate(first.upper) if u > 0.3)
        assert sigmas[max(index - 1, 0)] <= section["crossing_sigma"] <= sigmas[index]
    assert plot_noise_curves(section, tmp_path / "noise.png").stat().st_size > 1000


def test_crossing_edge_cases():
    assert crossing([0.0, 1.0], [0.5, 0.6], 0.2) == 0.0
    assert crossing([0.0, 1.0], [0.1, 0.15], 0.2) is None


def test_bad_input_raises():
    model, x, labels = small_mlp()
    with pytest.raises(InputError, match=r"sigmas=\[1.0, 0.5\]"):
        noise_curves(model, x, labels, sigmas=[1.0, 0.5])
    with pytest.raises(InputError, match="kind='laplace'"):
        noise_curves(model, x, labels, sigmas=[0.1], kind="laplace")
    with pytest.raises(InputError, match="draws=0"):
        noise_curves(model, x, labels, sigmas=[0.1], draws=0)
    with pytest.raises(InputError, match="confidence=1.0"):
        noise_curves(model, x, labels, sigmas=[0.1], confidence=1.0)
    with pytest.raises(InputError, match="labels of shape"):
        noise_curves(model, x, labels[:2], sigmas=[0.1])
