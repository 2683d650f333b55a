"""Faults while publishing: a directory overwrite killed between its two renames, killed
runs' temporaries, a full disk, signals and concurrent writers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from torchgraft.checkpoints import atomic
from torchgraft.checkpoints.atomic import atomic_directory, atomic_output, remove_stale_temporaries
from torchgraft.core.errors import OutputError
from torchgraft.plans.files import write_text

REPLACEABLE = re.compile("model.safetensors")

KILLED_BETWEEN_RENAMES = """
import os, re, signal, sys
from pathlib import Path
from torchgraft.checkpoints import atomic
atomic._exchange = lambda a, b: False  # the two-rename scheme of filesystems without RENAME_EXCHANGE
real = os.rename
def rename(a, b):
    real(a, b)
    if Path(b).name.startswith(".out.old-"):
        os.kill(os.getpid(), signal.SIGKILL)  # between the two renames
os.rename = rename
with atomic.atomic_directory(Path(sys.argv[1]), overwrite=True, replaceable=re.compile("model.safetensors")) as tmp:
    (tmp / "model.safetensors").write_text("new")
"""


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_killed_between_the_two_renames_the_next_run_restores_then_replaces(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_text("old")
    killed = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_RENAMES, str(out)], capture_output=True)
    assert killed.returncode == -9
    assert not out.exists() and len(leftovers(tmp_path)) == 2  # the old output aside, the new one unpublished
    with atomic_directory(out, overwrite=True, replaceable=REPLACEABLE) as tmp:
        assert (out / "model.safetensors").read_text() == "old"  # the old output stands again first
        (tmp / "model.safetensors").write_text("new")
    assert (out / "model.safetensors").read_text() == "new"
    assert leftovers(tmp_path) == []


def test_a_directory_overwrite_is_one_exchange_where_the_filesystem_has_it(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    if not atomic._exchange(a, b):
        pytest.skip("no renameat2(RENAME_EXCHANGE) on this filesystem")
    assert (b / "x").read_text() == "a"
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_text("old")
    renames = []
    monkeypatch.setattr(os, "rename", lambda *args: renames.append(args))
    with atomic_directory(out, overwrite=True, replaceable=REPLACEABLE) as tmp:
        (tmp / "model.safetensors").write_text("new")
    assert renames == [] and (out / "model.safetensors").read_text() == "new"
    assert leftovers(tmp_path) == []


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_only_dead_runs_temporaries_are_removed(tmp_path):
    out = tmp_path / "m.safetensors"
    dead = tmp_path / f".m.safetensors.tmp-{dead_pid()}-0a1b2c3d"
    live = tmp_path / f".m.safetensors.tmp-{os.getpid()}-0a1b2c3d"
    unnamed = tmp_path / ".m.safetensors.tmp-0a1b2c3d"
    other = tmp_path / f".n.safetensors.tmp-{dead_pid()}-0a1b2c3d"
    for p in (dead, live, unnamed, other):
        p.write_bytes(b"x" * 100)
    with atomic_output(out, overwrite=False) as tmp:
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new"
    assert not dead.exists() and live.exists() and unnamed.exists() and other.exists()
    assert remove_stale_temporaries(out) == []


def test_a_full_disk_names_the_output_and_the_errno(tmp_path):
    script = ("import resource, sys; from pathlib import Path; from torchgraft.checkpoints.atomic import atomic_output\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
              "try:\n"
              "    with atomic_output(Path(sys.argv[1]), overwrite=False) as tmp:\n"
              "        tmp.write_bytes(b'x' * 100000)\n"
              "except Exception as e:\n"
              "    print(type(e).__name__, e)\n")
    out = tmp_path / "m.safetensors"
    result = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True)
    assert result.stdout.strip() == f"OutputError output.path: {out}: cannot write (File too large, EFBIG)"
    assert leftovers(tmp_path) == [] and not out.exists()


def test_concurrent_plan_writes_never_take_each_others_temporary(tmp_path):
    path = tmp_path / "plan.json"
    errors = []

    def write(n):
        try:
            for _ in range(30):
                write_text(path, f"{n}\n" * 1000)
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(path.read_text().splitlines())) == 1
    assert leftovers(tmp_path) == []


def test_concurrent_overwrites_never_crash(tmp_path):
    out = tmp_path / "m.safetensors"
    errors = []

    def run(n):
        try:
            for _ in range(10):
                with atomic_output(out, overwrite=True) as tmp:
                    tmp.write_bytes(bytes([n]) * 10000)
        except OutputError:
            pass
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(out.read_bytes())) == 1
    assert leftovers(tmp_path) == []
