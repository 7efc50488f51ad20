"""``hf-fisher evaluate`` end to end: images, text, text pairs, the results file, bad input."""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import huggingface_hub.constants
import jsonschema
import pytest
import torch

from hf_fisher.adapters import load_classifier
from hf_fisher.cli import main
from hf_fisher.digits import DEFAULT_MODEL_DIR, load_digits_dataset
from hf_fisher.errors import ResultsError
from hf_fisher.results import load_results, results_schema
from hf_fisher.testing.dense import dense_fisher, dense_spectrum

REPO = Path(__file__).resolve().parents[1]
DEFAULT = str(DEFAULT_MODEL_DIR)
TEXTS = [
    "the movie was wonderful",
    "a dull film with a terrible plot",
    "the service was slow",
    "i loved every minute of this story",
    "nothing happened",
    "great music and a great cast",
]
LABELS = [0, 1, 2, 0, 1, 2]


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs without --out save under ./runs/: keep them out of the checkout."""
    monkeypatch.chdir(tmp_path)


def evaluate(*args: str | os.PathLike) -> int:
    return main(["evaluate", "--no-progress", *map(str, args)])


def check_table_matches(out_dir: Path) -> dict:
    """results.json validates, and per_sample.csv holds exactly its per-sample numbers."""
    results = load_results(out_dir)
    with open(out_dir / "per_sample.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == len(results["per_sample"])
    for row, record in zip(rows, results["per_sample"], strict=True):
        assert int(row["index"]) == record["index"]
        assert int(row["label"]) == record["label"]
        assert int(row["predicted"]) == record["predicted"]
        assert row["correct"] == str(record["correct"])
        for key in ("probability", "spectral_norm", "trace", "kl_radius"):
            assert float(row[key]) == record[key]
    return results


def numbers(results: dict, key: str = "spectral_norm") -> list[float]:
    return [record[key] for record in results["per_sample"]]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "run"
    assert evaluate("--num-samples", 6, "--batch-size", 4, "--out", out) == 0
    return out


@pytest.mark.slow
def test_readme_command_through_the_module_entry_point(tmp_path: Path) -> None:
    """The README's main job, ``hf-fisher evaluate --out runs/digits``, on 8 samples."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "hf_fisher", "evaluate", "--out", "runs/digits"]
    done = subprocess.run(
        [*command, "--num-samples", "8", "--no-progress"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "samples 8  accuracy" in done.stdout
    assert "spectral_norm" in done.stdout and "kl_radius" in done.stdout
    assert "wrote runs/digits/results.json" in done.stdout
    results = check_table_matches(tmp_path / "runs" / "digits")
    assert results["dataset"]["name"] == "sklearn-digits"
    assert results["summary"]["num_samples"] == 8
    assert sorted(p.name for p in (tmp_path / "runs" / "digits").iterdir()) == [
        "per_sample.csv",
        "results.json",
    ]


def test_in_process_run_prints_summary_and_writes_valid_files(
    digits_run: Path, capsys: pytest.CaptureFixture
) -> None:
    results = check_table_matches(digits_run)
    assert results["summary"]["num_samples"] == 6
    assert results["dataset"]["labels_from"] == "dataset"
    assert results["settings"]["method"] == "exact"
    rerun = digits_run.parent / "again"
    assert evaluate("--num-samples", 6, "--batch-size", 4, "--out", rerun) == 0
    printed = capsys.readouterr().out
    mean = load_results(rerun)["summary"]["metrics"]["trace"]["mean"]
    assert f"{mean:.4g}" in printed
    assert "samples 6  accuracy" in printed
    assert numbers(load_results(rerun)) == numbers(results)


def test_results_file_matches_its_json_schema(digits_run: Path) -> None:
    results = json.loads((digits_run / "results.json").read_text())
    validator = jsonschema.Draft202012Validator(results_schema())
    validator.validate(results)
    broken = copy.deepcopy(results)
    broken["per_sample"][0]["spectral_norm"] = -1.0
    assert not validator.is_valid(broken)
    missing = copy.deepcopy(results)
    del missing["summary"]
    assert not validator.is_valid(missing)
    (digits_run.parent / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ResultsError, match=r"at per_sample\[0\]\.spectral_norm"):
        load_results(digits_run.parent / "broken.json")
    (digits_run.parent / "missing.json").write_text(json.dumps(missing))
    with pytest.raises(ResultsError, match="missing required field.*summary"):
        load_results(digits_run.parent / "missing.json")


# --- text classifiers with a locally trained tokenizer ---------------------------------------


def text_fisher(model_dir: Path, inputs: list) -> tuple[torch.Tensor, torch.Tensor]:
    """lambda_max and trace of F for each text on its own (no padding), from dense jacrev."""
    classifier = load_classifier(model_dir)
    norms, traces = [], []
    for item in inputs:
        batch = classifier.prepare([item])
        eigenvalues, trace = dense_spectrum(
            dense_fisher(classifier.logit_fn(batch), batch.inputs, batch.space_mask)
        )
        norms.append(eigenvalues[0, 0])
        traces.append(trace[0])
    return torch.stack(norms), torch.stack(traces)


def test_text_dataset_from_save_to_disk_and_csv_agree(bert_dir: Path, tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": TEXTS, "label": LABELS}).save_to_disk(str(saved))
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    with open(csv_dir / "test.csv", "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["label", "text"])
        writer.writerows(zip(LABELS, TEXTS, strict=True))
    runs = {}
    for name, dataset in (("saved", saved), ("csv", csv_dir)):
        out = tmp_path / f"out-{name}"
        assert evaluate(bert_dir, "--dataset", dataset, "--batch-size", 4, "--out", out) == 0
        runs[name] = check_table_matches(out)
        assert runs[name]["dataset"]["input_columns"] == ["text"]
        assert runs[name]["dataset"]["label_column"] == "label"
        assert runs[name]["settings"]["input_space"] == "embeddings"
        assert [r["label"] for r in runs[name]["per_sample"]] == LABELS
    assert runs["csv"]["dataset"]["name"] == str(csv_dir)
    for a, b in zip(runs["saved"]["per_sample"], runs["csv"]["per_sample"], strict=True):
        assert a["spectral_norm"] == pytest.approx(b["spectral_norm"], rel=1e-6)
    norms, traces = text_fisher(bert_dir, TEXTS)
    assert numbers(runs["saved"]) == pytest.approx(norms.tolist(), rel=1e-3)
    assert numbers(runs["saved"], "trace") == pytest.approx(traces.tolist(), rel=1e-3)


def test_text_pair_columns_are_detected_and_used_as_pairs(bert_dir: Path, tmp_path: Path) -> None:
    first, second = TEXTS[:4], TEXTS[2:6]
    pairs = datasets.Dataset.from_dict(
        {"idx": [0, 1, 2, 3], "sentence1": first, "sentence2": second, "label": LABELS[:4]}
    )
    pairs.save_to_disk(str(tmp_path / "pairs"))
    out = tmp_path / "out"
    assert evaluate(bert_dir, "--dataset", tmp_path / "pairs", "--out", out) == 0
    results = check_table_matches(out)
    assert results["dataset"]["input_columns"] == ["sentence1", "sentence2"]
    norms, _ = text_fisher(bert_dir, list(zip(first, second, strict=True)))
    assert numbers(results) == pytest.approx(norms.tolist(), rel=1e-3)
    single = tmp_path / "single"
    assert (
        evaluate(
            bert_dir,
            "--dataset",
            tmp_path / "pairs",
            "--input-column",
            "sentence1",
            "--out",
            single,
        )
        == 0
    )
    alone = load_results(single)
    assert alone["dataset"]["input_columns"] == ["sentence1"]
    assert numbers(alone) != pytest.approx(numbers(results), rel=1e-3)


# --- bad input -----------------------------------------------------------------------------


def test_missing_column_is_one_line_error_with_exit_code_1(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    load_digits_dataset("test").select(range(3)).save_to_disk(str(tmp_path / "digits"))
    capsys.readouterr()
    code = evaluate(DEFAULT, "--dataset", tmp_path / "digits", "--input-column", "img")
    captured = capsys.readouterr()
    assert code == 1  # found once the data are loaded: a failed run, not a usage error
    assert captured.err.strip().splitlines() == [
        "hf-fisher: error: column 'img' does not exist; the dataset has columns ['image', 'label']"
    ]
    assert "Traceback" not in captured.err
    code = evaluate(DEFAULT, "--dataset", tmp_path / "digits", "--label-column", "target")
    assert code == 1
    assert "column 'target' does not exist" in capsys.readouterr().err


def test_csv_without_the_requested_split_names_the_splits(
    bert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "data.csv").write_text("text,label\nhello there,1\n")
    assert evaluate(bert_dir, "--dataset", tmp_path / "csv") == 1
    assert "has no split 'test'; available splits: train (choose one with --split)" in (
        capsys.readouterr().err
    )
    assert evaluate(bert_dir, "--dataset", tmp_path / "csv", "--split", "train") == 0


def test_more_samples_than_rows_warns_and_evaluates_all(tmp_path: Path) -> None:
    load_digits_dataset("test").select(range(4)).save_to_disk(str(tmp_path / "digits"))
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="--num-samples 9 is larger than the split"):
        code = evaluate(DEFAULT, "--dataset", tmp_path / "digits", "--num-samples", 9, "--out", out)
    assert code == 0
    assert [r["index"] for r in check_table_matches(out)["per_sample"]] == [0, 1, 2, 3]


def write_imagefolder(root: Path, count: int) -> None:
    """Real digit scans as PNG files in class folders, plus one corrupt PNG."""
    rows = load_digits_dataset("test").select(range(count))
    for position, (image, label) in enumerate(zip(rows["image"], rows["label"], strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{position:02d}.png")
    (root / str(rows["label"][0]) / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")


def test_corrupt_images_are_skipped_and_the_rest_evaluated(tmp_path: Path) -> None:
    root = tmp_path / "folder"
    write_imagefolder(root, 5)
    out = tmp_path / "out"
    assert evaluate(DEFAULT, "--dataset", root, "--split", "train", "--out", out) == 0
    results = check_table_matches(out)
    loaded = datasets.load_dataset(str(root), split="train").cast_column(
        "image", datasets.Image(decode=False)
    )
    paths = [Path(entry["path"]).name for entry in loaded["image"]]
    broken = paths.index("broken.png")
    assert [s["index"] for s in results["skipped"]] == [broken]
    assert "unreadable input" in results["skipped"][0]["reason"]
    good = [i for i in range(len(paths)) if i != broken]
    assert [r["index"] for r in results["per_sample"]] == good
    assert results["summary"]["num_samples"] == 5
    # The same images as an in-memory dataset give the same numbers.
    readable = loaded.select(good).cast_column("image", datasets.Image())
    reference = main_numbers(DEFAULT, readable)
    assert numbers(results) == pytest.approx(reference, rel=1e-5)


def main_numbers(model: str, dataset: datasets.Dataset) -> list[float]:
    from hf_fisher.runner import evaluate_robustness

    report = evaluate_robustness(model, dataset, progress=False)
    return [record["spectral_norm"] for record in report.per_sample]


def test_corrupt_image_bytes_in_a_dataset_are_skipped() -> None:
    from hf_fisher.runner import evaluate_robustness

    rows = load_digits_dataset("test").select(range(3))
    stream = io.BytesIO()
    rows[0]["image"].save(stream, format="PNG")
    images = [{"bytes": stream.getvalue()}, {"bytes": b"garbage"}, {"bytes": stream.getvalue()}]
    broken = datasets.Dataset.from_dict(
        {"image": images, "label": [3, 3, 3]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    report = evaluate_robustness(dataset=broken, progress=False)
    assert [s["index"] for s in report.results["skipped"]] == [1]
    assert [r["index"] for r in report.per_sample] == [0, 2]
    first, second = (record["spectral_norm"] for record in report.per_sample)
    assert first == pytest.approx(second, rel=1e-6)
    assert "skipped 1" in report.format_summary()


def test_existing_results_are_refused_unless_overwrite(
    digits_run: Path, capsys: pytest.CaptureFixture
) -> None:
    before = (digits_run / "results.json").read_text()
    assert evaluate("--num-samples", 3, "--out", digits_run) == 1
    err = capsys.readouterr().err
    assert "already holds results.json; pass --resume to continue a partial run or --overwrite" in (
        err
    )
    assert (digits_run / "results.json").read_text() == before
    copy_dir = digits_run.parent / "overwritten"
    copy_dir.mkdir()
    (copy_dir / "results.json").write_text(before)
    assert evaluate("--num-samples", 3, "--out", copy_dir, "--overwrite") == 0
    assert load_results(copy_dir)["summary"]["num_samples"] == 3


def test_hub_dataset_offline_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert evaluate(DEFAULT, "--dataset", "someone/not-a-local-dataset") == 1
    err = capsys.readouterr().err
    assert "hf-fisher: error: could not load dataset 'someone/not-a-local-dataset'" in err
    assert "pass a local directory or a datasets.Dataset" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("flag", "value"), [("--dtype", "float16"), ("--method", "eigen")], ids=["dtype", "method"]
)
def test_unknown_choice_is_a_usage_error(
    flag: str, value: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as stopped:
        evaluate(flag, value, "--num-samples", 2)
    assert stopped.value.code == 2
    assert f"argument {flag}: invalid choice: '{value}'" in capsys.readouterr().err


# Options once: the flags are generated from the option dataclasses.

LAZY_PACKAGE = """
import sys, types
package = types.ModuleType("hf_fisher")  # as a lazy hf_fisher/__init__.py leaves it
package.__path__ = [{path!r}]
sys.modules["hf_fisher"] = package
"""


@pytest.mark.parametrize(
    ("statement", "forbidden"),
    [
        ("import hf_fisher.options", ("torch", "transformers", "datasets", "numpy")),
        (
            "from hf_fisher.cli import build_parser; build_parser().parse_args(['evaluate'])",
            ("torch", "transformers", "datasets"),
        ),
    ],
    ids=["options", "parser"],
)
def test_options_and_parser_import_without_torch(statement: str, forbidden: tuple) -> None:
    code = (
        LAZY_PACKAGE.format(path=str(REPO / "hf_fisher"))
        + statement
        + f"\nprint(sorted(m for m in {forbidden!r} if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_generated_flags_keep_their_names_defaults_and_choices() -> None:
    from hf_fisher.cli import build_parser
    from hf_fisher.options import METHODS, CompanionOptions, EstimatorOptions, RunOptions

    parser = build_parser()
    evaluate = parser._subparsers._group_actions[0].choices["evaluate"]  # noqa: SLF001
    flags = {flag: action for action in evaluate._actions for flag in action.option_strings}  # noqa: SLF001
    for flag in (
        "--num-samples", "--batch-size", "--kl-tau", "--method", "--black-box", "--top-k",
        "--max-iter", "--tol", "--num-queries", "--num-probes", "--seed", "--attacks",
        "--attack-epsilons", "--eps-max", "--noise", "--noise-sigmas", "--noise-kind",
        "--noise-draws", "--kl-check", "--kl-radii", "--clever", "--clever-radius",
        "--frequency", "--frequency-bands", "--frequency-fill", "--frequency-pixel-map",
        "--bound", "--companion-samples",
    ):  # fmt: skip
        assert flag in flags, flag
    assert tuple(flags["--method"].choices) == METHODS
    assert tuple(flags["--attacks"].choices) == ("l2", "linf", "cw")
    args = parser.parse_args(["evaluate"])
    assert EstimatorOptions.from_namespace(args) == EstimatorOptions()
    assert RunOptions.from_namespace(args) == RunOptions()
    assert CompanionOptions.from_namespace(args) == CompanionOptions()
    assert (args.batch_size, args.tol, args.num_probes, args.kl_tau) == (32, 1e-3, 16, 0.01)
    args = parser.parse_args(
        ["evaluate", "--method", "lanczos", "--top-k", "3", "--max-iter", "7", "--black-box",
         "--companion-samples", "5", "--num-samples", "9", "--noise-sigmas", "0.1,0.2"]
    )  # fmt: skip
    assert EstimatorOptions.from_namespace(args) == EstimatorOptions(
        method="lanczos", top_k=3, max_iter=7, black_box=True
    )
    assert RunOptions.from_namespace(args).num_samples == 9
    companions = CompanionOptions.from_namespace(args)
    assert companions.num_samples == 5 and list(companions.noise_sigmas) == [0.1, 0.2]


def test_cli_hands_one_options_object_to_the_runner(monkeypatch, capsys) -> None:
    import hf_fisher.runner
    from hf_fisher.options import EstimatorOptions

    seen = {}

    class Report:
        out_dir = None

        def format_summary(self) -> str:
            return "summary"

    def fake(model, dataset, **kwargs):
        seen.update(kwargs)
        return Report()

    monkeypatch.setattr(hf_fisher.runner, "evaluate_robustness", fake)
    assert main(["evaluate", "--method", "power", "--tol", "1e-4", "--kl-tau", "0.2"]) == 0
    assert seen["options"] == EstimatorOptions(method="power", tol=1e-4)
    assert (seen["kl_tau"], seen["batch_size"], seen["num_samples"]) == (0.2, 32, None)
    assert "method" not in seen and "top_k" not in seen  # only through options=
    assert capsys.readouterr().out.strip() == "summary"


def test_every_option_has_a_default_a_help_text_and_a_flag() -> None:
    from dataclasses import MISSING, fields

    from hf_fisher.options import CompanionOptions, EstimatorOptions, RunOptions, flag_of

    flags = []
    for options in (EstimatorOptions, RunOptions, CompanionOptions):
        for item in fields(options):
            assert item.default is not MISSING and item.metadata["help"], item.name
            flags.append(flag_of(item))
    assert len(flags) == len(set(flags))  # no two knobs share a flag


def test_building_the_parser_and_an_argument_error_load_no_torch() -> None:
    code = (
        "import sys\nfrom hf_fisher.cli import build_parser, main\nbuild_parser()\n"
        "try:\n    main(['evaluate', '--top-k', 'many'])\nexcept SystemExit as exit:\n"
        "    print(exit.code, 'torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "2 False", done.stderr
    assert "argument --top-k: invalid int value: 'many'" in done.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--batch-size", "0"], "batch_size (--batch-size) must be an integer >= 1"),
        (["--kl-tau", "nan"], "kl_tau (--kl-tau) must be a finite number > 0"),
        (["--companion-samples", "-3"], "--companion-samples"),
        (["--black-box", "--method", "exact"], "needs gradients but black_box=True"),
        (["--candidate-labels", "cat"], "pass at least two non-empty class names"),
        (["--candidate-labels", "a,b", "--hypothesis-template", "x"], "exactly one {}"),
        (["--max-memory", "4XB"], "max_memory (--max-memory) got '4XB'"),
    ],
    ids=[
        "batch-size", "kl-tau", "companion-samples", "black-box-method", "one-candidate-label",
        "template-without-slot", "max-memory",
    ],
)
def test_bad_option_values_are_refused_before_torch_is_imported(flags, message) -> None:
    code = (
        "import sys\nfrom hf_fisher.cli import main\n"
        f"code = main(['evaluate', '--no-progress', *{flags!r}])\n"
        "print(code, 'torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "2 False", done.stderr
    assert message in done.stderr and done.stderr.count("\n") == 1
