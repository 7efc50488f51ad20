"""The data-free architecture bound on lambda_max, against dense float64 ground truth."""

import json
import math
import struct

import pytest
import scipy.optimize
import scipy.stats
import torch
from torch import nn

from hf_fisher import companions as companions_module
from hf_fisher.bounds import (
    BoundReport,
    bound_report,
    composed_bound,
    lipschitz_bound,
    operator_norm,
)
from hf_fisher.companions import CompanionOptions, run_companions
from hf_fisher.errors import InputError
from hf_fisher.estimators.exact import dual_spectrum, gradient_rows
from hf_fisher.headlines import bound_headline
from hf_fisher.report import card, plots
from hf_fisher.report.badge import format_sig
from hf_fisher.report.sections.bound import card_bound, plot_bound
from hf_fisher.results import validate_results

torch.set_num_threads(1)


def seeded(builder, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder().double().eval()


def mlp():
    return nn.Sequential(
        nn.Linear(6, 16),
        nn.Tanh(),
        nn.Sequential(nn.Linear(16, 12), nn.ReLU()),
        nn.Dropout(0.5),
        nn.Linear(12, 5),
    )


def cnn():
    batch_norm = nn.BatchNorm2d(4)
    batch_norm.running_mean.uniform_(-1, 1)
    batch_norm.running_var.uniform_(0.2, 3.0)
    batch_norm.weight.data.uniform_(-2, 2)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.LeakyReLU(0.1),
        nn.AvgPool2d(2),
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        batch_norm,
        nn.GELU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4, 7),
        nn.ELU(),
        nn.Linear(7, 4),
    )


CASES = {"mlp": (mlp, (6,)), "cnn": (cnn, (2, 8, 8))}


def dense_norm(layer, shape):
    """Spectral norm of the layer's linear part from its dense jacrev Jacobian."""
    zero = torch.zeros((1, *shape), dtype=torch.float64)
    jacobian = torch.func.jacrev(layer)(zero).reshape(layer(zero).numel(), zero.numel())
    return float(torch.linalg.matrix_norm(jacobian.detach(), 2))


