"""Loading: a Hub id, local directory, nn.Module or Classifier becomes a Classifier.

Checkpoints are matched to a task family in :mod:`hf_fisher.adapters.tasks`, loaded with that
task's transformers class (eager attention, eval mode, frozen) and wrapped by its adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hf_fisher.adapters.base import Checkpoint, Classifier, _default_device, _determinism_check
from hf_fisher.adapters.module import wrap_module
from hf_fisher.adapters.structured import LM_POSITIONS, CausalLMClassifier
from hf_fisher.adapters.tasks import MODULE, Task, task_of
from hf_fisher.errors import InputError, ModelLoadError, NotAClassifierError
from hf_fisher.operators import LIKELIHOODS


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
    candidate_labels: Sequence[str] | None = None,
    hypothesis_template: str | None = None,
    position: str | None = None,
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
        candidate_labels: the class names a zero-shot model (a CLIP-style dual encoder) scores
            each image against; required for those, refused for models with their own head.
        hypothesis_template: the prompt of each candidate label, with ``{}`` where the label
            goes (default "This is a photo of {}.", as transformers' zero-shot pipeline).
        position: causal language models only: "last" (default: the next token after the
            prompt) or "all" (every next token of the text, teacher-forced).

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
    _check_load_arguments(model, dtype, likelihood, position, candidate_labels)
    task_options = {
        "candidate_labels": candidate_labels,
        "hypothesis_template": hypothesis_template,
    }
    if isinstance(model, Classifier):
        _set_position(model, position)
        if likelihood is not None:
            model.likelihood = likelihood
        if device is None and dtype is None:
            return model
        return model.to(device, dtype)
    if isinstance(model, nn.Module):
        space = MODULE.space(input_space, f"the nn.Module {type(model).__name__}")
        classifier = wrap_module(model, space, device, dtype, input_shape)
        classifier.likelihood = MODULE.likelihood(getattr(model, "config", None))
    elif isinstance(model, (str, Path)):
        classifier = _load_pretrained(
            str(model), input_space, device, dtype, revision, trust_remote_code, task_options
        )
    else:
        raise ModelLoadError(
            f"got a model of type {type(model).__name__}; pass a Hub id, a directory saved with "
            "save_pretrained, an nn.Module that returns logits, or a Classifier"
        )
    if likelihood is not None:
        classifier.likelihood = likelihood
    _set_position(classifier, position)
    return classifier


def _check_load_arguments(
    model: Any,
    dtype: torch.dtype | None,
    likelihood: str | None,
    position: str | None,
    candidate_labels: Sequence[str] | None,
) -> None:
    """Refuse argument values ``load_classifier`` cannot use, before anything loads."""
    if dtype is not None and not dtype.is_floating_point:
        raise ModelLoadError(f"got dtype={dtype}; pass a floating dtype such as torch.float32")
    if likelihood is not None and likelihood not in LIKELIHOODS:
        raise ModelLoadError(
            f"got likelihood={likelihood!r}; use 'categorical' (softmax, one label per input) or "
            "'bernoulli' (independent sigmoids, multi-label)"
        )
    if candidate_labels is not None and not isinstance(model, (str, Path)):
        raise InputError(
            f"got candidate labels for a {type(model).__name__}; they are for zero-shot "
            "checkpoints (a CLIP directory or Hub id), which load_classifier encodes itself"
        )
    if position is not None and position not in LM_POSITIONS:
        raise ModelLoadError(
            f"got position={position!r}; use 'last' (the next token after the prompt) or 'all' "
            "(every next token of the text, teacher-forced)"
        )


def _set_position(classifier: Classifier, position: str | None) -> None:
    """Set a causal LM's ``position``; refuse it for any other model."""
    if position is None:
        return
    if not isinstance(classifier, CausalLMClassifier):
        raise ModelLoadError(
            f"position={position!r} applies to causal language models only; "
            f"{classifier.source.get('id')!r} is a {classifier.source.get('task') or 'module'} "
            "model: leave position out"
        )
    classifier.position = position


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


