"""White-box attack cross-check: does a large lambda_max(F) mean a small adversarial distance?

PGD (L2 and Linf) and FGSM run on the same ``logit_fn`` as the Fisher engine, so they perturb the
same input space: pixels in [0, 1] (pass ``clip=(0.0, 1.0)``) or embeddings (``clip=None``),
restricted to ``space_mask`` (text padding stays fixed). Everything is batched over samples.

Per sample, :func:`minimal_epsilon` bisects the smallest budget at which PGD flips the label.
:func:`attack_report` then ranks ``spectral_norm`` against it, side by side with two cheap
baselines (``1 - max p`` and the first-order distance ``margin / ||grad margin||_*``), and
raises AutoAttack-style sanity flags (Croce & Hein 2020): gradient masking, random forward
passes, probability outputs. A gradient-based check can only *fail to find* adversarial
examples; masked gradients make every gradient-based number, lambda_max included, look too good.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as functional
from torch import Tensor

from hf_fisher.correlation import (
    PartialCorrelation,
    RankCorrelation,
    json_float,
    json_floats,
    partial_rank_correlation,
    rank_correlation,
)
from hf_fisher.errors import InputError, NotAClassifierError
from hf_fisher.operators import LogitFn

Norm = Literal["l2", "linf"]
Loss = Literal["ce", "margin"]
NORMS = ("l2", "linf")
LOSSES = ("ce", "margin")
GRADIENT_MASKING_WARNING = (
    "gradient-based attacks and lambda_max(F) both read the model's input gradients; gradient "
    "masking (saturated softmax, non-differentiable preprocessing, randomness) can make both "
    "look too good. Treat a high robust accuracy as an upper bound, not a certificate."
)


# ----------------------------------------------------------------------------- validation


def check_norm(norm: str) -> None:
    """Raise InputError unless ``norm`` is one of the supported attack norms."""
    if norm not in NORMS:
        raise InputError(f"got norm={norm!r}; pass one of {NORMS}")


def check_batch(
    inputs: Tensor, labels: Tensor | None = None, space_mask: Tensor | None = None
) -> None:
    """Raise InputError when inputs, labels or mask do not describe the same N samples."""
    if inputs.ndim < 2 or inputs.shape[0] == 0:
        raise InputError(
            f"got inputs of shape {tuple(inputs.shape)}; pass a non-empty batch (N, *input_shape)"
        )
    if not inputs.is_floating_point():
        raise InputError(
            f"got inputs of dtype {inputs.dtype}; pass continuous inputs (pixels or embeddings), "
            "not token ids"
        )
    if labels is not None and tuple(labels.shape) != (inputs.shape[0],):
        raise InputError(
            f"got labels of shape {tuple(labels.shape)} for {inputs.shape[0]} inputs; pass one "
            "integer label per sample, shape (N,)"
        )
    if space_mask is not None:
        try:
            torch.broadcast_shapes(space_mask.shape, inputs.shape)
        except RuntimeError:
            raise InputError(
                f"got space_mask of shape {tuple(space_mask.shape)}; it must broadcast to the "
                f"inputs' shape {tuple(inputs.shape)}"
            ) from None


def check_clip(clip: tuple[float, float] | None) -> None:
    """Raise InputError unless ``clip`` is None or an increasing (low, high) pair."""
    if clip is not None and (len(clip) != 2 or not clip[0] < clip[1]):
        raise InputError(f"got clip={clip!r}; pass (low, high) with low < high, or None")


def _logits(logit_fn: LogitFn, inputs: Tensor) -> Tensor:
    logits = logit_fn(inputs)
    if logits.ndim != 2 or logits.shape[0] != inputs.shape[0] or logits.shape[1] < 2:
        raise NotAClassifierError(
            f"the model returned an output of shape {tuple(logits.shape)} for "
            f"{inputs.shape[0]} samples; attacks need classifier logits (N, K) with K >= 2"
        )
    return logits


# ----------------------------------------------------------------------------- geometry


def _flat(tensor: Tensor) -> Tensor:
    return tensor.reshape(tensor.shape[0], -1)


def _per_sample(values: Tensor, like: Tensor) -> Tensor:  # (N,) -> (N, 1, ..., 1)
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def _mask(delta: Tensor, space_mask: Tensor | None) -> Tensor:
    return delta if space_mask is None else delta * space_mask.to(delta)


def lp_norm(vectors: Tensor, norm: str) -> Tensor:  # (N, *shape) -> (N,)
    """Per-sample L2, Linf or L1 norm of a batch of perturbations or gradients."""
    flat = _flat(vectors)
    if norm == "l2":
        return flat.norm(dim=1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    if norm == "l1":
        return flat.abs().sum(dim=1)
    raise InputError(f"got norm={norm!r}; pass 'l2', 'linf' or 'l1'")


DUAL_NORM = {"l2": "l2", "linf": "l1", "l1": "linf"}


def active_dimension(inputs: Tensor, space_mask: Tensor | None) -> Tensor:  # (N,)
    """Number of coordinates each sample may move, as a float tensor."""
    if space_mask is None:
        size = math.prod(inputs.shape[1:])
        return torch.full((inputs.shape[0],), float(size), device=inputs.device)
    mask = space_mask.to(inputs).expand_as(inputs)
    return _flat(mask).sum(dim=1).clamp_min(1.0)


def sample_in_ball(
    inputs: Tensor,  # (N, *shape): only the shape, dtype and device are used
    radius: Tensor,  # (N,)
    norm: str,
    *,
    space_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:  # (N, *shape)
    """Uniform samples in each sample's L2 or Linf ball (restricted to ``space_mask``).

    L2: a Gaussian direction scaled by ``radius * U^(1/d)``, d the active dimension; Linf: a
    uniform draw in the cube.
    """
    radius = radius.to(inputs)
    if norm == "linf":
        unit = torch.rand(inputs.shape, generator=generator, device=inputs.device)
        return _mask((2 * unit.to(inputs) - 1) * _per_sample(radius, inputs), space_mask)
    direction = _mask(
        torch.randn(inputs.shape, generator=generator, device=inputs.device).to(inputs),
        space_mask,
    )
    direction = direction / _per_sample(lp_norm(direction, "l2").clamp_min(1e-30), inputs)
    uniform = torch.rand(inputs.shape[0], generator=generator, device=inputs.device).to(inputs)
    scale = radius * uniform ** (1.0 / active_dimension(inputs, space_mask).to(inputs))
    return direction * _per_sample(scale, inputs)


def _project(delta: Tensor, epsilon: Tensor, norm: str) -> Tensor:
    if norm == "linf":
        bound = _per_sample(epsilon, delta)
        return torch.maximum(torch.minimum(delta, bound), -bound)
    length = lp_norm(delta, "l2")
    factor = torch.where(length > epsilon, epsilon / length.clamp_min(1e-30), 1.0)
    return delta * _per_sample(factor, delta)


def _clip(inputs: Tensor, delta: Tensor, clip: tuple[float, float] | None) -> Tensor:
    if clip is None:
        return delta
    return (inputs + delta).clamp(clip[0], clip[1]) - inputs


# ----------------------------------------------------------------------------- attacks


def _margin(logits: Tensor, labels: Tensor) -> Tensor:  # (N, K) -> (N,): z_y - max_{k!=y} z_k
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - others.amax(dim=1)


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


def _as_epsilon(epsilon: float | Tensor, inputs: Tensor) -> Tensor:
    epsilon = torch.as_tensor(epsilon, dtype=inputs.dtype, device=inputs.device)
    epsilon = epsilon.expand(inputs.shape[0]) if epsilon.ndim == 0 else epsilon
    if epsilon.shape != (inputs.shape[0],) or not bool((epsilon >= 0).all()):
        raise InputError(
            f"got epsilon of shape {tuple(epsilon.shape)} (min {float(epsilon.min()):.3g}); pass "
            f"a non-negative float or one per sample, shape ({inputs.shape[0]},)"
        )
    return epsilon


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
    generator: torch.Generator | None = None,
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
        generator: random source of the random starts, on the inputs' device.

    Returns:
        The :class:`AttackResult`.
    """
    check_batch(inputs, labels, space_mask)
    check_norm(norm)
    check_clip(clip)
    if loss not in LOSSES:
        raise InputError(f"got loss={loss!r}; pass one of {LOSSES}")
    if steps < 1 or restarts < 1:
        raise InputError(f"got steps={steps}, restarts={restarts}; both must be >= 1")
    epsilon = _as_epsilon(epsilon, inputs)
    alpha = epsilon * (2.5 / steps if step_size is None else step_size)
    inputs = inputs.detach()
    adversarial = inputs.clone()
    success = torch.zeros(inputs.shape[0], dtype=torch.bool, device=inputs.device)
    for restart in range(restarts):
        todo = (~success).nonzero().flatten()
        if len(todo) == 0:
            break
        x, y, eps, step = inputs[todo], labels[todo], epsilon[todo], alpha[todo]
        mask = None if space_mask is None else space_mask.expand_as(inputs)[todo]
        delta = torch.zeros_like(x)
        if random_start:
            delta = _clip(
                x, sample_in_ball(x, eps, norm, space_mask=mask, generator=generator), clip
            )
        found = torch.zeros(len(todo), dtype=torch.bool, device=x.device)
        best = x + delta
        for iteration in range(steps + 1):
            if iteration < steps:
                logits, gradient = _loss_gradient(logit_fn, x + delta, y, loss)
            else:
                with torch.no_grad():
                    logits = _logits(logit_fn, x + delta)
            new = (logits.argmax(dim=1) != y) & ~found
            best[new] = (x + delta)[new]
            found |= new
            if iteration == steps:
                break
            gradient = _mask(gradient, mask)
            if norm == "linf":
                direction = gradient.sign()
            else:
                direction = gradient / _per_sample(lp_norm(gradient, "l2").clamp_min(1e-30), x)
            delta = delta + _per_sample(step, x) * direction
            delta = _clip(x, _project(_mask(delta, mask), eps, norm), clip)
        best[~found] = (x + delta)[~found]
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


