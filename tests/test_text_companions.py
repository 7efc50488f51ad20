"""Companion measurements in the embedding space of text models (per-sample attention masks).

Attacks, noise curves and CLEVER perturb token embeddings of non-padded tokens only; the
attention mask follows every subset and sample-major copy of the batch (``BatchLogits``), so a
padded sample gets the same result as the same sample measured alone.
"""

import pytest
import torch

from hf_fisher import CompanionOptions, InputError, load_classifier
from hf_fisher.attacks import baseline_scores, fgsm, lp_norm, pgd
from hf_fisher.clever import clever_scores
from hf_fisher.companions import run_companions
from hf_fisher.noise import noise_curves
from hf_fisher.testing.tolerances import tolerance_for

SHORT, LONG, MIDDLE = "good", "a very bad and long film indeed", "fine film"
# the same rows through other kernels: float64 tolerance
SAME_ROWS = {"rtol": tolerance_for(torch.float64), "atol": 1e-12}
# padded vs alone: HF eager attention keeps its softmax in float32 even in a float64 model
PADDED = {"rtol": tolerance_for(torch.float32), "atol": 1e-8}


@pytest.fixture(scope="module")
def bert64(bert_dir):
    return load_classifier(bert_dir, dtype=torch.float64, device="cpu")


def _padded_and_alone(classifier):
    """The short sample inside a padded batch, and alone; each with its logit function."""
    batch = classifier.prepare([SHORT, LONG, MIDDLE])
    alone = classifier.prepare([SHORT])
    assert batch.inputs.shape[1] > alone.inputs.shape[1]  # SHORT is padded in the batch
    return batch, alone


def test_logits_follow_subsets_and_copies(bert64):
    batch = bert64.prepare([SHORT, LONG, MIDDLE])
    logit_fn = bert64.logit_fn(batch)
    with torch.no_grad():
        full = logit_fn(batch.inputs)
        subset = logit_fn.select([2, 0])(batch.inputs[[2, 0]])
        copies = logit_fn.select(slice(1, 3))(batch.inputs[1:3].repeat_interleave(3, dim=0))
    torch.testing.assert_close(subset, full[[2, 0]], **SAME_ROWS)
    torch.testing.assert_close(copies, full[1:3].repeat_interleave(3, dim=0), **SAME_ROWS)
    with pytest.raises(InputError, match=r"got 2 rows for a batch of 3 samples .*select"):
        logit_fn(batch.inputs[:2])


def test_attacks_move_only_non_padded_tokens_within_the_budget(bert64):
    batch = bert64.prepare([SHORT, LONG, MIDDLE])
    logit_fn = bert64.logit_fn(batch)
    labels = logit_fn(batch.inputs).argmax(dim=1)
    epsilon = torch.tensor([50.0, 1e-3, 50.0], dtype=torch.float64)
    result = pgd(
        logit_fn, batch.inputs, labels, epsilon, steps=10, restarts=2, space_mask=batch.space_mask
    )
    delta = result.adversarial - batch.inputs
    assert (delta * (1 - batch.space_mask)).abs().max() == 0  # padding never moves
    assert (lp_norm(delta, "l2") <= epsilon * (1 + 1e-9)).all()  # radius over real tokens
    assert result.success.tolist() == [True, False, True]  # restart 2 ran on a subset


