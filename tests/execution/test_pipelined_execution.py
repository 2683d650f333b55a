"""Reads, computes and writes overlapped (``execution/pipeline.py``) write exactly what a
sequential run writes, cut large tensors into row chunks within the memory bound, and
fail as a sequential run fails: one line, nothing published."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

import torchgraft
from conftest import bundled_recipe_params
from torchgraft.checkpoints import open_writer
from torchgraft.checkpoints.formats import directory_needed
from torchgraft.checkpoints.writers import SafetensorsWriter
from torchgraft.core.errors import SourceError
from torchgraft.core.tensors import TensorInfo
from torchgraft.execution import units
from torchgraft.execution.executor import execute
from torchgraft.execution.pipeline import Settings
from torchgraft.recipe.source import bundled_recipes

SEQUENTIAL = Settings(in_flight=1 << 40, sequential=True)  # one tensor at a time, none in chunks
SMALL = Settings(in_flight=16 << 10)  # overlapped, every tensor over 4 KiB in row chunks
OVERLAPPED = (Settings(), SMALL)


def written(plan, path, settings) -> dict[str, bytes]:
    """Every file of the output (a model directory where the plan needs one)."""
    if directory_needed(path, sharded=plan.layout.shard_size is not None, copies=bool(plan.layout.names)):
        path = path.with_suffix("")
    execute(plan, path, settings=settings)
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    data = {f.name: f.read_bytes() for f in files}
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    return data


def same_bytes(plan, tmp_path, monkeypatch) -> int:
    """Checks every overlapped setting against sequential execution; the chunks written."""
    parts = []
    write_part = SafetensorsWriter.write_part
    monkeypatch.setattr(SafetensorsWriter, "write_part", lambda self, key, data: parts.append(key) or write_part(self, key, data))
    expected = written(plan, tmp_path / "out.safetensors", SEQUENTIAL)
    assert not parts
    for settings in OVERLAPPED:
        assert written(plan, tmp_path / "out.safetensors", settings) == expected, settings
    return len(parts)


@pytest.mark.parametrize("name", bundled_recipe_params())
def test_every_bundled_recipe_writes_the_same_bytes_overlapped(name, tmp_path, monkeypatch):
    same_bytes(torchgraft.plan(bundled_recipes() / f"{name}.yaml"), tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three seeded float32 checkpoints (and a bfloat16 tensor, an integer buffer)."""
    directory = tmp_path_factory.mktemp("pipelined")
    paths = []
    for s in range(3):
        generator = torch.Generator().manual_seed(s)
        tensors = {f"layers.{i}.weight": torch.randn(96, 80, generator=generator) for i in range(6)}
        tensors["embed.weight"] = torch.randn(300, 64, generator=generator)
        tensors["norm.weight"] = torch.randn(80, generator=generator).to(torch.bfloat16)
        tensors["steps"] = torch.tensor([100 * (s + 1)], dtype=torch.int64)
        path = directory / f"m{s}.safetensors"
        from safetensors.torch import save_file

        save_file(tensors, path)
        paths.append(str(path))
    return paths


