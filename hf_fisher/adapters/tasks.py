"""The task registry: which checkpoints hf-fisher measures, and with which adapter.

A task family is one :class:`Task` entry: how to recognise its checkpoints (an architecture
name pattern, and model types for configs without ``architectures``), the transformers class
that loads them, the adapter class that prepares raw inputs and maps them to logits, and the
input spaces it can be measured in, each with its clip box and the companion measurements that
apply. Supporting a new family (a causal LM scored over label tokens, a zero-shot CLIP) is one
:func:`register_task` call plus, if no existing adapter fits, one adapter class.

Checkpoints hf-fisher must refuse rather than measure wrongly are :class:`Refusal` entries,
checked first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

from hf_fisher.adapters.base import EMBEDDINGS, NORMALIZED, PIXELS, RAW, Classifier, InputSpace
from hf_fisher.adapters.image import ImageClassifier
from hf_fisher.adapters.module import ModuleClassifier
from hf_fisher.adapters.structured import (
    CausalLMClassifier,
    SegmentationClassifier,
    TokenClassifier,
)
from hf_fisher.adapters.text import TextClassifier
from hf_fisher.adapters.zero_shot import ZeroShotImageClassifier
from hf_fisher.errors import InputError, ModelLoadError, NotAClassifierError
from hf_fisher.options import DEFAULT_HYPOTHESIS_TEMPLATE, check_candidate_labels


def likelihood_of(config: Any) -> str:
    """Return "bernoulli" for a multi-label config (``problem_type``), else "categorical"."""
    problem_type = getattr(config, "problem_type", None)
    return "bernoulli" if problem_type == "multi_label_classification" else "categorical"


def _no_model_types() -> Container[str]:
    return ()


def _no_task_options(options: dict, name: str) -> dict:
    """A task with its own head takes no candidate labels (they would be silently ignored)."""
    if options.get("candidate_labels") is not None:
        raise InputError(
            f"got candidate labels for {name!r}, which has its own classification head (its "
            "classes are its id2label); candidate labels are for zero-shot models such as "
            "CLIP: drop --candidate-labels"
        )
    return {}


def _zero_shot_options(options: dict, name: str) -> dict:
    template = options.get("hypothesis_template") or DEFAULT_HYPOTHESIS_TEMPLATE
    labels = check_candidate_labels(options.get("candidate_labels"), template, repr(name))
    return {"candidate_labels": labels, "hypothesis_template": template}


def _categorical(config: Any) -> str:
    return "categorical"


def _image_model_types() -> Container[str]:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    )

    return MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES


def _text_model_types() -> Container[str]:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    return MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES


@dataclass(frozen=True)
class Task:
    """One task family: how to recognise its checkpoints and which adapter measures them.

    Attributes:
        name: the task, recorded as ``source["task"]`` (e.g. "image-classification").
        adapter: the :class:`~hf_fisher.adapters.base.Classifier` subclass that wraps the model
            (its ``from_checkpoint`` builds it with its processor or tokenizer, its ``prepare``
            turns raw inputs into a batch in the input space).
        model_class: the class whose ``from_pretrained`` loads the weights: the name of a
            transformers class (e.g. "AutoModelForImageClassification") or the class itself;
            None for plain modules, which are never loaded.
        spaces: the input spaces the task can be measured in, the default first; each carries
            its clip box and its capabilities (the companion measurements that apply).
        architecture: a regular expression searched in each of ``config.architectures``.
        example: the architecture pattern as users know it, for error messages.
        model_types: the ``config.model_type`` values of the task, tried when the config has no
            ``architectures`` (a function, so transformers is imported only when needed).
        description: what the model is, for error messages ("image classifier").
        likelihood: the config -> "categorical" or "bernoulli" rule.
        check_options: ``(task_options, name) -> task_options`` checked before the weights
            load (raises a typed error naming the flag); the result reaches the adapter as
            ``Checkpoint.task_options``.
    """

    name: str
    adapter: type[Classifier]
    model_class: str | type | None
    spaces: tuple[InputSpace, ...]
    architecture: str | None = None
    example: str = ""
    model_types: Callable[[], Container[str]] = _no_model_types
    description: str = "classifier"
    likelihood: Callable[[Any], str] = likelihood_of
    check_options: Callable[[dict, str], dict] = _no_task_options

    @property
    def default_space(self) -> InputSpace:
        """The input space used when none is asked for."""
        return self.spaces[0]

    def space(self, input_space: str | None, what: str) -> InputSpace:
        """The space named ``input_space`` (default: the first); ``what`` names the model.

        Raises:
            ModelLoadError: the task cannot be measured in that space.
        """
        names = [space.name for space in self.spaces]
        if input_space is None:
            return self.default_space
        if input_space not in names:
            raise ModelLoadError(f"got input_space={input_space!r} for {what}; use one of {names}")
        return self.spaces[names.index(input_space)]

    def matches_architecture(self, architecture: str) -> bool:
        """Whether a ``config.architectures`` entry belongs to this task."""
        return (
            self.architecture is not None and re.search(self.architecture, architecture) is not None
        )

    def load_model_class(self) -> Any:
        """The class whose ``from_pretrained`` loads this task's checkpoints."""
        if isinstance(self.model_class, str):
            import transformers

            return getattr(transformers, self.model_class)
        return self.model_class


