"""A memory budget for every per-sample computation, and chunking that halves on out-of-memory.

At ImageNet size one sample's working memory is large (``exact`` at K=1000 holds 999 gradient
rows of 150,528 floats: 0.6 GB), so a batch of 32 cannot simply be computed at once. The
budget (``--max-memory``) caps the memory the process holds: its RAM, or on CUDA the GPU
memory torch allocated; "auto" is what it holds plus half of the free memory. Each computation
sizes its chunks from what is left under the cap and runs them through :func:`run_in_chunks`,
which halves a chunk whose allocation fails anyway (CUDA out-of-memory, or a CPU allocation
error) and retries. Results do not depend on the chunking because every random draw comes from
a per-sample stream (:mod:`hf_fisher._random`).

Nothing here imports torch at module level: the command line parses ``--max-memory`` before
torch loads.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from hf_fisher.errors import InputError

logger = logging.getLogger(__name__)

AUTO = "auto"
AUTO_SHARE = 0.5
"""The share of the free memory that ``max_memory="auto"`` budgets."""
FALLBACK_BYTES = 4 * 10**9
"""The ``auto`` budget when the free memory cannot be read."""
HEADROOM = 0.85
"""The share of what is left under the cap that chunks are sized to: the rest is for what no
estimate counts (allocator slack and fragmentation, transient gradients, the model's own
temporaries); measured: a kl_check chunk sized to the full 3.75 GB left went 0.24 GB over."""
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$")
_CPU_ALLOCATION_FAILURES = ("can't allocate memory", "could not allocate", "not enough memory")

T = TypeVar("T")


def parse_memory(value: Any) -> int | None:
    """Parse a memory budget: bytes (int), "512MiB", "4GB", "1.5 gb", or "auto" (None).

    Decimal units (kB, MB, GB, TB) are powers of 1000, binary ones (KiB, MiB, GiB, TiB) of 1024.

    >>> parse_memory("4GB"), parse_memory("512MiB"), parse_memory(1024), parse_memory("auto")
    (4000000000, 536870912, 1024, None)

    Raises:
        InputError: anything else, or a budget under one kilobyte.
    """
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    else:
        match = _PATTERN.match(str(value).lower())
        unit = match and _UNITS.get(match.group(2))
        number = int(float(match.group(1)) * unit) if unit else None
    if number is None or number < 1000:
        raise InputError(
            f"max_memory (--max-memory) got {value!r}; pass a budget of at least 1kB like "
            "'4GB', '512MiB' or a number of bytes, or 'auto' (what the process holds plus half "
            "of the free memory)"
        )
    return number


def available_memory(device: Any = "cpu") -> int | None:
    """Free memory in bytes on ``device``: CUDA free memory, else the host's MemAvailable."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil
    except ImportError:
        return _meminfo_available()
    return int(psutil.virtual_memory().available)


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def memory_in_use(device: Any = "cpu") -> int:
    """Bytes this process holds now: CUDA memory allocated by torch, else its resident set."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    try:
        import psutil
    except ImportError:
        return _status_field("VmRSS:")
    return int(psutil.Process().memory_info().rss)


def _status_field(name: str) -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as stream:
            for line in stream:
                if line.startswith(name):
                    return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def resolve_budget(value: Any = AUTO, device: Any = "cpu") -> int:
    """The budget in bytes: a cap on the memory this process holds on ``device``.

    An explicit value is the cap itself; "auto" is what the process holds now plus half of the
    free memory (:data:`AUTO_SHARE`). Computations size their chunks from what is left under
    the cap (:func:`working_memory`).

    >>> resolve_budget("2GB")
    2000000000
    """
    parsed = parse_memory(value)
    if parsed is not None:
        return parsed
    free = available_memory(device)
    share = FALLBACK_BYTES if free is None else int(free * AUTO_SHARE)
    return memory_in_use(device) + max(share, 1)


def working_memory(value: Any = AUTO, device: Any = "cpu") -> int:
    """Bytes a computation may add now: :data:`HEADROOM` of the cap less what the process holds."""
    return max(int((resolve_budget(value, device) - memory_in_use(device)) * HEADROOM), 0)


def format_bytes(count: int) -> str:
    """A short human form, e.g. ``"4.0 GB"``.

    >>> format_bytes(4 * 10**9), format_bytes(512 * 10**6)
    ('4.0 GB', '512.0 MB')
    """
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def chunk_size(budget: int, per_sample: int, count: int) -> int:
    """How many samples fit ``budget`` at ``per_sample`` bytes each: in [1, count].

    >>> chunk_size(10**9, 3 * 10**8, 32), chunk_size(10**6, 10**9, 8), chunk_size(10**12, 1, 5)
    (3, 1, 5)
    """
    return max(1, min(int(count), int(budget // max(int(per_sample), 1))))


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure (CUDA OOM, or a CPU allocator error)."""
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError | MemoryError) and (
        isinstance(error, MemoryError) or any(text in message for text in _CPU_ALLOCATION_FAILURES)
    )


