"""Run directories (``outputs/RECIPE/DATE``): one per run, even for runs started in the
same second; ``latest`` beside them points at the newest; a run that fails with a user
error, and a ``check=``, leave none behind (``debug=true`` keeps it)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from pathlib import Path

# What ${fresh_dir:...} makes of hydra.run.dir's default: DATE, or DATE_2, DATE_3 ...
_FRESH = re.compile(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d(_\d+)?")
LATEST = "latest"


def fresh_dir(path: str) -> str:
    """``${fresh_dir:PATH}``: PATH, else PATH_2, PATH_3 ..., the first that does not exist,
    created here (``mkdir`` is atomic, so two processes never get the same one)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = path if n == 1 else f"{path}_{n}"
        try:
            os.mkdir(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{path}: 10,000 run directories of the same second")


def register_resolver() -> None:
    """Make ``${fresh_dir:PATH}`` available to hydra.run.dir and hydra.sweep.dir (idempotent)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("fresh_dir"):
        OmegaConf.register_new_resolver("fresh_dir", fresh_dir)


def is_fresh(run_dir: Path) -> bool:
    """Named by ``fresh_dir`` from the default pattern (not a ``hydra.run.dir`` the user chose)."""
    return _FRESH.fullmatch(run_dir.name) is not None


def point_latest(run_dir: Path) -> None:
    """``run_dir/../latest`` -> ``run_dir`` (relative, replaced atomically)."""
    if not is_fresh(run_dir):
        return
    link = run_dir.parent / LATEST
    tmp = run_dir.parent / f".{LATEST}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(run_dir.name, tmp)
    os.replace(tmp, link)


def discard(run_dir: Path) -> None:
    """Remove a run directory this run made (and its then empty ``outputs/RECIPE``, ``outputs``):
    only a fresh one, and only what Hydra and this run put in it."""
    run_dir = run_dir.resolve()
    cwd = Path.cwd().resolve()
    if not is_fresh(run_dir) or not run_dir.is_relative_to(cwd) or run_dir == cwd:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):  # graft.log is open in it
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve().is_relative_to(run_dir):
            root.removeHandler(handler)
            handler.close()
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in run_dir.parents[:2]:
        if parent == cwd or not parent.is_relative_to(cwd):
            break
        with contextlib.suppress(OSError):
            os.rmdir(parent)  # only if empty
