"""GPU readiness without a GPU: tensors follow the input's device, copies, and the TF32 switch.

No CUDA device is available to this project's tests, so what can be checked here is checked:
the copy plan for host-to-GPU moves, that the CPU path is untouched, that every tensor factory
in the engine names its device (an AST scan), that the key paths return on the input's device,
and that ``tf32`` is recorded, fingerprinted and restored.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest
import torch

import hf_fisher.spectrum as spectrum_module
from hf_fisher._device import copy_options, tf32_mode, tf32_state, to_device
from hf_fisher.adapters import PreparedBatch
from hf_fisher.errors import ResultsError
from hf_fisher.options import RunOptions
from hf_fisher.runner import evaluate_robustness
from hf_fisher.spectrum import fisher_spectrum
from hf_fisher.testing.models import build_mlp

PACKAGE = Path(__file__).resolve().parents[1] / "hf_fisher"
ENGINE = [
    *sorted((PACKAGE / "estimators").glob("*.py")),
    PACKAGE / "operators.py",
    PACKAGE / "spectrum.py",
]
FACTORIES = {
    "arange", "as_tensor", "empty", "eye", "full", "linspace", "logspace", "ones", "rand",
    "randint", "randn", "randperm", "tensor", "zeros",
}  # fmt: skip
SHAPE = (1, 4, 4)
OPTIONS = {"num_samples": 4, "batch_size": 2, "progress": False}


# --------------------------------------------------------------------------------------------
# Copies


@pytest.mark.parametrize(
    ("source", "target", "asynchronous"),
    [("cpu", "cuda:0", True), ("cpu", "cpu", False), ("cuda:0", "cpu", False),
     ("cuda:0", "cuda:1", False), ("meta", "cuda", False)],
)  # fmt: skip
def test_only_host_to_gpu_copies_are_pinned_and_non_blocking(
    source: str, target: str, asynchronous: bool
) -> None:
    options = copy_options(torch.device(source), torch.device(target))
    assert options == {"pin_memory": asynchronous, "non_blocking": asynchronous}


def test_cpu_moves_are_plain_to_and_never_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self, *args, **kwargs):
        raise AssertionError("pin_memory called on a CPU-only move")

    monkeypatch.setattr(torch.Tensor, "pin_memory", refuse)
    inputs = torch.arange(6, dtype=torch.uint8).reshape(2, 3)
    same = torch.randn(2, 3)
    assert to_device(same, "cpu") is same  # nothing to do: the very tensor, as Tensor.to
    moved = to_device(inputs, torch.device("cpu"), torch.float64)
    assert moved.dtype == torch.float64 and torch.equal(moved, inputs.double())
    batch = PreparedBatch(inputs, inputs > 2, {"attention_mask": inputs.long()})
    cast = batch.to("cpu", torch.float32)
    assert cast.inputs.dtype == torch.float32 and torch.equal(cast.inputs, inputs.float())
    assert cast.space_mask.dtype == torch.bool and cast.context["attention_mask"].dtype == (
        torch.long
    )


# --------------------------------------------------------------------------------------------
# Every tensor factory of the engine names its device


def _factories_without_device(source: str, name: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        if not call or not isinstance(node.func.value, ast.Name) or node.func.value.id != "torch":
            continue
        if node.func.attr in FACTORIES and all(k.arg != "device" for k in node.keywords):
            found.append(f"{name}:{node.lineno} torch.{node.func.attr}")
    return found


def test_every_engine_tensor_factory_names_its_device() -> None:
    """``torch.zeros(...)`` without ``device=`` lands on the CPU even when the model is on a GPU.

    Tensors the engine keeps on the CPU on purpose (calibration tables) say ``device="cpu"``.
    """
    missing = [
        hit
        for path in ENGINE
        for hit in _factories_without_device(path.read_text(), path.relative_to(PACKAGE).as_posix())
    ]
    assert missing == []


def test_the_factory_scan_flags_a_factory_without_device() -> None:
    source = (
        "import torch\n"
        "a = torch.zeros(3, device=x.device)\n"
        "b = torch.eye(3, dtype=torch.float64)\n"
        "c = torch.zeros_like(a)\n"
        "d = torch.tensor([1.0], device='cpu')\n"
    )
    assert _factories_without_device(source, "probe.py") == ["probe.py:3 torch.eye"]


@pytest.mark.parametrize("method", ["exact", "lanczos", "power", "hutchpp", "sketch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_key_paths_return_on_the_input_device(method: str, dtype: torch.dtype) -> None:
    model = build_mlp(SHAPE, num_classes=5, seed=1)
    inputs = torch.rand(3, *SHAPE, generator=torch.Generator().manual_seed(0))
    result = fisher_spectrum(
        model,
        inputs,
        method=method,
        black_box=method == "sketch",
        device="cpu",
        dtype=dtype,
        max_iter=8,
        num_probes=4,
        num_queries=41,
    )
    tensors = {
        name: value for name, value in vars(result).items() if isinstance(value, torch.Tensor)
    }
    assert {"spectral_norm", "trace", "eigenvalues", "logits"} <= tensors.keys()
    assert {str(value.device) for value in tensors.values()} == {"cpu"}
    assert result.spectral_norm.dtype == torch.float64 and result.spectral_norm.shape == (3,)


# --------------------------------------------------------------------------------------------
# TF32


@pytest.fixture
def strict_float32():
    """Start from torch's flags as they are and put them back whatever a test does."""
    before = tf32_state()
    yield before
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_tf32_mode_sets_both_flags_and_restores_them_even_on_error(strict_float32) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    with tf32_mode(True):
        assert tf32_state() == (True, True)
    assert tf32_state() == (False, True)
    with pytest.raises(RuntimeError, match="boom"), tf32_mode(False):
        assert tf32_state() == (False, False)  # strict float32: cuDNN's TF32 default off too
        raise RuntimeError("boom")
    assert tf32_state() == (False, True)


