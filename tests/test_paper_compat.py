"""``paper_compat`` against a port of the SRP code's estimators, written here from its description.

The port (the ``srp_*`` functions) works the way the paper's public code is described to work:
one sample at a time, the K x d Jacobian built row by row with plain autograd, dense K x K and
d-vector algebra in numpy. It shares nothing with hf-fisher's estimators except the random
probes and directions, which it is handed (drawn from the same per-sample streams) so that the
two can agree to float64 rounding. The SRP code itself is not available offline: what the port
reconstructs is listed in docs/paper-compat.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_fisher import fisher_spectrum
from hf_fisher._random import default_streams
from hf_fisher.adapters import load_classifier
from hf_fisher.cli import main
from hf_fisher.errors import InputError
from hf_fisher.options import CompanionOptions, EstimatorOptions
from hf_fisher.paper_compat import (
    PAPER_COMPAT,
    apply_paper_compat,
    apply_paper_compat_companions,
    not_applied_attack_options,
)
from hf_fisher.results import load_results
from hf_fisher.testing.models import build_resnet
from hf_fisher.testing.tolerances import tolerance_for

RTOL = tolerance_for(torch.float64)
NUM_SAMPLES = 3
SEED = 5

# --------------------------------------------------------------------------------------------
# The port: one sample (batch 1) at a time.


def srp_jacobian(model: torch.nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The K x d logits Jacobian, one autograd row per class, and the softmax."""
    leaf = x[None].clone().requires_grad_(True)
    logits = model(pixel_values=leaf).logits[0]
    rows = [
        torch.autograd.grad(logits[k], leaf, retain_graph=True)[0].flatten()
        for k in range(logits.shape[0])
    ]
    probs = torch.softmax(logits.detach(), dim=0)
    return torch.stack(rows).numpy(), probs.numpy()


def srp_covariance(probs: np.ndarray) -> np.ndarray:
    return np.diag(probs) - np.outer(probs, probs)


def srp_sqrt_covariance(probs: np.ndarray) -> np.ndarray:
    """C^{1/2} via eigh of ``C + 11^T/K`` (its null vector 1 lifted to eigenvalue 1), minus it.

    ``C 1 = 0``, so ``(C + P)^{1/2} = C^{1/2} + P`` for the projector ``P = 11^T / K``; the lift
    keeps the square root away from the rounding-level eigenvalue 0.
    """
    size = len(probs)
    projector = np.full((size, size), 1.0 / size)
    values, vectors = np.linalg.eigh(srp_covariance(probs) + projector)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T - projector


def srp_hutchinson(model, x, probes: np.ndarray) -> tuple[float, float]:
    """The SRP "Hutchinson": max Rayleigh quotient of ``C^1/2 J J^T C^1/2`` over the probes."""
    jacobian, probs = srp_jacobian(model, x)
    root = srp_sqrt_covariance(probs)
    matrix = root @ jacobian @ jacobian.T @ root
    quotients = [u @ matrix @ u / (u @ u) for u in probes]
    return max(quotients), float(np.trace(matrix))


def srp_power(model, x, num_iterations: int) -> float:
    """Power iteration on ``F = J^T C J`` from the top class's gradient row of J."""
    jacobian, probs = srp_jacobian(model, x)
    covariance = srp_covariance(probs)
    vector = jacobian[np.argmax(probs)]
    vector = vector / np.linalg.norm(vector)
    for _ in range(num_iterations):
        product = jacobian.T @ (covariance @ (jacobian @ vector))
        rayleigh = vector @ product
        vector = product / np.linalg.norm(product)
    return float(rayleigh)


def srp_black_box(model, x, directions: np.ndarray, step: float = 1e-3) -> float:
    """Max over unit directions of ``d^T C d``, d the central difference of the logits."""
    with torch.no_grad():
        probs = torch.softmax(model(pixel_values=x[None]).logits[0], dim=0).numpy()
        quotients = []
        for unit in directions:
            offset = torch.from_numpy(step * unit).reshape(x.shape)
            plus = model(pixel_values=(x + offset)[None]).logits[0].numpy()
            minus = model(pixel_values=(x - offset)[None]).logits[0].numpy()
            derivative = (plus - minus) / (2 * step)
            quotients.append(derivative @ srp_covariance(probs) @ derivative)
    return max(quotients)


