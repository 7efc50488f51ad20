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

from hf_fisher.companions import CompanionOptions
from hf_fisher.errors import DatasetError, InputError, ResultsError


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


class _Interrupted(Exception):
    """Stands in for a kill in the middle of a run."""


def _forbidden(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the model was loaded before the options were checked")


def _mlp_inputs(count: int = 5) -> Any:
    import torch

    return torch.randn(count, 2, 3, 4, generator=torch.Generator().manual_seed(0))


def _before_loading(**options: Any) -> Callable[[Path], Any]:
    """``evaluate_robustness(**options)`` with model loading forbidden: it must fail first."""

    def run(tmp_path: Path) -> Any:
        from hf_fisher import runner

        kwargs = {"progress": False, **options}
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(runner, "load_classifier", _forbidden)
            if kwargs.pop("no_cuda", False):
                patch.setattr("torch.cuda.is_available", lambda: False)
            if kwargs.pop("one_cuda", False):
                patch.setattr("torch.cuda.is_available", lambda: True)
                patch.setattr("torch.cuda.device_count", lambda: 1)
            if kwargs.get("out_dir") == "READ-ONLY":  # root ignores chmod: fail the probe
                kwargs["out_dir"] = tmp_path / "out"

                def denied(*args: Any, **ignored: Any) -> Any:
                    raise PermissionError(13, "Permission denied")

                patch.setattr("tempfile.mkstemp", denied)
            elif kwargs.get("out_dir") == "A-FILE":
                kwargs["out_dir"] = tmp_path / "results.txt"
                kwargs["out_dir"].write_text("not a directory")
            return runner.evaluate_robustness(**kwargs)

    return run


def _cli_before_loading(*args: str) -> Callable[[Path], Any]:
    """``hf-fisher evaluate ARGS`` with model loading forbidden: (exit code, stderr)."""

    def run(tmp_path: Path) -> tuple[int, str]:
        import contextlib
        import io

        from hf_fisher import runner
        from hf_fisher.cli import main

        stderr = io.StringIO()
        with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
            patch.setattr(runner, "load_classifier", _forbidden)
            code = main(["evaluate", "--no-progress", *args])
        return code, stderr.getvalue()

    return run


def _one_line_exit_2(expected: str) -> Callable[[tuple[int, str]], None]:
    def check(outcome: tuple[int, str]) -> None:
        code, stderr = outcome
        assert code == 2
        assert stderr.count("\n") == 1 and stderr.startswith("hf-fisher: error: "), stderr
        assert expected in stderr, stderr

    return check


def _interrupted_run(out: Path, model: Any, dataset: Any, batches: int = 1, **options: Any):
    """Start a run into ``out`` and kill it after ``batches`` batches (as a kill would)."""
    import hf_fisher.spectrum as spectrum_module
    from hf_fisher.runner import evaluate_robustness

    real = spectrum_module.spectrum_of_batch
    calls = []

    def dies(*args: Any, **kwargs: Any) -> Any:
        if len(calls) == batches:
            raise _Interrupted
        calls.append(1)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(spectrum_module, "spectrum_of_batch", dies)
        with pytest.raises(_Interrupted):
            evaluate_robustness(model, dataset, out_dir=out, progress=False, **options)


def _auto_once_per_run(tmp_path: Path) -> list[str]:
    """71 samples in batches of 64 and 7, where ``auto`` per batch picks lanczos, then exact."""
    import hf_fisher.spectrum as spectrum_module
    from hf_fisher.runner import evaluate_robustness
    from hf_fisher.testing.models import build_mlp

    with pytest.MonkeyPatch.context() as patch:  # exact fits batches <= 10 of (K-1) x d floats
        patch.setattr(spectrum_module, "EXACT_MAX_ROW_BYTES", 10 * 3 * 24 * 4)
        report = evaluate_robustness(build_mlp(), _mlp_inputs(71), batch_size=64, progress=False)
    return [record["method"] for record in report.per_sample] + [
        report.results["settings"]["method"]
    ]


def _resume_with_new_weights(tmp_path: Path) -> Any:
    """Retrain (here: perturb) the weights in the model folder between kill and resume."""
    from safetensors.torch import load_file, save_file

    from hf_fisher.runner import evaluate_robustness
    from hf_fisher.testing.models import build_resnet

    model = build_resnet(tmp_path / "model", num_channels=1)
    data = _mlp_inputs(4)[:, :1, :2, :2].repeat(1, 1, 8, 8).clamp(0, 1)  # (4, 1, 16, 16)
    out = tmp_path / "run"
    _interrupted_run(out, model, data, batch_size=2)
    weights = load_file(model / "model.safetensors")
    save_file({k: v * 1.01 if v.is_floating_point() else v for k, v in weights.items()},
              model / "model.safetensors", metadata={"format": "pt"})  # fmt: skip
    return evaluate_robustness(model, data, out_dir=out, resume=True, batch_size=2, progress=False)


def _resume_with_replaced_dataset(tmp_path: Path) -> Any:
    """Replace the dataset saved at the same path (same number of rows) between kill and resume."""
    import os

    from hf_fisher.digits import load_digits_dataset
    from hf_fisher.runner import evaluate_robustness

    digits = load_digits_dataset("test")
    data = tmp_path / "data"
    digits.select(range(4)).save_to_disk(str(data))
    out = tmp_path / "run"
    _interrupted_run(out, None, str(data), batch_size=2)
    replaced = tmp_path / "replaced"
    digits.select(range(4, 8)).save_to_disk(str(replaced))
    for path in replaced.iterdir():
        os.replace(path, data / path.name)  # new files at the same path, as save_to_disk does
    return evaluate_robustness(None, str(data), out_dir=out, resume=True, batch_size=2,
                               progress=False)  # fmt: skip


def _resume_with_corrupt_middle_line(tmp_path: Path) -> Any:
    from hf_fisher.runner import evaluate_robustness
    from hf_fisher.testing.models import build_mlp

    out = tmp_path / "run"
    _interrupted_run(out, build_mlp(), _mlp_inputs(), batches=2, batch_size=1)
    records = out / "partial" / "records-0.jsonl"
    first, second = records.read_text().splitlines()
    records.write_text(f"{first}\n{{not json\n{second}\n")
    return evaluate_robustness(build_mlp(), _mlp_inputs(), out_dir=out, resume=True,
                               batch_size=1, progress=False)  # fmt: skip


def _resume_keeps_a_foreign_partial_folder(tmp_path: Path) -> tuple[str, list[str]]:
    from hf_fisher.errors import ResultsError
    from hf_fisher.runner import evaluate_robustness
    from hf_fisher.testing.models import build_mlp

    mine = tmp_path / "run" / "partial" / "notes.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("my own notes")
    outcome = []
    for flags in ({"resume": True}, {"overwrite": True}):
        with pytest.raises(ResultsError) as refused:
            evaluate_robustness(build_mlp(), _mlp_inputs(), out_dir=tmp_path / "run",
                                progress=False, **flags)  # fmt: skip
        outcome.append(str(refused.value))
    return mine.read_text(), outcome


def _killed_overwrite(tmp_path: Path) -> list[str]:
    """A finished run, then an ``--overwrite`` run killed before it finishes."""
    from hf_fisher.runner import evaluate_robustness
    from hf_fisher.testing.models import build_mlp

    out = tmp_path / "run"
    evaluate_robustness(build_mlp(), _mlp_inputs(), out_dir=out, progress=False)
    _interrupted_run(out, build_mlp(seed=1), _mlp_inputs(), overwrite=True, batch_size=2)
    return sorted(path.name for path in out.iterdir())


def _failed_results_write(tmp_path: Path) -> tuple[str, list[str], str]:
    """The disk fills up while results are written: a ResultsError saying where records are."""
    import errno
    import os

    from hf_fisher.errors import ResultsError
    from hf_fisher.runner import evaluate_robustness
    from hf_fisher.testing.models import build_mlp

    out = tmp_path / "run"
    real = os.replace

    def full(source: Any, target: Any) -> None:
        if Path(target).name == "results.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(source, target)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", full)
        with pytest.raises(ResultsError) as failed:
            evaluate_robustness(build_mlp(), _mlp_inputs(), out_dir=out, progress=False)
    left = sorted(path.name for path in out.iterdir())
    return str(failed.value), left, (out / "partial" / "records-0.jsonl").read_text()


