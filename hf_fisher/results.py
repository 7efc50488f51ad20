"""The results file: schema, validation, atomic writing, loading, and the per-sample table."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from hf_fisher.errors import ResultsError

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
TABLE_FILE = "per_sample.csv"
TABLE_COLUMNS = (
    "index",
    "label",
    "predicted",
    "probability",
    "correct",
    "spectral_norm",
    "trace",
    "kl_radius",
    "kl_flip",
    "flip_radius",
)


@cache
def results_schema() -> dict:
    """The JSON Schema of results.json (``hf_fisher/schemas/results.schema.json``)."""
    text = resources.files("hf_fisher").joinpath("schemas/results.schema.json").read_text()
    return json.loads(text)


def _path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f"{'.' if text else ''}{part}"
    return text


def validate_results(results: Any, source: str = "results") -> dict:
    """Check ``results`` against the schema; raise one readable error listing what is wrong.

    Raises:
        ResultsError: wrong schema version, missing fields (all named), or wrong types.
    """
    import jsonschema

    regenerate = "Please regenerate it with `hf-fisher evaluate`."
    if not isinstance(results, dict):
        raise ResultsError(
            f"{source}: expected a JSON object, got {type(results).__name__}. {regenerate}"
        )
    version = results.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ResultsError(
            f"{source}: schema_version {version!r} is not supported; this hf-fisher reads "
            f"schema_version {SCHEMA_VERSION}. {regenerate}"
        )
    validator = jsonschema.Draft202012Validator(results_schema())
    problems = sorted(validator.iter_errors(results), key=lambda e: list(e.absolute_path))
    missing = [
        _path([*problem.absolute_path, name])
        for problem in problems
        if problem.validator == "required"
        for name in problem.validator_value
        if isinstance(problem.instance, dict) and name not in problem.instance
    ]
    if missing:
        raise ResultsError(
            f"{source}: missing required field(s): {', '.join(missing)}. {regenerate}"
        )
    if problems:
        lines = [
            f"  - at {_path(p.absolute_path) or '(top level)'}: {p.message}" for p in problems[:10]
        ]
        raise ResultsError(f"{source} does not match the results schema:\n" + "\n".join(lines))
    return results


def to_jsonable(value: Any) -> Any:
    """Plain JSON values: numpy/torch scalars to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return to_jsonable(value.tolist())
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):
        return to_jsonable(value.item())
    return value


def atomic_write_text(path: Path, text: str, newline: str | None = None) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file.

    The temporary file is removed when the write fails (a full disk, say). ``newline`` is
    passed to ``open`` (``""`` keeps the CSV module's line endings as they are).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline=newline) as stream:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; results are to be shared
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_results(results: dict, out_dir: str | os.PathLike) -> Path:
    """Validate and write ``results.json`` plus ``per_sample.csv``; return the JSON path.

    Both files are written atomically (temporary file + rename), the table first: a failure
    never leaves a ``results.json`` that a partial run could not be resumed past.
    """
    results = validate_results(to_jsonable(results))
    directory = Path(out_dir)
    rows = [{column: row.get(column) for column in TABLE_COLUMNS} for row in results["per_sample"]]
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=TABLE_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(directory / TABLE_FILE, table.getvalue(), newline="")
    path = directory / RESULTS_FILE  # last: its presence marks a finished run
    atomic_write_text(path, json.dumps(results, indent=2, allow_nan=False) + "\n")
    return path


def load_results(path: str | os.PathLike) -> dict:
    """Read and validate a results file (or a directory holding ``results.json``).

    Raises:
        ResultsError: missing file, invalid JSON, or a schema mismatch.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise ResultsError(
            f"results file {str(path)!r} does not exist; create it with "
            "`hf-fisher evaluate --out DIR`"
        )
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ResultsError(
            f"{path}: not valid JSON ({error}); regenerate it with `hf-fisher evaluate`"
        ) from error
    return validate_results(results, source=str(path))