CASES = {
    "cast to bfloat16 (numpy)": ({"from": "a"}, {"dtype": "bfloat16"}),
    "cast to float16 (numpy)": ({"from": "a"}, {"dtype": "float16"}),
    "cast and scale (torch)": ({"from": "a", "transform": [{"scale": 0.5}, {"cast": "bfloat16"}], "exclude": "steps"}, {}),
    "transpose": ({"from": "a", "select": "layers.*", "transform": ["transpose"]}, {}),
    "mean": ({"from": ["a", "b", "c"], "merge": "mean"}, {}),
    "linear to float16": ({"from": ["a", "b"], "merge": {"method": "linear", "weights": [0.3, 0.7]}}, {"dtype": "float16"}),
    "weighted": ({"from": ["a", "b"], "merge": {"weights": [0.25, 0.75]}}, {}),
    "ties": ({"from": ["a", "b"], "merge": {"method": "ties", "base": "c", "density": 0.5, "weights": [0.5, 0.5]},
              "exclude": "steps"}, {}),
    "slerp": ({"from": ["a", "b"], "merge": {"method": "slerp", "t": 0.3}, "exclude": "steps"}, {}),
    "concat": ({"to": "layers.{i}.fused", "from": ["a:layers.{i}.weight", {"key": "b:layers.{i}.weight", "transform": [{"scale": 2.0}]}],
                "merge": {"concat": 1}, "transform": ["transpose"]}, {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_casts_merges_and_transforms_write_the_same_bytes_overlapped(case, models, tmp_path, monkeypatch):
    rule, output = CASES[case]
    recipe = {"sources": dict(zip("abc", models)), "target": None, "rules": [rule], "output": output,
              "policy": {"unused": "ignore"}}
    chunks = same_bytes(torchgraft.plan(recipe), tmp_path, monkeypatch)
    row_wise = "cast" in case or case in ("mean", "linear to float16", "weighted")
    assert (chunks > 0) == row_wise  # only work that is the same row by row is cut into rows


# A fresh interpreter, so that its peak RSS is its own: the growth of VmHWM over the run
# (ru_maxrss is carried over exec from the forking process, here pytest).
CHILD = """
import json, sys, torch, torchgraft
from torchgraft.execution.executor import execute
from torchgraft.execution.pipeline import Settings

def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

x = torch.rand(1024, 1024)
(x * 0.5).to(torch.bfloat16)  # warm torch's CPU runtime up
del x
plan = torchgraft.plan(json.loads(sys.argv[1]))
before = peak()
execute(plan, sys.argv[2], settings=Settings(in_flight=int(sys.argv[3])))
print(json.dumps({"before": before, "after": peak()}))
"""

MiB = 2**20
ROWS, COLS = 16384, 4096  # one 256 MiB float32 tensor


@pytest.mark.slow  # a fresh interpreter, for its peak RSS
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_a_tensor_larger_than_the_bound_is_computed_in_row_chunks_within_it(tmp_path):
    source = tmp_path / "big.safetensors"
    info = TensorInfo("embed.weight", (ROWS, COLS), "float32")
    with open_writer(source, [info], {}) as writer:  # written in parts: never 256 MiB here either
        for first in range(0, ROWS, 1024):
            writer.write_part(info.key, torch.arange(first * COLS, (first + 1024) * COLS, dtype=torch.float32).numpy())
    recipe = {"sources": {"src": str(source)}, "target": None,
              "rules": [{"from": "src", "transform": [{"scale": 0.5}, {"cast": "bfloat16"}]}]}
    out = tmp_path / "out.safetensors"
    bound = 64 * MiB
    result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(recipe), str(out), str(bound)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    growth = report["after"] - report["before"]
    # Whole, the tensor would take 640 MiB (256 read, 256 scaled, 128 cast); in chunks: the
    # bytes in flight, plus what is freed and not yet trimmed (HeapTrimmer.EVERY) and what
    # the three threads' malloc arenas hold apart (measured 81-99 MiB in all).
    assert growth < 2 * bound, f"peak RSS grew by {growth / MiB:.0f} MiB"
    with safe_open(out, "pt") as f:
        for rows in (slice(0, 3), slice(ROWS // 2, ROWS // 2 + 3), slice(ROWS - 3, ROWS)):
            values = torch.arange(rows.start * COLS, rows.stop * COLS, dtype=torch.float32).view(-1, COLS)
            assert torch.equal(f.get_slice("embed.weight")[rows], (values * 0.5).to(torch.bfloat16))


@pytest.mark.parametrize(("stage", "rule"), [("read_bits", {"from": ["a", "b"], "merge": "mean", "exclude": "steps"}),
                                             ("read_cast", {"from": "a"})])  # a read thread's, a compute thread's
def test_an_error_in_the_middle_of_an_overlapped_run_is_one_line_and_publishes_nothing(stage, rule, models, graft,
                                                                                       tmp_path, monkeypatch):
    real, calls = getattr(units, stage), []

    def failing(*args):
        calls.append(1)
        if len(calls) == 5:
            raise SourceError("sources.a", "m0.safetensors: ended early (truncated since it was opened?)")
        return real(*args)

    monkeypatch.setattr(units, stage, failing)
    out = tmp_path / "out" / "model.safetensors"
    out.parent.mkdir()
    recipe = tmp_path / "recipes" / "cast.yaml"
    recipe.parent.mkdir()
    recipe.write_text(json.dumps({"sources": {"a": models[0], "b": models[1]}, "target": None, "rules": [rule],
                                  "output": {"dtype": "bfloat16"}, "policy": {"unused": "ignore"}}))
    ran = graft("recipe=cast", f"output.path={out}", "in_flight=16KiB")
    assert ran.returncode == 1
    assert ran.stderr.strip().splitlines()[-1] == "error: sources.a: m0.safetensors: ended early (truncated since it was opened?)"
    assert "Traceback" not in ran.stderr
    assert list(out.parent.iterdir()) == []  # nothing published, no temporary file left
    assert len(calls) == 5  # the stages stopped at the failure


def test_an_interrupt_in_a_stage_stops_every_stage_and_leaves_nothing(models, tmp_path, monkeypatch):
    import threading

    real, calls = units.read_cast, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(units, "read_cast", interrupted)
    plan = torchgraft.plan({"sources": {"a": models[0]}, "target": None, "rules": [{"from": "a"}], "output": {"dtype": "bfloat16"}})
    out = tmp_path / "out" / "model.safetensors"
    out.parent.mkdir()
    with pytest.raises(KeyboardInterrupt):
        execute(plan, out, settings=SMALL)
    assert list(out.parent.iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("torchgraft-")]


def test_the_caller_keeps_its_torch_threads(models, tmp_path):
    """The compute thread runs torch on one thread; the caller's setting is put back."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        plan = torchgraft.plan({"sources": dict(zip("ab", models)), "target": None, "policy": {"unused": "ignore"},
                                "rules": [{"from": ["a", "b"], "merge": {"weights": [0.25, 0.75]}}]})
        execute(plan, tmp_path / "out.safetensors", settings=SMALL)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
