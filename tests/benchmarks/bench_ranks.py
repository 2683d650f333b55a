#!/usr/bin/env python
"""One plan across torchrun ranks, and DCP -> HF against ``dcp_to_torch_save``, same run.

A script, not a test. Run it by hand from the repository root::

    .venv/bin/python tests/benchmarks/bench_ranks.py --dir /tmp/tg-ranks [--runs 3] [--cases cast,dcp]

Cases
  cast  the ~2 GB float32 checkpoint of bench.py (200 x [2560, 1024]) cast to bfloat16
        into a sharded directory (100 MB shards) by ``python -m torchgraft`` under
        ``torchrun --standalone --nproc-per-node=1`` and ``=2``, against ``dd`` writing
        the output's 1000 MiB durably (``conv=fsync``): the disk's floor. Target: 2 ranks
        <= 0.65x the 1-rank wall.
  dcp   a DCP folder (``dcp.save``, one process) of 1 GB and of 2 GB -> an HF sharded
        directory (1 and 2 ranks) against ``torch.distributed.checkpoint.format_utils.
        dcp_to_torch_save`` (DCP -> one torch.save file). Target: <= 400 MiB per rank
        whatever the checkpoint size.

Every command runs in a process of its own (``bench.Bench``: wall is the median of the
runs, peak RSS the child's ``ru_maxrss`` from ``wait4``, which for ``torchrun`` is the
largest of its processes: one rank's peak). The 1-minute load average is printed before
and after each case: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench import PYTHON, Bench, make, remove, verdict, warm

GENERATE_DCP = """
import sys, warnings, torch, torch.distributed.checkpoint as dcp
path, count, rows, cols = sys.argv[1], *map(int, sys.argv[2:5])
warnings.simplefilter("ignore", UserWarning)
state = {f"model.layers.{i}.weight": torch.rand(rows, cols, generator=torch.Generator().manual_seed(i)) for i in range(count)}
dcp.save(state, checkpoint_id=path, no_dist=True)
"""

DCP_TO_TORCH_SAVE = """
import sys, warnings
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
warnings.simplefilter("ignore", UserWarning)
dcp_to_torch_save(sys.argv[1], sys.argv[2])
"""


class RankBench(Bench):
    """``Bench`` that also keeps each run's ``in X s`` (the execute phase, as ``graft`` logs it:
    the slowest rank's), so the split's own speed-up shows apart from start-up costs."""

    def __init__(self, root: Path, runs: int):
        super().__init__(root, runs)
        self.phases: list[float] = []
        self.phase = 0.0

    def run(self, argv: list[str], *, cwd: Path | None = None) -> tuple[float, float]:
        result = super().run(argv, cwd=cwd)
        self.phases.append(max((float(x) for x in re.findall(r" in ([0-9.]+) s; verified", self.stderr)), default=0.0))
        return result

    def measure(self, case: str, label: str, argv: list[str], outputs: list[Path], *, cwd: Path | None = None,
                note: str = "") -> tuple[float, float]:
        self.phases = []
        result = super().measure(case, label, argv, outputs, cwd=cwd, note=note)
        if any(self.phases):
            phase = statistics.median(self.phases)
            case, label, wall, rss, note = self.rows[-1]
            self.rows[-1] = (case, label, wall, rss, f"{note}; execute {phase:.2f} s")
            self.phase = phase
            print(f"    execute phase (graft's 'in X s', slowest rank): {phase:.2f} s", flush=True)
        return result


JOIN = """
import os
if int(os.environ["WORLD_SIZE"]) > 1:
    import torch.distributed as dist
    dist.init_process_group("gloo")
    dist.barrier()
    dist.destroy_process_group()
