"""Adapters: a Hub id, local directory or nn.Module becomes a differentiable map to logits.

Every Hugging Face detail lives here: processors and their normalisation, tokenizers, attention
masks, input embeddings, eager attention, eval mode. Operators and estimators only see a
:class:`PreparedBatch` and the plain ``logit_fn`` that :meth:`Classifier.logit_fn` returns.

Input spaces (the space in which the Fisher information is measured):

- ``"pixels"`` (images, default): (C, H, W) values in [0, 1] at the model's resolution; the image
  processor's normalisation is folded into the forward pass.
- ``"normalized"`` (images): the tensors the model itself takes, already normalised.
- ``"embeddings"`` (text): token embeddings (L, H); attention mask and token types held fixed.
- ``"raw"`` (plain ``nn.Module``): whatever tensor the module takes.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hf_fisher.errors import InputError, ModelLoadError, NotAClassifierError
from hf_fisher.operators import LIKELIHOODS

logger = logging.getLogger(__name__)

IMAGE_SPACES = ("pixels", "normalized")
TEXT_SPACES = ("embeddings",)
TENSOR_SPACES = ("raw",)
_PROBE_SEED = 0
_PROBE_SIZE = 2
_PROBE_TEXT_LENGTH = 6
_DETERMINISM_RTOL = 1e-4
_DETERMINISM_ATOL = 1e-5
_PIL_LUMA = (0.299, 0.587, 0.114)


@dataclass
class PreparedBatch:
    """A batch in the classifier's continuous input space.

    Attributes:
        inputs: (N, *input_shape) continuous inputs (pixels in [0,1], normalised pixels, or
            token embeddings (N, L, H)).
        space_mask: None, or a 0/1 tensor broadcastable to ``inputs`` marking the coordinates
            that belong to the space (text: non-padded tokens).
        context: per-sample tensors aligned on dim 0 that the model needs but that are held
            fixed (``attention_mask``, ``token_type_ids``).
    """

    inputs: Tensor
    space_mask: Tensor | None = None
    context: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def select(self, index: Tensor | slice | list[int]) -> PreparedBatch:
        """Return the sub-batch at ``index`` (along dim 0 of every tensor)."""
        return PreparedBatch(
            self.inputs[index],
            None if self.space_mask is None else self.space_mask[index],
            {name: value[index] for name, value in self.context.items()},
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> PreparedBatch:
        """Move to ``device``; cast the continuous inputs (only) to ``dtype``."""
        return PreparedBatch(
            self.inputs.to(device=device, dtype=dtype or self.inputs.dtype),
            None if self.space_mask is None else self.space_mask.to(device),
            {name: value.to(device) for name, value in self.context.items()},
        )


# --------------------------------------------------------------------------------------------
# Validation shared by every modality.


def _shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(size) for size in shape) + ")"


def _expected_str(per_sample: Sequence[int | str]) -> str:
    return "(" + ", ".join(["N", *(str(size) for size in per_sample)]) + ")"


def _check_batch_shape(inputs: Tensor, per_sample: tuple[int, ...] | None) -> None:
    """Raise InputError unless ``inputs`` is a non-empty (N, *per_sample) batch."""
    if per_sample is not None and tuple(inputs.shape[1:]) != tuple(per_sample):
        raise InputError(
            f"got input of shape {_shape_str(inputs.shape)}; the model expects "
            f"{_expected_str(per_sample)}"
        )
    if inputs.ndim == 0 or inputs.shape[0] == 0:
        raise InputError(
            f"got an empty batch (input of shape {_shape_str(inputs.shape)}); pass at least one "
            "sample"
        )


def _check_finite(inputs: Tensor) -> None:
    """Raise InputError naming the samples that hold NaN or infinite values."""
    finite = torch.isfinite(inputs).reshape(inputs.shape[0], -1).all(dim=1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        shown = ", ".join(str(index) for index in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise InputError(
            f"samples [{shown}] contain NaN or infinite values; remove or repair them before "
            "measuring"
        )


def _as_tensor(raw: Any, dtype: torch.dtype, device: torch.device) -> Tensor:
    if isinstance(raw, Tensor):
        tensor = raw
    elif isinstance(raw, np.ndarray):
        tensor = torch.from_numpy(raw)
    else:
        raise InputError(
            f"got inputs of type {type(raw).__name__}; pass a tensor or numpy array of shape "
            "(N, *input_shape)"
        )
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise InputError(f"got inputs of dtype {tensor.dtype}; pass real floating-point values")
    return tensor.detach().to(device=device, dtype=dtype)


def _determinism_check(forward: Callable[[], Tensor], num_samples: int, what: str) -> int:
    """Run ``forward`` twice; check it returns identical (N, K) logits. Returns K."""
    with torch.no_grad():
        first = _logits_of(forward(), what)
        second = _logits_of(forward(), what)
    if first.ndim != 2 or first.shape[0] != num_samples or first.shape[1] < 2:
        raise NotAClassifierError(
            f"{what} returned an output of shape {_shape_str(first.shape)} for {num_samples} "
            "samples; hf-fisher needs a classifier that returns logits of shape (N, K) with "
            "K >= 2 classes (a tensor, or an output with a .logits field)"
        )
    same = torch.allclose(
        first, second, rtol=_DETERMINISM_RTOL, atol=_DETERMINISM_ATOL, equal_nan=True
    )
    if not same:  # NaN on the random probe is a domain matter, caught later on real inputs
        difference = (first - second).abs().max().item()
        raise ModelLoadError(
            f"{what} gave different logits on two identical forward passes (max difference "
            f"{difference:.3g}) even in eval mode: dropout or other randomness is active. "
            "Make the forward pass deterministic (e.g. nn.Dropout layers, not "
            "F.dropout(training=True)) before measuring"
        )
    return first.shape[1]


def _logits_of(output: Any, what: str) -> Tensor:
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if not isinstance(logits, Tensor):
        raise NotAClassifierError(
            f"{what} returned a {type(output).__name__} with no logits; hf-fisher needs a "
            "classifier that returns a (N, K) logits tensor or an output with a .logits field"
        )
    return logits


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Run a block with ``module`` in eval mode, then restore every submodule's own flag.

    A model in train mode gives wrong Fisher values without any error (BatchNorm normalises by
    the batch, so samples are coupled; dropout randomises the logits), so the engine always
    measures in eval mode; the caller's model comes back exactly as it was, including submodules
    the caller had set differently from their parent.

    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout())
    >>> with eval_mode(net):
    ...     net.training, net[1].training
    (False, False)
    >>> net.training, net[1].training
    (True, True)
    """
    flags = [(submodule, submodule.training) for submodule in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for submodule, training in flags:
            submodule.training = training


# --------------------------------------------------------------------------------------------
# Classifiers.


class Classifier:
    """A classifier seen as a differentiable map from a continuous input space to logits.

    Attributes:
        model: the wrapped ``nn.Module``, in eval mode.
        num_classes: K.
        modality: "image", "text" or "tensor".
        input_space: "pixels", "normalized", "embeddings" or "raw".
        input_shape: per-sample shape, (C, H, W) for images; None for text (length varies).
        id2label: class index -> name.
        source: provenance: ``id``, ``revision``, ``commit_hash``, ``architecture``, ``task``.
        device, dtype: where and in which precision inputs and the model live.
        likelihood: how the logits score labels, which fixes the Fisher: "categorical" (a
            softmax over K exclusive classes) or "bernoulli" (multi-label: an independent
            sigmoid per class, as Hugging Face's ``problem_type="multi_label_classification"``).
    """

    modality: str = ""

    def __init__(
        self,
        model: nn.Module,
        *,
        input_space: str,
        input_shape: tuple[int, ...] | None,
        id2label: dict[int, str],
        source: dict,
        device: torch.device,
        dtype: torch.dtype,
        likelihood: str = "categorical",
    ) -> None:
        self.model = model
        self.likelihood = likelihood
        self.input_space = input_space
        self.input_shape = input_shape
        self.id2label = id2label
        self.source = source
        self.device = device
        self.dtype = dtype
        self._num_classes: int | None = None

    @property
    def num_classes(self) -> int:
        """K, the number of classes (known once the model has been probed)."""
        if self._num_classes is None:
            raise InputError(
                "the number of classes is unknown until the model has seen a batch; call "
                "prepare() first or pass input_shape= to load_classifier"
            )
        return self._num_classes

    def prepare(self, raw: Any) -> PreparedBatch:  # pragma: no cover - abstract
        """Turn raw inputs into a validated batch in the input space, on ``device``."""
        raise NotImplementedError

    def __call__(self, inputs: Tensor, **context: Tensor) -> Tensor:  # pragma: no cover
        """Return (N, K) logits for (N, *input_shape) inputs in the input space."""
        raise NotImplementedError

    def logit_fn(self, batch: PreparedBatch) -> Callable[[Tensor], Tensor]:
        """Return ``x -> logits`` with the batch's fixed context (attention mask etc.) bound.

        The returned function maps (N, *shape) inputs to (N, K) logits, where N is the batch's
        size; this is what operators and estimators differentiate. It also takes N * m rows laid
        out sample-major (rows ``i*m .. i*m+m-1`` perturb sample i, as
        ``x.repeat_interleave(m, 0)`` gives), so black-box estimators can query many
        perturbations of a text batch at once.
        """
        context = dict(batch.context)
        size = len(batch)

        def logits(inputs: Tensor) -> Tensor:  # (N * m, *shape) -> (N * m, K)
            repeats = inputs.shape[0] // size if size else 1
            if repeats > 1 and context and repeats * size == inputs.shape[0]:
                expanded = {k: v.repeat_interleave(repeats, dim=0) for k, v in context.items()}
                return self(inputs, **expanded)
            return self(inputs, **context)

        return logits

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Classifier:
        """Move this classifier and its model to ``device`` / ``dtype`` in place; return it.

        The model is shared, so moving a copy would leave this wrapper describing a model that
        no longer matches it: the move is done in place, like ``nn.Module.to``.
        """
        self.device = torch.device(device) if device is not None else self.device
        self.dtype = dtype or self.dtype
        self.model.to(device=self.device, dtype=self.dtype)
        self._move_buffers()
        return self

    def _move_buffers(self) -> None:
        """Move any tensors the subclass holds to ``self.device``/``self.dtype``."""

    def __repr__(self) -> str:
        classes = self._num_classes if self._num_classes is not None else "?"
        return (
            f"{type(self).__name__}({self.source.get('id')!r}, input_space={self.input_space!r}, "
            f"input_shape={self.input_shape}, num_classes={classes}, device={self.device}, "
            f"dtype={self.dtype})"
        )


class ImageClassifier(Classifier):
    """An image classifier; in pixel space the processor's normalisation is part of the map.

    In ``"pixels"`` space the forward pass computes ``model((x * scale - mean) / std)``, the exact
    affine map the image processor applies to [0, 1] pixels, so the Fisher information is
    measured with respect to the pixels a user sees.
    """

    modality = "image"

    def __init__(
        self,
        model: nn.Module,
        *,
        processor: Any | None,
        pixel_scale: float,
        mean: Sequence[float],
        std: Sequence[float],
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.processor = processor
        self.pixel_scale = pixel_scale
        self._mean_values = list(mean)
        self._std_values = list(std)
        self._move_buffers()

    def _move_buffers(self) -> None:
        shape = (1, -1, 1, 1)
        self._mean = torch.tensor(self._mean_values, dtype=self.dtype, device=self.device)
        self._std = torch.tensor(self._std_values, dtype=self.dtype, device=self.device)
        self._mean, self._std = self._mean.reshape(shape), self._std.reshape(shape)

    def normalize(self, pixels: Tensor) -> Tensor:  # (N, C, H, W) -> (N, C, H, W)
        """Map [0, 1] pixels to the normalised values the model takes."""
        return (pixels * self.pixel_scale - self._mean) / self._std

    def __call__(self, inputs: Tensor, **context: Tensor) -> Tensor:  # (N, C, H, W) -> (N, K)
        """Return logits; in pixel space, normalisation is applied first."""
        _check_batch_shape(inputs, self.input_shape)
        values = self.normalize(inputs) if self.input_space == "pixels" else inputs
        return _logits_of(self.model(pixel_values=values), type(self.model).__name__)

    def prepare(self, raw: Any) -> PreparedBatch:
        """Validate a (N, C, H, W) tensor, or convert a list of PIL images / numpy arrays.

        Images go through the model's image processor (resize, crop, rescale); channels are
        converted to the model's ``num_channels`` first (greyscale <-> RGB, alpha dropped).
        uint8 arrays are 0..255, float arrays 0..1, PIL images scaled by their bit depth (16-bit
        PNGs by 65535; see ``docs/data.md``); float arrays (and 16-bit images) already at the
        model's resolution are used as they are, without resampling, so they keep full
        precision. In pixel space the result is in [0, 1]; in normalised space the processor's
        normalisation is applied.
        """
        from PIL import Image

        if isinstance(raw, Image.Image):
            raw = [raw]
        if isinstance(raw, PreparedBatch):
            inputs = _as_tensor(raw.inputs, self.dtype, self.device)
        elif isinstance(raw, (Tensor, np.ndarray)):
            inputs = _as_tensor(raw, self.dtype, self.device)
        elif isinstance(raw, Iterable) and not isinstance(raw, (str, bytes, Mapping)):
            raw = list(raw)  # lists, tuples, a datasets column
            if len(raw) == 0:
                raise InputError("got an empty list of images; pass at least one image")
            pixels = torch.cat([self._process_image(item, index) for index, item in enumerate(raw)])
            pixels = pixels.to(device=self.device, dtype=self.dtype)
            inputs = self.normalize(pixels) if self.input_space == "normalized" else pixels
        else:
            inputs = _as_tensor(raw, self.dtype, self.device)
        self._validate(inputs)
        return PreparedBatch(inputs)

    def _validate(self, inputs: Tensor) -> None:
        _check_batch_shape(inputs, self.input_shape)
        _check_finite(inputs)
        if self.input_space == "pixels":
            low, high = inputs.min().item(), inputs.max().item()
            if low < 0.0 or high > 1.0:
                raise InputError(
                    f"pixel-space inputs must lie in [0, 1], got values in [{low:.4g}, "
                    f"{high:.4g}]; rescale them (e.g. divide uint8 images by 255), or pass "
                    "input_space='normalized' to load_classifier if they are already normalised"
                )

    def _process_image(self, image: Any, index: int) -> Tensor:  # -> (1, C, H, W) in [0, 1]
        if self.processor is None:
            raise InputError(
                "this classifier has no image processor, so it cannot convert images; pass a "
                f"(N, {', '.join(map(str, self.input_shape))}) tensor instead"
            )
        array = _image_array(image, self.input_shape[0], index)
        is_float = array.dtype.kind == "f"
        if is_float and (array.min() < 0.0 or array.max() > 1.0):
            raise InputError(
                f"image {index} is a float array with values in [{array.min():.4g}, "
                f"{array.max():.4g}]; float images must lie in [0, 1] (or pass uint8 0..255)"
            )
        keep_size = is_float and array.shape[:2] == tuple(self.input_shape[1:])
        if keep_size:
            return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None].float()
        pixels = self.processor(
            images=[array],
            do_rescale=not is_float,
            rescale_factor=1.0 / 255.0,
            do_normalize=False,
            input_data_format="channels_last",
            return_tensors="pt",
        )["pixel_values"]
        if tuple(pixels.shape[1:]) != tuple(self.input_shape):
            raise InputError(
                f"the image processor turned image {index} into shape "
                f"{_shape_str(pixels.shape[1:])}; the model expects {_shape_str(self.input_shape)}"
            )
        return pixels.float()


def _pil_array(image: Any, num_channels: int, index: int) -> np.ndarray:
    """A PIL image as an (H, W) or (H, W, C) array: uint8 0..255, or float in [0, 1].

    Mode handling (PIL's modes):

    - 8-bit modes go through PIL's own conversion to ``L`` (greyscale models) or ``RGB``:
      ``1`` (0/255), ``L``, ``P`` (palette lookup), ``LA``/``RGBA``/``PA`` (alpha dropped, not
      composited), ``CMYK`` (R = 255 (1 - C/255)(1 - K/255), ...), ``YCbCr``; RGB -> L uses
      ITU-R 601 luma. PIL itself reads 16-bit RGB(A) and LA PNGs as 8-bit (rounded high byte).
    - ``I;16`` (and ``I;16B``/``L``/``N``): 16-bit greyscale, divided by 65535 (``convert("L")``
      would clip it to 0 or 255).
    - ``I``: 32-bit integers; from a PNG it is 16-bit greyscale (/65535), from a TIFF it is
      scaled by its BitsPerSample; of unknown depth it is refused.
    - ``F``: 32-bit float, used as is; like float arrays it must lie in [0, 1].
    """
    mode = image.mode
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.float64) / 65535.0
    if mode == "I":
        bits = _integer_bit_depth(image)
        if bits is None:
            raise InputError(
                f"image {index} is a {image.format or 'PIL'} image of mode 'I' (32-bit integers) "
                "with no known bit depth, so its white level is unknown; save it as an 8- or "
                "16-bit PNG, or pass a float array in [0, 1]"
            )
        array = np.asarray(image).astype(np.float64)
        if array.min() < 0 or array.max() > 2**bits - 1:
            raise InputError(
                f"image {index} has values in [{array.min():.0f}, {array.max():.0f}] outside "
                f"its {bits}-bit range; pass a float array in [0, 1]"
            )
        return array / (2**bits - 1)
    if mode == "F":
        return np.asarray(image).astype(np.float64)
    try:
        return np.asarray(image.convert("L" if num_channels == 1 else "RGB"))
    except (ValueError, OSError) as error:
        raise InputError(
            f"image {index} has PIL mode {mode!r}, which PIL cannot convert "
            f"({error}); convert it to RGB or L first"
        ) from error


