import copy
import sys
import types
from pathlib import Path

import pytest
from PIL import Image

from hf_fisher.noise import crossing
from hf_fisher.report import plots
from hf_fisher.report.card import render_section
from hf_fisher.report.results_io import load_reportable_results
from hf_fisher.report.sections import attacks, bound, clever, frequency, kl_check, noise_curves
from hf_fisher.report.sections._common import PlotContext

FIXTURE = Path(__file__).parent / "fixtures" / "results_example.json"


@pytest.fixture(scope="module")
def results():
    return load_reportable_results(FIXTURE)


def _png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_core_plots_are_pngs(tmp_path, results):
    out = plots.make_plots(results, tmp_path / "p", registry={})
    assert list(out) == ["spectral_norm", "per_class"]
    for path in out.values():
        width, height = _png_size(path)
        assert width > 300 and height > 200


def test_core_plots_survive_degenerate_data(tmp_path, results):
    data = copy.deepcopy(results)
    for row in data["per_sample"]:
        row["correct"], row["spectral_norm"] = True, 2.0  # one value, no misclassified
    data["per_sample"][0]["spectral_norm"] = float("nan")
    out = plots.make_plots(data, tmp_path, registry={})
    assert all(path.is_file() for path in out.values())


def test_registry_is_read_only_and_names_plotter_and_card_renderer():
    assert list(plots.REPORT_REGISTRY) == [
        "attacks",
        "noise_curves",
        "kl_check",
        "clever",
        "frequency",
        "bound",
        "path_separation",
        "pixel_sensitivity",
    ]
    for section, entry in plots.REPORT_REGISTRY.items():
        assert isinstance(entry, plots.Companion)
        module = entry.plotter.partition(":")[0]
        assert entry.plotter == f"{module}:plot_{section}"
        assert entry.card == f"{module}:card_{section}"
        assert callable(plots.resolve_dotted(entry.card, "card renderer"))
        # the plot-only view is derived from the same entries
        assert plots.PLOT_REGISTRY[section] == entry.plotter
        assert plots.PLOT_TITLES[section] == entry.title
    noise_plotter = "hf_fisher.report.sections.noise_curves:plot_noise_curves"
    assert plots.PLOT_REGISTRY["noise_curves"] == noise_plotter
    with pytest.raises(TypeError):
        plots.PLOT_REGISTRY["x"] = "y"  # type: ignore[index]
    with pytest.raises(TypeError):
        plots.REPORT_REGISTRY["x"] = plots.Companion("x")  # type: ignore[index]


def test_registry_imports_lazily_and_skips_missing_sections(tmp_path, results, monkeypatch):
    calls = []

    def plot_dummy(section, path):
        calls.append(section)
        path.write_bytes(b"\x89PNG fake")
        return path

    module = types.ModuleType("hf_fisher_fake_plots")
    module.plot_dummy = plot_dummy
    monkeypatch.setitem(sys.modules, "hf_fisher_fake_plots", module)
    data = dict(results, dummy={"points": [1, 2]})
    registry = {
        "dummy": "hf_fisher_fake_plots:plot_dummy",
        # absent section: its module does not exist and must never be imported
        "absent": "module_that_does_not_exist:plot",
    }
    out = plots.make_plots(data, tmp_path, registry=registry)
    assert calls == [{"points": [1, 2]}]
    assert out["dummy"] == tmp_path / "dummy.png"
    section = render_section(data, out, card_dir=tmp_path)
    assert "![dummy](dummy.png)" in section
    assert "![Per-sample spectral norm](spectral_norm.png)" in section
    assert "absent" not in out


def test_unimportable_or_failing_plotter_warns_and_is_skipped(tmp_path, results):
    def broken(section, path):
        raise RuntimeError("boom")

    data = dict(results, attacks={"a": 1}, clever={"b": 2})
    registry = {"attacks": "module_that_does_not_exist:plot_attacks", "clever": broken}
    with pytest.warns(RuntimeWarning) as record:
        out = plots.make_plots(data, tmp_path, registry=registry)
    messages = " ".join(str(w.message) for w in record)
    assert "'attacks' plot: ModuleNotFoundError" in messages
    assert "'clever' plot: RuntimeError: boom" in messages
    assert set(out) == {"spectral_norm", "per_class"}


