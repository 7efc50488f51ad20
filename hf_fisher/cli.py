"""The ``hf-fisher`` command line (also ``python -m hf_fisher``).

Exit codes: 0 success; 2 the command line is wrong (argparse errors and option checks, raised
before any model or data is loaded); 1 the run failed (model/data load, compute, writing). Every
error is one ``hf-fisher: error:`` line on stderr; ``-v`` adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import re
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path

from hf_fisher.errors import HfFisherError, InputError
from hf_fisher.options import (
    CompanionOptions,
    EstimatorOptions,
    RunOptions,
    SourceOptions,
    ZeroShotOptions,
)
from hf_fisher.paper_compat import apply_paper_compat, apply_paper_compat_companions
from hf_fisher.report.cli import add_card_parser, add_leaderboard_parser, add_submit_parser


def add_evaluate_parser(subparsers) -> None:
    """``hf-fisher evaluate``: the main job."""
    parser = subparsers.add_parser(
        "evaluate",
        help="per-sample Fisher robustness of a classifier on a dataset split",
        description="Evaluate input-space Fisher robustness. With no MODEL, evaluates the "
        "bundled digits ResNet on its held-out split (offline).",
    )
    parser.add_argument("model", nargs="?", help="Hub id or local directory (default: bundled)")
    parser.add_argument(
        "--dataset",
        help="Hub name, local directory (imagefolder, parquet, csv, json/jsonl, save_to_disk) "
        "or data file (.csv, .tsv, .json, .jsonl, .parquet, .txt, .arrow)",
    )
    parser.add_argument("--config", help="dataset configuration name")
    parser.add_argument("--split", help="dataset split (default: test)")
    SourceOptions.add_arguments(parser)
    RunOptions.add_arguments(parser)
    EstimatorOptions.add_arguments(parser)
    parser.add_argument(
        "--input-column",
        action="append",
        dest="input_columns",
        help="input column (repeat for text pairs); default: detected",
    )
    parser.add_argument("--label-column", help="label column; default: detected")
    parser.add_argument(
        "--label-mapping",
        metavar="JSON",
        help="model label -> dataset label (id or name), as a JSON object or a .json file, "
        'e.g. \'{"Ankle boot": "boots"}\'; default: dataset label names matched to the '
        "model's by name, integer labels taken as the model's ids",
    )
    parser.add_argument("--input-space", choices=("pixels", "normalized", "embeddings"))
    ZeroShotOptions.add_arguments(parser)
    parser.add_argument(
        "--position",
        choices=("last", "all"),
        help="causal language models: the next token after each text (last, default) or "
        "every next token of the text, teacher-forced (all)",
    )
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument(
        "--out",
        help="output directory for results.json and per_sample.csv (default: "
        "runs/<model-name>-<UTC timestamp>, printed at the end)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the summary (with the companions' headline numbers) as JSON on stdout; "
        "everything else goes to stderr",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing results")
    parser.add_argument("--resume", action="store_true", help="continue a killed run")
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="hide every progress bar (Fisher, companions, datasets, transformers, Hub)",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow custom model code from the Hub (off by default)",
    )
    trust = parser.add_argument_group(
        "companion measurements (run on the first --companion-samples evaluated samples)"
    )
    CompanionOptions.add_arguments(trust)
    parser.set_defaults(func=run_evaluate)


def _companions(args: argparse.Namespace) -> CompanionOptions:
    return CompanionOptions.from_namespace(args)


def default_out_dir(model: str | None, now: datetime.datetime | None = None) -> Path:
    """``runs/<model-name>-<UTC timestamp>``: where a run without ``--out`` is saved.

    >>> stamp = datetime.datetime(2026, 11, 30, 4, 5, 6, tzinfo=datetime.timezone.utc)
    >>> default_out_dir("google/vit-base-patch16-224", stamp).as_posix()
    'runs/vit-base-patch16-224-20261130T040506Z'
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    name = Path(model).name if model else "digits-resnet"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"
    return Path("runs") / f"{name}-{now.strftime('%Y%m%dT%H%M%SZ')}"


def _out_dir(args: argparse.Namespace) -> Path:
    """The output directory; the default one is removed again if the run fails before saving.

    Raises:
        InputError: ``--resume`` or a multi-process launch without ``--out``.
    """
    if args.out is not None:
        return Path(args.out)
    if args.resume:
        raise InputError("--resume needs --out: pass the directory of the run to continue")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError(
            "under a launcher every process must write to the same directory: pass --out DIR"
        )
    out_dir = default_out_dir(args.model)
    args.on_failure = lambda: _after_failure(out_dir)
    return out_dir


