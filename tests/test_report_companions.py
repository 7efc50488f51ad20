"""Card renderers of the companion measurements, on the bundled model's real results file."""

import copy
import json
from pathlib import Path

import pytest
import torch

from hf_fisher.attacks import GRADIENT_MASKING_WARNING
from hf_fisher.errors import ResultsError
from hf_fisher.iaside import spectral_robustness_score
from hf_fisher.report.badge import format_sig as sig
from hf_fisher.report.card import md_escape
from hf_fisher.report.sections.attacks import card_attacks
from hf_fisher.report.sections.clever import card_clever
from hf_fisher.report.sections.frequency import card_frequency
from hf_fisher.report.sections.kl_check import card_kl_check
from hf_fisher.report.sections.noise_curves import card_noise_curves

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "model_cards" / "digits-resnet-results" / "results.json"


@pytest.fixture(scope="module")
def results():
    return json.loads(RESULTS.read_text(encoding="utf-8"))


def _rows(markdown):
    """Table rows as lists of stripped cells (header and separator rows included)."""
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("|")
    ]


def _row(markdown, first_cell):
    matches = [row for row in _rows(markdown) if row[0] == first_cell]
    assert len(matches) == 1, (first_cell, matches)
    return matches[0]


# attacks ------------------------------------------------------------------------------------


def test_attacks_tables_follow_the_json(results):
    section = results["attacks"]
    text = card_attacks(section)
    budget = section["budget"]
    for needle in (
        f"{section['num_samples']} samples, {section['num_correct']} of them",
        f"{budget['steps']} steps, {budget['restarts']} restart(s)",
        f"{budget['bisection_steps']} bisection steps",
        f"ε_max = {sig(budget['eps_max'])}",
        f"Median minimal ε over the correct samples: {sig(section['median_minimal_epsilon'])}",
    ):
        assert needle in text
    names = list(section["robust_accuracy"])
    assert names == ["pgd", "fgsm"]
    assert _row(text, "ε")[1:] == ["PGD robust accuracy", "FGSM robust accuracy"]
    assert _row(text, "0 (clean)")[1:] == [sig(section["clean_accuracy"])] * 2
    for index, epsilon in enumerate(section["epsilons"]):
        expected = [sig(section["robust_accuracy"][n][index]) for n in names]
        assert _row(text, sig(epsilon))[1:] == expected
    labels = {
        "spectral_norm": "spectral norm λ_max",
        "confidence": "confidence, 1 − max p (baseline)",
        "first_order": "first-order boundary distance (baseline)",
    }
    assert set(section["correlations"]) == set(labels)
    for key, stats in section["correlations"].items():
        low, high = stats["spearman_ci"]
        sign = "negative" if section["expected_signs"][key] < 0 else "positive"
        assert _row(text, labels[key])[1:] == [
            f"{sig(stats['spearman'])} [{sig(low)}, {sig(high)}]",
            sig(stats["kendall"]),
            sign,
            str(stats["num_samples"]),
        ]
    partial = section["partial_spectral_norm_given_confidence"]
    assert f"given 1 − max p: {sig(partial['spearman'])} (p = {sig(partial['p_value'])}" in text
    assert "Sanity checks passed" in text
    assert text.count(f"- {md_escape(GRADIENT_MASKING_WARNING)}") == 1


def test_attacks_always_warn_about_gradient_masking_and_show_failed_checks(results):
    section = copy.deepcopy(results["attacks"])
    section["sanity"].update(ok=False, random_forward=True, messages=["two passes differ | x"])
    section["budget"]["clip"] = None
    text = card_attacks(section)
    assert "Sanity checks FAILED" in text and "random forward yes" in text
    assert "- two passes differ \\| x" in text  # escaped, cannot open a table column
    assert f"- {md_escape(GRADIENT_MASKING_WARNING)}" in text
    assert "(inputs unclipped)" in text


# noise curves -------------------------------------------------------------------------------


def test_noise_curves_table_aucs_and_crossing(results):
    section = results["noise_curves"]
    text = card_noise_curves(section)
    level = f"{100 * section['confidence']:g}%"
    assert _row(text, "σ")[1:] == ["accuracy", "Brier error", f"Brier upper bound ({level})"]
    assert len(_rows(text)) == 2 + len(section["sigmas"])
    for index, sigma in enumerate(section["sigmas"]):
        expected = [sig(section[k][index]) for k in ("accuracy", "brier", "brier_upper")]
        assert _row(text, sig(sigma))[1:] == expected
    aucs = f"accuracy {sig(section['auc_accuracy'])}, Brier error {sig(section['auc_brier'])}"
    assert aucs in text
    assert (
        f"crosses the tolerance {sig(section['tolerance'])} at σ = "
        f"{sig(section['crossing_sigma'])}" in text
    )
    assert f"{section['draws']} draws on each of {section['num_samples']} samples" in text
    assert md_escape(section["assumptions"]) in text


def test_noise_curves_without_crossing(results):
    section = dict(results["noise_curves"], crossing_sigma=None)
    text = card_noise_curves(section)
    assert "crosses" not in text
    assert f"stays below the tolerance {sig(section['tolerance'])} up to σ = " in text
    assert f"σ = {sig(section['sigmas'][-1])}, the largest σ tried" in text


# KL check -----------------------------------------------------------------------------------


