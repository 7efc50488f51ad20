"""Every way a new user's input has made hf-fisher silently wrong or crash, one row each.

Each row ends in either a correct result (``check`` asserts it against an independent truth)
or a clear typed error raised before any compute is spent (``error`` and ``match``). The rows
are grouped by the layer that owns the fix; add new rows to the matching section so the list
keeps growing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hf_fisher.errors import ResultsError


@dataclass(frozen=True)
class Case:
    """One bad input: ``run(tmp_path)`` either raises ``error`` matching ``match`` or returns a
    value that ``check`` verifies."""

    id: str
    run: Callable[[Path], Any]
    error: type[BaseException] | None = None
    match: str | None = None
    check: Callable[[Any], None] | None = None


# --- data: labels, images, text, columns --------------------------------------------------

DATA_CASES: list[Case] = []

# --- estimators: methods, traces, convergence, intervals, dtypes, multi-label --------------

ESTIMATOR_CASES: list[Case] = []

# --- runner and CLI: options, resume, output directories ----------------------------------

RUNNER_CASES: list[Case] = []

# --- report: cards, submissions, leaderboard ----------------------------------------------

REPORT_FIXTURE = Path(__file__).parent / "fixtures" / "results_example.json"
USER_CARD = """---
license: apache-2.0  # a comment the user wrote
my_key: {kept: [1, 2]}
model-index:
- name: my-model
  my_entry_key: kept
  results:
  - task:
      type: image-classification
    dataset:
      name: Digits
      type: sklearn-digits
      split: test
    metrics:
    - type: accuracy
      value: 0.97
    source:
      name: Paper
      url: https://example.org/paper
---

# My model

