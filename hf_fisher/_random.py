"""Per-sample random streams, so that results do not depend on batching, sharding or device.

Sample i draws from its own CPU generator seeded by (seed, sample id, purpose). A run split over
two processes, or batched differently, therefore probes every sample with the same vectors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

_PURPOSES = {
    "start": 1,
    "probe": 2,
    "direction": 3,
    "bootstrap": 4,
    "kl_check": 5,
    "noise": 6,
    "attack": 7,
}


class SampleStreams:
    """One seeded CPU generator per sample; draws are stacked along dim 0.

    Args:
        seed: the run's seed.
        sample_ids: a stable id per sample (e.g. its dataset index).
        purpose: which stream ("start", "probe", "direction", "bootstrap", "kl_check",
            "noise", "attack"); different purposes give independent draws for the same sample.

    """

    def __init__(self, seed: int, sample_ids: Sequence[int], purpose: str) -> None:
        tag = _PURPOSES[purpose]
        self.generators = []
        for sample_id in sample_ids:
            generator = torch.Generator()
            generator.manual_seed((int(seed) * 1_000_003 + int(sample_id)) * 7 + tag)
            self.generators.append(generator)

    def select(self, index: Sequence[int] | Tensor) -> SampleStreams:
        """The streams of the samples at ``index``; they share (and advance) these generators."""
        chosen = object.__new__(SampleStreams)
        positions = index.tolist() if isinstance(index, Tensor) else list(index)
        chosen.generators = [self.generators[i] for i in positions]
        return chosen

    def normal(self, shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Return (N, *shape) standard normal draws."""
        draws = [torch.randn(shape, generator=g, dtype=torch.float64) for g in self.generators]
        return torch.stack(draws).to(device=device, dtype=dtype)

    def uniform(
        self, shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """Return (N, *shape) draws uniform on [0, 1)."""
        draws = [torch.rand(shape, generator=g, dtype=torch.float64) for g in self.generators]
        return torch.stack(draws).to(device=device, dtype=dtype)

    def rademacher(
        self, shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """Return (N, *shape) random signs."""
        draws = [torch.randint(0, 2, shape, generator=g) for g in self.generators]
        return (torch.stack(draws) * 2 - 1).to(device=device, dtype=dtype)

    def integers(self, high: int, shape: tuple[int, ...]) -> Tensor:
        """Return (N, *shape) integers in [0, high) on the CPU."""
        return torch.stack([torch.randint(0, high, shape, generator=g) for g in self.generators])


def default_streams(
    seed: int, num_samples: int, purpose: str, sample_ids: Sequence[int] | None = None
) -> SampleStreams:
    """Streams for ``sample_ids`` (default ``0..N-1``)."""
    return SampleStreams(seed, range(num_samples) if sample_ids is None else sample_ids, purpose)
