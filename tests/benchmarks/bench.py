#!/usr/bin/env python
"""torchgraft against cp and the usual scripts: wall time and peak RSS, same run.

A script, not a test (pytest collects only test_*.py): run it by hand, on a quiet
machine, from the repository root::

    .venv/bin/python tests/benchmarks/bench.py                    # every case, 3 runs each
    .venv/bin/python tests/benchmarks/bench.py --cases full,dry --runs 5 --dir /tmp/tgb

Every command runs in a process of its own, started from this one (which never
imports torch, so children do not inherit its RSS). Wall time is the median of the
runs, and the commands of a case are interleaved (each round runs every command once,
in a rotated order), so a slow minute of this shared VM falls on the baselines and on
torchgraft alike; peak RSS is the child's ``ru_maxrss`` from ``wait4`` -- what ``/usr/bin/time -v``
reports, resident pages of memory-mapped files included. The source is read once
before each case (warm cache); outputs are deleted and ``sync``ed between runs, so the
write-back of one run does not land on the next. Synthetic checkpoints are built
under ``--dir`` and deleted at the end (``--keep`` keeps them).

Cases
  full    ~2 GB, 200 float32 tensors, every key renamed (.safetensors and .pt sources)
  select  16 of 64 tensors (~2 GB source, ~0.5 GB out)
  cast    the ~2 GB checkpoint cast to bfloat16
  rss     the same copy and cast at 1 GB and 4 GB: peak RSS must not grow
  dry     100k-tensor checkpoint (60 layers x 256 experts), 50 rules: dry run only
          (``--keys N``: as many experts per layer as make about N tensors; over 300k
          tensors the source is a model directory of 300k-tensor shards, as one file's
          header passes the 100 MB safetensors limit near 900k tensors)
  mean    mean of 3 x 512 MiB (64 float32 tensors each) against a safetensors script
          (load_file x3 -> in-place mean -> save_file), API and CLI
  convert the ~2 GB pytorch_model.bin (torch.save zip) -> model.safetensors through the
          CLI, against cp + sync and the safetensors project's torch.load + save_file

``--trim-every BYTES`` sets ``core.heap.HeapTrimmer.EVERY`` in torchgraft's children
(how the trim policy was chosen: docs/performance.md).
  stack   48 layers x 128 experts stacked by 3 rules: plan time against a plain rename
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

PYTHON = sys.executable
GRAFT = str(Path(sys.executable).parent / "graft")
MiB = 2**20

# -- child programs (each run in a fresh interpreter) ------------------------------------

GENERATE = """
import sys, torch
from torchgraft.checkpoints import open_writer
from torchgraft.core.tensors import TensorInfo
path, count, rows, cols, seed = sys.argv[1], *map(int, sys.argv[2:6])
infos = [TensorInfo(f"model.layers.{i}.weight", (rows, cols), "float32") for i in range(count)]
def value(i):
    return torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed + i))
if path.endswith(".safetensors"):  # streamed: never the whole checkpoint in memory
    with open_writer(path, infos, {}) as writer:
        for i, info in enumerate(infos):
            writer.write(info.key, value(i))
else:
    torch.save({info.key: value(i) for i, info in enumerate(infos)}, path)
"""

# 60 layers x E experts x 7 tensors + 7 per layer + 3 (E=256: 107,943 tensors). The data
# section is a hole (a sparse file): a dry run must not read it, so it costs no disk.
GENERATE_MOE = """
import json, struct, sys
experts = int(sys.argv[2])
def tensors():
    yield "model.embed_tokens.weight", [32000, 64]
    for l in range(60):
        p = f"model.layers.{l}"
        for n in "qkvo":
            yield f"{p}.self_attn.{n}_proj.weight", [64, 64]
        yield f"{p}.input_layernorm.weight", [64]
        yield f"{p}.post_attention_layernorm.weight", [64]
        yield f"{p}.mlp.gate.weight", [256, 64]
        for e in range(experts):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                yield f"{p}.mlp.experts.{e}.{proj}.weight", [256, 64]
                yield f"{p}.mlp.experts.{e}.{proj}.scale", [256]
            yield f"{p}.mlp.experts.{e}.bias", [64]
    yield "model.norm.weight", [64]
    yield "lm_head.weight", [32000, 64]