Hand-written text.
"""


def _report_results() -> dict:
    import json

    return json.loads(REPORT_FIXTURE.read_text(encoding="utf-8"))


def _only_insertions(original: str, merged: str) -> list[str]:
    """Chunks inserted into ``original`` to make ``merged``; fails if any original byte changed."""
    import difflib

    old, new = original.splitlines(keepends=True), merged.splitlines(keepends=True)
    ops = difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
    assert all(op[0] in ("equal", "insert") for op in ops), [op for op in ops if op[0] != "equal"]
    return ["".join(new[j1:j2]) for tag, _, _, j1, j2 in ops if tag == "insert"]


def _card_in_folder_with_readme(tmp_path: Path) -> str:
    import os

    from hf_fisher.cli import main

    (tmp_path / "README.md").write_text(USER_CARD, encoding="utf-8")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["card", str(REPORT_FIXTURE)]) == 0  # no --card, no --out
    finally:
        os.chdir(cwd)
    return (tmp_path / "README.md").read_text(encoding="utf-8")


def _check_user_card_kept(merged: str) -> None:
    from huggingface_hub import ModelCard

    group, section = _only_insertions(USER_CARD, merged)
    assert "fisher_robustness" in group and "hf-fisher:start" in section
    sources = {(r.metric_type, r.source_name) for r in ModelCard(merged).data.eval_results}
    assert sources == {("accuracy", "Paper"), ("fisher_robustness", "hf-fisher")}


def _merge_user_card(tmp_path: Path) -> tuple[str, str]:
    from hf_fisher.report import merge_card

    first = str(merge_card(_report_results(), USER_CARD))
    return first, str(merge_card(_report_results(), first))


def _check_merged_twice(cards: tuple[str, str]) -> None:
    first, second = cards
    _check_user_card_kept(first)
    assert second == first


EVIL = "x</a><script>alert(1)</script>\n---\nlicense: mit\n# a: b | c"


def _card_of_malicious_results(tmp_path: Path) -> str:
    from hf_fisher.report import merge_card

    results = _report_results()
    results["model"]["id"] = results["dataset"]["name"] = results["dataset"]["split"] = EVIL
    results["settings"]["input_space"] = results["settings"]["method"] = EVIL
    results["model"]["id2label"]["3"] = EVIL
    return str(merge_card(results, None))


def _check_no_injection(text: str) -> None:
    import yaml
    from huggingface_hub.repocard import REGEX_YAML_BLOCK
    from markdown_it import MarkdownIt

    match = REGEX_YAML_BLOCK.search(text)
    front = yaml.safe_load(match.group(2))
    assert set(front) == {"pipeline_tag", "tags", "model-index"}  # no injected license key
    (entry,) = front["model-index"]
    (group,) = entry["results"]
    assert entry["name"] == group["dataset"]["name"] == group["dataset"]["split"] == EVIL
    assert {m["args"]["input_space"] for m in group["metrics"]} == {EVIL}
    tokens = MarkdownIt("commonmark").enable("table").parse(text[match.end() :])
    html = [t.content.strip() for t in tokens if t.type == "html_block"]
    html += [c.content for t in tokens for c in t.children or [] if c.type == "html_inline"]
    template_html = ["<!-- hf-fisher:start -->", "<sub>", "</sub>", "<!-- hf-fisher:end -->"]
    assert sorted(html) == sorted(template_html)
    headings = [t.tag for t in tokens if t.type == "heading_open"]
    assert headings == ["h1", "h2", "h3", "h3"] and not any(t.type == "hr" for t in tokens)
    rows = [t for t in tokens if t.type == "tr_open"]
    cells = [t for t in tokens if t.type in ("td_open", "th_open")]
    assert len(cells) == 7 * 4 + 6 * 11  # summary 7 columns x 4 rows, per class 6 x 11
    assert len(rows) == 4 + 11


def _push_offline(tmp_path: Path) -> BaseException:
    from unittest import mock

    from huggingface_hub.errors import OfflineModeIsEnabled

    from hf_fisher.report import push_card

    card = tmp_path / "README.md"
    card.write_text("# card\n", encoding="utf-8")
    api = mock.Mock()
    api.create_commit.side_effect = OfflineModeIsEnabled(
        "offline mode is enabled; token hf_SECRETtoken1234567890"
    )
    try:
        push_card("user/model", card, api=api)
    except Exception as error:  # the check looks at which error and its message
        return error
    raise AssertionError("push_card did not raise")


def _check_push_error(error: BaseException) -> None:
    from hf_fisher.errors import HfFisherError

    assert isinstance(error, HfFisherError), repr(error)
    message = str(error)
    assert message.startswith("could not open a pull request on 'user/model': OfflineModeIs")
    assert "\n" not in message and "hf_SECRETtoken1234567890" not in message


def _submit_results_with_nan(tmp_path: Path) -> int:
    import json

    from hf_fisher.cli import build_parser

    results = _report_results()
    results["summary"]["metrics"]["trace"]["p95"] = float("nan")
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results), encoding="utf-8")  # writes the NaN token
    args = build_parser().parse_args(["submit", str(path), "--out", str(tmp_path / "s.json")])
    return args.func(args)


def _leaderboard_with(tmp_path: Path, **change: Any) -> list:
    import json

    from hf_fisher.report import load_submissions, make_submission

    submission = dict(make_submission(_report_results()), **change)
    (tmp_path / "entry.json").write_text(json.dumps(submission), encoding="utf-8")
    return load_submissions(tmp_path)


def _rank_inf_and_nan(tmp_path: Path) -> list[str]:
    from hf_fisher.report import make_submission
    from hf_fisher.report.leaderboard import leaderboard_rows

    base = make_submission(_report_results())
    entries = [
        dict(base, name="unknown", median_kl_radius=float("nan")),
        dict(base, name="finite"),
        dict(base, name="flat", median_kl_radius=float("inf")),
    ]
    return [row["name"][0] for row in leaderboard_rows(entries)]


def _expect(expected: Any) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        assert value == expected

    return check


REPORT_CASES: list[Case] = [
    Case(
        "report-card-without-card-or-out-merges-into-existing-readme",
        _card_in_folder_with_readme,
        check=_check_user_card_kept,
    ),
    Case(
        "report-card-keeps-yaml-comments-unknown-keys-and-other-sources",
        _merge_user_card,
        check=_check_merged_twice,
    ),
    Case(
        "report-card-escapes-every-value-from-results",
        _card_of_malicious_results,
        check=_check_no_injection,
    ),
    Case("report-card-push-offline-one-line-error", _push_offline, check=_check_push_error),
    Case(
        "report-submit-refuses-nan-instead-of-writing-non-standard-json",
        _submit_results_with_nan,
        error=ResultsError,
        match=r"results\.json: summary\.metrics\.trace\.p95 = nan is not a finite number",
    ),
    Case(
        "report-leaderboard-refuses-negative-kl-radius",
        lambda tmp_path: _leaderboard_with(tmp_path, median_kl_radius=-0.5),
        error=ResultsError,
        match=r"entry\.json: invalid submission at median_kl_radius: -0\.5 is less than",
    ),
    Case(
        "report-leaderboard-refuses-750-percent-accuracy",
        lambda tmp_path: _leaderboard_with(tmp_path, clean_acc="750.00"),
        error=ResultsError,
        match=r"entry\.json: invalid submission at clean_acc: '750\.00' is not a percentage",
    ),
    Case(
        "report-leaderboard-ranks-inf-kl-radius-first-and-nan-last",
        _rank_inf_and_nan,
        check=_expect(["flat", "finite", "unknown"]),
    ),
]


CASES = DATA_CASES + ESTIMATOR_CASES + RUNNER_CASES + REPORT_CASES


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, tmp_path: Path) -> None:
    assert (case.error is None) != (case.check is None), "a case either raises or checks"
    if case.error is not None:
        with pytest.raises(case.error, match=case.match):
            case.run(tmp_path)
    else:
        case.check(case.run(tmp_path))


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
