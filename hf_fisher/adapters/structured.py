"""Structured outputs: causal language models, token classifiers and semantic segmenters.

Each predicts a categorical distribution at one or more output positions. Their logits reach
the Fisher engine as (N, K) (one position: a causal LM's next token after the prompt) or
(N, T, K) (T positions: tokens, pixels), and the engine measures the Fisher of the product of
the positions' categoricals, ``F = sum_t J_t^T (diag(p_t) - p_t p_t^T) J_t``
(:mod:`hf_fisher.operators`). Positions that do not count (padding, special tokens) get logits
that do not depend on the input, so they add nothing to F; :meth:`output_mask` names the ones
that count, for the per-position records.

- :class:`CausalLMClassifier`: ``AutoModelForCausalLM``, measured in the prompt's input
  embeddings. ``position="last"`` (default): the next-token distribution after the prompt,
  K = vocabulary size. ``position="all"``: the teacher-forced sequence Fisher, the sum over
  every position whose next token is in the text (see the class docstring).
- :class:`TokenClassifier`: ``AutoModelForTokenClassification`` (NER, POS), over the non-padded,
  non-special tokens.
- :class:`SegmentationClassifier`: ``AutoModelForSemanticSegmentation`` (SegFormer, ...), over
  the pixels of the model's own output grid, in pixel space.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch import Tensor, nn

from hf_fisher.adapters.base import (
    Checkpoint,
    InputSpace,
    PreparedBatch,
    _logits_of,
)
from hf_fisher.adapters.image import ImageClassifier
from hf_fisher.adapters.text import TextClassifier
from hf_fisher.errors import InputError, ModelLoadError

logger = logging.getLogger(__name__)

LM_POSITIONS = ("last", "all")
_OUTPUT_MASK = "output_mask"
_INPUT_IDS = "input_ids"


def _vocabulary(tokenizer: Any, size: int) -> dict[int, str]:
    """Token id -> token string for the model's whole output layer (unused ids named <id>)."""
    known = len(tokenizer)
    tokens = tokenizer.convert_ids_to_tokens(list(range(min(size, known))))
    names = {index: str(token) for index, token in enumerate(tokens)}
    names.update({index: f"<{index}>" for index in range(known, size)})
    return names


class _StructuredText(TextClassifier):
    """A text model whose batches carry the token ids and an output mask in their context."""

    position_summaries = True

    def _with_ids(self, batch: PreparedBatch, input_ids: Tensor) -> PreparedBatch:
        """Keep the token ids and the mask of the output positions that count."""
        attention = batch.context.get("attention_mask", torch.ones_like(input_ids))
        batch.context[_INPUT_IDS] = input_ids
        batch.context[_OUTPUT_MASK] = self._output_positions(input_ids, attention.long())
        return batch

    def _output_positions(self, ids: Tensor, attention: Tensor) -> Tensor:  # (N, L) 0/1
        raise NotImplementedError  # pragma: no cover - abstract

    def _model_logits(self, inputs: Tensor, context: dict[str, Any]) -> Tensor:
        """(N, L, K) logits of the model; the ids and output mask are not model inputs."""
        shaped = {k: v for k, v in context.items() if k != "logits_to_keep"}
        self._check_embeddings(inputs, shaped)
        kept = {k: v for k, v in context.items() if k not in (_OUTPUT_MASK, _INPUT_IDS)}
        return _logits_of(self.model(inputs_embeds=inputs, **kept), type(self.model).__name__)

    def output_mask(self, batch: PreparedBatch) -> Tensor | None:
        """(N, T) 0/1 mask of the output positions that count, or None when all do."""
        return batch.context.get(_OUTPUT_MASK)

    def input_position_names(self, batch: PreparedBatch) -> list[list[str]] | None:
        """The tokens of each text (padding left out), or None without the ids."""
        ids = batch.context.get(_INPUT_IDS)
        if ids is None:
            return None
        attention = batch.context.get("attention_mask", torch.ones_like(ids))
        return [
            self.tokenizer.convert_ids_to_tokens(row[mask.bool()].tolist())
            for row, mask in zip(ids.cpu(), attention.cpu(), strict=True)
        ]


