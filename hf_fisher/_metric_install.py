"""Install the metric script into evaluate's modules cache, without importing evaluate or torch.

``import hf_fisher`` calls :func:`ensure_metric_installed`, so this module imports only the
standard library: finding the cache and hashing the script reproduce ``evaluate.config`` and
``evaluate.loading.files_to_hash`` (tests/test_metric.py and tests/test_imports.py check that
the path and hash equal evaluate's). The public names are re-exported by ``hf_fisher.metric``.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from hashlib import sha256
from pathlib import Path

logger = logging.getLogger(__name__)

METRIC_NAME = "fisher_robustness"
"""The name ``evaluate.load`` takes."""

SCRIPT_PATH = Path(__file__).resolve().parent / "metric_module" / f"{METRIC_NAME}.py"
"""The metric script shipped inside the package (a byte-identical copy of the Space's script)."""

CACHE_FOLDER = f"evaluate-metric--{METRIC_NAME}"


def modules_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """The modules cache of evaluate, found as ``evaluate.config`` does (without importing it).

    ``HF_MODULES_CACHE``, else ``$HF_HOME/modules``, else ``$XDG_CACHE_HOME/huggingface/modules``
    (``~/.cache/huggingface/modules``).
    """
    if cache_dir is not None:
        return Path(cache_dir)
    if os.getenv("HF_MODULES_CACHE"):
        return Path(os.environ["HF_MODULES_CACHE"])
    xdg = os.getenv("XDG_CACHE_HOME", "~/.cache")
    home = os.path.expanduser(os.getenv("HF_HOME", os.path.join(xdg, "huggingface")))
    return Path(home) / "modules"


def script_hash(path: str | os.PathLike = SCRIPT_PATH) -> str:
    """The hash evaluate names a cached script's folder by (``evaluate.loading.files_to_hash``).

    SHA-256 of the script's lines with ``#`` comments removed, joined by newlines.
    """
    with open(path, encoding="utf-8") as handle:
        lines = [re.sub(r"#.*", "", line) for line in handle.readlines()]
    return sha256("\n".join(line for line in lines if line).encode("utf-8")).hexdigest()


def installed_script_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`install_metric` puts the script for ``cache_dir`` (default: evaluate's)."""
    folder = modules_cache(cache_dir) / "evaluate_modules" / "metrics" / CACHE_FOLDER
    return folder / script_hash() / f"{METRIC_NAME}.py"


def install_metric(cache_dir: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Install the metric script so that ``evaluate.load("fisher_robustness")`` works offline.

    evaluate falls back to ``<modules cache>/evaluate_modules/metrics/
    evaluate-metric--fisher_robustness/<hash>/fisher_robustness.py`` when the Hub cannot be
    reached (or ``HF_EVALUATE_OFFLINE=1``); this writes that file and the ``__init__.py`` files
    that make each folder importable.

    Args:
        cache_dir: the modules cache (default: ``HF_MODULES_CACHE`` / ``HF_HOME`` as evaluate).
        force: rewrite the script even if it is already there.

    Returns:
        The installed script's path.
    """
    root = modules_cache(cache_dir)
    target = installed_script_path(root)
    if target.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = root
    for part in target.parent.relative_to(root).parts:
        folder = folder / part
        (folder / "__init__.py").touch()
    (root / "__init__.py").touch()
    with tempfile.NamedTemporaryFile("wb", dir=target.parent, delete=False) as handle:
        handle.write(SCRIPT_PATH.read_bytes())
    os.replace(handle.name, target)  # atomic; the new mtime makes it evaluate's latest
    logger.debug("installed the %s metric at %s", METRIC_NAME, target)
    return target


def ensure_metric_installed() -> None:
    """Install the metric if missing (else: hash the script, one stat); never raises (on import)."""
    try:
        if not installed_script_path().exists():
            install_metric()
    except OSError as error:  # a read-only or unreadable cache must not break ``import``
        logger.debug("could not install the %s metric: %s", METRIC_NAME, error)
