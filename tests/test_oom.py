"""CUDA out-of-memory: the runner halves the batch, retries, and records the size that ran."""

import pytest
import torch

import hf_fisher.spectrum as spectrum_module
from hf_fisher import evaluate_robustness


def test_out_of_memory_halves_the_batch(monkeypatch):
    reference = evaluate_robustness(num_samples=6, batch_size=4, progress=False)
    real = spectrum_module.spectrum_of_batch
    sizes = []

    def tight_memory(logit_fn, inputs, **kwargs):
        sizes.append(inputs.shape[0])
        if inputs.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(logit_fn, inputs, **kwargs)

    monkeypatch.setattr(spectrum_module, "spectrum_of_batch", tight_memory)
    report = evaluate_robustness(num_samples=6, batch_size=4, progress=False)
    assert report.results["settings"]["batch_sizes_used"] == [1]
    assert sizes[:3] == [4, 2, 1]
    assert [r["spectral_norm"] for r in report.per_sample] == pytest.approx(
        [r["spectral_norm"] for r in reference.per_sample], rel=1e-5
    )


def test_out_of_memory_at_batch_one_is_not_swallowed(monkeypatch):
    def no_memory(logit_fn, inputs, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(spectrum_module, "spectrum_of_batch", no_memory)
    with pytest.raises(torch.OutOfMemoryError):
        evaluate_robustness(num_samples=2, batch_size=2, progress=False)
