"""The memory budget: parsing, the auto default, chunking with OOM halving, and chunk invariance.

Every companion and method "exact" run in chunks sized from ``max_memory``; per-sample random
streams keyed by (seed, sample id) make their values independent of the chunking and of the
other samples of a batch. Each invariance is checked in float64 to 1e-10 (the computations are
the same per sample; only summation order may differ).
"""

from __future__ import annotations

import sys

import pytest
import torch

from hf_fisher import memory
from hf_fisher.clever import clever_scores
from hf_fisher.errors import InputError
from hf_fisher.estimators import exact as exact_module
from hf_fisher.frequency import analyze_frequency
from hf_fisher.kl_check import kl_check
from hf_fisher.noise import noise_curves
from hf_fisher.spectrum import spectrum_of_batch

TIGHT = 1e-10  # float64: the same per-sample arithmetic, summed in another order
KL_ATOL = 1e-14  # KL at r=1e-2 (~1e-6) is a difference of near-equal log-probabilities: the
# ~1e-16 batch-size rounding of float64 logits shows up absolutely, not relatively


def tanh_mlp(inputs: int = 12, classes: int = 4, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(inputs, 16), torch.nn.Tanh(), torch.nn.Linear(16, classes)
    ).double()


def tiny_cnn(classes: int = 5, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.Tanh(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, classes),
    ).double()


# --------------------------------------------------------------------------------------------
# Parsing and the auto default


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("4GB", 4 * 10**9),
        ("4 gb", 4 * 10**9),
        ("512MiB", 512 * 2**20),
        ("1.5GiB", int(1.5 * 2**30)),
        ("2000000", 2_000_000),
        (3 * 10**9, 3 * 10**9),
        ("auto", None),
        (" AUTO ", None),
    ],
)
def test_parse_memory(value, expected):
    assert memory.parse_memory(value) == expected


@pytest.mark.parametrize("value", ["4XB", "-1GB", "lots", "", 12, True, None, "1e9", "0.5kB"])
def test_parse_memory_refuses_with_the_fix(value):
    with pytest.raises(InputError, match=r"--max-memory.*'4GB', '512MiB'"):
        memory.parse_memory(value)


def test_auto_is_what_the_process_holds_plus_half_the_free_memory(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": 8 * 10**9)
    monkeypatch.setattr(memory, "memory_in_use", lambda device="cpu": 10**9)
    assert memory.resolve_budget("auto") == 10**9 + 4 * 10**9
    assert memory.working_memory("auto") == int(4 * 10**9 * memory.HEADROOM)
    assert memory.working_memory("3GB") == int(2 * 10**9 * memory.HEADROOM)
    assert memory.working_memory("500MB") == 0  # already over the cap: chunks of one


def test_auto_without_a_reading_falls_back(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": None)
    monkeypatch.setattr(memory, "memory_in_use", lambda device="cpu": 0)
    assert memory.resolve_budget("auto") == memory.FALLBACK_BYTES


def test_free_memory_and_resident_set_read_without_psutil(monkeypatch):
    """/proc/meminfo's MemAvailable and /proc/self/status's VmRSS agree with psutil."""
    psutil = pytest.importorskip("psutil")
    with_psutil = memory.available_memory("cpu"), memory.memory_in_use("cpu")
    rss = psutil.Process().memory_info().rss
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil now raises ImportError
    without = memory.available_memory("cpu"), memory.memory_in_use("cpu")
    assert without[0] == pytest.approx(with_psutil[0], rel=0.2)
    assert without[1] == pytest.approx(with_psutil[1], rel=0.2)
    assert without[1] == pytest.approx(rss, rel=0.2)


# --------------------------------------------------------------------------------------------
# run_in_chunks


def _failing_above(limit: int, error: BaseException, seen: list[int]):
    def fn(part: slice) -> list[int]:
        seen.append(part.stop - part.start)
        if part.stop - part.start > limit:
            raise error
        return list(range(part.start, part.stop))

    return fn


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory (simulated)"),
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 19327352832 bytes"
        ),
        MemoryError(),
    ],
    ids=["cuda", "cpu-allocator", "memory-error"],
)
def test_run_in_chunks_halves_on_out_of_memory(error):
    seen: list[int] = []
    parts = memory.run_in_chunks(_failing_above(2, error, seen), 7, 8)
    assert sum(parts, []) == list(range(7))
    assert seen[:3] == [7, 3, 1]  # 7 and 3 fail, 1 fits and stays
    assert max(len(part) for part in parts) <= 2


