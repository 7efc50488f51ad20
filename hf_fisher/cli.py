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
    parser.add_argument(
        "--label-mapping",
        metavar="JSON",
        help="model label -> dataset label (id or name), as a JSON object or a .json file, "
        'e.g. \'{"Ankle boot": "boots"}\'; default: dataset label names matched to the '
        "model's by name, integer labels taken as the model's ids",
    )
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
    trust = parser.add_argument_group(
        "companion measurements (run on the first --companion-samples evaluated samples)"
    )
    trust.add_argument(
        "--attacks",
        choices=("l2", "linf"),
        help="attack cross-check: PGD/FGSM, minimal epsilon, rank correlations",
    )
    trust.add_argument("--attack-epsilons", type=_floats, help="comma-separated budgets")
    trust.add_argument("--eps-max", type=float, help="largest epsilon tried by the bisection")
    trust.add_argument("--noise", action="store_true", help="random-noise robustness curves")
    trust.add_argument("--noise-sigmas", type=_floats, help="comma-separated noise levels")
    trust.add_argument("--noise-kind", choices=("gaussian", "uniform"), default="gaussian")
    trust.add_argument("--noise-draws", type=int, default=16, help="draws per sample and sigma")
    trust.add_argument(
        "--kl-check",
        action="store_true",
        help="measured KL versus the second-order Fisher prediction",
    )
    trust.add_argument("--kl-radii", type=_floats, help="comma-separated radii")
    trust.add_argument("--clever", action="store_true", help="CLEVER scores (Weng et al. 2018)")
    trust.add_argument("--clever-radius", type=float, default=2.0)
    trust.add_argument(
        "--frequency",
        action="store_true",
        help="I-ASIDE band importance and band-restricted Fisher (images)",
    )
    trust.add_argument("--frequency-bands", type=int, default=8)
    trust.add_argument(
        "--frequency-fill", choices=("zero", "gaussian", "other_image"), default="other_image"
    )
    trust.add_argument("--frequency-pixel-map", choices=("paper", "clip"), default="paper")
    trust.add_argument(
        "--bound",
        action="store_true",
        help="data-free architecture bound on lambda_max vs the measured values "
        "(plain nn.Sequential stacks only)",
    )
    trust.add_argument("--companion-samples", type=int, default=64)
    parser.set_defaults(func=run_evaluate)


def _floats(text: str) -> list[float]:
    try:
        return [float(item) for item in text.split(",") if item.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers like 0.1,0.2, got {text!r}"
        ) from error


def _companions(args: argparse.Namespace):
    from hf_fisher.companions import DEFAULT_RADII, DEFAULT_SIGMAS, CompanionOptions

    return CompanionOptions(
        attacks=args.attacks,
        attack_epsilons=args.attack_epsilons,
        eps_max=args.eps_max,
        noise=args.noise,
        noise_sigmas=args.noise_sigmas or DEFAULT_SIGMAS,
        noise_kind=args.noise_kind,
        noise_draws=args.noise_draws,
        kl_check=args.kl_check,
        kl_radii=args.kl_radii or DEFAULT_RADII,
        clever=args.clever,
        clever_radius=args.clever_radius,
        frequency=args.frequency,
        frequency_bands=args.frequency_bands,
        frequency_fill=args.frequency_fill,
        frequency_pixel_map=args.frequency_pixel_map,
        bound=args.bound,
        num_samples=args.companion_samples,
    )


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``hf-fisher evaluate`` and print the summary table."""
    from hf_fisher.labels import read_label_mapping
    from hf_fisher.runner import evaluate_robustness

    label_mapping = None if args.label_mapping is None else read_label_mapping(args.label_mapping)
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
        label_mapping=label_mapping,
        input_space=args.input_space,
        device=args.device,
        dtype=args.dtype,
        out_dir=args.out,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.no_progress,
        trust_remote_code=args.trust_remote_code,
        companions=_companions(args),
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
    if not args.verbose:
        from hf_fisher.adapters import quiet_transformers

        quiet_transformers()
    try:
        return args.func(args)
    except HfFisherError as error:
        print(f"hf-fisher: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
