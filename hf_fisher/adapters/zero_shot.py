"""Zero-shot image classifiers: CLIP-style dual encoders scored against fixed label prompts.

Each candidate label becomes a prompt (``hypothesis_template.format(label)``, as transformers'
zero-shot image classification pipeline does); the prompts are encoded once and held fixed, so
the classifier is a map from pixels to K logits, the model's own scaled cosine similarities

    z_k(x) = exp(logit_scale) * cos(f_image(x), f_text(prompt_k)),

and the Fisher information is over the image pixels (the processor's normalisation folded in,
as for :class:`~hf_fisher.adapters.image.ImageClassifier`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from hf_fisher.adapters.base import Checkpoint, InputSpace, _check_batch_shape
from hf_fisher.adapters.image import ImageClassifier
from hf_fisher.errors import ModelLoadError
from hf_fisher.options import DEFAULT_HYPOTHESIS_TEMPLATE


def _embeds(output: Any) -> Tensor:
    """Projected features: a tensor, or the ``pooler_output`` of a model output."""
    return output if isinstance(output, Tensor) else output.pooler_output


class ZeroShotImageClassifier(ImageClassifier):
    """A dual encoder whose logits are scaled similarities to fixed candidate-label prompts.

    Attributes:
        candidate_labels: the K class names (also ``id2label``).
        hypothesis_template: the prompt, with ``{}`` where the label goes.
        prompts: the K prompts encoded.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        tokenizer: Any,
        candidate_labels: Sequence[str],
        hypothesis_template: str = DEFAULT_HYPOTHESIS_TEMPLATE,
        **kwargs: Any,
    ) -> None:
        self.tokenizer = tokenizer
        self.candidate_labels = list(candidate_labels)
        self.hypothesis_template = hypothesis_template
        self.prompts = [hypothesis_template.format(label) for label in self.candidate_labels]
        kwargs["id2label"] = dict(enumerate(self.candidate_labels))
        super().__init__(model, **kwargs)

    @classmethod
    def from_checkpoint(
        cls, model: nn.Module, checkpoint: Checkpoint, space: InputSpace
    ) -> ZeroShotImageClassifier:
        """Wrap ``model`` with its image processor, its tokenizer and the candidate labels.

        Raises:
            ModelLoadError: no image processor (pixel space) or no tokenizer.
        """
        from transformers import AutoTokenizer

        image = ImageClassifier.from_checkpoint(model, _vision_checkpoint(checkpoint), space)
        try:
            tokenizer = AutoTokenizer.from_pretrained(checkpoint.name, **checkpoint.hub_kwargs)
        except Exception as error:  # noqa: BLE001
            raise ModelLoadError(
                f"found no tokenizer for {checkpoint.name!r} ({str(error).splitlines()[0]}); a "
                "zero-shot model encodes its label prompts: save the tokenizer (or the whole "
                "processor) next to the model with save_pretrained(directory)"
            ) from error
        options = checkpoint.task_options
        return cls(
            model,
            tokenizer=tokenizer,
            candidate_labels=options["candidate_labels"],
            hypothesis_template=options["hypothesis_template"],
            processor=image.processor,
            pixel_scale=image.pixel_scale,
            mean=image._mean_values,
            std=image._std_values,
            input_space=space,
            input_shape=image.input_shape,
            **{key: value for key, value in checkpoint.common.items() if key != "id2label"},
        )

    def _move_buffers(self) -> None:
        """Normalisation constants, and the prompt features re-encoded in the new dtype."""
        super()._move_buffers()
        encoding = self.tokenizer(self.prompts, padding=True, return_tensors="pt")
        with torch.no_grad():
            text = _embeds(
                self.model.get_text_features(
                    input_ids=encoding["input_ids"].to(self.device),
                    attention_mask=encoding["attention_mask"].to(self.device),
                )
            ).to(self.dtype)
            self._text = text / text.norm(dim=-1, keepdim=True)  # (K, D)
            self._scale = self.model.logit_scale.detach().to(self.dtype).exp()

    def __call__(self, inputs: Tensor, **context: Tensor) -> Tensor:  # (N, C, H, W) -> (N, K)
        """Return ``exp(logit_scale) * cos(image, prompt_k)``; normalisation first in pixels."""
        _check_batch_shape(inputs, self.input_shape)
        values = self.normalize(inputs) if self.input_space == "pixels" else inputs
        image = _embeds(self.model.get_image_features(pixel_values=values))
        image = image / image.norm(dim=-1, keepdim=True)
        return self._scale * image @ self._text.T


def _vision_checkpoint(checkpoint: Checkpoint) -> Checkpoint:
    """The checkpoint as an image classifier sees it: the vision config's channels and size."""
    vision = getattr(checkpoint.config, "vision_config", checkpoint.config)
    return Checkpoint(checkpoint.name, vision, checkpoint.hub_kwargs, checkpoint.common)