def _read_config(name: str, hub_kwargs: dict) -> Any:
    """The checkpoint's transformers config; every failure becomes one typed, chained error."""
    from transformers import AutoConfig

    is_local = Path(name).expanduser().is_dir()
    if not is_local and Path(name).expanduser().exists():
        raise ModelLoadError(
            f"{name!r} is a file; pass the directory that save_pretrained wrote, or a Hub id"
        )
    try:
        return AutoConfig.from_pretrained(name, **hub_kwargs)
    except Exception as error:  # noqa: BLE001 - every failure becomes one typed, chained error
        if is_local:
            raise ModelLoadError(
                f"could not read a model config from the directory {name!r} ({error}); pass a "
                "directory written by save_pretrained (it must hold config.json)"
            ) from error
        raise ModelLoadError(
            f"could not find the model {name!r} locally or on the Hugging Face Hub "
            f"(revision {hub_kwargs['revision']!r}): {str(error).splitlines()[0]} Pass a local "
            "directory saved with save_pretrained, check the id and your network, or set "
            "HF_HUB_OFFLINE=1 to load only from the local cache"
        ) from error


def _load_weights(task: Task, name: str, dtype: torch.dtype, hub_kwargs: dict) -> nn.Module:
    """The task's model from the checkpoint: eval mode, frozen (only input gradients are used)."""
    model_class = task.load_model_class()
    try:
        model = _from_pretrained(model_class, name, dtype, **hub_kwargs)
    except NotAClassifierError:
        raise
    except Exception as error:  # noqa: BLE001
        raise ModelLoadError(
            f"could not load the weights of {name!r} as {model_class.__name__} ({error}); check "
            "that the checkpoint is complete (config.json plus model.safetensors)"
        ) from error
    model.eval()  # the loader owns the model: eval mode (dropout off, BatchNorm frozen) ...
    model.requires_grad_(False)  # ... and no weight gradients (only input gradients are used)
    return model


def _load_pretrained(
    name: str,
    input_space: str | None,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
    revision: str | None,
    trust_remote_code: bool,
    task_options: dict,
) -> Classifier:
    """Match the checkpoint to its task, load it, wrap it in the task's adapter and probe it."""
    hub_kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    config = _read_config(name, hub_kwargs)
    task = task_of(config, name)
    task_options = task.check_options(task_options, name)  # before the weights load
    space = task.space(input_space, f"the {task.description} {name!r}")
    device = torch.device(device) if device is not None else _default_device()
    dtype = dtype or torch.float32
    model = _load_weights(task, name, dtype, hub_kwargs).to(device)
    is_local = Path(name).expanduser().is_dir()
    source = {
        "id": name,
        "revision": revision,
        "commit_hash": None if is_local else _commit_hash(name, revision),
        "architecture": type(model).__name__,
        "task": task.name,
    }
    id2label = {int(key): str(value) for key, value in model.config.id2label.items()}
    common = {"id2label": id2label, "source": source, "device": device, "dtype": dtype}
    classifier = task.adapter.from_checkpoint(
        model, Checkpoint(name, config, hub_kwargs, common, task_options), space
    )
    classifier.likelihood = task.likelihood(model.config)
    batch = classifier.probe_batch()
    classifier._num_classes = _determinism_check(
        lambda: classifier(batch.inputs, **batch.context),
        len(batch),
        source["architecture"],
        classifier.model,
    )
    if classifier._num_classes != len(classifier.id2label):  # a causal LM's: its vocabulary
        raise NotAClassifierError(
            f"{name!r} returns {classifier._num_classes} logits but its config names "
            f"{len(classifier.id2label)} labels; fix id2label in config.json"
        )
    return classifier


def quiet_transformers() -> None:
    """Hide transformers' per-load progress bars and backend notices (the command line)."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def is_pipeline(obj: Any) -> bool:
    """Whether ``obj`` is a transformers ``Pipeline`` (save it to a directory to load it)."""
    from transformers import Pipeline

    return isinstance(obj, Pipeline)