def test_run_in_chunks_does_not_swallow_other_errors_or_oom_at_one():
    with pytest.raises(RuntimeError, match="shape mismatch"):
        memory.run_in_chunks(_failing_above(0, RuntimeError("shape mismatch"), []), 4, 4)
    with pytest.raises(torch.OutOfMemoryError):
        memory.run_in_chunks(_failing_above(0, torch.OutOfMemoryError("oom"), []), 4, 4)


def test_chunk_plan_counts_activations_and_working_memory(monkeypatch):
    model = tanh_mlp()
    inputs = torch.randn(10, 12, dtype=torch.float64)
    activations, classes = memory.sample_footprint(model, inputs)
    whole_pass, _ = memory.forward_footprint(model, inputs[:2])
    assert classes == 4 and activations >= 16 * 8  # at least the hidden layer is saved
    assert activations < whole_pass  # the weights saved once per pass are not per sample
    monkeypatch.setattr(memory, "working_memory", lambda value, device: 3 * (activations + 100))
    size = memory.plan_chunks(
        model, inputs, max_memory="1GB", chunk_size_override=None, working_bytes=lambda k: 100
    )
    assert size == 3


# --------------------------------------------------------------------------------------------
# Chunk invariance, and a sample alone equals the same sample in a batch


def test_kl_check_is_chunk_and_batch_invariant():
    model = tanh_mlp()
    inputs = torch.randn(6, 12, dtype=torch.float64)
    ids = [3, 17, 4, 99, 5, 8]
    options = {"radii": [1e-2, 1e-1, 1.0], "draws": 3, "seed": 2, "sample_ids": ids}
    whole = kl_check(model, inputs, chunk_size=6, **options)
    for size in (1, 4):
        chunked = kl_check(model, inputs, chunk_size=size, **options)
        torch.testing.assert_close(chunked.kl, whole.kl, rtol=TIGHT, atol=KL_ATOL)
        torch.testing.assert_close(chunked.quadratic, whole.quadratic, rtol=TIGHT, atol=0)
    alone = kl_check(model, inputs[3:4], **{**options, "sample_ids": [ids[3]]})
    torch.testing.assert_close(alone.kl[..., 0], whole.kl[..., 3], rtol=TIGHT, atol=KL_ATOL)
    torch.testing.assert_close(alone.quadratic[..., 0], whole.quadratic[..., 3], rtol=TIGHT, atol=0)
    other_seed = kl_check(model, inputs, chunk_size=6, **{**options, "seed": 3})
    assert not torch.allclose(other_seed.kl, whole.kl)  # the directions really are drawn


def test_noise_curves_are_chunk_and_batch_invariant():
    model = tanh_mlp(classes=3)
    inputs = torch.randn(6, 12, dtype=torch.float64)
    labels = model(inputs).argmax(dim=1)
    ids = [10, 11, 40, 2, 7, 0]
    options = {"sigmas": [0.0, 0.5, 2.0], "draws": 4, "seed": 1, "sample_ids": ids}
    whole = noise_curves(model, inputs, labels, chunk_size=6, **options)
    for size in (1, 4):
        chunked = noise_curves(model, inputs, labels, chunk_size=size, **options)
        assert chunked.brier == pytest.approx(whole.brier, rel=TIGHT)
        assert chunked.accuracy == whole.accuracy
    # the batch's mean Brier error is the mean of each sample's run alone
    alone = [
        noise_curves(model, inputs[i : i + 1], labels[i : i + 1], **{**options, "sample_ids": [j]})
        for i, j in enumerate(ids)
    ]
    for level in range(3):
        mean = sum(curve.brier[level] for curve in alone) / len(alone)
        assert whole.brier[level] == pytest.approx(mean, rel=TIGHT)


