"""What ``hf-fisher`` shows and returns: companion bars and summaries, --json, --version, the
default output directory, exit codes and -v/-q (issue 17, items 3-5)."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from hf_fisher.cli import main

REPO = Path(__file__).resolve().parents[1]
COMPANION_KNOBS = {
    "attacks": "l2",
    "attack_epsilons": (0.5, 1.0),
    "noise": True,
    "noise_draws": 2,
    "kl_check": True,
    "kl_radii": (0.01, 0.1, 1.0),
    "clever": True,
    "frequency": True,
    "frequency_bands": 4,
    "num_samples": 4,
}


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m hf_fisher ARGS`` in ``cwd`` with a fresh HF_HOME, offline."""
    hidden = ("HF_DATASETS_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS")
    env = {
        **{key: value for key, value in os.environ.items() if key not in hidden},
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "HF_HOME": str(cwd / "hf-home"),
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "hf_fisher", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# --- item 3: companion progress and summaries ------------------------------------------------


@pytest.fixture(scope="module")
def companion_run(tmp_path_factory: pytest.TempPathFactory):
    """Every image companion on 4 digits through the runner, recording each progress callback."""
    import hf_fisher.runner as runner
    from hf_fisher.options import CompanionOptions

    calls: dict[str, list[tuple[int, int]]] = {}

    @contextlib.contextmanager
    def recorder(companion):
        seen = calls.setdefault(companion.flag, [])
        yield lambda done, total: seen.append((done, total))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "_companion_bar", recorder)
        report = runner.evaluate_robustness(
            num_samples=5,
            companions=CompanionOptions(**COMPANION_KNOBS),
            out_dir=tmp_path_factory.mktemp("companions") / "run",
        )
    return report, calls


@pytest.mark.slow  # one run of every companion: ~25 s on 2 busy cores
def test_each_companion_reports_every_step_up_to_its_announced_total(companion_run) -> None:
    report, calls = companion_run
    results = report.results
    frequency_steps = math.ceil(2**4 * 4 / 256) + math.ceil(4 / 256)
    samples = 4  # --companion-samples: one chunk, which advances by 4 units per step
    per_sample_steps = {
        "--noise": len(results["noise_curves"]["sigmas"]),  # (sample, sigma) units
        "--kl-check": results["kl_check"]["draws"],  # (sample, draw) units
    }
    whole_steps = {"--clever": results["clever"]["num_batches"], "--frequency": frequency_steps}
    attack_calls = calls.pop("--attacks")
    expected = {
        flag: [(samples * done, samples * steps) for done in range(1, steps + 1)]
        for flag, steps in per_sample_steps.items()
    }
    expected |= {
        flag: [(done, steps) for done in range(1, steps + 1)] for flag, steps in whole_steps.items()
    }
    assert calls == expected
    # Attacks announce each epsilon, PGD at eps_max, every bisection round at the most, and the
    # baselines; rounds skipped because every bracket is already narrow count as done at once.
    stages = (
        len(results["attacks"]["epsilons"]) + results["attacks"]["budget"]["bisection_steps"] + 2
    )
    announced = samples * stages  # (sample, stage) units, advanced a chunk at a time
    done = [step for step, total in attack_calls]
    assert {total for _, total in attack_calls} == {announced}
    assert done == sorted(set(done)) and done[0] >= 1 and done[-1] == announced
    assert all(step % samples == 0 for step in done)


