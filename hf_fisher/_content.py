"""Content fingerprints of a run's model and dataset, so ``--resume`` notices changed files.

A path names a place, not a content: weights retrained into the same folder or a dataset
replaced at the same path must not be mixed with records of the old ones. Files are hashed by
content (SHA-256, streamed in 1 MiB blocks); a size + modification-time stamp is not enough
(copies and restores keep both, and equal sizes are common for weights).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

BLOCK = 1 << 20
SKIPPED_SUFFIXES = (".md",)  # model cards do not change the numbers


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in blocks (weights can be many GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _visible_files(directory: Path, recursive: bool) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    files = []
    for path in directory.glob(pattern):
        relative = path.relative_to(directory)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue  # .git, .cache, editor swap files: not part of the content
        files.append(path)
    return sorted(files, key=lambda path: path.relative_to(directory).as_posix())


def directory_digest(directory: str | os.PathLike) -> dict[str, Any]:
    """One SHA-256 over every visible file below ``directory`` (names and contents)."""
    directory = Path(directory)
    digest = hashlib.sha256()
    files = _visible_files(directory, recursive=True)
    for path in files:
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(sha256_file(path).encode())
    return {"sha256": digest.hexdigest(), "num_files": len(files)}


def model_files_digest(directory: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of each file a checkpoint folder holds (weights, config, processor, tokenizer).

    Per file, so that a refused resume can say which one changed.
    """
    directory = Path(directory)
    return {
        path.name: sha256_file(path)
        for path in _visible_files(directory, recursive=False)
        if not path.name.lower().endswith(SKIPPED_SUFFIXES)
    }


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def state_dict_digest(module: torch.nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a module's parameters and buffers."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\0".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def _hub_snapshot(name: str, revision: str | None) -> Path | None:
    """The local snapshot folder of a cached Hub checkpoint, if there is one."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - not a Hub id, or no cache: no snapshot
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def model_content(model: Any, module: torch.nn.Module, revision: str | None = None) -> dict:
    """What the evaluated weights are, by content.

    Per-file hashes of the checkpoint folder (a local directory or the cached Hub snapshot),
    else the hash of the loaded parameters (in-memory modules, uncached Hub checkpoints).
    """
    if isinstance(model, (str, os.PathLike)):
        path = Path(model).expanduser()
        folder = path if path.is_dir() else _hub_snapshot(str(model), revision)
        if folder is not None:
            return {"files": model_files_digest(folder)}
    return {"state_dict_sha256": state_dict_digest(module)}


def dataset_content(dataset: Any, rows: Any) -> dict:
    """What the evaluated rows are, by content.

    A content hash of local files or in-memory tensors, else the ``datasets`` fingerprint
    (content-derived for in-memory data, revision-derived for Hub datasets).
    """
    if isinstance(dataset, (str, os.PathLike)) and Path(dataset).exists():
        path = Path(dataset)
        if path.is_dir():
            return directory_digest(path)
        return {"sha256": sha256_file(path), "num_files": 1}
    inputs = getattr(rows, "inputs", None)
    if isinstance(inputs, torch.Tensor):  # an in-memory tensor dataset (InMemoryRows)
        digest = hashlib.sha256(f"{inputs.dtype}|{tuple(inputs.shape)}\0".encode())
        digest.update(_tensor_bytes(inputs))
        labels = getattr(rows, "labels", None)
        digest.update(repr(None if labels is None else [int(x) for x in labels]).encode())
        return {"sha256": digest.hexdigest()}
    fingerprint = getattr(rows, "_fingerprint", None)
    return {"fingerprint": fingerprint}
