import argparse
import copy
import json
import logging
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hf_fisher.errors import InputError, ResultsError
from hf_fisher.report import badge, card, cli, plots, push
from hf_fisher.report.results_io import (
    load_reportable_results,
    validate_reportable_results,
)

FIXTURE = Path(__file__).parent / "fixtures" / "results_example.json"
REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "model_cards" / "digits-resnet-results" / "results.json"
COMPANIONS = ("attacks", "noise_curves", "kl_check", "clever", "frequency")

EXISTING = """---
license: apache-2.0
tags:
- vision
model-index:
- name: my-model
  results:
  - task:
      type: image-classification
    dataset:
      name: Digits (sklearn)
      type: sklearn-digits
      split: test
    metrics:
    - type: accuracy
      value: 0.97
    source:
      url: https://example.org/paper
      name: Paper
---

# my-model

Intro paragraph that must survive.

## Training

Details, with a trailing section.
"""


@pytest.fixture(scope="module")
def results():
    return load_reportable_results(FIXTURE)


@pytest.fixture(scope="module")
def bundled():
    """The bundled model's real results: 360 test digits and all five companion sections."""
    return load_reportable_results(BUNDLED)


def _ours(card_obj):
    return [r for r in card_obj.data.eval_results or [] if r.metric_type == "fisher_robustness"]


def _write(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# results_io -------------------------------------------------------------------------------


def test_load_results_wrong_schema_version(tmp_path, results):
    bad = dict(results, schema_version=2)
    with pytest.raises(ResultsError, match=r"schema_version 2 .*reads schema_version 1.*evaluate"):
        load_reportable_results(_write(tmp_path / "r.json", bad))


def test_load_results_names_missing_fields(tmp_path, results):
    bad = copy.deepcopy(results)
    del bad["settings"]["kl_tau"]
    del bad["summary"]["metrics"]["kl_radius"]["median_ci_low"]
    del bad["per_sample"][3]["spectral_norm"]
    with pytest.raises(ResultsError, match="missing required field") as info:
        load_reportable_results(_write(tmp_path / "r.json", bad))
    message = str(info.value)
    assert "settings.kl_tau" in message
    assert "summary.metrics.kl_radius.median_ci_low" in message
    assert "per_sample[3].spectral_norm" in message


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
    ],
)
def test_load_results_rejects_non_objects(tmp_path, content, pattern):
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(ResultsError, match=pattern):
        load_reportable_results(path)


def test_load_results_missing_file_and_bad_task(tmp_path, results):
    with pytest.raises(ResultsError, match="does not exist"):
        load_reportable_results(tmp_path / "nope.json")
    bad = copy.deepcopy(results)
    bad["model"]["task"] = "token-classification"
    with pytest.raises(ResultsError, match="'token-classification' is not one of"):
        validate_reportable_results(bad)
    bad["model"]["task"] = "image-classification"
    bad["per_sample"] = []
    with pytest.raises(ResultsError, match="per_sample is empty"):
        validate_reportable_results(bad)


# badge --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "color"),
    [
        (0.5, "brightgreen"),
        (0.3, "green"),
        (0.1, "yellowgreen"),
        (0.0778, "yellow"),
        (0.01, "orange"),
        (0.00999, "red"),
        (float("nan"), "red"),
    ],
)
def test_badge_color_thresholds(value, color):
    assert badge.badge_color(value) == color


def test_badge_shows_headline_with_three_significant_digits(results):
    median = results["summary"]["metrics"]["kl_radius"]["median"]
    url = badge.badge_url(results)
    assert url.startswith("https://img.shields.io/badge/fisher%20robustness-")
    assert f"KL%20radius%20{median:.3g}%20" in url
    assert url.endswith("-" + badge.badge_color(median))
    # a '-' in the message would split the badge: it must be doubled
    odd = copy.deepcopy(results)
    odd["settings"]["input_space"] = "raw-bytes"
    assert "raw--bytes" in badge.badge_url(odd)


# card ---------------------------------------------------------------------------------------


