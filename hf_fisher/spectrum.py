"""`fisher_spectrum`: per-sample lambda_max(F) and trace(F) for any classifier, by any method."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from hf_fisher.adapters import Classifier, PreparedBatch
from hf_fisher.errors import InputError
from hf_fisher.estimators.blackbox import rayleigh_max, sketch_fisher
from hf_fisher.estimators.hutchinson import class_space_hutchinson, hutchinson, hutchpp
from hf_fisher.estimators.lanczos import lanczos
from hf_fisher.estimators.power import power_iteration
from hf_fisher.operators import FisherOperator, LogitFn, dual_spectrum, gradient_rows

WHITE_BOX_METHODS = ("exact", "lanczos", "power", "hutchinson", "hutchpp")
BLACK_BOX_METHODS = ("sketch", "rayleigh-max")
METHODS = ("auto", *WHITE_BOX_METHODS, *BLACK_BOX_METHODS)

EXACT_MAX_CLASSES = 64
EXACT_MAX_ROW_BYTES = 2 * 1024**3


@dataclass
class FisherSpectrum:
    """Per-sample Fisher summaries, with the error information of the method that made them.

    Attributes:
        spectral_norm: (N,) float64, lambda_max(F).
        trace: (N,) float64, trace(F).
        eigenvalues: (N, top_k) float64, descending (zero-padded past the rank K-1).
        logits: (N, K) float64 logits at the clean inputs.
        method: the method actually used.
        converged: (N,) bool for iterative methods, else None.
        iterations: (N,) products per sample for iterative methods, else None.
        trace_standard_error: (N,) for stochastic trace estimates (0 where exact), else None.
        spectral_norm_ci: (N, 2) interval for black-box sketches, else None.
        trace_ci: (N, 2) interval for black-box sketches, else None.
        num_queries: forward queries per sample (black-box only), else None.
        settings: the estimator knobs used (for provenance).
    """

    spectral_norm: Tensor
    trace: Tensor
    eigenvalues: Tensor
    logits: Tensor
    method: str
    converged: Tensor | None = None
    iterations: Tensor | None = None
    trace_standard_error: Tensor | None = None
    spectral_norm_ci: Tensor | None = None
    trace_ci: Tensor | None = None
    num_queries: int | None = None
    settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.spectral_norm.shape[0]

    @property
    def probabilities(self) -> Tensor:  # (N, K) float64
        """Softmax of the clean logits."""
        return torch.softmax(self.logits, dim=1)

    @property
    def predicted(self) -> Tensor:  # (N,)
        """The predicted class of each sample."""
        return self.logits.argmax(dim=1)

    @staticmethod
    def concatenate(parts: Sequence[FisherSpectrum]) -> FisherSpectrum:
        """Join per-batch results in order."""
        first = parts[0]
        joined = {}
        for item in fields(FisherSpectrum):
            values = [getattr(part, item.name) for part in parts]
            if isinstance(values[0], Tensor):
                joined[item.name] = torch.cat([value.cpu() for value in values])
            else:
                joined[item.name] = values[0]
        joined["method"] = first.method
        return FisherSpectrum(**joined)


def resolve_method(
    method: str,
    black_box: bool,
    num_classes: int | None,
    dim: int,
    batch: int,
    itemsize: int = 4,
) -> str:
    """Turn ``method`` (maybe "auto") into a concrete one, checking it fits ``black_box``.

    ``auto`` picks ``exact`` (K-1 backward passes) for K <= 64 when the (N, K-1, d) gradient
    rows fit in 2 GiB, ``lanczos`` otherwise; black-box ``auto`` is ``sketch``.
    """
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method in BLACK_BOX_METHODS:
        return method
    if black_box:
        if method != "auto":
            raise InputError(
                f"method {method!r} needs gradients but black_box=True; use one of "
                f"{', '.join(BLACK_BOX_METHODS)} (or 'auto') for black-box estimates"
            )
        return "sketch"
    if method != "auto":
        return method
    if num_classes is None:
        raise InputError("method='auto' needs num_classes")
    row_bytes = batch * (num_classes - 1) * dim * itemsize
    if num_classes <= EXACT_MAX_CLASSES and row_bytes <= EXACT_MAX_ROW_BYTES:
        return "exact"
    return "lanczos"


def _pad(values: Tensor, top_k: int) -> Tensor:  # (N, m) -> (N, top_k)
    if values.shape[1] >= top_k:
        return values[:, :top_k]
    return torch.nn.functional.pad(values, (0, top_k - values.shape[1]))


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
) -> FisherSpectrum:
    """Fisher spectrum of one batch given a plain ``logit_fn`` (no Hugging Face involved).

    Args:
        logit_fn: maps (N, *shape) inputs to (N, K) logits; samples must be independent.
        inputs: (N, *shape) batch in the input space.
        space_mask: optional 0/1 mask broadcastable to ``inputs`` (text padding).
        method: see :func:`fisher_spectrum`.
        black_box: forward queries only.
        top_k: eigenvalues to report.
        max_iter: products per sample for lanczos (default 100) and power (default 100).
        tol: relative tolerance of the iterative methods.
        num_queries: black-box queries per sample (default 201).
        num_probes: probes of the stochastic trace estimators.
        seed: seed of every random draw; draws are per sample (see ``sample_ids``).
        sample_ids: stable ids of the samples (default ``0..N-1``), so results do not depend
            on batching or sharding.
        num_classes: K, if known (saves a forward pass when ``method="auto"``).

    Returns:
        A :class:`FisherSpectrum`.
    """
    for name, value in (("top_k", top_k), ("num_probes", num_probes), ("max_iter", max_iter)):
        if value is not None and value < 1:
            raise InputError(f"got {name}={value}; pass a positive integer")
    num_samples = inputs.shape[0]
    ids = list(range(num_samples)) if sample_ids is None else [int(i) for i in sample_ids]
    dim = inputs[0].numel()
    if num_classes is None and method == "auto":
        with torch.no_grad():
            num_classes = logit_fn(inputs).shape[-1]
    chosen = resolve_method(method, black_box, num_classes, dim, num_samples, inputs.element_size())
    settings = {
        "method": chosen,
        "requested_method": method,
        "black_box": chosen in BLACK_BOX_METHODS,
        "top_k": top_k,
        "tol": tol,
        "seed": seed,
    }
    if chosen in BLACK_BOX_METHODS:
        queries = 201 if num_queries is None else num_queries
        estimator = sketch_fisher if chosen == "sketch" else rayleigh_max
        extra = {"top_k": top_k} if chosen == "sketch" else {}
        sketch = estimator(
            logit_fn,
            inputs,
            num_queries=queries,
            space_mask=space_mask,
            seed=seed,
            sample_ids=ids,
            **extra,
        )
        settings.update(num_queries=sketch.num_queries, scheme=sketch.scheme, step=sketch.step)
        return FisherSpectrum(
            spectral_norm=sketch.eigenvalues[:, 0],
            trace=sketch.trace,
            eigenvalues=_pad(sketch.eigenvalues, top_k),
            logits=sketch.logits.double(),
            method=chosen if sketch.scheme != "coordinates" else "sketch-coordinates",
            spectral_norm_ci=sketch.spectral_norm_ci,
            trace_ci=sketch.trace_ci,
            num_queries=sketch.num_queries,
            settings=settings,
        )
    if chosen == "exact":
        factors = gradient_rows(logit_fn, inputs, space_mask)
        exact = dual_spectrum(factors)
        return FisherSpectrum(
            spectral_norm=exact.eigenvalues[:, 0],
            trace=exact.trace,
            eigenvalues=_pad(exact.eigenvalues, top_k),
            logits=factors.logits.double(),
            method="exact",
            settings=settings,
        )
    operator = FisherOperator(logit_fn, inputs, space_mask)
    iterations_cap = 100 if max_iter is None else max_iter
    settings["max_iter"] = iterations_cap
    if chosen == "power":
        top = power_iteration(operator, max_iter=iterations_cap, tol=tol, seed=seed, sample_ids=ids)
    else:
        top = lanczos(
            operator, top_k=top_k, max_iter=iterations_cap, tol=tol, seed=seed, sample_ids=ids
        )
    settings["num_probes"] = num_probes
    if chosen == "hutchinson":
        trace = hutchinson(operator, num_matvecs=num_probes, seed=seed, sample_ids=ids)
    elif chosen == "hutchpp":
        trace = hutchpp(operator, num_matvecs=num_probes, seed=seed, sample_ids=ids)
    else:
        trace = class_space_hutchinson(operator, num_probes=num_probes, seed=seed, sample_ids=ids)
    return FisherSpectrum(
        spectral_norm=top.eigenvalues[:, 0],
        trace=trace.trace,
        eigenvalues=_pad(top.eigenvalues, top_k),
        logits=operator.logits.detach().double(),
        method=chosen,
        converged=top.converged,
        iterations=top.iterations,
        trace_standard_error=trace.standard_error,
        settings=settings,
    )


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
) -> FisherSpectrum:
    """Per-sample lambda_max and trace of the input-space Fisher of a classifier.

    ``F(x) = J^T (diag(p) - p p^T) J`` with J the logits Jacobian w.r.t. the input and p the
    softmax (Measuring Model Robustness via Fisher Information, arXiv 2606.04767).

    Args:
        model: a Hub id, local directory, ``nn.Module`` or :class:`~hf_fisher.Classifier`.
        inputs: a batch tensor in the model's input space, images, a list of strings, a
            tokenized batch, or a :class:`~hf_fisher.adapters.PreparedBatch`.
        method: "auto", "exact" (K-1 backward passes, exact), "lanczos", "power" (the paper's
            method), "hutchinson" / "hutchpp" (stochastic trace, lambda_max by Lanczos),
            "sketch" (black-box) or "rayleigh-max" (the paper's black-box estimator).
        black_box: use forward queries only.
        top_k: eigenvalues to report.
        max_iter, tol: iterative-method budget and relative tolerance.
        num_queries: black-box queries per sample (default 201).
        num_probes: probes of the stochastic trace estimators.
        seed: seed of all random draws.
        batch_size: samples per batch (None: all at once).
        dtype, device: where to compute (default float32, CUDA if available).
        input_space: "pixels" (default for images), "normalized", "embeddings" (text).
        sample_ids: stable per-sample ids for the random streams.

    Returns:
        A :class:`FisherSpectrum` on the CPU.

    >>> net = torch.nn.Linear(4, 3).double()
    >>> result = fisher_spectrum(net, torch.randn(5, 4, dtype=torch.float64), dtype=torch.float64)
    >>> result.method, tuple(result.spectral_norm.shape)
    ('exact', (5,))
    """
    from hf_fisher.adapters import load_classifier

    classifier = load_classifier(model, input_space=input_space, device=device, dtype=dtype)
    batch = classifier.prepare(inputs)
    ids = list(range(len(batch))) if sample_ids is None else list(sample_ids)
    if len(ids) != len(batch):
        raise InputError(f"got {len(ids)} sample_ids for {len(batch)} samples; pass one per sample")
    return spectrum_of_prepared(
        classifier,
        batch,
        batch_size=batch_size,
        sample_ids=ids,
        method=method,
        black_box=black_box,
        top_k=top_k,
        max_iter=max_iter,
        tol=tol,
        num_queries=num_queries,
        num_probes=num_probes,
        seed=seed,
    )


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

    Every chunk uses the same concrete method (``auto`` is resolved from the largest chunk), so
    a short last chunk cannot switch from Lanczos to exact.
    """
    size = len(batch) if batch_size is None else batch_size
    if size < 1:
        raise InputError(f"got batch_size={batch_size}; pass a positive batch size or None")
    chosen = resolve_method(
        method,
        black_box,
        classifier.num_classes,
        batch.inputs[0].numel(),
        min(size, len(batch)),
        classifier.dtype.itemsize,
    )
    parts = []
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
            **options,
        )
        part.settings["requested_method"] = method
        parts.append(part)
    return FisherSpectrum.concatenate(parts)
