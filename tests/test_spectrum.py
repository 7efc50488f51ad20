"""`fisher_spectrum` end to end on config-built, saved and reloaded models, against dense truth."""

import pytest
import torch

from hf_fisher import InputError, fisher_spectrum, load_classifier
from hf_fisher.testing.cases import dense_truth

TEXTS = ["the film was great", "awful", "a long and rather boring story about nothing at all", "ok"]


@pytest.fixture(scope="module")
def pixels():
    torch.manual_seed(0)
    return torch.rand(3, 3, 16, 16)


def test_float32_methods_against_float64_truth(image_model_dir, pixels):
    reference = load_classifier(image_model_dir, dtype=torch.float64)
    values, trace = dense_truth(reference, pixels.double())
    top = values[:, 0]
    exact = fisher_spectrum(image_model_dir, pixels, method="auto")
    assert exact.method == "exact" and exact.spectral_norm.dtype == torch.float64
    assert ((exact.spectral_norm - top).abs() / top).max() < 1e-4
    lanczos = fisher_spectrum(image_model_dir, pixels, method="lanczos", tol=1e-3)
    assert lanczos.converged.all()
    assert ((lanczos.spectral_norm - top).abs() / top).max() < 2e-3
    assert ((lanczos.trace - trace).abs() <= 5 * lanczos.trace_standard_error + 1e-6 * trace).all()


def test_stochastic_trace_estimators_report_honest_errors(resnet_dir, pixels):
    reference = load_classifier(resnet_dir, dtype=torch.float64)
    _, trace = dense_truth(reference, pixels.double())
    for method in ("hutchinson", "hutchpp"):
        result = fisher_spectrum(resnet_dir, pixels.double(), method=method, num_probes=30,
                                 dtype=torch.float64)
        assert ((result.trace - trace).abs() <= 4 * result.trace_standard_error + 1e-9).all()
    exact_sketch = fisher_spectrum(resnet_dir, pixels.double(), method="hutchpp", num_probes=33,
                                   dtype=torch.float64)  # sketch of 11 > rank 9: exact
    torch.testing.assert_close(exact_sketch.trace, trace, rtol=1e-8, atol=0)


def test_black_box_sketch_covers_truth(resnet_dir):
    torch.manual_seed(1)
    x = torch.rand(12, 3, 16, 16, dtype=torch.float64)
    reference = load_classifier(resnet_dir, dtype=torch.float64)
    values, trace = dense_truth(reference, x)
    result = fisher_spectrum(reference, x, black_box=True, num_queries=301)
    assert result.method == "sketch" and result.num_queries == 301
    low, high = result.spectral_norm_ci.T
    assert ((low <= values[:, 0]) & (values[:, 0] <= high)).float().mean() >= 0.6
    assert ((result.trace - trace) / trace).mean().abs() < 0.15
    paper = fisher_spectrum(reference, x, method="rayleigh-max", num_queries=301)
    assert (paper.spectral_norm <= values[:, 0] * (1 + 1e-6)).all()
    assert paper.spectral_norm.mean() < 0.5 * values[:, 0].mean()  # badly biased low


