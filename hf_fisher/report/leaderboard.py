"""Leaderboard submissions and a static, self-contained leaderboard site.

A submission is a small JSON object (``hf_fisher/schemas/submission.schema.json``, documented in
``docs/leaderboard.md``) made from one ``results.json``. :func:`build_leaderboard` turns a folder
of them into ``leaderboard.md`` and one ``index.html`` whose inline script sorts the table by the
clicked column; a Content-Security-Policy forbids the page any network request.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from hf_fisher.errors import InputError, ResultsError
from hf_fisher.report.badge import format_sig
from hf_fisher.report.card import md_escape
from hf_fisher.report.results_io import non_finite_field, validate_reportable_results

SUBMISSION_SCHEMA_VERSION = 1


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
    Column("dataset", "Dataset (split)", False),
    Column("input_space", "Input space", False),
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
        "median_kl_radius": kl["median"],
        "median_kl_radius_ci": [kl["median_ci_low"], kl["median_ci_high"]],
        "metrics": metrics,
        "hf_fisher_version": str(results["hf_fisher_version"]),
        "created": str(results["created"]),
    }
    return validate_submission(submission)


def validate_submission(submission: Any, source: str = "submission") -> dict[str, Any]:
    """Check a submission against the schema and the ranges of its numbers; return it.

    Every number must be finite (JSON has no NaN or Infinity: write null), ``clean_acc`` a
    percentage in [0, 100], and KL radii and spectral norms >= 0.

    Raises:
        ResultsError: Wrong ``schema_version``, a schema violation, a non-finite number or an
            out-of-range value (file and field named).
    """
    if isinstance(submission, dict) and submission.get("schema_version") != 1:
        raise ResultsError(
            f"{source}: submission schema_version {submission.get('schema_version')!r} is not "
            f"supported; expected {SUBMISSION_SCHEMA_VERSION}. Recreate it with `hf-fisher submit`."
        )
    try:
        jsonschema.validate(submission, submission_schema())
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "<root>"
        raise ResultsError(
            f"{source}: invalid submission at {where}: {err.message}. Recreate it with "
            "`hf-fisher submit` or fix the field (see docs/leaderboard.md)."
        ) from err
    bad = non_finite_field(submission)
    if bad is not None:
        raise ResultsError(
            f"{source}: invalid submission at {bad}: not a finite number; write null for a "
            "value that is not finite (JSON has no NaN or Infinity)."
        )
    if not 0 <= float(submission["clean_acc"]) <= 100:
        raise ResultsError(
            f"{source}: invalid submission at clean_acc: {submission['clean_acc']!r} is not a "
            'percentage in [0, 100] (accuracy 0.975 is written "97.50").'
        )
    return submission


def load_submissions(directory: str | Path) -> list[dict[str, Any]]:
    """Load and validate every ``*.json`` submission in ``directory``, sorted by file name.

    Raises:
        InputError: ``directory`` is not a folder or holds no ``*.json`` file.
        ResultsError: A file is not JSON or not a valid submission.
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
            raise ResultsError(f"{path}: not valid JSON ({err}).") from err
        submissions.append(validate_submission(data, source=str(path)))
    return submissions


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


def _setups_note(submissions: list[dict[str, Any]]) -> str | None:
    setups = {(s["dataset"], s["input_space"], s["kl_tau"]) for s in submissions}
    if len(setups) < 2:
        return None
    return (
        "Note: entries differ in dataset, input space or kl_tau; KL radii are comparable only "
        "within the same (dataset, input space, kl_tau)."
    )