def exact_lambda_max(logit_fn, inputs):
    return dual_spectrum(gradient_rows(logit_fn, inputs)).eigenvalues[:, 0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_linear_layer_norms_match_dense_spectral_norms(case):
    builder, shape = CASES[case]
    model = seeded(builder)
    bound = lipschitz_bound(model, shape, num_iterations=100)
    layers = [layer for layer in model.modules() if not isinstance(layer, nn.Sequential)]
    assert [entry.type for entry in bound.layer_norms] == [type(m).__name__ for m in layers]
    checked = 0
    x = torch.zeros((1, *shape), dtype=torch.float64)
    for layer, entry in zip(layers, bound.layer_norms, strict=True):
        if entry.method != "constant":
            assert entry.norm == pytest.approx(dense_norm(layer, x.shape[1:]), rel=1e-9)
            checked += 1
        if entry.method == "power iteration":
            assert entry.relative_change < 1e-9
        x = layer(x)
    assert checked == (3 if case == "mlp" else 6)
    assert bound.lambda_bound == pytest.approx(
        0.5 * math.prod(entry.norm for entry in bound.layer_norms) ** 2, rel=1e-12
    )


def test_layer_names_follow_nesting():
    bound = lipschitz_bound(seeded(mlp), (6,))
    assert [entry.name for entry in bound.layer_norms] == ["0", "1", "2.0", "2.1", "3", "4"]
    single = lipschitz_bound(nn.Linear(3, 2).double(), (3,))
    assert [entry.name for entry in single.layer_norms] == ["Linear"]


def test_operator_norm_converges_from_below_on_a_known_spectrum():
    generator = torch.Generator().manual_seed(0)
    left, _ = torch.linalg.qr(torch.randn(30, 30, generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(20, 20, generator=generator, dtype=torch.float64))
    values = torch.tensor([5.0, 4.9, *torch.linspace(1.0, 0.1, 18)], dtype=torch.float64)
    matrix = left[:, :20] @ torch.diag(values) @ right.T
    apply = lambda block: block @ matrix.T  # noqa: E731
    norm, change = operator_norm(apply, (20,), dtype=torch.float64, num_iterations=60)
    assert norm == pytest.approx(5.0, rel=1e-12) and change < 1e-12
    for steps in (1, 2, 3):  # a single vector: each estimate is a lower bound
        early, _ = operator_norm(
            apply, (20,), dtype=torch.float64, num_iterations=steps, num_vectors=1
        )
        assert early <= 5.0 * (1 + 1e-12)
    assert operator_norm(lambda block: 0 * block, (4,), dtype=torch.float64) == (0.0, 0.0)
    with pytest.raises(InputError, match="num_iterations=0; pass at least 1"):
        operator_norm(apply, (20,), num_iterations=0)
    with pytest.raises(InputError, match="num_vectors=0; pass a block"):
        operator_norm(apply, (20,), num_vectors=0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bound_holds_for_random_inputs(case):
    builder, shape = CASES[case]
    model = seeded(builder)
    bound = lipschitz_bound(model, shape)
    generator = torch.Generator().manual_seed(1)
    for scale in (0.3, 3.0, 30.0):
        inputs = scale * torch.randn((48, *shape), generator=generator, dtype=torch.float64)
        lambdas = exact_lambda_max(model, inputs)
        assert lambdas.max() <= bound.lambda_bound
        jacobians = torch.func.vmap(torch.func.jacrev(lambda x: model(x[None])[0]))(inputs)
        norms = torch.linalg.matrix_norm(jacobians.reshape(48, model[-1].out_features, -1), 2)
        assert norms.max() <= bound.jacobian_bound
        assert (lambdas <= 0.5 * norms**2 * (1 + 1e-12)).all()  # ||diag(p) - pp^T|| <= 1/2


def test_input_scale_folds_a_normalisation():
    model = seeded(cnn)
    std = torch.tensor([0.25, 0.5], dtype=torch.float64)
    mean = torch.tensor([0.3, 0.6], dtype=torch.float64)
    pixel_scale = 1.5

    def pixels_to_logits(x):
        return model((x * pixel_scale - mean[:, None, None]) / std[:, None, None])

    plain = lipschitz_bound(model, (2, 8, 8))
    scaled = lipschitz_bound(model, (2, 8, 8), input_scale=pixel_scale / std)
    assert scaled.input_scale == pytest.approx(6.0)  # the largest channel slope
    assert scaled.lambda_bound == pytest.approx(36.0 * plain.lambda_bound, rel=1e-12)
    generator = torch.Generator().manual_seed(2)
    pixels = torch.rand((32, 2, 8, 8), generator=generator, dtype=torch.float64)
    measured = exact_lambda_max(pixels_to_logits, pixels)
    assert measured.max() <= scaled.lambda_bound
    # a case where the scale is needed: rows w and -w along the coordinate with the largest
    # slope; at the boundary lambda_max = (3 ||w||)^2 = the scaled bound, 9x the plain one
    pair = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        pair.weight.copy_(torch.tensor([[0.0, 1.0], [0.0, -1.0]]))
    slopes = torch.tensor([0.5, 3.0], dtype=torch.float64)
    at_boundary = exact_lambda_max(lambda x: pair(x * slopes), torch.zeros(1, 2).double())
    assert float(at_boundary[0]) == pytest.approx(
        lipschitz_bound(pair, (2,), input_scale=slopes).lambda_bound, rel=1e-12
    )
    assert float(at_boundary[0]) == pytest.approx(9 * lipschitz_bound(pair, (2,)).lambda_bound)


def test_one_layer_softmax_model_is_tight_up_to_the_half():
    weight = torch.randn(5, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    model = nn.Linear(7, 5).double()
    with torch.no_grad():
        model.weight.copy_(weight)
        model.bias.zero_()
    bound = lipschitz_bound(model, (7,))
    assert bound.lambda_bound == pytest.approx(
        0.5 * float(torch.linalg.matrix_norm(weight, 2)) ** 2, rel=1e-12
    )
    generator = torch.Generator().manual_seed(4)
    inputs = torch.randn(2000, 7, generator=generator, dtype=torch.float64)
    inputs *= torch.logspace(-2, 1, 2000, dtype=torch.float64)[:, None]
    ratio = bound.lambda_bound / float(exact_lambda_max(model, inputs).max())
    assert 1.0 <= ratio < 10.0
    # rows w and -w: at x = 0, p = (1/2, 1/2) and lambda_max = ||w||^2 = 1/2 ||W||^2 exactly
    pair = nn.Linear(7, 2, bias=False).double()
    with torch.no_grad():
        pair.weight.copy_(torch.stack([weight[0], -weight[0]]))
    tight = lipschitz_bound(pair, (7,))
    at_boundary = exact_lambda_max(pair, torch.zeros(1, 7, dtype=torch.float64))
    assert float(at_boundary[0]) == pytest.approx(tight.lambda_bound, rel=1e-12)


def _dgelu(x):
    return scipy.stats.norm.cdf(x) + x * scipy.stats.norm.pdf(x)


def _dsilu(x):
    sigmoid = 1 / (1 + math.exp(-x))
    return sigmoid * (1 + x * (1 - sigmoid))


@pytest.mark.parametrize(
    ("activation", "expected"),
    [
        (nn.ReLU(), 1.0),
        (nn.ReLU6(), 1.0),
        (nn.Hardtanh(), 1.0),
        (nn.Tanh(), 1.0),
        (nn.Softplus(), 1.0),
        (nn.LeakyReLU(0.01), 1.0),
        (nn.LeakyReLU(3.0), 3.0),
        (nn.ELU(0.5), 1.0),
        (nn.ELU(2.0), 2.0),
        (nn.Sigmoid(), 0.25),
        (nn.GELU(), -scipy.optimize.minimize_scalar(lambda x: -_dgelu(x), (0, 3)).fun),
        (nn.SiLU(), -scipy.optimize.minimize_scalar(lambda x: -_dsilu(x), (0, 5)).fun),
    ],
    ids=[
        "relu",
        "relu6",
        "hardtanh",
        "tanh",
        "softplus",
        "leaky-0.01",
        "leaky-3",
        "elu-0.5",
        "elu-2",
        "sigmoid",
        "gelu",
        "silu",
    ],
)
def test_activation_constants_are_their_largest_slopes(activation, expected):
    (entry,) = lipschitz_bound(nn.Sequential(activation), (3,)).layer_norms
    assert entry.norm == pytest.approx(expected, rel=1e-8)
    grid = torch.linspace(-12, 12, 240_001, dtype=torch.float64).requires_grad_(True)
    (slope,) = torch.autograd.grad(activation(grid).sum(), grid)
    assert slope.abs().max() <= entry.norm * (1 + 1e-9)  # an upper bound on every slope
    assert slope.abs().max() >= entry.norm * (1 - 1e-3)  # and a tight one


def test_non_overlapping_max_pool_counts_one_and_overlapping_raises():
    pool = lipschitz_bound(nn.Sequential(nn.MaxPool2d(2), nn.Flatten()), (1, 4, 4))
    assert [entry.norm for entry in pool.layer_norms] == [1.0, 1.0]
    with pytest.raises(
        InputError,
        match=r"layer '0' \(MaxPool2d\) is not supported with "
        r"kernel_size=3, stride=2.*overlapping windows",
    ):
        lipschitz_bound(nn.Sequential(nn.MaxPool2d(3, stride=2)), (1, 8, 8))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 4)

    def forward(self, x):
        return x + self.inner(x)


class ReorderedSequential(nn.Sequential):
    def forward(self, x):
        return self[1](self[0](x))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)), r"layer '1' \(LayerNorm\) is not"),
        (nn.Sequential(nn.Sequential(nn.ReLU(), Residual())), r"layer '0.1' \(Residual\) is"),
        (nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=1)), r"layer '1' \(Softmax\)"),
        (
            ReorderedSequential(nn.ReLU(), nn.Linear(4, 4)),
            r"ReorderedSequential is not a plain feed-forward stack",
        ),
        (
            nn.Sequential(nn.BatchNorm1d(4, track_running_stats=False)),
            r"\(BatchNorm1d\) is not supported without running statistics",
        ),
    ],
    ids=["layer-norm", "residual", "softmax", "custom-forward", "batch-stats"],
)
def test_unsupported_layers_are_named(model, message):
    with pytest.raises(InputError, match=message + r".*plain feed-forward stacks.*drop --bound"):
        lipschitz_bound(model, (4,))


