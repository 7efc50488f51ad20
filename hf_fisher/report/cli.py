"""Argparse subcommands ``card``, ``submit`` and ``leaderboard`` for ``hf_fisher.cli``.

Each ``add_*_parser`` registers a subcommand and sets ``func`` to its ``run_*``; each ``run_*``
returns an exit code and lets :class:`hf_fisher.errors.HfFisherError` propagate to the caller.
The ``run_*`` functions import their report modules, so that registering the subcommands (and
``hf-fisher --help``) loads neither huggingface_hub nor matplotlib.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from hf_fisher.errors import InputError

HUB_ID = re.compile(r"^(?!.*\.\.)[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
"""A Hub dataset id: ``name`` or ``owner/name`` (letters, digits, ``-``, ``_``, ``.``)."""


def hub_dataset_id(text: str) -> str:
    """An argparse ``type``: a Hub dataset id, else a usage error (exit 2) naming the form."""
    if not HUB_ID.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Hub dataset id; pass NAME or OWNER/NAME, e.g. uoft-cs/cifar10"
        )
    return text


def add_dataset_id_argument(parser: argparse.ArgumentParser) -> None:
    """``--dataset-id``: name the evaluated data by its Hub id in what is published."""
    parser.add_argument(
        "--dataset-id",
        metavar="HUB_ID",
        type=hub_dataset_id,
        default=None,
        help="the Hub id of the evaluated data (e.g. RESULTS came from a local copy of "
        "uoft-cs/cifar10); default: the dataset name in RESULTS",
    )


def with_dataset_id(results: dict[str, Any], dataset_id: str | None) -> dict[str, Any]:
    """``results`` with ``dataset.name`` set to ``dataset_id`` (unchanged when it is None).

    A local folder is recorded by its path, which the Hub shows as the dataset; published
    under its Hub id, the result joins that dataset's other results.

    Raises:
        InputError: ``dataset_id`` is not a Hub id.
    """
    if dataset_id is None:
        return results
    if not HUB_ID.match(dataset_id):
        raise InputError(
            f"--dataset-id {dataset_id!r} is not a Hub dataset id; pass NAME or OWNER/NAME, "
            "e.g. uoft-cs/cifar10"
        )
    return {**results, "dataset": {**results["dataset"], "name": dataset_id}}


def add_card_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hf-fisher card RESULTS [--card README.md] [--out README.md] [--push REPO]``."""
    parser = subparsers.add_parser(
        "card",
        help="merge a robustness section into a model card",
        description="Merge a robustness section, badge, plots and model-index results from "
        "RESULTS (results.json) into a model card. Content outside the section is kept; "
        "re-running replaces the section.",
    )
    parser.add_argument("results", type=Path, help="results.json from `hf-fisher evaluate`")
    parser.add_argument("--card", type=Path, default=None, help="existing card to merge into")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="card to write (default: --card, else README.md). An existing file is merged "
        "into, never replaced, unless --card names another card to merge from",
    )
    parser.add_argument(
        "--plots-dir",
        type=Path,
        default=None,
        help="PNG folder (default: robustness_plots/ beside the card)",
    )
    parser.add_argument("--template", type=Path, default=None, help="custom section template")
    parser.add_argument(
        "--eval-results",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write .eval_results/hf-fisher.yaml next to the card (default: yes)",
    )
    parser.add_argument(
        "--push",
        metavar="REPO_ID",
        default=None,
        help="open a pull request on this Hub model repo with the card and plots; nothing is "
        "pushed without it. Token: HF_TOKEN or `hf auth login`.",
    )
    add_dataset_id_argument(parser)
    parser.set_defaults(func=run_card)
    return parser


def run_card(args: argparse.Namespace) -> int:
    """Write the card (and push it when ``--push`` is given)."""
    from hf_fisher.report.card import write_card
    from hf_fisher.report.push import push_card
    from hf_fisher.report.results_io import load_reportable_results

    results = with_dataset_id(load_reportable_results(args.results), args.dataset_id)
    out = args.out or args.card or Path("README.md")
    outputs = write_card(
        results,
        out=out,
        card=args.card,
        plots_dir=args.plots_dir,
        template=args.template,
        eval_results=args.eval_results,
    )
    print(f"wrote {outputs.card} and {len(outputs.plots)} plot(s)")
    if args.push:
        extra = [*outputs.plots.values()]
        if outputs.eval_results is not None:
            extra.append(outputs.eval_results)
        print(f"opened pull request {push_card(args.push, outputs.card, extra)}")
    return 0


def add_submit_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hf-fisher submit RESULTS --out SUBMISSION.json [--name ...]``."""
    parser = subparsers.add_parser(
        "submit",
        help="make a leaderboard submission from results.json",
        description="Write a leaderboard submission (docs/leaderboard.md) from RESULTS.",
    )
    parser.add_argument("results", type=Path, help="results.json from `hf-fisher evaluate`")
    parser.add_argument("--out", type=Path, required=True, help="submission JSON to write")
    parser.add_argument("--name", default=None, help="display name (default: the model id)")
    parser.add_argument("--link", default=None, help="paper or model page URL")
    parser.add_argument("--authors", default=None)
    parser.add_argument("--footnote", default=None)
    parser.add_argument("--reported", default=None, help="authors' robust accuracy (%%)")
    parser.add_argument("--additional-data", action="store_true", help="trained with extra data")
    add_dataset_id_argument(parser)
    parser.set_defaults(func=run_submit)
    return parser


def run_submit(args: argparse.Namespace) -> int:
    """Write one submission JSON."""
    from hf_fisher.report.leaderboard import make_submission
    from hf_fisher.report.results_io import load_reportable_results

    submission = make_submission(
        with_dataset_id(load_reportable_results(args.results), args.dataset_id),
        name=args.name,
        link=args.link,
        authors=args.authors,
        footnote=args.footnote,
        reported=args.reported,
        additional_data=args.additional_data,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(submission, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
        encoding="utf-8",
    )
    print(f"wrote {args.out}")
    return 0


def add_leaderboard_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``hf-fisher leaderboard DIR --out site/``."""
    parser = subparsers.add_parser(
        "leaderboard",
        help="build a static leaderboard from a folder of submissions",
        description="Build leaderboard.md and a self-contained, sortable index.html from the "
        "*.json submissions in DIR.",
    )
    parser.add_argument("directory", type=Path, metavar="DIR", help="folder of submissions")
    parser.add_argument("--out", type=Path, default=Path("site"), help="output folder")
    parser.add_argument("--title", default="hf-fisher robustness leaderboard")
    parser.set_defaults(func=run_leaderboard)
    return parser


def run_leaderboard(args: argparse.Namespace) -> int:
    """Build the leaderboard site."""
    from hf_fisher.report.leaderboard import build_leaderboard

    md_path, html_path = build_leaderboard(args.directory, args.out, args.title)
    print(f"wrote {md_path} and {html_path}")
    return 0
