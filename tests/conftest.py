"""Shared fixtures: example checkpoints in a private folder, the ``graft`` CLI run in
this process (``graft``), and the installed commands run as a user runs them (``run_cli``)."""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

# Python caches bytecode by default; this machine's environment turns that off
# (PYTHONDONTWRITEBYTECODE=1), so every pytest-xdist worker recompiled our modules and
# re-rewrote every test module's asserts on every run: 5 s of collection per worker,
# 15 s of the suite's 76 s (`pytest` on 2 cores). The suite caches it (in git-ignored
# __pycache__ folders) as Python would; the subprocesses it starts still only read it.
sys.dont_write_bytecode = False

BIN = Path(sys.executable).parent


# Property tests: 40 examples each in the everyday run, a thousand with
# `pytest --hypothesis-profile=thorough` (before a release, or after touching keys/ or plans/).
settings.register_profile("default", max_examples=40, deadline=None)  # no deadline: a loaded CI machine is not a bug
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile("default")


@pytest.fixture(autouse=True, scope="session")
def examples_dir(tmp_path_factory, worker_id) -> Path:
    """Bundled recipes build their example checkpoints here, not in the user's cache:
    one folder for the whole run, shared by the pytest-xdist workers, so each example
    is built once (a build is published only if no other worker's is there yet)."""
    base = tmp_path_factory.getbasetemp()
    path = (base if worker_id == "master" else base.parent) / "examples"
    path.mkdir(exist_ok=True)
    os.environ["TORCHGRAFT_EXAMPLES_DIR"] = str(path)
    return path


# The tests that load transformers' modeling code (a transformers target, an hf_* example,
# a port judged against transformers), peft or mergekit run on one pytest-xdist worker
# (`--dist loadgroup`): loading transformers' models alone costs 4-5 s of CPU (torch's
# compiler and export come with it), which every worker paid.
REFERENCE_LIBRARIES = pytest.mark.xdist_group("reference-libraries")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items) -> None:
    """``--dist loadgroup`` on pytest 9.2: pytest-xdist 3.8 groups tests by appending
    ``@GROUP`` to ``item._nodeid``, which pytest 9.2 no longer reads (its node ids are
    structured), so grouped tests were silently spread over every worker (pytest-xdist
    issue 1386). Do what xdist means to, on the structured id; a no-op where it works."""
    if not getattr(config.option, "loadgroup", False):  # set in pytest-xdist workers only
        return
    from _pytest.nodeid import NodeId

    for item in items:
        groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")})
        if groups and "@" not in item.nodeid:
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(groups)}")


class ReferenceLibrary:
    """``transformers = ReferenceLibrary("transformers")``: a module-level name for a library
    the tests are judged against, which imports it at first use, and skips the test if it is not installed. A module-level
    ``pytest.importorskip`` made every pytest-xdist worker import it at collection (1 s for
    transformers), the worker that runs none of its tests too."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        if attr.startswith("_"):  # pytest's collection asks every module-level name for such
            raise AttributeError(attr)
        return getattr(pytest.importorskip(self._name), attr)


def bundled_recipe_params() -> list:
    """The bundled recipes' names, for ``parametrize``; those that build a transformers
    model (target or example checkpoint) in the reference-libraries group."""
    from torchgraft.recipe.source import bundled_recipes

    def uses_transformers(path: Path) -> bool:
        text = path.read_text(encoding="utf-8")
        return "transformers." in text or "${example:hf_" in text

    return [pytest.param(p.stem, marks=REFERENCE_LIBRARIES) if uses_transformers(p) else p.stem
            for p in sorted(bundled_recipes().glob("*.yaml"))]


# Torch's DCP, imported by the tests that use it: 1 s of import that every pytest-xdist
# worker paid at collection when it was a module-level import.
dcp = ReferenceLibrary("torch.distributed.checkpoint")


def run_cli(command: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run an installed console script (``graft``, ``graft-inspect``) in a subprocess, as a user would.
    Costs ~3 s of torch import: for smoke tests of the installed commands only."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    if env and "HYDRA_FULL_ERROR" in env:
        full_env["HYDRA_FULL_ERROR"] = env["HYDRA_FULL_ERROR"]
    return subprocess.run(
        [str(BIN / command), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300
    )


@dataclass(frozen=True)
class Ran:
    """What a command run in this process did (the fields of ``subprocess.CompletedProcess`` tests read)."""

    returncode: int
    stdout: str
    stderr: str


def _clear_hydra() -> None:
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None


def _under(module: object, roots: list[Path]) -> bool:
    file = getattr(module, "__file__", None)
    if not file:
        return False
    path = Path(file).resolve()
    return any(path.is_relative_to(root) for root in roots)


def run_in_process(entry: Callable[[list[str]], object], args: list[str], *, cwd: Path, env: dict | None = None) -> Ran:
    """Run a CLI ``main(argv)`` here as its own process would: in ``cwd``, with ``env``
    (``PYTHONPATH`` entries go on ``sys.path``), stdout and stderr captured, the exit code
    from ``SystemExit`` (or the return value). Hydra's global state, logging handlers,
    the environment, ``sys.path`` and modules imported from ``cwd`` or ``PYTHONPATH``
    are put back afterwards, so calls do not see each other. (``PYTHONHASHSEED`` cannot
    be set in a running process: tests of it use ``run_cli``.)"""
    env = dict(env or {})
    assert "PYTHONHASHSEED" not in env, "use run_cli for PYTHONHASHSEED"
    extra_path = [str(Path(cwd, p).resolve()) for p in env.pop("PYTHONPATH", "").split(os.pathsep) if p]
    roots = [Path(cwd).resolve(), *map(Path, extra_path)]
    saved_env = {name: os.environ.get(name) for name in [*env, "HYDRA_FULL_ERROR"]}
    saved_path, saved_modules = list(sys.path), set(sys.modules)
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_cwd = os.getcwd()
    os.environ.pop("HYDRA_FULL_ERROR", None)
    os.environ.update(env)
    sys.path[:0] = extra_path
    out, err = io.StringIO(), io.StringIO()
    _clear_hydra()
    importlib.invalidate_caches()  # files written by the test in the same second as an earlier import
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                returned = entry(list(args))
                code = returned if isinstance(returned, int) else 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
                if not isinstance(exit_.code, (int, type(None))):
                    print(exit_.code, file=sys.stderr)
    finally:
        os.chdir(saved_cwd)
        _clear_hydra()
        for handler in root.handlers:
            if handler not in saved_handlers:
                handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        sys.path[:] = saved_path
        for name in set(sys.modules) - saved_modules:
            if _under(sys.modules[name], roots):
                del sys.modules[name]
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return Ran(code, out.getvalue(), err.getvalue())


def graft_in_process(*args: str, cwd: Path, env: dict | None = None) -> Ran:
    from torchgraft.cli.graft import main

    return run_in_process(main, list(args), cwd=cwd, env=env)


@pytest.fixture
def graft(tmp_path) -> Callable[..., Ran]:
    """``graft(*overrides)`` runs the ``graft`` CLI in this process, in a fresh working directory (``tmp_path``)."""

    def run(*args: str, env: dict | None = None, cwd: Path | None = None) -> Ran:
        return graft_in_process(*args, cwd=cwd or tmp_path, env=env)

    return run


def graft_main(monkeypatch, *argv: str) -> int:
    """``graft ARGV`` in this process (no torch import to pay again); its exit code."""
    from torchgraft.cli import graft as graft_cli

    monkeypatch.setattr(sys, "argv", ["graft", *argv])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)  # main() sets it for Hydra; a user's would mean tracebacks
    try:
        graft_cli.main()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0
