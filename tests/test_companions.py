"""Companion measurements wired through the runner, on the bundled trained model."""

import pytest
import torch

from hf_fisher import CompanionOptions, InputError, evaluate_robustness, load_classifier
from hf_fisher.companions import run_companions
from hf_fisher.results import validate_results


@pytest.fixture(scope="module")
def digits_run():
    options = CompanionOptions(attacks="l2", attack_epsilons=(0.5, 1.0), kl_check=True,
                               noise=True, noise_sigmas=(0.0, 0.3), noise_draws=4,
                               num_samples=12)
    return evaluate_robustness(num_samples=16, seed=1, companions=options, progress=False)


def test_attacks_reduce_accuracy_of_the_bundled_model(digits_run):
    attacks = digits_run.results["attacks"]
    assert attacks["num_samples"] == 12
    pgd = attacks["robust_accuracy"]["pgd"]
    assert pgd[-1] < attacks["clean_accuracy"] - 0.3  # epsilon 1.0 flips most digits
    assert pgd == sorted(pgd, reverse=True)


def test_companion_sections_are_in_a_valid_results_file(digits_run):
    results = validate_results(digits_run.results)
    assert {"attacks", "kl_check", "noise_curves"} <= set(results)
    assert "clever" not in results and "frequency" not in results
    noise = results["noise_curves"]
    assert noise["accuracy"][0] >= noise["accuracy"][1]  # noise hurts
    assert results["settings"]["companions"]["num_samples"] == 12


def test_companions_use_the_first_evaluated_samples(digits_run):
    first = digits_run.per_sample[:12]
    attacks = digits_run.results["attacks"]
    assert attacks["per_sample"]["spectral_norm"] == pytest.approx(
        [row["spectral_norm"] for row in first]
    )
    for name in ("attacks", "kl_check", "noise_curves"):
        assert digits_run.results[name]["sample_indices"] == [row["index"] for row in first]


def test_text_models_get_a_clear_error(bert_dir):
    classifier = load_classifier(bert_dir)
    batch = classifier.prepare(["good", "bad"])
    with pytest.raises(InputError, match="--frequency is not available for text models"):
        run_companions(classifier, batch, torch.tensor([0, 1]), torch.ones(2),
                       CompanionOptions(frequency=True))


def test_frequency_needs_pixel_space(default_model_dir):
    classifier = load_classifier(default_model_dir, input_space="normalized")
    batch = classifier.prepare(torch.zeros(2, 1, 32, 32))
    with pytest.raises(InputError, match="frequency view needs images in pixel space"):
        run_companions(classifier, batch, torch.tensor([0, 1]), torch.ones(2),
                       CompanionOptions(frequency=True))


def test_unbounded_space_needs_eps_max(mlp):
    classifier = load_classifier(mlp)
    batch = classifier.prepare(torch.randn(3, 2, 3, 4))
    with pytest.raises(InputError, match="pass --eps-max"):
        run_companions(classifier, batch, torch.tensor([0, 1, 2]), torch.ones(3),
                       CompanionOptions(attacks="l2"))


def test_kl_check_on_text_embeddings_tends_to_zero(bert_dir):
    classifier = load_classifier(bert_dir, dtype=torch.float64)
    batch = classifier.prepare(["good film", "a very bad and long film"])
    sections = run_companions(classifier, batch, torch.tensor([0, 1]), torch.ones(2),
                              CompanionOptions(kl_check=True, kl_radii=(1e-4, 1e-2)))
    small, large = sections["kl_check"]["median_relative_error"]
    assert small < 1e-3 and small < large


