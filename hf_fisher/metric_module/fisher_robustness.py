"""Fisher robustness: input-space Fisher information of a classifier, as an ``evaluate`` metric.

This script only hands off to ``hf_fisher.metric``; the library does the work (and is tested).
"""

import evaluate

from hf_fisher import metric

_CITATION = """\
@misc{fisher_robustness_2026,
  title         = {Measuring Model Robustness via Fisher Information},
  year          = {2026},
  eprint        = {2606.04767},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2606.04767}
}
"""

_DESCRIPTION = """\
Fisher robustness measures how fast a classifier's predicted distribution changes under small
input perturbations. For each input x it computes the input-space Fisher information matrix
F(x) = J^T (diag(p) - p p^T) J, with J the Jacobian of the logits with respect to the input and
p the softmax probabilities, and reports its largest eigenvalue (spectral_norm, the worst-case
sensitivity), its trace (the average sensitivity) and kl_radius = sqrt(2 tau / spectral_norm),
the L2 perturbation at which the second-order KL divergence reaches tau. Lower spectral_norm and
trace, and a larger kl_radius, mean a locally more robust model. Images are measured in pixel
space ([0, 1] pixels, the processor's normalisation included), texts in token-embedding space.
Unlike most metrics it takes the model itself, like evaluate's perplexity takes model_id.
"""

_KWARGS_DESCRIPTION = """
Args:
    model: a Hub id, a local directory saved with save_pretrained, or an nn.Module that maps a
        tensor to logits. Required.
    inputs: a list of PIL images, a list of strings, a list of (text, text_pair) tuples, or an
        (N, ...) tensor already in the model's input space (used exactly as given).
    references (list of int, optional): true labels; omitted, the predicted labels are used.
    predictions (optional): ignored; the metric runs the model to get its predictions. Accepted
        because evaluate.combine passes it to every module.
    return_per_sample (bool, default False): add per-sample lists.
    batch_size (int, default 32), method (str, default "auto"; "exact", "lanczos", "power",
        "hutchinson", "hutchpp", "sketch", "rayleigh-max"), black_box (bool, default False:
        forward queries only), top_k (int,
        default 1), max_iter (int), tol (float, default 1e-3), num_queries (int), num_probes
        (int, default 16), seed (int, default 0), kl_tau (float, default 0.01), input_space
        ("pixels", "normalized" or "embeddings"), device (str), dtype ("float32" or
        "float64"): estimator options of hf_fisher.evaluate_robustness. Unknown names raise.
    label_mapping (dict, optional): the model's label name -> the reference value it stands for,
        as in evaluate's evaluators (e.g. {"NEGATIVE": 0, "POSITIVE": 1}); without it,
        integer references are the model's class ids.
Returns:
    spectral_norm_{mean, median, p05, p95, median_ci_low, median_ci_high}: lambda_max(F) >= 0.
    trace_{...}: trace(F) >= spectral_norm, same statistics.
    kl_radius_{...}: sqrt(2 kl_tau / lambda_max) in (0, inf].
    accuracy: fraction of predictions equal to references, in [0, 1].
    num_samples: the number of inputs scored.
    With return_per_sample=True also the lists spectral_norm, trace, kl_radius, label,
    predicted and probability, one entry per input.
Examples:
    The bundled digits ResNet on eight real held-out handwritten digits:

    >>> import evaluate
    >>> from hf_fisher.digits import DEFAULT_MODEL_DIR, load_digits_dataset
    >>> digits = load_digits_dataset("test").select(range(8))
    >>> fisher = evaluate.load("fisher_robustness")
    >>> results = fisher.compute(
    ...     model=str(DEFAULT_MODEL_DIR), inputs=digits["image"], references=digits["label"]
    ... )
    >>> results["num_samples"], results["accuracy"]
    (8, 1.0)
    >>> round(results["spectral_norm_median"], 3), round(results["kl_radius_median"], 3)
    (1.454, 0.119)
    >>> 0 < results["spectral_norm_median"] <= results["trace_median"]
    True
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FisherRobustness(evaluate.Metric):
    """The metric: each process scores its inputs, process 0 summarises."""

    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=metric.record_features(),
            reference_urls=["https://arxiv.org/abs/2606.04767"],
        )

    def add_batch(self, *, model=None, inputs=None, references=None, predictions=None, **options):
        """Score a batch of inputs now and queue its per-sample results (not ``predictions``)."""
        super().add_batch(**metric.per_sample_columns(model, inputs, references, **options))

    def compute(
        self,
        *,
        model=None,
        inputs=None,
        references=None,
        predictions=None,
        return_per_sample=False,
        **options,
    ):
        """Score ``inputs`` (or use the batches added so far) and return the flat scores.

        ``predictions`` is ignored (the model gives them); ``evaluate.combine`` passes it.
        """
        pending = self.writer is not None
        if model is None and inputs is None and references is None and pending:
            metric.check_options(options, allowed=("seed",))
        else:
            self.add_batch(model=model, inputs=inputs, references=references, **options)
        return super().compute(return_per_sample=return_per_sample, seed=options.get("seed", 0))

    def _compute(self, *, return_per_sample=False, seed=0, **columns):
        return metric.scores_from_columns(columns, return_per_sample=return_per_sample, seed=seed)
