"""`fisher_spectrum`: per-sample lambda_max(F) and trace(F) for any classifier, by any method."""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import Tensor

from hf_fisher.adapters import Classifier, PreparedBatch, eval_mode
from hf_fisher.errors import InputError
from hf_fisher.estimators import registry
from hf_fisher.estimators.result import FisherSpectrum
from hf_fisher.estimators.spec import AutoBudget, EstimatorCall, Problem
from hf_fisher.operators import LogitFn, check_likelihood
from hf_fisher.options import LANCZOS_STARTS, EstimatorOptions, positive
from hf_fisher.paper_compat import apply_paper_compat, check_paper_compat_space

# Views of the registry (hf_fisher.estimators.registry), in its order.
WHITE_BOX_METHODS = registry.method_names(black_box=False)
BLACK_BOX_METHODS = registry.method_names(black_box=True)
METHODS = ("auto", *WHITE_BOX_METHODS, *BLACK_BOX_METHODS)

# The budget of method="auto": the cost of the exact method (a forward and a backward pass per
# class direction) at EXACT_MAX_CLASSES classes, and gradient rows of at most 2 GiB per batch.
EXACT_MAX_CLASSES = 64
EXACT_MAX_ROW_BYTES = 2 * 1024**3
COMPUTE_DTYPES = (torch.float32, torch.float64)


def check_compute_dtype(dtype: torch.dtype, what: str) -> None:
    """Refuse half precision: it loses the small class probabilities that weight the Fisher."""
    if dtype not in COMPUTE_DTYPES:
        raise InputError(
            f"{what} is {dtype}; Fisher spectra need float32 (default) or float64: half "
            "precision loses the small class probabilities of the Fisher (1-35% errors). Pass "
            "dtype=torch.float32 or dtype=torch.float64"
        )


def _check_black_box_structure(outputs: dict | None, method: str, black_box: bool) -> None:
    spec = registry.REGISTRY.get(method)
    if outputs is not None and spec is not None and not spec.black_box:
        if not spec.structured_outputs:
            raise InputError(
                f"method {method!r} takes one prediction per input, and this model has "
                f"structured outputs ({outputs['kind']}); use 'auto', 'exact' or 'lanczos'"
            )
    if outputs is not None and (black_box or (spec is not None and spec.black_box)):
        raise InputError(
            "black-box estimates support only image and text classifiers, and this model has "
            f"structured outputs ({outputs['kind']}: several output positions, or a vocabulary "
            "too large for a K x K sketch); use a white-box method (black_box=False, method "
            "'auto', 'exact' or 'lanczos')"
        )


def _check_black_box_likelihood(likelihood: str, method: str, black_box: bool) -> None:
    spec = registry.REGISTRY.get(method)
    if likelihood == "bernoulli" and (black_box or (spec is not None and spec.black_box)):
        names = ", ".join(registry.method_names(black_box=True))
        raise InputError(
            f"black-box estimates ({names}) support only softmax classifiers, and this model "
            "is multi-label (bernoulli likelihood); use a white-box method (black_box=False, "
            "method 'auto', 'exact' or 'lanczos')"
        )


def resolve_method(
    method: str,
    black_box: bool,
    num_classes: int | None,
    dim: int,
    batch: int,
    itemsize: int = 4,
    likelihood: str = "categorical",
    num_positions: int = 1,
) -> str:
    """Turn ``method`` (maybe "auto") into a concrete one, checking it fits ``black_box``.

    ``auto`` takes the first registered candidate whose cost model fits :func:`auto_budget`:
    ``exact`` (K-1 backward passes, K for multi-label) for K <= 64 when the (batch, K-1 or K,
    dim) gradient rows fit in 2 GiB, ``lanczos`` otherwise; black-box ``auto`` is ``sketch``.
    """
    if method != "auto":
        spec = registry.method_spec(method)
        if black_box and not spec.black_box:
            raise InputError(
                f"method {method!r} needs gradients but black_box=True; use one of "
                f"{', '.join(registry.method_names(black_box=True))} (or 'auto') for black-box "
                "estimates"
            )
        return method
    if black_box:  # black-box costs do not depend on K, which may be unknown here
        problem = Problem(num_classes or 2, dim, itemsize)
        return registry.choose_auto(True, problem, auto_budget(batch))
    if num_classes is None:
        raise InputError("method='auto' needs num_classes")
    problem = Problem(num_classes, dim, itemsize, likelihood, num_positions=num_positions)
    return registry.choose_auto(False, problem, auto_budget(batch, likelihood))