class CausalLMClassifier(_StructuredText):
    """A causal language model measured in the input embeddings of its prompt.

    ``position="last"`` (default): the Fisher of the next-token distribution after the prompt,
    ``F = J^T (diag(p) - p p^T) J`` with K = vocabulary size (Lanczos; class-space work is O(K)
    per product and no (K, d) object is formed).

    ``position="all"``: the teacher-forced sequence Fisher ``sum_t J_t^T C_t J_t`` over every
    position t whose next token is part of the text, each ``p_t = p(. | x_<=t)`` with the text
    itself as context. It is the Fisher of the product of the per-position next-token
    distributions along the observed text; the Fisher of the model's own distribution over
    continuations would average over sampled continuations instead (an expectation hf-fisher
    does not take). Excluded: padding and the last token (nothing of the text follows it).

    Tokenizers without a padding token (or with one outside the model's vocabulary) get their
    end-of-sequence token as padding, on the right, so real tokens never attend to it (left
    padding leaves fully masked attention rows, whose NaN gradients would reach the Fisher).
    For ``position="last"`` the output layer runs only at the prompts' last positions
    (``logits_to_keep`` where the model takes it): the class-space work of a Fisher product is
    O(K) per distinct prompt length, not O(L K).
    """

    def __init__(self, model: nn.Module, *, position: str = "last", **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.tokenizer.padding_side = "right"
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.position = position

    @property
    def position(self) -> str:
        """The position read: "last" (next token after the prompt) or "all" (every one)."""
        return self._position

    @position.setter
    def position(self, value: str) -> None:
        if value not in LM_POSITIONS:
            raise InputError(
                f"got position={value!r}; use 'last' (the next token after the prompt) or "
                "'all' (every next token of the text, teacher-forced)"
            )
        self._position = value
        self.output_positions = 1 if value == "last" else (self.max_length or 512)

    @classmethod
    def from_checkpoint(
        cls, model: nn.Module, checkpoint: Checkpoint, space: InputSpace
    ) -> CausalLMClassifier:
        """Wrap ``model`` with its tokenizer; the labels are the vocabulary.

        Raises:
            ModelLoadError: no tokenizer, or one with neither a padding nor an end token.
        """
        tokenizer = _load_tokenizer(checkpoint.name, checkpoint.hub_kwargs)
        size = model.get_output_embeddings().weight.shape[0]
        pad = tokenizer.pad_token_id
        if pad is None or pad >= size:  # none, or one the model has no embedding for
            if tokenizer.eos_token is None:
                raise ModelLoadError(
                    f"the tokenizer of {checkpoint.name!r} has neither a padding nor an "
                    "end-of-sequence token, so batches cannot be padded; set tokenizer.pad_token "
                    "and save it"
                )
            tokenizer.pad_token = tokenizer.eos_token
        common = {**checkpoint.common, "id2label": _vocabulary(tokenizer, size)}
        return cls(model, tokenizer=tokenizer, input_space=space, input_shape=None, **common)

    def __call__(self, inputs: Tensor, **context: Tensor) -> Tensor:
        """(N, V) next-token logits after each prompt, or (N, L, V) for ``position="all"``."""
        attention = context.get("attention_mask")
        if attention is None:
            attention = torch.ones(inputs.shape[:2], dtype=torch.long, device=inputs.device)
        if self.position == "last":
            return self._last_logits(inputs, attention.long(), context)
        logits = self._model_logits(inputs, context)
        mask = context.get(_OUTPUT_MASK)
        mask = self._output_positions(None, attention.long()) if mask is None else mask
        return logits * mask[:, :, None].to(logits.dtype)

    def _last_logits(self, inputs: Tensor, attention: Tensor, context: dict) -> Tensor:
        """Logits after each prompt's last real token; the output layer runs there only."""
        last = attention.sum(dim=1).clamp_min(1) - 1
        rows = torch.arange(len(last), device=last.device)
        if not self._keeps_logits:
            return self._model_logits(inputs, context)[rows, last]
        kept, which = torch.unique(last, return_inverse=True)  # the distinct last positions
        logits = self._model_logits(inputs, {**context, "logits_to_keep": kept})
        return logits[rows, which]

    def _output_positions(self, ids: Tensor | None, attention: Tensor) -> Tensor:
        """Position t counts when token t+1 is a real token of the text."""
        following = torch.zeros_like(attention)
        following[:, :-1] = attention[:, 1:]
        return following * attention

    def outputs_info(self) -> dict:
        """``{"kind": "next-token", "position": "last" | "all"}``."""
        return {"kind": "next-token", "position": self.position}

    def output_mask(self, batch: PreparedBatch) -> Tensor | None:
        """None for ``position="last"`` (one output), else the teacher-forced positions."""
        return None if self.position == "last" else super().output_mask(batch)

    def output_targets(self, batch: PreparedBatch) -> Tensor | None:
        """(N, L) the next token of each position (``position="all"``), for its accuracy."""
        ids = batch.context.get(_INPUT_IDS)
        if self.position == "last" or ids is None:
            return None
        targets = torch.full_like(ids, -1)
        targets[:, :-1] = ids[:, 1:]
        return targets


class TokenClassifier(_StructuredText):
    """A token classifier (NER, POS tagging): a categorical label per token.

    The Fisher is the sum over the tokens that get a label: padding and the tokenizer's special
    tokens ([CLS], [SEP], <s>, ...) are excluded, since their predictions are not labels
    (training sets mark them -100). They stay in the input space: perturbing their embeddings
    is still a perturbation of the input.
    """

    @classmethod
    def from_checkpoint(
        cls, model: nn.Module, checkpoint: Checkpoint, space: InputSpace
    ) -> TokenClassifier:
        """Wrap ``model`` with its tokenizer (which must have a padding token)."""
        classifier = super().from_checkpoint(model, checkpoint, space)
        classifier.output_positions = classifier.max_length or 512
        return classifier

    def outputs_info(self) -> dict:
        """``{"kind": "tokens"}``: one label per non-special token."""
        return {"kind": "tokens"}

    def __call__(self, inputs: Tensor, **context: Tensor) -> Tensor:  # -> (N, L, K)
        """Token logits; positions outside the output mask are held at zero."""
        logits = self._model_logits(inputs, context)
        mask = context.get(_OUTPUT_MASK, context.get("attention_mask"))
        return logits if mask is None else logits * mask[:, :, None].to(logits.dtype)

    def _output_positions(self, ids: Tensor, attention: Tensor) -> Tensor:
        special = torch.tensor(self.tokenizer.all_special_ids, device=ids.device)
        return attention * ~torch.isin(ids, special)


class SegmentationClassifier(ImageClassifier):
    """A semantic segmenter: a categorical label per output pixel, measured in pixel space.

    The Fisher is the sum over the pixels of the model's own output grid (SegFormer: a quarter
    of the input resolution), not upsampled to the input size: upsampling is a fixed bilinear
    map chosen by the post-processing, and summing over upsampled pixels would weight each
    logit by how many input pixels it is interpolated into (16x the positions, mostly
    duplicates). :attr:`output_grid` is the (h, w) of that grid; position t is pixel
    ``(t // w, t % w)``.
    """

    position_summaries = True

    @classmethod
    def from_checkpoint(
        cls, model: nn.Module, checkpoint: Checkpoint, space: InputSpace
    ) -> SegmentationClassifier:
        """Wrap ``model`` with its image processor; read its output grid from one forward."""
        classifier = super().from_checkpoint(model, checkpoint, space)
        zeros = torch.zeros(1, *classifier.input_shape, device=classifier.device)
        with torch.no_grad():
            raw = _logits_of(model(pixel_values=zeros.to(classifier.dtype)), type(model).__name__)
        if raw.ndim != 4:
            raise ModelLoadError(
                f"{checkpoint.name!r} returned logits of shape {tuple(raw.shape)}; a semantic "
                "segmentation model returns (N, K, h, w)"
            )
        classifier.output_grid = (int(raw.shape[2]), int(raw.shape[3]))
        classifier.output_positions = raw.shape[2] * raw.shape[3]
        return classifier

    def outputs_info(self) -> dict:
        """``{"kind": "pixels", "grid": [h, w]}``: the output grid, row-major."""
        return {"kind": "pixels", "grid": list(self.output_grid)}

    def __call__(self, inputs: Tensor, **context: Tensor) -> Tensor:  # -> (N, h w, K)
        """Per-pixel logits of the output grid, row-major."""
        logits = super().__call__(inputs, **context)  # (N, K, h, w)
        return logits.flatten(2).transpose(1, 2)

    def output_mask(self, batch: PreparedBatch) -> Tensor | None:
        """None: every output pixel counts."""
        return None


def _load_tokenizer(name: str, hub_kwargs: dict) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, **hub_kwargs)
    except Exception as error:  # noqa: BLE001
        raise ModelLoadError(
            f"found no tokenizer for {name!r} ({str(error).splitlines()[0]}); save the "
            "model's tokenizer next to it with tokenizer.save_pretrained(directory)"
        ) from error
