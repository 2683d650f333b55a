"""Import an object from its dotted path (``pkg.module.Class``, or a nested attribute).

The one importer behind ``target._target_``, ``types:`` selection and the inspector.
Like ``python -m``, it looks in the current directory first, so a project's own
``mymodels.py`` imports without ``PYTHONPATH``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any


def project_on_path() -> str:
    """Put the current directory at the front of ``sys.path`` (as ``python -m`` does) if
    it is not there yet; return it. Console scripts start with their ``bin/`` instead."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:  # "" is the current directory too
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()
    return cwd


class ImportFailed(Exception):
    """Why a dotted path did not import: ``reason`` is one line for the user."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def locate(path: str) -> Any:
    """The object at ``path``; ``ImportFailed`` with a one-line reason otherwise."""
    parts = path.split(".")
    if len(parts) < 2 or not all(parts):
        raise ImportFailed("expected a dotted path such as torchgraft.examples.ConvNet")
    cwd = project_on_path()
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(err.name):
                continue  # a shorter prefix may be the module
            raise ImportFailed(str(err)) from None
        except Exception as err:
            raise ImportFailed(f"{type(err).__name__}: {err}") from None
        for name in parts[split:]:
            if not hasattr(obj, name):
                raise ImportFailed(f"'{module_name}' has no attribute '{name}'")
            obj = getattr(obj, name)
            module_name = f"{module_name}.{name}"
        return obj
    raise ImportFailed(f"no module named '{parts[0]}' (neither {parts[0]}.py nor {parts[0]}/ in the current directory {cwd}, nor an installed package)")


def find_class(path: str) -> type | None:
    """The class at ``path``, or None if it does not import or is not a class."""
    try:
        obj = locate(path)
    except ImportFailed:
        return None
    return obj if isinstance(obj, type) else None
