"""The engine's case table: every model x every registered method x float32/float64.

Each cell is checked three ways against what the method claims:

- ``test_dense_truth``: the method's values against dense float64 Jacobians computed one
  sample at a time (:func:`dense_truth`), by the check of its :class:`EstimatorCase`;
- ``test_batching_invariance``: the same samples at ``batch_size`` 1, 7 and all give the same
  record within :func:`~hf_fisher.testing.tolerances.tolerance_for` (1e-5 in float32, 1e-10 in
  float64; see :meth:`Case.batch_rtol`): random draws are keyed per sample, so a sample's
  probes do not depend on its batch;
- ``test_eval_mode``: a model in train mode is measured in eval mode and gets its training
  flags back.

The tables are data: :data:`MODEL_CASES` (the tiny zoo of :mod:`hf_fisher.testing.models`, with
per-model tolerance notes) and :data:`ESTIMATOR_CASES` (one entry per method of
:data:`METHODS_UNDER_TEST`, saying what it claims and how that is checked). A new architecture
gets the whole suite in a few lines (a complete pytest module)::

    from hf_fisher.testing.cases import FisherEngineTestCase

    class TestMyModel(FisherEngineTestCase):
        def build(self, directory):
            return my_model_builder(directory)         # a directory, nn.Module or Classifier

        def inputs(self, classifier):
            return torch.rand(8, *classifier.input_shape)  # or a list of strings (>= 8)

or lists :class:`ModelCase` rows in ``models``, as tests/test_cases.py does with the zoo.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from hf_fisher.adapters import Classifier, load_classifier
from hf_fisher.estimators import registry
from hf_fisher.estimators.blackbox import default_step
from hf_fisher.options import WHITE_BOX_METHODS
from hf_fisher.spectrum import FisherSpectrum, fisher_spectrum
from hf_fisher.testing import models
from hf_fisher.testing.dense import dense_fisher, dense_spectrum
from hf_fisher.testing.tolerances import tolerance_for

# Every registered method is under test; a method without an ESTIMATOR_CASES row fails collection.
METHODS_UNDER_TEST = registry.method_names()
# The white-box methods that take (N, T, K) logits: the rows of structured-output models.
WHITE_BOX = tuple(
    name
    for name in registry.method_names(black_box=False)
    if registry.REGISTRY[name].structured_outputs
)
DTYPES = (torch.float32, torch.float64)
MIN_SAMPLES = 8  # so that batch size 7 differs from "all"
BATCH_SIZES = (1, 7, None)  # None: all samples in one batch
# A stochastic trace misses by more than k true standard deviations with probability at most
# 1/k^2 (Chebyshev), whatever the distribution of the probes: 4% for k = 5.
STANDARD_DEVIATIONS = 5.0

# Relative error of central differences (step 1e-2 in float32, 1e-4 in float64; see
# hf_fisher.estimators.blackbox.default_step) on a smooth model: truncation h^2/6 |f'''| plus
# rounding u/h, about 1e-5 and 1e-12 times the model's derivative ratios.
SMOOTH_FINITE_DIFFERENCES = {torch.float32: 1e-2, torch.float64: 1e-6}


def dense_truth(classifier: Classifier, raw_inputs: Any) -> tuple[Tensor, Tensor]:
    """Dense float64 eigenvalues (N, d) and traces (N,) of the batch, one sample at a time."""
    batch = classifier.prepare(raw_inputs).to(classifier.device, torch.float64)
    blocks = []
    for index in range(len(batch)):
        one = batch.select([index])
        fisher = dense_fisher(
            classifier.logit_fn(one), one.inputs, one.space_mask, classifier.likelihood
        )
        blocks.append(fisher)
    return dense_spectrum(torch.cat(blocks))


# --------------------------------------------------------------------------------------------
# Models.


@dataclass(frozen=True)
class ModelCase:
    """One row of the model table.

    Attributes:
        id: short name used in test ids ("resnet").
        build: directory -> what ``load_classifier`` accepts (a saved directory, an
            ``nn.Module`` or a Classifier). Called once; a module or Classifier is deep-copied
            for each dtype.
        inputs: the float64 classifier -> raw inputs, at least :data:`MIN_SAMPLES` samples.
        precision: relative precision of the model's own float64 arithmetic, a floor on every
            comparison (Hugging Face eager attention keeps its softmax in float32: 1e-5).
        finite_differences: dtype -> relative error of the central differences that
            black-box estimates are made of (see :data:`SMOOTH_FINITE_DIFFERENCES`).
        notes: why the tolerances are what they are.
        methods: the methods that apply to the model (None: every registered one); black-box
            methods refuse multi-label models and models with several output positions, so
            those rows list the white-box ones (:data:`WHITE_BOX`).
    """

    id: str
    build: Callable[[Path], Any]
    inputs: Callable[[Classifier], Any]
    precision: float = 0.0
    finite_differences: Mapping[torch.dtype, float] = field(
        default_factory=lambda: dict(SMOOTH_FINITE_DIFFERENCES)
    )
    notes: str = ""
    methods: tuple[str, ...] | None = None

    def rtol(self, dtype: torch.dtype) -> float:
        """Relative tolerance of a comparison of two computations of this model in ``dtype``."""
        return max(tolerance_for(dtype), self.precision)


def _image_inputs(classifier: Classifier) -> Tensor:  # (8, C, H, W) pixels in [0, 1]
    generator = torch.Generator().manual_seed(0)
    return torch.rand(
        MIN_SAMPLES, *classifier.input_shape, generator=generator, dtype=torch.float64
    )


CASE_TEXTS = (
    "a fine film",
    "awful",
    "the plot was slow",
    "great music, great cast",
    "nothing happened",
    "i loved every minute of this story",
    "dull",
    "an average film, neither good nor bad",
)
"""Eight texts of different lengths, so that padding masks differ across batches."""


def _text_inputs(classifier: Classifier) -> list[str]:
    return list(CASE_TEXTS)


def _zero_shot_clip(directory: Path) -> Classifier:
    """The tiny CLIP with its candidate labels encoded: a Classifier, copied per dtype."""
    return load_classifier(models.build_clip(directory), candidate_labels=models.CLIP_LABELS)


def _plain_module(directory: Path) -> nn.Module:
    return models.build_mlp(dtype=torch.float64)


def _plain_inputs(classifier: Classifier) -> Tensor:  # (8, 2, 3, 4)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(MIN_SAMPLES, 2, 3, 4, generator=generator, dtype=torch.float64)


_ATTENTION = (
    "Hugging Face eager attention computes its softmax in float32 even in a float64 model: "
    "values agree to ~1e-7 (precision 1e-5), and a float64 central difference has a float32 "
    "rounding error u32/h = 6e-4 (3e-3 allowed)"
)

MODEL_CASES: tuple[ModelCase, ...] = (
    ModelCase(
        "resnet",
        partial(models.build_resnet, image_size=8),
        _image_inputs,
        finite_differences={torch.float32: 1e-1, torch.float64: 1e-2},
        notes=(
            "ReLU and max pooling: a coordinate step straddling a kink averages two slopes, so "
            "central differences are off by up to ~5e-2 (float32) and ~1e-3 (float64)"
        ),
    ),
    ModelCase("convnext", partial(models.build_convnext, image_size=8), _image_inputs),
    ModelCase(
        "vit",
        partial(models.build_vit, image_size=8),
        _image_inputs,
        precision=1e-5,
        finite_differences={torch.float32: 1e-2, torch.float64: 3e-3},
        notes=_ATTENTION,
    ),
    ModelCase(
        "bert",
        models.build_bert,
        _text_inputs,
        precision=1e-5,
        finite_differences={torch.float32: 1e-2, torch.float64: 3e-3},
        notes=_ATTENTION + "; texts of different lengths exercise the padding masks",
    ),
    ModelCase("plain", _plain_module, _plain_inputs, notes="a user nn.Module (tanh MLP)"),
    ModelCase(
        "clip",
        _zero_shot_clip,
        _image_inputs,
        precision=1e-5,
        # Two float32-softmax towers and a cosine: the float64 difference was measured at up to
        # 3.3e-3 of lambda_max in a full-suite run, so 1e-2 (as float32) rather than 3e-3.
        finite_differences={torch.float32: 1e-2, torch.float64: 1e-2},
        notes=_ATTENTION + "; zero-shot: logits are scaled cosines to fixed label prompts",
    ),
    ModelCase(
        "bert-multilabel",
        partial(models.build_bert, problem_type="multi_label_classification"),
        _text_inputs,
        precision=1e-5,
        methods=WHITE_BOX_METHODS,
        notes=_ATTENTION + "; multi-label (bernoulli Fisher, J^T diag(s(1-s)) J): white-box only",
    ),
)


# --------------------------------------------------------------------------------------------
# Estimators: what each claims, and the check of that claim.


@dataclass
class Measurement:
    """A method's record for one model and dtype, with the dense truth it is checked against.

    Attributes:
        result: the record at ``batch_size=None`` (all samples at once).
        eigenvalues: (N, d) dense float64 eigenvalues, descending.
        trace: (N,) dense float64 traces.
        rtol: :meth:`ModelCase.rtol` for the dtype.
        finite_differences: the model's central-difference tolerance for the dtype.
        run: ``run(method, **settings)``: another record of the same classifier and inputs.
    """

    result: FisherSpectrum
    eigenvalues: Tensor
    trace: Tensor
    rtol: float
    finite_differences: float
    run: Callable[..., FisherSpectrum]


@dataclass(frozen=True)
class EstimatorCase:
    """One row of the estimator table.

    Attributes:
        id: the method name (as ``fisher_spectrum`` takes it).
        claims: what a record of this method guarantees, as its docstrings state it.
        settings: the per-sample input size d -> ``fisher_spectrum`` keywords.
        check: asserts the claim on a :class:`Measurement`.
        finite_differences: the record is made of central differences of the logits (see
            :meth:`Case.batch_rtol`).
    """

    id: str
    claims: str
    settings: Callable[[int], dict[str, Any]]
    check: Callable[[Measurement], None]
    finite_differences: bool = False


def _fail(what: str, bad: Tensor, details: str) -> str:
    return f"{what}: samples {bad.nonzero().flatten().tolist()} fail ({details})"


def _check_eigenvalues(m: Measurement, rtol: float, what: str) -> None:
    """Reported eigenvalues within ``rtol * lambda_max`` of the dense ones of the same rank.

    Rounding errors of a symmetric eigenproblem are absolute in ``||F|| = lambda_max``, so small
    eigenvalues are compared on that scale.
    """
    reported = m.result.eigenvalues
    truth = m.eigenvalues[:, : reported.shape[1]]
    error = (reported - truth).abs().amax(dim=1)
    bad = error > rtol * m.eigenvalues[:, 0]
    relative = error / m.eigenvalues[:, 0]
    assert not bad.any(), _fail(what, bad, f"max error / lambda_max {relative.max():.2e} > {rtol}")


def _check_relative(estimate: Tensor, truth: Tensor, rtol: float, what: str) -> None:
    relative = (estimate - truth).abs() / truth.abs()
    bad = relative > rtol
    assert not bad.any(), _fail(what, bad, f"relative error {relative.max():.2e} > {rtol}")


def _check_exact(m: Measurement) -> None:
    _check_eigenvalues(m, m.rtol, "exact eigenvalues")
    _check_relative(m.result.trace, m.trace, m.rtol, "exact trace")


def _check_converged_eigenvalues(m: Measurement) -> None:
    """Converged: each Ritz value within ``tol`` (relative) of lambda_j, and never above it.

    The residual bound puts an eigenvalue within ``tol * theta_j`` of theta_j, and Cauchy
    interlacing keeps ``theta_j <= lambda_j``; the compute dtype adds ``rtol * lambda_max``.
    """
    result = m.result
    converged = result.converged
    assert converged.all(), _fail(
        f"{result.method} convergence on the case inputs",
        ~converged,
        f"not converged within max_iter={result.settings['max_iter']}",
    )
    reported = result.eigenvalues
    truth = m.eigenvalues[:, : reported.shape[1]]
    slack = m.rtol * m.eigenvalues[:, :1]
    tol = result.settings["tol"]
    bad = ((reported - truth).abs() > tol * reported + slack).any(dim=1)
    assert not bad.any(), _fail(f"{result.method} eigenvalues within tol={tol}", bad, "")
    above = (reported > truth + slack).any(dim=1)
    assert not above.any(), _fail(f"{result.method} Ritz values <= lambda_j", above, "")


def _check_trace(m: Measurement, probes: int | torch.Tensor) -> None:
    """Exact where the standard error is 0; else within k true standard deviations.

    Gaussian class-space probes and Rademacher input probes of a PSD F have a variance of at
    most ``2 ||F||_F^2`` per probe (Hutch++'s and the Krylov-deflated remainder have less), so
    ``probes`` of them (per sample, when a tensor) miss tr(F) by more than
    ``k sqrt(2 / probes) ||F||_F`` with probability at most 1/k^2.
    """
    result = m.result
    assert (result.trace >= result.spectral_norm).all(), f"{result.method}: trace < lambda_max"
    error = (result.trace - m.trace).abs()
    standard_error = result.trace_standard_error
    assert torch.isfinite(standard_error).all(), f"{result.method}: non-finite standard error"
    exact = standard_error == 0
    _check_relative(result.trace[exact], m.trace[exact], m.rtol, f"{result.method} exact trace")
    frobenius = m.eigenvalues.pow(2).sum(dim=1).sqrt()
    spread = (2 / torch.as_tensor(probes, dtype=frobenius.dtype).clamp_min(1)).sqrt()
    bound = STANDARD_DEVIATIONS * spread * frobenius + m.rtol * m.trace
    bad = ~exact & (error > bound)
    assert not bad.any(), _fail(
        f"{result.method} stochastic trace within {STANDARD_DEVIATIONS:g} sigma",
        bad,
        f"error / bound {(error / bound)[~exact].max():.2f}",
    )


def _check_krylov(m: Measurement) -> None:
    """Lanczos and power iteration: converged eigenvalues, exact or class-space trace."""
    _check_converged_eigenvalues(m)
    _check_trace(m, m.result.trace_probes)  # each sample's probes (lanczos: adaptive)


def _check_trace_estimator(m: Measurement, probes: int) -> None:
    """Hutchinson / Hutch++: lambda_max is Lanczos', the trace is the estimator's."""
    _check_converged_eigenvalues(m)
    settings = {key: m.result.settings[key] for key in ("tol", "top_k", "max_iter", "seed")}
    lanczos = m.run("lanczos", **settings, num_probes=m.result.settings["num_probes"])
    torch.testing.assert_close(
        m.result.eigenvalues, lanczos.eigenvalues, rtol=m.rtol, atol=0, msg="lambda_max != Lanczos'"
    )
    _check_trace(m, probes)


def _check_sketch(m: Measurement) -> None:
    """Coordinate differences: the dense values up to the finite-difference error."""
    result = m.result
    assert result.method == "sketch-coordinates", f"got the {result.method} scheme"
    _check_eigenvalues(m, m.finite_differences, "sketch eigenvalues")
    _check_relative(result.trace, m.trace, m.finite_differences, "sketch trace")
    truths = {"spectral_norm": m.eigenvalues[:, 0], "trace": m.trace}
    for name, value in (("spectral_norm", result.spectral_norm), ("trace", result.trace)):
        interval = getattr(result, f"{name}_ci")
        inside = (interval[:, 0] <= value) & (value <= interval[:, 1])
        assert inside.all(), _fail(f"sketch {name} inside its interval", ~inside, "")
        truth = truths[name].to(interval.dtype)
        covered = (interval[:, 0] <= truth) & (truth <= interval[:, 1])
        assert covered.all(), _fail(f"dense {name} inside the sketch's interval", ~covered, "")


def _check_rayleigh_max(m: Measurement) -> None:
    """A Rayleigh quotient never exceeds lambda_max (up to finite differences)."""
    result = m.result
    assert result.spectral_norm_ci is None, "rayleigh-max claims no interval"
    ceiling = m.eigenvalues[:, 0] * (1 + m.finite_differences)
    bad = (result.spectral_norm > ceiling) | (result.spectral_norm < 0)
    assert not bad.any(), _fail("rayleigh-max in [0, lambda_max]", bad, "")


def _check_rayleigh_probes(m: Measurement) -> None:
    """Class-space Rayleigh quotients: a lower bound on lambda_max; the trace is exact."""
    result = m.result
    assert result.converged is None and result.settings["is_lower_bound"], "claims a bound only"
    ceiling = m.eigenvalues[:, 0] * (1 + m.rtol)
    bad = (result.spectral_norm > ceiling) | (result.spectral_norm < 0)
    assert not bad.any(), _fail("rayleigh-probes in [0, lambda_max]", bad, "")
    _check_relative(result.trace, m.trace, m.rtol, "rayleigh-probes exact trace")


_PROBES = 16
_ESTIMATORS = (
    EstimatorCase(
        "exact",
        "eigenvalues and trace of the dual K x K problem: the dense ones up to rounding",
        lambda dim: {"top_k": 2},
        _check_exact,
    ),
    EstimatorCase(
        "lanczos",
        "converged: every reported eigenvalue within tol of lambda_j (residual norms) and never "
        "above it; trace exact (Krylov space spans the range, or K-1 <= num_probes), else the "
        "Krylov-deflated class-space trace",
        lambda dim: {"top_k": 2, "tol": 1e-6, "num_probes": _PROBES},
        _check_krylov,
    ),
    EstimatorCase(
        "power",
        "converged: lambda_max within tol (residual norm); trace exact if K-1 <= num_probes, "
        "else class-space Hutchinson (num_probes=8 < 9 for the 10-class models): unbiased",
        lambda dim: {"tol": 1e-4, "max_iter": 200, "num_probes": 8},
        _check_krylov,
    ),
    EstimatorCase(
        "hutchinson",
        "lambda_max is Lanczos'; input-space Rademacher trace, unbiased (exact where Lanczos's "
        "space spans the range); tol=1e-3 stops Lanczos early so the estimate is used",
        lambda dim: {"tol": 1e-3, "num_probes": _PROBES},
        partial(_check_trace_estimator, probes=_PROBES),
    ),
    EstimatorCase(
        "hutchpp",
        "lambda_max is Lanczos'; Hutch++ trace, exact once the sketch reaches the rank, else "
        "unbiased with at least num_probes // 3 Hutchinson probes on the remainder",
        lambda dim: {"tol": 1e-3, "num_probes": _PROBES},
        partial(_check_trace_estimator, probes=_PROBES // 3),
    ),
    EstimatorCase(
        "sketch",
        "with 4d + 1 queries every coordinate is differenced at steps h and h/2: the dense "
        "values up to the finite-difference error, and intervals widened by that error",
        lambda dim: {"top_k": 2, "num_queries": 4 * dim + 1},
        _check_sketch,
        finite_differences=True,
    ),
    EstimatorCase(
        "rayleigh-probes",
        "the largest of num_probes class-space Rayleigh quotients of the K x K matrix "
        "C^1/2 J J^T C^1/2: a lower bound on lambda_max; its trace is tr(F) exactly",
        lambda dim: {"num_probes": 100},
        _check_rayleigh_probes,
    ),
    EstimatorCase(
        "rayleigh-max",
        "the largest Rayleigh quotient over random directions: a lower bound on lambda_max",
        lambda dim: {},
        _check_rayleigh_max,
        finite_differences=True,
    ),
)
ESTIMATOR_CASES: dict[str, EstimatorCase] = {case.id: case for case in _ESTIMATORS}


# --------------------------------------------------------------------------------------------
# The table and its runner.


@dataclass(frozen=True)
class Case:
    """One cell of the table: a model, a method and the dtype the method computes in."""

    model: ModelCase
    estimator: EstimatorCase
    dtype: torch.dtype

    @property
    def id(self) -> str:
        """``model-method-dtype``, e.g. ``resnet-lanczos-float32``."""
        return f"{self.model.id}-{self.estimator.id}-{str(self.dtype).removeprefix('torch.')}"

    def batch_rtol(self) -> float:
        """Tolerance between records of the same samples batched differently.

        The model's :meth:`ModelCase.rtol`; a central difference divides the logits'
        cross-batch rounding (a few ulps of |z|) by its step h, so finite-difference records
        allow 100 ulps / h (1.2e-3 in float32; float64 stays at 1e-10).
        """
        rtol = self.model.rtol(self.dtype)
        if self.estimator.finite_differences:
            rounding = 100 * torch.finfo(self.dtype).eps / default_step(self.dtype)
            rtol = max(rtol, rounding)
        return rtol


def table(model_cases: Sequence[ModelCase]) -> list[Case]:
    """Every model x every method of :data:`METHODS_UNDER_TEST` x every dtype."""
    missing = [method for method in METHODS_UNDER_TEST if method not in ESTIMATOR_CASES]
    if missing:
        raise LookupError(
            f"methods {missing} of hf_fisher.spectrum have no row in ESTIMATOR_CASES; add one "
            "saying what the method claims and how to check it"
        )
    return [
        Case(model, ESTIMATOR_CASES[method], dtype)
        for model in model_cases
        for method in METHODS_UNDER_TEST
        if model.methods is None or method in model.methods
        for dtype in DTYPES
    ]


# Error bars and lower eigenvalues are rounded on the scale of the value they belong to.
_SCALE_OF = {
    "eigenvalues": "spectral_norm",
    "spectral_norm_ci": "spectral_norm",
    "trace_standard_error": "trace",
    "trace_ci": "trace",
}


# Per-position shares come from the top eigenvector, whose rounding error is the eigenvalue's
# divided by the relative gap (lambda_1 - lambda_2) / lambda_1: at least 0.29 on the structured
# test models, so a factor 100 leaves room.
EIGENVECTOR_ROUNDING = 100.0
_SHARES = ("input_shares", "output_shares")


def _scale(record: FisherSpectrum, name: str) -> Tensor:
    """Per-sample scale of a field: its own |value| (row maximum), or that of its value."""
    values = getattr(record, _SCALE_OF.get(name, name)).abs()
    scale = values if values.ndim == 1 else values.amax(dim=1)
    return scale if getattr(record, name).ndim == 1 else scale[:, None]


def assert_same_records(
    record: FisherSpectrum, reference: FisherSpectrum, rtol: float, what: str
) -> None:
    """Every tensor of two records equal per sample within ``rtol`` of the sample's scale.

    Eigenvalues and error bars are compared on the scale of lambda_max or the trace they
    belong to, per-position shares with :data:`EIGENVECTOR_ROUNDING` times ``rtol``; flags and
    counts (``converged``, ``iterations``) must be identical.
    """
    assert record.method == reference.method, f"{what}: method {record.method}"
    for item in fields(FisherSpectrum):
        value, expected = getattr(record, item.name), getattr(reference, item.name)
        if not isinstance(expected, Tensor):
            continue
        assert isinstance(value, Tensor), f"{what}: {item.name} is {value}"
        if not expected.is_floating_point():
            assert torch.equal(value, expected), f"{what}: {item.name} {value} != {expected}"
            continue
        error = (value - expected).abs()
        limit = rtol * (EIGENVECTOR_ROUNDING if item.name in _SHARES else 1.0)
        bad = (error > limit * _scale(reference, item.name)).reshape(len(expected), -1).any(dim=1)
        assert not bad.any(), _fail(f"{what}: {item.name}", bad, f"rtol {rtol}")


class CaseRunner:
    """Builds each model once, its classifiers once per dtype, and caches truth and records."""

    def __init__(self, directories: pytest.TempPathFactory) -> None:
        self._directories = directories
        self._built: dict[str, Any] = {}
        self._classifiers: dict[tuple[str, torch.dtype], Classifier] = {}
        self._inputs: dict[str, Any] = {}
        self._truth: dict[str, tuple[Tensor, Tensor]] = {}
        self._records: dict[tuple, FisherSpectrum] = {}

    def classifier(self, model: ModelCase, dtype: torch.dtype) -> Classifier:
        """The model loaded in ``dtype`` (in eval mode, as the loader leaves it)."""
        key = (model.id, dtype)
        if key not in self._classifiers:
            if model.id not in self._built:
                self._built[model.id] = model.build(self._directories.mktemp(model.id))
            built = self._built[model.id]
            fresh = copy.deepcopy(built) if isinstance(built, (nn.Module, Classifier)) else built
            self._classifiers[key] = load_classifier(fresh, dtype=dtype)
        return self._classifiers[key]

    def inputs(self, model: ModelCase) -> Any:
        """The model's raw inputs (from its float64 classifier), at least 8 samples."""
        if model.id not in self._inputs:
            raw = model.inputs(self.classifier(model, torch.float64))
            assert len(raw) >= MIN_SAMPLES, f"{model.id}: give at least {MIN_SAMPLES} samples"
            self._inputs[model.id] = raw
        return self._inputs[model.id]

    def truth(self, model: ModelCase) -> tuple[Tensor, Tensor]:
        """Dense float64 eigenvalues (N, d) and traces (N,), whatever dtype is under test."""
        if model.id not in self._truth:
            classifier = self.classifier(model, torch.float64)
            self._truth[model.id] = dense_truth(classifier, self.inputs(model))
        return self._truth[model.id]

    def settings(self, case: Case) -> dict[str, Any]:
        """The estimator's keywords for this model's per-sample input size."""
        classifier = self.classifier(case.model, case.dtype)
        dim = classifier.prepare(self.inputs(case.model)).inputs[0].numel()
        return case.estimator.settings(dim)

    def run(
        self,
        model: ModelCase,
        dtype: torch.dtype,
        method: str,
        batch_size: int | None = None,
        **settings: Any,
    ) -> FisherSpectrum:
        """``fisher_spectrum`` of the model's inputs (cached: records are deterministic)."""
        key = (model.id, dtype, method, batch_size, tuple(sorted(settings.items())))
        if key not in self._records:
            self._records[key] = fisher_spectrum(
                self.classifier(model, dtype),
                self.inputs(model),
                method=method,
                batch_size=batch_size,
                **settings,
            )
        return self._records[key]

    def measure(self, case: Case) -> Measurement:
        """The case's record at ``batch_size=None`` with its dense truth."""
        eigenvalues, trace = self.truth(case.model)
        return Measurement(
            result=self.run(case.model, case.dtype, case.estimator.id, **self.settings(case)),
            eigenvalues=eigenvalues,
            trace=trace,
            rtol=case.model.rtol(case.dtype),
            finite_differences=case.model.finite_differences[case.dtype],
            run=partial(self.run, case.model, case.dtype),
        )


# --------------------------------------------------------------------------------------------
# The shipped test base class.


class FisherEngineTestCase:
    """Base class of engine tests: one model from :meth:`build` / :meth:`inputs`, or ``models``.

    Attributes:
        models: :class:`ModelCase` rows to test; None (default) tests the single model of
            :meth:`build` and :meth:`inputs`, with the tolerances below.
        rtol: that model's float64 precision floor (HF eager attention keeps its softmax in
            float32: set 1e-5 for attention models).
        finite_differences: that model's central-difference tolerance per dtype.
        methods: that model's methods (default all; :data:`WHITE_BOX` for structured outputs).
    """

    models: Sequence[ModelCase] | None = None
    rtol = 0.0
    finite_differences: Mapping[torch.dtype, float] = SMOOTH_FINITE_DIFFERENCES
    methods: tuple[str, ...] | None = None

    def build(self, directory: Path) -> Any:
        """Return what ``load_classifier`` accepts: a directory, an ``nn.Module``, a Classifier."""
        raise NotImplementedError

    def inputs(self, classifier: Classifier) -> Any:
        """Return raw inputs for ``classifier``: at least :data:`MIN_SAMPLES` samples."""
        raise NotImplementedError

    def model_cases(self) -> Sequence[ModelCase]:
        """The rows under test: ``models``, or one row named after the class."""
        if self.models is not None:
            return self.models
        name = type(self).__name__.removeprefix("Test").lower()
        return [
            ModelCase(
                name,
                self.build,
                self.inputs,
                precision=self.rtol,
                finite_differences=dict(self.finite_differences),
                methods=self.methods,
            )
        ]

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Parametrise ``case`` over the table, with ids such as ``resnet-lanczos-float32``."""
        if "case" in metafunc.fixturenames:
            cases = table(self.model_cases())
            metafunc.parametrize("case", [pytest.param(case, id=case.id) for case in cases])

    @pytest.fixture(scope="class")
    def runner(self, tmp_path_factory: pytest.TempPathFactory) -> CaseRunner:
        """Models, classifiers, dense truth and records, built once per test class."""
        return CaseRunner(tmp_path_factory)

    def test_dense_truth(self, case: Case, runner: CaseRunner) -> None:
        """The method's record satisfies what it claims, against dense float64 truth."""
        case.estimator.check(runner.measure(case))

    def test_batching_invariance(self, case: Case, runner: CaseRunner) -> None:
        """The same samples at batch size 1, 7 and all give the same record."""
        settings = runner.settings(case)
        records = {
            size: runner.run(case.model, case.dtype, case.estimator.id, size, **settings)
            for size in BATCH_SIZES
        }
        for size, record in records.items():
            assert_same_records(record, records[None], case.batch_rtol(), f"batch_size={size}")

    def test_eval_mode(self, case: Case, runner: CaseRunner) -> None:
        """A model in train mode is measured in eval mode and gets its training flags back."""
        classifier = runner.classifier(case.model, case.dtype)
        settings = runner.settings(case)
        reference = runner.run(case.model, case.dtype, case.estimator.id, **settings)
        model = classifier.model
        before = [module.training for module in model.modules()]
        seen: list[bool] = []  # was any submodule training when it ran?
        # every submodule is hooked: a dual encoder runs its towers, never its own forward
        hooks = [
            module.register_forward_pre_hook(
                lambda module, args: seen.append(any(sub.training for sub in module.modules()))
            )
            for module in model.modules()
        ]
        model.train()
        try:
            record = fisher_spectrum(
                classifier,
                runner.inputs(case.model),
                method=case.estimator.id,
                batch_size=None,
                **settings,
            )
            assert all(module.training for module in model.modules()), "train mode not restored"
        finally:
            for hook in hooks:
                hook.remove()
            for module, training in zip(model.modules(), before, strict=True):
                module.training = training
        assert seen and not any(seen), f"{sum(seen)} of {len(seen)} forward passes in train mode"
        assert_same_records(record, reference, case.batch_rtol(), "train mode")
