"""Reports from ``results.json``: card section, badge, plots, Hub eval results, leaderboard."""

from hf_fisher.report.badge import BADGE_THRESHOLDS, badge_color, badge_markdown, badge_url
from hf_fisher.report.card import (
    CardOutputs,
    MergedCard,
    companion_subsections,
    merge_card,
    render_section,
    write_card,
)
from hf_fisher.report.eval_results import (
    build_eval_result_entries,
    build_eval_results,
    eval_results_yaml,
    read_eval_results,
    write_eval_results,
)
from hf_fisher.report.leaderboard import (
    build_leaderboard,
    load_submissions,
    make_submission,
    validate_submission,
)
from hf_fisher.report.plots import (
    PLOT_REGISTRY,
    REPORT_REGISTRY,
    Companion,
    make_plots,
    resolve_dotted,
    resolve_plotter,
)
from hf_fisher.report.push import PushError, push_card
from hf_fisher.report.results_io import (
    load_reportable_results,
    validate_reportable_results,
)

__all__ = [
    # results
    "load_reportable_results",
    "validate_reportable_results",
    # model card
    "CardOutputs",
    "MergedCard",
    "merge_card",
    "render_section",
    "companion_subsections",
    "write_card",
    "push_card",
    "PushError",
    # badge
    "BADGE_THRESHOLDS",
    "badge_color",
    "badge_markdown",
    "badge_url",
    # plots
    "PLOT_REGISTRY",
    "REPORT_REGISTRY",
    "Companion",
    "resolve_dotted",
    "make_plots",
    "resolve_plotter",
    # Hub eval results
    "build_eval_results",
    "build_eval_result_entries",
    "eval_results_yaml",
    "read_eval_results",
    "write_eval_results",
    # leaderboard
    "build_leaderboard",
    "load_submissions",
    "make_submission",
    "validate_submission",
]
