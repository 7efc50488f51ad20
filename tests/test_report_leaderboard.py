import argparse
import base64
import copy
import json
import math
import os
import re
import select
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import pytest

from hf_fisher import cli as hf_cli
from hf_fisher.errors import InputError, ResultsError, SubmissionError
from hf_fisher.report import cli, leaderboard
from hf_fisher.report.results_io import load_reportable_results

FIXTURE = Path(__file__).parent / "fixtures" / "results_example.json"
EXAMPLE_PAGE = Path(__file__).parent.parent / "docs" / "leaderboard" / "index.html"
CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
    None,
)
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,500",
]
# (name, median KL radius, clean accuracy, n): three orders differ by column
ENTRIES = [
    ("alpha <b>net</b>", 0.02, 0.99, 40),
    ("beta", 0.30, 0.80, 10),
    ("gamma", 0.07, 0.95, 25),
    ("delta", 0.11, 0.90, 60),
]


@pytest.fixture(scope="module")
def results():
    return load_reportable_results(FIXTURE)


def _submission(results, name, kl, acc, n):
    data = copy.deepcopy(results)
    data["model"]["id"] = f"org/{name}"
    data["summary"]["accuracy"] = acc
    data["summary"]["num_samples"] = n
    kl_stats = data["summary"]["metrics"]["kl_radius"]
    kl_stats.update(median=kl, median_ci_low=kl * 0.8, median_ci_high=kl * 1.2)
    data["summary"]["metrics"]["spectral_norm"]["median"] = 2 * 0.01 / kl**2
    return leaderboard.make_submission(data, name=name, footnote=f"note on {name}")


@pytest.fixture()
def submissions_dir(tmp_path, results):
    folder = tmp_path / "subs"
    folder.mkdir()
    for i, entry in enumerate(ENTRIES):
        sub = _submission(results, *entry)
        (folder / f"{i}.json").write_text(json.dumps(sub))
    return folder


def test_submission_matches_schema_and_robustbench_fields(results):
    sub = leaderboard.make_submission(results, link="https://example.org", authors="A. B.")
    jsonschema.validate(sub, leaderboard.submission_schema())
    for key in ("name", "architecture", "dataset", "clean_acc", "eps", "reported", "footnote"):
        assert key in sub
    assert sub["clean_acc"] == "90.00" and sub["eps"] is None
    kl = results["summary"]["metrics"]["kl_radius"]
    assert sub["median_kl_radius"] == kl["median"]
    assert sub["median_kl_radius_ci"] == [kl["median_ci_low"], kl["median_ci_high"]]
    assert (sub["estimator"], sub["input_space"], sub["n"], sub["seed"]) == (
        "exact",
        "pixels",
        40,
        0,
    )
    assert sub["hf_fisher_version"] == "0.1.0"


def test_bad_submissions_raise(tmp_path, results):
    sub = leaderboard.make_submission(results)
    with pytest.raises(ResultsError, match="schema_version 7 is not supported"):
        leaderboard.validate_submission(dict(sub, schema_version=7))
    broken = dict(sub)
    del broken["median_kl_radius"]
    with pytest.raises(ResultsError, match="'median_kl_radius' is a required property"):
        leaderboard.validate_submission(broken, source="x.json")
    with pytest.raises(ResultsError, match="invalid submission at input_space"):
        leaderboard.validate_submission(dict(sub, input_space="pixel"))
    with pytest.raises(InputError, match="does not exist"):
        leaderboard.load_submissions(tmp_path / "missing")
    with pytest.raises(InputError, match="no \\*.json submissions"):
        leaderboard.load_submissions(tmp_path)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ResultsError, match="bad.json: not valid JSON"):
        leaderboard.load_submissions(tmp_path)