def test_text_padding_is_outside_the_space(bert_dir):
    classifier = load_classifier(bert_dir, dtype=torch.float64)
    batch = classifier.prepare(TEXTS)
    assert batch.space_mask is not None and (batch.space_mask == 0).any()
    values, trace = dense_truth(classifier, TEXTS)
    result = fisher_spectrum(classifier, TEXTS, method="exact")
    torch.testing.assert_close(result.spectral_norm, values[:, 0], rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(result.trace, trace, rtol=1e-5, atol=0)
    alone = fisher_spectrum(classifier, TEXTS[1:2], method="exact")
    torch.testing.assert_close(alone.spectral_norm, result.spectral_norm[1:2], rtol=1e-5, atol=0)
    lanczos = fisher_spectrum(classifier, TEXTS, method="lanczos", tol=1e-8)
    torch.testing.assert_close(lanczos.spectral_norm, values[:, 0], rtol=1e-5, atol=1e-12)


def test_plain_module_and_batch_size_invariance(mlp):
    torch.manual_seed(0)
    x = torch.randn(7, 2, 3, 4)
    whole = fisher_spectrum(mlp, x, method="lanczos", batch_size=None, seed=3)
    split = fisher_spectrum(mlp, x, method="lanczos", batch_size=3, seed=3)
    torch.testing.assert_close(whole.spectral_norm, split.spectral_norm, rtol=1e-6, atol=0)
    torch.testing.assert_close(whole.trace, split.trace, rtol=1e-6, atol=0)
    exact = fisher_spectrum(mlp, x, method="exact")
    assert ((whole.spectral_norm - exact.spectral_norm).abs() / exact.spectral_norm).max() < 1e-3


def test_power_iteration_reports_convergence(mlp):
    x = torch.randn(5, 2, 3, 4)
    result = fisher_spectrum(mlp, x, method="power", max_iter=3, tol=1e-12)
    assert result.method == "power"
    assert not result.converged.all() and (result.iterations == 3).all()


@pytest.mark.parametrize(
    ("inputs", "kwargs", "pattern"),
    [
        (torch.empty(0, 2, 3, 4), {}, "empty"),
        (torch.randn(2, 5, 7), {}, r"\(2, 5, 7\)"),
        (torch.randn(3, 2, 3, 4).index_put_((torch.tensor([1]),), torch.tensor(float("nan"))),
         {}, r"sample.*1"),
        (torch.randn(3, 2, 3, 4), {"method": "magic"}, "unknown method 'magic'"),
        (torch.randn(3, 2, 3, 4), {"method": "exact", "black_box": True}, "needs gradients"),
    ],
    ids=["empty", "shape", "nan", "method", "black-box-exact"],
)
def test_bad_input_gives_clear_errors(mlp, inputs, kwargs, pattern):
    with pytest.raises(InputError, match=pattern):
        fisher_spectrum(mlp, inputs, **kwargs)


def test_auto_resolves_one_method_for_the_whole_call(mlp, monkeypatch):
    import hf_fisher.spectrum as spectrum_module

    x = torch.randn(5, 2, 3, 4)
    row_bytes = (4 - 1) * 24 * 4  # K=4 classes, d=24, float32
    monkeypatch.setattr(spectrum_module, "EXACT_MAX_ROW_BYTES", 2 * row_bytes)
    result = fisher_spectrum(mlp, x, batch_size=3)  # chunks of 3 and 2: one method for both
    assert result.method == "lanczos" and result.converged is not None
    assert len(result) == 5 and result.converged.shape == (5,)
    small = fisher_spectrum(mlp, x, batch_size=2)
    assert small.method == "exact"


def test_auto_picks_lanczos_for_many_classes():
    wide = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 70)).double()
    result = fisher_spectrum(wide, torch.randn(2, 6, dtype=torch.float64), tol=1e-8)
    assert result.method == "lanczos" and result.converged.all()
    exact = fisher_spectrum(wide, torch.randn(2, 6, dtype=torch.float64), method="exact")
    assert exact.method == "exact"


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"num_probes": 0, "method": "lanczos"}, "num_probes=0"),
        ({"max_iter": 0, "method": "lanczos"}, "max_iter=0"),
        ({"top_k": 0}, "top_k=0"),
    ],
    ids=["batch-size", "probes", "max-iter", "top-k"],
)
def test_estimator_settings_are_validated(mlp, kwargs, pattern):
    with pytest.raises(InputError, match=pattern):
        fisher_spectrum(mlp, torch.randn(2, 2, 3, 4), **kwargs)


def test_prepared_batches_are_validated_too(mlp):
    from hf_fisher import PreparedBatch

    bad = torch.randn(3, 2, 3, 4)
    bad[2, 0, 0, 0] = float("inf")
    with pytest.raises(InputError, match=r"sample.*2"):
        fisher_spectrum(mlp, PreparedBatch(bad))
