"""Fast start: the probe's threads, the bundled digits without scikit-learn, lazy imports.

Timings live in ``benchmarks/bench_start.py``; these tests check the mechanisms behind them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import hf_fisher.adapters.base as base
from hf_fisher.adapters import load_classifier
from hf_fisher.digits import SPLIT_FILE, _digits_arrays, _frozen_split, _split_indices
from hf_fisher.errors import ModelLoadError

REPO = Path(__file__).resolve().parents[1]


class ThreadSpy(nn.Module):
    """A linear classifier that records torch's intra-op thread count at each forward pass."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.dropout = dropout
        self.threads: list[int] = []

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.threads.append(torch.get_num_threads())
        logits = self.linear(inputs)
        return nn.functional.dropout(logits, self.dropout, training=self.dropout > 0)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_small_cpu_model_is_probed_on_one_thread_and_the_count_restored(two_threads) -> None:
    spy = ThreadSpy()
    load_classifier(spy, input_shape=(4,))
    assert spy.threads == [1, 1]  # both probe passes
    assert torch.get_num_threads() == 2


def test_large_model_keeps_the_callers_threads(two_threads, monkeypatch) -> None:
    monkeypatch.setattr(base, "_SMALL_MODEL", 10)  # the spy's 15 parameters count as large
    spy = ThreadSpy()
    load_classifier(spy, input_shape=(4,))
    assert spy.threads == [2, 2]


def test_single_threaded_probe_still_catches_randomness_and_restores_threads(two_threads) -> None:
    with pytest.raises(ModelLoadError, match="different logits on two identical forward passes"):
        load_classifier(ThreadSpy(dropout=0.5), input_shape=(4,))
    assert torch.get_num_threads() == 2


def test_frozen_digits_split_is_scikit_learns() -> None:
    _, labels = _digits_arrays()
    frozen, computed = _frozen_split(len(labels)), _split_indices(labels)
    for split in ("train", "test"):
        assert np.array_equal(frozen[split], computed[split]), split
    assert json.loads(SPLIT_FILE.read_text())["num_rows"] == len(labels) == 1797


def test_digits_read_from_the_csv_equal_load_digits() -> None:
    from sklearn.datasets import load_digits

    images, labels = _digits_arrays()
    digits = load_digits()
    assert images.dtype == digits.images.dtype and np.array_equal(images, digits.images)
    assert np.array_equal(labels, digits.target)


LOAD_ONLY = """
import json, sys
from hf_fisher.adapters import load_classifier
from hf_fisher.digits import DEFAULT_MODEL_DIR, load_digits_dataset
load_classifier(DEFAULT_MODEL_DIR)
unneeded = ("datasets", "evaluate", "matplotlib", "sklearn")
after_load = sorted(m for m in unneeded if m in sys.modules)
load_digits_dataset("test")
print(json.dumps({"after_load": after_load, "sklearn_after_digits": "sklearn" in sys.modules}))
"""


@pytest.mark.slow
def test_loading_the_bundled_model_and_digits_imports_nothing_they_do_not_need() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOAD_ONLY],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"after_load": [], "sklearn_after_digits": False}
