import copy
import sys
import types
from pathlib import Path

import pytest
from PIL import Image

from hf_fisher.report import plots
from hf_fisher.report.card import render_section
from hf_fisher.report.results_io import load_reportable_results

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
