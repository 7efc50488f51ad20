"""Cheap robustness baselines and AutoAttack-style sanity flags (Croce & Hein 2020).

The baselines (``1 - max p``, the first-order boundary distance, and the local Lipschitz
constant of the softmax) are what ``spectral_norm`` must beat to be worth its cost. The flags say
when input gradients cannot be trusted: gradient masking, random forward passes, probability
outputs. A gradient-based check can only *fail to find* adversarial examples; masked gradients
make every gradient-based number, lambda_max included, look too good.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from hf_fisher.attacks._geometry import (
    DUAL_NORM,
    Norm,
    _clip,
    _flat,
    _logits,
    _margin,
    _mask,
    check_batch,
    check_norm,
    lp_norm,
    sample_in_ball,
)
from hf_fisher.attacks.gradient import _loss_gradient
from hf_fisher.errors import InputError
from hf_fisher.operators import LogitFn

GRADIENT_MASKING_WARNING = (
    "gradient-based attacks and lambda_max(F) both read the model's input gradients; gradient "
    "masking (saturated softmax, non-differentiable preprocessing, randomness) can make both "
    "look too good. Treat a high robust accuracy as an upper bound, not a certificate."
)


@dataclass
class Baselines:
    """Cheap per-sample robustness proxies, one forward and one backward pass.

    Attributes:
        confidence: (N,) ``1 - max_k p_k``.
        first_order: (N,) ``(z_top - z_second) / ||grad_x (z_top - z_second)||_*``, the
            linearised distance to the nearest decision boundary (dual norm of the attack norm).
    """

    confidence: Tensor
    first_order: Tensor


def baseline_scores(
    logit_fn: LogitFn, inputs: Tensor, *, norm: Norm = "l2", space_mask: Tensor | None = None
) -> Baselines:
    """Compute the two baselines the Fisher number is compared with."""
    check_batch(inputs, None, space_mask)
    check_norm(norm)
    leaf = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = _logits(logit_fn, leaf)
        top = logits.argmax(dim=1)
        margin = _margin(logits, top)
        (gradient,) = torch.autograd.grad(margin.sum(), leaf)
    gradient = _mask(gradient, space_mask)
    probs = torch.softmax(logits.detach().double(), dim=1)
    dual = lp_norm(gradient, DUAL_NORM[norm]).double()
    first_order = margin.detach().double() / dual.clamp_min(1e-300)
    first_order = torch.where(dual > 0, first_order, torch.full_like(first_order, float("inf")))
    return Baselines(1.0 - probs.amax(dim=1), first_order)


def softmax_jacobian_norm(
    logit_fn: LogitFn, inputs: Tensor, space_mask: Tensor | None = None
) -> Tensor:  # (N,) float64
    """Spectral norm of the softmax's input Jacobian, ``||(diag p - p p^T) J||_2``, per sample.

    ``diag p - p p^T`` annihilates the ones vector, so with the K-1 rows
    ``D = grad_x (z_k - z_top)`` (k != top) it equals ``||C_o D||_2``, ``C_o`` the columns of
    ``diag p - p p^T`` for those classes: the square root of the top eigenvalue of the K x K
    matrix ``C_o (D D^T) C_o^T``, in float64. Cost: one forward and K-1 backward passes.
    """
    from hf_fisher.estimators.exact import gradient_rows

    rows = gradient_rows(logit_fn, inputs, space_mask)
    probs = rows.probs
    covariance = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]  # (N, K, K)
    classes = rows.classes[:, 0, :]  # (N, K-1): one output position
    columns = covariance.gather(
        2, classes[:, None, :].expand(-1, probs.shape[1], -1)
    )  # (N, K, K-1)
    gram = rows.rows.double() @ rows.rows.double().transpose(1, 2)  # (N, K-1, K-1)
    product = columns @ gram @ columns.transpose(1, 2)
    product = 0.5 * (product + product.transpose(1, 2))
    return torch.linalg.eigvalsh(product)[:, -1].clamp_min(0).sqrt()


def lipschitz_scores(
    logit_fn: LogitFn,
    inputs: Tensor,  # (N, *shape)
    *,
    radius: float = 0.1,
    num_points: int = 8,
    clip: tuple[float, float] | None = None,
    space_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:  # (N,) float64
    """Local Lipschitz baseline: max of :func:`softmax_jacobian_norm` over a small neighbourhood.

    The neighbourhood is the sample itself and ``num_points`` points drawn uniformly in its L2
    ball of ``radius`` (clipped to the box, only where ``space_mask`` is 1); ``radius=0`` is
    the norm at the sample. A larger value means a more sensitive output, so expect a negative
    correlation with the minimal epsilon. Cost: ``(num_points + 1) (K - 1)`` backward passes.

    Raises:
        InputError: negative radius or num_points.
    """
    check_batch(inputs, None, space_mask)
    if not radius >= 0 or num_points < 0:
        raise InputError(
            f"got radius={radius}, num_points={num_points}; pass radius >= 0 and num_points >= 0"
        )
    mask = None if space_mask is None else space_mask.expand_as(inputs)
    best = softmax_jacobian_norm(logit_fn, inputs, mask)
    if radius == 0:
        return best
    size = torch.full((inputs.shape[0],), float(radius), device=inputs.device)
    for _ in range(num_points):
        offset = sample_in_ball(inputs, size, "l2", space_mask=mask, generator=generator)
        point = inputs + _clip(inputs, offset, clip)
        best = torch.maximum(best, softmax_jacobian_norm(logit_fn, point, mask))
    return best


@dataclass
class SanityFlags:
    """AutoAttack-style checks that the gradients mean what the numbers assume.

    Attributes:
        zero_gradient_fraction: samples whose loss gradient is exactly zero.
        nonfinite_gradient_fraction: samples with a NaN/inf in the loss gradient.
        random_forward: two forward passes on the same batch differ (dropout, train mode,
            sampling).
        probability_outputs: outputs already lie in [0, 1] and sum to 1: the model returns
            probabilities, not logits, so softmax is applied twice.
        unflipped_at_eps_max: correctly classified samples PGD could not flip at the largest
            budget (for a clipped box that budget can reach any input: suspect masking).
        messages: one line per raised flag, always ending with the gradient-masking warning.
    """

    zero_gradient_fraction: float
    nonfinite_gradient_fraction: float
    random_forward: bool
    probability_outputs: bool
    unflipped_at_eps_max: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no flag is raised."""
        return not (
            self.zero_gradient_fraction > 0
            or self.nonfinite_gradient_fraction > 0
            or self.random_forward
            or self.probability_outputs
            or self.unflipped_at_eps_max > 0
        )

    def to_json(self) -> dict:
        """Plain-Python dict, including ``ok``."""
        return {
            "ok": self.ok,
            "zero_gradient_fraction": float(self.zero_gradient_fraction),
            "nonfinite_gradient_fraction": float(self.nonfinite_gradient_fraction),
            "random_forward": bool(self.random_forward),
            "probability_outputs": bool(self.probability_outputs),
            "unflipped_at_eps_max": int(self.unflipped_at_eps_max),
            "messages": list(self.messages),
        }

    @classmethod
    def from_json(cls, data: dict) -> SanityFlags:
        """Read back :meth:`to_json` (``ok`` is recomputed from the flags, not read)."""
        return cls(
            zero_gradient_fraction=data["zero_gradient_fraction"],
            nonfinite_gradient_fraction=data["nonfinite_gradient_fraction"],
            random_forward=data["random_forward"],
            probability_outputs=data["probability_outputs"],
            unflipped_at_eps_max=data["unflipped_at_eps_max"],
            messages=list(data["messages"]),
        )