shards = int(sys.argv[3]) if len(sys.argv) > 3 else 1  # > 1: a model directory of that many shards
items = list(tensors())
per = -(-len(items) // shards)
index = {}
for s in range(shards):
    name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors" if shards > 1 else sys.argv[1]
    header, end = {}, 0
    for key, shape in items[s * per:(s + 1) * per]:
        n = 4
        for d in shape:
            n *= d
        header[key] = {"dtype": "F32", "shape": shape, "data_offsets": [end, end + n]}
        index[key] = name
        end += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(name if shards == 1 else f"{sys.argv[1]}/{name}", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + end)
if shards > 1:
    with open(f"{sys.argv[1]}/model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {}, "weight_map": index}, f)
"""

# The same edit for both baselines: only how the state dict is loaded and saved differs.
_EDIT = """
if job == "rename":
    state = {k.replace("model.layers.", "blocks."): v for k, v in state.items()}
elif job == "select":
    state = {k: v for k, v in state.items() if int(k.split(".")[2]) % 4 == 0}
elif job == "cast":
    state = {k: v.to(torch.bfloat16) for k, v in state.items()}
"""

SEED = """
import sys, torch
src, dst, job = sys.argv[1:4]
state = torch.load(src, weights_only=True)  # the whole checkpoint in memory
""" + _EDIT + """
torch.save(state, dst)
"""

SAFETENSORS = """
import sys, torch
from safetensors.torch import load_file, save_file
src, dst, job = sys.argv[1:4]
state = load_file(src)
""" + _EDIT + """
save_file(state, dst)
"""

TRIM: list[int] = []  # --trim-every, patched into torchgraft's children

MEAN_SCRIPT = """
import sys, torch
from safetensors.torch import load_file, save_file
*srcs, dst = sys.argv[1:]
states = [load_file(s) for s in srcs]
out = states[0]
for k, v in out.items():
    for other in states[1:]:
        v.add_(other[k])
    v.div_(len(states))
save_file(out, dst)
"""

CONVERT_SCRIPT = """
import sys, torch
from safetensors.torch import save_file
state = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
save_file({k: v.contiguous() for k, v in state.items()}, sys.argv[2])
"""

# A kernel copy of the same bytes from an offset that is not page-congruent with the
# destination's, then fsync: what any conversion into another container pays, since the
# tensors of a zip member and of a safetensors file sit at different offsets mod 4096.
# On this machine such a copy is ~1 s slower per 2 GB than cp's (congruent) one, most of
# it in the write-back (see docs/performance.md).
SHIFTED_COPY = """
import os, sys
src, dst = os.open(sys.argv[1], os.O_RDONLY), os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
offset, size = 2176, os.fstat(src).st_size - 2176
done = 0
while done < size:
    done += os.copy_file_range(src, dst, min(10 << 20, size - done), offset + done)
os.fsync(dst)
"""

GRAFT_MAIN = """
import sys
from torchgraft.cli.graft import main
sys.argv = ["graft", *sys.argv[1:]]
main()
"""

TORCHGRAFT = """
import json, sys, torchgraft
recipe, dst = json.loads(sys.argv[1]), sys.argv[2]
torchgraft.execute(torchgraft.plan(recipe), dst)
"""

PLAN_ONLY = """
import sys, torchgraft
torchgraft.plan(sys.argv[1])
"""

# 48 layers x 128 experts x 3 per-expert tensors (18,432): planned twice in one process,
# stacked into [128, 2, 2] tensors by 3 rules with [{e}], and by a plain rename into
# per-expert keys; prints the best of 3 plan times of each (torch imported once).
# Measured (2 CPUs, shared): 1.30x-1.37x over 3 runs (before slots were made once per index
# and a stacking rule's keys skipped the second overlap check: 1.95x-2.20x).
PLAN_STACK = """
import sys, time, types, torch
from torch import nn
from safetensors.torch import save_file
import torchgraft
L, E, path = 48, 128, sys.argv[1]
names = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}
save_file({f"model.layers.{i}.mlp.experts.{e}.{n}.weight": torch.zeros(2, 2)
           for i in range(L) for e in range(E) for n in names.values()}, path)
class Experts(nn.Module):
    def __init__(self):
        super().__init__()
        for w in names:
            setattr(self, w, nn.Parameter(torch.empty(E, 2, 2)))
class Moe(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Module() for _ in range(L)])
        for layer in self.layers:
            layer.moe = nn.Module()
            layer.moe.experts = Experts()
module = types.ModuleType("bench_moe")
module.Moe = Moe
sys.modules["bench_moe"] = module
stack = {"sources": {"hf": path}, "target": {"_target_": "bench_moe.Moe"},
         "rules": [{"to": f"layers.{{i}}.moe.experts.{w}[{{e}}]", "from": f"hf:model.layers.{{i}}.mlp.experts.{{e}}.{n}.weight"}
                   for w, n in names.items()]}
rename = {"sources": {"hf": path}, "target": None,
          "rules": [{"from": "hf", "rename": {f"model.layers.{{i}}.mlp.experts.{{e}}.{n}": f"layers.{{i}}.moe.experts.{{e}}.{w}"
                                               for w, n in names.items()}}]}
def best(recipe):
    times = []
    for _ in range(3):
        start = time.perf_counter()
        torchgraft.plan(recipe)
        times.append(time.perf_counter() - start)
    return min(times)
print(best(stack), best(rename))
"""

LIST_KEYS = """
import sys
from pathlib import Path
from safetensors import safe_open
src = Path(sys.argv[1])
n = 0
for path in sorted(src.glob("*.safetensors")) if src.is_dir() else [src]:
    with safe_open(path, "pt") as f:
        n += len(f.keys())
print(n)
"""


def tg(script: str) -> list[str]:
    """A torchgraft child: ``python -c script``, with the trim policy of --trim-every."""
    patch = f"from torchgraft.core.heap import HeapTrimmer; HeapTrimmer.EVERY = {TRIM[0]}\n" if TRIM else ""
    return [PYTHON, "-c", patch + script]


def graft(*args: str) -> list[str]:
    """The ``graft`` CLI (as a script when the trim policy is patched)."""
    return [*tg(GRAFT_MAIN), *args] if TRIM else [GRAFT, *args]


def recipe(src: Path, job: str) -> dict:
    rule: dict = {"from": "src", "rename": {"model.layers.{i}": "blocks.{i}"}}
    out: dict = {}
    if job == "select":
        rule = {"from": "src", "select": "model.layers.{" + ",".join(str(i) for i in range(0, 64, 4)) + "}"}
    elif job == "cast":
        out = {"dtype": "bfloat16"}
    return {"sources": {"src": str(src)}, "target": None, "rules": [rule], "output": out,
            "policy": {"unused": "ignore"}}


def moe_recipe(src: Path) -> str:
    """50 rules: experts two layers at a time, attention four at a time, then the rest."""
    lines = ["# graft recipe=moe dry_run=true", "sources:", f"  moe: {src}", "target: null", "rules:"]
    expert = ("{{from: moe, select: 'model.layers.{{{a},{b}}}.mlp.experts', rename: {{"
              "'model.layers.{{i}}.mlp.experts.{{e}}.gate_proj': 'layers.{{i}}.moe.{{e}}.w1', "
              "'model.layers.{{i}}.mlp.experts.{{e}}.up_proj': 'layers.{{i}}.moe.{{e}}.w3', "
              "'model.layers.{{i}}.mlp.experts.{{e}}.down_proj': 'layers.{{i}}.moe.{{e}}.w2', "
              "'model.layers.{{i}}.mlp.experts.{{e}}': 'layers.{{i}}.moe.{{e}}'}}}}")
    lines += [f"  - {expert.format(a=2 * k, b=2 * k + 1)}" for k in range(30)]
    lines += [f"  - {{from: moe, select: 'model.layers.{{{4 * k}..{4 * k + 3}}}.self_attn', "
              "rename: {'model.layers.{i}.self_attn.{p}': 'layers.{i}.attn.{p}'}}" for k in range(15)]
    for name, new in (("input_layernorm", "norm1"), ("post_attention_layernorm", "norm2"), ("mlp.gate", "router")):
        lines.append(f"  - {{from: moe, select: 'model.layers.*.{name}', "
                     f"rename: {{'model.layers.{{i}}.{name}': 'layers.{{i}}.{new}'}}}}")
    lines.append("  - {from: moe, select: model.embed_tokens, rename: {model.embed_tokens: tok_emb}}")
    lines.append("  - {from: moe, select: [model.norm, lm_head], rename: {model.norm: final_norm}}")
    return "\n".join(lines) + "\n"


# -- measuring --------------------------------------------------------------------------


class Bench:
    def __init__(self, root: Path, runs: int):
        self.root, self.runs = root, runs
        self.rows: list[tuple[str, str, float, float, str]] = []  # case, label, wall, rss MiB, note

    def run(self, argv: list[str], *, cwd: Path | None = None) -> tuple[float, float]:
        """Wall seconds and peak RSS (MiB) of one process."""
        with tempfile.TemporaryFile() as err:
            start = time.perf_counter()
            proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
            err.seek(0)
            self.stderr = err.read().decode(errors="replace")  # what the command logged
            if proc.returncode != 0:
                sys.exit(f"failed ({proc.returncode}): {' '.join(argv)}\n{self.stderr[-3000:]}")
        self.cpu = usage.ru_utime + usage.ru_stime  # steadier than wall time on a busy machine
        return wall, usage.ru_maxrss * 1024 / MiB

    def measure(self, case: str, label: str, argv: list[str], outputs: list[Path], *, cwd: Path | None = None,
                note: str = "") -> tuple[float, float]:
        """One command on its own (``compare`` with a single command)."""
        return self.compare(case, {label: Command(label, argv, outputs, cwd, note)})[label]

    def compare(self, case: str, commands: dict[str, Command]) -> dict[str, tuple[float, float]]:
        """Every command once per round, the order rotated each round, medians at the end.

        On this VM a command's time drifts by 10-30 % over a minute (write-back of the
        previous case, the host's other tenants); measured one command after another, a
        baseline could land in a slow minute and the command it is compared with in a fast
        one (a 2 GB ``cp`` + ``sync`` took 1.1 s and 2.6 s in one session). Interleaved, the
        drift falls on every command of the case alike, so their ratios hold."""
        samples: dict[str, tuple[list, list, list]] = {key: ([], [], []) for key in commands}
        keys = list(commands)
        for round_ in range(self.runs):
            shift = round_ % len(keys)
            for key in keys[shift:] + keys[:shift]:
                command = commands[key]
                wall, peak = self.once(command.argv, command.outputs, cwd=command.cwd)
                for values, value in zip(samples[key], (wall, peak, self.cpu)):
                    values.append(value)
        for command in commands.values():
            for out in command.outputs:
                remove(out)
        os.sync()
        return {key: self.record(case, commands[key].label, *samples[key], commands[key].note) for key in keys}

    def once(self, argv: list[str], outputs: list[Path], *, cwd: Path | None = None) -> tuple[float, float]:
        """One run from a clean slate: its outputs deleted and the disk synced first."""
        for out in outputs:
            remove(out)
        os.sync()
        return self.run(argv, cwd=cwd)

    def record(self, case: str, label: str, walls: list[float], peaks: list[float], cpus: list[float],
               note: str = "") -> tuple[float, float]:
        note = f"cpu {statistics.median(cpus):.2f} s" + (f"; {note}" if note else "")
        row = (case, label, statistics.median(walls), statistics.median(peaks), note)
        self.rows.append(row)
        print(f"  {label:<44} {row[2]:7.2f} s  {row[3]:8.0f} MiB  {note}", flush=True)
        return row[2], row[3]


class Command(NamedTuple):
    """One command of a case: what it prints as, what it runs, the outputs it leaves."""

    label: str
    argv: list[str]
    outputs: list[Path]
    cwd: Path | None = None
    note: str = ""


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def warm(*paths: Path) -> None:
    """Read the sources once, so every command starts from a warm page cache (through
    one small buffer: a child's ru_maxrss starts from this process's RSS at fork)."""
    buffer = bytearray(MiB)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass


def make(path: Path, count: int, rows: int, cols: int, seed: int = 0) -> Path:
    if not path.exists():
        print(f"  building {path.name} ({count} x [{rows}, {cols}] float32)", flush=True)
        subprocess.run([PYTHON, "-c", GENERATE, str(path), str(count), str(rows), str(cols), str(seed)], check=True)
    return path


def cached_bytes(path: Path) -> int | None:
    """Bytes of ``path`` in the page cache (fincore), or None if unknown."""
    if shutil.which("fincore") is None:
        return None
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True)
    return int(out.stdout.split()[0]) if out.returncode == 0 and out.stdout.strip() else None


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# -- cases -------------------------------------------------------------------------------


def transfer_case(bench: Bench, case: str, job: str, st: Path, pt: Path) -> dict:
    """cp, the seed script, safetensors load/save, torchgraft: the same transfer each."""
    d = bench.root
    out_st, out_pt = d / "out.safetensors", d / "out.pt"
    warm(st, pt)
    commands = {
        "cp": Command("cp (source file)", ["cp", str(st), str(out_st)], [out_st]),
        "cp_sync": Command("cp + sync (durable, like torchgraft)", ["sh", "-c", f"cp {st} {out_st} && sync {out_st}"],
                           [out_st]),
        "seed": Command("seed: torch.load -> edit -> torch.save", [PYTHON, "-c", SEED, str(pt), str(out_pt), job],
                        [out_pt]),
        "st": Command("safetensors load_file -> save_file", [PYTHON, "-c", SAFETENSORS, str(st), str(out_st), job],
                      [out_st]),
        "tg_st": Command("torchgraft API, .safetensors source", [*tg(TORCHGRAFT), json.dumps(recipe(st, job)), str(out_st)],
                         [out_st]),
        "tg_pt": Command("torchgraft API, .pt source", [*tg(TORCHGRAFT), json.dumps(recipe(pt, job)), str(out_st)],
                         [out_st]),
    }
    if job in ("rename", "cast"):
        recipes = d / "recipes"
        recipes.mkdir(exist_ok=True)
        (recipes / f"bench_{job}.yaml").write_text(f"# graft recipe=bench_{job}\n" + json.dumps(recipe(st, job)) + "\n")
        commands["tg_cli"] = Command("torchgraft `graft` CLI, .safetensors source",
                                     [*graft(), f"recipe=bench_{job}", f"output.path={out_st}", f"hydra.run.dir={d / 'runs'}"],
                                     [out_st, d / "runs"], cwd=d)
    if job == "rename":
        commands["tg_pt_pt"] = Command("torchgraft API, .pt -> .pt (whole output in memory)",
                                       [*tg(TORCHGRAFT), json.dumps(recipe(pt, job)), str(out_pt)], [out_pt])
    return bench.compare(case, commands)


def rss_case(bench: Bench, small: tuple[Path, Path], large: tuple[Path, Path]) -> dict:
    d = bench.root
    out = d / "out.safetensors"
    r = {}
    for (st, pt), size in ((small, "1 GB"), (large, "4 GB")):
        warm(st, pt)
        r[size] = {
            "copy_st": bench.measure("rss", f"torchgraft copy, .safetensors, {size}",
                                     [*tg(TORCHGRAFT), json.dumps(recipe(st, "rename")), str(out)], [out]),
            "copy_pt": bench.measure("rss", f"torchgraft copy, .pt, {size}",
                                     [*tg(TORCHGRAFT), json.dumps(recipe(pt, "rename")), str(out)], [out]),
            "cast_pt": bench.measure("rss", f"torchgraft cast bf16, .pt, {size}",
                                     [*tg(TORCHGRAFT), json.dumps(recipe(pt, "cast")), str(out)], [out]),
            "seed": bench.measure("rss", f"seed: torch.load -> torch.save, {size}",
                                  [PYTHON, "-c", SEED, str(pt), str(d / "out.pt"), "rename"], [d / "out.pt"]),
        }
    return r


def mean_case(bench: Bench, srcs: list[Path]) -> dict:
    """Mean of three checkpoints: the safetensors script, torchgraft's API and CLI."""
    d = bench.root
    out = d / "out.safetensors"
    warm(*srcs)
    names = ("a", "b", "c")
    rec = {"sources": dict(zip(names, map(str, srcs))), "target": None,
           "rules": [{"from": list(names), "merge": "mean"}]}
    recipes = d / "recipes"
    recipes.mkdir(exist_ok=True)
    (recipes / "bench_mean.yaml").write_text("# graft recipe=bench_mean\n" + json.dumps(rec) + "\n")
    return bench.compare("mean", {
        "cp_sync": Command("cp + sync of one source", ["sh", "-c", f"cp {srcs[0]} {out} && sync {out}"], [out]),
        "st": Command("safetensors load_file x3 -> in-place mean -> save_file",
                      [PYTHON, "-c", MEAN_SCRIPT, *map(str, srcs), str(out)], [out]),
        "tg": Command("torchgraft API", [*tg(TORCHGRAFT), json.dumps(rec), str(out)], [out]),
        "tg_cli": Command("torchgraft `graft` CLI",
                          [*graft(), "recipe=bench_mean", f"output.path={out}", f"hydra.run.dir={d / 'runs'}"],
                          [out, d / "runs"], cwd=d),
    })