def test_markdown_ranks_by_kl_radius(tmp_path, submissions_dir):
    args = argparse.ArgumentParser().add_subparsers()
    parser = cli.add_leaderboard_parser(args)
    ns = parser.parse_args([str(submissions_dir), "--out", str(tmp_path / "site")])
    assert ns.func(ns) == 0
    text = (tmp_path / "site" / "leaderboard.md").read_text()
    rows = [line for line in text.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [r.split("|")[2].strip().split(" (")[0] for r in rows] == [
        "beta",
        "delta",
        "gamma",
        "alpha \\<b\\>net\\</b\\>",
    ]
    assert "0.3 [0.24, 0.36]" in rows[0]
    assert "1. note on beta" in text


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.names, self.headers = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "tr" and "data-name" in attrs:
            self.names.append(attrs["data-name"])
        if tag == "th":
            self.headers.append(attrs["data-key"])


def test_html_is_self_contained_and_escaped(submissions_dir, tmp_path):
    _, html_path = leaderboard.build_leaderboard(submissions_dir, tmp_path / "site")
    page = html_path.read_text()
    parsed = _Collector()
    parsed.feed(page)
    for tag, attrs in parsed.tags:
        assert "src" not in attrs, tag
        assert tag != "link" and tag != "img" and tag != "iframe"
    assert "@import" not in page and "url(" not in page
    assert "default-src 'none'" in page
    assert "<b>net</b>" not in page and "&lt;b&gt;net&lt;/b&gt;" in page
    assert parsed.names == ["beta", "delta", "gamma", "alpha <b>net</b>"]
    assert parsed.headers[:2] == ["rank", "name"] and "clean_acc" in parsed.headers


# Real browser -------------------------------------------------------------------------------


def _need_chromium():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing; .ci/run must install Debian's chromium package")
        pytest.skip("chromium not installed (set CI=true to make this a failure)")
    return CHROMIUM


class _Cdp:
    """Minimal Chrome DevTools Protocol client over --remote-debugging-pipe (fd 3 in, fd 4 out)."""

    def __init__(self, binary, profile):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire():
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [binary, *CHROME_FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}"],
            pass_fds=(3, 4),  # preexec_fn runs before the other fds are closed
            preexec_fn=wire,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next, self._buffer, self.events, self.session = 0, b"", [], None

    def _read_message(self, timeout):
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_chrome], [], [], timeout)
            if not ready:
                raise TimeoutError("no message from chromium")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method, timeout=20, **params):
        self._next += 1
        message = {"id": self._next, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message(timeout)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_event(self, name, timeout=20):
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == name:
                    return self.events.pop(i)
            self.events.append(self._read_message(timeout))

    def evaluate(self, expression):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"]["value"]

    def close(self):
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


ROW_NAMES = "Array.from(document.querySelectorAll('tbody tr')).map(r => r.dataset.name)"


def _click_header(cdp, key):
    box = cdp.evaluate(
        f"(() => {{ const r = document.querySelector('th[data-key=\"{key}\"]')"
        ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
    )
    for kind in ("mousePressed", "mouseReleased"):
        cdp.send(
            "Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1
        )


def test_clicking_headers_sorts_in_real_chromium(submissions_dir, tmp_path):
    binary = _need_chromium()
    _, html_path = leaderboard.build_leaderboard(submissions_dir, tmp_path / "site")
    cdp = _Cdp(binary, tmp_path / "profile")
    try:
        target = cdp.send("Target.createTarget", url="about:blank")["targetId"]
        cdp.session = cdp.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        cdp.send("Network.enable")
        cdp.send("Page.enable")
        cdp.send("Page.navigate", url=html_path.as_uri())
        cdp.wait_event("Page.loadEventFired")
        assert cdp.evaluate(ROW_NAMES) == ["beta", "delta", "gamma", "alpha <b>net</b>"]

        _click_header(cdp, "clean_acc")  # ascending accuracy
        assert cdp.evaluate(ROW_NAMES) == ["beta", "delta", "gamma", "alpha <b>net</b>"]
        _click_header(cdp, "clean_acc")  # again: descending
        assert cdp.evaluate(ROW_NAMES) == ["alpha <b>net</b>", "gamma", "delta", "beta"]
        assert cdp.evaluate("location.hash") == "#sort=-clean_acc"
        _click_header(cdp, "n")
        assert cdp.evaluate(ROW_NAMES) == ["beta", "gamma", "alpha <b>net</b>", "delta"]
        assert (
            cdp.evaluate("document.querySelector('th[data-key=\"n\"]').getAttribute('aria-sort')")
            == "ascending"
        )
        _click_header(cdp, "name")  # text column
        assert cdp.evaluate(ROW_NAMES) == ["alpha <b>net</b>", "beta", "delta", "gamma"]

        shot = base64.b64decode(cdp.send("Page.captureScreenshot", format="png")["data"])
        assert shot.startswith(b"\x89PNG")
        requests = [
            e["params"]["request"]["url"]
            for e in cdp.events
            if e.get("method") == "Network.requestWillBeSent"
        ]
        assert requests and all(url.startswith("file://") for url in requests), requests
    finally:
        cdp.close()


def test_sort_fragment_in_dumped_dom(submissions_dir, tmp_path):
    binary = _need_chromium()
    _, html_path = leaderboard.build_leaderboard(submissions_dir, tmp_path / "site")
    dom = subprocess.run(
        [
            binary,
            *CHROME_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            html_path.as_uri() + "#sort=-n",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    names = re.findall(r'<tr data-rank="\d+" data-name="([^"]*)"', dom)
    assert names == ["delta", "alpha &lt;b&gt;net&lt;/b&gt;", "gamma", "beta"]


def test_submission_needs_clean_accuracy(results):
    data = copy.deepcopy(results)
    data["summary"]["accuracy"] = None
    with pytest.raises(ResultsError, match="summary.accuracy is null"):
        leaderboard.make_submission(data)


# ranges, non-finite values and ranking (issue 11) ----------------------------------------


def _strict_json(text):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_submit_writes_standard_json_with_nulls(tmp_path, results):
    data = copy.deepcopy(results)
    data["summary"]["metrics"]["trace"]["p95"] = None  # what hf-fisher writes for inf / NaN
    data["summary"]["metrics"]["spectral_norm"]["median_ci_high"] = None
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "sub.json"
    assert hf_cli.main(["submit", str(path), "--out", str(out)]) == 0
    sub = _strict_json(out.read_text())
    assert sub["metrics"]["trace"]["p95"] is None
    assert sub["metrics"]["spectral_norm"]["median_ci_high"] is None
    assert leaderboard.validate_submission(sub) == sub


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_submit_refuses_non_finite_results(tmp_path, capsys, results, token):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results).replace('"p95": ', f'"p95": {token}, "was": ', 1))
    out = tmp_path / "sub.json"
    assert hf_cli.main(["submit", str(path), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: summary.metrics.spectral_norm.p95 = " in err and "not a finite number" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        (("summary", "accuracy"), 7.5, r"summary\.accuracy = 7\.5 is not a fraction in \[0, 1\]"),
        (
            ("summary", "by_class", "3", "accuracy"),
            -0.25,
            r"summary\.by_class\.3\.accuracy = -0\.25 is not a fraction",
        ),
        (
            ("summary", "metrics", "kl_radius", "median"),
            -0.5,
            r"summary\.metrics\.kl_radius\.median = -0\.5 is negative",
        ),
        (
            ("summary", "by_correctness", "correct", "metrics", "spectral_norm", "p05"),
            -1.0,
            r"summary\.by_correctness\.correct\.metrics\.spectral_norm\.p05 = -1\.0 is negative",
        ),
    ],
)
def test_out_of_range_results_are_refused(tmp_path, results, field, value, match):
    data = copy.deepcopy(results)
    target = data
    for key in field[:-1]:
        target = target[key]
    target[field[-1]] = value
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ResultsError, match=re.escape(str(path)) + ": " + match):
        load_reportable_results(path)
    with pytest.raises(ResultsError, match=match):
        leaderboard.make_submission(data)