def leaderboard_markdown(submissions: list[dict[str, Any]], title: str) -> str:
    """Render the ranked leaderboard as a Markdown table (footnotes after the table)."""
    rows = leaderboard_rows(submissions)
    lines = [f"# {md_escape(title)}", ""]
    note = _setups_note(submissions)
    if note:
        lines += [note, ""]
    lines.append("| " + " | ".join(c.header for c in COLUMNS) + " |")
    lines.append("|" + "|".join("---:" if c.numeric else "---" for c in COLUMNS) + "|")
    footnotes = []
    for row in rows:
        cells = [row[c.key][1] if c.numeric else md_escape(row[c.key][1]) for c in COLUMNS]
        sub = row["submission"]
        if sub.get("footnote"):
            footnotes.append(f"{len(footnotes) + 1}. {md_escape(sub['footnote'])}")
            cells[1] += f" ({len(footnotes)})"
        lines.append("| " + " | ".join(cells) + " |")
    if footnotes:
        lines += ["", *footnotes]
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;white-space:nowrap}
th{background:#f3f3f3;cursor:pointer;user-select:none;white-space:nowrap}
th[aria-sort=ascending]::after{content:" ▲"}
th[aria-sort=descending]::after{content:" ▼"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#fafafa}
small{color:#666}
"""

# Click a header to sort by it; click again to reverse. The state lives in the URL fragment
# (#sort=key or #sort=-key) so that a sorted view can be linked and loaded directly.
_JS = """
(function(){
  var table=document.getElementById("leaderboard"), body=table.tBodies[0];
  var heads=Array.prototype.slice.call(table.tHead.rows[0].cells);
  function sortBy(key, descending){
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
    table.dataset.sortKey=key; table.dataset.sortDesc=descending?"1":"0";
  }
  heads.forEach(function(th){
    th.addEventListener("click", function(){
      var desc=table.dataset.sortKey===th.dataset.key && table.dataset.sortDesc!=="1";
      sortBy(th.dataset.key, desc);
      history.replaceState(null, "", "#sort="+(desc?"-":"")+th.dataset.key);
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


def leaderboard_html(submissions: list[dict[str, Any]], title: str) -> str:
    """Render a single self-contained, sortable HTML page (inline CSS/JS, no network)."""
    esc = html.escape
    rows = leaderboard_rows(submissions)
    head = "".join(
        f'<th data-key="{esc(c.key)}" data-numeric="{int(c.numeric)}" scope="col">'
        f"{esc(c.header)}</th>"
        for c in COLUMNS
    )
    body = []
    for row in rows:
        sub = row["submission"]
        cells = []
        for c in COLUMNS:
            sort_value, text = row[c.key]
            inner = esc(text)
            if c.key == "name":
                link = _safe_link(sub.get("link"))
                if link:
                    inner = f'<a href="{esc(link)}" rel="noopener">{inner}</a>'
                inner += f"<br><small>{esc(sub['model_id'])}</small>"
                if sub.get("footnote"):
                    inner += f"<br><small>{esc(sub['footnote'])}</small>"
            cls = ' class="num"' if c.numeric else ""
            cells.append(f'<td{cls} data-sort="{esc(_sort_text(sort_value))}">{inner}</td>')
        body.append(
            f'<tr data-rank="{row["rank"][0]}" data-name="{esc(sub["name"])}">'
            + "".join(cells)
            + "</tr>"
        )
    note = _setups_note(submissions)
    note_html = f"<p><strong>{esc(note)}</strong></p>" if note else ""
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
        f'{note_html}<table id="leaderboard"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
        f"<script>{_JS}</script></body></html>\n"
    )


def build_leaderboard(
    directory: str | Path, out: str | Path, title: str = "hf-fisher robustness leaderboard"
) -> tuple[Path, Path]:
    """Write ``out/leaderboard.md`` and ``out/index.html`` from a folder of submissions.

    Returns:
        The Markdown and HTML paths.
    """
    submissions = load_submissions(directory)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md_path, html_path = out / "leaderboard.md", out / "index.html"
    md_path.write_text(leaderboard_markdown(submissions, title), encoding="utf-8")
    html_path.write_text(leaderboard_html(submissions, title), encoding="utf-8")
    return md_path, html_path
