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
    # K = 10 <= num_probes + 1: the trace is exact (standard error 0) up to float32 rounding
    assert (lanczos.trace_standard_error == 0).all()
    assert ((lanczos.trace - trace).abs() <= 1e-4 * trace).all()


def test_stochastic_trace_estimators_report_honest_errors(resnet_dir, pixels):
    reference = load_classifier(resnet_dir, dtype=torch.float64)
    _, trace = dense_truth(reference, pixels.double())
    for method in ("hutchinson", "hutchpp"):
        result = fisher_spectrum(
            resnet_dir, pixels.double(), method=method, num_probes=30, dtype=torch.float64
        )
        assert ((result.trace - trace).abs() <= 4 * result.trace_standard_error + 1e-9).all()
    exact_sketch = fisher_spectrum(
        resnet_dir, pixels.double(), method="hutchpp", num_probes=33, dtype=torch.float64
    )  # sketch of 11 > rank 9: exact
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
        (
            torch.randn(3, 2, 3, 4).index_put_((torch.tensor([1]),), torch.tensor(float("nan"))),
            {},
            r"sample.*1",
        ),
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


# --- traces of the iterative methods ------------------------------------------------------------


def _mlp_case(num_classes: int, num_samples: int = 12, logit_scale: float = 1.0):
    from hf_fisher.testing.dense import dense_fisher, dense_spectrum
    from hf_fisher.testing.models import build_mlp

    net = build_mlp(input_shape=(48,), num_classes=num_classes, hidden=64, dtype=torch.float64)
    net.eval()
    net.layers[-1].weight.data *= logit_scale  # confident: a peaked spectrum, trace ~ lambda_max
    generator = torch.Generator().manual_seed(num_classes)
    x = torch.randn(num_samples, 48, generator=generator, dtype=torch.float64)
    values, trace = dense_spectrum(dense_fisher(net, x))
    return net, x, values, trace


@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize("num_classes", [2, 3, 10, 100])
def test_iterative_traces_against_dense_truth(num_classes, method):
    """K-1 <= num_probes: exact (error 0); else class-space Hutchinson with an honest error."""
    net, x, values, trace = _mlp_case(num_classes)
    result = fisher_spectrum(net, x, method=method, dtype=torch.float64, num_probes=16)
    assert (result.trace >= result.spectral_norm).all()
    if num_classes - 1 <= 16:
        assert (result.trace_standard_error == 0).all()
        torch.testing.assert_close(result.trace, trace, rtol=1e-10, atol=0)
    else:
        error = (result.trace - trace).abs()
        assert (error <= 5 * result.trace_standard_error).all()
        assert (result.trace_standard_error > 0).all()


def test_trace_is_exact_when_lanczos_spans_the_range():
    """K = 30 > num_probes + 1, but 30 products span the rank-29 range: the Ritz sum is exact."""
    net, x, values, trace = _mlp_case(30, num_samples=4)
    result = fisher_spectrum(
        net, x, method="lanczos", dtype=torch.float64, tol=0.0, max_iter=40, top_k=3
    )
    assert (result.iterations == 30).all() and result.converged.all()
    assert (result.trace_standard_error == 0).all()
    torch.testing.assert_close(result.trace, trace, rtol=1e-10, atol=0)
    torch.testing.assert_close(result.eigenvalues, values[:, :3], rtol=1e-9, atol=0)


def test_deflated_lanczos_trace_is_the_ritz_sum_plus_a_non_negative_remainder():
    """Two probes at K = 100: the deflated estimate cannot fall below lambda_max, unclamped."""
    from hf_fisher.estimators.hutchinson import deflated_class_space_hutchinson
    from hf_fisher.estimators.lanczos import lanczos
    from hf_fisher.operators import FisherOperator

    net, x, values, trace = _mlp_case(100, num_samples=30, logit_scale=10.0)
    result = fisher_spectrum(
        net, x, method="lanczos", dtype=torch.float64, num_probes=2, max_iter=6, tol=1e-12
    )
    assert (result.trace >= result.spectral_norm).all() and (result.trace_probes == 2).all()
    operator = FisherOperator(net, x)
    eigen = lanczos(operator, max_iter=6, tol=1e-12, start=None, return_basis=True)
    raw = deflated_class_space_hutchinson(operator, eigen.basis, eigen.ritz_sum, max_probes=2)
    assert (raw.trace >= eigen.ritz_sum).all() and (eigen.ritz_sum >= eigen.eigenvalues[:, 0]).all()


