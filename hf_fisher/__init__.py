"""hf-fisher: input-space Fisher information robustness for Hugging Face classifiers.

``F(x) = J^T (diag(p) - p p^T) J`` with J the logits Jacobian w.r.t. the input and p the
softmax; per sample, lambda_max(F) is the worst-case local sensitivity (second order,
``KL(p(x) || p(x + d)) ~ d^T F d / 2``) and trace(F) the average one.
"""

from hf_fisher.adapters import Classifier, PreparedBatch, load_classifier
from hf_fisher.bounds import bound_report, lipschitz_bound
from hf_fisher.companions import CompanionOptions
from hf_fisher.errors import (
    DatasetError,
    HfFisherError,
    InputError,
    ModelLoadError,
    NotAClassifierError,
    ResultsError,
)
from hf_fisher.estimators import (
    class_space_hutchinson,
    hutchinson,
    hutchpp,
    lanczos,
    power_iteration,
    rayleigh_max,
    sketch_fisher,
)
from hf_fisher.estimators.exact import dual_spectrum, gradient_rows
from hf_fisher.metric import ensure_metric_installed as _ensure_metric_installed
from hf_fisher.metric import fisher_evaluator, fisher_robustness_scores, install_metric
from hf_fisher.operators import DenseOperator, FisherOperator
from hf_fisher.results import load_results, validate_results
from hf_fisher.runner import RobustnessReport, evaluate_robustness
from hf_fisher.spectrum import FisherSpectrum, fisher_spectrum

__version__ = "0.1.0"

# evaluate.load("fisher_robustness") works offline: install the metric script into evaluate's
# modules cache when it is missing (a single stat when it is present; never raises).
_ensure_metric_installed()

__all__ = [
    # main entry points
    "fisher_spectrum",
    "FisherSpectrum",
    "evaluate_robustness",
    "RobustnessReport",
    "CompanionOptions",
    "lipschitz_bound",
    "bound_report",
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
