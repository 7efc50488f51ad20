"""Ship ``hf_fisher_metric.pth`` at the top of site-packages (all metadata is in pyproject.toml).

A ``.pth`` file must sit in site-packages itself, which package data cannot reach, so
``build_py`` copies it there: into the build folder for a wheel, and into the editable wheel's
root for ``pip install -e`` (setuptools' PEP 660 build puts only that root, the dist-info and
its path hook into an editable wheel). Why a start-up hook: docs/metric.md.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_FILE = "hf_fisher_metric.pth"


class BuildPyWithPth(build_py):
    """``build_py`` that also places :data:`PTH_FILE` next to the packages."""

    def run(self) -> None:
        """Build the packages, then copy the ``.pth`` file where the wheel's root is."""
        super().run()
        if self.editable_mode:
            target = self.get_finalized_command("install").install_lib
        else:
            target = self.build_lib
        self.copy_file(PTH_FILE, os.path.join(target, PTH_FILE))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        """The package files plus the ``.pth`` file (what a wheel records)."""
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH_FILE)]


setup(cmdclass={"build_py": BuildPyWithPth})
