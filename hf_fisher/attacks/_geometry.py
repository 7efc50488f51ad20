"""Input checks and perturbation geometry shared by the attacks and the other companions.

Norms, dual norms, projection onto an epsilon-ball, clipping to the valid input box, uniform
sampling in a ball, all batched over samples and restricted to a ``space_mask`` (text padding
stays fixed), and the checks that inputs, labels, masks and model outputs describe one batch.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from hf_fisher._random import SampleStreams
from hf_fisher.errors import InputError, NotAClassifierError
from hf_fisher.memory import select_rows  # noqa: F401 - re-exported for the attacks
from hf_fisher.operators import LogitFn

Norm = Literal["l2", "linf"]
Loss = Literal["ce", "margin"]
NORMS = ("l2", "linf")
LOSSES = ("ce", "margin")
DUAL_NORM = {"l2": "l2", "linf": "l1", "l1": "linf"}


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


def _margin(logits: Tensor, labels: Tensor) -> Tensor:  # (N, K) -> (N,): z_y - max_{k!=y} z_k
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - others.amax(dim=1)


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


def active_dimension(inputs: Tensor, space_mask: Tensor | None) -> Tensor:  # (N,)
    """Number of coordinates each sample may move, as a float tensor."""
    if space_mask is None:
        size = math.prod(inputs.shape[1:])
        return torch.full((inputs.shape[0],), float(size), device=inputs.device)
    mask = space_mask.to(inputs).expand_as(inputs)
    return _flat(mask).sum(dim=1).clamp_min(1.0)


def _draw(
    kind: str,
    shape: tuple[int, ...],
    generator: torch.Generator | SampleStreams | None,
    like: Tensor,
) -> Tensor:
    """Normal or uniform draws of ``shape`` (N first), from one generator or per-sample streams."""
    if isinstance(generator, SampleStreams):
        where = {"dtype": like.dtype, "device": like.device}
        draw = generator.normal if kind == "normal" else generator.uniform
        return draw(tuple(shape[1:]), **where)
    sample = torch.randn if kind == "normal" else torch.rand
    return sample(shape, generator=generator, device=like.device).to(like)


def sample_in_ball(
    inputs: Tensor,  # (N, *shape): only the shape, dtype and device are used
    radius: Tensor,  # (N,)
    norm: str,
    *,
    space_mask: Tensor | None = None,
    generator: torch.Generator | SampleStreams | None = None,
) -> Tensor:  # (N, *shape)
    """Uniform samples in each sample's L2 or Linf ball (restricted to ``space_mask``).

    L2: a Gaussian direction scaled by ``radius * U^(1/d)``, d the active dimension; Linf: a
    uniform draw in the cube. With per-sample streams (:class:`~hf_fisher._random.SampleStreams`)
    each sample's point depends on its own stream only, not on the other rows.
    """
    radius = radius.to(inputs)
    if norm == "linf":
        unit = _draw("uniform", inputs.shape, generator, inputs)
        return _mask((2 * unit - 1) * _per_sample(radius, inputs), space_mask)
    direction = _mask(_draw("normal", inputs.shape, generator, inputs), space_mask)
    direction = direction / _per_sample(lp_norm(direction, "l2").clamp_min(1e-30), inputs)
    uniform = _draw("uniform", inputs.shape[:1], generator, inputs)
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