def auto_budget(batch: int, likelihood: str = "categorical") -> AutoBudget:
    """What ``auto`` may spend: the exact method's cost at :data:`EXACT_MAX_CLASSES` classes.

    That is one forward and one backward pass per class direction (EXACT_MAX_CLASSES - 1, or
    EXACT_MAX_CLASSES for multi-label), and :data:`EXACT_MAX_ROW_BYTES` of working memory per
    batch. Read at call time, so both limits can be changed at run time.
    """
    directions = Problem(EXACT_MAX_CLASSES, 0, likelihood=likelihood).rank_bound
    return AutoBudget(1 + directions, EXACT_MAX_ROW_BYTES, batch)


def _max_input_dim(classifier: Classifier) -> int:
    """Per-sample input size: from ``input_shape``, or the longest text the model takes."""
    if classifier.input_shape is not None:
        return math.prod(classifier.input_shape)
    if classifier.modality == "text":
        limits = [
            getattr(classifier.tokenizer, "model_max_length", None),
            getattr(getattr(classifier.model, "config", None), "max_position_embeddings", None),
        ]
        lengths = [limit for limit in limits if isinstance(limit, int) and 0 < limit < 10**6]
        if lengths:
            return min(lengths) * classifier.embeddings.embedding_dim
    raise InputError(
        f"cannot tell the per-sample input size of {classifier!r} to choose method='auto' for "
        "the whole run; pass input_dim= (the number of input coordinates of one sample) or a "
        "concrete method"
    )


def resolve_run_method(
    classifier: Classifier,
    method: str,
    black_box: bool,
    batch_size: int,
    input_dim: int | None = None,
) -> str:
    """Resolve ``method`` once for a whole run, so every batch uses the same estimator.

    ``auto`` is decided from the configured ``batch_size`` and the largest per-sample input
    (``input_dim``; default the classifier's input shape, or for text the model's maximum
    length times its hidden size), never from the size of one chunk: a short last batch or a
    short text batch cannot switch a run from Lanczos to exact.

    Args:
        classifier: the loaded classifier (its ``num_classes``, ``dtype`` and ``likelihood``).
        method: a method name or "auto".
        black_box: forward queries only.
        batch_size: samples per batch, as configured.
        input_dim: input coordinates per sample, if known.

    Returns:
        A concrete method name.

    Raises:
        InputError: an unknown method, a gradient method with ``black_box``, a black-box
            method for a multi-label model, half precision, or a bad ``batch_size``.

    """
    check_compute_dtype(classifier.dtype, "the classifier's dtype")
    if batch_size < 1:
        raise InputError(f"got batch_size={batch_size}; pass a positive batch size")
    _check_black_box_likelihood(classifier.likelihood, method, black_box)
    _check_black_box_structure(classifier.outputs_info(), method, black_box)
    if method != "auto" or black_box:
        return resolve_method(method, black_box, None, 0, batch_size)
    dim = _max_input_dim(classifier) if input_dim is None else input_dim
    return resolve_method(
        method,
        black_box,
        classifier.num_classes,
        dim,
        batch_size,
        classifier.dtype.itemsize,
        likelihood=classifier.likelihood,
        num_positions=classifier.output_positions,
    )


def check_lanczos_knobs(lanczos_start: str, trace_rtol: float) -> None:
    """Refuse an unknown Lanczos start or a trace tolerance that is not a finite number > 0."""
    if lanczos_start not in LANCZOS_STARTS:
        raise InputError(
            f"lanczos_start (--lanczos-start) must be one of {', '.join(LANCZOS_STARTS)}, "
            f"got {lanczos_start!r}"
        )
    positive("the relative standard error the lanczos trace stops at, e.g. 0.05")(
        "trace_rtol", "--trace-rtol", trace_rtol
    )
def per_sample_memory(
    classifier: Classifier, method: str, settings: dict, input_dim: int | None = None
) -> int:
    """Working bytes per sample of a concrete ``method`` (its registered cost model).

    ``settings`` are the estimator knobs (:meth:`EstimatorOptions.to_settings`); ``input_dim``
    defaults as in :func:`resolve_run_method`. This is what the runner divides the memory
    budget by to clamp its Fisher batches.
    """
    problem = Problem(
        classifier.num_classes,
        _max_input_dim(classifier) if input_dim is None else input_dim,
        classifier.dtype.itemsize,
        classifier.likelihood,
        top_k=settings.get("top_k", 1),
        max_iter=settings.get("max_iter"),
        num_probes=settings.get("num_probes", 16),
        num_queries=settings.get("num_queries"),
        num_positions=classifier.output_positions,
    )
    return int(registry.method_spec(method).cost(problem).memory_bytes)


