"""Data-free upper bound on lambda_max for plain feed-forward stacks, and how loose it is.

For every input x, ``F(x) = J^T (diag(p) - p p^T) J`` and ``||diag(p) - p p^T||_2 <= 1/2``
(Gershgorin: row i is bounded by ``2 p_i (1 - p_i) <= 1/2``). For a stack
``f = f_L o ... o f_1`` applied to ``s * x`` (a pixel normalisation folded into ``s``), the chain
rule bounds ``||J(x)||_2`` by the product of the layers' Lipschitz constants in L2, so

    lambda_max(F(x)) <= 1/2 ||J(x)||_2^2 <= 1/2 (s * prod_l L_l)^2        for every x.

This is the layer-wise Lipschitz product of Szegedy et al. (2014), "Intriguing properties of
neural networks", section 4.3. It ignores how consecutive layers align and which ReLUs are
active, so on trained networks it is usually loose by orders of magnitude: :func:`bound_report`
measures by how much against the per-sample lambda_max.

How each ``L_l`` is obtained (the ``method`` of a :class:`LayerBound`):

- ``"exact"``: ``nn.Linear`` (largest singular value of the weight, by SVD) and eval-mode
  ``BatchNorm`` (a per-channel scale ``gamma / sqrt(running_var + eps)``: the largest |scale|).
- ``"power iteration"``: convolutions and average pools, as linear operators on their actual
  input shape (bias removed; the adjoint through ``torch.func.vjp``). Block power iteration
  approaches the norm from below, so these values are estimates; the last relative change of
  each is reported and is ~1e-7 or smaller once converged.
- ``"constant"``: activations by their largest slope (ReLU, ReLU6, Hardtanh, Tanh, Softplus 1;
  LeakyReLU ``max(1, |slope|)``; ELU ``max(1, |alpha|)``; Sigmoid 1/4; GELU ~1.1289 and SiLU
  ~1.0998 from a 1e-4 grid of their derivative); Identity, Flatten, Unflatten and Dropout 1
  (the eval-mode function); non-overlapping max-pools 1 (each input lies in at most one window).

The bound is for the eval-mode function (BatchNorm on its running statistics, dropout off), the
one hf-fisher measures. Nothing is run through the whole model and its mode is not changed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from hf_fisher.correlation import float_from_json, floats_from_json, json_float
from hf_fisher.errors import InputError

SUPPORTED_LAYERS = (
    "Linear, Conv1d/2d/3d, AvgPool1d/2d/3d, AdaptiveAvgPool1d/2d/3d, BatchNorm1d/2d/3d with "
    "running statistics, MaxPool1d/2d/3d with kernel_size == stride, ReLU, ReLU6, LeakyReLU, "
    "ELU, Tanh, Hardtanh, Sigmoid, Softplus, GELU, SiLU, Identity, Flatten, Unflatten, Dropout"
)

_LINEAR_OPERATORS = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_ONE_LIPSCHITZ = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.Tanh,
    nn.Softplus,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
)
_SMOOTH = (nn.GELU, nn.SiLU)
_SHAPE_KEEPING = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.Tanh,
    nn.Softplus,
    nn.Identity,
    nn.LeakyReLU,
    nn.ELU,
    nn.Sigmoid,
    *_SMOOTH,
    *_BATCH_NORMS,
)
_SLOPE_GRID = (-20.0, 20.0, 400_001)  # step 1e-4: the grid maximum is within ~1e-9 of the sup


class LayerBound(NamedTuple):
    """One layer's Lipschitz constant in L2.

    Attributes:
        name: dotted path of the layer in the model (``"features.3"``).
        type: the layer's class name.
        norm: its L2 Lipschitz constant (spectral norm for linear layers).
        method: ``"exact"``, ``"power iteration"`` or ``"constant"`` (see the module docstring).
        relative_change: power iteration only: ``|s_n - s_{n-1}| / s_n`` at the last step.
        kind: ``"bound"`` (holds for every input) or ``"estimate"`` (a local Jacobian norm
            measured at the data: attention blocks, which have no global Lipschitz constant).
    """

    name: str
    type: str
    norm: float
    method: str
    relative_change: float | None = None
    kind: str = "bound"


@dataclass(frozen=True)
class ArchitectureBound:
    """The data-free bound ``lambda_max <= 1/2 (s prod_l L_l)^2`` and its factors.

    Attributes:
        layer_norms: per-layer constants, in forward order.
        input_scale: s, the largest per-coordinate scale applied before the first layer.
        jacobian_bound: ``s * prod_l L_l >= ||J(x)||_2`` for every x.
        lambda_bound: ``1/2 jacobian_bound^2 >= lambda_max(F(x))`` for every x.
        num_iterations, num_vectors, seed: power-iteration settings.
        kind: ``"bound"``, or ``"estimate"`` when any factor is an estimate (then
            ``jacobian_bound`` and ``lambda_bound`` are estimates, not bounds).
    """

    layer_norms: list[LayerBound]
    input_scale: float
    jacobian_bound: float
    lambda_bound: float
    num_iterations: int
    num_vectors: int
    seed: int
    kind: str = "bound"


def operator_norm(
    apply: Callable[[Tensor], Tensor],
    input_shape: tuple[int, ...],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    num_iterations: int = 50,
    num_vectors: int = 4,
    seed: int = 0,
) -> tuple[float, float]:
    """Spectral norm of a linear map by block power iteration (subspace iteration on A^T A).

    Each step applies ``A`` to an orthonormal block V (``num_vectors`` inputs batched), pulls
    back with ``A^T`` through ``torch.func.vjp`` and re-orthonormalises by QR; the estimate is
    ``||A V||_2``, the exact maximum of ``||A v||`` over unit v in span(V). It is therefore a lower
    bound on ``||A||_2`` at every step, and converges at rate ``(sigma_{k+1} / sigma_1)^2`` per
    step for a block of k vectors.

    Args:
        apply: a linear map from (B, *input_shape) to (B, *output_shape), samples independent.
        input_shape: per-sample input shape.
        dtype, device: of the probe vectors (those of the map's parameters).
        num_iterations: power steps (>= 1).
        num_vectors: block size k (>= 1; capped at the input dimension).
        seed: seed of the random start block.

    Returns:
        ``(norm, relative_change)``, the latter ``|s_n - s_{n-1}| / s_n`` at the last step.

    Raises:
        InputError: ``num_iterations`` or ``num_vectors`` below 1.

    >>> matrix = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
    >>> norm, change = operator_norm(lambda v: v @ matrix.T, (3,), dtype=torch.float64)
    >>> round(norm, 12), change < 1e-12
    (3.0, True)
    """
    if num_iterations < 1:
        raise InputError(f"got num_iterations={num_iterations}; pass at least 1 power step")
    if num_vectors < 1:
        raise InputError(f"got num_vectors={num_vectors}; pass a block of at least 1 vector")
    generator = torch.Generator(device=device).manual_seed(seed)
    size = min(num_vectors, math.prod(input_shape))
    block = torch.randn((size, *input_shape), generator=generator, device=device, dtype=dtype)
    block = _orthonormal(block)
    estimate = previous = 0.0
    for _ in range(num_iterations):
        image, pullback = torch.func.vjp(apply, block)
        flat = image.detach().reshape(size, -1)
        previous, estimate = estimate, float(torch.linalg.matrix_norm(flat, 2))
        if estimate == 0.0:
            return 0.0, 0.0
        (normal,) = pullback(image)
        block = _orthonormal(normal.detach())
    return estimate, abs(estimate - previous) / estimate


def _orthonormal(block: Tensor) -> Tensor:  # (k, *shape) -> (k, *shape), orthonormal rows
    basis, _ = torch.linalg.qr(block.reshape(block.shape[0], -1).T)
    return basis.T.reshape(block.shape)


def _max_slope(activation: nn.Module) -> float:
    """Largest derivative of a smooth scalar activation, on a fine float64 grid."""
    low, high, steps = _SLOPE_GRID
    grid = torch.linspace(low, high, steps, dtype=torch.float64).requires_grad_(True)
    with torch.enable_grad():
        (slope,) = torch.autograd.grad(activation(grid).sum(), grid)
    return float(slope.max())


def _is_plain(layer: nn.Module, kinds: tuple[type, ...]) -> bool:
    """``layer`` is one of ``kinds`` and its class keeps that kind's forward."""
    return any(isinstance(layer, kind) and type(layer).forward is kind.forward for kind in kinds)


def _leaves(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Leaf layers of nested ``nn.Sequential`` containers, in forward order."""
    if _is_plain(module, (nn.Sequential,)):
        for name, child in module.named_children():
            yield from _leaves(child, f"{prefix}.{name}" if prefix else name)
    else:
        yield prefix, module


def _unsupported(name: str, layer: nn.Module, why: str = "") -> InputError:
    kind = type(layer).__name__
    what = (
        f"{kind} is not a plain feed-forward stack"
        if not name
        else (f"layer {name!r} ({kind}) is not supported")
    )
    return InputError(
        f"{what}{why}; the architecture bound applies to plain feed-forward stacks (an "
        f"nn.Sequential, possibly nested, run as the plain composition of its layers) of: "
        f"{SUPPORTED_LAYERS}. Models with residual connections, attention or normalisation "
        "over features (Hugging Face models among them) have no such bound here: drop --bound "
        "(bound=False) for this model"
    )


def _probe_kind(model: nn.Module) -> tuple[torch.dtype, torch.device | None]:
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    if tensor is None or not tensor.dtype.is_floating_point:
        return torch.get_default_dtype(), None
    return tensor.dtype, tensor.device


def _output_shape(name: str, layer: nn.Module, shape: tuple[int, ...], kind) -> tuple[int, ...]:
    dtype, device = kind
    try:
        with torch.no_grad():
            return tuple(layer(torch.zeros((1, *shape), dtype=dtype, device=device)).shape[1:])
    except RuntimeError as error:
        raise InputError(
            f"layer {name!r} ({type(layer).__name__}) cannot take per-sample inputs of shape "
            f"{shape} ({error}); pass the input_shape the model expects"
        ) from error


def _batch_norm_scale(name: str, layer: nn.Module) -> float:
    """Largest per-channel scale ``|weight| / sqrt(running_var + eps)`` of an eval batch norm."""
    if layer.running_var is None:
        raise _unsupported(
            name,
            layer,
            " without running statistics (it normalises by "
            "batch statistics, which is not a fixed map)",
        )
    scale = (layer.running_var.detach().double() + layer.eps).rsqrt()
    if layer.weight is not None:
        scale = scale * layer.weight.detach().double()
    return float(scale.abs().max())


def _check_max_pool(name: str, layer: nn.Module, shape: tuple[int, ...]) -> None:
    """Raise unless the pooling windows do not overlap (then the layer is 1-Lipschitz)."""
    kernel = _as_tuple(layer.kernel_size, len(shape) - 1)
    stride = _as_tuple(layer.stride or layer.kernel_size, len(shape) - 1)
    dilation = _as_tuple(layer.dilation, len(shape) - 1)
    if kernel != stride or any(d != 1 for d in dilation):
        raise _unsupported(
            name,
            layer,
            f" with kernel_size={layer.kernel_size}, stride={layer.stride}, "
            f"dilation={layer.dilation} (overlapping windows: only kernel_size == stride, "
            "dilation 1 is 1-Lipschitz)",
        )


def _activation_constant(layer: nn.Module) -> float | None:
    """The Lipschitz constant of a supported elementwise layer; None for any other layer."""
    if _is_plain(layer, (nn.LeakyReLU,)):
        return max(1.0, abs(layer.negative_slope))
    if _is_plain(layer, (nn.ELU,)):
        return max(1.0, abs(layer.alpha))
    if _is_plain(layer, (nn.Sigmoid,)):
        return 0.25
    if _is_plain(layer, _SMOOTH):
        return _max_slope(layer)
    if _is_plain(layer, _ONE_LIPSCHITZ):
        return 1.0
    return None


def _layer_bound(
    name: str,
    layer: nn.Module,
    shape: tuple[int, ...],
    kind: tuple[torch.dtype, torch.device | None],
    power: dict,
) -> LayerBound:
    """The L2 Lipschitz constant of one leaf layer on per-sample inputs of ``shape``."""
    kind_name = type(layer).__name__
    label = name or kind_name  # a single supported layer passed as the model has no name
    if _is_plain(layer, (nn.Linear,)):
        norm = torch.linalg.matrix_norm(layer.weight.detach().double(), 2)
        return LayerBound(label, kind_name, float(norm), "exact")
    if _is_plain(layer, _BATCH_NORMS):
        return LayerBound(label, kind_name, _batch_norm_scale(name, layer), "exact")
    if _is_plain(layer, _LINEAR_OPERATORS):
        dtype, device = kind
        with torch.no_grad():
            offset = layer(torch.zeros((1, *shape), dtype=dtype, device=device))
        norm, change = operator_norm(
            lambda block: layer(block) - offset, shape, dtype=dtype, device=device, **power
        )
        return LayerBound(label, kind_name, norm, "power iteration", change)
    if _is_plain(layer, _MAX_POOLS):
        _check_max_pool(name, layer, shape)
        return LayerBound(label, kind_name, 1.0, "constant")
    constant = _activation_constant(layer)
    if constant is None:
        raise _unsupported(name, layer)
    return LayerBound(label, kind_name, constant, "constant")


def _as_tuple(value: int | tuple[int, ...], length: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * length


def _checked_scale(input_scale: float | Tensor) -> float:
    if isinstance(input_scale, Tensor):
        scale = float(input_scale.detach().abs().max()) if input_scale.numel() else math.nan
    else:
        scale = abs(float(input_scale))
    if not (math.isfinite(scale) and scale > 0):
        raise InputError(
            f"got input_scale={input_scale!r}; pass a finite scale > 0 (1.0 when the model "
            "takes the inputs as they are)"
        )
    return scale


def lipschitz_bound(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    input_scale: float | Tensor = 1.0,
    num_iterations: int = 50,
    num_vectors: int = 4,
    seed: int = 0,
) -> ArchitectureBound:
    """Data-free bound ``lambda_max(F(x)) <= 1/2 (s prod_l ||f_l||)^2`` of a plain stack.

    Walks the leaf layers of ``model`` (an ``nn.Sequential``, possibly nested, or a single
    supported layer), tracking the per-sample shape with a zero input through the layers that
    change it, and multiplies their L2 Lipschitz constants (see the module docstring).

    Args:
        model: the stack; its mode and parameters are left untouched.
        input_shape: per-sample input shape, e.g. (64,) or (1, 8, 8).
        input_scale: a scale applied to the inputs before the model (e.g. ``pixel_scale / std``
            of an image normalisation); a tensor of per-channel scales counts by its largest
            absolute value.
        num_iterations, num_vectors, seed: power iteration for convolutions and pools.

    Returns:
        The :class:`ArchitectureBound`.

    Raises:
        InputError: a layer that is not supported (naming it), a model that is not a plain
            stack, a bad ``input_shape`` or ``input_scale``.

    >>> weight = torch.tensor([[3.0, 0.0], [0.0, -1.0]])
    >>> stack = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    >>> with torch.no_grad():
    ...     _ = stack[0].weight.copy_(weight)
    >>> bound = lipschitz_bound(stack, (2,))
    >>> bound.jacobian_bound, bound.lambda_bound
    (3.0, 4.5)
    """
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list, torch.Size)) else None
    if not shape or not all(
        isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape
    ):
        raise InputError(
            f"got input_shape={input_shape!r}; pass the per-sample shape as a tuple of "
            "positive ints, e.g. (64,) or (1, 8, 8)"
        )
    scale = _checked_scale(input_scale)
    power = {"num_iterations": num_iterations, "num_vectors": num_vectors, "seed": seed}
    kind = _probe_kind(model)
    layers = []
    for name, layer in _leaves(model):
        layers.append(_layer_bound(name, layer, shape, kind, power))
        if not _is_plain(layer, _SHAPE_KEEPING):
            shape = _output_shape(name, layer, shape, kind)
    jacobian = scale * math.prod(entry.norm for entry in layers)
    return ArchitectureBound(
        layers, scale, jacobian, 0.5 * jacobian**2, num_iterations, num_vectors, seed
    )


@dataclass(frozen=True)
class BoundReport:
    """The architecture bound next to the measured lambda_max (section ``"bound"``).

    Attributes:
        bound: the :class:`ArchitectureBound`.
        spectral_norm: (N,) float64 measured lambda_max of the companion samples.
    """

    bound: ArchitectureBound
    spectral_norm: Tensor

    def _finite(self) -> Tensor:
        values = self.spectral_norm.detach().double().flatten()
        return values[torch.isfinite(values)]

    def measured_max(self) -> float | None:
        """Largest finite measured lambda_max (None if there is none)."""
        values = self._finite()
        return float(values.max()) if len(values) else None

    def measured_median(self) -> float | None:
        """Median finite measured lambda_max (lower median; None if there is none)."""
        values = self._finite()
        return float(values.median()) if len(values) else None

    def to_json(self) -> dict:
        """Plain-Python dict: per-layer constants, the bound, measured max/median and ratios."""
        bound = self.bound
        largest, median = self.measured_max(), self.measured_median()

        def ratio(value: float | None) -> float | None:
            return None if not value else json_float(bound.lambda_bound / value)

        return {
            "layers": [
                {
                    "name": entry.name,
                    "type": entry.type,
                    "norm": json_float(entry.norm),
                    "method": entry.method,
                    "relative_change": None
                    if entry.relative_change is None
                    else json_float(entry.relative_change),
                    "kind": entry.kind,
                }
                for entry in bound.layer_norms
            ],
            "kind": bound.kind,
            "input_scale": json_float(bound.input_scale),
            "jacobian_bound": json_float(bound.jacobian_bound),
            "lambda_bound": json_float(bound.lambda_bound),
            "num_iterations": int(bound.num_iterations),
            "num_vectors": int(bound.num_vectors),
            "seed": int(bound.seed),
            "num_samples": int(self.spectral_norm.numel()),
            "measured_max": largest,
            "measured_median": median,
            "ratio_to_max": ratio(largest),
            "ratio_to_median": ratio(median),
            "num_above_bound": int((self._finite() > bound.lambda_bound).sum()),
            "spectral_norm": [json_float(v) for v in self.spectral_norm.double().flatten()],
        }

    @classmethod
    def from_json(cls, data: dict) -> BoundReport:
        """Read back :meth:`to_json`; measured summaries and ratios are recomputed, not read.

        A null layer constant or bound is +inf (unbounded); a null measured value or input
        scale NaN; a null ``relative_change`` stays None (not a power-iteration layer).
        """
        layers = [
            LayerBound(
                entry["name"],
                entry["type"],
                float_from_json(entry["norm"], math.inf),
                entry["method"],
                None
                if entry["relative_change"] is None
                else float_from_json(entry["relative_change"]),
                entry.get("kind", "bound"),
            )
            for entry in data["layers"]
        ]
        bound = ArchitectureBound(
            layers,
            float_from_json(data["input_scale"]),
            float_from_json(data["jacobian_bound"], math.inf),
            float_from_json(data["lambda_bound"], math.inf),
            data["num_iterations"],
            data["num_vectors"],
            data["seed"],
            data.get("kind", "bound"),
        )
        return cls(bound, floats_from_json(data["spectral_norm"]))


def bound_report(
    model: nn.Module,
    input_shape: tuple[int, ...],
    spectral_norm: Tensor,  # (N,)
    *,
    input_scale: float | Tensor = 1.0,
    num_iterations: int = 50,
    num_vectors: int = 4,
    seed: int = 0,
) -> BoundReport:
    """Compute the architecture bound and set it against measured per-sample lambda_max.

    Why: the bound holds for every input but ignores how layers align; the ratios
    bound / max and bound / median say how much a worst case built from layer norms alone
    overstates the model's actual local sensitivity.

    Args:
        model, input_shape, input_scale, num_iterations, num_vectors, seed: as in
            :func:`lipschitz_bound`.
        spectral_norm: measured lambda_max per sample, in the same input space.

    Raises:
        InputError: as :func:`lipschitz_bound`, or ``spectral_norm`` not 1-D.
    """
    if not isinstance(spectral_norm, Tensor) or spectral_norm.ndim != 1:
        shape = tuple(spectral_norm.shape) if isinstance(spectral_norm, Tensor) else None
        raise InputError(
            f"got spectral_norm of shape {shape}; pass the (N,) measured lambda_max per sample"
        )
    bound = lipschitz_bound(
        model,
        input_shape,
        input_scale=input_scale,
        num_iterations=num_iterations,
        num_vectors=num_vectors,
        seed=seed,
    )
    return BoundReport(bound, spectral_norm.detach().double().cpu())


# Residual networks and transformers ---------------------------------------------------------

_FIRST_TOKEN = "<first token>"
_SPATIAL_MEAN = "<mean over positions>"

_CHAINS: dict[str, tuple[str, ...]] = {
    "ResNetForImageClassification": ("resnet", "classifier"),
    "ResNetModel": ("embedder", "encoder", "pooler"),
    "ResNetEmbeddings": ("embedder", "pooler"),
    "ResNetConvLayer": ("convolution", "normalization", "activation"),
    "ResNetShortCut": ("convolution", "normalization"),
    "ResNetEncoder": ("stages",),
    "ResNetStage": ("layers",),
    "ConvNextForImageClassification": ("convnext", "classifier"),
    "ConvNextModel": ("embeddings", "encoder", _SPATIAL_MEAN, "layernorm"),
    "ConvNextEmbeddings": ("patch_embeddings", "layernorm"),
    "ConvNextEncoder": ("stages",),
    "ConvNextStage": ("downsampling_layer", "layers"),
    "ViTForImageClassification": ("vit", _FIRST_TOKEN, "classifier"),
    "ViTModel": ("embeddings", "layers", "layernorm"),
}
"""Modules run as the plain composition of the named children (or pseudo-layers), in order."""

_LOCAL_BLOCKS = ("ViTLayer",)
"""Blocks with dot-product attention: not globally Lipschitz, estimated at the data."""

COMPOSED_MODELS = "Hugging Face ResNet, ConvNeXt and ViT image classifiers"


class _Walker:
    """Composes per-block constants of a model from shapes and inputs recorded at the data."""

    def __init__(self, shapes: dict, inputs: dict, kind, power: dict) -> None:
        self.shapes, self.inputs, self.kind, self.power = shapes, inputs, kind, power
        self.entries: list[LayerBound] = []

    def norm(self, name: str, module: nn.Module) -> float:
        """The L2 Lipschitz constant (or local estimate) of ``module``, recording its entries."""
        kind_name = type(module).__name__
        if kind_name in _LOCAL_BLOCKS:
            return self._local(name, module)
        if kind_name in ("ResNetBasicLayer", "ResNetBottleNeckLayer"):
            return self._residual(name, module, "shortcut", "layer")
        if kind_name == "ConvNextLayer":
            return self._convnext_layer(name, module)
        if kind_name == "ViTEmbeddings":
            projection = module.patch_embeddings.projection  # the rest adds constants
            return self.norm(f"{name}.patch_embeddings.projection", projection)
        if kind_name in _CHAINS or _is_plain(module, (nn.Sequential, nn.ModuleList)):
            children = _CHAINS.get(kind_name) or tuple(n for n, _ in module.named_children())
            return math.prod(self._child(name, module, child) for child in children)
        return self._leaf(name, module)

    def _child(self, name: str, module: nn.Module, child: str) -> float:
        if child in (_FIRST_TOKEN, _SPATIAL_MEAN):  # a selection / an average: 1-Lipschitz
            self.entries.append(LayerBound(f"{name}.{child}", "selection", 1.0, "constant"))
            return 1.0
        return self.norm(f"{name}.{child}" if name else child, getattr(module, child))

    def _residual(self, name: str, module: nn.Module, *paths: str) -> float:
        """``act(s(x) + f(x))``: ``Lip(act) * (Lip(s) + Lip(f))``, with ``Lip(I) = 1``."""
        total = sum(self.norm(f"{name}.{path}", getattr(module, path)) for path in paths)
        norm = self.norm(f"{name}.activation", module.activation) * total
        self.entries.append(LayerBound(name, type(module).__name__, norm, "residual"))
        return norm

    def _convnext_layer(self, name: str, module: nn.Module) -> float:
        """``x + gamma * pw2(act(pw1(ln(dw(x)))))``: ``1 + max|gamma| * prod``."""
        parts = ("dwconv", "layernorm", "pwconv1", "act", "pwconv2")
        branch = math.prod(self.norm(f"{name}.{p}", getattr(module, p)) for p in parts)
        gamma = getattr(module, "layer_scale_parameter", None)
        if gamma is not None:
            branch *= float(gamma.detach().abs().max())
        norm = 1.0 + branch
        self.entries.append(LayerBound(name, type(module).__name__, norm, "residual"))
        return norm

    def _leaf(self, name: str, module: nn.Module) -> float:
        kind_name = type(module).__name__
        if kind_name.endswith("LayerNorm") and hasattr(module, "eps"):
            weight = getattr(module, "weight", None)
            gamma = 1.0 if weight is None else float(weight.detach().abs().max())
            norm = gamma / math.sqrt(module.eps)
            self.entries.append(LayerBound(name, kind_name, norm, "layer norm"))
            return norm
        if module not in self.shapes:  # e.g. a pooler that the classifier does not use
            raise _unsupported(name, module, " (it did not run on the probe input)")
        if _is_plain(module, _MAX_POOLS):
            return self._max_pool(name, module)
        if kind_name.endswith("Activation"):  # Hugging Face elementwise activations
            norm = _max_slope(module)
            self.entries.append(LayerBound(name, kind_name, norm, "constant"))
            return norm
        entry = _layer_bound(name, module, self.shapes[module], self.kind, self.power)
        self.entries.append(entry)
        return entry.norm

    def _max_pool(self, name: str, module: nn.Module) -> float:
        """Each input lies in at most ``prod ceil(k / s)`` windows: ``sqrt`` of that."""
        dims = len(self.shapes[module]) - 1
        kernel, stride = (
            _as_tuple(module.kernel_size, dims),
            _as_tuple(module.stride or module.kernel_size, dims),
        )
        dilation = _as_tuple(module.dilation, dims)
        windows = math.prod(
            min(k, math.ceil((d * (k - 1) + 1) / s))
            for k, s, d in zip(kernel, stride, dilation, strict=True)
        )
        norm = math.sqrt(windows)
        self.entries.append(LayerBound(name, type(module).__name__, norm, "constant"))
        return norm

    def _local(self, name: str, module: nn.Module) -> float:
        """Largest local Jacobian norm of the block at the recorded inputs (power iteration)."""
        norm, change = local_jacobian_norm(
            module,
            self.inputs[module],
            num_iterations=self.power["num_iterations"],
            seed=self.power["seed"],
        )
        self.entries.append(
            LayerBound(
                name, type(module).__name__, norm, "local power iteration", change, "estimate"
            )
        )
        return norm


def local_jacobian_norm(
    block: nn.Module,
    inputs: Tensor,  # (N, *shape) the block's inputs at the data
    *,
    num_iterations: int = 50,
    seed: int = 0,
) -> tuple[float, float]:
    """Largest over samples of ``||d block / d x||_2`` at ``inputs``, by power iteration.

    Per sample, ``v <- J^T J v`` with ``J v`` from ``torch.func.jvp`` and ``J^T u`` from a vjp
    (forward-mode AD: attention must be eager). ``||J v||`` with unit v approaches the local norm
    from below (one vector per sample).

    Returns:
        ``(norm, relative_change)`` of the sample with the largest norm.
    """

    def apply(x: Tensor) -> Tensor:
        out = block(x)
        return out[0] if isinstance(out, tuple) else out

    generator = torch.Generator(device=inputs.device).manual_seed(seed)
    inputs = inputs.detach()
    vector = torch.randn(inputs.shape, generator=generator, device=inputs.device).to(inputs)
    estimate = previous = torch.zeros(inputs.shape[0], dtype=torch.float64)
    with torch.no_grad():
        _, pullback = torch.func.vjp(apply, inputs)
        for _ in range(num_iterations):
            vector = vector / _per_sample_norm(vector).clamp_min(1e-30).view(
                -1, *[1] * (inputs.ndim - 1)
            )
            _, image = torch.func.jvp(apply, (inputs,), (vector,))
            previous, estimate = estimate, _per_sample_norm(image).double().cpu()
            (vector,) = pullback(image)
    best = int(estimate.argmax())
    norm = float(estimate[best])
    return norm, abs(norm - float(previous[best])) / max(norm, 1e-300)


def _per_sample_norm(values: Tensor) -> Tensor:
    return values.flatten(1).norm(dim=1)


def composed_bound(
    model: nn.Module,
    run: Callable[[Tensor], object],
    inputs: Tensor,  # (N, *shape) model inputs at the data
    *,
    input_scale: float | Tensor = 1.0,
    num_iterations: int = 50,
    num_vectors: int = 4,
    seed: int = 0,
) -> ArchitectureBound:
    """Compose per-block Lipschitz constants of a residual network or transformer.

    ``run(inputs)`` is run once with hooks that record each module's input shape (and the
    inputs of attention blocks). Structure is read from module class names (no
    ``transformers`` import): chains multiply; a residual block ``act(s(x) + f(x))`` gives
    ``Lip(act) (Lip(s) + Lip(f))`` (``||I + f|| <= 1 + ||f||``); a LayerNorm
    ``max|gamma| / sqrt(eps)`` (its Jacobian is ``diag(gamma) / sigma(x)`` times a projection,
    and ``sigma >= sqrt(eps)``); an overlapping max-pool ``sqrt(windows per input)``; leaf layers
    as in :func:`lipschitz_bound`. Dot-product attention is not globally Lipschitz: each
    attention block (ViTLayer) enters with its largest local Jacobian norm at ``inputs``
    (:func:`local_jacobian_norm`), labelled ``kind="estimate"``, and so does the product.

    Raises:
        InputError: a module with no rule (naming it and the supported models).
    """
    scale = _checked_scale(input_scale)
    power = {"num_iterations": num_iterations, "num_vectors": num_vectors, "seed": seed}
    shapes, recorded = {}, {}

    def record(module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], Tensor):
            shapes[module] = tuple(args[0].shape[1:])
            if type(module).__name__ in _LOCAL_BLOCKS:
                recorded[module] = args[0].detach()

    handles = [m.register_forward_pre_hook(record) for m in model.modules()]
    try:
        with torch.no_grad():
            run(inputs)
    finally:
        for handle in handles:
            handle.remove()
    walker = _Walker(shapes, recorded, _probe_kind(model), power)
    try:
        product = walker.norm("", model)
    except InputError as error:
        raise InputError(f"{error} (composition rules cover {COMPOSED_MODELS})") from None
    kind = "estimate" if any(e.kind == "estimate" for e in walker.entries) else "bound"
    jacobian = scale * product
    return ArchitectureBound(
        walker.entries, scale, jacobian, 0.5 * jacobian**2, num_iterations, num_vectors, seed, kind
    )