@pytest.mark.parametrize("method", ["power", "hutchinson", "hutchpp"])
def test_stochastic_trace_never_falls_below_the_ritz_values(method):
    """Two probes at K = 100: raw estimates are noisy, yet no record has trace < lambda_max."""
    from hf_fisher.estimators.hutchinson import class_space_hutchinson, hutchinson, hutchpp
    from hf_fisher.operators import FisherOperator

    net, x, values, trace = _mlp_case(100, num_samples=30, logit_scale=10.0)
    result = fisher_spectrum(
        net, x, method=method, dtype=torch.float64, num_probes=2, max_iter=6, tol=1e-12
    )
    assert (result.trace >= result.spectral_norm).all()
    estimator = {"hutchinson": hutchinson, "hutchpp": hutchpp}.get(method)
    operator = FisherOperator(net, x)
    if estimator is None:
        raw = class_space_hutchinson(operator, num_probes=2).trace
    else:
        raw = estimator(operator, num_matvecs=2).trace
    assert (raw < values[:, 0]).any()  # the unclamped estimate did fall below lambda_max
    assert ((result.trace - trace).abs() <= (raw - trace).abs() + 1e-12 * trace).all()


def test_exact_trace_is_never_below_the_spectral_norm():
    net, x, values, trace = _mlp_case(2, num_samples=40)
    result = fisher_spectrum(net.float(), x.float(), method="exact")
    assert (result.trace >= result.spectral_norm).all()


# --- multi-label (bernoulli) classifiers --------------------------------------------------------


def _dense_bernoulli(net, x):
    from hf_fisher.testing.dense import dense_fisher, dense_spectrum

    return dense_spectrum(dense_fisher(net, x, likelihood="bernoulli"))


@pytest.mark.parametrize("method", ["exact", "lanczos", "power", "hutchpp"])
def test_multi_label_module_gets_the_bernoulli_fisher(method):
    net, x, softmax_values, _ = _mlp_case(5, num_samples=6)
    values, trace = _dense_bernoulli(net, x)
    result = fisher_spectrum(
        net,
        x,
        method=method,
        dtype=torch.float64,
        likelihood="bernoulli",
        tol=1e-10,
        max_iter=300,
        num_probes=18,
    )
    assert result.likelihood == "bernoulli"
    torch.testing.assert_close(result.spectral_norm, values[:, 0], rtol=1e-8, atol=0)
    torch.testing.assert_close(result.trace, trace, rtol=1e-8, atol=0)
    assert (result.trace_standard_error is None) or (result.trace_standard_error == 0).all()
    logits = net(x).detach()
    torch.testing.assert_close(result.probabilities, torch.sigmoid(logits))
    assert torch.equal(result.predicted, logits.argmax(dim=1))
    assert ((softmax_values[:, 0] - values[:, 0]).abs() / values[:, 0]).min() > 0.1


def test_module_with_a_multi_label_config_is_detected():
    from transformers import PretrainedConfig

    net, x, _, _ = _mlp_case(4, num_samples=3)
    net.config = PretrainedConfig(problem_type="multi_label_classification")
    values, trace = _dense_bernoulli(net, x)
    result = fisher_spectrum(net, x, dtype=torch.float64)
    assert result.likelihood == "bernoulli" and result.method == "exact"
    torch.testing.assert_close(result.spectral_norm, values[:, 0], rtol=1e-10, atol=0)
    forced = fisher_spectrum(net, x, dtype=torch.float64, likelihood="categorical")
    assert forced.likelihood == "categorical"


def _multi_label_bert(directory):
    from transformers import AutoModelForSequenceClassification

    from hf_fisher.testing.models import build_bert

    path = build_bert(directory, num_labels=4)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    model.config.problem_type = "multi_label_classification"
    model.save_pretrained(path)
    return path