def test_resolve_plotter_missing_attribute():
    with pytest.raises(ImportError, match="has no plotter 'nope'"):
        plots.resolve_plotter("json:nope")
    with pytest.raises(ImportError, match="json has no card renderer 'nope'"):
        plots.resolve_dotted("json:nope", "card renderer")
    assert plots.resolve_plotter("json:dumps")({"a": 1}) == '{"a": 1}'


def test_companion_entries_draw_their_plotter_and_none_draws_nothing(tmp_path, results):
    drawn = []

    def plot_a(section, path):
        drawn.append(section)
        path.write_bytes(b"png")
        return path

    def card_only(section):
        raise AssertionError("make_plots must not call card renderers")

    data = dict(results, a={"x": 1}, b={"y": 2})
    registry = {
        "a": plots.Companion("A", plotter=plot_a, card=card_only),
        "b": plots.Companion("B", plotter=None, card=card_only),
    }
    out = plots.make_plots(data, tmp_path, registry=registry)
    assert drawn == [{"x": 1}]
    assert list(out) == ["spectral_norm", "per_class", "a"]


# titles name the model and data, axes carry units (issue 17) -------------------------------


def _noise_section(sigmas, upper, tolerance=0.25, kind="gaussian"):
    return {
        "sigmas": sigmas,
        "kind": kind,
        "accuracy": [0.9] * len(sigmas),
        "auc_accuracy": 0.9,
        "auc_brier": 0.2,
        "brier": [u / 2 for u in upper],
        "brier_upper": upper,
        "confidence": 0.95,
        "tolerance": tolerance,
        "crossing_sigma": crossing(sigmas, upper, tolerance),  # as hf_fisher.noise computes it
        "draws": 4,
        "num_samples": 8,
        "seed": 0,
        "assumptions": "independent draws",
    }


SECTIONS = {
    "attacks": (
        attacks.attacks_figure,
        {
            "norm": "l2",
            "epsilons": [0.1, 0.2],
            "clean_accuracy": 0.9,
            "robust_accuracy": {"pgd": [0.5, 0.2], "fgsm": [0.6, 0.3]},
            "per_sample": {
                "spectral_norm": [1.0, 2.0, 3.0],
                "minimal_epsilon": [0.3, 0.2, None],
                "correct": [True, True, False],
            },
            "correlations": {"spectral_norm": {"spearman": -1.0}},
            "num_not_flipped": 0,
        },
    ),
    "noise_curves": (noise_curves.noise_curves_figure, _noise_section([0.0, 0.1], [0.1, 0.4])),
    "kl_check": (
        kl_check.kl_check_figure,
        {
            "radii": [0.01, 0.1],
            "median_relative_error": [0.01, 0.2],
            "p90_relative_error": [0.02, None],
            "tolerance": 0.1,
            "valid_radius": 0.01,
        },
    ),
    "clever": (
        clever.clever_figure,
        {
            "norm": "l2",
            "radius": 2.0,
            "per_sample": {"untargeted": [0.5, 0.2], "top2": None, "spectral_norm": [1.0, 4.0]},
            "cost": {
                "clever_forward_equivalents_per_sample": 1280,
                "spectral_norm_forward_equivalents_per_sample": 10,
            },
        },
    ),
    "frequency": (
        frequency.frequency_figure,
        {
            "num_bands": 3,
            "iaside": {"score": 0.4, "distribution": [0.5, 0.3, 0.2]},
            "fisher": {"energy_share": [0.6, 0.3, 0.1]},
        },
    ),
    "bound": (
        bound.bound_figure,
        {"spectral_norm": [1.0, 2.0, None], "lambda_bound": 50.0, "ratio_to_max": 25.0},
    ),
}


def _texts(figure):
    """Titles (figure and axes), axis labels and legend entries of a figure."""
    titles = [figure.get_suptitle(), *(axis.get_title() for axis in figure.axes)]
    labels = [label for axis in figure.axes for label in (axis.get_xlabel(), axis.get_ylabel())]
    legends = [
        text.get_text()
        for axis in figure.axes
        if axis.get_legend() is not None
        for text in axis.get_legend().get_texts()
    ]
    return "\n".join(titles), labels, legends