def test_flat_model_results_get_an_accurate_message(results):
    data = copy.deepcopy(results)
    for row in data["per_sample"][:25]:
        row["spectral_norm"], row["kl_radius"] = 0.0, None
    data["summary"]["metrics"]["kl_radius"].update(median=None, median_ci_high=None)
    data["summary"]["metrics"]["spectral_norm"]["median"] = 0.0
    with pytest.raises(
        ResultsError, match=r"median, median_ci_high is null, i\.e\. infinite: .* 25 of 40"
    ):
        leaderboard.make_submission(data)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"median_kl_radius": -0.5}, r"at median_kl_radius: -0\.5 is less than the minimum of 0"),
        ({"median_kl_radius_ci": [-1.0, 0.2]}, r"at median_kl_radius_ci/0: -1\.0 is less than"),
        ({"clean_acc": "750.00"}, r"at clean_acc: '750\.00' is not a percentage in \[0, 100\]"),
        ({"median_kl_radius": math.inf}, r"at median_kl_radius = inf: not a finite number"),
        ({"kl_tau": math.nan}, r"at kl_tau = nan: not a finite number"),
    ],
)
def test_bad_submission_values_name_file_and_field(tmp_path, results, change, match):
    sub = dict(leaderboard.make_submission(results), **change)
    (tmp_path / "bad.json").write_text(json.dumps(sub))  # json writes inf/nan as tokens
    with pytest.raises(ResultsError, match=re.escape(str(tmp_path / "bad.json")) + ": invalid "):
        leaderboard.load_submissions(tmp_path)
    with pytest.raises(ResultsError, match=match):
        leaderboard.validate_submission(sub)