@dataclass(frozen=True)
class Refusal:
    """Checkpoints that look like a task but must not be measured, and why.

    Attributes:
        matches: config -> whether to refuse it.
        reason: the error message; ``{name}`` is replaced by the quoted checkpoint name.
    """

    matches: Callable[[Any], bool]
    reason: str


IMAGE_CLASSIFICATION = Task(
    name="image-classification",
    adapter=ImageClassifier,
    model_class="AutoModelForImageClassification",
    spaces=(PIXELS, NORMALIZED),
    architecture="ForImageClassification",
    example="*ForImageClassification",
    model_types=_image_model_types,
    description="image classifier",
)
TEXT_CLASSIFICATION = Task(
    name="text-classification",
    adapter=TextClassifier,
    model_class="AutoModelForSequenceClassification",
    spaces=(EMBEDDINGS,),
    architecture="ForSequenceClassification$",
    example="*ForSequenceClassification",
    model_types=_text_model_types,
    description="text classifier",
)


def _mapping_names(name: str) -> Callable[[], Container[str]]:
    """The model types of one of transformers' auto mappings, read only when needed."""

    def names() -> Container[str]:
        from transformers.models.auto import modeling_auto

        return getattr(modeling_auto, name)

    return names


# Structured outputs: no companion measurement handles a product over positions (yet).
STRUCTURED_EMBEDDINGS = InputSpace("embeddings", None, frozenset())
STRUCTURED_PIXELS = InputSpace("pixels", (0.0, 1.0), frozenset())