def test_merge_keeps_outside_content_and_is_idempotent(results):
    first = str(card.merge_card(results, EXISTING))
    second = str(card.merge_card(results, first))
    assert first == second
    assert first.count(card.START_MARKER) == 1 and first.count(card.END_MARKER) == 1

    original = ModelCard(EXISTING)
    merged = ModelCard(first)
    assert merged.text.startswith(original.text)  # body kept byte for byte, section appended
    assert merged.data.license == "apache-2.0" and merged.data.tags == ["vision"]
    accuracy = [r for r in merged.data.eval_results if r.metric_type == "accuracy"]
    assert len(accuracy) == 1 and accuracy[0].metric_value == 0.97
    assert accuracy[0].source_url == "https://example.org/paper"
    assert len(_ours(merged)) == 3


def test_rerun_with_new_results_replaces_section_only(results):
    merged = str(card.merge_card(results, EXISTING))
    edited = merged.replace("Details, with a trailing section.", "Edited by hand.")
    newer = copy.deepcopy(results)
    newer["summary"]["metrics"]["kl_radius"]["median"] = 0.6
    again = card.merge_card(newer, edited)
    assert "Edited by hand." in again.text
    assert "KL%20radius%200.6%20" in again.text and "brightgreen" in again.text
    assert "0.0778 [" not in again.text.split(card.START_MARKER)[1].split("|")[0]
    values = {r.metric_config: r.metric_value for r in _ours(again)}
    assert values["kl_radius"] == 0.6
    assert len(_ours(again)) == 3


def test_round_trip_through_model_card_load(tmp_path, results):
    path = tmp_path / "README.md"
    path.write_text(EXISTING)
    card.write_card(results, out=path, card=path)
    loaded = ModelCard.load(path)
    ours = {r.metric_config: r for r in _ours(loaded)}
    assert set(ours) == {"kl_radius", "spectral_norm", "trace"}
    expected = results["summary"]["metrics"]
    for key, result in ours.items():
        assert type(result.metric_value) is float
        assert result.metric_value == expected[key]["median"]
        assert result.metric_args["ci95_low"] == expected[key]["median_ci_low"]
        assert result.task_type == "image-classification"
        assert result.dataset_split == "test"
        # joined the existing group, so took its shared fields and will not change on reload
        assert result.dataset_name == "Digits (sklearn)"
        assert result.source_url == "https://example.org/paper"
    assert ModelCard.load(path).content == loaded.content
    assert loaded.data.model_name == "my-model"


def test_new_card_round_trips_and_numpy_values_are_cast(results):
    data = copy.deepcopy(results)
    for stats in data["summary"]["metrics"].values():
        for key in stats:
            stats[key] = np.float32(stats[key])
    text = str(card.merge_card(data, None))
    assert "!!python" not in text and "numpy" not in text
    loaded = ModelCard(text)
    assert loaded.data.model_name == "hf-fisher/digits-resnet"
    assert loaded.data.pipeline_tag == "image-classification"
    kl = next(r for r in _ours(loaded) if r.metric_config == "kl_radius")
    assert kl.metric_value == pytest.approx(0.0777752862, rel=1e-6)
    assert kl.source_name == "hf-fisher"


@pytest.mark.parametrize(
    "name",
    [
        "yes",
        "null",
        "1e3",
        "org/model: v2 # not a comment",
        "- [weird] {braces} & *anchor !tag",
        'quote\'s "double" `tick` | pipe',
        "ünïcödé/模型",
    ],
)
def test_yaml_safe_with_odd_model_names(results, name):
    data = copy.deepcopy(results)
    data["model"]["id"] = name
    data["dataset"]["name"] = name
    loaded = ModelCard(str(card.merge_card(data, None)))
    assert loaded.data.model_name == name
    assert {r.dataset_name for r in _ours(loaded)} == {name}
    assert len(_ours(loaded)) == 3
    # the name goes into tables escaped: a '|' must not open a new column
    if "|" in name:
        assert "\\|" in loaded.text


def test_merge_keeps_crlf_and_cards_without_front_matter(results):
    crlf = "# Title\r\n\r\nBody.\r\n"
    merged = str(card.merge_card(results, crlf))
    assert "\n" not in merged.replace("\r\n", "")
    assert ModelCard(merged).text.startswith(crlf)
    plain = card.merge_card(results, "# Only markdown\n")
    assert plain.text.startswith("# Only markdown\n")
    assert plain.data.model_name == "hf-fisher/digits-resnet"


