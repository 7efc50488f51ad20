"""Reports from ``results.json``: card section, badge, plots, Hub eval results, leaderboard.

The public names are imported on first use (PEP 562): ``hf-fisher --help`` registers the report
subcommands without loading huggingface_hub or matplotlib.
"""

from hf_fisher._lazy import lazy_exports as _lazy_exports

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

_SOURCES = {
    "load_reportable_results": "hf_fisher.report.results_io",
    "validate_reportable_results": "hf_fisher.report.results_io",
    "CardOutputs": "hf_fisher.report.card",
    "MergedCard": "hf_fisher.report.card",
    "merge_card": "hf_fisher.report.card",
    "render_section": "hf_fisher.report.card",
    "companion_subsections": "hf_fisher.report.card",
    "write_card": "hf_fisher.report.card",
    "push_card": "hf_fisher.report.push",
    "PushError": "hf_fisher.report.push",
    "BADGE_THRESHOLDS": "hf_fisher.report.badge",
    "badge_color": "hf_fisher.report.badge",
    "badge_markdown": "hf_fisher.report.badge",
    "badge_url": "hf_fisher.report.badge",
    "PLOT_REGISTRY": "hf_fisher.report.plots",
    "REPORT_REGISTRY": "hf_fisher.report.plots",
    "Companion": "hf_fisher.report.plots",
    "resolve_dotted": "hf_fisher.report.plots",
    "make_plots": "hf_fisher.report.plots",
    "resolve_plotter": "hf_fisher.report.plots",
    "build_eval_results": "hf_fisher.report.eval_results",
    "build_eval_result_entries": "hf_fisher.report.eval_results",
    "eval_results_yaml": "hf_fisher.report.eval_results",
    "read_eval_results": "hf_fisher.report.eval_results",
    "write_eval_results": "hf_fisher.report.eval_results",
    "build_leaderboard": "hf_fisher.report.leaderboard",
    "load_submissions": "hf_fisher.report.leaderboard",
    "make_submission": "hf_fisher.report.leaderboard",
    "validate_submission": "hf_fisher.report.leaderboard",
}
"""Where each name of ``__all__`` is defined: ``__getattr__`` imports it from there."""

__getattr__, __dir__ = _lazy_exports(__name__, _SOURCES)
