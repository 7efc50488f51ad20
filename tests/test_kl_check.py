import json

import pytest
import torch

from hf_fisher.errors import InputError
from hf_fisher.kl_check import kl_check, kl_divergence
from hf_fisher.report.sections.kl_check import plot_kl_check
from hf_fisher.testing.dense import dense_fisher, dense_spectrum

torch.set_num_threads(1)


def tanh_mlp(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(), torch.nn.Linear(10, 4))
    model = model.to(dtype).eval()
    return model, 2 * torch.randn(5, 6, dtype=dtype)


def test_relative_error_vanishes_as_radius_shrinks():
    model, x = tanh_mlp()
    radii = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    check = kl_check(model, x, radii=radii, draws=6, tolerance=0.05)
    errors = check.median_relative_error()
    assert errors[0] < 1e-3
    assert all(a < b for a, b in zip(errors, errors[1:], strict=False))
    assert check.valid_radius is not None and check.valid_radius < 1.0
    # third-order remainder: the error shrinks about linearly with the radius
    assert errors[1] / errors[2] == pytest.approx(0.1, rel=0.5)


def test_quadratic_form_agrees_with_dense_fisher():
    model, x = tanh_mlp(seed=1)
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    radius = 0.5
    check = kl_check(model, x, radii=[radius], draws=400, space_mask=mask)
    fisher = dense_fisher(model, x, space_mask=mask)
    eigenvalues, trace = dense_spectrum(fisher)
    unit_form = check.quadratic[0] / (0.5 * radius**2)  # (draws, N) u^T F u for unit u
    assert (unit_form <= eigenvalues[:, 0] * (1 + 1e-9)).all()
    # for u uniform on the unit sphere of the 4 free coordinates, E[u^T F u] = trace(F) / 4
    expected = trace / 4
    assert torch.allclose(unit_form.mean(dim=0), expected, rtol=0.15)


def test_kl_divergence_matches_direct_formula_and_survives_large_gaps():
    a, b = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    p, q = torch.softmax(a, 1), torch.softmax(b, 1)
    assert torch.allclose(kl_divergence(a, b), (p * (p / q).log()).sum(1))
    gap = torch.tensor([[0.0, 150.0, 0.0]])
    assert torch.isfinite(kl_divergence(gap, gap + torch.tensor([[0.0, 0.0, 1.0]]))).all()


def test_json_is_plain_and_plot(tmp_path):
    model, x = tanh_mlp(torch.float32)
    check = kl_check(model, x, radii=[1e-2, 1e-1, 1.0], draws=2, seed=3)
    section = check.to_json()
    assert json.loads(json.dumps(section)) == section
    assert section == kl_check(model, x, radii=[1e-2, 1e-1, 1.0], draws=2, seed=3).to_json()
    assert len(section["median_relative_error"]) == 3
    assert plot_kl_check(section, tmp_path / "kl.png").stat().st_size > 1000


def test_bad_input_raises():
    model, x = tanh_mlp()
    with pytest.raises(InputError, match=r"radii=\[0.0, 1.0\]"):
        kl_check(model, x, radii=[0.0, 1.0])
    with pytest.raises(InputError, match="draws=0"):
        kl_check(model, x, radii=[0.1], draws=0)
    with pytest.raises(InputError, match="inputs of shape"):
        kl_check(model, x[0], radii=[0.1])