@pytest.mark.parametrize(
    "text",
    [
        f"# x\n{card.START_MARKER}\nno end\n",
        f"# x\n{card.END_MARKER}\n{card.START_MARKER}\n",
        f"{card.START_MARKER}\n{card.END_MARKER}\n{card.START_MARKER}\n{card.END_MARKER}\n",
    ],
)
def test_broken_markers_raise(results, text):
    with pytest.raises(InputError, match="expected exactly one start marker"):
        card.merge_card(results, text)


def test_bad_template_and_front_matter_raise(results):
    with pytest.raises(InputError, match=r"unknown or malformed field 'oops'.*\$badge"):
        card.render_section(results, template="$badge $oops")
    with pytest.raises(InputError, match="must not contain the hf-fisher markers"):
        card.render_section(results, template=f"{card.START_MARKER} $badge")
    with pytest.raises(InputError, match="front matter is not a mapping"):
        card.merge_card(results, "---\n- a list\n---\nbody\n")


def test_section_contents(results):
    section = card.render_section(results)
    assert "### Summary" in section and "### Per class" in section
    assert "img.shields.io/badge" in section
    for needle in ("`exact` estimator", "(pixels)", "40 samples", "95% confidence", "τ = 0.01"):
        assert needle in section
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    per_class = [r for r in rows if r.split("|")[2].strip() == "4"]
    assert len(per_class) == 10  # one per class, 4 samples each
    class7 = results["summary"]["by_class"]["7"]["metrics"]["kl_radius"]["median"]
    assert f"| 7 | 4 | 75.0% | {class7:.3g} [" in section
    assert "| 36" not in section and "(n=36)" in section and "(n=4)" in section


def test_packaged_template_matches_example_in_model_cards():
    example = (REPO / "model_cards" / "robustness_section_template.md").read_text()
    assert example == card.default_template()
    fields = {f for f in card.TEMPLATE_FIELDS if f"${f}" in example}
    assert fields == set(card.TEMPLATE_FIELDS)


# CLI and push ------------------------------------------------------------------------------


def _parse(argv):
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers()
    cli.add_card_parser(subparsers)
    return parser.parse_args(argv)


def test_run_card_links_plots_relative_and_writes_eval_results(tmp_path, capsys):
    readme = tmp_path / "repo" / "README.md"
    readme.parent.mkdir()
    readme.write_text(EXISTING)
    args = _parse(["card", str(FIXTURE), "--card", str(readme)])
    with mock.patch.object(push, "HfApi", side_effect=AssertionError("no push without --push")):
        assert args.func(args) == 0
    text = readme.read_text()
    assert "](robustness_plots/spectral_norm.png)" in text
    assert "](robustness_plots/per_class.png)" in text
    assert (readme.parent / "robustness_plots" / "spectral_norm.png").is_file()
    entries = yaml.safe_load((readme.parent / ".eval_results" / "hf-fisher.yaml").read_text())
    assert [e["dataset"]["task_id"] for e in entries][0] == "fisher_robustness/kl_radius"
    assert "wrote" in capsys.readouterr().out


def test_run_card_push_opens_pr_and_never_logs_token(tmp_path, monkeypatch, capsys, caplog):
    secret = "hf_SECRETtoken1234567890"
    monkeypatch.setenv("HF_TOKEN", secret)
    out = tmp_path / "card" / "README.md"
    api = mock.Mock()
    api.create_commit.return_value = mock.Mock(pr_url="https://huggingface.co/u/m/discussions/1")
    caplog.set_level(logging.DEBUG)
    args = _parse(["card", str(FIXTURE), "--out", str(out), "--push", "u/m"])
    with mock.patch.object(push, "HfApi", return_value=api) as hf_api:
        assert args.func(args) == 0
    hf_api.assert_called_once_with()  # token left to huggingface_hub (HF_TOKEN / login)
    kwargs = api.create_commit.call_args.kwargs
    assert kwargs["repo_id"] == "u/m" and kwargs["create_pr"] is True
    paths = sorted(op.path_in_repo for op in kwargs["operations"])
    assert paths == [
        ".eval_results/hf-fisher.yaml",
        "README.md",
        "robustness_plots/per_class.png",
        "robustness_plots/spectral_norm.png",
    ]
    captured = capsys.readouterr()
    assert "discussions/1" in captured.out
    assert secret not in captured.out + captured.err + caplog.text


