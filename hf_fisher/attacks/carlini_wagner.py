"""Carlini-Wagner L2 attack (Carlini & Wagner 2017), batched, with per-sample binary search.

Minimises ``||x' - x||_2^2 + c * max(z_y(x') - max_{k != y} z_k(x') + kappa, 0)`` with Adam, for
each sample its own constant ``c``, found by a binary search over ``binary_search_steps`` outer
rounds (a success halves the bracket downwards, a failure upwards, or multiplies ``c`` by 10
while no success bounds it). In a clipped box the perturbation lives in tanh space,
``x' = low + (high - low) (tanh(w) + 1) / 2``, so every iterate is a valid input; unbounded
spaces (text embeddings) optimise ``x' = x + delta`` directly. ``space_mask`` zeros are never
moved. The output is each sample's smallest L2 perturbation among all iterates that flip its
label: an adversarial example that really exists, so the number is an upper bound on the
distance to the decision boundary, like PGD's minimal epsilon.

Adam and the margin loss act on each sample's own coordinates, so a sample's result does not
depend on the rest of its batch (up to the rounding of the model's batched forward pass).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from hf_fisher.attacks._geometry import (
    _logits,
    _margin,
    _mask,
    check_batch,
    check_clip,
    lp_norm,
)
from hf_fisher.errors import InputError
from hf_fisher.operators import LogitFn

_UNBOUNDED_CONST = 1e10  # the binary search's "no upper bound on c yet"
_TANH_EDGE = 1.0 - 1e-6  # keeps atanh finite for inputs on the box's faces


@dataclass(frozen=True)
class CarliniWagnerSettings:
    """The budget of one Carlini-Wagner L2 run (recorded in results.json)."""

    steps: int = 100
    binary_search_steps: int = 7
    initial_const: float = 1.0
    learning_rate: float = 0.01
    kappa: float = 0.0
    clip: tuple[float, float] | None = None

    @property
    def gradient_evaluations_per_sample(self) -> int:
        """Forward+backward passes per sample (every sample runs every step)."""
        return self.steps * self.binary_search_steps

    def to_json(self) -> dict:
        """Plain-Python dict, including the cost."""
        data = asdict(self)
        data["clip"] = None if self.clip is None else [float(v) for v in self.clip]
        data["gradient_evaluations_per_sample"] = self.gradient_evaluations_per_sample
        return data

    @classmethod
    def from_json(cls, data: dict) -> CarliniWagnerSettings:
        """Read back :meth:`to_json` (the cost is recomputed, not read)."""
        clip = data["clip"]
        return cls(
            steps=data["steps"],
            binary_search_steps=data["binary_search_steps"],
            initial_const=data["initial_const"],
            learning_rate=data["learning_rate"],
            kappa=data["kappa"],
            clip=None if clip is None else (float(clip[0]), float(clip[1])),
        )

    def check(self) -> None:
        """Raise InputError on a knob that cannot run."""
        if self.steps < 1 or self.binary_search_steps < 1:
            raise InputError(
                f"got steps={self.steps}, binary_search_steps={self.binary_search_steps}; "
                "both must be >= 1"
            )
        if not (self.initial_const > 0 and self.learning_rate > 0 and self.kappa >= 0):
            raise InputError(
                f"got initial_const={self.initial_const}, learning_rate={self.learning_rate}, "
                f"kappa={self.kappa}; pass initial_const > 0, learning_rate > 0, kappa >= 0"
            )
        check_clip(self.clip)


@dataclass
class CarliniWagnerResult:
    """Per-sample outcome of :func:`carlini_wagner_l2`.

    Attributes:
        norm: (N,) float64 smallest L2 norm of a label-flipping perturbation found; 0 for
            samples already misclassified, +inf where no iterate flipped the label.
        adversarial: (N, *shape) the input at that norm (the clean input where none).
        success: (N,) bool, the label was flipped (or already wrong).
        settings: the budget.
    """

    norm: Tensor
    adversarial: Tensor
    success: Tensor
    settings: CarliniWagnerSettings


class _Space:
    """Maps the optimisation variable to inputs: tanh space in a box, a plain offset without."""

    def __init__(self, inputs: Tensor, clip: tuple[float, float] | None, mask: Tensor | None):
        self.inputs, self.clip, self.mask = inputs, clip, mask

    def start(self) -> Tensor:
        """The variable that maps back to the clean inputs."""
        if self.clip is None:
            return torch.zeros_like(self.inputs)
        low, high = self.clip
        unit = 2 * (self.inputs - low) / (high - low) - 1
        return torch.atanh(unit.clamp(-_TANH_EDGE, _TANH_EDGE))

    def __call__(self, variable: Tensor) -> Tensor:
        if self.clip is None:
            return self.inputs + _mask(variable, self.mask)
        low, high = self.clip
        boxed = low + (high - low) * (torch.tanh(variable) + 1) / 2
        return self.inputs + _mask(boxed - self.inputs, self.mask)


def _next_const(
    const: Tensor, lower: Tensor, upper: Tensor, succeeded: Tensor
) -> tuple[Tensor, Tensor, Tensor]:  # const, lower, upper, each (N,)
    """One binary-search update of every sample's constant."""
    upper = torch.where(succeeded, torch.minimum(upper, const), upper)
    lower = torch.where(succeeded, lower, torch.maximum(lower, const))
    bounded = upper < _UNBOUNDED_CONST
    const = torch.where(succeeded | bounded, (lower + upper) / 2, const * 10)
    return const, lower, upper