def test_bad_arguments_are_named():
    with pytest.raises(InputError, match=r"input_shape=\(0, 3\); pass the per-sample shape"):
        lipschitz_bound(seeded(mlp), (0, 3))
    with pytest.raises(
        InputError,
        match=r"layer '0' \(Linear\) cannot take per-sample inputs "
        r"of shape \(5,\)",
    ):
        lipschitz_bound(seeded(mlp), (5,))
    with pytest.raises(InputError, match="input_scale=0.0; pass a finite scale > 0"):
        lipschitz_bound(seeded(mlp), (6,), input_scale=0.0)
    with pytest.raises(InputError, match=r"spectral_norm of shape \(2, 3\); pass the \(N,\)"):
        bound_report(seeded(mlp), (6,), torch.ones(2, 3))


def test_model_mode_and_parameters_are_left_alone():
    model = seeded(cnn).train()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    train_mode = lipschitz_bound(model, (2, 8, 8))
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert train_mode.lambda_bound == lipschitz_bound(model.eval(), (2, 8, 8)).lambda_bound


@pytest.fixture(scope="module")
def section():
    model = seeded(cnn)
    inputs = torch.randn(
        20, 2, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64
    )
    measured = exact_lambda_max(model, inputs)
    return bound_report(model, (2, 8, 8), measured).to_json(), measured


