"""Every way a new user's input has made hf-fisher silently wrong or crash, one row each.

Each row ends in either a correct result (``check`` asserts it against an independent truth)
or a clear typed error raised before any compute is spent (``error`` and ``match``). The rows
are grouped by the layer that owns the fix; add new rows to the matching section so the list
keeps growing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hf_fisher.errors import InputError


@dataclass(frozen=True)
class Case:
    """One bad input: ``run(tmp_path)`` either raises ``error`` matching ``match`` or returns a
    value that ``check`` verifies."""

    id: str
    run: Callable[[Path], Any]
    error: type[BaseException] | None = None
    match: str | None = None
    check: Callable[[Any], None] | None = None


# --- data: labels, images, text, columns --------------------------------------------------

DATA_CASES: list[Case] = []

# --- estimators: methods, traces, convergence, intervals, dtypes, multi-label --------------


def _two_class_lanczos_trace(tmp_path: Path) -> tuple[Any, Any]:
    import torch

    from hf_fisher import fisher_spectrum
    from hf_fisher.testing.dense import dense_fisher, dense_spectrum
    from hf_fisher.testing.models import build_mlp

    net = build_mlp(input_shape=(10,), num_classes=2, dtype=torch.float64).eval()
    x = torch.randn(16, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = fisher_spectrum(net, x, method="lanczos", dtype=torch.float64)
    return result, dense_spectrum(dense_fisher(net, x))[1]


def _check_exact_trace(outcome: tuple[Any, Any]) -> None:
    import torch

    result, trace = outcome
    assert (result.trace_standard_error == 0).all()
    torch.testing.assert_close(result.trace, trace, rtol=1e-10, atol=0)
    assert (result.trace >= result.spectral_norm).all()


def _flat_spectrum_flags(method: str) -> Callable[[Path], tuple[Any, Any]]:
    def run(tmp_path: Path) -> tuple[Any, Any]:
        import torch

        from hf_fisher.estimators.lanczos import lanczos
        from hf_fisher.estimators.power import power_iteration

        generator = torch.Generator().manual_seed(0)
        basis, _ = torch.linalg.qr(torch.randn(8, 60, 60, generator=generator, dtype=torch.float64))
        spectrum = torch.cat([torch.tensor([1.0, 0.97]), 0.9 * torch.rand(58, generator=generator)])
        matrices = basis @ torch.diag(spectrum.double()) @ basis.transpose(1, 2)
        if method == "lanczos":
            estimate = lanczos(matrices, top_k=3, tol=1e-3, max_iter=12)
        else:
            estimate = power_iteration(matrices, tol=1e-3, max_iter=150)
        return estimate, torch.linalg.eigvalsh(matrices).flip(-1)

    return run


def _check_flags(outcome: tuple[Any, Any]) -> None:
    import torch

    estimate, truth = outcome
    theta = estimate.eigenvalues
    relative = estimate.residuals / theta
    assert torch.equal(estimate.converged, (relative <= 1e-3).all(dim=1))
    nearest = (theta[:, :, None] - truth[:, None, :]).abs().amin(dim=2)
    assert (nearest <= estimate.residuals + 1e-12).all()
    assert (nearest[estimate.converged] <= 1e-3 * theta[estimate.converged]).all()


def _multi_label_bert(tmp_path: Path) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification

    from hf_fisher.testing.models import build_bert

    path = build_bert(tmp_path / "bert", num_labels=3)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
    model.config.problem_type = "multi_label_classification"
    model.save_pretrained(path)
    return path


_TEXTS = ["the film was great", "awful", "a long and boring story"]


def _multi_label_spectrum(tmp_path: Path) -> tuple[Any, Any]:
    import torch

    from hf_fisher import fisher_spectrum, load_classifier
    from hf_fisher.testing.cases import dense_truth

    path = _multi_label_bert(tmp_path)
    result = fisher_spectrum(path, _TEXTS, method="exact", dtype=torch.float64)
    return result, dense_truth(load_classifier(path, dtype=torch.float64), _TEXTS)


def _check_bernoulli(outcome: tuple[Any, Any]) -> None:
    import torch

    result, (values, trace) = outcome
    assert result.likelihood == "bernoulli"
    torch.testing.assert_close(result.spectral_norm, values[:, 0], rtol=1e-5, atol=0)
    torch.testing.assert_close(result.trace, trace, rtol=1e-5, atol=0)
    torch.testing.assert_close(result.probabilities, torch.sigmoid(result.logits))


def _multi_label_black_box(tmp_path: Path) -> Any:
    from hf_fisher import fisher_spectrum

    return fisher_spectrum(_multi_label_bert(tmp_path), _TEXTS, black_box=True)


def _half_precision(dtype_name: str, on_module: bool) -> Callable[[Path], Any]:
    def run(tmp_path: Path) -> Any:
        import torch

        from hf_fisher import fisher_spectrum
        from hf_fisher.testing.models import build_mlp

        dtype = getattr(torch, dtype_name)
        if on_module:
            return fisher_spectrum(build_mlp(dtype=dtype), torch.rand(2, 2, 3, 4, dtype=dtype))
        return fisher_spectrum(build_mlp(), torch.rand(2, 2, 3, 4), dtype=dtype)

    return run


ESTIMATOR_CASES: list[Case] = [
    Case("lanczos-trace-exact-at-two-classes", _two_class_lanczos_trace, check=_check_exact_trace),
    Case("lanczos-converged-means-every-pair", _flat_spectrum_flags("lanczos"), check=_check_flags),
    Case("power-converged-is-a-residual-bound", _flat_spectrum_flags("power"), check=_check_flags),
    Case("multi-label-config-gets-bernoulli-fisher", _multi_label_spectrum, check=_check_bernoulli),
    Case(
        "multi-label-black-box-refused",
        _multi_label_black_box,
        error=InputError,
        match="black-box.*multi-label.*black_box=False",
    ),
    Case(
        "float16-dtype-refused",
        _half_precision("float16", on_module=False),
        error=InputError,
        match=r"requested dtype is torch.float16.*float32.*float64",
    ),
    Case(
        "bfloat16-module-refused",
        _half_precision("bfloat16", on_module=True),
        error=InputError,
        match=r"MLP's parameter dtype is torch.bfloat16.*dtype=torch.float32",
    ),
]

# --- runner and CLI: options, resume, output directories ----------------------------------

RUNNER_CASES: list[Case] = []

# --- report: cards, submissions, leaderboard ----------------------------------------------

REPORT_CASES: list[Case] = []


CASES = DATA_CASES + ESTIMATOR_CASES + RUNNER_CASES + REPORT_CASES


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case: Case, tmp_path: Path) -> None:
    assert (case.error is None) != (case.check is None), "a case either raises or checks"
    if case.error is not None:
        with pytest.raises(case.error, match=case.match):
            case.run(tmp_path)
    else:
        case.check(case.run(tmp_path))


def test_case_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