def _release_cached() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_in_chunks(fn: Callable[[slice], T], count: int, size: int, *, what: str = "") -> list[T]:
    """Call ``fn`` on consecutive slices of ``range(count)``, ``size`` at a time; halve on OOM.

    A chunk whose allocation fails is retried at half the size (down to one sample, after
    which the error propagates). ``fn`` must start each chunk afresh (per-sample random
    streams created inside it), so a retried chunk gives what it would have given.

    Returns:
        The results, one per chunk, in order.

    >>> run_in_chunks(lambda part: list(range(10))[part], 10, 4)
    [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    """
    results: list[T] = []
    start, size = 0, max(1, int(size))
    while start < count:
        stop = min(start + size, count)
        try:
            results.append(fn(slice(start, stop)))
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error) or stop - start == 1:
                raise
            size = max(1, (stop - start) // 2)
            _release_cached()
            logger.warning("%sout of memory: retrying with chunks of %d", what, size)
            continue
        start = stop
    return results


def select_rows(logit_fn: Any, index: Any) -> Any:
    """The logit function of the sub-batch at ``index``.

    A batch-bound function (a text batch's, which holds a per-sample attention mask) offers
    ``.select``; a plain function takes any rows and is returned as is.
    """
    select = getattr(logit_fn, "select", None)
    return logit_fn if select is None else select(index)


def forward_footprint(logit_fn: Any, sample: Any) -> tuple[int, int]:
    """Bytes the autograd graph of one forward pass keeps for ``sample`` (1, *shape), and K.

    Counts every tensor saved for backward once (by storage), which is what an input-gradient
    computation holds per sample on top of its own buffers; a no-grad forward holds less.
    Returns ``(bytes, number of classes)``.
    """
    import torch

    seen: dict[int, int] = {}

    def pack(tensor: Any) -> Any:
        try:
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # tensors without a storage
            pass
        return tensor

    leaf = sample.detach().clone().requires_grad_(True)  # its own storage, not a batch's
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        num_classes = int(logit_fn(leaf).shape[-1])
    return int(sum(seen.values())), num_classes


def sample_footprint(logit_fn: Any, inputs: Any) -> tuple[int, int]:
    """Autograd bytes one more sample adds to a forward pass, and K.

    The footprint of three copies of the first sample less that of two: what is saved once per
    pass (the weights a linear layer keeps for its input gradient) cancels. (One row is no
    base: a batch of one can take other kernels that save other tensors.)
    """
    two, num_classes = forward_footprint(select_rows(logit_fn, [0, 0]), inputs[[0, 0]])
    three, _ = forward_footprint(select_rows(logit_fn, [0, 0, 0]), inputs[[0, 0, 0]])
    return max(three - two, 0), num_classes


def plan_chunks(
    logit_fn: Any,
    inputs: Any,  # (N, *shape)
    *,
    max_memory: Any,
    chunk_size_override: int | None,
    working_bytes: Callable[[int], int],
) -> int:
    """Samples per chunk for a companion: ``chunk_size_override``, or what fits the budget.

    Per sample: the autograd activations of one forward (:func:`sample_footprint`) plus
    ``working_bytes(K)``, the measurement's own buffers for K classes.
    """
    count = int(inputs.shape[0])
    if chunk_size_override is not None:
        if int(chunk_size_override) < 1:
            raise InputError(f"got chunk_size={chunk_size_override}; pass a positive integer")
        return min(count, int(chunk_size_override))
    budget = working_memory(max_memory, inputs.device)
    activations, num_classes = sample_footprint(logit_fn, inputs)
    size = chunk_size(budget, activations + working_bytes(num_classes), count)
    logger.debug("chunks of %d samples in %s of working memory", size, format_bytes(budget))
    return size


def concat(parts: Sequence[Any], dim: int = 0) -> Any:
    """Concatenate tensor chunks along ``dim`` (one chunk is returned as is)."""
    import torch

    return parts[0] if len(parts) == 1 else torch.cat(list(parts), dim=dim)