def spectrum_of_batch(
    logit_fn: LogitFn,
    inputs: Tensor,
    *,
    space_mask: Tensor | None = None,
    method: str = "auto",
    black_box: bool = False,
    top_k: int = 1,
    max_iter: int | None = None,
    tol: float = 1e-3,
    num_queries: int | None = None,
    num_probes: int = 16,
    seed: int = 0,
    sample_ids: Sequence[int] | None = None,
    num_classes: int | None = None,
    likelihood: str = "categorical",
    shares: bool = False,
    power_start: str = "random",
    fd_step: float | None = None,
    paper_compat: bool = False,
    lanczos_start: str = "informed",
    trace_rtol: float = 0.05,
    max_memory: int | str = "auto",
) -> FisherSpectrum:
    """Fisher spectrum of one batch given a plain ``logit_fn`` (no Hugging Face involved).

    The method runs from :mod:`hf_fisher.estimators.registry`; its spec declares what the
    result holds (e.g. when Lanczos traces are exact: :mod:`hf_fisher.estimators.matrix_free`).

    Args:
        logit_fn: maps (N, *shape) inputs to (N, K) logits; samples must be independent.
        inputs: (N, *shape) batch in the input space.
        space_mask: optional 0/1 mask broadcastable to ``inputs`` (text padding).
        method: see :func:`fisher_spectrum`.
        black_box: forward queries only.
        top_k: eigenvalues to report.
        max_iter: products per sample for lanczos (default 100) and power (default 100).
        tol: relative tolerance of the iterative methods on every reported eigenvalue.
        num_queries: black-box queries per sample (default 201).
        num_probes: probes of the stochastic trace estimators.
        seed: seed of every random draw; draws are per sample (see ``sample_ids``).
        sample_ids: stable ids of the samples (default ``0..N-1``), so results do not depend
            on batching or sharding.
        num_classes: K, if known (saves a forward pass when ``method="auto"``).
        likelihood: "categorical" (softmax) or "bernoulli" (multi-label sigmoids).
        shares: also return the top eigenvector and, for structured (N, T, K) logits, each
            output position's share of lambda_max (white-box methods; one more product).

    ``logit_fn`` may return (N, T, K) logits: a product of T categoricals (a token classifier,
    a segmenter), whose Fisher is the sum of the positions' Fishers (white-box methods only).
        power_start: "random" or "top-class-gradient" (method "power").
        fd_step: black-box central-difference step (None: by dtype).
        paper_compat: recorded in the settings only; the caller resolves the preset
            (:func:`~hf_fisher.paper_compat.apply_paper_compat`).
        lanczos_start: "informed" or "random" (where Lanczos starts).
        trace_rtol: the relative standard error at which "lanczos" stops adding trace probes.
        max_memory: byte budget of the method's working memory ("4GB", bytes, or "auto";
            :mod:`hf_fisher.memory`): method "exact" runs its samples in chunks that fit it.

    Returns:
        A :class:`FisherSpectrum`.
    """
    for name, value in (("top_k", top_k), ("num_probes", num_probes), ("max_iter", max_iter)):
        if value is not None and value < 1:
            raise InputError(f"got {name}={value}; pass a positive integer")
    check_compute_dtype(inputs.dtype, "the input dtype")
    check_lanczos_knobs(lanczos_start, trace_rtol)
    check_likelihood(likelihood)
    _check_black_box_likelihood(likelihood, method, black_box)
    num_samples = inputs.shape[0]
    ids = list(range(num_samples)) if sample_ids is None else [int(i) for i in sample_ids]
    dim = inputs[0].numel()
    num_positions = 1
    if num_classes is None and method == "auto":
        with torch.no_grad():
            shape = logit_fn(inputs).shape
        num_classes, num_positions = shape[-1], (shape[1] if len(shape) == 3 else 1)
    chosen = resolve_method(
        method,
        black_box,
        num_classes,
        dim,
        num_samples,
        inputs.element_size(),
        likelihood,
        num_positions=num_positions,
    )
    options = dict(
        top_k=top_k,
        max_iter=max_iter,
        tol=tol,
        num_queries=num_queries,
        num_probes=num_probes,
        seed=seed,
        power_start=power_start,
        fd_step=fd_step,
        lanczos_start=lanczos_start,
        trace_rtol=trace_rtol,
        max_memory=max_memory,
    )
    if shares:
        options["shares"] = True
    spec = registry.method_spec(chosen)
    result = spec.run(EstimatorCall(logit_fn, inputs, space_mask, ids, likelihood, options))
    settings = dict(
        method=chosen,
        requested_method=method,
        black_box=spec.black_box,
        top_k=top_k,
        tol=tol,
        seed=seed,
    )
    if likelihood != "categorical":
        settings["likelihood"] = likelihood
    if paper_compat:
        settings["paper_compat"] = True
    result.settings = {**settings, **result.settings}  # the method's own knobs last
    return result


