"""Light imports: ``import hf_fisher`` and the CLI's report parsers load no heavy library.

Each check runs in a fresh interpreter, since this test process has long imported torch. The
speed itself is measured by ``benchmarks/bench_imports.py``, not asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import evaluate

from hf_fisher._metric_install import METRIC_NAME, SCRIPT_PATH

HEAVY = ("torch", "transformers", "datasets", "scipy", "matplotlib", "evaluate", "accelerate")


def run_python(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object, returned here."""
    environ = {key: value for key, value in os.environ.items() if key != "HF_MODULES_CACHE"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def loaded(names: tuple[str, ...] = HEAVY) -> str:
    """Code that adds the top-level packages among ``names`` already imported to ``out``."""
    return f"out['loaded'] = sorted(n for n in {names!r} if n in sys.modules)\n"


def test_import_hf_fisher_is_light_and_installs_the_metric_where_evaluate_looks(
    tmp_path: Path,
) -> None:
    home = tmp_path / "hf"
    code = (
        "import json, sys\nout = {}\nimport hf_fisher\n"
        + loaded()
        + "import evaluate.config as c\n"
        "out['cache'] = str(c.HF_MODULES_CACHE)\n"
        "out['dynamic'] = c.MODULE_NAME_FOR_DYNAMIC_MODULES\n"
        "print(json.dumps(out))\n"
    )
    out = run_python(code, HF_HOME=str(home))
    assert out["loaded"] == []
    assert Path(out["cache"]) == home / "modules"  # evaluate's cache for this HF_HOME
    digest = evaluate.loading.files_to_hash([str(SCRIPT_PATH)])
    folder = Path(out["cache"], out["dynamic"], "metrics", f"evaluate-metric--{METRIC_NAME}")
    script = folder / digest / f"{METRIC_NAME}.py"
    assert script.read_bytes() == SCRIPT_PATH.read_bytes()
    assert (folder / digest / "__init__.py").exists() and (folder / "__init__.py").exists()
    assert [path.name for path in folder.iterdir() if path.is_dir()] == [digest]


def test_every_public_name_resolves_to_its_defining_module() -> None:
    code = """
import inspect, json, sys
from importlib import import_module
import hf_fisher, hf_fisher.report
out = {"problems": []}
for package in (hf_fisher, hf_fisher.report):
    if sorted(package._SOURCES) != sorted(package.__all__) or len(set(package.__all__)) != len(
        package.__all__
    ):
        out["problems"].append(f"{package.__name__}: _SOURCES and __all__ differ")
    missing = set(package.__all__) - set(dir(package))
    if missing:
        out["problems"].append(f"{package.__name__}: dir() lacks {sorted(missing)}")
    for name in package.__all__:
        namespace = {}
        exec(f"from {package.__name__} import {name} as value", namespace)
        value = getattr(package, name)
        source = getattr(import_module(package._SOURCES[name]), name)
        if not (value is source is namespace["value"]):
            out["problems"].append(f"{package.__name__}.{name} is not the defining module's")
        if inspect.isclass(value) or inspect.isfunction(value):
            if getattr(import_module(value.__module__), value.__qualname__) is not value:
                out["problems"].append(f"{name} is not {value.__module__}.{value.__qualname__}")
import hf_fisher.metric as metric, hf_fisher._metric_install as install
for name in ("install_metric", "ensure_metric_installed", "installed_script_path",
             "modules_cache", "script_hash", "SCRIPT_PATH", "METRIC_NAME", "CACHE_FOLDER"):
    if getattr(metric, name) is not getattr(install, name):
        out["problems"].append(f"hf_fisher.metric.{name} is not the installer's")
print(json.dumps(out))
"""
    assert run_python(code)["problems"] == []


def test_unknown_attribute_raises_attribute_error() -> None:
    code = (
        "import json, hf_fisher, hf_fisher.report\nout = {}\n"
        "for package in (hf_fisher, hf_fisher.report):\n"
        "    try:\n        package.fisher_spectrom\n"
        "    except AttributeError as error:\n        out[package.__name__] = str(error)\n"
        "print(json.dumps(out))\n"
    )
    assert run_python(code) == {
        "hf_fisher": "module 'hf_fisher' has no attribute 'fisher_spectrom'",
        "hf_fisher.report": "module 'hf_fisher.report' has no attribute 'fisher_spectrom'",
    }


def test_report_cli_parsers_import_no_torch_matplotlib_or_hub() -> None:
    code = (
        "import argparse, json, sys\nout = {}\n"
        "from hf_fisher.report.cli import add_card_parser, add_leaderboard_parser, "
        "add_submit_parser\n"
        "sub = argparse.ArgumentParser().add_subparsers()\n"
        "for add in (add_card_parser, add_leaderboard_parser, add_submit_parser):\n"
        "    add(sub)\n" + loaded((*HEAVY, "huggingface_hub")) + "print(json.dumps(out))\n"
    )
    assert run_python(code)["loaded"] == []


def test_light_modules_import_no_heavy_library() -> None:
    """Modules the CLI and reports reach before any compute import torch/scipy/... lazily."""
    modules = (
        "hf_fisher.correlation",
        "hf_fisher.digits",
        "hf_fisher.summary",
        "hf_fisher.results",
        "hf_fisher.report.plots",
        "hf_fisher.report.results_io",
        "hf_fisher.report.badge",
    )
    code = (
        "import json, sys\nout = {}\n"
        + "".join(f"import {module}\n" for module in modules)
        + loaded((*HEAVY, "PIL"))
        + "print(json.dumps(out))\n"
    )
    assert run_python(code)["loaded"] == []
