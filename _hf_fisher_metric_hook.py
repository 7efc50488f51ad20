"""Start-up hook: ``evaluate.load("fisher_robustness")`` works after ``pip install hf-fisher``.

``hf_fisher_metric.pth`` (installed into site-packages next to this module by ``setup.py``)
imports this module at every interpreter start-up. evaluate resolves a bare metric name from its
modules cache only, and that cache starts empty (a fresh ``HF_HOME``), so this puts the metric
there when it is missing. It must cost nothing the rest of the time: it imports only ``os``
(already loaded by ``site``) and makes one ``stat``; hf_fisher itself is never imported here,
so a checkout earlier on ``sys.path`` still wins later. Only when the metric's folder is missing
does it load ``hf_fisher/_metric_install.py`` by path (standard library only) and install it.
A newer script replaces an older cached one when ``hf_fisher`` is imported, which the metric
script does. Nothing here may raise: a broken hook must not break Python.
"""

import os

METRIC_FOLDER = os.path.join("evaluate_modules", "metrics", "evaluate-metric--fisher_robustness")
"""The metric's folder inside evaluate's modules cache (``hf_fisher._metric_install``'s)."""


def modules_cache() -> str:
    """The modules cache of evaluate, found as ``hf_fisher._metric_install.modules_cache`` does."""
    if os.environ.get("HF_MODULES_CACHE"):
        return os.environ["HF_MODULES_CACHE"]
    xdg = os.environ.get("XDG_CACHE_HOME", "~/.cache")
    home = os.path.expanduser(os.environ.get("HF_HOME", os.path.join(xdg, "huggingface")))
    return os.path.join(home, "modules")


def _install() -> None:
    """Load the installer by path (not ``import hf_fisher``) and install the metric."""
    from importlib.util import module_from_spec, spec_from_file_location

    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "hf_fisher", "_metric_install.py")
    spec = spec_from_file_location("_hf_fisher_metric_install", path)
    installer = module_from_spec(spec)
    spec.loader.exec_module(installer)
    installer.install_metric()


def run() -> None:
    """Install the metric when its folder is missing; ignore every failure."""
    try:
        if not os.path.isdir(os.path.join(modules_cache(), METRIC_FOLDER)):
            _install()
    except Exception:  # start-up must go on (a read-only cache, a removed package, ...)
        pass


run()