def test_negative_spectral_norm_in_submission_is_refused(results):
    sub = copy.deepcopy(leaderboard.make_submission(results))
    sub["metrics"]["spectral_norm"]["p05"] = -2.0
    with pytest.raises(ResultsError, match=r"at metrics/spectral_norm/p05: -2\.0 is less than"):
        leaderboard.validate_submission(sub)
    sub["metrics"]["spectral_norm"]["p05"] = 0.0
    sub["metrics"]["trace"]["p05"] = None  # null: not finite
    leaderboard.validate_submission(sub)


def _flat_and_unknown(results):
    """A flat model (median KL radius null, median spectral norm 0) and an unknown one."""
    base = leaderboard.make_submission(results)
    flat = copy.deepcopy(base)
    flat.update(name="flat", median_kl_radius=None, median_kl_radius_ci=[0.5, None])
    flat["metrics"]["spectral_norm"]["median"] = 0.0
    unknown = copy.deepcopy(base)
    unknown.update(name="unknown", median_kl_radius=None, median_kl_radius_ci=[None, None])
    return flat, unknown


def test_ranking_puts_flat_models_first_and_unknown_last(tmp_path, results):
    flat, unknown = _flat_and_unknown(results)
    folder = tmp_path / "subs"
    folder.mkdir()
    for i, sub in enumerate([unknown, _submission(results, "big", 0.3, 0.9, 40), flat]):
        (folder / f"{i}.json").write_text(json.dumps(sub, allow_nan=False))
    subs = leaderboard.load_submissions(folder)
    rows = leaderboard.leaderboard_rows(subs)
    assert [r["name"][0] for r in rows] == ["flat", "big", "unknown"]
    assert rows[0]["median_kl_radius"][1] == "∞ [0.5, –]"
    assert rows[2]["median_kl_radius"][1] == "– [–, –]"
    # in-memory floats: +inf is the most robust, NaN unknown
    memory = [
        dict(_submission(results, "nan", 0.3, 0.9, 40), median_kl_radius=math.nan),
        dict(_submission(results, "small", 0.01, 0.9, 40)),
        dict(_submission(results, "inf", 0.3, 0.9, 40), median_kl_radius=math.inf),
    ]
    assert [r["name"][0] for r in leaderboard.leaderboard_rows(memory)] == ["inf", "small", "nan"]
    page = leaderboard.leaderboard_html(subs, "t")
    assert 'data-sort="Infinity"' in page and 'data-sort=""' in page
    markdown = leaderboard.leaderboard_markdown(subs, "t")
    rows = [line for line in markdown.splitlines() if re.match(r"\| \d+ \|", line)]
    names = [line.split("|")[2].strip() for line in rows]
    assert names == ["flat", "big (1)", "unknown"]  # (1): its footnote