def test_push_rejects_bad_repo_and_files_outside_card_dir(tmp_path):
    readme = tmp_path / "a" / "README.md"
    readme.parent.mkdir()
    readme.write_text("x")
    outside = tmp_path / "plot.png"
    outside.write_bytes(b"png")
    api = mock.Mock()
    with pytest.raises(InputError, match="'a/b/c' is not a Hub repo id"):
        push.push_card("a/b/c", readme, api=api)
    with pytest.raises(InputError, match="outside the card's folder"):
        push.push_card("u/m", readme, [outside], api=api)
    api.create_commit.assert_not_called()


def test_write_card_missing_inputs_raise(tmp_path, results):
    with pytest.raises(InputError, match="--card .*missing.md' is not a file"):
        card.write_card(results, out=tmp_path / "R.md", card=tmp_path / "missing.md")
    with pytest.raises(InputError, match="--template .*t.md' is not a file"):
        card.write_card(results, out=tmp_path / "R.md", template=tmp_path / "t.md")


def test_existing_eval_results_of_another_group_are_kept(results):
    data = ModelCardData(
        model_name="m",
        eval_results=[
            EvalResult(
                task_type="image-classification",
                dataset_type="cifar10",
                dataset_name="CIFAR-10",
                metric_type="accuracy",
                metric_value=0.9,
            )
        ],
    )
    merged = ModelCard(str(card.merge_card(results, f"---\n{data.to_yaml()}\n---\nbody\n")))
    kinds = sorted((r.dataset_type, r.metric_type) for r in merged.data.eval_results)
    assert kinds == [("cifar10", "accuracy")] + [("sklearn-digits", "fisher_robustness")] * 3
    assert {r.source_name for r in _ours(merged)} == {"hf-fisher"}


def test_null_statistics_and_missing_labels_render(results):
    data = copy.deepcopy(results)
    data["summary"]["accuracy"] = None
    data["dataset"]["split"] = None
    data["summary"]["by_class"]["3"]["accuracy"] = None
    data["summary"]["by_class"]["3"]["metrics"]["trace"]["median"] = None
    data["summary"]["metrics"]["trace"]["p95"] = None
    validate_reportable_results(data)
    loaded = ModelCard(str(card.merge_card(data, None)))
    assert "accuracy on them: n/a (no labels)" in loaded.text
    assert "| 3 | 4 | n/a (no labels) |" in loaded.text and "| – |" in loaded.text
    assert {r.dataset_split for r in _ours(loaded)} == {None}
    data["summary"]["metrics"]["kl_radius"]["median"] = None
    with pytest.raises(ResultsError, match="kl_radius has no numeric median"):
        validate_reportable_results(data)


# companion subsections ---------------------------------------------------------------------


def _fake_plots(tmp_path, names):
    return {name: tmp_path / "robustness_plots" / f"{name}.png" for name in names}


def _titles(registry=plots.REPORT_REGISTRY):
    return {name: registry[name].title for name in COMPANIONS}


def test_companion_subsections_appear_once_in_order_with_their_plot(tmp_path, bundled):
    assert all(isinstance(bundled.get(name), dict) for name in COMPANIONS)
    paths = _fake_plots(tmp_path, ["spectral_norm", "per_class", *COMPANIONS])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = str(card.merge_card(bundled, EXISTING, paths, card_dir=tmp_path))
    assert str(card.merge_card(bundled, first, paths, card_dir=tmp_path)) == first  # idempotent
    section = first[first.index(card.START_MARKER) : first.index(card.END_MARKER)]
    headings = [f"### {title}" for title in _titles().values()]
    assert [section.count(h) for h in headings] == [1] * len(COMPANIONS)
    positions = [section.index(h) for h in headings]
    assert positions == sorted(positions) and section.index("### Per class") < positions[0]
    for name, heading in zip(COMPANIONS, headings, strict=True):
        assert section.count(f"](robustness_plots/{name}.png)") == 1
        # the renderer's Markdown and then the plot sit inside the section's own subsection
        body = plots.resolve_dotted(plots.REPORT_REGISTRY[name].card)(bundled[name]).strip()
        start = section.index(heading)
        end = min([p for p in positions if p > start] or [len(section)])
        own = section[start:end]
        assert body in own and f"](robustness_plots/{name}.png)" in own
    # the core plots stay after the per-class table, before the companions
    assert section.index("](robustness_plots/per_class.png)") < positions[0]


