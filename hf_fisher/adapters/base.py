"""The adapter contract: a prepared batch, input spaces, the Classifier base and shared checks.

Every Hugging Face detail lives in :mod:`hf_fisher.adapters`: processors and their normalisation,
tokenizers, attention masks, input embeddings, eager attention, eval mode. Operators and
estimators only see a :class:`PreparedBatch` and the plain ``logit_fn`` that
:meth:`Classifier.logit_fn` returns.

Input spaces (the space in which the Fisher information is measured), each an
:class:`InputSpace` that also fixes the valid input box (``clip``) and which companion
measurements apply (``capabilities``):

- ``"pixels"`` (images, default): (C, H, W) values in [0, 1] at the model's resolution; the image
  processor's normalisation is folded into the forward pass.
- ``"normalized"`` (images): the tensors the model itself takes, already normalised.
- ``"embeddings"`` (text): token embeddings (L, H); attention mask and token types held fixed.
- ``"raw"`` (plain ``nn.Module``): whatever tensor the module takes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hf_fisher._device import to_device
from hf_fisher.errors import InputError, ModelLoadError, NotAClassifierError

PROBE_SEED = 0
PROBE_SIZE = 2
_DETERMINISM_RTOL = 1e-4
_DETERMINISM_ATOL = 1e-5
_SMALL_MODEL = 2**22
"""Parameters below which the probe runs on one CPU thread (see :func:`_probe_threads`)."""

COMPANIONS = frozenset(
    {"attacks", "noise", "kl_check", "clever", "frequency", "bound", "path_separation"}
)
"""Every companion measurement (see :mod:`hf_fisher.companions`), by name."""


@dataclass(frozen=True)
class InputSpace:
    """A continuous input space, with its valid box and the companions that apply in it.

    Attributes:
        name: "pixels", "normalized", "embeddings", "raw", or a new space's name.
        clip: the (low, high) box inputs must stay in (attacks, noise and CLEVER clip to it),
            or None for an unbounded space.
        capabilities: the names of the companion measurements that apply (a subset of
            :data:`COMPANIONS`).
    """

    name: str
    clip: tuple[float, float] | None
    capabilities: frozenset[str]

    def __post_init__(self) -> None:
        unknown = set(self.capabilities) - COMPANIONS
        if unknown:
            raise ValueError(f"unknown companions {sorted(unknown)}; use {sorted(COMPANIONS)}")


PIXELS = InputSpace("pixels", (0.0, 1.0), COMPANIONS)
NORMALIZED = InputSpace("normalized", None, COMPANIONS - {"frequency"})
# text: attacks, noise, CLEVER and the KL check perturb the embeddings of non-padded tokens (the
# attention mask follows every subset and copy of the batch, see BatchLogits); frequency bands are
# an image concept and the architecture bound needs a plain feed-forward stack
EMBEDDINGS = InputSpace("embeddings", None, frozenset({"attacks", "noise", "kl_check", "clever"}))
RAW = InputSpace("raw", None, COMPANIONS - {"frequency"})
SPACES = {space.name: space for space in (PIXELS, NORMALIZED, EMBEDDINGS, RAW)}
"""The built-in input spaces by name."""


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
        """Move to ``device``; cast the continuous inputs (only) to ``dtype``.

        Host-to-GPU copies are pinned and non-blocking (:func:`hf_fisher._device.to_device`).
        """
        return PreparedBatch(
            to_device(self.inputs, device, dtype or self.inputs.dtype),
            None if self.space_mask is None else to_device(self.space_mask, device),
            {name: to_device(value, device) for name, value in self.context.items()},
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
    return to_device(tensor.detach(), device, dtype)


def _determinism_check(
    forward: Callable[[], Tensor], num_samples: int, what: str, model: nn.Module | None = None
) -> int:
    """Run ``forward`` twice; check it returns identical (N, K) (or (N, T, K)) logits. Returns K.

    ``model`` (the module ``forward`` runs) lets a small CPU model's probe run on one thread.
    """
    with torch.no_grad(), _probe_threads(model):
        first = _logits_of(forward(), what)
        second = _logits_of(forward(), what)
    if first.ndim not in (2, 3) or first.shape[0] != num_samples or first.shape[-1] < 2:
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
    return first.shape[-1]


@contextmanager
def _probe_threads(model: nn.Module | None) -> Iterator[None]:
    """One intra-op thread for the probe of a small model on the CPU, then the caller's count.

    The probe is two forward passes of two inputs: a small model's operators are too short for
    intra-op threads to pay, and their synchronisation is what they cost. On a 2-core machine
    under load, the bundled digits ResNet's probe took 0.3-0.6 s of CPU (0.7-1.4 s wall) with
    two threads and ~3 ms with one (``benchmarks/bench_start.py``). Large models, and models on
    a GPU, keep the caller's setting.
    """
    parameters = [] if model is None else list(model.parameters())
    on_cpu = bool(parameters) and all(p.device.type == "cpu" for p in parameters)
    small = sum(p.numel() for p in parameters) < _SMALL_MODEL
    threads = torch.get_num_threads()
    if not (on_cpu and small) or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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


@dataclass(frozen=True)
class Checkpoint:
    """What an adapter gets to build itself from a ``save_pretrained`` directory or Hub id.

    Attributes:
        name: the Hub id or directory.
        config: its transformers config.
        hub_kwargs: ``revision`` and ``trust_remote_code``, for loading processors alike.
        common: the Classifier keyword arguments shared by every adapter (``id2label``,
            ``source``, ``device``, ``dtype``).
        task_options: the task's own options, as its ``check_options`` returned them (a
            zero-shot model's ``candidate_labels`` and ``hypothesis_template``).
    """

    name: str
    config: Any
    hub_kwargs: dict
    common: dict
    task_options: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Classifiers.


class Classifier:
    """A classifier seen as a differentiable map from a continuous input space to logits.

    Attributes:
        model: the wrapped ``nn.Module``, in eval mode.
        num_classes: K.
        modality: "image", "text" or "tensor".
        space: the :class:`InputSpace` measured in (its task entry's choice, see
            :mod:`hf_fisher.adapters.tasks`); ``input_space`` is its name, ``clip`` its box and
            ``capabilities`` the companion measurements that apply.
        input_shape: per-sample shape, (C, H, W) for images; None for text (length varies).
        id2label: class index -> name.
        source: provenance: ``id``, ``revision``, ``commit_hash``, ``architecture``, ``task``.
        device, dtype: where and in which precision inputs and the model live.
        likelihood: how the logits score labels, which fixes the Fisher: "categorical" (a
            softmax over K exclusive classes) or "bernoulli" (multi-label: an independent
            sigmoid per class, as Hugging Face's ``problem_type="multi_label_classification"``).
        output_positions: T, the most output positions a sample predicts at (a product of T
            categoricals: tokens, pixels); 1 for one prediction per input. Used for costs.
        position_summaries: whether results carry per-position shares (which input token or
            pixel, and which output position, the worst-case perturbation involves most).
    """

    modality: str = ""
    output_positions: int = 1
    position_summaries: bool = False

    def __init__(
        self,
        model: nn.Module,
        *,
        input_space: str | InputSpace,
        input_shape: tuple[int, ...] | None,
        id2label: dict[int, str],
        source: dict,
        device: torch.device,
        dtype: torch.dtype,
        likelihood: str = "categorical",
    ) -> None:
        self.model = model
        self.likelihood = likelihood
        if not isinstance(input_space, InputSpace) and input_space not in SPACES:
            raise ModelLoadError(f"got input_space={input_space!r}; use one of {list(SPACES)}")
        self.space = input_space if isinstance(input_space, InputSpace) else SPACES[input_space]
        self.input_shape = input_shape
        self.id2label = id2label
        self.source = source
        self.device = device
        self.dtype = dtype
        self._num_classes: int | None = None

    @property
    def input_space(self) -> str:
        """The name of the input space: "pixels", "normalized", "embeddings" or "raw"."""
        return self.space.name

    @property
    def clip(self) -> tuple[float, float] | None:
        """The valid input box of the space, e.g. (0.0, 1.0) for pixels; None if unbounded."""
        return self.space.clip

    @property
    def capabilities(self) -> frozenset[str]:
        """Names of the companion measurements that apply to this model in this space."""
        return self.space.capabilities

    @property
    def num_classes(self) -> int:
        """K, the number of classes (known once the model has been probed)."""
        if self._num_classes is None:
            raise InputError(
                "the number of classes is unknown until the model has seen a batch; call "
                "prepare() first or pass input_shape= to load_classifier"
            )
        return self._num_classes

    @classmethod
    def from_checkpoint(  # pragma: no cover - abstract
        cls, model: nn.Module, checkpoint: Checkpoint, space: InputSpace
    ) -> Classifier:
        """Wrap a model loaded from a checkpoint, with its processor or tokenizer."""
        raise NotImplementedError

    def probe_batch(self) -> PreparedBatch:  # pragma: no cover - abstract
        """A small seeded batch in the input space, for the determinism check on loading."""
        raise NotImplementedError

    def prepare(self, raw: Any) -> PreparedBatch:  # pragma: no cover - abstract
        """Turn raw inputs into a validated batch in the input space, on ``device``."""
        raise NotImplementedError

    def __call__(self, inputs: Tensor, **context: Tensor) -> Tensor:  # pragma: no cover
        """Return (N, K) logits for (N, *input_shape) inputs in the input space."""
        raise NotImplementedError

    def logit_fn(self, batch: PreparedBatch) -> BatchLogits:
        """Return ``x -> logits`` with the batch's fixed context (attention mask etc.) bound.

        The returned :class:`BatchLogits` maps (N, *shape) inputs to (N, K) logits, where N is
        the batch's size; this is what operators and estimators differentiate. It also takes
        N * m rows laid out sample-major (rows ``i*m .. i*m+m-1`` perturb sample i, as
        ``x.repeat_interleave(m, 0)`` gives), so black-box estimators can query many
        perturbations of a text batch at once, and ``.select(index)`` gives the logit function
        of a sub-batch (attacks and CLEVER work on subsets of the batch).
        """
        return BatchLogits(self, dict(batch.context), len(batch))

    def output_mask(self, batch: PreparedBatch) -> Tensor | None:
        """(N, T) 0/1 mask of the output positions that count (structured outputs), or None."""
        return None

    def output_targets(self, batch: PreparedBatch) -> Tensor | None:
        """(N, T) the known class at each output position (e.g. a text's next tokens), or None."""
        return None

    def outputs_info(self) -> dict | None:
        """What the output positions are, for results.json; None for one prediction per input."""
        return None

    def input_position_names(self, batch: PreparedBatch) -> list[list[str]] | None:
        """Per sample, a name for each real input position (text: its tokens), or None."""
        return None

    def input_position_shares(self, squared: Tensor) -> Tensor:  # (N, *shape) -> (N, P)
        """Sum squared eigenvector entries per input position, as fractions of the total.

        The default treats every coordinate as a position; text sums each token's embedding
        and images each pixel's channels.
        """
        per_position = self._per_position(squared.double())
        total = per_position.sum(dim=1, keepdim=True)
        return torch.where(total > 0, per_position / total.clamp_min(1e-300), 0.0)

    def _per_position(self, squared: Tensor) -> Tensor:  # (N, *shape) -> (N, P)
        return squared.reshape(squared.shape[0], -1)

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


class BatchLogits:
    """``x -> logits`` for one prepared batch; its per-sample context follows subsets and copies.

    Text models hold an attention mask and token types per sample: a companion that perturbs a
    subset of the batch, or m copies of each sample, must hand the model the matching rows of
    that context. Batches without context (images, plain modules) take any number of rows.

    Attributes:
        classifier: the classifier called.
        context: per-sample tensors aligned on dim 0 (empty for context-free batches).
        size: N, the number of samples the context describes.
    """

    def __init__(self, classifier: Classifier, context: dict[str, Tensor], size: int) -> None:
        self.classifier = classifier
        self.context = context
        self.size = size

    def __call__(self, inputs: Tensor) -> Tensor:  # (N * m, *shape) -> (N * m, K)
        """Logits of N * m sample-major rows (m >= 1), each with its own sample's context.

        Raises:
            InputError: the rows are not a whole number of copies of the batch's samples.
        """
        if not self.context:
            return self.classifier(inputs)
        rows = inputs.shape[0]
        if rows == 0 or rows % self.size:
            raise InputError(
                f"got {rows} rows for a batch of {self.size} samples with a per-sample "
                f"{'/'.join(sorted(self.context))}; pass m copies of each sample laid out "
                "sample-major (x.repeat_interleave(m, 0)), or take .select(index) first"
            )
        repeats = rows // self.size
        if repeats == 1:
            return self.classifier(inputs, **self.context)
        expanded = {k: v.repeat_interleave(repeats, dim=0) for k, v in self.context.items()}
        return self.classifier(inputs, **expanded)

    def select(self, index: Tensor | slice | list[int]) -> BatchLogits:
        """The logit function of the sub-batch at ``index`` (as :meth:`PreparedBatch.select`)."""
        if not self.context:
            return self
        context = {name: value[index] for name, value in self.context.items()}
        return BatchLogits(self.classifier, context, next(iter(context.values())).shape[0])
