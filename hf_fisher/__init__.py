"""hf-fisher: input-space Fisher information robustness for Hugging Face classifiers.

``F(x) = J^T (diag(p) - p p^T) J`` with J the logits Jacobian w.r.t. the input and p the
softmax; per sample, lambda_max(F) is the worst-case local sensitivity (second order,
``KL(p(x) || p(x + d)) ~ d^T F d / 2``) and trace(F) the average one.

The public names below are imported on first use (PEP 562), so ``import hf_fisher`` and
``hf-fisher --help`` do not pay for torch, transformers, datasets or scipy.
"""

from hf_fisher._lazy import lazy_exports as _lazy_exports
from hf_fisher._metric_install import ensure_metric_installed as _ensure_metric_installed

__version__ = "0.1.0"

# evaluate.load("fisher_robustness") works offline: install the metric script into evaluate's
# modules cache when it is missing (when present: hash the 5 kB script, one stat; never raises).
_ensure_metric_installed()

__all__ = [
    # main entry points
    "fisher_spectrum",
    "FisherSpectrum",
    "evaluate_robustness",
    "RobustnessReport",
    "EstimatorOptions",
    "RunOptions",
    "CompanionOptions",
    "ZeroShotOptions",
    "lipschitz_bound",
    "bound_report",
    "path_separation",
    "PathSeparation",
    # models
    "load_classifier",
    "Classifier",
    "PreparedBatch",
    # operators and estimators
    "FisherOperator",
    "DenseOperator",
    "gradient_rows",
    "dual_spectrum",
    "lanczos",
    "power_iteration",
    "hutchinson",
    "hutchpp",
    "class_space_hutchinson",
    "sketch_fisher",
    "rayleigh_max",
    # evaluate metric
    "fisher_robustness_scores",
    "fisher_evaluator",
    "install_metric",
    # results
    "load_results",
    "validate_results",
    # errors
    "HfFisherError",
    "ModelLoadError",
    "NotAClassifierError",
    "InputError",
    "DatasetError",
    "ResultsError",
]

_SOURCES = {
    "fisher_spectrum": "hf_fisher.spectrum",
    "FisherSpectrum": "hf_fisher.spectrum",
    "evaluate_robustness": "hf_fisher.runner",
    "RobustnessReport": "hf_fisher.runner",
    "EstimatorOptions": "hf_fisher.options",
    "RunOptions": "hf_fisher.options",
    "CompanionOptions": "hf_fisher.options",
    "ZeroShotOptions": "hf_fisher.options",
    "lipschitz_bound": "hf_fisher.bounds",
    "bound_report": "hf_fisher.bounds",
    "path_separation": "hf_fisher.path_separation",
    "PathSeparation": "hf_fisher.path_separation",
    "load_classifier": "hf_fisher.adapters",
    "Classifier": "hf_fisher.adapters",
    "PreparedBatch": "hf_fisher.adapters",
    "FisherOperator": "hf_fisher.operators",
    "DenseOperator": "hf_fisher.operators",
    "gradient_rows": "hf_fisher.estimators.exact",
    "dual_spectrum": "hf_fisher.estimators.exact",
    "lanczos": "hf_fisher.estimators",
    "power_iteration": "hf_fisher.estimators",
    "hutchinson": "hf_fisher.estimators",
    "hutchpp": "hf_fisher.estimators",
    "class_space_hutchinson": "hf_fisher.estimators",
    "sketch_fisher": "hf_fisher.estimators",
    "rayleigh_max": "hf_fisher.estimators",
    "fisher_robustness_scores": "hf_fisher.metric",
    "fisher_evaluator": "hf_fisher.metric",
    "install_metric": "hf_fisher._metric_install",
    "load_results": "hf_fisher.results",
    "validate_results": "hf_fisher.results",
    "HfFisherError": "hf_fisher.errors",
    "ModelLoadError": "hf_fisher.errors",
    "NotAClassifierError": "hf_fisher.errors",
    "InputError": "hf_fisher.errors",
    "DatasetError": "hf_fisher.errors",
    "ResultsError": "hf_fisher.errors",
}
"""Where each name of ``__all__`` is defined: ``__getattr__`` imports it from there."""

__getattr__, __dir__ = _lazy_exports(__name__, _SOURCES)