# --------------------------------------------------------------------------------------------
# hf-fisher in compatibility mode against the port.


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """A small config-built ResNet in float64, measured in its normalised input space."""
    path = build_resnet(tmp_path_factory.mktemp("resnet"), image_size=8)
    classifier = load_classifier(str(path), input_space="normalized", dtype=torch.float64)
    classifier.model.eval()
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(NUM_SAMPLES, *classifier.input_shape, generator=generator).double()
    return classifier, inputs


def _compat(cnn, **options) -> torch.Tensor:
    classifier, inputs = cnn
    result = fisher_spectrum(
        classifier, inputs, dtype=torch.float64, seed=SEED, paper_compat=True, **options
    )
    return result


def _stream(purpose: str, sample: int, shape: tuple[int, ...]) -> np.ndarray:
    draws = default_streams(SEED, 1, purpose, [sample]).normal(
        shape, dtype=torch.float64, device=torch.device("cpu")
    )
    return draws[0].numpy()


def test_rayleigh_probes_equal_the_srp_hutchinson(cnn):
    classifier, inputs = cnn
    result = _compat(cnn)
    assert result.method == "rayleigh-probes" and result.settings["num_probes"] == 100
    for sample, x in enumerate(inputs):
        probes = _stream("probe", sample, (100, classifier.num_classes))
        value, trace = srp_hutchinson(classifier.model, x, probes)
        assert result.spectral_norm[sample].item() == pytest.approx(value, rel=RTOL)
        assert result.trace[sample].item() == pytest.approx(trace, rel=RTOL)


def test_power_from_the_top_class_gradient_equals_the_srp_power(cnn):
    classifier, inputs = cnn
    result = _compat(cnn, method="power", max_iter=3, tol=1e-300)
    assert (result.iterations == 3).all()
    for sample, x in enumerate(inputs):
        expected = srp_power(classifier.model, x, 3)
        assert result.spectral_norm[sample].item() == pytest.approx(expected, rel=RTOL)
    random_start = fisher_spectrum(
        classifier, inputs, dtype=torch.float64, method="power", max_iter=3, tol=1e-300
    )
    gap = (random_start.spectral_norm - result.spectral_norm).abs() / result.spectral_norm
    assert gap.max() > 1e3 * RTOL, "the start vector should matter after three products"


def test_black_box_step_equals_the_srp_finite_differences(cnn):
    classifier, inputs = cnn
    result = _compat(cnn, black_box=True)
    assert result.method == "rayleigh-max" and result.settings["step"] == 1e-3
    dim = inputs[0].numel()
    for sample, x in enumerate(inputs):
        normals = _stream("direction", sample, (100, dim))
        units = normals / np.linalg.norm(normals, axis=1, keepdims=True)
        expected = srp_black_box(classifier.model, x, units)
        assert result.spectral_norm[sample].item() == pytest.approx(expected, rel=RTOL)


def test_rayleigh_probes_is_a_lower_bound_of_exact(cnn):
    classifier, inputs = cnn
    probes = _compat(cnn)
    exact = fisher_spectrum(classifier, inputs, dtype=torch.float64, method="exact")
    assert (probes.spectral_norm <= exact.spectral_norm * (1 + RTOL)).all()
    assert (probes.spectral_norm < exact.spectral_norm * (1 - 1e-6)).any(), "100 probes in R^10"
    torch.testing.assert_close(probes.trace, exact.trace, rtol=RTOL, atol=0)


def test_a_plain_module_is_measured_in_its_own_inputs():
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    inputs = torch.randn(5, 6, generator=torch.Generator().manual_seed(1)).double()
    result = fisher_spectrum(net.double(), inputs, dtype=torch.float64, paper_compat=True)
    exact = fisher_spectrum(net, inputs, dtype=torch.float64, method="exact")
    assert result.method == "rayleigh-probes" and result.settings["paper_compat"] is True
    assert (result.spectral_norm <= exact.spectral_norm * (1 + RTOL)).all()


def test_a_classifier_loaded_in_pixels_is_refused(cnn, tmp_path):
    _, inputs = cnn
    pixels = load_classifier(str(build_resnet(tmp_path, image_size=8)), dtype=torch.float64)
    with pytest.raises(InputError, match=r"measures in 'pixels': load it with load_classifier"):
        fisher_spectrum(pixels, inputs.clamp(0, 1), dtype=torch.float64, paper_compat=True)