def test_multi_label_hub_checkpoint_by_path(tmp_path):
    from hf_fisher.testing.cases import dense_truth

    path = _multi_label_bert(tmp_path / "bert")
    classifier = load_classifier(path, dtype=torch.float64)
    assert classifier.likelihood == "bernoulli"
    values, trace = dense_truth(classifier, TEXTS)
    for method in ("exact", "lanczos"):
        result = fisher_spectrum(path, TEXTS, method=method, dtype=torch.float64, tol=1e-8)
        torch.testing.assert_close(result.spectral_norm, values[:, 0], rtol=1e-5, atol=0)
        torch.testing.assert_close(result.trace, trace, rtol=1e-5, atol=0)
    with pytest.raises(InputError, match="multi-label.*black_box=False"):
        fisher_spectrum(path, TEXTS, black_box=True)


@pytest.mark.parametrize(
    "kwargs",
    [{"black_box": True}, {"method": "sketch"}, {"method": "rayleigh-max"}],
    ids=["black-box", "sketch", "rayleigh-max"],
)
def test_black_box_multi_label_is_refused(mlp, kwargs):
    with pytest.raises(InputError, match="black-box.*multi-label.*white-box"):
        fisher_spectrum(mlp, torch.randn(2, 2, 3, 4), likelihood="bernoulli", **kwargs)


def test_regression_checkpoint_is_not_a_classifier(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from hf_fisher import NotAClassifierError
    from hf_fisher.testing.models import build_bert

    path = build_bert(tmp_path / "bert", num_labels=2)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    model.config.problem_type = "regression"
    model.save_pretrained(path)
    with pytest.raises(NotAClassifierError, match="regression"):
        load_classifier(path)


# --- half precision ------------------------------------------------------------------------------


class _Exploding(torch.nn.Module):
    """Any forward pass fails: refusals must come before the model is run."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3, 4, dtype=dtype))

    def forward(self, inputs):
        raise AssertionError("the model ran")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_refused_before_any_compute(dtype):
    x = torch.randn(2, 4)
    with pytest.raises(InputError, match=rf"{dtype}.*float32.*float64"):
        fisher_spectrum(_Exploding(), x, dtype=dtype)
    with pytest.raises(InputError, match=rf"parameter dtype is {dtype}.*dtype=torch.float32"):
        fisher_spectrum(_Exploding(dtype), x)


def test_half_classifier_is_refused(mlp):
    classifier = load_classifier(mlp, input_shape=(2, 3, 4))
    classifier.to(dtype=torch.float16)
    with pytest.raises(InputError, match="torch.float16.*float32"):
        fisher_spectrum(classifier, torch.randn(2, 2, 3, 4))


# --- one method per run -------------------------------------------------------------------------


def test_resolve_run_method_uses_the_configured_batch_size(mlp, monkeypatch):
    import hf_fisher.spectrum as spectrum_module
    from hf_fisher.spectrum import resolve_run_method

    classifier = load_classifier(mlp, input_shape=(2, 3, 4))
    row_bytes = (4 - 1) * 24 * 4
    monkeypatch.setattr(spectrum_module, "EXACT_MAX_ROW_BYTES", 10 * row_bytes)
    assert resolve_run_method(classifier, "auto", False, batch_size=32) == "lanczos"
    assert resolve_run_method(classifier, "auto", False, batch_size=10) == "exact"
    assert resolve_run_method(classifier, "power", False, batch_size=32) == "power"
    assert resolve_run_method(classifier, "auto", True, batch_size=32) == "sketch"
    with pytest.raises(InputError, match="batch_size=0"):
        resolve_run_method(classifier, "auto", False, batch_size=0)


def test_resolve_run_method_sizes_text_by_the_longest_input(bert_dir):
    from hf_fisher.spectrum import _max_input_dim, resolve_run_method

    classifier = load_classifier(bert_dir)
    assert _max_input_dim(classifier) == 64 * 16  # max_position_embeddings x hidden size
    assert resolve_run_method(classifier, "auto", False, batch_size=8) == "exact"


def test_single_output_checkpoint_is_refused_as_regression_before_loading(tmp_path, monkeypatch):
    """num_labels=1 without a problem type trains as regression in transformers: refused."""
    import hf_fisher.adapters.hub as hub
    from hf_fisher import NotAClassifierError
    from hf_fisher.testing.models import build_bert

    path = build_bert(tmp_path / "bert", num_labels=1)

    def never(*args, **kwargs):
        raise AssertionError("the weights loaded before the refusal")

    monkeypatch.setattr(hub, "_load_weights", never)
    with pytest.raises(NotAClassifierError, match=r"regression model .*num_labels=1.*J\^T J / s2"):
        load_classifier(path)