def _after_failure(out_dir: Path) -> None:
    """A failed run in the default folder: remove it if empty, else say how to resume it."""
    try:
        out_dir.rmdir()
    except OSError:
        if out_dir.is_dir():
            print(
                f"hf-fisher: the records computed so far are in {out_dir}; continue with "
                f"--out {out_dir} --resume",
                file=sys.stderr,
            )


def _hide_progress_bars() -> None:
    """``--no-progress``: also hide the bars of datasets, huggingface_hub and transformers."""
    import datasets
    import huggingface_hub.utils

    from hf_fisher.adapters import quiet_transformers

    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()
    quiet_transformers()


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``hf-fisher evaluate``; print the summary table (or JSON) and where it was saved.

    The options are checked before the runner (and with it torch) is imported, so a bad flag
    is a one-line error in well under a second; the checks that need torch (device, dtype,
    output directory) run before the model loads. An error while ``args.checking`` is a usage
    error (exit 2); once the runner starts, a failed run (exit 1).
    """
    from hf_fisher.data import check_data_source
    from hf_fisher.labels import read_label_mapping

    args.checking = True
    estimator = EstimatorOptions.from_namespace(args)
    run = RunOptions.from_namespace(args)
    companions = _companions(args)
    source = SourceOptions.from_namespace(args)
    zero_shot = ZeroShotOptions.from_namespace(args)
    for options in (estimator, run, companions, source, zero_shot):
        options.validate()
    apply_paper_compat(estimator, args.input_space)  # a contradicting flag is a usage error
    apply_paper_compat_companions(companions, estimator)
    label_mapping = None if args.label_mapping is None else read_label_mapping(args.label_mapping)
    check_data_source(args.dataset, source.data_files, source.dataset_revision)
    out_dir = _out_dir(args)

    from hf_fisher.adapters import quiet_transformers
    from hf_fisher.runner import _validate as check_run_arguments
    from hf_fisher.runner import evaluate_robustness

    # The runner's own pre-load checks (device, dtype, --out), so that they count as usage errors.
    check_run_arguments(estimator, run, companions, args.dtype, label_mapping, args.device, out_dir)
    args.checking = False
    if args.verbosity < 2:
        quiet_transformers()  # no per-load progress bars or backend notices on the command line
    if args.no_progress:
        _hide_progress_bars()

    report = evaluate_robustness(
        args.model,
        args.dataset,
        split=args.split,
        config=args.config,
        options=estimator,
        **run.to_settings(),
        **source.to_settings(),
        input_columns=args.input_columns,
        label_column=args.label_column,
        label_mapping=label_mapping,
        input_space=args.input_space,
        **zero_shot.to_settings(),
        device=args.device,
        dtype=args.dtype,
        out_dir=out_dir,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.no_progress,
        trust_remote_code=args.trust_remote_code,
        companions=companions,
        position=args.position,
    )
    if report.out_dir is None or _is_main():
        _print_report(report, args)
    return 0


def _print_report(report, args: argparse.Namespace) -> None:
    """The summary table and companion headlines (or their JSON) and where results went.

    With ``--json`` the document goes to the real stdout (``args.stdout``); everything else
    printed during the command, the ``wrote`` line included, goes to stderr.
    """
    saved = None if report.out_dir is None else report.out_dir / "results.json"
    if args.json:
        document = {**report.summary_json(), "results_file": saved and str(saved)}
        print(json.dumps(document), file=args.stdout)
    else:
        print(report.format_summary())
    if saved is not None:
        print(f"wrote {saved} and per_sample.csv")


def _is_main() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def add_install_metric_parser(subparsers) -> None:
    """``hf-fisher install-metric``: make ``evaluate.load("fisher_robustness")`` work offline."""
    parser = subparsers.add_parser(
        "install-metric",
        help="install the fisher_robustness evaluate metric into the modules cache",
    )
    parser.add_argument(
        "--cache-dir", help="modules cache (default: HF_MODULES_CACHE or $HF_HOME/modules)"
    )
    parser.add_argument("--force", action="store_true", help="rewrite the script if present")
    parser.set_defaults(func=run_install_metric)


def run_install_metric(args: argparse.Namespace) -> int:
    """Install the metric script and print where it went."""
    from hf_fisher.metric import install_metric

    print(install_metric(args.cache_dir, force=args.force))
    return 0


def add_compare_frequency_parser(subparsers) -> None:
    """``hf-fisher compare-frequency``: one line per model across frequency bands."""
    parser = subparsers.add_parser(
        "compare-frequency",
        help="plot the frequency view of several results files, one line per model",
    )
    parser.add_argument("results", nargs="+", help="results.json files from --frequency runs")
    parser.add_argument("--out", default="frequency_comparison.png", help="output image")
    parser.set_defaults(func=run_compare_frequency)


def run_compare_frequency(args: argparse.Namespace) -> int:
    """Load each file's frequency section and draw them together."""
    from hf_fisher.errors import ResultsError
    from hf_fisher.report.sections.frequency import plot_frequency_comparison
    from hf_fisher.results import load_results

    sections = {}
    for path in args.results:
        results = load_results(path)
        if "frequency" not in results:
            raise ResultsError(
                f"{path} has no frequency section; rerun `hf-fisher evaluate` with --frequency"
            )
        name = results["model"]["id"]
        sections[name if name not in sections else f"{name} ({path})"] = results["frequency"]
    print(f"wrote {plot_frequency_comparison(sections, args.out)}")
    return 0


