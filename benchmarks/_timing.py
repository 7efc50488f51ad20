"""Shared timing and peak-memory helpers for the benchmarks.

Timing: on a shared machine the same callable moves 20-60% between runs, so one run per method
cannot resolve small ratios. :func:`interleave` runs labelled callables round-robin (every
round runs each once, starting one label later than the previous round so no label always runs
first), after a warm-up, and reports per label the median and the min-max spread of its rounds:
background load hits every label alike, and the spread says how far to trust a ratio.

Memory, two honest measures (say which one a figure is):

- CPU: :func:`peak_rss_delta` is the peak resident set size while a callable runs, minus the
  resident set size just before it (after returning free heap memory to the OS). Linux resets
  the high-water mark by writing "5" to ``/proc/self/clear_refs``; where that is unavailable it
  falls back to ``ru_maxrss`` (the process's lifetime peak), which only counts what exceeds every
  earlier peak. Run it in a fresh process (:func:`run_child`) so earlier work does not leave
  freed-but-retained memory that the measured callable could reuse unseen.
- CUDA: :func:`cuda_peak_delta` is ``torch.cuda.max_memory_allocated`` during the callable minus
  the memory allocated before it: tensors only, not the caching allocator's reserve or the
  CUDA context.
"""

from __future__ import annotations

import ctypes
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one label over the rounds: median and min-max spread."""

    label: str
    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    @property
    def relative_spread(self) -> float:
        """(max - min) / median: 0.1 means the rounds span 10% of the median."""
        return (self.high - self.low) / self.median if self.median > 0 else float("inf")


def interleave(
    callables: Mapping[str, Callable[[], object]],
    *,
    rounds: int = 3,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
    """Time every callable once per round, round-robin, after ``warmup`` untimed rounds.

    Round r starts at label r (mod the number of labels), so no label is always first or
    last. Returns a :class:`Timing` per label, in the order given.
    """
    if rounds < 1:
        raise ValueError(f"rounds={rounds}; need at least 1")
    labels = list(callables)
    for _ in range(warmup):
        for label in labels:
            callables[label]()
    samples: dict[str, list[float]] = {label: [] for label in labels}
    for index in range(rounds):
        offset = index % len(labels)
        for label in labels[offset:] + labels[:offset]:
            start = clock()
            callables[label]()
            samples[label].append(clock() - start)
    return {label: Timing(label, tuple(samples[label])) for label in labels}


def _status_kib(key: str) -> int:
    match = re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    if match is None:
        raise OSError(f"{key} not in /proc/self/status")
    return int(match.group(1))


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc), so the baseline RSS is what is live."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_delta(fn: Callable[[], object]) -> tuple[int, str]:
    """Bytes of peak RSS above the RSS before ``fn`` ran, and how it was measured."""
    _trim_heap()
    try:
        before = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        fn()
        return (_status_kib("VmHWM") - before) * 1024, "VmHWM after clear_refs - VmRSS before"
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return (after - before) * 1024, "ru_maxrss growth (counts only a new lifetime peak)"


def cuda_peak_delta(fn: Callable[[], object], device) -> int:
    """Bytes of CUDA tensor memory at the peak of ``fn`` above what was allocated before."""
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def run_child(argv: list[str], timeout: float | None = None) -> dict:
    """Run ``python argv...`` in a fresh process; return the JSON object on its last line."""
    result = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"child {argv} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