# --------------------------------------------------------------------------------------------
# The preset.


def test_preset_resolves_to_concrete_settings():
    options, space = apply_paper_compat(EstimatorOptions(paper_compat=True), None)
    assert space == "normalized"
    assert (options.method, options.num_probes, options.power_start, options.fd_step) == (
        "rayleigh-probes",
        100,
        "top-class-gradient",
        1e-3,
    )
    black_box, _ = apply_paper_compat(EstimatorOptions(paper_compat=True, black_box=True), None)
    assert black_box.method == "rayleigh-max" and black_box.num_queries == 201
    assert apply_paper_compat(options, space) == (options, space)  # idempotent
    module_space = apply_paper_compat(EstimatorOptions(paper_compat=True), None, plain_module=True)
    assert module_space[1] == "raw"
    plain = EstimatorOptions(method="lanczos")
    assert apply_paper_compat(plain, "pixels") == (plain, "pixels")


@pytest.mark.parametrize(
    ("options", "space", "match"),
    [
        ({}, "pixels", r"'normalized' input space, but input_space='pixels'"),
        ({"method": "lanczos"}, None, r"not method 'lanczos': drop --method or --paper-compat"),
        ({"num_probes": 7}, None, r"sets num_probes=100, but num_probes=7 \(--num-probes\)"),
        ({"fd_step": 1e-2}, None, r"sets fd_step=0\.001, but fd_step=0\.01 \(--fd-step\)"),
    ],
)
def test_contradicting_settings_are_refused(options, space, match):
    with pytest.raises(InputError, match=match):
        apply_paper_compat(EstimatorOptions(paper_compat=True, **options), space)


def test_preset_sets_the_pgd_budget_of_linf_attacks_only():
    compat = EstimatorOptions(paper_compat=True)
    linf = apply_paper_compat_companions(CompanionOptions(attacks="linf"), compat)
    companion_fields = CompanionOptions.names()
    for name, value in PAPER_COMPAT.attack_options.items():
        if name in companion_fields:
            assert getattr(linf, name) == value, name
        else:
            assert name in not_applied_attack_options(PAPER_COMPAT), name
    assert linf.attack_epsilons == [8 / 255]
    assert apply_paper_compat_companions(linf, compat) == linf  # idempotent
    l2 = CompanionOptions(attacks="l2")
    assert apply_paper_compat_companions(l2, compat) == l2  # the paper's L2 attack is CW
    assert apply_paper_compat_companions(CompanionOptions(attacks="linf"), EstimatorOptions()) == (
        CompanionOptions(attacks="linf")
    )
    with pytest.raises(InputError, match=r"attack_epsilons=\[0\.031.*\(--attack-epsilons\)"):
        apply_paper_compat_companions(
            CompanionOptions(attacks="linf", attack_epsilons=[0.1]), compat
        )


@pytest.mark.slow
def test_cli_records_every_setting(tmp_path):
    out = tmp_path / "run"
    args = ["evaluate", "--no-progress", "--paper-compat", "--num-samples", "3", "--out", out]
    attacks = ["--attacks", "linf", "--eps-max", "1", "--companion-samples", "2"]
    assert main([str(arg) for arg in args + attacks]) == 0
    results = load_results(out)
    assert results["attacks"]["epsilons"] == [8 / 255]
    settings = results["settings"]
    assert settings["companions"]["attack_epsilons"] == [8 / 255]
    assert settings["paper_compat"] is True
    assert settings["paper_compat_settings"] == PAPER_COMPAT.to_settings()
    assert settings["input_space"] == "normalized"
    assert settings["method"] == "rayleigh-probes"
    assert settings["spectral_norm_is_lower_bound"] is True
    assert (settings["num_probes"], settings["power_start"], settings["fd_step"]) == (
        100,
        "top-class-gradient",
        1e-3,
    )


def test_cli_refuses_pixels_with_paper_compat(tmp_path, capsys):
    args = ["evaluate", "--paper-compat", "--input-space", "pixels", "--out", str(tmp_path)]
    assert main(args) == 2
    assert "drop one of them" in capsys.readouterr().err
