"""The commands skip the collector's last pass at exit (``core.heap.no_collection_at_exit``).

Python's finalization collects every object still alive; with torch imported that is
0.45 s of each run's exit. The commands freeze them at exit instead."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from torchgraft.cli import graft, inspect
from torchgraft.core import heap


@pytest.fixture
def registered(monkeypatch) -> list:
    """What the commands hand to ``atexit`` (a registry of their own, not the process's)."""
    handlers: list = []
    fake = SimpleNamespace(register=handlers.append,
                           unregister=lambda fn: handlers.remove(fn) if fn in handlers else None)
    monkeypatch.setattr(heap, "atexit", fake, raising=False)  # (raising=False: fails by its assert on a heap without it)
    return handlers


@pytest.mark.parametrize("main, argv", [(graft.main, ["--version"]), (inspect.main, ["--help"])],
                         ids=["graft", "graft-inspect"])
def test_each_command_freezes_what_is_alive_at_exit_once(registered, capsys, main, argv):
    for _ in range(2):  # a second call in one process (graft-check runs graft per plan) adds nothing
        with pytest.raises(SystemExit):
            main(argv)
    assert registered == [gc.freeze]


@pytest.mark.slow
def test_at_interpreter_exit_the_live_objects_are_frozen(tmp_path):
    # An atexit handler registered before main() runs after the command's own (last in,
    # first out), that is, where Python would start its final collection.
    code = textwrap.dedent("""
        import atexit, gc, sys
        atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0, flush=True))
        from torchgraft.cli.graft import main
        sys.argv = ["graft", "--version"]
        main()
    """)
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert "frozen at exit: True" in ran.stdout
