"""Dense float64 ground truth for tests: the full input Fisher from ``torch.func.jacrev``."""

from __future__ import annotations

import torch
from torch import Tensor

from hf_fisher.operators import LogitFn


def dense_jacobian(logit_fn: LogitFn, inputs: Tensor) -> Tensor:  # (N, *shape) -> (N, K, d)
    """Per-sample logits Jacobian, one sample at a time (deliberately not batched).

    Structured (N, T, K) logits give (N, T K, d) rows, position-major.
    """
    rows = []
    for sample in inputs:
        jacobian = torch.func.jacrev(lambda x: logit_fn(x[None])[0])(sample)
        rows.append(jacobian.reshape(-1, sample.numel()))  # (T K, d) for (T, K) logits
    return torch.stack(rows)


def dense_fisher(
    logit_fn: LogitFn,
    inputs: Tensor,
    space_mask: Tensor | None = None,
    likelihood: str = "categorical",
) -> Tensor:
    """Return the (N, d, d) float64 input Fisher ``F_i = J_i^T C_i J_i`` from dense Jacobians.

    ``C_i = diag(p_i) - p_i p_i^T`` with p the softmax ("categorical"), or
    ``C_i = diag(s_i (1 - s_i))`` with s the per-class sigmoid ("bernoulli", multi-label).
    Structured (N, T, K) logits give ``F_i = sum_t J_it^T C_it J_it`` (block-diagonal C).
    ``space_mask`` (broadcastable to the inputs) restricts F to the masked coordinates,
    ``F <- M F M`` with ``M = diag(mask)``.
    """
    jacobian = dense_jacobian(logit_fn, inputs).double()
    with torch.no_grad():
        logits = logit_fn(inputs).double()
    if likelihood == "bernoulli":
        sigmoids = 1 / (1 + torch.exp(-logits))
        covariance = torch.diag_embed(sigmoids * (1 - sigmoids))
    else:
        probs = torch.softmax(logits, dim=-1)
        covariance = torch.diag_embed(probs) - probs[..., :, None] * probs[..., None, :]
    if logits.ndim == 3:  # a product over positions: block-diagonal class covariance
        covariance = torch.stack([torch.block_diag(*blocks) for blocks in covariance])
    fisher = jacobian.transpose(1, 2) @ covariance @ jacobian
    if space_mask is not None:
        mask = space_mask.expand_as(inputs).reshape(inputs.shape[0], -1).double()
        fisher = fisher * mask[:, :, None] * mask[:, None, :]
    return 0.5 * (fisher + fisher.transpose(1, 2))


def dense_spectrum(fisher: Tensor) -> tuple[Tensor, Tensor]:  # (N, d, d) -> (N, d), (N,)
    """Eigenvalues (descending) and trace of dense Fisher matrices."""
    return torch.linalg.eigvalsh(fisher).flip(-1), fisher.diagonal(dim1=1, dim2=2).sum(dim=1)
