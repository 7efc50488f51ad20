"""Card subsection and plot of the attack cross-check (results section ``"attacks"``)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from hf_fisher.attacks import GRADIENT_MASKING_WARNING
from hf_fisher.report.sections._common import (
    PlotContext,
    estimate_with_ci,
    format_sig,
    log_scatter,
    md_escape,
    new_figure,
    or_na,
    paragraphs,
    save_figure,
    table,
)

PREDICTOR_LABELS = {
    "spectral_norm": "spectral norm λ_max",
    "confidence": "confidence, 1 − max p (baseline)",
    "first_order": "first-order boundary distance (baseline)",
    "lipschitz": "local Lipschitz ‖∇ₓ softmax‖₂ (baseline)",
    "flip_radius": "flip radius √(2 KL_flip / λ_max)",
}
SIGN_WORDS = {-1: "negative", 1: "positive"}


def attacks_figure(section: dict, context: PlotContext | None = None) -> Figure:
    """Robust accuracy vs ε, and λ_max vs each correct sample's minimal ε."""
    context = context or PlotContext()
    norm = section["norm"]
    figure, (curve, scatter) = new_figure(10, 4.4, columns=2)
    figure.suptitle(context.title("Gradient attacks: robust accuracy and minimal ε"))
    epsilons = [0.0, *section["epsilons"]]
    for name, values in section["robust_accuracy"].items():
        curve.plot(epsilons, [section["clean_accuracy"], *values], marker="o", label=name.upper())
    curve.set_xlabel(context.distance_label("ε", norm))
    curve.set_ylabel("robust accuracy")
    curve.set_ylim(0, 1.02)
    curve.legend()
    per_sample = section["per_sample"]
    log_scatter(
        scatter,
        per_sample["spectral_norm"],
        per_sample["minimal_epsilon"],
        keep=per_sample["correct"],
    )
    rho = or_na(section["correlations"]["spectral_norm"]["spearman"], ".2f")
    scatter.set_title(f"Spearman {rho}; {section['num_not_flipped']} not flipped (not shown)")
    scatter.set_xlabel("λ_max(F) (log scale)")
    scatter.set_ylabel(context.distance_label("minimal PGD ε", norm))
    return figure


def plot_attacks(section: dict, path: str | Path, context: PlotContext | None = None) -> Path:
    """Draw :func:`attacks_figure` into ``path``."""
    return save_figure(attacks_figure(section, context), path)


def card_attacks(section: dict) -> str:
    """Markdown card subsection: robust accuracy, minimal epsilon and how well it is predicted.

    The attacks are the reference that ``spectral_norm`` is ranked against, so the subsection
    shows the budget, the correlations of the minimal epsilon with lambda_max and with the two
    cheap baselines side by side, and every sanity message (the gradient-masking warning always).

    Args:
        section: the ``attacks`` section of results.json (:meth:`AttackReport.to_json`).

    Returns:
        Markdown without a heading.
    """
    return paragraphs(
        _settings(section),
        _accuracy_table(section),
        f"Median minimal ε over the correct samples: "
        f"{format_sig(section['median_minimal_epsilon'])}; not flipped at ε_max: "
        f"{section['num_not_flipped']}.",
        _correlation_table(section),
        _carlini_wagner(section),
        _partial(section),
        _sanity(section["sanity"]),
    )


def _settings(section: dict) -> str:
    budget, norm = section["budget"], md_escape(section["norm"].upper())
    clip = budget["clip"]
    box = "unclipped" if clip is None else f"clipped to [{clip[0]:g}, {clip[1]:g}]"
    return (
        f"Gradient attacks in an {norm} ball (inputs {box}) on {section['num_samples']} "
        f"samples, {section['num_correct']} of them classified correctly: PGD with "
        f"{budget['steps']} steps, {budget['restarts']} restart(s), step "
        f"{format_sig(budget['step_size'])} ε, "
        f"{md_escape(budget['loss'])} loss, seed {budget['seed']}; FGSM in one step. The "
        f"minimal ε that flips each correct sample comes from {_bisection(budget)} of PGD up to "
        "ε_max = "
        f"{format_sig(budget['eps_max'])} (at most {budget['gradient_evaluations_per_sample']} "
        "gradient evaluations per sample). If λ_max(F) measures robustness, samples with a "
        "larger λ_max flip at a smaller ε: a negative rank correlation."
    )


