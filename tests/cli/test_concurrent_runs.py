"""Runs started together (the same second, the same working directory and output) never
share a run directory or a temporary and never crash on each other's files: 8 processes
(forked from this one, so torch is not imported 8 times) as a user's parallel shell
loop or a sweep launcher would start them."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from safetensors import safe_open

from conftest import graft_in_process

pytestmark = pytest.mark.slow  # 8 processes at once: run by `pytest -m slow` (CI runs both tiers)

N = 8


def _run(args: tuple[str, ...], cwd: str, results) -> None:
    ran = graft_in_process(*args, cwd=Path(cwd))
    results.put((ran.returncode, ran.stderr.strip()))


def _together(args: tuple[str, ...], cwd: Path) -> list[tuple[int, str]]:
    warm = cwd / "warm-up"  # imports and the example checkpoint, once, before forking
    warm.mkdir()
    assert graft_in_process("recipe=conv_only", "dry_run=true", cwd=warm).returncode == 0
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start = context.Barrier(N)

    def go(barrier=start):
        barrier.wait()  # all 8 start within the same second
        _run(args, str(cwd), results)

    processes = [context.Process(target=go) for _ in range(N)]
    for p in processes:
        p.start()
    outcomes = [results.get(timeout=300) for _ in processes]
    for p in processes:
        p.join(timeout=60)
    return outcomes


def test_eight_dry_runs_started_together_each_get_their_own_run_directory(tmp_path):
    outcomes = _together(("recipe=conv_only", "dry_run=true"), tmp_path)
    assert [code for code, _ in outcomes] == [0] * N, outcomes
    assert len({line for _, line in outcomes}) == N  # each names its own plan.json
    runs = [d for d in (tmp_path / "outputs" / "conv_only").iterdir() if d.name != "latest"]
    assert len(runs) == N and all((d / "plan.json").is_file() for d in runs)
    assert not [p for p in tmp_path.rglob(".*tmp*")]


def test_eight_overwrites_started_together_leave_one_whole_output(tmp_path):
    out = tmp_path / "m.safetensors"
    outcomes = _together(("recipe=conv_only", f"output.path={out}", "output.overwrite=true"), tmp_path)
    assert all(code == 0 for code, _ in outcomes), outcomes
    with safe_open(str(out), "pt") as f:
        assert len(list(f.keys())) > 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries
