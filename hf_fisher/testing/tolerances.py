"""Comparison tolerances that follow from the compute dtype, not from one machine's rounding."""

from __future__ import annotations

import torch

# The same sample computed in another batch composition, process or CPU runs through other
# kernels (blocking, vectorisation, reduction order): float32 results then differ by ~1e-6
# relative (1.06e-6 seen on an AMD EPYC host), float64 results by ~1e-12.
_RELATIVE = {torch.float32: 1e-5, torch.float64: 1e-10}


def tolerance_for(dtype: torch.dtype | str) -> float:
    """Relative tolerance for one quantity computed in ``dtype`` along two batch paths.

    Use it wherever a test compares numbers across batch sizes, shards, processes or resumed
    runs; identical computations may still be compared exactly.

    Args:
        dtype: ``torch.float32`` / ``torch.float64`` or their names.

    Raises:
        ValueError: for dtypes the Fisher engine does not compute in.

    >>> tolerance_for(torch.float32), tolerance_for("float64")
    (1e-05, 1e-10)
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    if dtype not in _RELATIVE:
        raise ValueError(f"no tolerance for dtype {dtype}; hf-fisher computes in float32/float64")
    return _RELATIVE[dtype]
