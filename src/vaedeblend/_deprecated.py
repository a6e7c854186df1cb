"""Names that moved: module ``__getattr__`` hooks that warn once per use and forward.

A public name that moves (one named in the README, docs/ or an ``__all__``) stays importable
from its old place for one release, with a ``DeprecationWarning`` naming the new place.
"""

from __future__ import annotations

import importlib
import warnings


def moved_names(old_module: str, new_module_of: dict[str, str]):
    """``__getattr__`` for ``old_module`` forwarding each listed name to its new module."""

    def __getattr__(name: str):
        if name not in new_module_of:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        warnings.warn(f"{old_module}.{name} moved to {new_module_of[name]}", DeprecationWarning, 2)
        return getattr(importlib.import_module(new_module_of[name]), name)

    return __getattr__


def moved_module(old_module: str, new_module: str):
    """``__getattr__`` for a module that moved whole: every public name forwards."""

    def __getattr__(name: str):
        if name.startswith("__"):  # import machinery probes (__path__, __file__...)
            raise AttributeError(name)
        warnings.warn(f"{old_module} moved to {new_module}", DeprecationWarning, 2)
        return getattr(importlib.import_module(new_module), name)

    return __getattr__
