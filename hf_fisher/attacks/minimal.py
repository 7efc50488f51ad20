"""Per-sample minimal adversarial budget: a batched bisection over PGD's epsilon.

The bisection stops per sample once its bracket is within a relative ``tolerance`` of its upper
end (default 1%), so the resolution is relative to each sample's own epsilon rather than to
``eps_max``; samples already resolved are not attacked again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor

from hf_fisher._progress import ProgressCallback, Steps
from hf_fisher._random import SampleStreams
from hf_fisher.attacks._geometry import (
    Loss,
    Norm,
    _logits,
    check_batch,
    check_clip,
    check_norm,
    select_rows,
)
from hf_fisher.attacks.gradient import pgd
from hf_fisher.errors import InputError
from hf_fisher.operators import LogitFn


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
    tolerance: float | None = None

    @property
    def gradient_evaluations_per_sample(self) -> int:
        """Worst-case forward+backward passes per sample of one minimal-epsilon search."""
        return (self.bisection_steps + 1) * self.steps * self.restarts

    def to_json(self) -> dict:
        """Plain-Python dict, including the worst-case cost; no ``tolerance`` key without one."""
        data = asdict(self)
        data["clip"] = None if self.clip is None else [float(v) for v in self.clip]
        data["gradient_evaluations_per_sample"] = self.gradient_evaluations_per_sample
        if self.tolerance is None:  # fixed halvings, as in files written before the tolerance
            del data["tolerance"]
        return data

    @classmethod
    def from_json(cls, data: dict) -> AttackBudget:
        """Read back :meth:`to_json` (the derived worst-case cost is recomputed, not read)."""
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        values["clip"] = None if data["clip"] is None else tuple(data["clip"])
        return cls(**values)


@dataclass
class MinimalEpsilon:
    """Per-sample bisection bracket of the smallest flipping PGD budget.

    Attributes:
        epsilon: (N,) smallest budget found that flips the label (``upper``); 0 for samples
            already misclassified; +inf when not flipped at ``eps_max``.
        lower: (N,) largest budget tried at which the same attack failed (0 if none); with a
            ``tolerance``, ``epsilon - lower <= tolerance * epsilon`` unless the step cap hit.
        budget: the attack and bisection settings.
    """

    epsilon: Tensor
    lower: Tensor
    budget: AttackBudget


def default_eps_max(inputs: Tensor, norm: str, clip: tuple[float, float] | None) -> float:
    """Largest useful budget in a clipped box: its Linf width, or its L2 diameter."""
    if clip is None:
        raise InputError(
            "got clip=None and eps_max=None; unbounded inputs (embeddings) have no natural "
            "largest budget: pass eps_max, e.g. a few times the typical embedding norm"
        )
    width = clip[1] - clip[0]
    return width if norm == "linf" else width * math.sqrt(math.prod(inputs.shape[1:]))


def _unresolved(
    lower: Tensor, upper: Tensor, flipped: Tensor, tolerance: float | None
) -> Tensor:  # (N,) bool
    """Samples whose bracket is still wider than ``tolerance * upper`` (all when None)."""
    if tolerance is None:
        return torch.ones_like(flipped)
    return flipped & (upper - lower > tolerance * upper)


def _bisect(
    attack: Callable[[Tensor, Tensor | None], Tensor],  # budgets (n,), rows -> flipped (n,)
    clean_wrong: Tensor,  # (N,) bool
    eps_max: float,
    bisection_steps: int,
    tolerance: float | None,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:  # upper (N,), lower (N,) float64
    """Halve every sample's bracket ``[lower, upper]`` towards the flip, all samples at once.

    Each round attacks only the samples whose bracket is still wider than the tolerance
    (``rows=None`` means every sample); it stops early once none is left.
    """
    lower = torch.zeros(clean_wrong.shape[0], dtype=torch.float64, device=clean_wrong.device)
    upper = torch.full_like(lower, float(eps_max))
    flipped = attack(upper.to(dtype), None) | clean_wrong
    for _ in range(bisection_steps):
        todo = _unresolved(lower, upper, flipped & ~clean_wrong, tolerance)
        if not bool(todo.any()):
            break
        rows = None if bool(todo.all()) else todo.nonzero().flatten()
        middle = 0.5 * (lower + upper)
        success = torch.zeros_like(todo)
        if rows is None:
            success = attack(middle.to(dtype), None)
        else:
            success[rows] = attack(middle[rows].to(dtype), rows)
        upper = torch.where(todo & success, middle, upper)
        lower = torch.where(todo & ~success, middle, lower)
    upper = torch.where(flipped, upper, torch.full_like(upper, float("inf")))
    upper = torch.where(clean_wrong, torch.zeros_like(upper), upper)
    lower = torch.where(clean_wrong, torch.zeros_like(lower), lower)
    lower = torch.where(flipped, lower, torch.full_like(lower, float(eps_max)))
    return upper, lower


def _budget_of(
    norm: str,
    eps_max: float,
    bisection_steps: int,
    tolerance: float | None,
    pgd_options: dict,
    seed: int,
    clip: tuple[float, float] | None,
) -> AttackBudget:
    """Check the bisection knobs and record them with the attack's."""
    if not eps_max > 0 or bisection_steps < 0:
        raise InputError(
            f"got eps_max={eps_max}, bisection_steps={bisection_steps}; pass eps_max > 0 and "
            "bisection_steps >= 0"
        )
    if tolerance is not None and not 0 < tolerance < 1:
        raise InputError(
            f"got tolerance={tolerance}; pass a relative bracket width in (0, 1), e.g. 0.01, "
            "or None for exactly bisection_steps halvings"
        )
    steps, step_size = pgd_options["steps"], pgd_options["step_size"]
    return AttackBudget(
        norm,
        steps,
        pgd_options["restarts"],
        2.5 / steps if step_size is None else step_size,
        pgd_options["loss"],
        bisection_steps,
        float(eps_max),
        seed,
        None if clip is None else tuple(clip),
        tolerance,
    )


