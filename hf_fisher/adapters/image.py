"""Image classifiers: pixel space with the processor's normalisation folded in, and PIL input.

A checkpoint's image processor fixes the resolution and the affine map from [0, 1] pixels to the
tensors the model takes; PIL images of every common mode (8- and 16-bit greyscale, palette, CMYK,
alpha) are converted to the model's channels here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hf_fisher._device import to_device
from hf_fisher.adapters.base import (
    PROBE_SEED,
    PROBE_SIZE,
    Checkpoint,
    Classifier,
    InputSpace,
    PreparedBatch,
    _as_tensor,
    _check_batch_shape,
    _check_finite,
    _logits_of,
    _shape_str,
)
from hf_fisher.errors import InputError, ModelLoadError

_PIL_LUMA = (0.299, 0.587, 0.114)


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

    @classmethod
    def from_checkpoint(
        cls, model: nn.Module, checkpoint: Checkpoint, space: InputSpace
    ) -> ImageClassifier:
        """Wrap ``model`` with the checkpoint's image processor, resolution and normalisation.

        Raises:
            ModelLoadError: pixel space without an image processor, no known resolution, or
                per-channel statistics that do not match the channels.
        """
        from transformers import AutoImageProcessor

        name, config = checkpoint.name, checkpoint.config
        try:
            processor = AutoImageProcessor.from_pretrained(name, **checkpoint.hub_kwargs)
        except Exception as error:  # noqa: BLE001
            if space.name == "pixels":
                raise ModelLoadError(
                    f"found no image processor for {name!r} ({str(error).splitlines()[0]}); "
                    "pixel space needs its normalisation: save the processor next to the model "
                    "(processor.save_pretrained(directory)), or pass input_space='normalized' "
                    "and normalised (N, C, H, W) tensors"
                ) from error
            processor = None
        num_channels = int(getattr(config, "num_channels", 3))
        resolution = (processor and _processor_resolution(processor)) or _config_resolution(config)
        if resolution is None:
            raise ModelLoadError(
                f"cannot tell the input resolution of {name!r}: neither its image processor "
                "(size) nor its config (image_size) gives one; set image_size in config.json"
            )
        scale, mean, std = _processor_affine(processor, num_channels, name)
        return cls(
            model,
            processor=processor,
            pixel_scale=scale,
            mean=mean,
            std=std,
            input_space=space,
            input_shape=(num_channels, *resolution),
            **checkpoint.common,
        )

    def probe_batch(self) -> PreparedBatch:
        """Seeded uniform [0, 1] pixels (normalised in normalised space)."""
        generator = torch.Generator().manual_seed(PROBE_SEED)
        probe = torch.rand((PROBE_SIZE, *self.input_shape), generator=generator)
        probe = probe.to(device=self.device, dtype=self.dtype)
        return PreparedBatch(self.normalize(probe) if self.input_space == "normalized" else probe)

    def _move_buffers(self) -> None:
        shape = (1, -1, 1, 1)
        self._mean = torch.tensor(self._mean_values, dtype=self.dtype, device=self.device)
        self._std = torch.tensor(self._std_values, dtype=self.dtype, device=self.device)
        self._mean, self._std = self._mean.reshape(shape), self._std.reshape(shape)

    def _per_position(self, squared: Tensor) -> Tensor:  # (N, C, H, W) -> (N, H W): per pixel
        return squared.sum(dim=1).flatten(1)

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
            pixels = to_device(pixels, self.device, self.dtype)
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
    return _with_channels(
        _channels_last(_as_array(image, num_channels, index), index), num_channels, index
    )


def _as_array(image: Any, num_channels: int, index: int) -> np.ndarray:
    """A PIL image, numpy array or tensor as a uint8 or float numpy array."""
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
    return array


def _channels_last(array: np.ndarray, index: int) -> np.ndarray:
    """(H, W), (H, W, C) or channels-first (C, H, W) -> (H, W, C), alpha dropped."""
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
    return array


def _with_channels(array: np.ndarray, num_channels: int, index: int) -> np.ndarray:
    """Greyscale <-> RGB (ITU-R 601 luma, as PIL) so the array has ``num_channels``."""
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


def _processor_affine(
    processor: Any, num_channels: int, name: str
) -> tuple[float, list[float], list[float]]:
    """The processor's (pixel_scale, mean, std): the map from [0, 1] pixels to model inputs."""
    if processor is None:
        return 1.0, [0.0] * num_channels, [1.0] * num_channels
    mean, std = [0.0] * num_channels, [1.0] * num_channels
    if getattr(processor, "do_normalize", False):
        mean = _per_channel(processor.image_mean, num_channels, "image_mean", name)
        std = _per_channel(processor.image_std, num_channels, "image_std", name)
    rescales = getattr(processor, "do_rescale", True)
    scale = 255.0 * float(getattr(processor, "rescale_factor", 1 / 255)) if rescales else 255.0
    return scale, mean, std


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