# ----------------------------------------------------------------------------- bisection


@dataclass
class AttackBudget:
    """The documented budget of a PGD attack and of the bisection on top of it."""

    norm: str
    steps: int
    restarts: int
    step_size: float
    loss: str
    bisection_steps: int
    eps_max: float
    seed: int
    clip: tuple[float, float] | None

    @property
    def gradient_evaluations_per_sample(self) -> int:
        """Worst-case forward+backward passes per sample of one minimal-epsilon search."""
        return (self.bisection_steps + 1) * self.steps * self.restarts

    def to_json(self) -> dict:
        """Plain-Python dict, including the worst-case cost."""
        data = asdict(self)
        data["clip"] = None if self.clip is None else [float(v) for v in self.clip]
        data["gradient_evaluations_per_sample"] = self.gradient_evaluations_per_sample
        return data


@dataclass
class MinimalEpsilon:
    """Per-sample bisection bracket of the smallest flipping PGD budget.

    Attributes:
        epsilon: (N,) smallest budget found that flips the label (``upper``); 0 for samples
            already misclassified; +inf when not flipped at ``eps_max``.
        lower: (N,) largest budget tried at which the same attack failed (0 if none).
        budget: the attack and bisection settings.
    """

    epsilon: Tensor
    lower: Tensor
    budget: AttackBudget