@pytest.mark.slow  # one run of every companion: ~25 s on 2 busy cores
def test_summary_prints_two_lines_per_companion_after_the_fisher_table(companion_run) -> None:
    report, _ = companion_run
    results = report.results
    lines = report.format_summary().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("companion measurements"))
    assert lines[start] == "companion measurements on 4 samples"
    assert lines[start - 1].startswith("flip_radius")  # the Fisher table's last row
    body = lines[start + 1 :]
    names = ["attacks", "noise_curves", "kl_check", "clever", "frequency"]
    assert [line.split()[0] for line in body[::2]] == names
    assert all(line.startswith(" " * 14) for line in body[1::2])
    pairs = zip(body[::2], body[1::2], strict=True)
    text = dict(zip(names, (" ".join(pair) for pair in pairs), strict=True))
    attacks = results["attacks"]
    pgd = ", ".join(
        f"{a:.2f} @ {e:.3g}"
        for a, e in zip(attacks["robust_accuracy"]["pgd"], attacks["epsilons"], strict=True)
    )
    assert f"l2 PGD robust accuracy {pgd}" in text["attacks"]
    spearman = attacks["correlations"]["spectral_norm"]["spearman"]
    assert f"Spearman with minimal eps: lambda_max {spearman:.2f} [" in text["attacks"]
    noise = results["noise_curves"]
    assert f"accuracy AUC {noise['auc_accuracy']:.3g}" in text["noise_curves"]
    crossing = noise["crossing_sigma"]
    if crossing is None:
        assert "stays below 0.25" in text["noise_curves"]
    elif crossing > 0:
        assert f"crosses 0.25 at sigma {crossing:.3g}" in text["noise_curves"]
    else:
        assert "is above 0.25 already at sigma 0" in text["noise_curves"]
    kl = results["kl_check"]
    assert f"{kl['median_relative_error'][-1]:.3g} at r=1" in text["kl_check"]
    assert f"up to r={kl['valid_radius']:g}" in text["kl_check"]
    clever = results["clever"]
    assert f"untargeted {clever['median_untargeted']:.3g}" in text["clever"]
    rho = clever["correlations"]["top2"]["spearman"]
    assert f"top-2 {rho:.2f} (expected < 0)" in text["clever"]
    frequency = results["frequency"]
    assert f"score {frequency['iaside']['score']:.3g} (4 bands)" in text["frequency"]
    shares = " ".join(f"{v:.2f}" for v in frequency["fisher"]["energy_share"])
    assert text["frequency"].endswith(shares)


@pytest.mark.slow  # one run of every companion: ~25 s on 2 busy cores
def test_summary_json_carries_each_companions_headline_numbers(companion_run) -> None:
    report, _ = companion_run
    results = report.results
    payload = json.loads(json.dumps(report.summary_json(), allow_nan=False))
    assert payload["summary"] == results["summary"]
    companions = payload["companions"]
    assert list(companions) == ["attacks", "noise_curves", "kl_check", "clever", "frequency"]
    assert companions["attacks"]["robust_accuracy"] == results["attacks"]["robust_accuracy"]
    assert companions["noise_curves"]["crossing_sigma"] == results["noise_curves"]["crossing_sigma"]
    assert companions["kl_check"]["valid_radius"] == results["kl_check"]["valid_radius"]
    assert (
        companions["clever"]["spearman"]["untargeted"]
        == (results["clever"]["correlations"]["untargeted"]["spearman"])
    )
    assert companions["frequency"]["score"] == results["frequency"]["iaside"]["score"]


@pytest.mark.slow  # one run of every companion: ~25 s on 2 busy cores
def test_headlines_say_so_when_a_value_is_undefined(companion_run) -> None:
    from hf_fisher.companions import companion_headlines
    from hf_fisher.headlines import noise_headline

    results = copy.deepcopy(companion_run[0].results)
    results["noise_curves"]["crossing_sigma"] = None
    results["kl_check"]["valid_radius"] = None
    at_zero = copy.deepcopy(results["noise_curves"])
    at_zero["crossing_sigma"] = 0.0
    results["attacks"]["correlations"]["spectral_norm"]["spearman"] = None
    results["frequency"]["iaside"] = None
    lines = {name: " ".join(h.lines) for name, h in companion_headlines(results).items()}
    assert "stays below 0.25 up to sigma 0.5" in lines["noise_curves"]
    assert "is above 0.25 already at sigma 0 (too few samples x draws" in " ".join(
        noise_headline(at_zero).lines
    )
    assert "at no radius of the grid (smallest r=0.01)" in lines["kl_check"]
    assert "Spearman with minimal eps: lambda_max n/a [" in lines["attacks"]
    assert "I-ASIDE spectral robustness score n/a" in lines["frequency"]


def test_only_the_runner_draws_progress_bars() -> None:
    """Measurements get a callback: no computing module imports tqdm (or report code)."""
    drawing = sorted(
        str(path.relative_to(REPO))
        for path in (REPO / "hf_fisher").rglob("*.py")
        if re.search(r"^\s*(from|import) tqdm", path.read_text(encoding="utf-8"), re.M)
    )
    assert drawing == ["hf_fisher/runner.py"]


