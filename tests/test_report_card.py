import argparse
import copy
import difflib
import json
import logging
import textwrap
import warnings
from pathlib import Path
from unittest import mock

import httpx2
import numpy as np
import pytest
import requests
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled
from huggingface_hub.repocard import REGEX_YAML_BLOCK
from markdown_it import MarkdownIt

from hf_fisher import cli as hf_cli
from hf_fisher.errors import InputError, ResultsError
from hf_fisher.report import badge, card, cli, plots, push
from hf_fisher.report import eval_results as card_eval
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
    bad["model"]["task"] = "object-detection"  # token classification is reportable now
    with pytest.raises(ResultsError, match="'object-detection' is not one of"):
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
        # a group of our own: our dataset name and source, not those of the existing group
        assert result.dataset_name == "sklearn-digits"
        assert (result.source_name, result.source_url) == ("hf-fisher", card_eval.SOURCE_URL)
    theirs = [r for r in loaded.data.eval_results if r.metric_type == "accuracy"]
    assert [(r.source_name, r.source_url) for r in theirs] == [
        ("Paper", "https://example.org/paper")
    ]
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


@pytest.mark.slow
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


# byte preservation, escaping, push errors (issue 11) ---------------------------------------

# Comments, unknown keys at every level, odd spacing, a group with the same task and dataset as
# ours under its own source, a flow-style group and a second model-index entry.
HAND_WRITTEN = """---
# Card metadata, edited by hand.\t(tab in a comment)
license: apache-2.0    # SPDX id
language:
    - en        # four-space indented list
custom_key: {nested: [1, 2], "quoted": 'x'}
model-index:
- name: my-model
  extra_entry_key: kept   # unknown model-index key
  results:
  # accuracy from the paper
  - task:
      type: image-classification
    dataset:
      name: Digits (sklearn)
      type: sklearn-digits
      split: test
    metrics:
    - type: accuracy
      value: 0.97
      unknown_metric_key: [a, b]
    source:
      url: https://example.org/paper
      name: Paper
    extra_result_key: 1

  - task: {type: image-classification}
    dataset: {name: Digits, type: sklearn-digits, split: test}
    metrics:
      - {type: f1, value: 0.96}
    source: {name: Leaderboard, url: "https://example.org/lb"}
  # trailing comment of the results list
- name: second-entry
  results:
  - task:
      type: image-classification
    dataset: {name: other, type: other}
    metrics:
    - type: accuracy
      value: 0.5
thumbnail: "x.png"
---

#  Title with  odd   spacing\t

Intro.
"""


def _insertions(original: str, merged: str) -> list[str]:
    """The chunks inserted into ``original`` to give ``merged``; fails if any byte changed."""
    old, new = original.splitlines(keepends=True), merged.splitlines(keepends=True)
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    ops = [op for op in matcher.get_opcodes() if op[0] != "equal"]
    assert all(op[0] == "insert" for op in ops), ops
    return ["".join(new[j1:j2]) for _, _, _, j1, j2 in ops]


def _front(text: str) -> dict:
    return yaml.safe_load(REGEX_YAML_BLOCK.search(text).group(2))


def _expected_group(results):
    """Our group as the Hub layout wants it, written out here independently of the code."""
    stats = results["summary"]["metrics"]
    return {
        "source": {"url": "https://pypi.org/project/hf-fisher/", "name": "hf-fisher"},
        "dataset": results["dataset"]["name"],
        "values": {k: stats[k]["median"] for k in ("kl_radius", "spectral_norm", "trace")},
    }


