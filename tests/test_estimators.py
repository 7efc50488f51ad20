"""Estimators against dense float64 ground truth on plain modules (no Hugging Face)."""

import pytest
import torch

from hf_fisher.errors import InputError, NotAClassifierError
from hf_fisher.estimators.blackbox import rayleigh_max, sketch_fisher
from hf_fisher.estimators.hutchinson import class_space_hutchinson, hutchinson, hutchpp
from hf_fisher.estimators.lanczos import lanczos
from hf_fisher.estimators.power import power_iteration
from hf_fisher.operators import (
    DenseOperator,
    FisherOperator,
    dual_spectrum,
    gradient_rows,
    input_eigenvectors,
)
from hf_fisher.testing.dense import dense_fisher, dense_spectrum


def small_cnn(num_classes=5, seed=0):
    torch.manual_seed(seed)
    return (
        torch.nn.Sequential(
            torch.nn.Conv2d(2, 4, 3, padding=1),
            torch.nn.Tanh(),
            torch.nn.Flatten(),
            torch.nn.Linear(4 * 5 * 5, num_classes),
        )
        .double()
        .eval()
    )


@pytest.fixture(scope="module")
def cnn_case():
    net = small_cnn()
    torch.manual_seed(1)
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    fisher = dense_fisher(net, x)
    values, trace = dense_spectrum(fisher)
    return net, x, fisher, values, trace


def test_fisher_operator_matches_dense_products(cnn_case):
    net, x, fisher, _, _ = cnn_case
    op = FisherOperator(net, x)
    v = torch.randn(4, 50, dtype=torch.float64)
    expected = torch.einsum("nij,nj->ni", fisher, v)
    torch.testing.assert_close(op.matvec(v), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.quadratic_form(v), (v * expected).sum(1), rtol=1e-10, atol=0)


def test_exact_dual_matches_dense_spectrum_and_trace(cnn_case):
    net, x, fisher, values, trace = cnn_case
    factors = gradient_rows(net, x)
    spectrum = dual_spectrum(factors)
    torch.testing.assert_close(spectrum.eigenvalues, values[:, :4], rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(spectrum.trace, trace, rtol=1e-10, atol=0)
    vectors = input_eigenvectors(factors, spectrum, top_k=2)
    product = torch.einsum("nij,njk->nik", fisher, vectors)
    torch.testing.assert_close(
        product, vectors * spectrum.eigenvalues[:, None, :2], atol=1e-12, rtol=1e-8
    )


def test_linear_softmax_closed_form():
    torch.manual_seed(0)
    weight = torch.randn(6, 9, dtype=torch.float64)
    x = torch.randn(3, 9, dtype=torch.float64)
    p = torch.softmax(x @ weight.T, dim=1)
    closed = torch.stack([weight.T @ (torch.diag(q) - torch.outer(q, q)) @ weight for q in p])
    spectrum = dual_spectrum(gradient_rows(lambda inp: inp @ weight.T, x))
    torch.testing.assert_close(
        spectrum.eigenvalues[:, 0], torch.linalg.eigvalsh(closed)[:, -1], rtol=1e-10, atol=0
    )
    # rank <= K-1: the K-th dual eigenvalue does not exist and the d-K+1 others are zero
    assert torch.linalg.eigvalsh(closed)[:, : 9 - 5].abs().max() < 1e-12


def test_exact_float32_agrees_to_1e5(cnn_case):
    net, x, _, values, trace = cnn_case
    spectrum = dual_spectrum(gradient_rows(net.float(), x.float()))
    net.double()
    rel = (spectrum.eigenvalues[:, 0] - values[:, 0]).abs() / values[:, 0]
    assert rel.max() < 1e-5
    assert ((spectrum.trace - trace).abs() / trace).max() < 1e-5


@pytest.mark.parametrize("tol", [1e-3, 1e-8])
def test_lanczos_converges_to_tolerance(cnn_case, tol):
    net, x, _, values, _ = cnn_case
    est = lanczos(FisherOperator(net, x), top_k=2, tol=tol, max_iter=60)
    assert est.converged.all()
    assert (est.iterations <= 5).all()  # rank K-1 = 4: exhausted after at most 4 products (+1)
    rel = (est.eigenvalues[:, 0] - values[:, 0]).abs() / values[:, 0]
    assert rel.max() <= max(tol, 1e-10)


def test_lanczos_on_dense_matrix_reports_nonconvergence():
    torch.manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(200, 200, dtype=torch.float64))
    spectrum = torch.linspace(1.0, 0.99, 200, dtype=torch.float64)  # clustered: hard
    matrix = basis @ torch.diag(spectrum) @ basis.T
    est = lanczos(matrix, max_iter=3, tol=1e-12)
    assert not est.converged.item() and est.iterations.item() == 3
    assert est.residual.item() > 1e-12


