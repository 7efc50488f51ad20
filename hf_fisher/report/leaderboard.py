"""Leaderboard submissions and a static, self-contained leaderboard site.

A submission is a small JSON object (``hf_fisher/schemas/submission.schema.json``, documented in
``docs/leaderboard.md``) made from one ``results.json``. :func:`build_leaderboard` turns a folder
of them into ``leaderboard.md`` and one ``index.html``: one ranked table per :class:`Setup`
(dataset, split, input space, KL level τ and likelihood, the settings that fix what a KL radius
means), repeated submissions of the same model and settings merged to the newest. The page's
inline script sorts the tables by the clicked column, each table scrolls sideways inside its own
container on a narrow window, and a Content-Security-Policy forbids the page any network request.
"""

from __future__ import annotations

import datetime
import html
import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from hf_fisher.errors import InputError, ResultsError, SubmissionError
from hf_fisher.report.badge import format_sig
from hf_fisher.report.card import md_escape
from hf_fisher.report.results_io import non_finite_field, validate_reportable_results

SUBMISSION_SCHEMA_VERSION = 1
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Column:
    """A leaderboard column: submission key, header, and whether it sorts as a number."""

    key: str
    header: str
    numeric: bool


COLUMNS: tuple[Column, ...] = (
    Column("rank", "#", True),
    Column("name", "Model", False),
    Column("architecture", "Architecture", False),
    Column("estimator", "Estimator", False),
    Column("n", "n", True),
    Column("clean_acc", "Clean acc. (%)", True),
    Column("median_kl_radius", "Median KL radius [95% CI] ↑", True),
    Column("spectral_norm", "Median λ_max ↓", True),
    Column("trace", "Median trace ↓", True),
    Column("hf_fisher_version", "hf-fisher", False),
)


def submission_schema() -> dict[str, Any]:
    """Return the packaged submission JSON Schema."""
    text = resources.files("hf_fisher").joinpath("schemas/submission.schema.json").read_text()
    return json.loads(text)


def make_submission(
    results: dict[str, Any],
    name: str | None = None,
    link: str | None = None,
    authors: str | None = None,
    footnote: str | None = None,
    reported: str | None = None,
    additional_data: bool = False,
) -> dict[str, Any]:
    """Build a leaderboard submission from validated results.

    Args:
        results: Validated results (see :func:`hf_fisher.report.load_reportable_results`).
        name: Display name; defaults to the model id.
        link: Paper or model page.
        authors: Authors, as in RobustBench.
        footnote: Remark shown with the entry.
        reported: Robust accuracy reported by the authors (percent string), as in RobustBench.
        additional_data: Whether the model was trained with extra data, as in RobustBench.

    Returns:
        A submission that validates against the submission schema; statistics that are not
        finite are null, so it is standard JSON.

    Raises:
        ResultsError: ``results`` fails :func:`~hf_fisher.report.validate_reportable_results`
            (e.g. a NaN or an accuracy above 1) or has no accuracy.
    """
    validate_reportable_results(results)
    summary, settings, model = results["summary"], results["settings"], results["model"]
    if summary.get("accuracy") is None:
        raise ResultsError(
            "summary.accuracy is null (the run had no labels); a leaderboard entry needs "
            "clean accuracy: evaluate on a dataset with a label column."
        )
    metrics = {
        key: {
            stat: None if value is None else float(value)
            for stat, value in summary["metrics"][key].items()
        }
        for key in ("kl_radius", "spectral_norm", "trace")
    }
    kl = metrics["kl_radius"]
    submission = {
        "schema_version": SUBMISSION_SCHEMA_VERSION,
        "name": name or str(model["id"]),
        "link": link,
        "authors": authors,
        "additional_data": additional_data,
        "number_forward_passes": 1,
        "model_id": str(model["id"]),
        "architecture": str(model.get("architecture") or "unknown"),
        "dataset": str(results["dataset"]["name"]),
        "split": str(results["dataset"].get("split") or "unspecified"),
        "task": model["task"],
        "clean_acc": f"{100 * float(summary['accuracy']):.2f}",
        "eps": None,
        "reported": reported,
        "footnote": footnote,
        "estimator": str(settings["method"]),
        "black_box": bool(settings.get("black_box", False)),
        "input_space": settings["input_space"],
        "n": int(summary["num_samples"]),
        "seed": None if settings.get("seed") is None else int(settings["seed"]),
        "kl_tau": float(settings["kl_tau"]),
        "likelihood": str(settings.get("likelihood", "categorical")),
        "median_kl_radius": kl["median"],
        "median_kl_radius_ci": [kl["median_ci_low"], kl["median_ci_high"]],
        "metrics": metrics,
        "hf_fisher_version": str(results["hf_fisher_version"]),
        "created": str(results["created"]),
    }
    return validate_submission(submission)