def _bisection(budget: dict) -> str:
    tolerance = budget.get("tolerance")
    if tolerance is None:
        return f"{budget['bisection_steps']} bisection steps"
    return (
        f"bisection to {format_sig(100 * tolerance)}% of each sample's bracket (at most "
        f"{budget['bisection_steps']} steps)"
    )


def _carlini_wagner(section: dict) -> str:
    """CW-L2 next to PGD: its median norm and how far PGD's minimal ε sits above it."""
    cw = section.get("cw")
    if cw is None:
        return ""
    settings, rho = cw["settings"], cw["correlation_spectral_norm"]
    above = format_sig(cw["fraction_minimal_epsilon_above_cw_by_10_percent"])
    return (
        f"Carlini–Wagner L2 ({settings['steps']} Adam steps × {settings['binary_search_steps']} "
        f"rounds of the per-sample search over c, learning rate "
        f"{format_sig(settings['learning_rate'])}): median minimal L2 norm "
        f"{format_sig(cw['median_norm'])}, not flipped {cw['num_not_flipped']}. PGD's minimal ε "
        f"is {format_sig(cw['median_ratio_minimal_epsilon_to_cw'])}× the CW norm (median), more "
        f"than 10% above it on a fraction {above} of the samples; Spearman ρ of λ_max with the "
        f"CW norm {estimate_with_ci(rho['spearman'], rho['spearman_ci'])}."
    )


def _accuracy_table(section: dict) -> str:
    names = list(section["robust_accuracy"])
    clean = format_sig(section["clean_accuracy"])
    rows = [["0 (clean)", *(clean for _ in names)]]
    for index, epsilon in enumerate(section["epsilons"]):
        rows.append(
            [
                format_sig(epsilon),
                *(format_sig(section["robust_accuracy"][n][index]) for n in names),
            ]
        )
    header = ["ε", *(f"{md_escape(n.upper())} robust accuracy" for n in names)]
    return table(header, rows)


def _correlation_table(section: dict) -> str:
    signs = section.get("expected_signs", {})
    rows = [
        [
            PREDICTOR_LABELS.get(key, md_escape(key)),
            estimate_with_ci(stats["spearman"], stats["spearman_ci"]),
            format_sig(stats["kendall"]),
            SIGN_WORDS.get(signs.get(key), "–"),
            str(stats["num_samples"]),
        ]
        for key, stats in section["correlations"].items()
    ]
    header = ["minimal ε vs", "Spearman ρ [CI]", "Kendall τ", "expected sign", "samples"]
    return table(header, rows)


def _partial(section: dict) -> str:
    level = next(iter(section["correlations"].values()), {}).get("confidence")
    partial = section["partial_spectral_norm_given_confidence"]
    return (
        (f"CI: {100 * level:g}% bootstrap interval. " if level else "")
        + "Partial Spearman ρ of minimal ε and λ_max given 1 − max p: "
        f"{format_sig(partial['spearman'])} (p = {format_sig(partial['p_value'])}, "
        f"{partial['num_samples']} samples), what λ_max adds beyond the model's confidence."
    )


def _sanity(sanity: dict) -> str:
    def yes_no(flag: bool) -> str:
        return "yes" if flag else "no"

    summary = (
        f"Sanity checks {'passed' if sanity['ok'] else 'FAILED'}: zero-gradient fraction "
        f"{format_sig(sanity['zero_gradient_fraction'])}, non-finite-gradient fraction "
        f"{format_sig(sanity['nonfinite_gradient_fraction'])}, random forward "
        f"{yes_no(sanity['random_forward'])}, probability outputs "
        f"{yes_no(sanity['probability_outputs'])}, not flipped at ε_max "
        f"{sanity['unflipped_at_eps_max']}."
    )
    messages = list(sanity["messages"])
    if GRADIENT_MASKING_WARNING not in messages:
        messages.append(GRADIENT_MASKING_WARNING)
    return paragraphs(summary, "\n".join(f"- {md_escape(message)}" for message in messages))