def test_lanczos_eigenvectors(cnn_case):
    net, x, fisher, values, _ = cnn_case
    est = lanczos(FisherOperator(net, x), top_k=1, tol=1e-10, return_eigenvectors=True)
    v = est.eigenvectors[:, :, 0]
    torch.testing.assert_close(
        torch.einsum("nij,nj->ni", fisher, v), values[:, :1] * v, atol=1e-9, rtol=1e-6
    )


def test_power_iteration_matches_top_eigenvalue(cnn_case):
    net, x, _, values, _ = cnn_case
    est = power_iteration(FisherOperator(net, x), tol=1e-10, max_iter=500)
    converged = est.converged
    rel = (est.eigenvalues[:, 0] - values[:, 0]).abs() / values[:, 0]
    assert converged.any()
    assert rel[converged].max() < 1e-4


def test_float32_cancellation_near_certain_predictions():
    """p_top ~ 1 - 1e-7: without the argmax shift, float32 Fisher products lose everything."""
    torch.manual_seed(0)
    weight = torch.randn(5, 30, dtype=torch.float64)
    bias = torch.tensor([18.0, 0, 0, 0, 0], dtype=torch.float64)
    x = 0.1 * torch.randn(6, 30, dtype=torch.float64)
    fn64 = lambda inp: inp @ weight.T + bias  # noqa: E731
    truth = dense_spectrum(dense_fisher(fn64, x))[0][:, 0]
    w32, b32 = weight.float(), bias.float()
    est = lanczos(FisherOperator(lambda inp: inp @ w32.T + b32, x.float()), tol=1e-6)
    rel = (est.eigenvalues[:, 0] - truth).abs() / truth
    assert rel.max() < 1e-4


def test_huge_logit_gap_gives_finite_results():
    weight = torch.zeros(3, 4, dtype=torch.float32)
    weight[0, 0] = 200.0
    x = torch.ones(5, 4)
    spectrum = dual_spectrum(gradient_rows(lambda inp: inp @ weight.T, x))
    assert torch.isfinite(spectrum.eigenvalues).all() and torch.isfinite(spectrum.trace).all()


def test_hutchinson_and_hutchpp_on_dense_matrices():
    torch.manual_seed(0)
    factor = torch.randn(3, 40, 4, dtype=torch.float64)
    matrices = factor @ factor.transpose(1, 2)
    truth = matrices.diagonal(dim1=1, dim2=2).sum(1)
    est = hutchinson(DenseOperator(matrices), num_matvecs=400)
    assert ((est.trace - truth).abs() <= 4 * est.standard_error).all()
    exact = hutchpp(DenseOperator(matrices), num_matvecs=15)  # sketch of 5 >= rank 4
    torch.testing.assert_close(exact.trace, truth, rtol=1e-10, atol=0)
    assert (exact.standard_error == 0).all()


def test_class_space_hutchinson_is_unbiased(cnn_case):
    net, x, _, _, trace = cnn_case
    est = class_space_hutchinson(FisherOperator(net, x), num_probes=2000)
    z = (est.trace - trace) / est.standard_error
    assert z.abs().max() < 4
    assert ((est.trace - trace).abs() / trace).max() < 0.1