def _seeded(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def default_eps_max(inputs: Tensor, norm: str, clip: tuple[float, float] | None) -> float:
    """Largest useful budget in a clipped box: its Linf width, or its L2 diameter."""
    if clip is None:
        raise InputError(
            "got clip=None and eps_max=None; unbounded inputs (embeddings) have no natural "
            "largest budget: pass eps_max, e.g. a few times the typical embedding norm"
        )
    width = clip[1] - clip[0]
    return width if norm == "linf" else width * math.sqrt(math.prod(inputs.shape[1:]))


def minimal_epsilon(
    logit_fn: LogitFn,
    inputs: Tensor,  # (N, *shape)
    labels: Tensor,  # (N,)
    *,
    norm: Norm = "l2",
    eps_max: float | None = None,
    bisection_steps: int = 10,
    steps: int = 20,
    restarts: int = 1,
    step_size: float | None = None,
    loss: Loss = "ce",
    clip: tuple[float, float] | None = None,
    space_mask: Tensor | None = None,
    seed: int = 0,
) -> MinimalEpsilon:
    """Bisect, batched over samples, the smallest budget at which PGD flips each label.

    First PGD at ``eps_max`` for all samples; those not flipped get +inf. Then
    ``bisection_steps`` rounds: every sample tries the midpoint of its own bracket
    ``[lower, upper]`` and keeps the half where the flip happens. Every PGD call restarts its
    random source from ``seed``, so the attack at ``upper`` flips and the one at ``lower`` does
    not, reproducibly. The final bracket width is ``eps_max / 2^bisection_steps``.
    Worst-case cost: ``(bisection_steps + 1) * steps * restarts`` gradient passes per sample.

    Raises:
        InputError: bad norm/clip/shape, or ``eps_max`` missing with ``clip=None``.
    """
    check_batch(inputs, labels, space_mask)
    check_norm(norm)
    check_clip(clip)
    if eps_max is None:
        eps_max = default_eps_max(inputs, norm, clip)
    if not eps_max > 0 or bisection_steps < 0:
        raise InputError(
            f"got eps_max={eps_max}, bisection_steps={bisection_steps}; pass eps_max > 0 and "
            "bisection_steps >= 0"
        )
    budget = AttackBudget(
        norm,
        steps,
        restarts,
        2.5 / steps if step_size is None else step_size,
        loss,
        bisection_steps,
        float(eps_max),
        seed,
        None if clip is None else tuple(clip),
    )

    def attack(epsilon: Tensor) -> Tensor:
        return pgd(
            logit_fn,
            inputs,
            labels,
            epsilon,
            norm=norm,
            steps=steps,
            restarts=restarts,
            step_size=budget.step_size,
            loss=loss,
            clip=clip,
            space_mask=space_mask,
            generator=_seeded(seed, inputs.device),
        ).success

    with torch.no_grad():
        clean_wrong = _logits(logit_fn, inputs).argmax(dim=1) != labels
    lower = torch.zeros(inputs.shape[0], dtype=torch.float64, device=inputs.device)
    upper = torch.full_like(lower, float(eps_max))
    flipped = attack(upper.to(inputs.dtype)) | clean_wrong
    for _ in range(bisection_steps):
        middle = 0.5 * (lower + upper)
        success = attack(middle.to(inputs.dtype))
        upper = torch.where(success, middle, upper)
        lower = torch.where(success, lower, middle)
    upper = torch.where(flipped, upper, torch.full_like(upper, float("inf")))
    upper = torch.where(clean_wrong, torch.zeros_like(upper), upper)
    lower = torch.where(clean_wrong, torch.zeros_like(lower), lower)
    lower = torch.where(flipped, lower, torch.full_like(lower, float(eps_max)))
    return MinimalEpsilon(upper, lower, budget)


# ----------------------------------------------------------------------------- baselines


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


# ----------------------------------------------------------------------------- sanity flags


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
    if flags.zero_gradient_fraction > 0:
        flags.messages.append(
            f"{flags.zero_gradient_fraction:.1%} of samples have an exactly zero input gradient "
            "(saturated softmax or non-differentiable ops): attacks and lambda_max are blind there"
        )
    if flags.nonfinite_gradient_fraction > 0:
        flags.messages.append(
            f"{flags.nonfinite_gradient_fraction:.1%} of samples have NaN/inf input gradients; "
            "run in float32 or float64, not float16"
        )
    if random_forward:
        flags.messages.append(
            "two forward passes on the same inputs differ: call model.eval() (dropout, "
            "BatchNorm) or remove sampling; gradient numbers are not reproducible otherwise"
        )
    if probability_outputs:
        flags.messages.append(
            "the outputs are already probabilities (in [0, 1], rows sum to 1); pass logits, "
            "e.g. drop the final softmax, or gradients and lambda_max are distorted"
        )
    if unflipped_at_eps_max > 0:
        flags.messages.append(
            f"{unflipped_at_eps_max} correctly classified samples survived PGD at eps_max; if "
            "eps_max spans the whole input box this suggests gradient masking"
        )
    flags.messages.append(GRADIENT_MASKING_WARNING)
    return flags


# ----------------------------------------------------------------------------- report


@dataclass
class AttackReport:
    """The attack cross-check of one model (results.json section ``"attacks"``).

    Attributes:
        epsilons: budgets of the robust-accuracy curve; ``robust_accuracy`` maps "pgd" and
            "fgsm" to one accuracy per epsilon; clean_accuracy at epsilon 0.
        minimal: per-sample bisection result and its budget.
        spectral_norm, confidence, first_order: (N,) per-sample predictors.
        correct: (N,) bool, correctly classified on clean inputs; correlations use these only.
        correlations: "spectral_norm", "confidence", "first_order" -> correlation with the
            minimal epsilon (expected signs: negative, negative, positive).
        partial: spectral_norm vs minimal epsilon given confidence.
        sanity: the flags.
    """

    epsilons: list[float]
    clean_accuracy: float
    robust_accuracy: dict[str, list[float]]
    minimal: MinimalEpsilon
    spectral_norm: Tensor
    confidence: Tensor
    first_order: Tensor
    correct: Tensor
    correlations: dict[str, RankCorrelation]
    partial: PartialCorrelation
    sanity: SanityFlags

    def to_json(self) -> dict:
        """Plain-Python dict; +inf minimal epsilons become null."""
        return {
            "norm": self.minimal.budget.norm,
            "budget": self.minimal.budget.to_json(),
            "epsilons": [float(e) for e in self.epsilons],
            "clean_accuracy": float(self.clean_accuracy),
            "robust_accuracy": {
                name: [float(a) for a in values] for name, values in self.robust_accuracy.items()
            },
            "num_samples": int(self.correct.numel()),
            "num_correct": int(self.correct.sum()),
            "num_not_flipped": int(torch.isinf(self.minimal.epsilon).sum()),
            "median_minimal_epsilon": json_float(
                self.minimal.epsilon[self.correct].double().median()
                if bool(self.correct.any())
                else float("nan")
            ),
            "correlations": {name: c.to_json() for name, c in self.correlations.items()},
            "expected_signs": {"spectral_norm": -1, "confidence": -1, "first_order": 1},
            "partial_spectral_norm_given_confidence": self.partial.to_json(),
            "sanity": self.sanity.to_json(),
            "per_sample": {
                "minimal_epsilon": json_floats(self.minimal.epsilon),
                "lower_epsilon": json_floats(self.minimal.lower),
                "spectral_norm": json_floats(self.spectral_norm),
                "confidence": json_floats(self.confidence),
                "first_order": json_floats(self.first_order),
                "correct": [bool(c) for c in self.correct.tolist()],
            },
        }


def attack_report(
    logit_fn: LogitFn,
    inputs: Tensor,  # (N, *shape)
    labels: Tensor,  # (N,)
    spectral_norm: Tensor,  # (N,)
    *,
    epsilons: Sequence[float],
    norm: Norm = "l2",
    eps_max: float | None = None,
    bisection_steps: int = 10,
    steps: int = 20,
    restarts: int = 1,
    step_size: float | None = None,
    loss: Loss = "ce",
    clip: tuple[float, float] | None = None,
    space_mask: Tensor | None = None,
    confidence_level: float = 0.95,
    num_bootstrap: int = 1000,
    seed: int = 0,
) -> AttackReport:
    """Attack cross-check: robust accuracy, minimal epsilons, and what predicts them.

    Runs PGD and FGSM at each epsilon, bisects each sample's minimal PGD epsilon, computes the
    baselines and sanity flags, and correlates every predictor with the minimal epsilon over
    the correctly classified samples (samples never flipped rank last).

    Raises:
        InputError: bad shapes, norm, clip or epsilons.
    """
    check_batch(inputs, labels, space_mask)
    spectral_norm = torch.as_tensor(spectral_norm).detach().reshape(-1)
    if spectral_norm.numel() != inputs.shape[0]:
        raise InputError(
            f"got {spectral_norm.numel()} spectral_norm values for {inputs.shape[0]} inputs; "
            "pass the engine's per-sample spectral_norm, shape (N,)"
        )
    epsilons = [float(e) for e in epsilons]
    if not epsilons or min(epsilons) < 0:
        raise InputError(f"got epsilons={epsilons}; pass a non-empty list of budgets >= 0")
    common = {"norm": norm, "loss": loss, "clip": clip, "space_mask": space_mask}
    with torch.no_grad():
        correct = _logits(logit_fn, inputs).argmax(dim=1) == labels
    robust: dict[str, list[float]] = {"pgd": [], "fgsm": []}
    for epsilon in epsilons:
        result = pgd(
            logit_fn,
            inputs,
            labels,
            epsilon,
            steps=steps,
            restarts=restarts,
            step_size=step_size,
            generator=_seeded(seed, inputs.device),
            **common,
        )
        robust["pgd"].append(float((~result.success).double().mean()))
        result = fgsm(logit_fn, inputs, labels, epsilon, **common)
        robust["fgsm"].append(float((~result.success).double().mean()))
    minimal = minimal_epsilon(
        logit_fn,
        inputs,
        labels,
        eps_max=eps_max,
        bisection_steps=bisection_steps,
        steps=steps,
        restarts=restarts,
        step_size=step_size,
        seed=seed,
        **common,
    )
    baselines = baseline_scores(logit_fn, inputs, norm=norm, space_mask=space_mask)
    keep = correct.cpu()
    target = minimal.epsilon.cpu()[keep]
    predictors = {
        "spectral_norm": spectral_norm.cpu(),
        "confidence": baselines.confidence.cpu(),
        "first_order": baselines.first_order.cpu(),
    }
    correlations = {
        name: rank_correlation(
            values[keep],
            target,
            confidence=confidence_level,
            num_bootstrap=num_bootstrap,
            seed=seed,
        )
        for name, values in predictors.items()
    }
    partial = partial_rank_correlation(
        predictors["spectral_norm"][keep], target, predictors["confidence"][keep]
    )
    unflipped = int(torch.isinf(minimal.epsilon).sum())
    sanity = sanity_flags(
        logit_fn, inputs, labels, space_mask=space_mask, unflipped_at_eps_max=unflipped
    )
    return AttackReport(
        epsilons=epsilons,
        clean_accuracy=float(correct.double().mean()),
        robust_accuracy=robust,
        minimal=minimal,
        spectral_norm=spectral_norm,
        confidence=baselines.confidence,
        first_order=baselines.first_order,
        correct=correct,
        correlations=correlations,
        partial=partial,
        sanity=sanity,
    )