_FIX = "recreate it with `hf-fisher submit` or fix the field (see docs/leaderboard.md)"


def _fail(source: str, where: str, problem: str, fix: str = _FIX) -> SubmissionError:
    return SubmissionError(f"{source}: invalid submission at {where}: {problem}; {fix}.")


def validate_submission(submission: Any, source: str = "submission") -> dict[str, Any]:
    """Check a submission against the schema and the ranges of its numbers; return it.

    Why here and not only in ``hf-fisher submit``: submissions are files that people edit and
    send in, and a leaderboard built from a bad one would rank it silently. Every number must be
    finite (JSON has no NaN or Infinity: write null), ``clean_acc`` a percentage in [0, 100],
    KL radii and spectral norms (λ_max) >= 0, ``kl_tau`` > 0, the CI of the median KL radius
    ordered [low, high], and ``created`` an ISO-8601 time (it decides which of repeated
    submissions is kept).

    Raises:
        SubmissionError: Wrong ``schema_version``, a schema violation, a non-finite number or an
            out-of-range value; the message names the file (``source``), the field and the fix.
    """
    if isinstance(submission, dict) and submission.get("schema_version") != 1:
        raise SubmissionError(
            f"{source}: submission schema_version {submission.get('schema_version')!r} is not "
            f"supported; expected {SUBMISSION_SCHEMA_VERSION}. Recreate it with `hf-fisher submit`."
        )
    try:
        jsonschema.validate(submission, submission_schema())
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "<root>"
        raise _fail(source, where, err.message) from err
    bad = non_finite_field(submission)
    if bad is not None:
        raise _fail(
            source,
            bad,
            "not a finite number",
            "write null for a value that is not finite (JSON has no NaN or Infinity)",
        )
    if not 0 <= float(submission["clean_acc"]) <= 100:
        raise _fail(
            source,
            "clean_acc",
            f"{submission['clean_acc']!r} is not a percentage in [0, 100]",
            'write the accuracy in percent (accuracy 0.975 is written "97.50")',
        )
    low, high = submission["median_kl_radius_ci"]
    if low is not None and high is not None and low > high:
        raise _fail(
            source,
            "median_kl_radius_ci",
            f"the low end {low!r} is above the high end {high!r}",
            "write the interval as [low, high] (results.json summary.metrics.kl_radius "
            "median_ci_low, median_ci_high)",
        )
    created_time(submission, source)
    return submission


def created_time(submission: dict[str, Any], source: str = "submission") -> datetime.datetime:
    """``created`` as an aware datetime (UTC when it names no offset).

    >>> created_time({"created": "2026-11-30T03:00:00+00:00"}).isoformat()
    '2026-11-30T03:00:00+00:00'

    Raises:
        SubmissionError: ``created`` is not an ISO-8601 time.
    """
    try:
        moment = datetime.datetime.fromisoformat(str(submission["created"]))
    except ValueError as err:
        raise _fail(
            source,
            "created",
            f"{submission['created']!r} is not an ISO-8601 time",
            'write the evaluation time as e.g. "2026-11-30T03:00:00+00:00" (results.json created)',
        ) from err
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)