def test_report_ratios_and_json_round_trip(section):
    data, measured = section
    assert json.loads(json.dumps(data, allow_nan=False)) == data
    assert data["measured_max"] == pytest.approx(float(measured.max()))
    assert data["measured_median"] == pytest.approx(float(measured.median()))
    assert data["ratio_to_max"] == pytest.approx(data["lambda_bound"] / float(measured.max()))
    assert data["ratio_to_median"] > data["ratio_to_max"] > 1.0
    assert data["num_above_bound"] == 0 and data["num_samples"] == 20
    assert data["spectral_norm"] == pytest.approx(measured.tolist())
    assert [layer["method"] for layer in data["layers"]].count("power iteration") == 3


def test_plot_and_card(section, tmp_path):
    data, _ = section
    path = plot_bound(data, tmp_path / "bound.png")
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert width > 300 and height > 200
    text = card_bound(data)
    assert f"λ_max ≤ **{format_sig(data['lambda_bound'])}**" in text
    assert f"{format_sig(data['ratio_to_max'])}× the max" in text
    assert text.count("| Conv2d |") == 2 and "power iteration (last change" in text
    assert "Warning" not in text
    broken = dict(data, num_above_bound=2)
    assert "**Warning:** 2 measured value(s) exceed the bound" in card_bound(broken)
    empty = dict(
        data,
        spectral_norm=[None],
        measured_max=None,
        measured_median=None,
        ratio_to_max=None,
        ratio_to_median=None,
    )
    assert plot_bound(empty, tmp_path / "empty.png").is_file()
    assert "max –" in card_bound(empty)


