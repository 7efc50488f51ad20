"""The ``hf-fisher`` command line (also ``python -m hf_fisher``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from hf_fisher.errors import HfFisherError
from hf_fisher.report.cli import add_card_parser, add_leaderboard_parser, add_submit_parser
from hf_fisher.spectrum import METHODS


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
    parser.add_argument("--num-samples", type=int, help="deterministic sample of N rows")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--method", default="auto", choices=METHODS)
    parser.add_argument("--black-box", action="store_true", help="forward queries only")
    parser.add_argument("--top-k", type=int, default=1, help="eigenvalues per sample")
    parser.add_argument("--max-iter", type=int, help="iterative-method budget per sample")
    parser.add_argument("--tol", type=float, default=1e-3, help="relative tolerance")
    parser.add_argument("--num-queries", type=int, help="black-box queries per sample")
    parser.add_argument("--num-probes", type=int, default=16, help="trace-estimator probes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--kl-tau",
        type=float,
        default=0.01,
        help="KL level defining kl_radius = sqrt(2 tau / lambda_max)",
    )
    parser.add_argument(
        "--input-column",
        action="append",
        dest="input_columns",
        help="input column (repeat for text pairs); default: detected",
    )
    parser.add_argument("--label-column", help="label column; default: detected")
    parser.add_argument("--input-space", choices=("pixels", "normalized", "embeddings"))
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
    parser.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``hf-fisher evaluate`` and print the summary table."""
    from hf_fisher.runner import evaluate_robustness

    report = evaluate_robustness(
        args.model,
        args.dataset,
        split=args.split,
        config=args.config,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        method=args.method,
        black_box=args.black_box,
        top_k=args.top_k,
        max_iter=args.max_iter,
        tol=args.tol,
        num_queries=args.num_queries,
        num_probes=args.num_probes,
        seed=args.seed,
        kl_tau=args.kl_tau,
        input_columns=args.input_columns,
        label_column=args.label_column,
        input_space=args.input_space,
        device=args.device,
        dtype=args.dtype,
        out_dir=args.out,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.no_progress,
        trust_remote_code=args.trust_remote_code,
    )
    if report.out_dir is None or _is_main():
        print(report.format_summary())
        if report.out_dir is not None:
            print(f"wrote {report.out_dir / 'results.json'} and per_sample.csv")
    return 0


def _is_main() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _quiet_transformers() -> None:
    """Hide transformers' per-load progress bars and backend notices on the command line."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


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