def _summary_of(group):
    return {
        "source": group["source"],
        "dataset": group["dataset"]["name"],
        "values": {m["config"]: m["value"] for m in group["metrics"]},
    }


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_merge_keeps_every_byte_outside_our_entries(results, newline):
    original = HAND_WRITTEN.replace("\n", newline)
    merged = str(card.merge_card(results, original))
    front_chunk, section_chunk = _insertions(original, merged)
    assert card.START_MARKER in section_chunk and "model-index" not in section_chunk
    # our group: one item of the first entry's results, after the last existing item
    group = yaml.safe_load(textwrap.dedent(front_chunk))
    assert len(group) == 1 and _summary_of(group[0]) == _expected_group(results)
    assert merged.index(front_chunk) < merged.index("  # trailing comment of the results list")
    assert "\n" not in merged.replace("\r\n", "") if newline == "\r\n" else "\r" not in merged
    # the Hub reads each group with its own source
    loaded = ModelCard(merged)
    sources = {(r.metric_type, r.source_name) for r in loaded.data.eval_results}
    assert sources == {
        ("accuracy", "Paper"),
        ("f1", "Leaderboard"),
        ("accuracy", None),
        ("fisher_robustness", "hf-fisher"),
    }
    assert str(card.merge_card(results, merged)) == merged  # idempotent, byte for byte


def test_rerun_replaces_our_group_in_place_and_keeps_comments_around_it(results):
    first = str(card.merge_card(results, HAND_WRITTEN))
    trailing = "  # trailing comment of the results list"
    commented = first.replace(trailing, f"  # added after our group\n{trailing}")
    newer = copy.deepcopy(results)
    newer["summary"]["metrics"]["kl_radius"]["median"] = 0.6
    again = str(card.merge_card(newer, commented))
    old_group = _insertions(HAND_WRITTEN, first)[0]
    new_group = _insertions(HAND_WRITTEN, str(card.merge_card(newer, HAND_WRITTEN)))[0]
    assert old_group != new_group
    sections = card.render_section(results), card.render_section(newer)
    # our group replaced where it was, the comment after it and everything else kept
    assert again == commented.replace(old_group, new_group).replace(*sections)
    values = {r.metric_config: r.metric_value for r in _ours(ModelCard(again))}
    assert values["kl_radius"] == 0.6 and len(values) == 3


@pytest.mark.parametrize("at_end", [False, True], ids=["before-source", "end-of-front-matter"])
def test_entries_of_older_versions_inside_another_group_are_moved_out(results, at_end):
    # hf-fisher <= 0.1 appended its metrics to an existing group with the same task and dataset
    legacy_metric = (
        "    - type: fisher_robustness\n      value: 0.05\n      name: median KL radius\n"
        "      config: kl_radius\n      args:\n        statistic: median\n"
    )
    existing = EXISTING
    if at_end:  # as in model_cards/digits-resnet.md: no source, the last lines of the YAML
        existing = EXISTING.replace(
            "    source:\n      url: https://example.org/paper\n      name: Paper\n", ""
        )
    legacy = existing.replace("      value: 0.97\n", "      value: 0.97\n" + legacy_metric)
    merged = str(card.merge_card(results, legacy))
    assert merged == str(card.merge_card(results, existing))  # as if they had never been there
    _insertions(existing, merged)
    groups = _front(merged)["model-index"][0]["results"]
    assert groups[0]["metrics"] == [{"type": "accuracy", "value": 0.97}]
    if not at_end:
        assert groups[0]["source"] == {"url": "https://example.org/paper", "name": "Paper"}
    assert _summary_of(groups[1]) == _expected_group(results)


@pytest.mark.parametrize(
    ("front", "match"),
    [
        ("model-index: [{name: m, results: []}]", "flow-style"),
        ("model-index:\n- name: m\n  results: []", "no block results"),
        ("- a list", "not a mapping"),
        ("key: [unclosed", "does not parse"),
    ],
)
def test_front_matter_that_cannot_be_edited_in_place_is_left_alone(tmp_path, results, front, match):
    path = tmp_path / "README.md"
    path.write_text(f"---\n{front}\n---\nbody\n")
    before = path.read_bytes()
    with pytest.raises(InputError, match=match):
        card.write_card(results, out=path)
    assert path.read_bytes() == before