def test_unknown_values_sort_last_both_ways_in_real_chromium(tmp_path, results):
    binary = _need_chromium()
    flat, unknown = _flat_and_unknown(results)
    folder = tmp_path / "subs"
    folder.mkdir()
    for i, sub in enumerate([unknown, _submission(results, "big", 0.3, 0.9, 40), flat]):
        (folder / f"{i}.json").write_text(json.dumps(sub))
    _, html_path = leaderboard.build_leaderboard(folder, tmp_path / "site")
    orders = {}
    for fragment in ("median_kl_radius", "-median_kl_radius"):
        dom = subprocess.run(
            [
                binary,
                *CHROME_FLAGS,
                f"--user-data-dir={tmp_path / 'profile'}",
                "--dump-dom",
                f"{html_path.as_uri()}#sort={fragment}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        orders[fragment] = re.findall(r'<tr data-rank="\d+" data-name="([^"]*)"', dom)
    assert orders == {
        "median_kl_radius": ["big", "flat", "unknown"],
        "-median_kl_radius": ["flat", "big", "unknown"],
    }


# groups, merged resubmissions, narrow windows (issue 17) ------------------------------------


def _variant(results, name, kl, created="2026-11-22T01:00:00+00:00", **fields):
    sub = _submission(results, name, kl, 0.9, 40)
    sub.update(created=created, footnote=None, **fields)
    return leaderboard.validate_submission(sub)


def _mixed(results):
    """Two pixel entries, one normalized-space entry, one at another τ, one multi-label."""
    return [
        _variant(results, "p-small", 0.05),
        _variant(results, "n-big", 0.9, input_space="normalized"),
        _variant(results, "p-big", 0.2),
        _variant(results, "tau", 0.5, kl_tau=0.1),
        _variant(results, "multi", 0.4, likelihood="bernoulli"),
        _variant(results, "val", 0.3, split="validation"),
    ]


GROUPS = {
    "sklearn-digits (test) · input space normalized · τ = 0.01 · categorical likelihood": ["n-big"],
    "sklearn-digits (test) · input space pixels · τ = 0.01 · bernoulli likelihood": ["multi"],
    "sklearn-digits (test) · input space pixels · τ = 0.01 · categorical likelihood": [
        "p-big",
        "p-small",
    ],
    "sklearn-digits (test) · input space pixels · τ = 0.1 · categorical likelihood": ["tau"],
    "sklearn-digits (validation) · input space pixels · τ = 0.01 · categorical likelihood": ["val"],
}


def test_each_setup_gets_its_own_ranked_table(results):
    subs = _mixed(results)
    groups = leaderboard.group_submissions(subs)
    assert {setup.heading: [s["name"] for s in group] for setup, group in groups.items()} == {
        heading: sorted(names, reverse=True) for heading, names in GROUPS.items()
    }
    markdown = leaderboard.leaderboard_markdown(subs, "t")
    found, heading = {}, None
    for line in markdown.splitlines():
        if line.startswith("## "):
            heading = line[3:].replace("\\", "")
            found[heading] = []
        elif re.match(r"\| \d+ \|", line):
            cells = [c.strip() for c in line.split("|")]
            found[heading].append((int(cells[1]), cells[2]))
    # ranks restart at 1 in every table; n-big (0.9) never outranks p-big (0.2) in one table
    assert found == {h: list(enumerate(names, start=1)) for h, names in GROUPS.items()}
    page = _Collector()
    page.feed(leaderboard.leaderboard_html(subs, "t"))
    assert page.names == [name for names in GROUPS.values() for name in names]
    scrollers = [a for tag, a in page.tags if tag == "div" and a.get("class") == "table-scroll"]
    assert [a["aria-label"] for a in scrollers] == list(GROUPS)


def test_repeated_submissions_keep_the_newest_and_say_so(tmp_path, results, caplog):
    old = _variant(results, "m", 0.1, created="2026-11-20T10:00:00+00:00")
    new = _variant(results, "m", 0.3, created="2026-11-21T10:00:00")  # no offset: UTC
    other_estimator = _variant(results, "m", 0.2, estimator="lanczos")
    folder = tmp_path / "subs"
    folder.mkdir()
    for i, sub in enumerate([new, old, other_estimator]):  # the newest is not the last file
        (folder / f"{i}.json").write_text(json.dumps(sub))
    merged = leaderboard.merge_resubmissions(leaderboard.load_submissions(folder))
    assert [(s["median_kl_radius"], s["estimator"]) for s in merged.kept] == [
        (0.3, "exact"),
        (0.2, "lanczos"),
    ]
    assert [(a["created"], b["created"]) for a, b in merged.replaced] == [
        ("2026-11-20T10:00:00+00:00", "2026-11-21T10:00:00")
    ]
    with caplog.at_level("WARNING", logger="hf_fisher.report.leaderboard"):
        md_path, html_path = leaderboard.build_leaderboard(folder, tmp_path / "site")
    assert "Merged 1 repeated submission of the same model" in caplog.text
    assert "m (2026-11-20T10:00:00+00:00) replaced by 2026-11-21T10:00:00" in caplog.text
    assert "Merged 1 repeated submission" in md_path.read_text()
    page = _Collector()
    page.feed(html_path.read_text())
    assert ("p", {"class": "merged", "data-replaced": "1"}) in page.tags
    assert page.names == ["m", "m"]  # exact (0.3) and lanczos: one table, two estimators
    # equal times: the later submission wins; different estimators are never merged
    tie = leaderboard.merge_resubmissions([old, dict(old, median_kl_radius=0.25)])
    assert [s["median_kl_radius"] for s in tie.kept] == [0.25]
    assert leaderboard.merge_resubmissions([old, other_estimator]).note() is None


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"created": "yesterday"}, r"at created: 'yesterday' is not an ISO-8601 time; write"),
        ({"likelihood": "poisson"}, r"at likelihood: 'poisson' is not one of"),
        ({"kl_tau": 0}, r"at kl_tau: 0 is less than or equal to the minimum of 0"),
        ({"n": 0}, r"at n: 0 is less than the minimum of 1"),
        (
            {"median_kl_radius_ci": [0.3, 0.2]},
            r"at median_kl_radius_ci: the low end 0\.3 is above the high end 0\.2; write",
        ),
    ],
)
def test_more_bad_fields_are_typed_and_name_the_fix(tmp_path, results, change, match):
    sub = dict(leaderboard.make_submission(results), **change)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(sub))
    with pytest.raises(SubmissionError, match=re.escape(str(path)) + ": invalid .*" + match):
        leaderboard.load_submissions(tmp_path)
    with pytest.raises(SubmissionError, match="(fix|write)"):
        leaderboard.validate_submission(sub)


