"""Second-order check: up to which radius does ``KL ~ 1/2 d^T F d`` hold for this model?

The Fisher picture says ``KL(p(x) || p(x + d)) = 1/2 d^T F(x) d + O(||d||^3)``. For random
directions at several radii this module measures both sides and reports, per radius, the median
relative error ``|KL - Q| / Q``. The radius up to which the error stays below a tolerance is the
range over which ``spectral_norm`` (and ``kl_radius = sqrt(2 tau / spectral_norm)``) can be read
as a local sensitivity. Directions are Gaussian, restricted to ``space_mask`` and normalised to
unit L2 norm; the same directions are reused at every radius, and inputs are not clipped (the
check is about the model's local geometry, not the valid input box).

Precision: KL is computed from float64 ``log_softmax`` of the logits. Float32 logits carry about
1e-7 relative error, so KL below ~1e-10 (radii below ~1e-4 on typical models) is noise: use a
float64 ``logit_fn`` to probe smaller radii.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hf_fisher._progress import ProgressCallback, Steps
from hf_fisher._random import SampleStreams
from hf_fisher.attacks import check_batch
from hf_fisher.correlation import float_from_json, json_float
from hf_fisher.errors import InputError
from hf_fisher.estimators.exact import gradient_rows
from hf_fisher.memory import concat, plan_chunks, run_in_chunks, select_rows
from hf_fisher.operators import LogitFn


def kl_divergence(logits_p: Tensor, logits_q: Tensor) -> Tensor:  # (N, K), (N, K) -> (N,)
    """``KL(softmax(a) || softmax(b))`` in float64 via log_softmax (no underflow at large gaps).

    >>> kl_divergence(torch.tensor([[0.0, 200.0]]), torch.tensor([[0.0, 199.0]])).item() < 1e-80
    True
    """
    log_p = torch.log_softmax(logits_p.double(), dim=1)
    log_q = torch.log_softmax(logits_q.double(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).clamp_min(0.0)


@dataclass(frozen=True)
class KLSummary:
    """Per-radius summaries over samples and directions: what results.json keeps of a check.

    Attributes:
        num_samples: N.
        median_relative_error, p90_relative_error: one per radius; NaN where no direction has
            a positive quadratic form.
        median_kl, median_quadratic: one per radius.
    """

    num_samples: int
    median_relative_error: list[float]
    p90_relative_error: list[float]
    median_kl: list[float]
    median_quadratic: list[float]

    @classmethod
    def of(cls, kl: Tensor, quadratic: Tensor, relative_error: Tensor) -> KLSummary:
        """Summarise (R, draws, N) tensors over their last two dimensions."""
        flat = relative_error.flatten(1)
        return cls(
            num_samples=int(kl.shape[-1]),
            median_relative_error=[float(v) for v in flat.nanmedian(dim=1).values],
            p90_relative_error=torch.nanquantile(flat, 0.9, dim=1).tolist(),
            median_kl=[float(v) for v in kl.flatten(1).median(dim=1).values],
            median_quadratic=[float(v) for v in quadratic.flatten(1).median(dim=1).values],
        )


@dataclass
class KLCheck:
    """Measured KL vs the Fisher quadratic form at several radii (section ``"kl_check"``).

    Attributes:
        radii, draws, seed, tolerance: the settings.
        kl: (R, draws, N) float64 measured ``KL(p(x) || p(x + r u))``; None when read back
            from results.json, which keeps only ``summary``.
        quadratic: (R, draws, N) float64 ``1/2 r^2 u^T F u``; None likewise.
        relative_error: (R, draws, N) ``|kl - quadratic| / quadratic``; None likewise.
        valid_radius: the largest radius such that it and every smaller radius have median
            relative error <= tolerance; None if the smallest radius already fails.
        summary: the per-radius summaries; computed from the tensors when not given.
    """

    radii: list[float]
    draws: int
    seed: int
    tolerance: float
    kl: Tensor | None
    quadratic: Tensor | None
    relative_error: Tensor | None
    valid_radius: float | None
    summary: KLSummary | None = None

    def __post_init__(self) -> None:
        if self.summary is None:
            self.summary = KLSummary.of(self.kl, self.quadratic, self.relative_error)

    def median_relative_error(self) -> list[float]:
        """Median over samples and draws, one per radius."""
        return list(self.summary.median_relative_error)

    def to_json(self) -> dict:
        """Plain-Python dict: per-radius medians and 90th percentiles."""
        summary = self.summary
        return {
            "radii": [float(r) for r in self.radii],
            "draws": int(self.draws),
            "seed": int(self.seed),
            "tolerance": float(self.tolerance),
            "num_samples": int(summary.num_samples),
            "median_relative_error": [json_float(v) for v in summary.median_relative_error],
            "p90_relative_error": [json_float(v) for v in summary.p90_relative_error],
            "median_kl": [float(v) for v in summary.median_kl],
            "median_quadratic": [float(v) for v in summary.median_quadratic],
            "valid_radius": None if self.valid_radius is None else float(self.valid_radius),
        }

    @classmethod
    def from_json(cls, data: dict) -> KLCheck:
        """Read back :meth:`to_json`: settings and summaries; the per-draw tensors are None."""
        summary = KLSummary(
            num_samples=data["num_samples"],
            median_relative_error=[float_from_json(v) for v in data["median_relative_error"]],
            p90_relative_error=[float_from_json(v) for v in data["p90_relative_error"]],
            median_kl=[float(v) for v in data["median_kl"]],
            median_quadratic=[float(v) for v in data["median_quadratic"]],
        )
        return cls(
            radii=[float(r) for r in data["radii"]],
            draws=data["draws"],
            seed=data["seed"],
            tolerance=data["tolerance"],
            kl=None,
            quadratic=None,
            relative_error=None,
            valid_radius=data["valid_radius"],
            summary=summary,
        )


def _kl_and_forms(
    logit_fn: LogitFn,
    inputs: Tensor,  # (n, *shape)
    space_mask: Tensor | None,
    radii: list[float],
    draws: int,
    streams: SampleStreams,
    after_draw: Callable[[], None],
) -> tuple[Tensor, Tensor]:  # (R, draws, n) each, float64
    """Measured KL and the Fisher quadratic form of one chunk of samples.

    ``after_draw`` is called as each draw finishes (progress).
    """
    factors = gradient_rows(logit_fn, inputs, space_mask)
    mask = None if space_mask is None else space_mask.to(inputs).expand_as(inputs)
    num_samples = inputs.shape[0]
    kl = torch.empty(len(radii), draws, num_samples, dtype=torch.float64, device=inputs.device)
    quadratic = torch.empty_like(kl)
    rows = factors.rows
    with torch.no_grad():
        for draw in range(draws):
            direction = streams.normal(inputs.shape[1:], dtype=inputs.dtype, device=inputs.device)
            direction = direction if mask is None else direction * mask
            flat = direction.reshape(num_samples, -1)
            direction = direction / flat.norm(dim=1).clamp_min(1e-30).reshape(
                -1, *([1] * (inputs.ndim - 1))
            )
            projected = (rows @ direction.reshape(num_samples, -1, 1)).double()[:, :, 0]
            unit_form = torch.einsum("nk,nkl,nl->n", projected, factors.weights, projected)
            for index, radius in enumerate(radii):
                moved = logit_fn(inputs + radius * direction)
                kl[index, draw] = kl_divergence(factors.logits, moved)
                quadratic[index, draw] = 0.5 * radius**2 * unit_form
            after_draw()
    return kl, quadratic


def kl_check(
    logit_fn: LogitFn,
    inputs: Tensor,  # (N, *shape)
    *,
    radii: Sequence[float],
    draws: int = 8,
    tolerance: float = 0.1,
    space_mask: Tensor | None = None,
    seed: int = 0,
    sample_ids: Sequence[int] | None = None,
    max_memory: int | str = "auto",
    chunk_size: int | None = None,
    progress: ProgressCallback | None = None,
) -> KLCheck:
    """Compare ``KL(p(x) || p(x + r u))`` with ``1/2 r^2 u^T F(x) u`` for random unit u.

    ``u^T F u = (R u)^T W (R u)`` uses the exact dual factors of F (one forward and K-1 batched
    backward passes, see :func:`hf_fisher.estimators.exact.gradient_rows`), so every extra direction
    costs only a small matrix product; each radius and draw costs one forward pass. Samples run
    in chunks that fit ``max_memory`` (K-1 gradient rows each), halved on out-of-memory; each
    sample's directions come from its own stream keyed by ``(seed, sample id)``, so the result
    does not depend on the chunking or on the other samples of the batch.

    Args:
        logit_fn: (N, *shape) -> (N, K) logits; deterministic.
        inputs: the batch, in the space the Fisher is computed in.
        radii: L2 perturbation sizes, > 0, increasing.
        draws: random directions per sample.
        tolerance: median relative error that defines ``valid_radius``.
        space_mask: 0/1 tensor broadcastable to inputs; zeros are never perturbed.
        seed: seed of the directions.
        sample_ids: stable per-sample ids (the dataset indices; default ``0..N-1``).
        max_memory: byte budget ("4GB", bytes, or "auto"; :mod:`hf_fisher.memory`).
        chunk_size: samples per chunk (None: from ``max_memory``).
        progress: called as ``progress(done, total)`` as each draw of each chunk finishes,
            counting (sample, draw) pairs.

    Raises:
        InputError: bad radii, draws or shapes.
    """
    check_batch(inputs, None, space_mask)
    radii = [float(r) for r in radii]
    if not radii or min(radii) <= 0 or any(b <= a for a, b in zip(radii, radii[1:], strict=False)):
        raise InputError(f"got radii={radii}; pass a non-empty increasing list of radii > 0")
    if draws < 1:
        raise InputError(f"got draws={draws}; pass at least 1 direction per sample")
    inputs = inputs.detach()
    num_samples = inputs.shape[0]
    ids = list(range(num_samples)) if sample_ids is None else [int(i) for i in sample_ids]
    dim, itemsize = inputs[0].numel(), inputs.element_size()
    size = plan_chunks(
        logit_fn,
        inputs,
        max_memory=max_memory,
        chunk_size_override=chunk_size,
        working_bytes=lambda k: k * dim * itemsize + 4 * dim * 8,
    )
    mask = None if space_mask is None else space_mask.expand_as(inputs)
    steps = Steps(progress, num_samples * draws)

    def run(part: slice) -> tuple[Tensor, Tensor]:
        result = _kl_and_forms(
            select_rows(logit_fn, part),
            inputs[part],
            None if mask is None else mask[part],
            radii,
            draws,
            SampleStreams(seed, ids[part], "kl_check"),
            after_draw=lambda: steps.advance(len(ids[part])),
        )
        return result

    parts = run_in_chunks(run, num_samples, size, what="kl_check: ")
    kl = concat([part[0] for part in parts], dim=2)
    quadratic = concat([part[1] for part in parts], dim=2)
    relative = (kl - quadratic).abs() / quadratic.clamp_min(torch.finfo(torch.float64).tiny)
    relative = torch.where(quadratic > 0, relative, torch.full_like(relative, float("nan")))
    check = KLCheck(radii, draws, seed, tolerance, kl, quadratic, relative, None)
    valid = None
    for radius, error in zip(radii, check.median_relative_error(), strict=True):
        if not error <= tolerance:
            break
        valid = radius
    check.valid_radius = valid
    return check