def test_kl_check_rows_and_no_valid_radius(results):
    section = results["kl_check"]
    assert section["valid_radius"] is None  # the bundled model: max-pool ties on flat background
    text = card_kl_check(section)
    keys = ("median_relative_error", "p90_relative_error", "median_kl", "median_quadratic")
    for index, radius in enumerate(section["radii"]):
        assert _row(text, sig(radius))[1:] == [sig(section[k][index]) for k in keys]
    assert "Valid radius: none" in text
    assert f"smallest radius tried ({sig(section['radii'][0])})" in text
    assert f"({sig(section['median_relative_error'][0])}) exceeds the tolerance" in text
    assert "second-order picture does not hold" in text and "not differentiable" in text


@pytest.mark.parametrize(("index", "phrase"), [(2, "beyond it"), (-1, "the largest radius tried")])
def test_kl_check_valid_radius(results, index, phrase):
    section = dict(results["kl_check"], valid_radius=results["kl_check"]["radii"][index])
    text = card_kl_check(section)
    assert f"Valid radius: {sig(section['valid_radius'])}, " in text and phrase in text
    assert "does not hold" not in text


# CLEVER -------------------------------------------------------------------------------------


def test_clever_scores_correlations_and_cost(results):
    section = results["clever"]
    text = card_clever(section)
    for key, label in (("untargeted", "untargeted (all classes)"), ("top2", "top-2 class")):
        stats = section["correlations"][key]
        low, high = stats["spearman_ci"]
        assert _row(text, label)[1:] == [
            sig(section[f"median_{key}"]),
            f"{sig(stats['spearman'])} [{sig(low)}, {sig(high)}]",
            sig(stats["kendall"]),
            str(stats["num_samples"]),
        ]
    cost = section["cost"]
    assert _row(text, "forward-equivalents")[1:] == [
        str(cost["clever_forward_equivalents_per_sample"]),
        str(cost["spectral_norm_forward_equivalents_per_sample"]),
    ]
    assert f"R = {sig(section['radius'])}" in text and "L2 distance" in text
    assert f"{sig(cost['clever_seconds_per_sample'])} s per sample" in text


def test_clever_without_untargeted_or_spectral_norm(results):
    section = copy.deepcopy(results["clever"])
    section["median_untargeted"] = None
    section["correlations"] = {}
    text = card_clever(section)
    assert not [row for row in _rows(text) if row[0].startswith("untargeted")]
    assert _row(text, "top-2 class")[1:] == [sig(section["median_top2"]), "not computed", "–", "–"]


# frequency ----------------------------------------------------------------------------------


def test_frequency_band_table_score_and_residual(results):
    section = results["frequency"]
    iaside, fisher = section["iaside"], section["fisher"]
    text = card_frequency(section)
    for band in range(section["num_bands"]):
        expected = [sig(iaside[k][band]) for k in ("phi", "distribution")]
        expected += [
            sig(fisher[k][band]) for k in ("energy_share", "lambda_max", "top_vector_fraction")
        ]
        assert _row(text, str(band))[1:] == expected
    assert f"I-ASIDE score {sig(iaside['score'])}, hf-fisher's signed definition" in text
    assert f"gives {sig(iaside['reference_score'])}" in text
    assert f"= {sig(iaside['efficiency_residual'])}, with v" in text
    # the documented range for M = 8, beta = 0.75 (docs/frequency.md), from the score itself
    corners = torch.eye(8, dtype=torch.float64)
    low, high = (spectral_robustness_score(corners[i], 0.75) for i in (7, 0))
    assert (round(low, 3), round(high, 3)) == (-0.3, 0.522)
    assert f"range [{sig(low)}, {sig(high)}] for 8 bands" in text
    assert f"over {iaside['num_samples']} samples (fill other\\_image" in text


def test_frequency_with_one_half_missing_and_bad_section(results):
    section = dict(results["frequency"], fisher=None)
    text = card_frequency(section)
    assert _row(text, "0")[3:] == ["–", "–", "–"]
    assert "band-restricted Fisher" not in text and "I-ASIDE score" in text
    section = dict(results["frequency"], iaside=None)
    text = card_frequency(section)
    assert _row(text, "0")[1:3] == ["–", "–"]
    assert "I-ASIDE" not in text
    assert f"trace {sig(section['fisher']['trace'])}" in text
    with pytest.raises(ResultsError, match="not a frequency section"):
        card_frequency({"iaside": None})


def test_bound_card_escapes_layer_names_and_types():
    section = {
        "layers": [
            {
                "name": "head|<script>alert(1)</script>",
                "type": "Linear\n# injected",
                "norm": 2.0,
                "method": "exact",
                "relative_change": None,
            }
        ],
        "input_scale": 1.0,
        "jacobian_bound": 2.0,
        "lambda_bound": 2.0,
        "num_samples": 3,
        "measured_max": 1.0,
        "measured_median": 0.5,
        "ratio_to_max": 2.0,
        "ratio_to_median": 4.0,
        "num_above_bound": 0,
    }
    from hf_fisher.report.sections.bound import card_bound

    text = card_bound(section)
    assert "<script>" not in text and "\n# injected" not in text
    name, kind = md_escape("head|<script>alert(1)</script>"), md_escape("Linear # injected")
    assert f"| {name} | {kind} |" in text