LAYOUT = """(() => {
  const page = document.documentElement;
  return {
    viewport: window.innerWidth,
    page: page.scrollWidth,
    groups: Array.from(document.querySelectorAll('section.group')).map(s => [
      s.querySelector('h2').textContent,
      Array.from(s.querySelectorAll('tbody tr')).map(r => r.dataset.name),
    ]),
    scrollers: Array.from(document.querySelectorAll('.table-scroll')).map(c => {
      const before = c.scrollLeft;
      c.scrollLeft = 80;
      const moved = c.scrollLeft - before;
      c.scrollLeft = 0;
      return {
        overflow: getComputedStyle(c).overflowX,
        inside: c.getBoundingClientRect().right <= window.innerWidth,
        wider: c.scrollWidth > c.clientWidth,
        moved: moved,
      };
    }),
  };
})()"""


def _layout_at(cdp, page, width):
    """Load ``page`` in a ``width`` px wide viewport and measure it with LAYOUT."""
    cdp.send(
        "Emulation.setDeviceMetricsOverride",
        width=width,
        height=800,
        deviceScaleFactor=1,
        mobile=False,
    )
    cdp.send("Page.navigate", url=page.as_uri())
    cdp.wait_event("Page.loadEventFired")
    return cdp.evaluate(LAYOUT)


def test_groups_and_narrow_windows_in_real_chromium(tmp_path, results):
    binary = _need_chromium()
    subs = _mixed(results)
    subs[0]["model_id"] = "org/" + "a-very-long-checkpoint-name-" * 8  # wider than 1400 px
    subs[1]["model_id"] = "org/" + "another-long-checkpoint-name-" * 8
    folder = tmp_path / "subs"
    folder.mkdir()
    for i, sub in enumerate(subs):
        (folder / f"{i}.json").write_text(json.dumps(sub))
    _, html_path = leaderboard.build_leaderboard(folder, tmp_path / "site")
    cdp = _Cdp(binary, tmp_path / "profile")
    try:
        target = cdp.send("Target.createTarget", url="about:blank")["targetId"]
        cdp.session = cdp.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        cdp.send("Page.enable")
        for width in (1400, 600):
            layout = _layout_at(cdp, html_path, width)
            assert layout["viewport"] == width
            assert layout["page"] <= width, layout  # no page-level horizontal overflow
            assert [tuple(g) for g in layout["groups"]] == [
                (heading, names) for heading, names in GROUPS.items()
            ]
            assert all(s["overflow"] == "auto" and s["inside"] for s in layout["scrollers"])
            wide = [layout["groups"][i][1] for i, s in enumerate(layout["scrollers"]) if s["wider"]]
            assert ["n-big"] in wide and ["p-big", "p-small"] in wide, layout
            assert all(s["moved"] > 0 for s in layout["scrollers"] if s["wider"]), layout
            if width == 600:
                assert all(s["wider"] and s["moved"] > 0 for s in layout["scrollers"]), layout
        _click_header(cdp, "n")  # sorts inside every table: no row changes table
        assert [names for _, names in cdp.evaluate(LAYOUT)["groups"]] == list(GROUPS.values())
        for width in (1400, 600):  # the committed example page (docs/leaderboard/) too
            layout = _layout_at(cdp, EXAMPLE_PAGE, width)
            assert layout["page"] <= width == layout["viewport"], layout
            assert all(s["overflow"] == "auto" and s["inside"] for s in layout["scrollers"])
            if width == 600:
                assert all(s["wider"] and s["moved"] > 0 for s in layout["scrollers"]), layout
    finally:
        cdp.close()