def load_submissions(directory: str | Path) -> list[dict[str, Any]]:
    """Load and validate every ``*.json`` submission in ``directory``, sorted by file name.

    Raises:
        InputError: ``directory`` is not a folder or holds no ``*.json`` file.
        SubmissionError: A file is not JSON or not a valid submission.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"submissions folder {str(directory)!r} does not exist; pass a folder.")
    files = sorted(directory.glob("*.json"))
    if not files:
        raise InputError(
            f"no *.json submissions in {str(directory)!r}; create some with `hf-fisher submit`."
        )
    submissions = []
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise SubmissionError(
                f"{path}: not valid JSON ({err}); recreate it with `hf-fisher submit`."
            ) from err
        submissions.append(validate_submission(data, source=str(path)))
    return submissions


@dataclass(frozen=True, order=True)
class Setup:
    """The settings that fix what a KL radius means; entries are ranked only against their own.

    A radius is in the units of the input space (pixels in [0, 1] are not token embeddings), on
    a dataset split, at KL level τ (radius ∝ √τ), for one likelihood (softmax vs multi-label
    sigmoids define different Fisher matrices). Estimators of the same λ_max stay comparable.
    """

    dataset: str
    split: str
    input_space: str
    kl_tau: float
    likelihood: str

    @classmethod
    def of(cls, submission: dict[str, Any]) -> Setup:
        """The setup of one submission (a submission without ``likelihood`` is categorical)."""
        return cls(
            submission["dataset"],
            submission["split"],
            submission["input_space"],
            float(submission["kl_tau"]),
            submission.get("likelihood", "categorical"),
        )

    @property
    def heading(self) -> str:
        """Names the group, e.g. ``sklearn-digits (test) · input space pixels · τ = 0.01 · ...``."""
        return (
            f"{self.dataset} ({self.split}) · input space {self.input_space} · "
            f"τ = {format_sig(self.kl_tau)} · {self.likelihood} likelihood"
        )


def _identity(submission: dict[str, Any]) -> tuple[Any, ...]:
    # Same name and model, same setup, same estimator: a resubmission, whatever its n or seed.
    # The name is part of it so that two checkpoints evaluated from one local path stay apart.
    return (
        submission["name"],
        submission["model_id"],
        Setup.of(submission),
        submission["estimator"],
        bool(submission.get("black_box", False)),
    )


@dataclass(frozen=True)
class Merged:
    """Submissions after merging repeats: ``kept`` in input order; ``replaced`` (old, newest)."""

    kept: list[dict[str, Any]]
    replaced: list[tuple[dict[str, Any], dict[str, Any]]]

    def note(self) -> str | None:
        """The sentence the page and the log show when anything was merged, else None."""
        if not self.replaced:
            return None
        count = len(self.replaced)
        listed = "; ".join(
            f"{old['name']} ({old['created']}) replaced by {new['created']}"
            for old, new in self.replaced
        )
        return (
            f"Merged {count} repeated submission{'s' if count > 1 else ''} of the same model and "
            f"settings (name, model_id, setup, estimator), keeping the newest by created: "
            f"{listed}."
        )


def merge_resubmissions(submissions: Iterable[dict[str, Any]]) -> Merged:
    """Keep the newest (by ``created``; the later one on a tie) of each model and settings.

    Why: people resubmit after a rerun, and two rows of one model would rank it twice.
    """
    newest: dict[tuple[Any, ...], dict[str, Any]] = {}
    older = []
    for sub in submissions:
        key = _identity(sub)
        previous = newest.get(key)
        if previous is not None:
            if created_time(sub) < created_time(previous):
                older.append(sub)
                continue
            older.append(previous)
        newest[key] = sub
    return Merged(list(newest.values()), [(old, newest[_identity(old)]) for old in older])


def group_submissions(submissions: Iterable[dict[str, Any]]) -> dict[Setup, list[dict[str, Any]]]:
    """Submissions by :class:`Setup`, setups in sorted order; each list keeps its input order."""
    groups: dict[Setup, list[dict[str, Any]]] = {}
    for sub in submissions:
        groups.setdefault(Setup.of(sub), []).append(sub)
    return dict(sorted(groups.items()))


def median_kl_radius(submission: dict[str, Any]) -> float:
    """The headline as a float: ``inf`` for a flat model, NaN when it is unknown.

    A submission writes a KL radius that is not finite as null; it is +inf exactly when the
    median spectral norm is 0 (F = 0: the outputs do not move at all).

    >>> median_kl_radius({"median_kl_radius": None, "metrics": {"spectral_norm": {"median": 0}}})
    inf
    """
    value = submission["median_kl_radius"]
    if value is not None:
        return float(value)
    flat = submission["metrics"]["spectral_norm"].get("median") == 0
    return math.inf if flat else math.nan


def _sort_key(submission: dict[str, Any]) -> tuple[int, float, str]:
    # Larger KL radius first, +inf (a flat model) the most robust; unknown (NaN) last.
    value = median_kl_radius(submission)
    return (1, 0.0, submission["name"]) if math.isnan(value) else (0, -value, submission["name"])


def _number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    return format_sig(value)


def leaderboard_rows(submissions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rank submissions by median KL radius (larger first, unknown last) into display rows.

    Each row maps a :data:`COLUMNS` key to ``(sort_value, display_text)``; the row also keeps
    its submission under ``"submission"``. Sort values are floats, ``inf`` or NaN (unknown).
    """
    rows = []
    for rank, sub in enumerate(sorted(submissions, key=_sort_key), start=1):
        low, high = sub["median_kl_radius_ci"]
        kl = median_kl_radius(sub)
        kl_text = f"{_number(kl)} [{_number(low)}, {_number(high)}]"
        sn, tr = sub["metrics"]["spectral_norm"]["median"], sub["metrics"]["trace"]["median"]
        rows.append(
            {
                "submission": sub,
                "rank": (rank, str(rank)),
                "name": (sub["name"], sub["name"]),
                "architecture": (sub["architecture"], sub["architecture"]),
                "dataset": (sub["dataset"], f"{sub['dataset']} ({sub['split']})"),
                "input_space": (sub["input_space"], sub["input_space"]),
                "estimator": (sub["estimator"], sub["estimator"]),
                "n": (sub["n"], str(sub["n"])),
                "clean_acc": (float(sub["clean_acc"]), sub["clean_acc"]),
                "median_kl_radius": (kl, kl_text),
                "spectral_norm": (math.nan if sn is None else sn, _number(sn)),
                "trace": (math.nan if tr is None else tr, _number(tr)),
                "hf_fisher_version": (sub["hf_fisher_version"], sub["hf_fisher_version"]),
            }
        )
    return rows