CAUSAL_LM = Task(
    name="text-generation",
    adapter=CausalLMClassifier,
    model_class="AutoModelForCausalLM",
    spaces=(STRUCTURED_EMBEDDINGS,),
    architecture="(ForCausalLM|LMHeadModel)$",
    example="*ForCausalLM",
    model_types=_mapping_names("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    description="causal language model",
    likelihood=_categorical,
)
"""Causal LMs: the next-token distribution after the prompt (or every next token of a text)."""

TOKEN_CLASSIFICATION = Task(
    name="token-classification",
    adapter=TokenClassifier,
    model_class="AutoModelForTokenClassification",
    spaces=(STRUCTURED_EMBEDDINGS,),
    architecture="ForTokenClassification$",
    example="*ForTokenClassification",
    model_types=_mapping_names("MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES"),
    description="token classifier",
    likelihood=_categorical,
)
SEMANTIC_SEGMENTATION = Task(
    name="image-segmentation",
    adapter=SegmentationClassifier,
    model_class="AutoModelForSemanticSegmentation",
    spaces=(STRUCTURED_PIXELS,),
    architecture="ForSemanticSegmentation$",
    example="*ForSemanticSegmentation",
    model_types=_mapping_names("MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES"),
    description="semantic segmentation model",
    likelihood=_categorical,
)

ZERO_SHOT_IMAGE_CLASSIFICATION = Task(
    name="zero-shot-image-classification",
    adapter=ZeroShotImageClassifier,
    model_class="AutoModel",
    spaces=(PIXELS, NORMALIZED),
    architecture="^CLIPModel$",  # tested on CLIP; other dual encoders may register alike
    example="CLIPModel (with --candidate-labels)",
    description="zero-shot image model",
    likelihood=_categorical,  # a softmax over the candidates, as the zero-shot pipeline
    check_options=_zero_shot_options,
)
"""A CLIP-style dual encoder, scored against fixed prompts of ``candidate_labels``."""

MODULE = Task(name="module", adapter=ModuleClassifier, model_class=None, spaces=(RAW,))
"""A plain ``nn.Module``: never matched from a config, wrapped as given."""

TASKS: list[Task] = [
    IMAGE_CLASSIFICATION,
    TEXT_CLASSIFICATION,
    CAUSAL_LM,
    TOKEN_CLASSIFICATION,
    SEMANTIC_SEGMENTATION,
    ZERO_SHOT_IMAGE_CLASSIFICATION,
]
"""The registry, searched in order: the first entry whose pattern matches wins."""

def _is_regression(config: Any) -> bool:
    """Whether the config declares a regression head.

    ``problem_type="regression"``, or one output with no problem type (transformers then trains
    it as a regression head with a squared-error loss).
    """
    problem_type = getattr(config, "problem_type", None)
    single_output = getattr(config, "num_labels", None) == 1 and problem_type is None
    return problem_type == "regression" or single_output


REFUSALS: list[Refusal] = [
    Refusal(
        matches=_is_regression,
        reason="{name} is a regression model (problem_type 'regression', or num_labels=1): "
        "its outputs are real values, not class scores, so there is no label distribution "
        "whose Fisher information hf-fisher measures. Its Fisher depends on a noise model "
        "that the checkpoint does not state (Gaussian noise of variance s2 gives J^T J / s2, "
        "whose scale is s2 itself), and accuracy is undefined; hf-fisher measures single- "
        "and multi-label classifiers",
    ),
]


def register_task(task: Task) -> Task:
    """Add a task family ahead of the built-in ones (so it can also override them); return it.

    >>> from hf_fisher.adapters.base import PIXELS
    >>> toy = Task("toy", ImageClassifier, "AutoModelForImageClassification", (PIXELS,), "^Toy")
    >>> register_task(toy) is TASKS[0]
    True
    >>> TASKS.remove(toy)
    """
    TASKS.insert(0, task)
    return task


def task_of(config: Any, name: str) -> Task:
    """The registered task of a checkpoint's config.

    Raises:
        NotAClassifierError: a refused checkpoint (e.g. regression), or one no task matches.
    """
    for refusal in REFUSALS:
        if refusal.matches(config):
            raise NotAClassifierError(refusal.reason.format(name=repr(name)))
    architectures = getattr(config, "architectures", None) or []
    for architecture in architectures:
        for task in TASKS:
            if task.matches_architecture(architecture):
                return task
    if architectures:
        examples = " or ".join(task.example for task in TASKS if task.example)
        raise NotAClassifierError(
            f"{name!r} holds a {architectures[0]}, which is not a classifier; hf-fisher needs "
            f"a checkpoint with a classification head (an {examples} model): fine-tune one and "
            "save it with save_pretrained"
        )
    model_type = getattr(config, "model_type", None)
    for task in TASKS:
        if model_type in task.model_types():
            return task
    raise NotAClassifierError(
        f"{name!r} has a {type(config).__name__} (model_type {model_type!r}) with no "
        f"{' or '.join(task.name for task in TASKS)} model in transformers; hf-fisher needs a "
        "classifier"
    )


__all__ = [
    "CAUSAL_LM",
    "IMAGE_CLASSIFICATION",
    "MODULE",
    "REFUSALS",
    "SEMANTIC_SEGMENTATION",
    "TASKS",
    "TOKEN_CLASSIFICATION",
    "TEXT_CLASSIFICATION",
    "ZERO_SHOT_IMAGE_CLASSIFICATION",
    "Refusal",
    "Task",
    "likelihood_of",
    "register_task",
    "task_of",
]