def convert_case(bench: Bench, pt: Path) -> dict:
    """pytorch_model.bin -> model.safetensors: a byte copy for torchgraft (no torch import)."""
    d = bench.root
    out = d / "model.safetensors"
    warm(pt)
    recipes = d / "recipes"
    recipes.mkdir(exist_ok=True)
    rec = {"sources": {"src": str(pt)}, "target": None, "rules": [{"from": "src"}]}
    (recipes / "bench_convert.yaml").write_text("# graft recipe=bench_convert\n" + json.dumps(rec) + "\n")
    return bench.compare("convert", {
        "cp_sync": Command("cp + sync of the .bin", ["sh", "-c", f"cp {pt} {out} && sync {out}"], [out]),
        "shifted": Command("the same copy, source offset not page-congruent, + fsync",
                           [PYTHON, "-c", SHIFTED_COPY, str(pt), str(out)], [out]),
        "st": Command("torch.load -> save_file (safetensors' convert)", [PYTHON, "-c", CONVERT_SCRIPT, str(pt), str(out)],
                      [out]),
        "tg_cli": Command("torchgraft `graft` CLI",
                          [*graft(), "recipe=bench_convert", f"output.path={out}", f"hydra.run.dir={d / 'runs'}"],
                          [out, d / "runs"], cwd=d),
    })


def dry_case(bench: Bench, keys: int = 107_943) -> dict:
    d = bench.root
    experts = max(1, round((keys - 3 - 60 * 7) / (60 * 7)))
    shards = -(-keys // 300_000)  # one file's header must stay under safetensors' 100 MB
    src = d / (f"moe{experts}.safetensors" if shards == 1 else f"moe{experts}")
    if not src.exists():
        print(f"  building {src.name} ({60 * 7 * experts + 423:,} tensors in {shards} file(s); sparse data)", flush=True)
        if shards > 1:
            src.mkdir()
        subprocess.run([PYTHON, "-c", GENERATE_MOE, str(src), str(experts), str(shards)], check=True)
    recipes = d / "recipes"
    recipes.mkdir(exist_ok=True)
    (recipes / "moe.yaml").write_text(moe_recipe(src))
    tiny = d / "tiny.safetensors"
    subprocess.run([PYTHON, "-c", "import sys, torch; from safetensors.torch import save_file; "
                    "save_file({'w': torch.zeros(4)}, sys.argv[1])", str(tiny)], check=True)
    (recipes / "tiny.yaml").write_text(f"sources: {{src: {tiny}}}\ntarget: null\nrules: [{{from: src}}]\n")
    runs = d / "runs"
    r = {"import": bench.measure("dry", "python -c 'import torch' (start-up alone)", [PYTHON, "-c", "import torch"], []),
         "startup": bench.measure("dry", "graft dry run of a 1-tensor recipe (start-up)",
                                  [*graft(), "recipe=tiny", "dry_run=true", f"hydra.run.dir={runs}"], [runs], cwd=d),
         "keys": bench.measure("dry", "safetensors safe_open().keys()", [PYTHON, "-c", LIST_KEYS, str(src)], []),
         "plan": bench.measure("dry", "torchgraft.plan() (API: plan only)",
                               [PYTHON, "-c", PLAN_ONLY, str(recipes / "moe.yaml")], [], cwd=d)}
    r["dry"] = bench.measure("dry", "graft recipe=moe dry_run=true (CLI)",
                             [*graft(), "recipe=moe", "dry_run=true", f"hydra.run.dir={runs}"], [runs], cwd=d)
    if src.is_dir():  # the bytes read are measured on one-file sources
        remove(runs)
        return r
    evict(src)
    before = cached_bytes(src)
    bench.run([*graft(), "recipe=moe", "dry_run=true", f"hydra.run.dir={runs}"], cwd=d)
    after = cached_bytes(src)
    remove(runs)
    size = src.stat().st_size
    if after is not None:
        r["read"] = (after - (before or 0)) / size
        print(f"  source bytes read by the dry run: {after - (before or 0):,} of {size:,} "
              f"({r['read']:.2%}; page cache, readahead included)")
    return r


# -- report ------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(results: dict) -> None:
    print("\n== targets ==")
    if "full" in results:
        f = results["full"]
        cp, seed = f["cp"][0], f["seed"][0]
        for key, label in (("tg_st", ".safetensors source"), ("tg_pt", ".pt source"), ("tg_cli", "graft CLI")):
            if key in f:
                wall, rss = f[key]
                print(f"full 2 GB, {label}: {wall:.2f} s = {wall / cp:.2f}x cp ({verdict(wall <= 2 * cp)}: <= 2.0x), "
                      f"{wall / f['cp_sync'][0]:.2f}x cp+sync, seed/torchgraft = {seed / wall:.2f}x "
                      f"({verdict(seed / wall >= 2)}: >= 2x), peak RSS {rss:.0f} MiB ({verdict(rss <= 400)}: <= 400)")
        start = results.get("dry", {}).get("import", (None,))[0]
        if start:
            print(f"  (python + import torch alone: {start:.2f} s)")
    if "cast" in results and "tg_cli" in results["cast"]:
        c = results["cast"]
        wall, rss = c["tg_cli"]
        print(f"cast 2 GB to bf16, graft CLI: {wall:.2f} s = {wall / c['cp_sync'][0]:.2f}x cp+sync "
              f"({verdict(wall <= 1.6 * c['cp_sync'][0])}: <= 1.6x), peak RSS {rss:.0f} MiB ({verdict(rss <= 400)}: <= 400)")
    if "mean" in results:
        m = results["mean"]
        for key, label in (("tg", "API"), ("tg_cli", "graft CLI")):
            wall, rss = m[key]
            print(f"mean 3 x 512 MiB, {label}: {wall:.2f} s = {wall / m['st'][0]:.2f}x the safetensors script "
                  f"({verdict(wall <= 0.7 * m['st'][0])}: <= 0.7x), peak RSS {rss:.0f} MiB ({verdict(rss <= 400)}: <= 400)")
    if "convert" in results:
        c = results["convert"]
        wall, rss = c["tg_cli"]
        print(f".pt -> .safetensors 2 GB, graft CLI: {wall:.2f} s = {wall / c['cp_sync'][0]:.2f}x cp+sync "
              f"({verdict(wall <= 1.3 * c['cp_sync'][0])}: <= 1.3x), {wall / c['shifted'][0]:.2f}x the shifted copy, "
              f"{c['st'][0] / wall:.2f}x faster than torch.load + save_file, peak RSS {rss:.0f} MiB")
    for key in sorted(k for k in results if k.startswith("dry") and k != "dry"):
        if "dry" in results:
            base, big = results["dry"]["dry"][0], results[key]["dry"][0]
            print(f"{key[3:]}-key dry run: {big:.2f} s = {big / base:.2f}x the first dry run ({verdict(big <= 12 * base)}: <= 12x)")
    if "rss" in results:
        r = results["rss"]
        for key in ("copy_st", "copy_pt", "cast_pt"):
            a, b = r["1 GB"][key][1], r["4 GB"][key][1]
            print(f"peak RSS {key}: {a:.0f} MiB at 1 GB, {b:.0f} MiB at 4 GB ({verdict(b - a < 64)}: does not grow)")
    if "dry" in results:
        r = results["dry"]
        print(f"100k-tensor dry run: {r['dry'][0]:.2f} s ({verdict(r['dry'][0] <= 3)}: <= 3 s incl. start-up); "
              f"plan only {r['plan'][0]:.2f} s")
        if "read" in r:
            print(f"  source bytes read: {r['read']:.2%} ({verdict(r['read'] < 0.01)}: < 1%)")
    if "stack" in results:
        stacked, renamed = results["stack"]
        print(f"48 x 128 experts: stacking plans in {stacked:.2f} s, a plain rename in {renamed:.2f} s: "
              f"{stacked / renamed:.2f}x ({verdict(stacked <= 2 * renamed)}: <= 2x)")
    print("\n== table (median of runs) ==")
    print("| case | command | wall s | peak RSS MiB | x cp | seed / this | note |")
    print("|---|---|---:|---:|---:|---:|---|")
    for case, label, wall, rss, note in ROWS:
        res = results.get(case, {}) if case in ("full", "select", "cast", "convert") else {}
        cp, seed = res.get("cp", (None,))[0], res.get("seed", (None,))[0]
        x_cp = f"{wall / cp:.2f}" if cp else ""
        x_seed = f"{seed / wall:.2f}" if seed else ""
        print(f"| {case} | {label} | {wall:.2f} | {rss:.0f} | {x_cp} | {x_seed} | {note} |")


ROWS: list = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "torchgraft-bench")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cases", default="full,select,cast,rss,dry")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints")
    parser.add_argument("--keys", type=int, action="append", help="tensors in the dry-run case (repeatable; default 107,943)")
    parser.add_argument("--trim-every", type=int, help="HeapTrimmer.EVERY in torchgraft's children (bytes)")
    args = parser.parse_args()
    if args.trim_every is not None:
        TRIM.append(args.trim_every)
    cases = args.cases.split(",")
    args.dir.mkdir(parents=True, exist_ok=True)
    # torchgraft's bytecode, compiled once as installing a wheel does: an editable install
    # under PYTHONDONTWRITEBYTECODE=1 (as on our CI machines) compiles ~90 modules in every
    # process, 0.18 s of each `graft` run that no installed copy pays.
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(Path(__file__).parents[2] / "src" / "torchgraft")], check=True)
    need = ((8 if {"full", "cast"} & set(cases) else 0) + (4 if "select" in cases else 0) + (12 if "rss" in cases else 0)
            + (3 if "mean" in cases else 0) + (4 if "convert" in cases else 0))
    free = shutil.disk_usage(args.dir).free / 2**30
    if free < need + 2:
        sys.exit(f"{args.dir}: {free:.0f} GiB free, these cases need about {need + 2} GiB")
    bench = Bench(args.dir, args.runs)
    results: dict = {}
    print(f"torchgraft benchmark in {args.dir}, {args.runs} runs per command, {os.cpu_count()} CPUs")
    try:
        d = args.dir
        if {"full", "cast"} & set(cases):
            st, pt = make(d / "full.safetensors", 200, 2560, 1024), make(d / "full.pt", 200, 2560, 1024)
            if "full" in cases:
                print("full: 200 tensors, 2000 MiB, every key renamed")
                results["full"] = transfer_case(bench, "full", "rename", st, pt)
            if "cast" in cases:
                print("cast: the same checkpoint to bfloat16")
                results["cast"] = transfer_case(bench, "cast", "cast", st, pt)
        if "select" in cases:
            st, pt = make(d / "sel.safetensors", 64, 8192, 1024), make(d / "sel.pt", 64, 8192, 1024)
            print("select: 16 of 64 tensors (2048 MiB source, 512 MiB out)")
            results["select"] = transfer_case(bench, "select", "select", st, pt)
        if "rss" in cases:
            small = (make(d / "g1.safetensors", 100, 2560, 1024), make(d / "g1.pt", 100, 2560, 1024))
            large = (make(d / "g4.safetensors", 400, 2560, 1024), make(d / "g4.pt", 400, 2560, 1024))
            print("rss: peak RSS at 1 GB and 4 GB")
            results["rss"] = rss_case(bench, small, large)
        if "mean" in cases:
            srcs = [make(d / f"mean{i}.safetensors", 64, 2048, 1024, seed=100 * i) for i in range(3)]
            print("mean: 3 x 64 tensors, 512 MiB each")
            results["mean"] = mean_case(bench, srcs)
        if "convert" in cases:
            pt = make(d / "full.pt", 200, 2560, 1024)
            print("convert: the 2000 MiB .pt (zip) -> .safetensors")
            results["convert"] = convert_case(bench, pt)
        if "dry" in cases:
            for n in args.keys or [107_943]:
                print(f"dry: about {n:,} tensors, 50 rules, dry run")
                results["dry" if n == (args.keys or [107_943])[0] else f"dry{n}"] = dry_case(bench, n)
        if "stack" in cases:
            print("stack: 48 x 128 experts stacked by 3 rules, against a plain rename of the same checkpoint")
            out = subprocess.run([PYTHON, "-c", PLAN_STACK, str(d / "stack.safetensors")], check=True,
                                 capture_output=True, text=True).stdout
            results["stack"] = tuple(float(x) for x in out.split())
    finally:
        ROWS.extend(bench.rows)
        if not args.keep:
            for path in d.glob("*.safetensors"):
                remove(path)
            for path in d.glob("*.pt"):
                remove(path)
            remove(d / "recipes")
            remove(d / "outputs")
    report(results)


if __name__ == "__main__":
    main()
