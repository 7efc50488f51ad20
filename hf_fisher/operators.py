"""Per-sample input-space Fisher operators: matrix-free products and the class-space weights.

For a classifier with logits z(x) (K classes) and p = softmax(z), the input-space Fisher is

    F(x) = J^T (diag(p) - p p^T) J,    J = dz/dx  (K x d),

of rank <= K-1 ("categorical" likelihood). A multi-label classifier scores each class with its
own sigmoid, s = sigmoid(z), and its Fisher is that of a product of K Bernoulli variables,

    F(x) = J^T diag(s (1 - s)) J,

of rank <= K ("bernoulli" likelihood). Every function here takes ``likelihood`` and defaults to
"categorical".

Structured outputs (a token classifier, a segmenter, a language model read at every position)
predict a product of categoricals ``p(y|x) = prod_t p_t(y_t|x)`` over T output positions: their
logits are (N, T, K) and the Fisher is the sum over positions,

    F(x) = sum_t J_t^T (diag(p_t) - p_t p_t^T) J_t,

of rank <= T (K-1). The operators read the structure from the logits' shape: every class-space
formula below acts on the last (class) dimension, position by position, and one product is still
one double backward and one backward over all positions at once. Positions an adapter excludes
(padding) have logits that do not depend on the input, so they add nothing.

Every operator here is *batched over samples*: sample i owns its own d x d block F(x_i), and a
product takes one vector per sample, ``V`` of shape (N, d), to ``F V`` of shape (N, d). Operators
know nothing about transformers: they take a plain ``logit_fn`` from a continuous input batch
(N, *input_shape) to logits (N, K), where sample i's logits depend on x_i alone (eval mode).

The class-space algebra shared by every estimator lives here too: the class covariance, its
closed-form square root :func:`covariance_factor` and the eigenvalues of a dual Gram form
:func:`dual_eigenvalues`. The exact estimator built on them (gradient rows, the dual spectrum,
input eigenvectors) is :mod:`hf_fisher.estimators.exact`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from hf_fisher.errors import InputError, NotAClassifierError

LogitFn = Callable[[Tensor], Tensor]
LIKELIHOODS = ("categorical", "bernoulli")


@runtime_checkable
class BatchedOperator(Protocol):
    """A stack of N symmetric d x d blocks, applied one vector per block.

    Attributes:
        shape: ``(N, d)``: number of blocks and size of each.
        dtype, device: of the vectors ``matvec`` takes and returns.
        space_mask: ``(N, d)`` 0/1 mask of the coordinates that belong to each block's space
            (text: non-padded tokens), or None when every coordinate does. Random probes are
            multiplied by it.

    """

    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device
    space_mask: Tensor | None

    def matvec(self, vectors: Tensor) -> Tensor:  # (N, d) -> (N, d)
        """Return ``F_i v_i`` for every sample i."""
        ...


class DenseOperator:
    """A batched operator backed by a dense (N, d, d) tensor; for tests and tiny problems.

    >>> op = DenseOperator(torch.eye(3).expand(2, 3, 3))
    >>> op.matvec(torch.ones(2, 3)).tolist()
    [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """

    def __init__(self, matrices: Tensor, space_mask: Tensor | None = None) -> None:  # (N, d, d)
        if matrices.ndim == 2:
            matrices = matrices.unsqueeze(0)
        if matrices.ndim != 3 or matrices.shape[1] != matrices.shape[2]:
            raise InputError(
                f"got a dense operator of shape {tuple(matrices.shape)}; expected (N, d, d)"
            )
        self.matrices = matrices
        self.shape = (matrices.shape[0], matrices.shape[1])
        self.dtype = matrices.dtype
        self.device = matrices.device
        self.space_mask = space_mask

    def matvec(self, vectors: Tensor) -> Tensor:  # (N, d) -> (N, d)
        """Return ``A_i v_i`` for every sample i."""
        return torch.einsum("nij,nj->ni", self.matrices, vectors)


def as_operator(operator: BatchedOperator | Tensor) -> BatchedOperator:
    """Accept a dense (N, d, d) or (d, d) tensor wherever an operator is expected."""
    if isinstance(operator, Tensor):
        return DenseOperator(operator)
    return operator


def centered_class_covariance(probs: Tensor) -> Tensor:  # (N, K) -> (N, K, K)
    """Return ``diag(p) - p p^T`` per sample."""
    return torch.diag_embed(probs) - probs.unsqueeze(-1) * probs.unsqueeze(-2)


def apply_class_covariance(probs: Tensor, top_class: Tensor, values: Tensor) -> Tensor:
    """Return ``(diag(p) - p p^T) w`` per sample, in float64, without float32 cancellation.

    The matrix annihilates the ones vector, so ``w`` is first shifted by its top-class entry: a
    mathematical no-op that keeps the result accurate when p_top is close to 1.

    Args:
        probs: (N, K) (structured: (N, T, K)) float64 probabilities.
        top_class: (N,) (structured: (N, T)) index of the most probable class.
        values: (N, K) (structured: (N, T, K)) vectors ``w``.

    Returns:
        Float64, shaped like ``values``; position by position for structured outputs.

    """
    shifted = values.double() - values.double().gather(-1, top_class[..., None])
    return probs * (shifted - (probs * shifted).sum(dim=-1, keepdim=True))


def check_likelihood(likelihood: str) -> None:
    """Raise InputError unless ``likelihood`` is "categorical" (softmax) or "bernoulli"."""
    if likelihood not in LIKELIHOODS:
        raise InputError(
            f"got likelihood={likelihood!r}; use 'categorical' (softmax, one label per input) "
            "or 'bernoulli' (independent sigmoids, multi-label)"
        )


def class_probabilities(logits: Tensor, likelihood: str = "categorical") -> Tensor:
    """Float64 softmax (categorical) or per-class sigmoid (bernoulli) of (N, [T,] K) logits."""
    if likelihood == "bernoulli":
        return torch.sigmoid(logits.double())
    return torch.softmax(logits.double(), dim=-1)


def bernoulli_variances(logits: Tensor) -> Tensor:  # (N, K) -> (N, K) float64
    """Return ``s (1 - s)`` with s = sigmoid(z), as ``sigmoid(z) sigmoid(-z)`` (no cancellation)."""
    logits = logits.double()
    return torch.sigmoid(logits) * torch.sigmoid(-logits)


def is_structured(logits: Tensor) -> bool:
    """Whether logits are (N, T, K): a product of categoricals over T output positions."""
    return logits.ndim == 3


def _check_logits(logits: Tensor, num_samples: int) -> None:
    if logits.ndim not in (2, 3) or logits.shape[0] != num_samples or logits.shape[-1] < 2:
        raise NotAClassifierError(
            f"the model returned an output of shape {tuple(logits.shape)} for {num_samples} "
            "samples; hf-fisher needs classifier logits of shape (N, K) with K >= 2 classes "
            "(or (N, T, K) for T output positions)"
        )
    if not torch.isfinite(logits).all():
        bad = (~torch.isfinite(logits)).reshape(num_samples, -1).any(dim=1)
        bad = bad.nonzero().flatten().tolist()
        raise InputError(
            f"the model produced non-finite logits for samples {bad[:10]}; check those inputs "
            "and the model's dtype (float16 overflows easily)"
        )


def _input_gradient(logits: Tensor, leaf: Tensor, cotangents: Tensor, **kwargs) -> Tensor:
    """``J^T w`` by autograd, with a clear error when the logits do not depend on the input."""
    if logits.requires_grad:
        (grad,) = torch.autograd.grad(logits, leaf, cotangents, allow_unused=True, **kwargs)
        if grad is not None:
            return grad
    raise NotAClassifierError(
        "the model's logits do not depend on its input (a torch.no_grad() or .detach() inside "
        "forward, or a head that ignores the input?); hf-fisher differentiates the logits with "
        "respect to the input"
    )


def _as_mask(space_mask: Tensor | None, inputs: Tensor) -> Tensor | None:
    if space_mask is None:
        return None
    return (
        space_mask.to(dtype=inputs.dtype, device=inputs.device)
        .expand_as(inputs)
        .reshape(inputs.shape[0], -1)
    )


class FisherOperator:
    """Matrix-free input-space Fisher products for a batch, via double backward.

    One forward pass builds the graph; each product then costs one double-backward (``J v``) and
    one backward (``J^T w``) over the whole batch, and over all output positions at once for
    structured (N, T, K) logits. No weight gradients are formed.

    Args:
        logit_fn: maps (N, *input_shape) inputs to (N, K) logits, or (N, T, K) for a product
            of T categoricals; samples must be independent.
        inputs: (N, *input_shape) batch in the input space.
        space_mask: optional (N, *input_shape) 0/1 mask of coordinates that belong to the space.
        likelihood: "categorical" (softmax) or "bernoulli" (multi-label sigmoids).

    >>> weight = torch.randn(3, 5, dtype=torch.float64)
    >>> x = torch.randn(2, 5, dtype=torch.float64)
    >>> op = FisherOperator(lambda inp: inp @ weight.T, x)
    >>> p = torch.softmax(x @ weight.T, dim=1)
    >>> dense = weight.T @ (torch.diag(p[0]) - torch.outer(p[0], p[0])) @ weight
    >>> v = torch.randn(2, 5, dtype=torch.float64)
    >>> torch.allclose(op.matvec(v)[0], dense @ v[0])
    True

    """

    def __init__(
        self,
        logit_fn: LogitFn,
        inputs: Tensor,
        space_mask: Tensor | None = None,
        likelihood: str = "categorical",
    ):
        check_likelihood(likelihood)
        self.likelihood = likelihood
        self.input_shape = tuple(inputs.shape[1:])
        num_samples = inputs.shape[0]
        self.shape = (num_samples, math.prod(self.input_shape))
        self.dtype = inputs.dtype
        self.device = inputs.device
        self.space_mask = _as_mask(space_mask, inputs)
        self._inputs = inputs.detach().requires_grad_(True)
        with torch.enable_grad():
            self.logits = logit_fn(self._inputs)
            _check_logits(self.logits, num_samples)
            self.probs = class_probabilities(self.logits.detach(), likelihood)
            self.top_class = self.probs.argmax(dim=-1)
            self._variances = (
                bernoulli_variances(self.logits.detach()) if likelihood == "bernoulli" else None
            )
            self._probe = torch.zeros_like(self.logits, requires_grad=True)
            self._transpose_graph = _input_gradient(
                self.logits, self._inputs, self._probe, create_graph=True
            )

    @property
    def num_classes(self) -> int:
        """K, the number of classes (per output position)."""
        return self.logits.shape[-1]

    @property
    def num_positions(self) -> int:
        """T, the number of output positions: 1 for (N, K) logits."""
        return self.logits.shape[1] if is_structured(self.logits) else 1

    @property
    def rank_bound(self) -> int:
        """An upper bound on every block's rank: T (K-1) (categorical) or T K (bernoulli)."""
        per_position = self.num_classes if self.likelihood == "bernoulli" else self.num_classes - 1
        return self.num_positions * per_position

    def _mask(self, vectors: Tensor) -> Tensor:
        return vectors if self.space_mask is None else vectors * self.space_mask

    def jvp(self, vectors: Tensor) -> Tensor:  # (N, d) -> (N, [T,] K)
        """Return ``J v`` per sample (one double-backward pass over the batch)."""
        tangent = self._mask(vectors.to(self.dtype)).reshape(self._inputs.shape)
        (out,) = torch.autograd.grad(self._transpose_graph, self._probe, tangent, retain_graph=True)
        return out.detach()

    def vjp(self, cotangents: Tensor) -> Tensor:  # (N, [T,] K) -> (N, d)
        """Return ``J^T w`` per sample (one backward pass over the batch)."""
        (out,) = torch.autograd.grad(
            self.logits, self._inputs, cotangents.to(self.logits.dtype), retain_graph=True
        )
        return self._mask(out.detach().reshape(self.shape))

    def class_covariance(self, values: Tensor) -> Tensor:  # (N, [T,] K) -> same, float64
        """Return ``C w`` per sample (and position): ``diag(p) - p p^T`` or ``diag(s (1 - s))``."""
        if self._variances is not None:
            return self._variances * values.double()
        return apply_class_covariance(self.probs, self.top_class, values)

    def class_factor(self) -> Tensor:  # (N, [T,] K, K-1 or K) float64
        """Return ``B`` with ``B B^T = C`` per sample (and position), in closed form.

        Categorical: the columns are logit-difference cotangents built from
        :func:`covariance_factor` of the non-top classes (accurate when p_top is near 1).
        """
        if self._variances is not None:
            return torch.diag_embed(self._variances.sqrt())
        probs, top = self.probs.reshape(-1, self.num_classes), self.top_class.reshape(-1)
        classes = other_classes(top, self.num_classes)
        small = covariance_factor(probs.gather(1, classes))  # (M, K-1, K-1)
        factor = small.new_zeros(len(top), self.num_classes, self.num_classes - 1)
        factor.scatter_(1, classes[:, :, None].expand_as(small), small)
        factor[torch.arange(len(top), device=factor.device), top] = -small.sum(1)
        return factor.reshape(*self.probs.shape, self.num_classes - 1)

    def exact_trace(self) -> Tensor:  # (N,) float64
        """Return ``tr(F) = sum_t ||J_t^T B_t||_F^2`` exactly, from ``rank_bound`` backward passes.

        Structured outputs take one position at a time (one backward over all positions would
        add their gradients, and the cross terms would not cancel).
        """
        factor = self.class_factor()
        if not is_structured(self.logits):
            return sum(
                self.vjp(factor[:, :, column]).double().pow(2).sum(dim=1)
                for column in range(factor.shape[-1])
            )
        total = factor.new_zeros(self.shape[0])
        cotangent = torch.zeros_like(factor[..., 0])
        for position in range(self.num_positions):
            for column in range(factor.shape[-1]):
                cotangent[:, position] = factor[:, position, :, column]
                total += self.vjp(cotangent).double().pow(2).sum(dim=1)
            cotangent[:, position] = 0.0
        return total

    def matvec(self, vectors: Tensor) -> Tensor:  # (N, d) -> (N, d)
        """Return ``F_i v_i`` per sample."""
        return self.vjp(self.class_covariance(self.jvp(vectors)))

    def quadratic_form(self, vectors: Tensor) -> Tensor:  # (N, d) -> (N,) float64
        """Return ``v_i^T F_i v_i`` per sample from a single ``J v`` product."""
        return self.position_quadratic_forms(vectors).sum(dim=1)

    def position_quadratic_forms(self, vectors: Tensor) -> Tensor:  # (N, d) -> (N, T) float64
        """Return each output position's term ``(J_t v)^T C_t (J_t v)`` of ``v^T F v``.

        For a unit eigenvector v these are the positions' shares of lambda_max: to second
        order, the KL divergence each position's prediction moves by under the perturbation v.
        One double-backward pass for all positions. (N, 1) for (N, K) logits.
        """
        jv = self.jvp(vectors).double()
        terms = (jv * self.class_covariance(jv)).sum(dim=-1)
        return terms if terms.ndim == 2 else terms[:, None]


def other_classes(top_class: Tensor, num_classes: int) -> Tensor:  # (N,) -> (N, K-1)
    """Return the K-1 class indices other than each sample's top class, in increasing order."""
    all_classes = torch.arange(num_classes, device=top_class.device).expand(len(top_class), -1)
    keep = all_classes != top_class[:, None]
    return all_classes[keep].reshape(len(top_class), num_classes - 1)


def covariance_factor(probs: Tensor) -> Tensor:  # (N, m) -> (N, m, m) float64
    """Closed-form ``B`` with ``B B^T = diag(q) - q q^T`` for (sub-)probability vectors q.

    With ``s = sqrt(q)`` and total mass ``t = sum(q) <= 1``,
    ``B = diag(s) (I - c s s^T)`` and ``c = 1 / (1 + sqrt(1 - t))`` (then
    ``(I - c s s^T)^2 = I - s s^T``). No eigendecomposition, exact in float64.

    >>> q = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    >>> b = covariance_factor(q)
    >>> torch.allclose(b @ b.transpose(1, 2), centered_class_covariance(q))
    True
    """
    probs = probs.double()
    roots = probs.clamp_min(0).sqrt()
    rest = (1 - probs.sum(dim=1)).clamp_min(0)
    scale = 1 / (1 + rest.sqrt())
    eye = torch.eye(probs.shape[1], dtype=torch.float64, device=probs.device)
    inner = eye - scale[:, None, None] * roots[:, :, None] * roots[:, None, :]
    return roots[:, :, None] * inner


def dual_eigenvalues(factor: Tensor, gram: Tensor) -> Tensor:  # (..., m, m) -> (..., m)
    """Descending eigenvalues of ``B^T G B``: the nonzero spectrum of ``R^T (B B^T) R``."""
    dual = factor.transpose(-1, -2) @ gram @ factor
    return torch.linalg.eigvalsh(0.5 * (dual + dual.transpose(-1, -2))).flip(-1).clamp_min(0)
