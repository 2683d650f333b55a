"""What a target spec read from a plan file may name.

A recipe is trusted like a training script: its ``_target_`` can be any callable. A
plan file is not (docs/security.md): applying one calls only the target model class
itself and, inside its arguments, classes that are already loaded and not on the
blocklist below. Everything is checked on the spec's text and on already-imported
objects, before anything is built and without importing a module the plan chooses
(beyond the target class's own).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from torchgraft.core.errors import PlanError
from torchgraft.core.imports import ImportFailed, locate

# Modules whose classes touch files, processes, the network or the interpreter when
# constructed (``io.FileIO('x', 'w')`` truncates, ``ctypes.CDLL`` loads a library,
# ``subprocess.Popen`` runs a program ...). A class defined in one of them, or deriving
# from one defined there, is refused in a plan.
BLOCKED_MODULES = (
    "builtins", "io", "_io", "os", "posix", "nt", "subprocess", "_posixsubprocess", "shutil", "socket", "_socket",
    "ssl", "select", "selectors", "ctypes", "_ctypes", "pickle", "_pickle", "marshal", "shelve", "dbm", "copyreg",
    "importlib", "runpy", "code", "codeop", "pdb", "bdb", "tempfile", "zipfile", "tarfile", "gzip", "bz2", "lzma",
    "zipimport", "logging", "sys", "pty", "tty", "signal", "threading", "_thread", "multiprocessing", "concurrent",
    "asyncio", "sqlite3", "webbrowser", "http", "urllib", "ftplib", "smtplib", "telnetlib", "xmlrpc", "pathlib",
    "glob", "fileinput", "mmap", "types", "functools", "operator", "inspect", "atexit", "gc", "weakref",
    "numpy", "torch.serialization", "torch.hub", "torch.jit", "torch.package", "torch.utils", "torch.multiprocessing",
    "torch.distributed", "torch.storage", "torch.library", "torch.ops", "torch._ops", "torch._C", "torch.cuda",
    "hydra", "omegaconf", "torchgraft.checkpoints", "torchgraft.execution", "torchgraft.plans", "torchgraft.cli",
)


def _blocked(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in BLOCKED_MODULES)


def _loaded(path: str) -> Any:
    """The object at ``path`` if its module is already imported; never imports one."""
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        obj = sys.modules.get(".".join(parts[:split]))
        if obj is None:
            continue
        for name in parts[split:]:
            obj = getattr(obj, name, None)
            if obj is None:
                return None
        return obj
    return None


def check_plan_spec(spec: Mapping[str, Any], field: str = "target.spec", *, imports: bool = True) -> None:
    """Refuse, naming the field, a plan's target spec that would call anything but the
    target class and loaded, non-blocklisted classes in its arguments. ``imports=False``
    checks the text only (reading a plan); with it, the target class is imported and
    every class is looked at (before the target is built)."""
    from torch import nn

    path = spec.get("_target_")
    if not isinstance(path, str) or _blocked(path.rpartition(".")[0]):
        raise PlanError(f"{field}._target_", f"{path!r} is not a model class a plan may build")
    if not imports:
        _check_value({k: v for k, v in spec.items() if k != "_target_"}, field, imports=False)
        return
    try:
        cls = locate(path)
    except ImportFailed as err:
        raise PlanError(f"{field}._target_", f"cannot import '{path}': {err.reason}") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise PlanError(f"{field}._target_", f"'{path}' is not a torch.nn.Module subclass; a plan builds only a model class")
    _check_value({k: v for k, v in spec.items() if k != "_target_"}, field)


def _check_value(value: Any, field: str, imports: bool = True) -> None:
    if isinstance(value, str):
        if "${" in value:  # OmegaConf would resolve it while building: an env var, a resolver
            raise PlanError(field, "an interpolation ('${...}') in a plan's target spec is refused")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_value(item, f"{field}[{i}]", imports)
        return
    if not isinstance(value, Mapping):
        return
    if "_target_" in value:
        _check_nested_class(value["_target_"], f"{field}._target_", imports)
    for key, item in value.items():
        if isinstance(key, str) and "${" in key:
            raise PlanError(field, "an interpolation ('${...}') in a plan's target spec is refused")
        if key != "_target_":
            _check_value(item, f"{field}.{key}", imports)


def _check_nested_class(path: Any, field: str, imports: bool) -> None:
    if not isinstance(path, str):
        raise PlanError(field, f"expected a dotted class path, got {path!r}")
    shown = path.encode("unicode_escape").decode("ascii")
    if _blocked(path.rpartition(".")[0]):
        raise PlanError(field, f"'{shown}' is refused in a plan (a plan file may not name what touches files, "
                               "processes or the interpreter)")
    if not imports:
        return
    obj = _loaded(path)
    if obj is None:
        raise PlanError(field, f"'{shown}' is not a class loaded with the target; a plan does not import modules "
                               "of its own choosing")
    if not isinstance(obj, type):
        raise PlanError(field, f"'{shown}' is a {type(obj).__name__}, not a class; a plan may call no function")
    bases = [getattr(c, "__module__", "") or "" for c in obj.__mro__]
    if issubclass(obj, type) or any(_blocked(m) for m in bases if m != "builtins"):
        raise PlanError(field, f"'{shown}' is refused in a plan (a plan file may not name what touches files, "
                               "processes or the interpreter)")