# --- end to end through the command line -----------------------------------------------------


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three real digits as PNG files in class folders (datasets shows bars loading them)."""
    from hf_fisher.digits import load_digits_dataset

    root = tmp_path_factory.mktemp("folder")
    rows = load_digits_dataset("test").select(range(3))
    for position, (image, label) in enumerate(zip(rows["image"], rows["label"], strict=True)):
        (root / str(label)).mkdir(exist_ok=True)
        image.save(root / str(label) / f"{position}.png")
    return root


FOLDER_RUN = ("--split", "train", "--noise", "--noise-draws", "2", "--companion-samples", "2")
BAR = re.compile(r"\d+%\|")


@pytest.mark.slow
def test_progress_bars_of_every_stage_and_the_companion_summary(
    image_folder: Path, tmp_path: Path
) -> None:
    done = cli("evaluate", "--dataset", str(image_folder), *FOLDER_RUN, "--out", "x", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    bars = done.stderr.replace("\r", "\n")
    assert "Generating train split" in bars  # datasets' own bar
    assert re.search(r"Fisher: 100%\|\S+\| 3/3", bars)
    assert re.search(r"noise: 100%\|\S+\| 14/14", bars)  # 2 samples x 7 sigmas
    assert "noise_curves  accuracy AUC" in done.stdout
    assert "wrote x/results.json and per_sample.csv" in done.stdout


@pytest.mark.slow
def test_json_no_progress_verbose_run_to_the_default_directory(
    image_folder: Path, tmp_path: Path
) -> None:
    """stdout is one JSON document; stderr has hf-fisher's debug lines, no bars, no PIL/fsspec."""
    args = ("evaluate", "--dataset", str(image_folder), *FOLDER_RUN, "--json", "--no-progress")
    done = cli(*args, "-v", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    saved = Path(payload["results_file"])
    assert re.fullmatch(r"runs/digits-resnet-\d{8}T\d{6}Z/results\.json", saved.as_posix()), saved
    results = json.loads((tmp_path / saved).read_text())
    assert payload["summary"] == results["summary"]
    noise = results["noise_curves"]
    assert payload["companions"]["noise_curves"]["auc_brier"] == noise["auc_brier"]
    assert f"wrote {saved} and per_sample.csv" in done.stderr
    assert not BAR.search(done.stderr) and "examples/s" not in done.stderr, done.stderr
    debug = [line for line in done.stderr.splitlines() if line.startswith("DEBUG")]
    assert any(line.startswith("DEBUG hf_fisher.runner: loaded") for line in debug)
    assert all(line.startswith("DEBUG hf_fisher.") for line in debug), debug


def test_version_prints_the_package_version_without_torch() -> None:
    code = (
        "import sys\nfrom hf_fisher.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit as exit:\n"
        "    print(exit.code, 'torch' in sys.modules, file=sys.stderr)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.stdout == f"hf-fisher {metadata.version('hf-fisher')}\n"
    assert done.stderr.strip() == "0 False"


# --- item 4: exit codes and the default output directory -------------------------------------


def test_a_failed_load_is_exit_1_in_one_line_and_leaves_no_empty_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty-model").mkdir()
    code = main(["evaluate", "empty-model", "--dataset", "data", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("hf-fisher: error: could not read a model config from the directory")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert list((tmp_path / "runs").iterdir()) == []  # the default folder went again


def test_default_output_directory_is_named_after_the_model_and_utc_time() -> None:
    import datetime

    from hf_fisher.cli import default_out_dir

    stamp = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    assert default_out_dir(None, stamp) == Path("runs/digits-resnet-20260102T030405Z")
    assert default_out_dir("org/my model/", stamp) == Path("runs/my-model-20260102T030405Z")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resume"], "--resume needs --out: pass the directory of the run to continue"),
        (["--batch-size", "0"], "batch_size (--batch-size) must be an integer >= 1"),
    ],
    ids=["resume-without-out", "option-check"],
)
def test_usage_errors_are_exit_2_before_anything_is_saved(
    args: list[str], message: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-fisher: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_a_launched_run_without_out_is_refused_before_any_process_writes(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """Each process would name its own timestamped folder: under torchrun --out is required."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["evaluate", "--no-progress"]) == 2
    assert "under a launcher every process must write to the same directory: pass --out" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "runs").exists()


def fake_runner(monkeypatch: pytest.MonkeyPatch, action) -> None:
    import hf_fisher.runner

    def fake(model, dataset, **kwargs):
        action()
        raise AssertionError("the fake runner returns nothing")

    monkeypatch.setattr(hf_fisher.runner, "evaluate_robustness", fake)


def test_a_failed_run_that_saved_records_in_the_default_folder_says_how_to_resume(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    import hf_fisher.runner

    monkeypatch.chdir(tmp_path)

    def killed_midway(model, dataset, *, out_dir, **kwargs):
        (out_dir / "partial").mkdir()
        raise RuntimeError("killed")

    monkeypatch.setattr(hf_fisher.runner, "evaluate_robustness", killed_midway)
    assert main(["evaluate", "--no-progress"]) == 1
    (folder,) = (tmp_path / "runs").iterdir()
    hint, error = capsys.readouterr().err.splitlines()
    relative = folder.relative_to(tmp_path)
    assert hint == (
        f"hf-fisher: the records computed so far are in {relative}; continue with "
        f"--out {relative} --resume"
    )
    assert error.startswith("hf-fisher: error: RuntimeError: killed")


def test_an_unexpected_failure_is_one_line_exit_1_with_the_traceback_under_v(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)

    def crash() -> None:
        raise RuntimeError("CUDA error: an illegal memory access\nsecond line")

    fake_runner(monkeypatch, crash)
    assert main(["evaluate", "--no-progress"]) == 1
    assert capsys.readouterr().err == (
        "hf-fisher: error: RuntimeError: CUDA error: an illegal memory access "
        "(rerun with -v for the traceback)\n"
    )
    assert main(["evaluate", "--no-progress", "-v"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "in crash" in err
    assert err.endswith("hf-fisher: error: RuntimeError: CUDA error: an illegal memory access\n")


# --- item 5: -v / -q on every subcommand, our loggers only ------------------------------------


OURS = ["hf_fisher.runner DEBUG", "hf_fisher.runner WARNING"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["evaluate"], ["hf_fisher.runner WARNING", "PIL WARNING"]),
        (["evaluate", "-v"], [*OURS, "PIL WARNING"]),
        (["evaluate", "-q"], ["PIL WARNING"]),
        (["-v", "evaluate", "-v"], [*OURS, "PIL DEBUG", "PIL WARNING"]),
        (["evaluate", "-vv"], [*OURS, "PIL DEBUG", "PIL WARNING"]),
        (["-v", "evaluate", "-q"], ["hf_fisher.runner WARNING", "PIL WARNING"]),
    ],
    ids=["default", "v-after", "q-after", "v-before-and-after", "vv", "v-before-q-after"],
)
def test_verbosity_flags_before_or_after_the_subcommand(
    argv: list[str], expected: list[str], tmp_path, caplog, monkeypatch
) -> None:
    """-v/-q set hf-fisher's loggers only; third-party DEBUG lines need -vv."""
    monkeypatch.chdir(tmp_path)

    def log() -> None:
        for name in ("hf_fisher.runner", "PIL"):
            logging.getLogger(name).debug("debug line")
            logging.getLogger(name).warning("warning line")
        raise KeyError("stop")

    fake_runner(monkeypatch, log)
    before = logging.getLogger("hf_fisher").level, logging.getLogger().level
    assert main([*argv, "--no-progress"]) == 1
    seen = [f"{r.name} {r.levelname}" for r in caplog.records if r.message.endswith(" line")]
    assert seen == expected
    assert (logging.getLogger("hf_fisher").level, logging.getLogger().level) == before


@pytest.mark.parametrize("command", ["card", "submit", "leaderboard", "install-metric"])
def test_every_subcommand_accepts_v_and_q_after_its_name(command: str) -> None:
    from hf_fisher.cli import build_parser

    parser = build_parser()
    positional = {"card": ["r.json"], "submit": ["r.json", "--out", "s.json"], "leaderboard": ["d"]}
    args = parser.parse_args(["-q", command, *positional.get(command, []), "-vv"])
    assert (args.quiet, args.verbose_after) == (1, 2)
