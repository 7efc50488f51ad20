"""The ``hf-fisher`` command line (also ``python -m hf_fisher``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from hf_fisher.errors import HfFisherError
from hf_fisher.options import CompanionOptions, EstimatorOptions, RunOptions
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
        "--dataset", help="Hub name or local directory (imagefolder, parquet, csv, save_to_disk)"
    )
    parser.add_argument("--config", help="dataset configuration name")
    parser.add_argument("--split", help="dataset split (default: test)")
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
    parser.add_argument(
        "--position",
        choices=("last", "all"),
        help="causal language models: the next token after each text (last, default) or "
        "every next token of the text, teacher-forced (all)",
    )
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--out", help="output directory for results.json and per_sample.csv")
    parser.add_argument("--overwrite", action="store_true", help="replace existing results")
    parser.add_argument("--resume", action="store_true", help="continue a killed run")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
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


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``hf-fisher evaluate`` and print the summary table.

    The options are checked before the runner (and with it torch) is imported, so a bad flag
    is a one-line error in well under a second.
    """
    from hf_fisher.labels import read_label_mapping

    estimator = EstimatorOptions.from_namespace(args)
    run = RunOptions.from_namespace(args)
    companions = _companions(args)
    for options in (estimator, run, companions):
        options.validate()
    label_mapping = None if args.label_mapping is None else read_label_mapping(args.label_mapping)

    from hf_fisher.adapters import quiet_transformers
    from hf_fisher.runner import evaluate_robustness

    if not args.verbose:
        quiet_transformers()  # no per-load progress bars or backend notices on the command line

    report = evaluate_robustness(
        args.model,
        args.dataset,
        split=args.split,
        config=args.config,
        options=estimator,
        **run.to_settings(),
        input_columns=args.input_columns,
        label_column=args.label_column,
        label_mapping=label_mapping,
        input_space=args.input_space,
        device=args.device,
        dtype=args.dtype,
        out_dir=args.out,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.no_progress,
        trust_remote_code=args.trust_remote_code,
        companions=companions,
        position=args.position,
    )
    if report.out_dir is None or _is_main():
        print(report.format_summary())
        if report.out_dir is not None:
            print(f"wrote {report.out_dir / 'results.json'} and per_sample.csv")
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="hf-fisher",
        description="Input-space Fisher information robustness for Hugging Face classifiers.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_evaluate_parser(subparsers)
    add_card_parser(subparsers)
    add_submit_parser(subparsers)
    add_leaderboard_parser(subparsers)
    add_install_metric_parser(subparsers)
    add_compare_frequency_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, run, and turn hf-fisher errors into one clear line (exit 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except HfFisherError as error:
        print(f"hf-fisher: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