def _integer_bit_depth(image: Any) -> int | None:
    """The bit depth behind a mode-``I`` image: PNG greyscale integers are 16-bit."""
    if image.format == "PNG":
        return 16
    tags = getattr(image, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None  # TIFF BitsPerSample
    if isinstance(bits, tuple):
        bits = bits[0]
    return int(bits) if bits else None


def _image_array(image: Any, num_channels: int, index: int) -> np.ndarray:
    """Return an (H, W, C) uint8 or float array with ``num_channels`` channels."""
    from PIL import Image

    if isinstance(image, Image.Image):
        if num_channels not in (1, 3):
            raise InputError(
                f"cannot convert PIL image {index} to {num_channels} channels; pass a tensor"
            )
        array = _pil_array(image, num_channels, index)
    elif isinstance(image, (np.ndarray, Tensor)):
        array = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    else:
        raise InputError(
            f"image {index} is a {type(image).__name__}; pass PIL images, (H, W[, C]) numpy "
            "arrays, or one (N, C, H, W) tensor"
        )
    if array.dtype != np.uint8 and array.dtype.kind != "f":
        raise InputError(
            f"image {index} has dtype {array.dtype}; pass uint8 (0..255) or float (0..1) images"
        )
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise InputError(
            f"image {index} has shape {_shape_str(array.shape)}; pass (H, W) or (H, W, C) images"
        )
    if array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # channels-first (C, H, W) -> (H, W, C)
    if array.shape[2] == 4:
        array = array[:, :, :3]  # drop alpha
    channels = array.shape[2]
    if channels == num_channels:
        return array
    if channels == 1:
        return np.repeat(array, num_channels, axis=2)
    if channels == 3 and num_channels == 1:
        luma = array.astype(np.float64) @ np.array(_PIL_LUMA)
        luma = np.rint(luma).clip(0, 255).astype(np.uint8) if array.dtype == np.uint8 else luma
        return luma[:, :, None].astype(array.dtype)
    raise InputError(f"image {index} has {channels} channels; the model expects {num_channels}")


def _max_text_length(model: nn.Module, tokenizer: Any) -> int | None:
    """The most tokens the model takes, so long texts are truncated rather than crash it.

    The tokenizer's ``model_max_length`` (often an unset 1e30 sentinel), capped by the position
    embeddings, less RoBERTa-style ``padding_idx + 1`` position offsets.
    """
    limits = []
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and declared > 0:
        limits.append(declared)
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
        padding = getattr(getattr(embeddings, "position_embeddings", None), "padding_idx", None)
        limits.append(positions - (padding + 1 if padding is not None else 0))
    return min(limits) if limits else None


class TextClassifier(Classifier):
    """A text classifier measured in the space of its input token embeddings.

    ``prepare`` tokenizes and looks up the embeddings (N, L, H); the attention mask and token
    type ids are held fixed in the batch context, and padded positions are outside the space.
    """

    modality = "text"

    def __init__(self, model: nn.Module, *, tokenizer: Any, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.tokenizer = tokenizer
        accepted = inspect.signature(model.forward).parameters
        self._context_names = tuple(
            name for name in ("attention_mask", "token_type_ids") if name in accepted
        )
        self.max_length = _max_text_length(model, tokenizer)

    @property
    def embeddings(self) -> nn.Module:
        """The model's input embedding table."""
        return self.model.get_input_embeddings()

    def __call__(self, inputs: Tensor, **context: Tensor) -> Tensor:  # (N, L, H) -> (N, K)
        """Return logits for token embeddings, with ``attention_mask``/``token_type_ids``."""
        self._check_embeddings(inputs, context)
        output = self.model(inputs_embeds=inputs, **context)
        return _logits_of(output, type(self.model).__name__)

    def _check_embeddings(self, inputs: Tensor, context: Mapping[str, Tensor]) -> None:
        hidden = self.embeddings.embedding_dim
        if inputs.ndim != 3 or inputs.shape[2] != hidden:
            raise InputError(
                f"got input of shape {_shape_str(inputs.shape)}; the model expects token "
                f"embeddings of shape (N, L, {hidden})"
            )
        _check_batch_shape(inputs, None)
        for name, value in context.items():
            if tuple(value.shape) != tuple(inputs.shape[:2]):
                raise InputError(
                    f"got {name} of shape {_shape_str(value.shape)} for embeddings of shape "
                    f"{_shape_str(inputs.shape)}; it must be (N, L) = "
                    f"{_shape_str(inputs.shape[:2])}"
                )

    def prepare(self, raw: Any) -> PreparedBatch:
        """Tokenize strings or (text, text_pair) tuples, or take an encoding with input_ids.

        Tokenization pads to the longest sample and truncates to the model's maximum length.
        A ready :class:`PreparedBatch` of embeddings is validated and moved.
        """
        if isinstance(raw, PreparedBatch):
            return self._validated_embeddings(raw)
        encoding = self._encode(raw)
        input_ids = torch.as_tensor(encoding["input_ids"]).to(self.device)
        if input_ids.ndim == 1:
            input_ids = input_ids[None]
        _check_batch_shape(input_ids, None)
        if self.max_length is not None and input_ids.shape[1] > self.max_length:
            raise InputError(
                f"got input_ids of length {input_ids.shape[1]}; the model takes at most "
                f"{self.max_length} tokens: tokenize with truncation=True, "
                f"max_length={self.max_length}"
            )
        vocab = self.embeddings.num_embeddings
        if input_ids.min() < 0 or input_ids.max() >= vocab:
            raise InputError(
                f"input_ids hold values in [{input_ids.min().item()}, {input_ids.max().item()}]; "
                f"the model's vocabulary has {vocab} tokens: tokenize with the model's tokenizer"
            )
        mask = encoding.get("attention_mask")
        mask = torch.ones_like(input_ids) if mask is None else torch.as_tensor(mask)
        context = {"attention_mask": mask.to(self.device).reshape(input_ids.shape).long()}
        token_types = encoding.get("token_type_ids")
        if token_types is not None:
            context["token_type_ids"] = (
                torch.as_tensor(token_types).to(self.device).reshape(input_ids.shape)
            )
        context = {name: value for name, value in context.items() if name in self._context_names}
        with torch.no_grad():
            inputs = self.embeddings(input_ids).to(self.dtype)
        space_mask = context.get("attention_mask", torch.ones_like(input_ids))
        space_mask = space_mask[:, :, None].to(inputs.dtype).expand_as(inputs)
        return PreparedBatch(inputs, space_mask, context)

    def _encode(self, raw: Any) -> Mapping[str, Any]:
        if isinstance(raw, Mapping):
            if "input_ids" not in raw:
                raise InputError(
                    f"got a dict with keys {sorted(raw)}; a tokenized batch needs 'input_ids' "
                    "(and optionally 'attention_mask', 'token_type_ids')"
                )
            return raw
        if isinstance(raw, str):
            raw = [raw]
        if isinstance(raw, Iterable) and not isinstance(raw, (bytes, Tensor, np.ndarray)):
            raw = list(raw)  # lists, tuples, a datasets column
        if not isinstance(raw, list) or len(raw) == 0:
            raise InputError(
                f"got {type(raw).__name__} {raw!r:.60}; pass a non-empty list of strings, of "
                "(text, text_pair) tuples, or a tokenized dict with input_ids"
            )
        first, second = [], []
        for index, item in enumerate(raw):
            if isinstance(item, str):
                first.append(item)
            elif (
                isinstance(item, (tuple, list))
                and len(item) == 2
                and all(isinstance(part, str) for part in item)
            ):
                first.append(item[0])
                second.append(item[1])
            else:
                raise InputError(
                    f"text sample {index} is {item!r:.60}; pass strings or (text, text_pair) "
                    "tuples of strings"
                )
        if second and len(second) != len(first):
            raise InputError(
                "mix of single texts and (text, text_pair) tuples; pass one kind per batch"
            )
        if self.max_length is not None:
            lengths = self.tokenizer(first, second or None, truncation=False)["input_ids"]
            truncated = sum(len(ids) > self.max_length for ids in lengths)
            if truncated:
                logger.warning(
                    "truncated %d of %d texts to the model's limit of %d tokens (the smaller of "
                    "the tokenizer's model_max_length and the model's position embeddings)",
                    truncated,
                    len(first),
                    self.max_length,
                )
        return self.tokenizer(
            first,
            second or None,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )

    def _validated_embeddings(self, batch: PreparedBatch) -> PreparedBatch:
        moved = batch.to(self.device, self.dtype)
        self._check_embeddings(moved.inputs, moved.context)
        _check_finite(moved.inputs)
        return moved


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
        generator = torch.Generator().manual_seed(_PROBE_SEED)
        probe = torch.randn((_PROBE_SIZE, *self.input_shape), generator=generator)
        probe = probe.to(device=self.device, dtype=self.dtype)
        self._num_classes = _determinism_check(
            lambda: self.model(probe), _PROBE_SIZE, type(self.model).__name__
        )
        if not self.id2label:
            self.id2label = {index: str(index) for index in range(self._num_classes)}


# --------------------------------------------------------------------------------------------
# Loading.


def load_classifier(
    model: str | Path | nn.Module | Classifier,
    *,
    input_space: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    input_shape: tuple[int, ...] | None = None,
    likelihood: str | None = None,
) -> Classifier:
    """Wrap a Hub id, local directory, ``nn.Module`` or :class:`Classifier` as a Classifier.

    Checkpoints (Hub ids or directories saved with ``save_pretrained``) are loaded with their
    image processor or tokenizer, in ``dtype`` with eager attention (sdpa has no forward-mode AD
    or double backward), put in eval mode and frozen (``requires_grad_(False)``): the loader owns
    them. A user ``nn.Module`` is switched to eval mode in place (dropout off, BatchNorm on its
    running statistics) and moved if ``device``/``dtype`` are given. Every model is then probed
    once: two forward passes must give identical (N, K) logits.

    Args:
        model: Hub id, local directory, ``nn.Module`` returning logits, or a Classifier
            (returned as is, moved/cast if ``device``/``dtype`` are given).
        input_space: images: "pixels" (default, [0, 1]) or "normalized"; text: "embeddings";
            modules: "raw".
        device: default: CUDA if available else CPU; a module's own device for modules.
        dtype: default float32; a module's own floating dtype for modules.
        revision: Hub revision (branch, tag or commit).
        trust_remote_code: allow custom modelling code from the Hub (only if you trust it).
        input_shape: per-sample shape for a plain module (otherwise inferred from the first
            batch).
        likelihood: "categorical" (softmax classes) or "bernoulli" (multi-label sigmoids).
            Default: "bernoulli" when the model's config has
            ``problem_type="multi_label_classification"``, else "categorical". Given for a
            Classifier, it is set on that Classifier in place.

    Returns:
        A :class:`Classifier` (an image, text or module classifier).

    Raises:
        ModelLoadError: the id or directory cannot be loaded, a bad ``input_space``, or a
            non-deterministic forward pass.
        NotAClassifierError: the model has no classification head or returns no (N, K) logits,
            or its config declares ``problem_type="regression"``.

    >>> classifier = load_classifier(torch.nn.Linear(4, 3), input_shape=(4,))
    >>> classifier.modality, classifier.input_space, classifier.num_classes
    ('tensor', 'raw', 3)
    >>> classifier(classifier.prepare(torch.zeros(2, 4)).inputs).shape
    torch.Size([2, 3])
    """
    if dtype is not None and not dtype.is_floating_point:
        raise ModelLoadError(f"got dtype={dtype}; pass a floating dtype such as torch.float32")
    if likelihood is not None and likelihood not in LIKELIHOODS:
        raise ModelLoadError(
            f"got likelihood={likelihood!r}; use 'categorical' (softmax, one label per input) or "
            "'bernoulli' (independent sigmoids, multi-label)"
        )
    if isinstance(model, Classifier):
        if likelihood is not None:
            model.likelihood = likelihood
        if device is None and dtype is None:
            return model
        return model.to(device, dtype)
    if isinstance(model, nn.Module):
        classifier = _wrap_module(model, input_space, device, dtype, input_shape)
    elif isinstance(model, (str, Path)):
        classifier = _load_pretrained(
            str(model), input_space, device, dtype, revision, trust_remote_code
        )
    else:
        raise ModelLoadError(
            f"got a model of type {type(model).__name__}; pass a Hub id, a directory saved with "
            "save_pretrained, an nn.Module that returns logits, or a Classifier"
        )
    classifier.likelihood = likelihood or _likelihood_of(getattr(classifier.model, "config", None))
    return classifier


def _check_space(input_space: str | None, allowed: tuple[str, ...], what: str) -> str:
    space = input_space or allowed[0]
    if space not in allowed:
        raise ModelLoadError(
            f"got input_space={input_space!r} for {what}; use one of {list(allowed)}"
        )
    return space


def _wrap_module(
    module: nn.Module,
    input_space: str | None,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
    input_shape: tuple[int, ...] | None,
) -> ModuleClassifier:
    name = type(module).__name__
    space = _check_space(input_space, TENSOR_SPACES, f"the nn.Module {name}")
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


def _likelihood_of(config: Any) -> str:
    """Return "bernoulli" for a multi-label config (``problem_type``), else "categorical"."""
    problem_type = getattr(config, "problem_type", None)
    return "bernoulli" if problem_type == "multi_label_classification" else "categorical"


def _task_of(config: Any, name: str) -> str:
    """Return "image-classification" or "text-classification" from the checkpoint's config."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    if getattr(config, "problem_type", None) == "regression":
        raise NotAClassifierError(
            f"{name!r} is a regression model (problem_type 'regression'): its outputs are not "
            "class scores, so it has no Fisher information over labels; hf-fisher needs a "
            "single- or multi-label classifier"
        )
    architectures = getattr(config, "architectures", None) or []
    for architecture in architectures:
        if "ForImageClassification" in architecture:
            return "image-classification"
        if architecture.endswith("ForSequenceClassification"):
            return "text-classification"
    if architectures:
        raise NotAClassifierError(
            f"{name!r} holds a {architectures[0]}, which is not a classifier; hf-fisher needs "
            "a checkpoint with a classification head (an *ForImageClassification or "
            "*ForSequenceClassification model): fine-tune one and save it with save_pretrained"
        )
    model_type = getattr(config, "model_type", None)
    if model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        return "image-classification"
    if model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        return "text-classification"
    raise NotAClassifierError(
        f"{name!r} has a {type(config).__name__} (model_type {model_type!r}) with no "
        "image- or sequence-classification model in transformers; hf-fisher needs a classifier"
    )


def _commit_hash(name: str, revision: str | None) -> str | None:
    """The commit of a Hub checkpoint from the local cache, when it is known."""
    from huggingface_hub import try_to_load_from_cache
    from transformers.utils.hub import extract_commit_hash

    try:
        cached = try_to_load_from_cache(name, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - provenance is best effort, never fatal
        return None
    return extract_commit_hash(cached, None) if isinstance(cached, str) else None


def _from_pretrained(auto_class: Any, name: str, dtype: torch.dtype, **kwargs: Any) -> nn.Module:
    try:
        model, info = auto_class.from_pretrained(
            name,
            dtype=dtype,
            attn_implementation="eager",
            use_safetensors=None,
            output_loading_info=True,
            **kwargs,
        )
    except (ValueError, TypeError) as error:
        if "attn" not in str(error).lower() and "attention" not in str(error).lower():
            raise
        model, info = auto_class.from_pretrained(
            name, dtype=dtype, use_safetensors=None, output_loading_info=True, **kwargs
        )
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise NotAClassifierError(
            f"{name!r} loads as {type(model).__name__} but has no trained weights for "
            f"{missing[:4]}: its head would be random. hf-fisher needs a trained classifier; "
            "fine-tune the head and save the model with save_pretrained"
        )
    return model


def _load_pretrained(
    name: str,
    input_space: str | None,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
    revision: str | None,
    trust_remote_code: bool,
) -> Classifier:
    from transformers import (
        AutoConfig,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
    )

    is_local = Path(name).expanduser().is_dir()
    if not is_local and Path(name).expanduser().exists():
        raise ModelLoadError(
            f"{name!r} is a file; pass the directory that save_pretrained wrote, or a Hub id"
        )
    hub_kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(name, **hub_kwargs)
    except Exception as error:  # noqa: BLE001 - every failure becomes one typed, chained error
        if is_local:
            raise ModelLoadError(
                f"could not read a model config from the directory {name!r} ({error}); pass a "
                "directory written by save_pretrained (it must hold config.json)"
            ) from error
        raise ModelLoadError(
            f"could not find the model {name!r} locally or on the Hugging Face Hub "
            f"(revision {revision!r}): {str(error).splitlines()[0]} Pass a local directory "
            "saved with save_pretrained, check the id and your network, or set HF_HUB_OFFLINE=1 "
            "to load only from the local cache"
        ) from error
    task = _task_of(config, name)
    device = torch.device(device) if device is not None else _default_device()
    dtype = dtype or torch.float32
    auto_class = (
        AutoModelForImageClassification
        if task == "image-classification"
        else AutoModelForSequenceClassification
    )
    try:
        model = _from_pretrained(auto_class, name, dtype, **hub_kwargs)
    except NotAClassifierError:
        raise
    except Exception as error:  # noqa: BLE001
        raise ModelLoadError(
            f"could not load the weights of {name!r} as {auto_class.__name__} ({error}); check "
            "that the checkpoint is complete (config.json plus model.safetensors)"
        ) from error
    model.eval()  # the loader owns the model: eval mode (dropout off, BatchNorm frozen) ...
    model.requires_grad_(False)  # ... and no weight gradients (only input gradients are used)
    model.to(device)
    architecture = type(model).__name__
    source = {
        "id": name,
        "revision": revision,
        "commit_hash": None if is_local else _commit_hash(name, revision),
        "architecture": architecture,
        "task": task,
    }
    id2label = {int(key): str(value) for key, value in model.config.id2label.items()}
    common = {"id2label": id2label, "source": source, "device": device, "dtype": dtype}
    if task == "image-classification":
        classifier = _image_classifier(model, name, config, input_space, hub_kwargs, common)
        generator = torch.Generator().manual_seed(_PROBE_SEED)
        probe = torch.rand((_PROBE_SIZE, *classifier.input_shape), generator=generator)
        probe = probe.to(device=device, dtype=dtype)
        if classifier.input_space == "normalized":
            probe = classifier.normalize(probe)
        forward = lambda: classifier(probe)  # noqa: E731
    else:
        classifier = _text_classifier(model, name, input_space, hub_kwargs, common)
        generator = torch.Generator().manual_seed(_PROBE_SEED)
        vocab = classifier.embeddings.num_embeddings
        ids = torch.randint(0, vocab, (_PROBE_SIZE, _PROBE_TEXT_LENGTH), generator=generator)
        batch = classifier.prepare({"input_ids": ids})
        forward = lambda: classifier(batch.inputs, **batch.context)  # noqa: E731
    classifier._num_classes = _determinism_check(forward, _PROBE_SIZE, architecture)
    if classifier._num_classes != len(id2label):
        raise NotAClassifierError(
            f"{name!r} returns {classifier._num_classes} logits but its config names "
            f"{len(id2label)} labels; fix id2label in config.json"
        )
    return classifier


def _processor_resolution(processor: Any) -> tuple[int, int] | None:
    """The (H, W) the processor outputs: its crop size if it crops, else its resize target."""
    for attribute, applies in (("crop_size", "do_center_crop"), ("size", "do_resize")):
        size = getattr(processor, attribute, None)
        if size is None or not getattr(processor, applies, True):
            continue
        get = size.get if isinstance(size, Mapping) else lambda key, s=size: getattr(s, key, None)
        if get("height") and get("width"):
            return int(get("height")), int(get("width"))
        if get("shortest_edge") and not get("longest_edge"):
            edge = int(get("shortest_edge"))
            return edge, edge
    return None


def _config_resolution(config: Any) -> tuple[int, int] | None:
    size = getattr(config, "image_size", None)
    if isinstance(size, int):
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return int(size[0]), int(size[1])
    return None


def _image_classifier(
    model: nn.Module,
    name: str,
    config: Any,
    input_space: str | None,
    hub_kwargs: dict,
    common: dict,
) -> ImageClassifier:
    from transformers import AutoImageProcessor

    space = _check_space(input_space, IMAGE_SPACES, f"the image classifier {name!r}")
    try:
        processor = AutoImageProcessor.from_pretrained(name, **hub_kwargs)
    except Exception as error:  # noqa: BLE001
        if space == "pixels":
            raise ModelLoadError(
                f"found no image processor for {name!r} ({str(error).splitlines()[0]}); pixel "
                "space needs its normalisation: save the processor next to the model "
                "(processor.save_pretrained(directory)), or pass input_space='normalized' and "
                "normalised (N, C, H, W) tensors"
            ) from error
        processor = None
    num_channels = int(getattr(config, "num_channels", 3))
    resolution = (processor and _processor_resolution(processor)) or _config_resolution(config)
    if resolution is None:
        raise ModelLoadError(
            f"cannot tell the input resolution of {name!r}: neither its image processor (size) "
            "nor its config (image_size) gives one; set image_size in config.json"
        )
    mean = [0.0] * num_channels
    std = [1.0] * num_channels
    scale = 1.0
    if processor is not None:
        if getattr(processor, "do_normalize", False):
            mean = _per_channel(processor.image_mean, num_channels, "image_mean", name)
            std = _per_channel(processor.image_std, num_channels, "image_std", name)
        rescales = getattr(processor, "do_rescale", True)
        scale = 255.0 * float(getattr(processor, "rescale_factor", 1 / 255)) if rescales else 255.0
    return ImageClassifier(
        model,
        processor=processor,
        pixel_scale=scale,
        mean=mean,
        std=std,
        input_space=space,
        input_shape=(num_channels, *resolution),
        **common,
    )


def _per_channel(values: Any, num_channels: int, what: str, name: str) -> list[float]:
    values = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(values) == 1:
        values = values * num_channels
    if len(values) != num_channels:
        raise ModelLoadError(
            f"the image processor of {name!r} has {what}={values} for a model with "
            f"{num_channels} channels; give one value per channel"
        )
    return values


def _text_classifier(
    model: nn.Module, name: str, input_space: str | None, hub_kwargs: dict, common: dict
) -> TextClassifier:
    from transformers import AutoTokenizer

    space = _check_space(input_space, TEXT_SPACES, f"the text classifier {name!r}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **hub_kwargs)
    except Exception as error:  # noqa: BLE001
        raise ModelLoadError(
            f"found no tokenizer for {name!r} ({str(error).splitlines()[0]}); save the model's "
            "tokenizer next to it with tokenizer.save_pretrained(directory)"
        ) from error
    if tokenizer.pad_token is None:
        raise ModelLoadError(
            f"the tokenizer of {name!r} has no padding token, so batches cannot be padded; set "
            "tokenizer.pad_token (e.g. to the eos token) and save it"
        )
    return TextClassifier(model, tokenizer=tokenizer, input_space=space, input_shape=None, **common)


__all__ = [
    "Classifier",
    "ImageClassifier",
    "ModuleClassifier",
    "PreparedBatch",
    "TextClassifier",
    "load_classifier",
]
