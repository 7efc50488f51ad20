"""Lazy public names for a package ``__init__`` (PEP 562), so that importing it stays cheap.

A package lists where each public name is defined and lets :func:`lazy_exports` build its
module-level ``__getattr__`` and ``__dir__``: the defining module (and torch, transformers,
matplotlib... behind it) is imported on the first access of a name, and the value is then kept
as a global, so ``from package import name`` and ``package.name`` stay plain lookups afterwards.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from importlib import import_module


def lazy_exports(
    package: str, sources: Mapping[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """Build ``__getattr__`` and ``__dir__`` for ``package`` from ``{name: defining module}``.

    Args:
        package: the package's ``__name__``.
        sources: each public name and the module it is imported from on first access.

    Returns:
        ``(__getattr__, __dir__)``; ``__dir__`` lists the globals plus every name of ``sources``.

    >>> getattr_, dir_ = lazy_exports("hf_fisher", {"InputError": "hf_fisher.errors"})
    >>> getattr_("InputError").__module__, "InputError" in dir_()
    ('hf_fisher.errors', True)
    >>> getattr_("nope")
    Traceback (most recent call last):
    ...
    AttributeError: module 'hf_fisher' has no attribute 'nope'
    """

    def __getattr__(name: str) -> object:
        module = sources.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(sources))

    return __getattr__, __dir__