def _flag_messages(flags: SanityFlags) -> list[str]:
    """One line per raised flag, then the gradient-masking warning."""
    messages = []
    if flags.zero_gradient_fraction > 0:
        messages.append(
            f"{flags.zero_gradient_fraction:.1%} of samples have an exactly zero input gradient "
            "(saturated softmax or non-differentiable ops): attacks and lambda_max are blind there"
        )
    if flags.nonfinite_gradient_fraction > 0:
        messages.append(
            f"{flags.nonfinite_gradient_fraction:.1%} of samples have NaN/inf input gradients; "
            "run in float32 or float64, not float16"
        )
    if flags.random_forward:
        messages.append(
            "two forward passes on the same inputs differ: call model.eval() (dropout, "
            "BatchNorm) or remove sampling; gradient numbers are not reproducible otherwise"
        )
    if flags.probability_outputs:
        messages.append(
            "the outputs are already probabilities (in [0, 1], rows sum to 1); pass logits, "
            "e.g. drop the final softmax, or gradients and lambda_max are distorted"
        )
    if flags.unflipped_at_eps_max > 0:
        messages.append(
            f"{flags.unflipped_at_eps_max} correctly classified samples survived PGD at eps_max; "
            "if eps_max spans the whole input box this suggests gradient masking"
        )
    return [*messages, GRADIENT_MASKING_WARNING]


def sanity_flags(
    logit_fn: LogitFn,
    inputs: Tensor,  # (N, *shape)
    labels: Tensor,  # (N,)
    *,
    space_mask: Tensor | None = None,
    unflipped_at_eps_max: int = 0,
) -> SanityFlags:
    """Run the cheap checks: two forwards and one backward over the batch."""
    check_batch(inputs, labels, space_mask)
    with torch.no_grad():
        first = _logits(logit_fn, inputs)
        second = _logits(logit_fn, inputs)
    scale = first.abs().amax().clamp_min(1.0)
    random_forward = bool(((first - second).abs().amax() > 1e-5 * scale).item())
    sums = first.double().sum(dim=1)
    probability_outputs = bool(
        ((first >= 0).all() & (first <= 1).all() & ((sums - 1).abs() < 1e-4).all()).item()
    )
    _, gradient = _loss_gradient(logit_fn, inputs, labels, "ce")
    gradient = _flat(_mask(gradient, space_mask))
    finite = torch.isfinite(gradient).all(dim=1)
    zero = finite & (gradient == 0).all(dim=1)
    flags = SanityFlags(
        zero_gradient_fraction=float(zero.double().mean()),
        nonfinite_gradient_fraction=float((~finite).double().mean()),
        random_forward=random_forward,
        probability_outputs=probability_outputs,
        unflipped_at_eps_max=int(unflipped_at_eps_max),
    )
    flags.messages.extend(_flag_messages(flags))
    return flags
