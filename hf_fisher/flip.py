"""The Fisher flip radius: how far, in Fisher units, a prediction is from changing.

``kl_radius = sqrt(2 tau / lambda_max)`` uses one KL level ``tau`` for every sample, so it ignores
how close the prediction already is to a decision boundary. The flip radius replaces ``tau`` by
the KL each sample needs to reach its nearest boundary.

Derivation (categorical). Let ``a`` be the top class and ``b`` the runner-up. Minimising
``KL(p || q) = sum_i p_i log(p_i / q_i)`` over distributions with ``q_a = q_b`` (Lagrange
multipliers for the tie and for ``sum q = 1``) gives

    q_a = q_b = (p_a + p_b) / 2,    q_i = p_i for every other class,

(the *arithmetic* mean; the geometric mean ``sqrt(p_a p_b)``, renormalised, solves the reverse
problem ``min KL(q || p)``), hence with ``s = p_a + p_b``

    KL_flip(p) = p_a log(2 p_a / s) + p_b log(2 p_b / s) = s * (log 2 - H(p_a / s)),

with H the binary entropy in nats. This value decreases in the partner's probability, so the
runner-up is the nearest boundary of all the classes, and the minimiser has ``q_a = q_b >= q_i``:
it lies on the real decision boundary. Two classes (``s = 1``): ``KL_flip = log 2 - H(p_a)``, the
KL from ``p`` to the fair coin.

Multi-label (bernoulli): each label ``k`` is an independent sigmoid ``p_k`` and flips at
``q_k = 1/2``; the KL of independent labels adds, so the cheapest change of the predicted label
set moves one label: ``KL_flip = min_k (log 2 - H(p_k))``.

Then ``r_flip = sqrt(2 KL_flip / lambda_max)``: the L2 input distance at which the second-order
KL ``d^T F d / 2`` reaches ``KL_flip`` along the worst direction. Larger is more robust.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hf_fisher.errors import InputError

LOG2 = math.log(2.0)


def _binary_kl_to_half(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``log 2 - H(p)`` for ``p = exp(log_p)``, ``1 - p = exp(log_q)``; 0 log 0 = 0."""
    p, q = log_p.exp(), log_q.exp()
    return (LOG2 + torch.nan_to_num(p * log_p) + torch.nan_to_num(q * log_q)).clamp_min(0.0)


def _categorical(logits: Tensor) -> Tensor:  # (N, K) -> (N,)
    if logits.shape[1] < 2:
        return torch.full(logits.shape[:1], math.inf, dtype=torch.float64)
    log_p = torch.log_softmax(logits, dim=1)
    top2 = log_p.topk(2, dim=1).values  # (N, 2): log p_a, log p_b
    log_s = torch.logsumexp(top2, dim=1)
    pair = top2 - log_s[:, None]  # log of the renormalised pair (p_a / s, p_b / s)
    return log_s.exp() * _binary_kl_to_half(pair[:, 0], pair[:, 1])


def _bernoulli(logits: Tensor) -> Tensor:  # (N, K) -> (N,)
    per_label = _binary_kl_to_half(
        torch.nn.functional.logsigmoid(logits), torch.nn.functional.logsigmoid(-logits)
    )
    return per_label.amin(dim=1)


KL_FLIP = {"categorical": _categorical, "bernoulli": _bernoulli}
"""Likelihood -> ``KL_flip`` from logits."""


def kl_to_flip(logits: Tensor, likelihood: str = "categorical") -> Tensor:  # (N, K) -> (N,)
    """KL from each sample's output distribution to its nearest decision boundary.

    ``KL_flip(p) = p_a log(2 p_a / s) + p_b log(2 p_b / s)``, ``s = p_a + p_b`` (top class and
    runner-up); multi-label: ``min_k (log 2 - H(sigmoid z_k))``. Computed from logits in float64
    (no underflow of ``p_b``). See the module docstring for the derivation.

    Args:
        logits: (N, K) logits at the clean inputs.
        likelihood: "categorical" (softmax) or "bernoulli" (multi-label sigmoids).

    Returns:
        (N,) float64, ``>= 0``; 0 at a tie; +inf for a single-class softmax (nothing to flip to).

    Raises:
        InputError: logits not (N, K), or an unknown likelihood.

    >>> kl = kl_to_flip(torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
    >>> [round(v, 4) for v in kl.tolist()]
    [0.0, 0.3278]
    """
    if likelihood not in KL_FLIP:
        raise InputError(
            f"got likelihood={likelihood!r}; pass one of {sorted(KL_FLIP)} for kl_to_flip"
        )
    logits = torch.as_tensor(logits).detach()
    if logits.ndim != 2 or logits.shape[1] < 1:
        raise InputError(
            f"got logits of shape {tuple(logits.shape)}; pass (N, K) logits, one row per sample"
        )
    return KL_FLIP[likelihood](logits.to("cpu", torch.float64))


def flip_radius(spectral_norm: float, kl_flip: float) -> float:
    """L2 perturbation at which the second-order KL reaches ``kl_flip``: sqrt(2 kl_flip / lambda).

    +inf where lambda_max is 0 (or nothing can flip); 0 at a tie.

    >>> round(flip_radius(2.0, 0.01), 4), flip_radius(0.0, 0.5)
    (0.1, inf)
    """
    if not math.isfinite(kl_flip) or spectral_norm <= 0:
        return math.inf
    return math.sqrt(2.0 * kl_flip / spectral_norm)


def flip_radii(spectral_norm: Tensor, kl_flip: Tensor) -> Tensor:  # (N,), (N,) -> (N,)
    """Vectorised :func:`flip_radius` (float64 on the CPU)."""
    norm = torch.as_tensor(spectral_norm).detach().to("cpu", torch.float64).reshape(-1)
    kl = torch.as_tensor(kl_flip).detach().to("cpu", torch.float64).reshape(-1)
    radius = (2.0 * kl / norm.clamp_min(1e-300)).sqrt()
    return torch.where((norm > 0) & torch.isfinite(kl), radius, torch.full_like(radius, math.inf))
