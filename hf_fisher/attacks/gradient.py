"""PGD and FGSM, batched over samples, on the same ``logit_fn`` as the Fisher engine."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as functional
from torch import Tensor

from hf_fisher._random import SampleStreams
from hf_fisher.attacks._geometry import (
    LOSSES,
    Loss,
    Norm,
    _clip,
    _logits,
    _margin,
    _mask,
    _per_sample,
    _project,
    check_batch,
    check_clip,
    check_norm,
    lp_norm,
    sample_in_ball,
    select_rows,
)
from hf_fisher.errors import InputError
from hf_fisher.operators import LogitFn


@dataclass
class AttackResult:
    """Adversarial inputs of one attack and which samples they flip.

    Attributes:
        adversarial: (N, *shape) first successful iterate per sample, else the last one.
        success: (N,) bool, the predicted class differs from the label.
        gradient_evaluations: forward+backward passes spent per sample (upper bound).
    """

    adversarial: Tensor
    success: Tensor
    gradient_evaluations: int


@dataclass(frozen=True)
class _Ascent:
    """The per-restart settings of one PGD run."""

    norm: str
    steps: int
    loss: str
    clip: tuple[float, float] | None
    random_start: bool


def _loss_gradient(
    logit_fn: LogitFn, inputs: Tensor, labels: Tensor, loss: str
) -> tuple[Tensor, Tensor]:
    """Logits at ``inputs`` and the per-sample gradient of the attack loss (to be ascended)."""
    leaf = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = _logits(logit_fn, leaf)
        if loss == "ce":
            objective = functional.cross_entropy(logits, labels, reduction="sum")
        else:
            objective = -_margin(logits, labels).sum()
        (gradient,) = torch.autograd.grad(objective, leaf)
    return logits.detach(), gradient


def _as_epsilon(epsilon: float | Tensor, inputs: Tensor) -> Tensor:
    epsilon = torch.as_tensor(epsilon, dtype=inputs.dtype, device=inputs.device)
    epsilon = epsilon.expand(inputs.shape[0]) if epsilon.ndim == 0 else epsilon
    if epsilon.shape != (inputs.shape[0],) or not bool((epsilon >= 0).all()):
        raise InputError(
            f"got epsilon of shape {tuple(epsilon.shape)} (min {float(epsilon.min()):.3g}); pass "
            f"a non-negative float or one per sample, shape ({inputs.shape[0]},)"
        )
    return epsilon


def _check_pgd(
    inputs: Tensor,
    labels: Tensor,
    space_mask: Tensor | None,
    settings: _Ascent,
    restarts: int,
) -> None:
    check_batch(inputs, labels, space_mask)
    check_norm(settings.norm)
    check_clip(settings.clip)
    if settings.loss not in LOSSES:
        raise InputError(f"got loss={settings.loss!r}; pass one of {LOSSES}")
    if settings.steps < 1 or restarts < 1:
        raise InputError(f"got steps={settings.steps}, restarts={restarts}; both must be >= 1")


def _step(
    x: Tensor,  # (n, *shape)
    delta: Tensor,  # (n, *shape)
    gradient: Tensor,  # (n, *shape)
    alpha: Tensor,  # (n,)
    epsilon: Tensor,  # (n,)
    mask: Tensor | None,
    settings: _Ascent,
) -> Tensor:
    """One ascent step of size ``alpha``, projected onto the ball, the box and the mask."""
    gradient = _mask(gradient, mask)
    if settings.norm == "linf":
        direction = gradient.sign()
    else:
        direction = gradient / _per_sample(lp_norm(gradient, "l2").clamp_min(1e-30), x)
    delta = delta + _per_sample(alpha, x) * direction
    return _clip(x, _project(_mask(delta, mask), epsilon, settings.norm), settings.clip)


def _ascend(
    logit_fn: LogitFn,
    x: Tensor,  # (n, *shape)
    y: Tensor,  # (n,)
    epsilon: Tensor,  # (n,)
    alpha: Tensor,  # (n,)
    mask: Tensor | None,
    settings: _Ascent,
    generator: torch.Generator | SampleStreams | None,
) -> tuple[Tensor, Tensor]:
    """One restart: the first misclassified iterate per sample (else the last) and which flipped."""
    delta = torch.zeros_like(x)
    if settings.random_start:
        start = sample_in_ball(x, epsilon, settings.norm, space_mask=mask, generator=generator)
        delta = _clip(x, start, settings.clip)
    found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    best = x + delta
    for iteration in range(settings.steps + 1):
        if iteration < settings.steps:
            logits, gradient = _loss_gradient(logit_fn, x + delta, y, settings.loss)
        else:
            with torch.no_grad():
                logits = _logits(logit_fn, x + delta)
        new = (logits.argmax(dim=1) != y) & ~found
        best[new] = (x + delta)[new]
        found |= new
        if iteration == settings.steps:
            break
        delta = _step(x, delta, gradient, alpha, epsilon, mask, settings)
    best[~found] = (x + delta)[~found]
    return best, found


def pgd(
    logit_fn: LogitFn,
    inputs: Tensor,  # (N, *shape)
    labels: Tensor,  # (N,)
    epsilon: float | Tensor,  # scalar or (N,)
    *,
    norm: Norm = "l2",
    steps: int = 20,
    restarts: int = 1,
    step_size: float | None = None,
    random_start: bool = True,
    loss: Loss = "ce",
    clip: tuple[float, float] | None = None,
    space_mask: Tensor | None = None,
    generator: torch.Generator | SampleStreams | None = None,
) -> AttackResult:
    """Projected gradient ascent on the loss of the true label (Madry et al. 2018).

    Step ``alpha = step_size * epsilon`` along ``g / ||g||_2`` (L2) or ``sign(g)`` (Linf), then
    projection onto the epsilon-ball, the ``clip`` box and ``space_mask``. A sample counts as
    flipped as soon as any iterate misclassifies it; restarts (random starts) run only on samples
    not flipped yet.

    Args:
        logit_fn: (N, *shape) -> (N, K) logits; samples independent (eval mode).
        inputs, labels: the batch and its integer labels.
        epsilon: budget, one for all or one per sample.
        norm: "l2" or "linf".
        steps: gradient steps per restart.
        restarts: random restarts (the first uses ``random_start``).
        step_size: step as a fraction of epsilon; default ``2.5 / steps``.
        random_start: start uniformly in the ball instead of at the input.
        loss: "ce" (cross-entropy) or "margin" (``max_{k!=y} z_k - z_y``, no softmax
            saturation).
        clip: valid input box, e.g. (0.0, 1.0) for pixels; None for embeddings.
        space_mask: 0/1 tensor broadcastable to inputs; zeros are never perturbed.
        generator: random source of the random starts, on the inputs' device; per-sample
            streams (:class:`~hf_fisher._random.SampleStreams`) make each sample's starts,
            hence its result, independent of the other samples of the batch.

    Returns:
        The :class:`AttackResult`.
    """
    settings = _Ascent(norm, steps, loss, clip, random_start)
    _check_pgd(inputs, labels, space_mask, settings, restarts)
    epsilon = _as_epsilon(epsilon, inputs)
    alpha = epsilon * (2.5 / steps if step_size is None else step_size)
    inputs = inputs.detach()
    adversarial = inputs.clone()
    success = torch.zeros(inputs.shape[0], dtype=torch.bool, device=inputs.device)
    for restart in range(restarts):
        todo = (~success).nonzero().flatten()
        if len(todo) == 0:
            break
        mask = None if space_mask is None else space_mask.expand_as(inputs)[todo]
        best, found = _ascend(
            select_rows(logit_fn, todo),
            inputs[todo],
            labels[todo],
            epsilon[todo],
            alpha[todo],
            mask,
            settings,
            generator.select(todo) if isinstance(generator, SampleStreams) else generator,
        )
        if restart == 0:
            adversarial[todo] = best
        else:
            adversarial[todo[found]] = best[found]
        success[todo] = found
    return AttackResult(adversarial, success, restarts * steps)


def fgsm(
    logit_fn: LogitFn,
    inputs: Tensor,  # (N, *shape)
    labels: Tensor,  # (N,)
    epsilon: float | Tensor,
    *,
    norm: Norm = "linf",
    loss: Loss = "ce",
    clip: tuple[float, float] | None = None,
    space_mask: Tensor | None = None,
) -> AttackResult:
    """Fast gradient sign method (Goodfellow et al. 2015); in L2, the fast gradient method.

    One step of size epsilon from the input: ``x + eps sign(g)`` (Linf) or
    ``x + eps g / ||g||_2`` (L2), then clipped. Equivalent to one-step PGD without random start.
    """
    return pgd(
        logit_fn,
        inputs,
        labels,
        epsilon,
        norm=norm,
        steps=1,
        restarts=1,
        step_size=1.0,
        random_start=False,
        loss=loss,
        clip=clip,
        space_mask=space_mask,
    )