def test_card_without_card_or_out_merges_into_existing_readme(tmp_path, monkeypatch):
    (tmp_path / "README.md").write_bytes(b"\xef\xbb\xbf" + HAND_WRITTEN.encode())
    monkeypatch.chdir(tmp_path)
    args = _parse(["card", str(FIXTURE)])
    assert args.func(args) == 0
    written = (tmp_path / "README.md").read_bytes()
    assert written.startswith(b"\xef\xbb\xbf")  # the byte-order mark is kept too
    _insertions(HAND_WRITTEN, written.decode("utf-8-sig"))
    args.func(args)
    assert (tmp_path / "README.md").read_bytes() == written


MALICIOUS = {
    ("model", "id"): "org/m</a><script>alert(1)</script>\n---\nlicense: mit\n# x: y",
    ("dataset", "name"): "data|set\n# Heading\n<img src=x onerror=alert(1)> [l](javascript:x)",
    ("dataset", "split"): "te`st</code><b>bold</b>",
    ("dataset", "config"): "cfg: {a: 1} # not a comment\r\n- item",
    ("settings", "method"): "exact``<script>`",
    ("settings", "input_space"): "<script>alert('space')</script>\n---\nfoo: bar\n| a | b |",
    ("hf_fisher_version",): "0.1.0<!-- hf-fisher:end -->",
    ("created",): "*now* & &lt;then&gt; $x$",
}


def _malicious(results):
    data = copy.deepcopy(results)
    for path, value in MALICIOUS.items():
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    data["model"]["id2label"]["3"] = "three|col\n---\n<script>x</script>\n## fake heading"
    return data


def _structure(markdown: str) -> tuple[list[tuple[str, ...]], list[str]]:
    """Block tokens with the non-text inline tokens they hold, and the raw HTML in the card."""
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    blocks, html = [], []
    for token in tokens:
        if token.type == "html_block":
            html.append(token.content.strip())
        kinds = [c.type for c in token.children or [] if c.type not in ("text", "softbreak")]
        html += [c.content for c in token.children or [] if c.type == "html_inline"]
        blocks.append((token.type, token.tag, *kinds))
    return blocks, html


def test_values_from_results_cannot_inject_html_markdown_or_yaml(results):
    harmless = copy.deepcopy(results)
    harmless["dataset"]["config"] = "default"
    clean = str(card.merge_card(harmless, None))
    evil_results = _malicious(results)
    evil = str(card.merge_card(evil_results, None))
    body = evil[REGEX_YAML_BLOCK.search(evil).end() :]
    front_lines = REGEX_YAML_BLOCK.search(evil).group(2).splitlines()
    assert not any(line.startswith(("---", "...")) for line in front_lines)  # one line each
    # the same blocks, tables, links and code spans as a card with harmless values, and no
    # raw HTML other than the template's own <sub> and markers
    blocks, html = _structure(body)
    clean_blocks, clean_html = _structure(clean[REGEX_YAML_BLOCK.search(clean).end() :])
    assert blocks == clean_blocks
    assert html == clean_html == [card.START_MARKER, "<sub>", "</sub>", card.END_MARKER]
    rendered = MarkdownIt("commonmark").enable("table").render(body)
    assert "<script" not in rendered and "&lt;script&gt;" in rendered
    assert rendered.count("<img") == 1  # the badge
    # the front matter parses to exactly the intended values
    front = _front(evil)
    assert set(front) == {"pipeline_tag", "tags", "model-index"}
    entry = front["model-index"][0]
    assert entry["name"] == MALICIOUS[("model", "id")]
    (group,) = entry["results"]
    assert group["dataset"] == {
        "name": MALICIOUS[("dataset", "name")],
        "type": MALICIOUS[("dataset", "name")],
        "config": MALICIOUS[("dataset", "config")],
        "split": MALICIOUS[("dataset", "split")],
    }
    space = MALICIOUS[("settings", "input_space")]
    assert {m["args"]["input_space"] for m in group["metrics"]} == {space}
    assert {m["args"]["estimator"] for m in group["metrics"]} == {"exact``<script>`"}
    assert group["metrics"][0]["name"] == f"median KL radius ({space}, tau=0.01)"
    assert ModelCard(evil).data.model_name == MALICIOUS[("model", "id")]
    # and merging again into the malicious card is still byte-identical
    assert str(card.merge_card(evil_results, evil)) == evil