"""


def torchrun(nproc: int, *args: str) -> list[str]:
    return [PYTHON, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "torchgraft", *args]


def recipe(root: Path, name: str, src: Path, dtype: str | None) -> None:
    out = "{shard_size: 100MB" + (f", dtype: {dtype}" if dtype else "") + "}"
    (root / "recipes").mkdir(exist_ok=True)
    (root / "recipes" / f"{name}.yaml").write_text(
        f"sources: {{src: {src}}}\ntarget: null\nrules:\n  - {{from: src, rename: {{'model.layers.{{i}}': 'layers.{{i}}'}}}}\n"
        f"output: {out}\n")


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def cast_case(bench: Bench, src: Path) -> dict:
    d = bench.root
    recipe(d, "cast", src, "bfloat16")
    out = d / "cast_out"
    warm(src)
    print(f"  ({load()})")
    r = {"disk": bench.measure("cast", "dd 1000 MiB of the source, conv=fsync (the output's bytes, durable)",
                               ["dd", f"if={src}", f"of={d / 'dd.out'}", "bs=8M", "count=125", "conv=fsync", "status=none"],
                               [d / "dd.out"])}
    # The floor of any run under torchrun: the launcher, and ranks that only join the gloo
    # group (each imports torch for torch.distributed); the 1-rank run needs no group.
    (d / "join.py").write_text(JOIN)
    for n in (1, 2):
        r[f"floor {n}"] = bench.measure("cast", f"torchrun {n} rank{'s' if n > 1 else ''} that only join the group",
                                        [*torchrun(n)[:-2], str(d / "join.py")], [], cwd=d)
    for n in (1, 2):
        r[n] = bench.measure("cast", f"torchrun {n} rank{'s' if n > 1 else ''}", torchrun(n, "recipe=cast", f"output.path={out}"),
                             [out], cwd=d)
        r[f"execute {n}"] = bench.phase
    print(f"  ({load()})")
    return r


def dcp_case(bench: Bench, size_label: str, count: int) -> dict:
    d = bench.root
    src = d / f"dcp{count}"
    if not src.exists():
        print(f"  building {src.name} ({count} x [2560, 1024] float32, DCP)", flush=True)
        subprocess.run([PYTHON, "-c", GENERATE_DCP, str(src), str(count), "2560", "1024"], check=True)
    recipe(d, f"dcp{count}", src, None)
    out, pt = d / "dcp_out", d / "dcp_out.pt"
    for data in src.iterdir():
        warm(data)
    print(f"  ({load()})")
    r = {"peer": bench.measure(f"dcp {size_label}", "dcp_to_torch_save", [PYTHON, "-c", DCP_TO_TORCH_SAVE, str(src), str(pt)], [pt])}
    for n in (1, 2):
        r[n] = bench.measure(f"dcp {size_label}", f"torchrun {n} rank{'s' if n > 1 else ''} -> HF shards",
                             torchrun(n, f"recipe=dcp{count}", f"output.path={out}"), [out], cwd=d)
    print(f"  ({load()})")
    return r


def report(results: dict) -> None:
    print("\n== targets ==")
    if "cast" in results:
        one, two = results["cast"][1], results["cast"][2]
        print(f"cast 2 GB -> bf16 shards: 2 ranks {two[0]:.2f} s = {two[0] / one[0]:.2f}x 1 rank {one[0]:.2f} s "
              f"({verdict(two[0] <= 0.65 * one[0])}: <= 0.65x); peak RSS per rank {one[1]:.0f} / {two[1]:.0f} MiB")
        e1, e2 = results["cast"]["execute 1"], results["cast"]["execute 2"]
        print(f"  execute phase alone: 2 ranks {e2:.2f} s = {e2 / e1:.2f}x 1 rank {e1:.2f} s; writing the output's "
              f"1000 MiB durably (dd) takes {results['cast']['disk'][0]:.2f} s")
        f1, f2 = results["cast"]["floor 1"][0], results["cast"]["floor 2"][0]
        print(f"  torchrun alone: 1 rank {f1:.2f} s, 2 ranks that only join the group {f2:.2f} s = {f2 / one[0]:.2f}x "
              f"the 1-rank cast (the target allows {0.65 * one[0]:.2f} s)")
    for key in sorted(k for k in results if k.startswith("dcp")):
        r = results[key]
        peer = r["peer"]
        for n in (1, 2):
            wall, rss = r[n]
            print(f"{key} -> HF shards, {n} rank{'s' if n > 1 else ''}: {wall:.2f} s = {wall / peer[0]:.2f}x dcp_to_torch_save "
                  f"({peer[0]:.2f} s, {peer[1]:.0f} MiB); peak RSS {rss:.0f} MiB per rank ({verdict(rss <= 400)}: <= 400)")
    print("\n== table (median of runs) ==")
    print("| case | command | wall s | peak RSS MiB | note |")
    print("|---|---|---:|---:|---|")
    for case, label, wall, rss, note in ROWS:
        print(f"| {case} | {label} | {wall:.2f} | {rss:.0f} | {note} |")


ROWS: list = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "torchgraft-bench-ranks")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cases", default="cast,dcp")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic checkpoints")
    args = parser.parse_args()
    cases = args.cases.split(",")
    args.dir.mkdir(parents=True, exist_ok=True)
    need = (4 if "cast" in cases else 0) + (10 if "dcp" in cases else 0)
    free = shutil.disk_usage(args.dir).free / 2**30
    if free < need + 2:
        sys.exit(f"{args.dir}: {free:.0f} GiB free, these cases need about {need + 2} GiB")
    bench = RankBench(args.dir, args.runs)
    results: dict = {}
    print(f"torchgraft ranks benchmark in {args.dir}, {args.runs} runs per command, {os.cpu_count()} CPUs, {load()}")
    try:
        if "cast" in cases:
            src = make(args.dir / "full.safetensors", 200, 2560, 1024)
            print("cast: 200 tensors, 2000 MiB float32 -> bfloat16 shards of 100 MB")
            results["cast"] = cast_case(bench, src)
        if "dcp" in cases:
            for label, count in (("1 GB", 100), ("2 GB", 200)):
                print(f"dcp {label}: {count} tensors in a DCP folder -> HF shards of 100 MB")
                results[f"dcp {label}"] = dcp_case(bench, label, count)
    finally:
        ROWS.extend(bench.rows)
        if not args.keep:
            for path in [*args.dir.glob("*.safetensors"), *args.dir.glob("dcp*")]:
                remove(path)
        remove(args.dir / "recipes")
        remove(args.dir / "outputs")
    report(results)


if __name__ == "__main__":
    main()
