"""Text classifiers, measured in the space of their input token embeddings.

Tokenization (strings, (text, text_pair) tuples or ready encodings), truncation to the model's
real limit, and the attention mask and token types held fixed in the batch context.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hf_fisher.adapters.base import (
    PROBE_SEED,
    PROBE_SIZE,
    Checkpoint,
    Classifier,
    InputSpace,
    PreparedBatch,
    _check_batch_shape,
    _check_finite,
    _logits_of,
    _shape_str,
)
from hf_fisher.errors import InputError, ModelLoadError

logger = logging.getLogger(__name__)

_PROBE_TEXT_LENGTH = 6


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

    @classmethod
    def from_checkpoint(
        cls, model: nn.Module, checkpoint: Checkpoint, space: InputSpace
    ) -> TextClassifier:
        """Wrap ``model`` with the checkpoint's tokenizer.

        Raises:
            ModelLoadError: no tokenizer, or one without a padding token.
        """
        from transformers import AutoTokenizer

        name = checkpoint.name
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, **checkpoint.hub_kwargs)
        except Exception as error:  # noqa: BLE001
            raise ModelLoadError(
                f"found no tokenizer for {name!r} ({str(error).splitlines()[0]}); save the "
                "model's tokenizer next to it with tokenizer.save_pretrained(directory)"
            ) from error
        if tokenizer.pad_token is None:
            raise ModelLoadError(
                f"the tokenizer of {name!r} has no padding token, so batches cannot be padded; "
                "set tokenizer.pad_token (e.g. to the eos token) and save it"
            )
        return cls(
            model, tokenizer=tokenizer, input_space=space, input_shape=None, **checkpoint.common
        )

    def probe_batch(self) -> PreparedBatch:
        """Seeded random token ids, embedded."""
        generator = torch.Generator().manual_seed(PROBE_SEED)
        vocab = self.embeddings.num_embeddings
        ids = torch.randint(0, vocab, (PROBE_SIZE, _PROBE_TEXT_LENGTH), generator=generator)
        return self.prepare({"input_ids": ids})

    def _per_position(self, squared: Tensor) -> Tensor:  # (N, L, H) -> (N, L): per token
        return squared.sum(dim=2)

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
        return self._with_ids(PreparedBatch(inputs, space_mask, context), input_ids)

    def _with_ids(self, batch: PreparedBatch, input_ids: Tensor) -> PreparedBatch:
        """Hook for adapters that keep more of the tokenization in the context."""
        return batch

    def _encode(self, raw: Any) -> Mapping[str, Any]:
        if isinstance(raw, Mapping):
            if "input_ids" not in raw:
                raise InputError(
                    f"got a dict with keys {sorted(raw)}; a tokenized batch needs 'input_ids' "
                    "(and optionally 'attention_mask', 'token_type_ids')"
                )
            return raw
        first, second = _split_pairs(_text_list(raw))
        if self.max_length is not None:
            self._warn_truncation(first, second)
        return self.tokenizer(
            first,
            second or None,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )

    def _warn_truncation(self, first: list[str], second: list[str]) -> None:
        """Log how many texts exceed ``max_length``, so truncation is never silent."""
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

    def _validated_embeddings(self, batch: PreparedBatch) -> PreparedBatch:
        moved = batch.to(self.device, self.dtype)
        self._check_embeddings(moved.inputs, moved.context)
        _check_finite(moved.inputs)
        return moved


def _text_list(raw: Any) -> list:
    """A string, list, tuple or datasets column as a non-empty list."""
    if isinstance(raw, str):
        raw = [raw]
    if isinstance(raw, Iterable) and not isinstance(raw, (bytes, Tensor, np.ndarray)):
        raw = list(raw)  # lists, tuples, a datasets column
    if not isinstance(raw, list) or len(raw) == 0:
        raise InputError(
            f"got {type(raw).__name__} {raw!r:.60}; pass a non-empty list of strings, of "
            "(text, text_pair) tuples, or a tokenized dict with input_ids"
        )
    return raw


def _split_pairs(raw: list) -> tuple[list[str], list[str]]:
    """Strings -> (texts, []); (text, text_pair) tuples -> (texts, pairs); mixes refused."""
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
    return first, second