def minimal_epsilon(
    logit_fn: LogitFn,
    inputs: Tensor,  # (N, *shape)
    labels: Tensor,  # (N,)
    *,
    norm: Norm = "l2",
    eps_max: float | None = None,
    bisection_steps: int = 20,
    tolerance: float | None = 0.01,
    steps: int = 20,
    restarts: int = 2,
    step_size: float | None = None,
    loss: Loss = "ce",
    clip: tuple[float, float] | None = None,
    space_mask: Tensor | None = None,
    seed: int = 0,
    sample_ids: Sequence[int] | None = None,
    progress: ProgressCallback | None = None,
) -> MinimalEpsilon:
    """Bisect, batched over samples, the smallest budget at which PGD flips each label.

    First PGD at ``eps_max`` for all samples; those not flipped get +inf. Then up to
    ``bisection_steps`` rounds: every sample whose bracket ``[lower, upper]`` is still wider
    than ``tolerance * upper`` tries its midpoint and keeps the half where the flip happens.
    Every PGD call restarts its random source from ``seed``, so the attack at ``upper`` flipped
    and the one at ``lower`` did not. The returned ``epsilon`` (``upper``) overestimates the
    attack's own threshold by at most ``tolerance`` relative (``tolerance=None``: exactly
    ``bisection_steps`` halvings for every sample, width ``eps_max / 2^bisection_steps``).
    Worst-case cost: ``(bisection_steps + 1) * steps * restarts`` gradient passes per sample;
    restarts run only on samples not flipped yet, and resolved samples stop, so the typical
    cost is far lower. ``progress(done, total)`` is called after each PGD run. Random starts
    come from per-sample streams keyed by ``(seed, sample id)`` (``sample_ids``, default
    ``0..N-1``), so a sample's epsilon does not depend on the other samples of the batch.

    Raises:
        InputError: bad norm/clip/shape/tolerance, or ``eps_max`` missing with ``clip=None``.
    """
    check_batch(inputs, labels, space_mask)
    check_norm(norm)
    check_clip(clip)
    if eps_max is None:
        eps_max = default_eps_max(inputs, norm, clip)
    pgd_options = {"steps": steps, "restarts": restarts, "step_size": step_size, "loss": loss}
    budget = _budget_of(norm, eps_max, bisection_steps, tolerance, pgd_options, seed, clip)
    steps_done = Steps(progress, bisection_steps + 1)
    full_mask = None if space_mask is None else space_mask.expand_as(inputs)
    ids = torch.arange(len(inputs)) if sample_ids is None else torch.as_tensor(list(sample_ids))

    def attack(epsilon: Tensor, rows: Tensor | None) -> Tensor:
        picked = slice(None) if rows is None else rows
        flipped = pgd(
            logit_fn if rows is None else select_rows(logit_fn, rows),
            inputs[picked],
            labels[picked],
            epsilon,
            norm=norm,
            steps=steps,
            restarts=restarts,
            step_size=budget.step_size,
            loss=loss,
            clip=clip,
            space_mask=space_mask if rows is None or full_mask is None else full_mask[rows],
            generator=SampleStreams(seed, ids if rows is None else ids[rows.cpu()], "attack"),
        ).success
        steps_done.advance()
        return flipped

    with torch.no_grad():
        clean_wrong = _logits(logit_fn, inputs).argmax(dim=1) != labels
    upper, lower = _bisect(
        attack, clean_wrong, float(eps_max), bisection_steps, tolerance, inputs.dtype
    )
    if steps_done.done < steps_done.total:  # resolved early: report the skipped rounds as done
        steps_done.advance(steps_done.total - steps_done.done)
    return MinimalEpsilon(upper, lower, budget)