def test_every_plot_title_names_model_and_dataset(results):
    context = PlotContext.of(results)
    assert (context.model, context.dataset) == (
        "hf-fisher/digits-resnet",
        "sklearn-digits (test)",
    )
    figures = {name: build(section, context) for name, (build, section) in SECTIONS.items()}
    figures["spectral_norm"] = plots.spectral_norm_figure(results)
    figures["per_class"] = plots.per_class_figure(results)
    for name, figure in figures.items():
        title, _, _ = _texts(figure)
        assert "hf-fisher/digits-resnet on sklearn-digits (test)" in title, (name, title)


@pytest.mark.parametrize(
    ("space", "distance", "sigma"),
    [
        ("pixels", "pixel units [0,1]", "σ (pixel std, [0,1] scale)"),
        ("embeddings", "token-embedding units", "σ (coordinate std, token-embedding units)"),
        ("normalized", "normalised model-input units", "σ (coordinate std, normalised"),
    ],
)
def test_radius_and_noise_axes_carry_units(space, distance, sigma):
    context = PlotContext("m", "d", space)
    labels = {
        name: _texts(build(section, context))[1] for name, (build, section) in SECTIONS.items()
    }
    assert labels["attacks"][0] == f"ε (L2, {distance})"
    assert labels["attacks"][3] == f"minimal PGD ε (L2, {distance})"
    assert labels["kl_check"][0] == f"radius r (L2, {distance})"
    assert labels["clever"][1] == f"CLEVER score (L2, {distance}; R = 2)"
    assert all(label.startswith(sigma) for label in labels["noise_curves"][::2])
    linf = dict(SECTIONS["attacks"][1], norm="linf")
    assert _texts(attacks.attacks_figure(linf, context))[1][0] == f"ε (L∞, {distance})"
    uniform = _noise_section([0.0, 0.1], [0.1, 0.2], kind="uniform")
    assert "half-width" in _texts(noise_curves.noise_curves_figure(uniform, context))[1][0]


def test_make_plots_hands_the_context_to_plotters_that_take_it(tmp_path, results):
    seen = []

    def with_context(section, path, context=None):
        seen.append(context)
        path.write_bytes(b"png")
        return path

    data = dict(results, a={"x": 1})
    plots.make_plots(data, tmp_path, registry={"a": with_context})
    assert seen == [PlotContext("hf-fisher/digits-resnet", "sklearn-digits (test)", "pixels")]


@pytest.mark.parametrize(
    ("sigmas", "upper", "says", "vertical_line"),
    [
        ([0.0, 0.1, 0.2], [0.3, 0.5, 0.9], "clean error already above tolerance", False),
        ([0.05, 0.1], [0.3, 0.5], "already above tolerance at the smallest σ=0.05", False),
        ([0.0, 0.1, 0.2], [0.1, 0.2, 0.3], "bound crosses tolerance at σ=0.15", True),
    ],
)
def test_noise_plot_and_card_say_when_the_clean_error_is_already_too_high(
    sigmas, upper, says, vertical_line
):
    section = _noise_section(sigmas, upper)
    figure = noise_curves.noise_curves_figure(section, PlotContext("m", "d", "pixels"))
    _, _, legends = _texts(figure)
    assert any(text.startswith(says) for text in legends), legends
    assert sum("cross" in text for text in legends) == int(vertical_line)
    brier_axis = figure.axes[1]
    red_vertical = [
        line
        for line in brier_axis.get_lines()
        if line.get_linestyle() == ":" and len(set(line.get_xdata())) == 1
    ]
    assert len(red_vertical) == int(vertical_line)
    card = noise_curves.card_noise_curves(section)
    if sigmas[0] == 0 and not vertical_line:
        assert "the clean error is already above the tolerance 0.25: the bound is 0.3" in card
        assert "crosses" not in card
    elif vertical_line:
        assert "the bound crosses the tolerance 0.25 at σ = 0.15" in card


def test_clever_title_says_what_is_plotted():
    build, section = SECTIONS["clever"]
    title, labels, _ = _texts(build(section, PlotContext("org/net", "digits (test)", "pixels")))
    assert title.splitlines()[1:] == [
        "CLEVER untargeted (all classes) score vs λ_max, per sample",
        "org/net on digits (test)",
    ]
    assert labels[0].startswith("λ_max(F)")
    top2 = dict(section, per_sample=dict(section["per_sample"], untargeted=None, top2=[0.4, 0.1]))
    assert "CLEVER top-2 class score vs λ_max" in _texts(build(top2, None))[0]