class _FullDisk:
    """A record file on a full disk: every write fails."""

    def __init__(self, path: Any, *args: Any, **kwargs: Any) -> None:
        self.name = str(path)

    def write(self, text: str) -> int:
        import errno

        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self) -> None:
        pass


def _full_disk_while_appending(tmp_path: Path) -> Any:
    from hf_fisher import runner
    from hf_fisher.testing.models import build_mlp

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "open", _FullDisk, raising=False)  # the record files only
        return runner.evaluate_robustness(build_mlp(), _mlp_inputs(), out_dir=tmp_path / "run",
                                          progress=False)  # fmt: skip


def _interrupted_table_write(tmp_path: Path) -> tuple[str, str]:
    """Writing per_sample.csv fails half-way: the previous table must survive whole."""
    import csv
    import errno

    from hf_fisher.results import write_results
    from hf_fisher.runner import evaluate_robustness
    from hf_fisher.testing.models import build_mlp

    out = tmp_path / "run"
    results = evaluate_robustness(build_mlp(), _mlp_inputs(), out_dir=out, progress=False).results
    before = (out / "per_sample.csv").read_text()

    def dies(self: Any, rows: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.MonkeyPatch.context() as patch, pytest.raises(OSError):
        patch.setattr(csv.DictWriter, "writerows", dies)
        write_results(results, out)
    return before, (out / "per_sample.csv").read_text()


def _batch_rounding_within_tolerance(tmp_path: Path) -> float:
    """The same float32 samples in batches of 5 and of 1: the relative gap and the tolerance."""
    from hf_fisher.runner import evaluate_robustness
    from hf_fisher.testing import tolerance_for

    runs = [
        evaluate_robustness(num_samples=5, batch_size=size, progress=False).per_sample
        for size in (5, 1)
    ]
    gap = max(
        abs(a[key] - b[key]) / abs(b[key])
        for a, b in zip(*runs, strict=True)
        for key in ("spectral_norm", "trace")
    )
    return gap / tolerance_for("float32")


RUNNER_CASES: list[Case] = [
    # 2. auto is resolved once per run: a short last batch no longer switches to exact.
    Case(
        "runner-auto-once-per-run",
        _auto_once_per_run,
        check=lambda methods: (
            None if set(methods) == {"lanczos"} else pytest.fail(f"methods {set(methods)}")
        ),
    ),
    # 11. --resume compares the content of the weights and of the data, not their paths.
    Case(
        "runner-resume-changed-weights",
        _resume_with_new_weights,
        error=ResultsError,
        match=r"(?s)refusing to resume.*model\.content\.files\.model\.safetensors: partial",
    ),
    Case(
        "runner-resume-replaced-dataset",
        _resume_with_replaced_dataset,
        error=ResultsError,
        match=r"(?s)refusing to resume.*dataset\.content\.sha256: partial run has",
    ),
    # 12. Options are checked before the model is loaded, with a typed error.
    Case(
        "runner-batch-size-0",
        _before_loading(batch_size=0),
        InputError,
        r"batch_size \(--batch-size\) must be an integer >= 1, got 0",
    ),
    Case(
        "runner-batch-size-negative",
        _before_loading(batch_size=-1),
        InputError,
        r"batch_size \(--batch-size\) must be an integer >= 1, got -1",
    ),
    Case(
        "runner-kl-tau-negative",
        _before_loading(kl_tau=-1.0),
        InputError,
        r"kl_tau \(--kl-tau\) must be a finite number > 0, got -1.0",
    ),
    Case(
        "runner-kl-tau-zero",
        _before_loading(kl_tau=0.0),
        InputError,
        r"kl_tau \(--kl-tau\) must be a finite number > 0, got 0.0",
    ),
    Case(
        "runner-kl-tau-nan",
        _before_loading(kl_tau=float("nan")),
        InputError,
        r"kl_tau \(--kl-tau\) must be a finite number > 0, got nan",
    ),
    Case(
        "runner-companion-samples-negative",
        _before_loading(companions=CompanionOptions(noise=True, num_samples=-3)),
        InputError,
        r"num_samples \(--companion-samples\) must be an integer >= 1, got -3",
    ),
    Case(
        "runner-device-bogus",
        _before_loading(device="bogus"),
        InputError,
        r"--device 'bogus' is not a device torch knows.*use cpu, cuda or cuda:N",
    ),
    Case(
        "runner-device-cuda-missing",
        _before_loading(device="cuda", no_cuda=True),
        InputError,
        r"--device 'cuda' asks for CUDA, but torch .* sees no CUDA device",
    ),
    Case(
        "runner-device-index-missing",
        _before_loading(device="cuda:3", one_cuda=True),
        InputError,
        r"--device 'cuda:3': this machine has 1 CUDA device\(s\), cuda:0 to cuda:0",
    ),
    Case(
        "runner-top-k-0",
        _before_loading(top_k=0),
        InputError,
        r"top_k \(--top-k\) must be an integer >= 1, got 0",
    ),
    Case(
        "runner-num-probes-0",
        _before_loading(num_probes=0),
        InputError,
        r"num_probes \(--num-probes\) must be an integer >= 1, got 0",
    ),
    Case(
        "runner-tol-0",
        _before_loading(tol=0.0),
        InputError,
        r"tol \(--tol\) must be a finite number > 0, got 0.0",
    ),
    Case(
        "runner-tol-negative",
        _before_loading(tol=-1e-3),
        InputError,
        r"tol \(--tol\) must be a finite number > 0, got -0.001",
    ),
    Case(
        "runner-max-iter-0",
        _before_loading(max_iter=0),
        InputError,
        r"max_iter \(--max-iter\) must be an integer >= 1, got 0",
    ),
    Case(
        "runner-num-queries-2",
        _before_loading(black_box=True, num_queries=2),
        InputError,
        r"num_queries \(--num-queries\) must be an integer >= 3, got 2",
    ),
    Case(
        "runner-num-samples-0",
        _before_loading(num_samples=0),
        DatasetError,
        r"num_samples must be positive, got 0",
    ),
    Case(
        "runner-out-read-only",
        _before_loading(out_dir="READ-ONLY"),
        ResultsError,
        r"cannot write to --out .*out: Permission denied; choose a directory you can write",
    ),
    Case(
        "runner-out-is-a-file",
        _before_loading(out_dir="A-FILE"),
        ResultsError,
        r"--out .*results\.txt is a file; pass a directory",
    ),
    Case(
        "runner-cli-batch-size-0",
        _cli_before_loading("--batch-size", "0"),
        check=_one_line_exit_2("batch_size (--batch-size) must be an integer >= 1, got 0"),
    ),
    Case(
        "runner-cli-device-bogus",
        _cli_before_loading("--device", "bogus"),
        check=_one_line_exit_2("--device 'bogus' is not a device torch knows"),
    ),
    # 12. Damaged or foreign files: clear errors, and nothing of the user's is deleted.
    Case(
        "runner-resume-corrupt-middle-line",
        _resume_with_corrupt_middle_line,
        ResultsError,
        r"records-0\.jsonl, line 2: not a record hf-fisher wrote .*rerun with --overwrite",
    ),
    Case(
        "runner-foreign-partial-folder-is-kept",
        _resume_keeps_a_foreign_partial_folder,
        check=lambda outcome: (
            None
            if outcome[0] == "my own notes"
            and all("was not made by hf-fisher" in message for message in outcome[1])
            else pytest.fail(repr(outcome))
        ),
    ),
    Case(
        "runner-killed-overwrite-leaves-no-old-results",
        _killed_overwrite,
        check=lambda names: None if names == ["partial"] else pytest.fail(f"left behind: {names}"),
    ),
    Case(
        "runner-disk-full-at-the-end",
        _failed_results_write,
        check=lambda outcome: (
            None
            if "every per-sample record is kept in" in outcome[0]
            and "--resume" in outcome[0]
            and outcome[1] == ["partial", "per_sample.csv"]  # no .results.json.* temp file
            and outcome[2].count("\n") == 5
            else pytest.fail(repr(outcome))
        ),
    ),
    Case(
        "runner-disk-full-while-appending",
        _full_disk_while_appending,
        ResultsError,
        r"could not append records to .*records-0\.jsonl \(\[Errno 28\] No space left on "
        r"device\); the records written so far are kept there.*--resume",
    ),
    Case(
        "runner-table-write-is-atomic",
        _interrupted_table_write,
        check=lambda tables: None if tables[0] == tables[1] else pytest.fail(repr(tables)),
    ),
    # 12. Tolerances follow the dtype: float32 batch rounding sits well inside tolerance_for.
    Case(
        "runner-float32-batch-rounding-within-tolerance",
        _batch_rounding_within_tolerance,
        check=lambda ratio: None if ratio < 0.5 else pytest.fail(f"gap / tolerance {ratio}"),
    ),
]

# --- report: cards, submissions, leaderboard ----------------------------------------------

REPORT_CASES: list[Case] = []


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