def test_padded_sample_gets_the_attack_result_it_gets_alone(bert64):
    batch, alone = _padded_and_alone(bert64)
    length = alone.inputs.shape[1]
    results = []
    for prepared in (batch, alone):
        logit_fn = bert64.logit_fn(prepared)
        labels = logit_fn(prepared.inputs).argmax(dim=1)
        common = {"space_mask": prepared.space_mask}
        # deterministic PGD (no random start), two restarts: the second runs on a subset
        attack = pgd(
            logit_fn,
            prepared.inputs,
            labels,
            0.3,
            steps=5,
            restarts=2,
            random_start=False,
            **common,
        )
        step = fgsm(logit_fn, prepared.inputs, labels, 0.3, norm="l2", **common)
        scores = baseline_scores(logit_fn, prepared.inputs, **common)
        results.append((attack, step, scores))
    (attack, step, scores), (attack1, step1, scores1) = results
    torch.testing.assert_close(attack.adversarial[0, :length], attack1.adversarial[0], **PADDED)
    torch.testing.assert_close(step.adversarial[0, :length], step1.adversarial[0], **PADDED)
    assert attack.success[0] == attack1.success[0]
    torch.testing.assert_close(scores.first_order[0], scores1.first_order[0], **PADDED)
    torch.testing.assert_close(scores.confidence[0], scores1.confidence[0], **PADDED)


def test_padded_sample_gets_the_clever_lipschitz_it_gets_alone(bert64):
    """In a ball of radius 1e-7 the CLEVER Lipschitz estimate is the margin's gradient norm at
    the input, to ~1e-7 relative: the same for the padded sample and the sample alone; one
    sample per forward pass (max_points = batch_points) makes every pass a subset."""
    batch, alone = _padded_and_alone(bert64)
    lipschitz = []
    for prepared in (batch, alone):
        scores = clever_scores(
            bert64.logit_fn(prepared),
            prepared.inputs,
            radius=1e-7,
            num_batches=3,
            batch_points=4,
            max_points=4,
            space_mask=prepared.space_mask,
            num_bootstrap=10,
        )
        lipschitz.append(scores.lipschitz[0])
    torch.testing.assert_close(lipschitz[0], lipschitz[1], rtol=1e-5, atol=0)


def test_noise_leaves_padding_alone_and_a_zero_sigma_is_the_clean_accuracy(bert64):
    batch = bert64.prepare([SHORT, LONG, MIDDLE])
    logit_fn = bert64.logit_fn(batch)
    predicted = logit_fn(batch.inputs).argmax(dim=1)
    seen = []

    def recording(inputs):
        seen.append(inputs)
        return logit_fn(inputs)

    curves = noise_curves(
        recording,
        batch.inputs,
        predicted,
        sigmas=[0.0, 0.5],
        draws=2,
        space_mask=batch.space_mask,
        chunk_size=3,  # one chunk: the recording wrapper hides the batch's .select
    )
    assert curves.accuracy[0] == 1.0 and curves.brier[0] < 1.0
    moved = [(inputs - batch.inputs).abs() for inputs in seen]
    assert all((change * (1 - batch.space_mask)).max() == 0 for change in moved)
    assert max(float((change * batch.space_mask).max()) for change in moved) > 0.1


def test_every_text_companion_runs_through_the_registry(bert_dir):
    classifier = load_classifier(bert_dir, device="cpu")
    batch = classifier.prepare([SHORT, LONG, MIDDLE])
    options = CompanionOptions(
        attacks="l2",
        attack_epsilons=(0.5, 5.0),
        eps_max=50.0,
        noise=True,
        noise_draws=2,
        clever=True,
        clever_radius=1.0,
        kl_check=True,
    )
    sections = run_companions(classifier, batch, torch.tensor([0, 1, 2]), torch.ones(3), options)
    assert set(sections) == {"attacks", "noise_curves", "clever", "kl_check"}
    robust = sections["attacks"]["robust_accuracy"]["pgd"]
    assert robust[0] >= robust[1]
    with pytest.raises(InputError, match="frequency bands are an image concept"):
        run_companions(
            classifier,
            batch,
            torch.tensor([0, 1, 2]),
            torch.ones(3),
            CompanionOptions(frequency=True),
        )
    with pytest.raises(InputError, match=r"input space 'embeddings' has no natural bound"):
        run_companions(
            classifier,
            batch,
            torch.tensor([0, 1, 2]),
            torch.ones(3),
            CompanionOptions(attacks="l2"),
        )
