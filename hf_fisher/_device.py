"""Device plumbing: host-to-GPU copies of input batches, and the TF32 switch of a run.

Two things a CUDA run does differently from a CPU run, kept in one place so that the CPU path
stays exactly what it was:

- :func:`to_device` copies a CPU tensor to a CUDA device from pinned (page-locked) memory with
  ``non_blocking=True``, so the copy is asynchronous and the host queues the next kernels while
  it runs. Any other move (CPU to CPU, GPU to GPU, GPU to CPU) is a plain ``Tensor.to``.
- :func:`tf32_mode` allows (or forbids) TensorFloat-32 in float32 matrix products and cuDNN
  convolutions for one block and restores the caller's flags afterwards. TF32 keeps float32's
  range but rounds the multiplicands to a 10-bit mantissa: ~3x the matrix throughput of strict
  float32 on Ampere and later GPUs, at ~1e-3 relative error in a product. The flags only act on
  CUDA kernels; on a CPU the switch is recorded and has no effect.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor


def copy_options(source: torch.device, target: torch.device) -> dict[str, bool]:
    """How to copy a tensor from ``source`` to ``target``: pinned and non-blocking host-to-GPU.

    >>> copy_options(torch.device("cpu"), torch.device("cuda", 0))
    {'pin_memory': True, 'non_blocking': True}
    >>> copy_options(torch.device("cpu"), torch.device("cpu"))
    {'pin_memory': False, 'non_blocking': False}
    """
    asynchronous = source.type == "cpu" and target.type == "cuda"
    return {"pin_memory": asynchronous, "non_blocking": asynchronous}


def to_device(
    tensor: Tensor, device: torch.device | str, dtype: torch.dtype | None = None
) -> Tensor:
    """``tensor`` on ``device`` (and in ``dtype``); CPU to CUDA copies go through pinned memory.

    The cast happens on the target device, after the copy, so a uint8 batch crosses the bus as
    uint8. Moves that involve no CUDA device are exactly ``tensor.to(device=..., dtype=...)``.

    >>> to_device(torch.ones(2, dtype=torch.int64), "cpu", torch.float64)
    tensor([1., 1.], dtype=torch.float64)
    """
    device = torch.device(device)
    options = copy_options(tensor.device, device)
    if not options["non_blocking"]:
        return tensor.to(device=device, dtype=dtype)
    if not tensor.is_pinned():
        tensor = tensor.pin_memory()
    moved = tensor.to(device=device, non_blocking=True)
    return moved if dtype is None else moved.to(dtype)


def tf32_state() -> tuple[bool, bool]:
    """The current (matmul, cuDNN) TF32 flags of torch."""
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@contextmanager
def tf32_mode(enabled: bool) -> Iterator[None]:
    """Allow TF32 in CUDA float32 matmuls and convolutions (or forbid it) inside the block.

    ``enabled=False`` is strict float32 everywhere: it also turns off cuDNN's TF32
    convolutions, which torch allows by default. The previous flags come back on exit, also
    when the block raises.

    >>> with tf32_mode(True):
    ...     tf32_state()
    (True, True)
    >>> with tf32_mode(False):
    ...     tf32_state()
    (False, False)
    """
    before = tf32_state()
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