def fisher_spectrum(
    model,
    inputs,
    *,
    method: str = "auto",
    black_box: bool = False,
    top_k: int = 1,
    max_iter: int | None = None,
    tol: float = 1e-3,
    num_queries: int | None = None,
    num_probes: int = 16,
    seed: int = 0,
    batch_size: int | None = 32,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    input_space: str | None = None,
    sample_ids: Sequence[int] | None = None,
    likelihood: str | None = None,
    options: EstimatorOptions | None = None,
    power_start: str = "random",
    fd_step: float | None = None,
    paper_compat: bool = False,
    lanczos_start: str = "informed",
    trace_rtol: float = 0.05,
) -> FisherSpectrum:
    """Per-sample lambda_max and trace of the input-space Fisher of a classifier.

    ``F(x) = J^T (diag(p) - p p^T) J`` with J the logits Jacobian w.r.t. the input and p the
    softmax (Measuring Model Robustness via Fisher Information, arXiv 2606.04767). For a
    multi-label model (bernoulli likelihood) ``F(x) = J^T diag(s (1 - s)) J`` with s the
    per-class sigmoids: the Fisher of its K independent yes/no outputs.

    Args:
        model: a Hub id, local directory, ``nn.Module`` or :class:`~hf_fisher.Classifier`.
        inputs: a batch tensor in the model's input space, images, a list of strings, a
            tokenized batch, or a :class:`~hf_fisher.adapters.PreparedBatch`.
        method: "auto", "exact" (K-1 backward passes, exact), "lanczos", "power" (the paper's
            method), "hutchinson" / "hutchpp" (stochastic trace, lambda_max by Lanczos),
            "rayleigh-probes" (the paper code's "Hutchinson": a lower bound on lambda_max),
            "sketch" (black-box) or "rayleigh-max" (the paper's black-box estimator).
        black_box: use forward queries only (softmax classifiers only).
        top_k: eigenvalues to report.
        max_iter, tol: iterative-method budget and relative tolerance; ``converged`` means
            every reported eigenvalue is within ``tol`` of an eigenvalue of F.
        num_queries: black-box queries per sample (default 201).
        num_probes: probes of the stochastic trace estimators.
        seed: seed of all random draws.
        batch_size: samples per batch (None: all at once).
        dtype, device: where to compute (default float32, CUDA if available); half precision
            (float16, bfloat16) is refused, as is a module whose parameters are half.
        input_space: "pixels" (default for images), "normalized", "embeddings" (text).
        sample_ids: stable per-sample ids for the random streams.
        likelihood: "categorical" or "bernoulli"; default from the model's config
            (``problem_type="multi_label_classification"`` is bernoulli), else categorical.
        options: an :class:`~hf_fisher.options.EstimatorOptions` holding method ... seed,
            instead of those keywords (not both).
        power_start: "random" or "top-class-gradient" (where method "power" starts).
        fd_step: black-box central-difference step (None: 1e-2 in float32, 1e-4 in float64).
        paper_compat: reproduce the paper's public code (docs/paper-compat.md): normalised
            inputs, "rayleigh-probes" (white box) or "rayleigh-max" (black box), 100 probes,
            power from the top-class gradient, step 1e-3.
        lanczos_start: "informed" (default: the top class's score mixed with a seeded random
            vector, one backward pass) or "random" (where Lanczos starts).
        trace_rtol: "lanczos" adds trace probes (6 to ``num_probes``) until the trace's
            standard error is at most this fraction of the trace.

    A model in train mode is measured in eval mode (BatchNorm on its running statistics,
    dropout off): an ``nn.Module``'s or Classifier's training flags, submodule by submodule,
    are restored on return.

    Returns:
        A :class:`FisherSpectrum` on the CPU.

    Raises:
        InputError: half precision, bad settings or inputs, or a black-box method for a
            multi-label model (all before any Fisher computation).

    >>> net = torch.nn.Linear(4, 3).double()
    >>> result = fisher_spectrum(net, torch.randn(5, 4, dtype=torch.float64), dtype=torch.float64)
    >>> result.method, tuple(result.spectral_norm.shape)
    ('exact', (5,))
    """
    from hf_fisher.adapters import load_classifier

    estimator = EstimatorOptions.from_keywords(
        options,
        method=method,
        black_box=black_box,
        top_k=top_k,
        max_iter=max_iter,
        tol=tol,
        num_queries=num_queries,
        num_probes=num_probes,
        seed=seed,
        power_start=power_start,
        fd_step=fd_step,
        paper_compat=paper_compat,
        lanczos_start=lanczos_start,
        trace_rtol=trace_rtol,
    )
    check_lanczos_knobs(estimator.lanczos_start, estimator.trace_rtol)
    plain_module = isinstance(model, torch.nn.Module)
    estimator, input_space = apply_paper_compat(estimator, input_space, plain_module=plain_module)
    _check_requested_dtype(model, dtype)
    if batch_size is not None and batch_size < 1:
        raise InputError(f"got batch_size={batch_size}; pass a positive batch size or None")
    if estimator.method != "auto":  # unknown names fail before loading
        resolve_method(estimator.method, estimator.black_box, None, 0, 1)
    owner = model.model if isinstance(model, Classifier) else model
    with eval_mode(owner) if isinstance(owner, torch.nn.Module) else nullcontext():
        classifier = load_classifier(
            model, input_space=input_space, device=device, dtype=dtype, likelihood=likelihood
        )
        check_compute_dtype(classifier.dtype, "the classifier's dtype")
        check_paper_compat_space(estimator, classifier.input_space)
        _check_black_box_likelihood(classifier.likelihood, estimator.method, estimator.black_box)
        batch = classifier.prepare(inputs)
        ids = list(range(len(batch))) if sample_ids is None else list(sample_ids)
        if len(ids) != len(batch):
            raise InputError(
                f"got {len(ids)} sample_ids for {len(batch)} samples; pass one per sample"
            )
        return spectrum_of_prepared(
            classifier, batch, batch_size=batch_size, sample_ids=ids, **estimator.to_settings()
        )