GROUPING_NOTE = (
    "Ranked separately for each dataset split, input space, KL level τ and likelihood: a KL "
    "radius is in the units of its input space and grows with √τ, so radii compare only within "
    "one table."
)


def _markdown_table(group: list[dict[str, Any]], footnotes: list[str]) -> list[str]:
    """One group's table lines; appends each footnote to ``footnotes`` and numbers it there."""
    lines = ["| " + " | ".join(c.header for c in COLUMNS) + " |"]
    lines.append("|" + "|".join("---:" if c.numeric else "---" for c in COLUMNS) + "|")
    for row in leaderboard_rows(group):
        cells = [row[c.key][1] if c.numeric else md_escape(row[c.key][1]) for c in COLUMNS]
        sub = row["submission"]
        if sub.get("footnote"):
            footnotes.append(f"{len(footnotes) + 1}. {md_escape(sub['footnote'])}")
            cells[1] += f" ({len(footnotes)})"
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def leaderboard_markdown(submissions: list[dict[str, Any]], title: str) -> str:
    """Render one ranked Markdown table per :class:`Setup` (footnotes after the tables).

    Repeated submissions are merged first (:func:`merge_resubmissions`) and a note says which.
    """
    merged = merge_resubmissions(submissions)
    lines = [f"# {md_escape(title)}", "", GROUPING_NOTE, ""]
    if merged.note():
        lines += [md_escape(merged.note()), ""]
    footnotes: list[str] = []
    for setup, group in group_submissions(merged.kept).items():
        lines += [f"## {md_escape(setup.heading)}", "", *_markdown_table(group, footnotes), ""]
    return "\n".join(lines + footnotes).rstrip("\n") + "\n"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;overflow-wrap:anywhere}