def test_run_companions_on_a_plain_module():
    from hf_fisher.adapters import load_classifier

    model = seeded(mlp)
    classifier = load_classifier(model, input_shape=(6,))
    inputs = torch.randn(6, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    batch = classifier.prepare(inputs)
    measured = exact_lambda_max(model, inputs)
    sections = run_companions(
        classifier, batch, torch.zeros(6, dtype=torch.long), measured, CompanionOptions(bound=True)
    )
    assert list(sections) == ["bound"]
    bound = sections["bound"]
    assert bound["lambda_bound"] == pytest.approx(lipschitz_bound(model, (6,)).lambda_bound)
    assert bound["input_scale"] == 1.0 and bound["measured_max"] <= bound["lambda_bound"]


def test_evaluate_robustness_writes_a_valid_bound_section(tmp_path):
    from hf_fisher import evaluate_robustness

    model = seeded(mlp).float()
    inputs = torch.randn(8, 6, generator=torch.Generator().manual_seed(7))
    report = evaluate_robustness(
        model,
        inputs,
        labels=[0, 1, 2, 3, 4, 0, 1, 2],
        progress=False,
        companions=CompanionOptions(bound=True, num_samples=5),
    )
    results = validate_results(report.results)
    section = results["bound"]
    first = results["per_sample"][:5]
    assert section["sample_indices"] == [row["index"] for row in first]
    assert section["spectral_norm"] == pytest.approx([row["spectral_norm"] for row in first])
    assert section["num_above_bound"] == 0
    assert results["settings"]["companions"]["bound"] is True
    paths = plots.make_plots(results, tmp_path, registry={"bound": plots.REPORT_REGISTRY["bound"]})
    assert paths["bound"].is_file()
    text = card.render_section(results, paths, card_dir=tmp_path)
    assert "### Architecture bound" in text and "](bound.png)" in text


def test_hugging_face_models_get_the_composed_bound(default_model_dir):
    from hf_fisher.adapters import load_classifier

    classifier = load_classifier(default_model_dir)
    batch = classifier.prepare(torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    spectral = dual_spectrum(gradient_rows(classifier, batch.inputs)).eigenvalues[:, 0]
    sections = run_companions(
        classifier, batch, torch.tensor([0, 1]), spectral, CompanionOptions(bound=True)
    )
    section = sections["bound"]
    assert section["kind"] == "bound"
    assert {layer["method"] for layer in section["layers"]} >= {"residual"}
    assert section["num_above_bound"] == 0
    slopes = companions_module._input_scale(classifier)
    expected = classifier.pixel_scale / torch.tensor(classifier._std_values)
    assert slopes.tolist() == pytest.approx(expected.tolist())


def test_text_models_get_a_clear_error(bert_dir):
    from hf_fisher.adapters import load_classifier

    classifier = load_classifier(bert_dir)
    batch = classifier.prepare(["good", "bad"])
    with pytest.raises(InputError, match="--bound is not available for text models"):
        run_companions(
            classifier, batch, torch.tensor([0, 1]), torch.ones(2), CompanionOptions(bound=True)
        )


def test_cli_flag_reaches_the_options_and_hf_models_get_one_clear_line(capsys, tmp_path):
    from hf_fisher.cli import _companions, build_parser, main

    args = build_parser().parse_args(["evaluate", "--bound"])
    assert _companions(args).bound is True and _companions(args).requested
    assert _companions(build_parser().parse_args(["evaluate"])).bound is False
    code = main(
        [
            "evaluate",
            "--no-progress",
            "--num-samples",
            "2",
            "--bound",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    error = capsys.readouterr().err
    assert code == 0, error  # the bundled ResNet gets the composed bound


def dense_logit_jacobian_norms(classifier, inputs):
    """Exact ||d logits / d model input||_2 per sample, in float64 (dense Jacobian, SVD)."""
    model = classifier.model
    norms = []
    for x in inputs:
        jacobian = torch.autograd.functional.jacobian(
            lambda v: model(pixel_values=v[None]).logits[0], x
        )
        norms.append(float(torch.linalg.matrix_norm(jacobian.reshape(len(jacobian), -1), 2)))
    return torch.tensor(norms, dtype=torch.float64)


@pytest.mark.parametrize("name", ["resnet_dir", "convnext_dir"])
def test_composed_bound_exceeds_local_jacobian_norms_of_residual_networks(name, request):
    from hf_fisher.adapters import load_classifier

    classifier = load_classifier(request.getfixturevalue(name), dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(4, *classifier.input_shape, generator=generator, dtype=torch.float64)
    model = classifier.model
    bound = composed_bound(model, lambda v: model(pixel_values=v), inputs)
    assert bound.kind == "bound" and all(e.kind == "bound" for e in bound.layer_norms)
    assert any(e.method == "residual" for e in bound.layer_norms)
    measured = dense_logit_jacobian_norms(classifier, inputs)
    assert (measured > 0).all() and (bound.jacobian_bound >= measured).all()
    assert bound.lambda_bound == pytest.approx(0.5 * bound.jacobian_bound**2, rel=1e-12)


def test_attention_blocks_enter_as_local_estimates_matching_the_dense_jacobian(vit_dir):
    from hf_fisher.adapters import load_classifier

    classifier = load_classifier(vit_dir, dtype=torch.float64)
    model = classifier.model
    inputs = torch.randn(3, *classifier.input_shape, generator=torch.Generator().manual_seed(1),
                         dtype=torch.float64)
    bound = composed_bound(model, lambda v: model(pixel_values=v), inputs, num_iterations=200)
    assert bound.kind == "estimate"
    local = [e for e in bound.layer_norms if e.kind == "estimate"]
    assert [e.type for e in local] == ["ViTLayer"] and local[0].method == "local power iteration"
    block = model.vit.layers[0]
    hidden = model.vit.embeddings(inputs)

    def apply(h):
        out = block(h[None])
        return (out[0] if isinstance(out, tuple) else out)[0]

    dense = max(
        float(torch.linalg.matrix_norm(
            torch.autograd.functional.jacobian(apply, h).reshape(h.numel(), h.numel()), 2))
        for h in hidden
    )
    # HF attention runs its softmax in float32: agreement to float32 accuracy
    assert local[0].norm == pytest.approx(dense, rel=1e-4)
    section = json.loads(json.dumps(bound_report_of(bound)))
    assert section["kind"] == "estimate" and "estimate" in {e["kind"] for e in section["layers"]}
    assert "are estimates, not bounds" in card_bound(section)
    assert bound_headline(section).lines[0].startswith("estimate (attention blocks local)")
    assert BoundReport.from_json(section).bound.kind == "estimate"


def bound_report_of(bound):
    return BoundReport(bound, torch.ones(2, dtype=torch.float64)).to_json()