def _check_requested_dtype(model: object, dtype: torch.dtype | None) -> None:
    """Refuse half precision before the model is loaded: asked for, or a module already half."""
    if dtype is not None:
        check_compute_dtype(dtype, "the requested dtype")
        return
    if isinstance(model, Classifier):
        check_compute_dtype(model.dtype, "the classifier's dtype")
    elif isinstance(model, torch.nn.Module):
        parameter = next(iter(model.parameters()), None)
        if parameter is not None and parameter.dtype.is_floating_point:
            check_compute_dtype(parameter.dtype, f"{type(model).__name__}'s parameter dtype")


def spectrum_of_prepared(
    classifier: Classifier,
    batch: PreparedBatch,
    *,
    batch_size: int | None,
    sample_ids: Sequence[int],
    method: str = "auto",
    black_box: bool = False,
    **options,
) -> FisherSpectrum:
    """Chunk a prepared batch through :func:`spectrum_of_batch`, choosing the method once.

    The classifier's model is measured in eval mode (:func:`~hf_fisher.adapters.eval_mode`:
    BatchNorm on its running statistics, dropout off) and its training flags are restored after.
    A classifier with ``position_summaries`` also gets per-position shares (the output
    positions' shares of lambda_max, and the input positions' shares of the top eigenvector).
    Every chunk uses the same concrete method, from :func:`resolve_run_method` with the largest
    chunk (``min(batch_size, len(batch))``) and this batch's per-sample size, so a short last
    chunk cannot switch from Lanczos to exact. A run over many batches should resolve ``auto``
    itself with :func:`resolve_run_method` and pass the concrete method here.
    """
    size = len(batch) if batch_size is None else batch_size
    if size < 1:
        raise InputError(f"got batch_size={batch_size}; pass a positive batch size or None")
    chosen = resolve_run_method(
        classifier, method, black_box, min(size, len(batch)), batch.inputs[0].numel()
    )
    parts = []
    with eval_mode(classifier.model):
        for start in range(0, len(batch), size):
            chunk = batch.select(slice(start, start + size)).to(classifier.device, classifier.dtype)
            part = spectrum_of_batch(
                classifier.logit_fn(chunk),
                chunk.inputs,
                space_mask=chunk.space_mask,
                method=chosen,
                black_box=black_box,
                sample_ids=sample_ids[start : start + size],
                num_classes=classifier.num_classes,
                likelihood=classifier.likelihood,
                shares=classifier.position_summaries,
                **options,
            )
            part.settings["requested_method"] = method
            if part.eigenvector is not None:
                squared = part.eigenvector.reshape(chunk.inputs.shape).pow(2)
                part.input_shares = classifier.input_position_shares(squared).cpu()
                part.eigenvector = None
            parts.append(part)
    return FisherSpectrum.concatenate(parts)
