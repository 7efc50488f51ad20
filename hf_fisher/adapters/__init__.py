"""Adapters: a Hub id, local directory or nn.Module becomes a differentiable map to logits.

The only place in hf-fisher that touches transformers models, processors and tokenizers:

- :mod:`~hf_fisher.adapters.base`: :class:`PreparedBatch`, :class:`InputSpace` (with its clip
  box and the companion measurements that apply), the :class:`Classifier` contract, shared
  checks and the determinism probe.
- :mod:`~hf_fisher.adapters.image`, :mod:`~hf_fisher.adapters.text`,
  :mod:`~hf_fisher.adapters.module`: one adapter per kind of input;
  :mod:`~hf_fisher.adapters.structured`: causal LMs, token classifiers and segmenters (a
  categorical at each of several output positions).
- :mod:`~hf_fisher.adapters.tasks`: the task registry mapping a checkpoint's config to its
  adapter, input spaces and model class; a new task family is one :func:`register_task` call.
- :mod:`~hf_fisher.adapters.hub`: :func:`load_classifier` and the other transformers entry
  points the rest of the package uses.
"""

from hf_fisher.adapters.base import (
    COMPANIONS,
    EMBEDDINGS,
    NORMALIZED,
    PIXELS,
    RAW,
    SPACES,
    BatchLogits,
    Checkpoint,
    Classifier,
    InputSpace,
    PreparedBatch,
    eval_mode,
)
from hf_fisher.adapters.hub import is_pipeline, load_classifier, quiet_transformers
from hf_fisher.adapters.image import ImageClassifier
from hf_fisher.adapters.module import ModuleClassifier
from hf_fisher.adapters.structured import (
    CausalLMClassifier,
    SegmentationClassifier,
    TokenClassifier,
)
from hf_fisher.adapters.tasks import TASKS, Refusal, Task, register_task, task_of
from hf_fisher.adapters.text import TextClassifier
from hf_fisher.adapters.text import _max_text_length as _max_text_length  # tests import it here

__all__ = [
    "COMPANIONS",
    "EMBEDDINGS",
    "NORMALIZED",
    "PIXELS",
    "RAW",
    "SPACES",
    "TASKS",
    "BatchLogits",
    "CausalLMClassifier",
    "Checkpoint",
    "Classifier",
    "ImageClassifier",
    "InputSpace",
    "ModuleClassifier",
    "PreparedBatch",
    "Refusal",
    "SegmentationClassifier",
    "Task",
    "TextClassifier",
    "TokenClassifier",
    "eval_mode",
    "is_pipeline",
    "load_classifier",
    "quiet_transformers",
    "register_task",
    "task_of",
]