.table-scroll{overflow-x:auto;max-width:100%;margin-bottom:1.5rem}
table{border-collapse:collapse;font-size:14px;overflow-wrap:normal}
th,td{border:1px solid #ccc;padding:4px 8px;white-space:nowrap}
th{background:#f3f3f3;cursor:pointer;user-select:none;white-space:nowrap}
th[aria-sort=ascending]::after{content:" ▲"}
th[aria-sort=descending]::after{content:" ▼"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#fafafa}
small{color:#666}
@media (max-width:700px){body{margin:1rem}}
"""

# Click a header to sort every table by that column; click again to reverse. The state lives in
# the URL fragment (#sort=key or #sort=-key) so that a sorted view can be linked and loaded
# directly. Each table keeps its own rows: groups are never mixed.
_JS = """
(function(){
  var tables=Array.prototype.slice.call(document.querySelectorAll("table.leaderboard"));
  var state=document.body.dataset;
  function sortTable(table, key, descending){
    var body=table.tBodies[0], heads=Array.prototype.slice.call(table.tHead.rows[0].cells);
    var col=-1;
    heads.forEach(function(th,i){
      if(th.dataset.key===key){col=i;}
      th.removeAttribute("aria-sort");
    });
    if(col<0){return;}
    var numeric=heads[col].dataset.numeric==="1";
    var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){
      var x=a.cells[col].dataset.sort, y=b.cells[col].dataset.sort, r;
      if(numeric){
        x=parseFloat(x); y=parseFloat(y);
        if(isNaN(x)||isNaN(y)){
          if(isNaN(x)&&isNaN(y)){return a.dataset.rank-b.dataset.rank;}
          return isNaN(x)?1:-1;  /* unknown values last in either direction */
        }
        r=x===y?0:(x<y?-1:1);
      } else { r=x.localeCompare(y); }
      if(r===0){r=a.dataset.rank-b.dataset.rank; return r;}
      return descending?-r:r;
    });
    rows.forEach(function(r){body.appendChild(r);});
    heads[col].setAttribute("aria-sort", descending?"descending":"ascending");
  }
  function sortBy(key, descending){
    tables.forEach(function(t){sortTable(t, key, descending);});
    state.sortKey=key; state.sortDesc=descending?"1":"0";
  }
  tables.forEach(function(table){
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function(th){
      th.addEventListener("click", function(){
        var desc=state.sortKey===th.dataset.key && state.sortDesc!=="1";
        sortBy(th.dataset.key, desc);
        history.replaceState(null, "", "#sort="+(desc?"-":"")+th.dataset.key);
      });
    });
  });
  var m=/^#sort=(-?)(.+)$/.exec(location.hash);
  if(m){sortBy(decodeURIComponent(m[2]), m[1]==="-");}
})();
"""


def _sort_text(value: Any) -> str:
    # What the page's script sorts by: parseFloat reads "Infinity"; "" is unknown (sorted last).
    if isinstance(value, float) and not math.isfinite(value):
        return "" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return str(value)


def _safe_link(url: str | None) -> str | None:
    return url if url and url.startswith(("https://", "http://")) else None


def _name_cell(sub: dict[str, Any], text: str) -> str:
    esc = html.escape
    inner = esc(text)
    link = _safe_link(sub.get("link"))
    if link:
        inner = f'<a href="{esc(link)}" rel="noopener">{inner}</a>'
    inner += f"<br><small>{esc(sub['model_id'])}</small>"
    if sub.get("footnote"):
        inner += f"<br><small>{esc(sub['footnote'])}</small>"
    return inner


def _html_table(group: list[dict[str, Any]], index: int, heading: str) -> str:
    """One group's sortable table inside a container that scrolls sideways on its own."""
    esc = html.escape
    head = "".join(
        f'<th data-key="{esc(c.key)}" data-numeric="{int(c.numeric)}" scope="col">'
        f"{esc(c.header)}</th>"
        for c in COLUMNS
    )
    body = []
    for row in leaderboard_rows(group):
        sub = row["submission"]
        cells = []
        for c in COLUMNS:
            sort_value, text = row[c.key]
            inner = _name_cell(sub, text) if c.key == "name" else esc(text)
            cls = ' class="num"' if c.numeric else ""
            cells.append(f'<td{cls} data-sort="{esc(_sort_text(sort_value))}">{inner}</td>')
        body.append(
            f'<tr data-rank="{row["rank"][0]}" data-name="{esc(sub["name"])}">'
            + "".join(cells)
            + "</tr>"
        )
    return (
        f'<section class="group" id="group-{index}"><h2>{esc(heading)}</h2>'
        f'<div class="table-scroll" role="region" tabindex="0" aria-label="{esc(heading)}">'
        f'<table class="leaderboard" id="leaderboard-{index}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div></section>"
    )


def leaderboard_html(submissions: list[dict[str, Any]], title: str) -> str:
    """Render a single self-contained, sortable HTML page (inline CSS/JS, no network).

    One table per :class:`Setup`, each under a heading naming it and in its own horizontally
    scrolling container, so the page itself never gets wider than the window.
    """
    esc = html.escape
    merged = merge_resubmissions(submissions)
    note = merged.note()
    notes = f"<p>{esc(GROUPING_NOTE)}</p>"
    if note:
        notes += f'<p class="merged" data-replaced="{len(merged.replaced)}">{esc(note)}</p>'
    tables = "".join(
        _html_table(group, index, setup.heading)
        for index, (setup, group) in enumerate(group_submissions(merged.kept).items(), start=1)
    )
    csp = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1>"
        "<p>Ranked by the median KL radius √(2τ/λ_max(F)) of the input-space Fisher "
        "information: the L2 input perturbation at which the predicted distribution moves by "
        "KL τ. Larger is more robust. Click a column header to sort.</p>"
        f"{notes}{tables}"
        f"<script>{_JS}</script></body></html>\n"
    )


def build_leaderboard(
    directory: str | Path, out: str | Path, title: str = "hf-fisher robustness leaderboard"
) -> tuple[Path, Path]:
    """Write ``out/leaderboard.md`` and ``out/index.html`` from a folder of submissions.

    Repeated submissions of the same model and settings are merged to the newest, with a
    warning in the log and a note on the page.

    Returns:
        The Markdown and HTML paths.
    """
    submissions = load_submissions(directory)
    note = merge_resubmissions(submissions).note()
    if note:
        logger.warning("%s: %s", directory, note)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md_path, html_path = out / "leaderboard.md", out / "index.html"
    md_path.write_text(leaderboard_markdown(submissions, title), encoding="utf-8")
    html_path.write_text(leaderboard_html(submissions, title), encoding="utf-8")
    return md_path, html_path