def test_compare_frequency_cli(tmp_path, capsys):
    from hf_fisher.cli import main
    from hf_fisher.digits import load_digits_dataset

    dataset = load_digits_dataset("test").select(range(6))
    for name, seed in (("a", 0), ("b", 1)):
        evaluate_robustness(None, dataset, num_samples=6, seed=seed,
                            out_dir=tmp_path / name, progress=False,
                            companions=CompanionOptions(frequency=True, frequency_bands=4,
                                                        num_samples=4))
    out = tmp_path / "cmp.png"
    assert main(["compare-frequency", str(tmp_path / "a" / "results.json"),
                 str(tmp_path / "b" / "results.json"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plain = tmp_path / "plain"
    evaluate_robustness(None, dataset, num_samples=2, out_dir=plain, progress=False)
    assert main(["compare-frequency", str(plain / "results.json")]) == 1
    assert "no frequency section" in capsys.readouterr().err


def test_inapplicable_companion_fails_before_the_fisher_pass(monkeypatch):
    import hf_fisher.spectrum as spectrum_module

    def never(*args, **kwargs):
        raise AssertionError("the Fisher pass ran before the companion check")

    monkeypatch.setattr(spectrum_module, "spectrum_of_batch", never)
    with pytest.raises(InputError, match="has no natural bound: pass --eps-max"):
        evaluate_robustness(
            num_samples=4,
            progress=False,
            input_space="normalized",
            companions=CompanionOptions(attacks="l2"),
        )


# The registry: one entry per measurement, each saying which classifiers it applies to.


def test_registry_has_one_entry_per_section_and_flag():
    from hf_fisher.cli import build_parser
    from hf_fisher.companions import COMPANIONS, requested_companions

    assert [c.section for c in COMPANIONS] == [
        "bound", "attacks", "noise_curves", "kl_check", "clever", "frequency", "path_separation",
    ]  # fmt: skip
    flags = {flag for action in build_parser()._subparsers._group_actions[0].choices[  # noqa: SLF001
        "evaluate"]._actions for flag in action.option_strings}  # noqa: SLF001
    assert {c.flag for c in COMPANIONS} <= flags
    assert requested_companions(CompanionOptions()) == [] and not CompanionOptions().requested
    for companion in COMPANIONS:
        name = companion.flag.removeprefix("--").replace("-", "_")
        options = CompanionOptions(**{name: "l2" if name == "attacks" else True})
        assert options.requested and requested_companions(options) == [companion]


def test_each_entry_says_which_classifiers_it_applies_to(bert_dir, mlp):
    from hf_fisher.companions import COMPANIONS, FREQUENCY_TEXT_REASON

    text = load_classifier(bert_dir)
    every = CompanionOptions(attacks="l2", noise=True, kl_check=True, clever=True,
                             frequency=True, bound=True)
    reasons = {c.section: c.applies_to(text, every) for c in COMPANIONS}
    assert {reasons[s] for s in ("kl_check", "noise_curves", "clever")} == {None}
    assert "pass --eps-max" in reasons["attacks"]  # embeddings are unbounded
    assert reasons["frequency"] == FREQUENCY_TEXT_REASON
    assert reasons["bound"].startswith("--bound is not available for text models")
    plain = load_classifier(mlp)  # "normalized" input space: no natural bound, no pixels
    reasons = {c.section: c.applies_to(plain, every) for c in COMPANIONS}
    assert "pass --eps-max" in reasons["attacks"]
    assert "needs images in pixel space" in reasons["frequency"]
    assert reasons["noise_curves"] is None and reasons["clever"] is None
    with_eps = CompanionOptions(attacks="l2", eps_max=1.0)
    assert COMPANIONS[1].applies_to(plain, with_eps) is None


def test_companion_options_are_checked_by_run_companions_too(mlp):
    classifier = load_classifier(mlp)
    batch = classifier.prepare(torch.randn(2, 2, 3, 4))
    with pytest.raises(InputError, match=r"noise_draws \(--noise-draws\) must be an integer >= 1"):
        run_companions(classifier, batch, torch.tensor([0, 1]), torch.ones(2),
                       CompanionOptions(noise=True, noise_draws=0))
    with pytest.raises(InputError, match="attacks='l3'; choose 'l2' or 'linf'"):
        run_companions(classifier, batch, torch.tensor([0, 1]), torch.ones(2),
                       CompanionOptions(attacks="l3"))


def test_registry_names_are_the_adapters_capability_names():
    from hf_fisher.adapters import COMPANIONS as CAPABILITIES
    from hf_fisher.companions import COMPANIONS

    assert {c.name for c in COMPANIONS} == set(CAPABILITIES)