def test_absent_companion_sections_are_skipped_without_import(tmp_path, bundled):
    data = copy.deepcopy(bundled)
    del data["clever"], data["frequency"]
    data["kl_check"] = None  # written as null: not a section either
    registry = dict(
        plots.REPORT_REGISTRY,
        clever=plots.Companion("CLEVER", card="module_that_does_not_exist:card"),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = card.render_section(data, registry=registry)
    assert "### Attack cross-check" in text and "### Noise curves" in text
    for title in ("CLEVER", "KL check", "Frequency bands"):
        assert f"### {title}" not in text


def test_broken_card_renderers_warn_and_their_plot_moves_to_plots(tmp_path, bundled):
    def broken(section):
        raise RuntimeError("boom")

    registry = {
        "attacks": plots.Companion("Attacks A", card=broken),
        "noise_curves": plots.Companion("Noise N", card="module_that_does_not_exist:card"),
        "kl_check": plots.Companion("KL K", card=lambda section: 3),
        "clever": plots.Companion("CLEVER C", card="json:nope"),
        "frequency": plots.REPORT_REGISTRY["frequency"],
    }
    paths = _fake_plots(tmp_path, ["attacks", "frequency"])
    with pytest.warns(RuntimeWarning) as record:
        text = card.render_section(bundled, paths, card_dir=tmp_path, registry=registry)
    messages = " ".join(str(w.message) for w in record)
    assert "'attacks' card subsection: RuntimeError: boom" in messages
    assert "'noise_curves' card subsection: ModuleNotFoundError" in messages
    assert "'kl_check' card subsection: TypeError: card renderer returned int" in messages
    assert "'clever' card subsection: ImportError: json has no card renderer 'nope'" in messages
    assert len(record) == 4
    for title in ("Attacks A", "Noise N", "KL K", "CLEVER C"):
        assert f"### {title}" not in text
    assert text.count("### Frequency bands") == 1
    assert text.count("![Attacks A](robustness_plots/attacks.png)") == 1  # plot kept in $plots
    assert text.index("![Attacks A]") < text.index("### Frequency bands")


def test_templates_without_companions_field_keep_every_plot(tmp_path, bundled):
    paths = _fake_plots(tmp_path, ["spectral_norm", "attacks"])
    for template in ("$badge\n$plots", "$badge $$companions\n$plots"):
        text = card.render_section(bundled, paths, card_dir=tmp_path, template=template)
        assert "![Attack cross-check](robustness_plots/attacks.png)" in text
        assert "### Attack cross-check" not in text
    text = card.render_section(bundled, paths, tmp_path, template="${companions}|$plots")
    assert text.count("robustness_plots/attacks.png") == 1
    assert text.index("### Attack cross-check") < text.index("|![Per-sample spectral norm]")


def test_bundled_card_round_trips_and_rerun_is_byte_identical(tmp_path, bundled):
    path = tmp_path / "README.md"
    path.write_text(EXISTING)
    outputs = card.write_card(bundled, out=path, card=path)
    assert list(outputs.plots) == ["spectral_norm", "per_class", *COMPANIONS]
    first = path.read_bytes()
    loaded = ModelCard.load(path)
    assert loaded.text.startswith(ModelCard(EXISTING).text)
    assert loaded.text.endswith(card.END_MARKER + "\n")
    assert {r.metric_config for r in _ours(loaded)} == {"kl_radius", "spectral_norm", "trace"}
    assert loaded.data.license == "apache-2.0"
    for title in _titles().values():
        assert loaded.text.count(f"### {title}") == 1
    card.write_card(bundled, out=path, card=path)
    assert path.read_bytes() == first
