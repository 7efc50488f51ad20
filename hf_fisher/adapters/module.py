"""Plain ``nn.Module`` classifiers: a tensor in, logits (or an output with ``.logits``) out."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hf_fisher.adapters.base import (
    PROBE_SEED,
    PROBE_SIZE,
    Classifier,
    InputSpace,
    PreparedBatch,
    _as_tensor,
    _check_batch_shape,
    _check_finite,
    _default_device,
    _determinism_check,
    _logits_of,
    _shape_str,
)
from hf_fisher.errors import InputError


class ModuleClassifier(Classifier):
    """A plain ``nn.Module`` that maps a tensor to logits (or an output with ``.logits``)."""

    modality = "tensor"

    def __call__(self, inputs: Tensor, **context: Tensor) -> Tensor:  # (N, *shape) -> (N, K)
        """Return logits; ``context`` tensors are passed as keyword arguments."""
        _check_batch_shape(inputs, self.input_shape)
        return _logits_of(self.model(inputs, **context), type(self.model).__name__)

    def prepare(self, raw: Any) -> PreparedBatch:
        """Validate a (N, *input_shape) tensor or array; the first batch fixes the shape.

        If the classifier was loaded without ``input_shape``, the first batch sets it and the
        module is checked once (deterministic (N, K) logits).
        """
        source = raw.inputs if isinstance(raw, PreparedBatch) else raw
        inputs = _as_tensor(source, self.dtype, self.device)
        if self.input_shape is None:
            _check_batch_shape(inputs, None)
            self.input_shape = tuple(inputs.shape[1:])
            try:
                self._probe()
            except RuntimeError as error:  # a shape mismatch deep inside the user's module
                self.input_shape = None
                raise InputError(
                    f"{type(self.model).__name__} failed on inputs of shape "
                    f"{_shape_str(inputs.shape)} ({error}); pass inputs of the shape it "
                    "expects, or load_classifier(module, input_shape=...) to check them early"
                ) from error
        _check_batch_shape(inputs, self.input_shape)
        _check_finite(inputs)
        if isinstance(raw, PreparedBatch):
            return raw.to(self.device, self.dtype)
        return PreparedBatch(inputs)

    def _probe(self) -> None:
        generator = torch.Generator().manual_seed(PROBE_SEED)
        probe = torch.randn((PROBE_SIZE, *self.input_shape), generator=generator)
        probe = probe.to(device=self.device, dtype=self.dtype)
        self._num_classes = _determinism_check(
            lambda: self.model(probe), PROBE_SIZE, type(self.model).__name__, self.model
        )
        if not self.id2label:
            self.id2label = {index: str(index) for index in range(self._num_classes)}


def wrap_module(
    module: nn.Module,
    space: InputSpace,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
    input_shape: tuple[int, ...] | None,
) -> ModuleClassifier:
    """Wrap a user's module, moved to ``device``/``dtype`` and switched to eval mode in place."""
    name = type(module).__name__
    parameter = next(iter(module.parameters()), None)
    if device is None:
        device = parameter.device if parameter is not None else _default_device()
    if dtype is None:
        floating = parameter is not None and parameter.dtype.is_floating_point
        dtype = parameter.dtype if floating else torch.float32
    device = torch.device(device)
    module.to(device=device, dtype=dtype)
    module.eval()  # documented: a user's module is switched to eval mode in place
    config = getattr(module, "config", None)
    id2label = {int(key): value for key, value in getattr(config, "id2label", {}).items()}
    classifier = ModuleClassifier(
        module,
        input_space=space,
        input_shape=None if input_shape is None else tuple(input_shape),
        id2label=id2label,
        source={
            "id": name,
            "revision": None,
            "commit_hash": None,
            "architecture": name,
            "task": None,
        },
        device=device,
        dtype=dtype,
    )
    if classifier.input_shape is not None:
        classifier._probe()
    return classifier