def _add_verbosity(parser: argparse.ArgumentParser, suffix: str = "") -> None:
    """``-v`` / ``-q``, counted; accepted before and after the subcommand (the counts add up)."""
    group = parser.add_argument_group("output")
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        dest="verbose" + suffix,
        help="more log output: -v debug logs of hf-fisher, -vv of every library too, and "
        "tracebacks with errors",
    )
    group.add_argument(
        "-q",
        "--quiet",
        action="count",
        default=0,
        dest="quiet" + suffix,
        help="only errors from hf-fisher's own loggers",
    )


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("hf-fisher")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="hf-fisher",
        description="Input-space Fisher information robustness for Hugging Face classifiers.",
        epilog="exit codes: 0 success, 1 the run failed (model/data load, compute, writing), "
        "2 usage error (bad arguments or option values; nothing was loaded)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _add_verbosity(parser)
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_evaluate_parser(subparsers)
    add_card_parser(subparsers)
    add_submit_parser(subparsers)
    add_leaderboard_parser(subparsers)
    add_install_metric_parser(subparsers)
    add_compare_frequency_parser(subparsers)
    for subparser in subparsers.choices.values():
        _add_verbosity(subparser, "_after")
    return parser


@contextlib.contextmanager
def _logging(verbosity: int) -> Iterator[None]:
    """Log levels for one command: -v/-q set hf-fisher's loggers only, -vv every library's.

    Other libraries (PIL, filelock, fsspec, ...) stay at WARNING below -vv. The previous levels
    are restored afterwards, for in-process callers.
    """
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    ours, root = logging.getLogger("hf_fisher"), logging.getLogger()
    before = ours.level, root.level
    levels = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.DEBUG}
    ours.setLevel(levels[max(-1, min(verbosity, 1))])
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)
    try:
        yield
    finally:
        ours.setLevel(before[0])
        root.setLevel(before[1])


def _fail(error: BaseException, verbosity: int, code: int) -> int:
    """One ``hf-fisher: error:`` line on stderr (after the traceback with -v); ``code``."""
    if verbosity > 0:
        traceback.print_exception(error)
    message = str(error).strip() or type(error).__name__
    if not isinstance(error, HfFisherError):
        message = f"{type(error).__name__}: {message.splitlines()[0]}"
        if verbosity <= 0:
            message += " (rerun with -v for the traceback)"
    print(f"hf-fisher: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run, and turn every failure into one clear line and an exit code.

    Returns:
        0 on success; 2 for a usage error (argparse exits with 2 itself; hf-fisher's option
        checks while ``args.checking``); 1 when the run failed.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.verbosity = args.verbose + args.verbose_after - args.quiet - args.quiet_after
    args.stdout = sys.stdout
    # With --json, stdout holds the JSON document only: anything printed on the way goes to stderr.
    as_json = getattr(args, "json", False)
    stdout = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    with _logging(args.verbosity), stdout:
        try:
            return args.func(args)
        except BaseException as error:
            if getattr(args, "on_failure", None) is not None:
                args.on_failure()
            if not isinstance(error, Exception):
                raise  # Ctrl-C and exits keep their own meaning
            usage = getattr(args, "checking", False) and isinstance(error, HfFisherError)
            return _fail(error, args.verbosity, 2 if usage else 1)


if __name__ == "__main__":
    sys.exit(main())