def test_clever_is_chunk_and_batch_invariant():
    model = tanh_mlp()
    inputs = torch.randn(5, 12, dtype=torch.float64)
    ids = [7, 1, 30, 2, 9]
    options = {"radius": 0.5, "num_batches": 4, "batch_points": 8, "seed": 0, "sample_ids": ids}
    whole = clever_scores(model, inputs, **options)
    one_per_pass = clever_scores(model, inputs, max_points=8, **options)
    torch.testing.assert_close(one_per_pass.maxima, whole.maxima, rtol=TIGHT, atol=0)
    alone = clever_scores(model, inputs[2:3], **{**options, "sample_ids": [ids[2]]})
    torch.testing.assert_close(alone.maxima[0], whole.maxima[2], rtol=TIGHT, atol=0)


def test_clever_ids_zero_to_n_keep_the_previous_streams():
    """Default ids 0..N-1 seed exactly as SeedSequence(seed).spawn(N) did."""
    from hf_fisher.clever import sample_generators

    old = __import__("numpy").random.SeedSequence(5).spawn(3)
    new = sample_generators(5, 3, torch.device("cpu"))
    for state, generator in zip(old, new, strict=True):
        expected = torch.Generator().manual_seed(int(state.generate_state(1, "uint64")[0]))
        assert torch.equal(torch.rand(4, generator=generator), torch.rand(4, generator=expected))


def test_frequency_fisher_is_chunk_invariant():
    model = tiny_cnn()
    images = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    options = {"num_bands": 2, "shapley": False}
    whole = analyze_frequency(model, images, batch_size=4, **options).fisher
    chunked = analyze_frequency(model, images, batch_size=1, **options).fisher
    budgeted = analyze_frequency(model, images, max_memory="auto", **options).fisher
    for other in (chunked, budgeted):
        torch.testing.assert_close(other.energy, whole.energy, rtol=TIGHT, atol=0)
        torch.testing.assert_close(other.lambda_max, whole.lambda_max, rtol=TIGHT, atol=0)


def test_attacks_are_chunk_and_batch_invariant():
    """PGD's random starts, the bisection and the Lipschitz points come from per-sample streams."""
    from hf_fisher.attacks import attack_report

    model = tanh_mlp(classes=3)
    inputs = torch.rand(6, 12, dtype=torch.float64)
    labels = model(inputs).argmax(dim=1)
    spectral_norm = torch.rand(6, dtype=torch.float64)
    ids = [5, 0, 12, 3, 8, 1]
    options = {
        "epsilons": [0.1, 0.5],
        "clip": (0.0, 1.0),
        "steps": 5,
        "bisection_steps": 6,
        "tolerance": None,
        "lipschitz_radius": 0.1,
        "lipschitz_points": 3,
        "num_bootstrap": 10,
        "seed": 4,
        "sample_ids": ids,
    }
    whole = attack_report(model, inputs, labels, spectral_norm, chunk_size=6, **options)
    chunked = attack_report(model, inputs, labels, spectral_norm, chunk_size=4, **options)
    torch.testing.assert_close(chunked.minimal.epsilon, whole.minimal.epsilon, rtol=TIGHT, atol=0)
    torch.testing.assert_close(chunked.lipschitz, whole.lipschitz, rtol=TIGHT, atol=0)
    assert chunked.robust_accuracy == whole.robust_accuracy
    assert chunked.sanity == whole.sanity
    alone = attack_report(
        model, inputs[2:3], labels[2:3], spectral_norm[2:3], **{**options, "sample_ids": [12]}
    )
    torch.testing.assert_close(
        alone.minimal.epsilon[0], whole.minimal.epsilon[2], rtol=TIGHT, atol=0
    )
    torch.testing.assert_close(alone.lipschitz[0], whole.lipschitz[2], rtol=TIGHT, atol=0)


