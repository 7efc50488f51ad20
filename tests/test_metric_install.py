"""``evaluate.load("fisher_robustness")`` on a clean machine: the start-up hook and packaging.

The hook is ``hf_fisher_metric.pth`` + ``_hf_fisher_metric_hook.py`` at the top of
site-packages. Here they are put in a scratch folder that ``site.addsitedir`` processes exactly
as Python's start-up processes site-packages, in a fresh interpreter with a fresh ``HF_HOME``;
the slow tests build the real wheel and editable install into throwaway virtual environments.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

import evaluate
import pytest

from hf_fisher import _metric_install

REPO = Path(__file__).resolve().parents[1]
PTH = REPO / "hf_fisher_metric.pth"
HOOK = REPO / "_hf_fisher_metric_hook.py"


def site_dir(tmp_path: Path) -> Path:
    """A site-packages folder holding the hook, its .pth line and (a link to) hf_fisher."""
    folder = tmp_path / "site-packages"
    folder.mkdir()
    shutil.copy(PTH, folder)
    shutil.copy(HOOK, folder)
    (folder / "hf_fisher").symlink_to(REPO / "hf_fisher", target_is_directory=True)
    return folder


def fresh_python(code: str, home: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``python -S -c code`` (no site-packages of its own) with ``HF_HOME=home``."""
    drop = ("HF_MODULES_CACHE", "HF_HOME", "PYTHONPATH", "XDG_CACHE_HOME")
    environ = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=cwd,
        env={**environ, "HF_HOME": str(home), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def modules_added_by_site_dir(folder: Path) -> str:
    """Code printing the modules that processing ``folder`` as a site dir imported."""
    return (
        "import json, site, sys\nbefore = set(sys.modules)\n"
        f"site.addsitedir({str(folder)!r})\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )


def installed(home: Path) -> Path:
    digest = evaluate.loading.files_to_hash([str(_metric_install.SCRIPT_PATH)])
    folder = home / "modules" / "evaluate_modules" / "metrics" / _metric_install.CACHE_FOLDER
    return folder / digest / "fisher_robustness.py"


def test_pth_line_imports_the_hook_and_nothing_else() -> None:
    line = PTH.read_text().strip()
    assert line.startswith("import sys;") and "\n" not in line  # one line, run by site
    assert "import _hf_fisher_metric_hook" in line


def test_a_missing_hook_module_is_silent(tmp_path: Path) -> None:
    """An editable install whose checkout was deleted leaves the .pth behind: no start-up noise."""
    folder = site_dir(tmp_path)
    (folder / HOOK.name).unlink()
    done = fresh_python(modules_added_by_site_dir(folder), tmp_path / "home", tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert json.loads(done.stdout) == []


def test_hook_installs_the_metric_at_start_up_without_importing_hf_fisher(tmp_path: Path) -> None:
    home = tmp_path / "home"
    folder = site_dir(tmp_path)
    done = fresh_python(modules_added_by_site_dir(folder), home, tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    added = json.loads(done.stdout)
    assert "hf_fisher" not in added and "torch" not in added and "evaluate" not in added
    assert installed(home).read_bytes() == _metric_install.SCRIPT_PATH.read_bytes()
    # once installed, start-up costs the hook's own import and one stat: nothing else loads
    done = fresh_python(modules_added_by_site_dir(folder), home, tmp_path)
    assert json.loads(done.stdout) == ["_hf_fisher_metric_hook"]


def test_hook_never_breaks_start_up(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("HF_HOME points at a file, so nothing can be created under it")
    done = fresh_python(modules_added_by_site_dir(site_dir(tmp_path)), blocker, tmp_path)
    assert done.returncode == 0 and done.stderr == ""


@pytest.mark.parametrize(
    "env",
    [
        {"HF_MODULES_CACHE": "{tmp}/modules-cache"},
        {"HF_HOME": "{tmp}/hf-home"},
        {"XDG_CACHE_HOME": "{tmp}/xdg"},
        {"HF_HOME": "~/hf-home-{name}"},
    ],
    ids=["modules-cache", "hf-home", "xdg", "home-tilde"],
)
def test_hook_looks_where_the_installer_installs(
    env: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("HF_MODULES_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(tmp=tmp_path, name=tmp_path.name))
    monkeypatch.setenv("HOME", str(tmp_path))  # "~" and the default cache stay in tmp_path
    spec = spec_from_file_location("hook_under_test", HOOK)
    hook = module_from_spec(spec)
    spec.loader.exec_module(hook)  # runs the hook: installs into tmp_path, as at start-up
    target = _metric_install.installed_script_path()
    assert Path(hook.modules_cache()) == _metric_install.modules_cache()
    assert Path(hook.modules_cache(), hook.METRIC_FOLDER) == target.parent.parent
    assert target.is_file() and tmp_path in target.parents


def copy_project(destination: Path) -> Path:
    """The files a build reads, copied so that building leaves the checkout untouched."""
    destination.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", PTH.name, HOOK.name):
        shutil.copy(REPO / name, destination / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "hf_fisher", destination / "hf_fisher", ignore=ignore)
    return destination


def venv_python(folder: Path) -> Path:
    """A virtual environment that sees this one's packages (no network needed to install)."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(folder)],
        check=True,
    )
    return folder / "bin" / "python"


def pip_install(python: Path, *args: str | Path) -> None:
    """This interpreter's pip installing into ``python``'s environment, offline."""
    command = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    command.append("--ignore-installed")  # into the venv, whatever the base environment holds
    done = subprocess.run([*command, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr


LOAD_BY_BARE_NAME = (
    "import json, sys, evaluate\n"
    "m = evaluate.load('fisher_robustness')\n"
    "import hf_fisher\n"
    "print(json.dumps([type(m).__name__, hf_fisher.__file__]))\n"
)


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True], ids=["wheel", "editable"])
def test_pip_install_leaves_the_metric_loadable_by_bare_name(
    editable: bool, tmp_path: Path
) -> None:
    project = copy_project(Path(tmp_path / "project"))
    if not editable:
        build = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
             "-w", str(tmp_path / "dist"), str(project)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert build.returncode == 0, build.stderr
        (wheel,) = (tmp_path / "dist").glob("*.whl")
        names = zipfile.ZipFile(wheel).namelist()
        assert {PTH.name, HOOK.name, "hf_fisher/_metric_install.py"} <= set(names)
    python = venv_python(tmp_path / "venv")
    pip_install(python, *(["-e", project] if editable else [wheel]))
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_MODULES_CACHE")}
    home = tmp_path / "home"
    done = subprocess.run(
        [str(python), "-c", LOAD_BY_BARE_NAME],
        cwd=tmp_path,
        env={**environ, "HF_HOME": str(home), "HF_EVALUATE_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    name, package = json.loads(done.stdout.strip().splitlines()[-1])
    assert name == "FisherRobustness"
    assert Path(package).resolve().is_relative_to(tmp_path / ("project" if editable else "venv"))
    assert installed(home).is_file()
