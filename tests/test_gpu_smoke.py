"""scripts/gpu_smoke.py: its CPU smoke mode prints every field and its float64 check can fail."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_smoke.py"
SMOKE = ["--device", "cpu", "--images", "3", "--small", "--method", "lanczos", "--check", "2"]


@pytest.fixture(scope="module")
def smoke():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_smoke_run_prints_the_measurements_and_passes_its_check(smoke, capsys) -> None:
    assert smoke.main(SMOKE) == 0
    out = capsys.readouterr().out
    assert "model: tiny ViT, image 32, K=10, float32, tf32 off" in out
    assert "images: 3, batch size 32" in out
    assert float(re.search(r"^images/s: (\S+)$", out, re.M).group(1)) > 0
    assert float(re.search(r"^forward-equivalents per image: (\S+)$", out, re.M).group(1)) > 1
    iterations = re.search(
        r"^Lanczos iterations: median (\S+), max (\d+) \(method lanczos\)$", out, re.M
    )
    assert 1 <= float(iterations.group(1)) <= int(iterations.group(2)) <= 9  # rank K-1 = 9
    assert "peak GPU memory: n/a (CPU run)" in out
    check = re.search(r"max relative error (\S+) \(tolerance 0.001\): ok$", out, re.M)
    assert float(check.group(1)) <= 1e-3


def test_float64_check_fails_the_run_when_the_error_exceeds_the_tolerance(smoke, capsys) -> None:
    assert smoke.main([*SMOKE, "--tolerance", "1e-12"]) == 1  # float32 is never within 1e-12
    assert re.search(r"\(tolerance 1e-12\): FAILED$", capsys.readouterr().out, re.M)


def test_without_cuda_the_default_run_measures_nothing(
    smoke, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert smoke.main([]) == 0
    assert capsys.readouterr().out.startswith("no CUDA device; nothing measured")