def _tf32_spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, bool]]:
    """Record the TF32 flags each time a batch's spectrum is computed."""
    seen: list[tuple[bool, bool]] = []
    original = spectrum_module.spectrum_of_batch

    def spy(*args, **kwargs):
        seen.append(tf32_state())
        return original(*args, **kwargs)

    monkeypatch.setattr(spectrum_module, "spectrum_of_batch", spy)
    return seen


def _mlp_run(tmp_path: Path, **options):
    model = build_mlp(SHAPE, num_classes=3, seed=2)
    data = torch.rand(6, *SHAPE, generator=torch.Generator().manual_seed(1))
    return evaluate_robustness(model, data, out_dir=tmp_path / "run", **{**OPTIONS, **options})


def test_tf32_run_is_recorded_applied_to_the_compute_and_restored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog, strict_float32
) -> None:
    seen = _tf32_spy(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="hf_fisher.runner"):
        report = _mlp_run(tmp_path, tf32=True)
    assert report.results["settings"]["tf32"] is True
    assert seen and set(seen) == {(True, True)}
    assert tf32_state() == strict_float32
    notes = [r.message for r in caplog.records if "tf32" in r.message.lower()]
    assert notes == ["--tf32 has no effect on cpu: TF32 is a CUDA setting"]


def test_default_run_is_strict_float32_and_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog, strict_float32
) -> None:
    seen = _tf32_spy(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="hf_fisher.runner"):
        report = _mlp_run(tmp_path)
    assert report.results["settings"]["tf32"] is False
    assert set(seen) == {(False, False)}
    assert tf32_state() == strict_float32
    assert not [r for r in caplog.records if "tf32" in r.message.lower()]


def test_resume_with_the_other_tf32_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    class Interrupted(Exception):
        pass

    original = spectrum_module.spectrum_of_batch
    calls = []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(spectrum_module, "spectrum_of_batch", fail_second)
        with pytest.raises(Interrupted):
            _mlp_run(tmp_path, method="exact")
    with pytest.raises(ResultsError, match="refusing to resume") as refused:
        _mlp_run(tmp_path, method="exact", tf32=True, resume=True)
    assert "settings.tf32: partial run has False, this run True" in str(refused.value)
    resumed = _mlp_run(tmp_path, method="exact", resume=True)  # the same switch resumes
    assert resumed.results["settings"]["tf32"] is False


def test_tf32_flag_reaches_the_run_options() -> None:
    from hf_fisher.cli import build_parser

    args = build_parser().parse_args(["evaluate", "--tf32"])
    assert RunOptions.from_namespace(args).tf32 is True
    args = build_parser().parse_args(["evaluate"])
    assert RunOptions.from_namespace(args).tf32 is False