def test_md_code_shows_any_text_literally():
    for text in ("exact", "a`b", "``x``", " lead", "trail`", "<b>|x</b>"):
        (token,) = MarkdownIt("commonmark").parseInline(card.md_code(text))[0].children
        assert (token.type, token.content) == ("code_inline", text)


@pytest.mark.parametrize(
    "error",
    [
        OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled."),
        httpx2.ConnectError("[Errno -2] Name or service not known"),
        requests.ConnectionError("Max retries exceeded, header token=hf_SECRETtoken1234567890"),
        HfHubHTTPError(
            "401 Unauthorized: Bearer hf_SECRETtoken1234567890 is invalid",
            response=httpx2.Response(
                401, request=httpx2.Request("POST", "https://huggingface.co/api/models/u/m")
            ),
        ),
        LocalTokenNotFoundError("Token is required; pass hf_SECRETtoken1234567890"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_push_network_and_hub_errors_are_one_line_without_token(
    tmp_path, monkeypatch, capsys, error
):
    secret = "hf_SECRETtoken1234567890"
    monkeypatch.setenv("HF_TOKEN", secret)
    out = tmp_path / "card" / "README.md"
    api = mock.Mock()
    api.create_commit.side_effect = error
    with mock.patch.object(push, "HfApi", return_value=api):
        code = hf_cli.main(["card", str(FIXTURE), "--out", str(out), "--push", "u/m"])
    assert code == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hf-fisher: error: could not open a pull ")
    assert type(error).__name__ in err and str(out) in err
    assert secret not in err and "Traceback" not in err
    assert out.is_file()  # the card itself was written before the push


def test_merged_card_saves_its_text_unless_data_is_edited(tmp_path, results):
    merged = card.merge_card(results, HAND_WRITTEN)
    text = str(merged)
    assert "# Card metadata, edited by hand." in text
    merged.save(tmp_path / "a.md")
    assert (tmp_path / "a.md").read_bytes() == text.encode()
    merged.text += "More.\n"
    assert str(merged) == text + "More.\n"
    merged.data.license = "mit"  # huggingface_hub's serialisation takes over: the edit is kept
    assert "license: mit" in str(merged) and "# Card metadata" not in str(merged)


@pytest.mark.parametrize(
    "text",
    [
        "---\n# only a comment\n---\nbody\n",
        "---\nlicense: x  # c\n---\n",
        "---\r\nlicense: x\r\n\r\n---\r\n\r\n# T\r\n",
        "---\n\n---\nbody without a final line break",
        "---\nlicense: x\ndescription: |\n  multi\n  line\n\n---\n",
        "\n\n---\nlicense: x\n---\n# leading blank lines\n",
        "---\nmodel-index:\n  - name: m\n    results:\n      - task: {type: image-classification}\n"
        "        dataset: {name: d, type: d}\n        metrics:\n"
        "          - {type: accuracy, value: 1}\n---\n",
    ],
    ids=[
        "comment-only",
        "no-model-index",
        "crlf-blank-line",
        "empty",
        "block-scalar",
        "leading",
        "indented-lists",
    ],
)
def test_odd_front_matter_layouts_only_get_insertions(results, text):
    merged = str(card.merge_card(results, text))
    ops = difflib.SequenceMatcher(None, text, merged, autojunk=False).get_opcodes()
    assert all(op[0] in ("equal", "insert") for op in ops)
    assert str(card.merge_card(results, merged)) == merged
    front = _front(merged)
    assert _summary_of(front["model-index"][0]["results"][-1]) == _expected_group(results)