def test_blackbox_coordinates_match_exact_up_to_finite_differences(cnn_case):
    net, x, _, values, trace = cnn_case
    est = sketch_fisher(net, x, num_queries=4 * 50 + 1, step=1e-4)
    assert est.scheme == "coordinates" and est.num_queries == 201
    torch.testing.assert_close(est.eigenvalues[:, 0], values[:, 0], rtol=1e-6, atol=0)
    torch.testing.assert_close(est.trace, trace, rtol=1e-6, atol=0)


def test_blackbox_sketch_interval_covers_truth_in_most_samples():
    net = small_cnn(num_classes=4, seed=3)
    torch.manual_seed(5)
    x = torch.randn(24, 2, 5, 5, dtype=torch.float64)
    values, trace = dense_spectrum(dense_fisher(net, x))
    est = sketch_fisher(net, x, num_queries=81, step=1e-4, seed=0)
    assert est.scheme == "gaussian-sketch" and est.num_queries == 81
    low, high = est.spectral_norm_ci[:, 0], est.spectral_norm_ci[:, 1]
    covered = ((low <= values[:, 0]) & (values[:, 0] <= high)).float().mean()
    assert covered >= 0.7
    t_cov = ((est.trace_ci[:, 0] <= trace) & (trace <= est.trace_ci[:, 1])).float().mean()
    assert t_cov >= 0.7
    # the trace is unbiased: averaged over samples the relative error is small
    assert ((est.trace - trace) / trace).mean().abs() < 0.1


def test_rayleigh_max_underestimates(cnn_case):
    net, x, _, values, _ = cnn_case
    est = rayleigh_max(net, x, num_queries=41, step=1e-4)
    assert (est.eigenvalues[:, 0] <= values[:, 0] * (1 + 1e-6)).all()
    assert est.spectral_norm_ci is None


def test_blackbox_rejects_tiny_budget(cnn_case):
    net, x, *_ = cnn_case
    with pytest.raises(InputError, match="num_queries=2 is too small"):
        sketch_fisher(net, x, num_queries=2)


def test_not_a_classifier_and_nonfinite_logits():
    x = torch.randn(3, 4)
    with pytest.raises(NotAClassifierError, match=r"shape \(3,\)"):
        gradient_rows(lambda inp: inp.sum(1), x)
    with pytest.raises(InputError, match=r"non-finite logits for samples \[1\]"):
        gradient_rows(
            lambda inp: torch.stack([inp[:, 0], inp[:, 1] / inp[:, 2]], 1),
            torch.tensor([[1.0, 1, 1, 1], [1.0, 1, 0, 1], [1.0, 1, 1, 1]]),
        )


def test_space_mask_restricts_the_fisher():
    torch.manual_seed(0)
    weight = torch.randn(3, 6, dtype=torch.float64)
    x = torch.randn(2, 6, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.float64)
    fn = lambda inp: inp @ weight.T  # noqa: E731
    values, trace = dense_spectrum(dense_fisher(fn, x, mask))
    exact = dual_spectrum(gradient_rows(fn, x, mask))
    torch.testing.assert_close(exact.eigenvalues[:, 0], values[:, 0])
    torch.testing.assert_close(exact.trace, trace)
    est = lanczos(FisherOperator(fn, x, mask), tol=1e-10)
    torch.testing.assert_close(est.eigenvalues[:, 0], values[:, 0])


@pytest.mark.parametrize(
    "logit_fn",
    [
        lambda inp: inp.detach() @ torch.ones(4, 3),
        lambda inp: torch.zeros(inp.shape[0], 3, requires_grad=True) * 2,
    ],
    ids=["detached", "input-free"],
)
def test_logits_that_ignore_the_input_get_a_clear_error(logit_fn):
    x = torch.randn(2, 4)
    with pytest.raises(NotAClassifierError, match="do not depend on its input"):
        gradient_rows(logit_fn, x)
    with pytest.raises(NotAClassifierError, match="do not depend on its input"):
        FisherOperator(logit_fn, x)