def test_exact_at_k_1000_chunks_under_a_small_budget_and_matches(monkeypatch):
    """K=1000: each sample's 999 gradient rows (d=48, float64) take 384 kB; 1.2 MB holds two."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(48, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1000)
    ).double()
    inputs = torch.randn(5, 48, dtype=torch.float64)
    whole = spectrum_of_batch(model, inputs, method="exact", top_k=3, max_memory="100GB")
    monkeypatch.setattr(memory, "memory_in_use", lambda device="cpu": 0)
    chunks = []
    real = exact_module._exact_batch
    monkeypatch.setattr(
        exact_module, "_exact_batch", lambda call: chunks.append(len(call.inputs)) or real(call)
    )
    chunked = spectrum_of_batch(model, inputs, method="exact", top_k=3, max_memory="1.2MB")
    assert chunks == [2, 2, 1]
    torch.testing.assert_close(chunked.eigenvalues, whole.eigenvalues, rtol=TIGHT, atol=0)
    torch.testing.assert_close(chunked.trace, whole.trace, rtol=TIGHT, atol=0)
    torch.testing.assert_close(chunked.logits, whole.logits, rtol=TIGHT, atol=0)


# --------------------------------------------------------------------------------------------
# The runner: budget recorded, Fisher batches clamped, CPU allocation failures halved


def test_runner_clamps_the_fisher_batch_to_the_budget(monkeypatch):
    """The bundled model (K=10, 1x32x32 pixels): exact's rows take 9 x 1024 x 4 B per sample."""
    from hf_fisher import evaluate_robustness
    from hf_fisher.results import results_schema

    reference = evaluate_robustness(num_samples=6, batch_size=4, method="exact", progress=False)
    monkeypatch.setattr(memory, "memory_in_use", lambda device="cpu": 0)
    budget = int(2 * 9 * 1024 * 4 / memory.HEADROOM) + 1  # two samples' rows, and the headroom
    report = evaluate_robustness(
        num_samples=6, batch_size=4, method="exact", max_memory=budget, progress=False
    )
    settings, environment = report.results["settings"], report.results["environment"]
    assert settings["max_memory"] == budget
    assert environment["max_memory_bytes"] == budget
    assert environment["max_fisher_batch"] == 2
    assert settings["batch_sizes_used"] == [2]
    assert reference.results["settings"]["max_memory"] == "auto"
    assert reference.results["environment"]["max_fisher_batch"] == 4
    assert [r["spectral_norm"] for r in report.per_sample] == pytest.approx(
        [r["spectral_norm"] for r in reference.per_sample], rel=1e-5
    )
    __import__("jsonschema").validate(report.results, results_schema())


def test_runner_halves_on_a_cpu_allocation_failure(monkeypatch):
    import hf_fisher.spectrum as spectrum_module
    from hf_fisher import evaluate_robustness

    real = spectrum_module.spectrum_of_batch

    def tight_memory(logit_fn, inputs, **kwargs):
        if inputs.shape[0] > 1:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")
        return real(logit_fn, inputs, **kwargs)

    monkeypatch.setattr(spectrum_module, "spectrum_of_batch", tight_memory)
    report = evaluate_robustness(num_samples=3, batch_size=4, progress=False)
    assert report.results["settings"]["batch_sizes_used"] == [1]


# --------------------------------------------------------------------------------------------
# ImageNet size: a companion under a 4 GB budget


@pytest.mark.slow
def test_kl_check_at_imagenet_size_stays_under_a_4gb_budget():
    """224x224 RGB, K=1000, 8 samples: the gradient rows alone would take 8 x 0.6 GB = 4.8 GB
    (14.4 GB with the float64 copy the unchunked code made); chunked, the process's peak
    resident set stays under the 4 GB budget."""
    import json
    import os
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    script = repo / "benchmarks" / "bench_companion_memory.py"
    done = subprocess.run(
        [sys.executable, str(script), "kl_check", "--samples", "8", "--max-memory", "4GB"],
        env={**os.environ, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    rows_alone = 8 * 999 * 3 * 224 * 224 * 4
    assert rows_alone > 4 * 10**9
    assert figures["unchunked_buffers_bytes"] > rows_alone
    assert figures["peak_rss_bytes"] < 4 * 10**9, figures
