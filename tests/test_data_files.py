"""Data files as users write them: ``--dataset FILE`` and ``--data-files``, checked before loading.

Files are written the way people make them (pandas, the csv module, JSON lines, a text file of
sentences, empty cells) and each run is compared with the same texts evaluated from an
in-memory ``datasets.Dataset``: the reader must not change what is measured.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pandas as pd
import pytest

from hf_fisher.cli import main
from hf_fisher.errors import DatasetError
from hf_fisher.options import data_files
from hf_fisher.results import load_results
from hf_fisher.runner import evaluate_robustness

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["a fine film", "dull and far too long", "the cast is great", "not worth it at all"]
LABELS = [0, 1, 2, 1]


def run_cli(*args: str | os.PathLike, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m hf_fisher ARGS`` in a fresh interpreter from ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "hf_fisher", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def refused_before_torch(arguments: list[str], cwd: Path) -> tuple[str, str]:
    """Run ``main(arguments)`` in a fresh interpreter: exit code, torch loaded?, stderr."""
    code = (
        "import sys\nfrom hf_fisher.cli import main\n"
        f"code = main({arguments!r})\nprint(code, 'torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    return done.stdout.strip(), done.stderr


@pytest.fixture(scope="module")
def truth(bert_dir: Path) -> list[float]:
    """lambda_max of TEXTS from an in-memory Dataset (no file reader involved)."""
    dataset = datasets.Dataset.from_dict({"text": TEXTS, "label": LABELS})
    report = evaluate_robustness(str(bert_dir), dataset, progress=False)
    return [record["spectral_norm"] for record in report.per_sample]


def write_pandas_csv(folder: Path) -> Path:
    path = folder / "sentences" / "test.csv"
    path.parent.mkdir()
    frame = pd.DataFrame({"text": [*TEXTS[:2], None, *TEXTS[2:]], "label": [0, 1, 2, 2, 1]})
    frame.to_csv(path, index=False)  # the None becomes an empty cell
    return path


def write_csv_module(folder: Path) -> Path:
    path = folder / "reviews.csv"
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["label", "review"])
        writer.writerows(zip(LABELS, TEXTS, strict=True))
    return path


def write_jsonl(folder: Path) -> Path:
    path = folder / "test.jsonl"
    lines = [json.dumps({"sentence": t, "label": y}) for t, y in zip(TEXTS, LABELS, strict=True)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_json_records(folder: Path) -> Path:
    path = folder / "test.json"
    pd.DataFrame({"text": TEXTS, "label": LABELS}).to_json(path, orient="records", lines=True)
    return path


def write_parquet(folder: Path) -> Path:
    path = folder / "test.parquet"
    pd.DataFrame({"text": TEXTS, "label": LABELS}).to_parquet(path)
    return path


def write_txt(folder: Path) -> Path:
    path = folder / "sentences.txt"
    path.write_text(TEXTS[0] + "\n\n" + "\n".join(TEXTS[1:]) + "\n", encoding="utf-8")
    return path


WRITERS = {
    "pandas-csv-with-empty-cell": (write_pandas_csv, [2], True),
    "csv-module": (write_csv_module, [], True),
    "jsonl": (write_jsonl, [], True),
    "json-lines-by-pandas": (write_json_records, [], True),
    "parquet": (write_parquet, [], True),
    "txt-with-blank-line": (write_txt, [1], False),
}
"""name -> (writer, rows skipped as empty, whether the file has labels)."""


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_a_data_file_is_a_dataset_and_measures_the_same(
    name: str, bert_dir: Path, truth: list[float], tmp_path: Path
) -> None:
    write, skipped, labelled = WRITERS[name]
    path = write(tmp_path)
    out = tmp_path / "out"
    code = main(
        ["evaluate", str(bert_dir), "--dataset", str(path), "--no-progress", "--out", str(out)]
    )
    assert code == 0
    results = load_results(out)  # validated against the schema
    assert results["dataset"]["name"] == str(path)
    assert results["dataset"]["split"] == "test"  # the file is the evaluated split
    assert [s["index"] for s in results["skipped"]] == skipped
    norms = [record["spectral_norm"] for record in results["per_sample"]]
    assert norms == pytest.approx(truth, rel=1e-5)
    assert results["dataset"]["labels_from"] == ("dataset" if labelled else "predictions")
    if labelled and name != "pandas-csv-with-empty-cell":
        assert [record["label"] for record in results["per_sample"]] == LABELS


def test_data_files_take_globs_split_mappings_and_a_folder(
    bert_dir: Path, truth: list[float], tmp_path: Path
) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    for number, start in enumerate((0, 2)):
        frame = pd.DataFrame({"text": TEXTS[start : start + 2], "label": LABELS[start : start + 2]})
        frame.to_json(parts / f"part-{number}.jsonl", orient="records", lines=True)
    train = pd.DataFrame({"label": [0], "review": ["only in train"]})
    train.to_csv(tmp_path / "train.csv", index=False)  # splits share their columns
    write_csv_module(tmp_path)
    runs = {
        "glob": ["--data-files", "parts/*.jsonl"],
        "mapping": ["--data-files", "train=train.csv,test=reviews.csv"],
        "mapping-train": ["--data-files", "train=train.csv,test=reviews.csv", "--split", "train"],
        "folder": ["--dataset", str(parts), "--data-files", "test=part-*.jsonl"],
    }
    results = {}
    cwd = Path.cwd()
    os.chdir(tmp_path)  # relative paths are relative to the working directory, as for users
    try:
        for name, flags in runs.items():
            out = tmp_path / f"out-{name}"
            assert (
                main(["evaluate", str(bert_dir), *flags, "--no-progress", "--out", str(out)]) == 0
            )
            results[name] = load_results(out)
    finally:
        os.chdir(cwd)
    for name in ("glob", "mapping", "folder"):
        norms = [record["spectral_norm"] for record in results[name]["per_sample"]]
        assert norms == pytest.approx(truth, rel=1e-5), name
    assert results["glob"]["dataset"]["data_files"] == {"test": ["parts/*.jsonl"]}
    assert results["glob"]["dataset"]["name"] == "parts/*.jsonl"
    assert results["mapping"]["dataset"]["data_files"] == {
        "train": ["train.csv"],
        "test": ["reviews.csv"],
    }
    assert results["mapping-train"]["dataset"]["split"] == "train"
    assert results["mapping-train"]["dataset"]["num_rows"] == 1
    assert results["folder"]["dataset"]["name"] == str(parts)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--dataset", "sentences/test.csv"], "--dataset sentences/test.csv: no such file or"),
        (["--dataset", "./my-data"], "--dataset ./my-data: no such file or directory"),
        (["--data-files", "nope/*.jsonl"], "--data-files nope/*.jsonl: no such file or direc"),
        (["--data-files", "test=missing.csv"], "--data-files missing.csv: no such file or dir"),
        (["--dataset", "table.xlsx"], "cannot read 'table.xlsx': data files must end in .csv"),
        (["--data-files", "a.csv,table.xlsx"], "cannot read 'table.xlsx'"),
        (["--dataset", "a.csv", "--dataset-revision", "v1"], "applies to Hub datasets"),
        (["--dataset", "a.csv", "--data-files", "b.csv"], "pass the files one way"),
    ],
    ids=[
        "missing-file",
        "missing-folder",
        "glob",
        "mapping",
        "suffix",
        "mixed",
        "revision",
        "both",
    ],
)
def test_bad_paths_are_one_line_errors_before_torch(
    arguments: list[str], message: str, tmp_path: Path
) -> None:
    (tmp_path / "a.csv").write_text("text,label\nfine,0\n")
    (tmp_path / "b.csv").write_text("text,label\nfine,0\n")
    (tmp_path / "table.xlsx").write_bytes(b"PK\x03\x04")
    out, err = refused_before_torch(["evaluate", "some-model", *arguments], tmp_path)
    assert out == "2 False", err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_help_lists_json_and_data_files(tmp_path: Path) -> None:
    done = run_cli("evaluate", "--help", cwd=tmp_path)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "json/jsonl" in text and ".jsonl, .parquet, .txt" in text
    assert "--data-files DATA_FILES" in text and "test=sentences/test.csv" in text


def test_data_files_parser_and_api_errors() -> None:
    assert data_files("test=a.csv, test=b.csv") == {"test": ["a.csv", "b.csv"]}
    with pytest.raises(argparse.ArgumentTypeError, match=r"split=path items \(all named\)"):
        data_files("a.csv,train=b.csv")
    with pytest.raises(DatasetError, match="go with a Hub name, a local folder or no dataset"):
        evaluate_robustness(dataset=datasets.Dataset.from_dict({"text": TEXTS}), data_files="x")


@pytest.mark.slow
def test_the_issue_command_from_a_fresh_interpreter(bert_dir: Path, tmp_path: Path) -> None:
    write_pandas_csv(tmp_path)
    done = run_cli(
        "evaluate", bert_dir, "--dataset", "sentences/test.csv", "--out", "out", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "dataset sentences/test.csv [test]" in done.stdout and "skipped 1" in done.stdout
    results = load_results(tmp_path / "out")
    assert results["summary"]["num_samples"] == 4