def _optimise(
    logit_fn: LogitFn,
    space: _Space,
    labels: Tensor,  # (N,)
    const: Tensor,  # (N,)
    settings: CarliniWagnerSettings,
    best: tuple[Tensor, Tensor],  # norm (N,) float64, adversarial (N, *shape): updated in place
) -> Tensor:  # (N,) bool: some iterate of this round flipped the label
    """One outer round: ``steps`` Adam steps from the clean input at fixed constants."""
    best_norm, best_adversarial = best
    variable = space.start().requires_grad_(True)
    optimiser = torch.optim.Adam([variable], lr=settings.learning_rate)
    succeeded = torch.zeros_like(labels, dtype=torch.bool)
    for step in range(settings.steps + 1):
        final = step == settings.steps
        with torch.set_grad_enabled(not final):
            candidate = space(variable)
            logits = _logits(logit_fn, candidate)
            margin = _margin(logits, labels)
            distance = lp_norm(candidate - space.inputs, "l2")
        flipped = margin.detach() < 0
        size = distance.detach().double()
        better = flipped & (size < best_norm)
        best_norm.copy_(torch.where(better, size, best_norm))
        best_adversarial[better] = candidate.detach()[better]
        succeeded |= flipped
        if final:
            break
        hinge = (margin + settings.kappa).clamp_min(0)
        loss = (distance.pow(2) + const.to(margin) * hinge).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return succeeded


def carlini_wagner_l2(
    logit_fn: LogitFn,
    inputs: Tensor,  # (N, *shape)
    labels: Tensor,  # (N,)
    *,
    steps: int = 100,
    binary_search_steps: int = 7,
    initial_const: float = 1.0,
    learning_rate: float = 0.01,
    kappa: float = 0.0,
    clip: tuple[float, float] | None = None,
    space_mask: Tensor | None = None,
) -> CarliniWagnerResult:
    """Carlini-Wagner L2: each sample's smallest label-flipping L2 perturbation found.

    Args:
        logit_fn: (N, *shape) -> (N, K) logits; samples independent (eval mode).
        inputs, labels: the batch and its integer labels.
        steps: Adam steps per binary-search round.
        binary_search_steps: rounds of the per-sample search over the constant ``c``.
        initial_const: every sample's first ``c``.
        learning_rate: Adam's step (in tanh space in a box, in input units without).
        kappa: confidence margin of the hinge (0: just across the boundary).
        clip: valid input box, e.g. (0.0, 1.0) for pixels (tanh change of variables); None
            for embeddings.
        space_mask: 0/1 tensor broadcastable to inputs; zeros are never perturbed.

    Returns:
        The :class:`CarliniWagnerResult`. Cost: ``steps * binary_search_steps`` gradient
        passes per sample.

    Raises:
        InputError: bad shapes, clip or knobs, or inputs outside ``clip``.
    """
    check_batch(inputs, labels, space_mask)
    settings = CarliniWagnerSettings(
        steps,
        binary_search_steps,
        initial_const,
        learning_rate,
        kappa,
        None if clip is None else (float(clip[0]), float(clip[1])),
    )
    settings.check()
    inputs = inputs.detach()
    if clip is not None and bool(((inputs < clip[0]) | (inputs > clip[1])).any()):
        raise InputError(
            f"got inputs in [{float(inputs.min()):.4g}, {float(inputs.max()):.4g}] outside "
            f"clip={clip}; pass inputs inside the box or the box they live in"
        )
    mask = None if space_mask is None else space_mask.expand_as(inputs).to(inputs)
    space = _Space(inputs, settings.clip, mask)
    count = inputs.shape[0]
    best = (
        torch.full((count,), float("inf"), dtype=torch.float64, device=inputs.device),
        inputs.clone(),
    )
    const = torch.full((count,), float(initial_const), dtype=torch.float64, device=inputs.device)
    lower = torch.zeros_like(const)
    upper = torch.full_like(const, _UNBOUNDED_CONST)
    for _ in range(binary_search_steps):
        succeeded = _optimise(logit_fn, space, labels, const, settings, best)
        const, lower, upper = _next_const(const, lower, upper, succeeded)
    with torch.no_grad():
        clean_wrong = _logits(logit_fn, inputs).argmax(dim=1) != labels
    norm, adversarial = best
    norm = torch.where(clean_wrong, torch.zeros_like(norm), norm)
    adversarial[clean_wrong] = inputs[clean_wrong]
    return CarliniWagnerResult(norm, adversarial, torch.isfinite(norm), settings)
