#!/usr/bin/env python
"""TIES of three ~700 MB checkpoints: torchgraft against mergekit-pytorch, same run.

A script, not a test. Run it by hand from the repository root::

    .venv/bin/python tests/benchmarks/bench_merge.py --dir /tmp/tg-merge [--mergekit PATH] [--runs 1]

The peer is ``mergekit-pytorch`` (``--mergekit``, default: the one beside this Python)
when it exists, else a plain safetensors + torch script doing the same math (whole
files loaded, as a hand-written merge does). Each command runs in a fresh process;
wall time is the median of the runs, peak RSS the child's ``ru_maxrss`` (``wait4``).
Both outputs are compared (max |difference|) so the two did the same merge.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

PYTHON = sys.executable
MiB = 2**20
NAMES = ("base", "math", "code", "chat")

GENERATE = """
import sys, torch
from safetensors.torch import save_file
path, seed, count, rows, cols = sys.argv[1], *map(int, sys.argv[2:6])
g = torch.Generator().manual_seed(0)
tensors = {}
for i in range(count):  # the base's values, plus a seeded fine-tune delta for the others
    base = torch.randn(rows, cols, generator=torch.Generator().manual_seed(1000 + i))
    if seed:
        base += 0.01 * torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed * 100 + i))
    tensors[f"model.layers.{i}.mlp.weight"] = base
save_file(tensors, path)
"""

TORCHGRAFT = """
import json, sys, torchgraft
recipe, out = json.loads(sys.argv[1]), sys.argv[2]
torchgraft.execute(torchgraft.plan(recipe), out)
"""

# The same merge written by hand (mergekit's GTA math, whole checkpoints in memory).
SCRIPT = """
import sys, torch
from safetensors.torch import load_file, save_file
base_path, out, density, *models = sys.argv[1:]
density = float(density)
base = load_file(base_path)
states = [load_file(p) for p in models]
weights = [1.0] * len(states)
merged = {}
for key, b in base.items():
    deltas = []
    for state, w in zip(states, weights):
        d = state[key] - b
        k = max(1, int(density * d.numel()))
        mask = torch.zeros(d.numel(), dtype=torch.bool)
        mask[torch.argsort(d.abs().view(-1), descending=True, stable=True)[:k]] = True
        deltas.append(d * mask.view(d.shape) * w)
    deltas = torch.stack(deltas)
    sign = torch.where(deltas.sum(0) >= 0, 1.0, -1.0)
    agree = deltas.sign() == sign
    divisor = (agree * torch.tensor(weights).view(-1, *[1] * b.dim())).sum(0)
    divisor[divisor == 0] = 1
    merged[key] = b + (deltas * agree).sum(0) / divisor
save_file(merged, out)
"""


def run(argv: list[str]) -> tuple[float, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"failed: {' '.join(argv[:3])}...\n{proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss * 1024 / MiB


def measure(label: str, argv: list[str], outputs: list[Path], runs: int) -> dict:
    walls, rss = [], []
    for _ in range(runs):
        for path in outputs:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        os.sync()
        wall, peak = run(argv)
        walls.append(wall)
        rss.append(peak)
        print(f"  {label}: {wall:.1f} s, {peak:.0f} MiB", flush=True)
    return {"wall_s": statistics.median(walls), "peak_rss_mib": max(rss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/tg-merge-bench"))
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--tensors", type=int, default=28)  # 28 x 1536 x 4096 x 4 B = 704 MB per checkpoint
    parser.add_argument("--rows", type=int, default=1536)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--mergekit", default=str(Path(PYTHON).parent / "mergekit-pytorch"))
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    root = args.dir
    root.mkdir(parents=True, exist_ok=True)
    paths = {name: root / f"{name}.safetensors" for name in NAMES}
    for seed, path in enumerate(paths.values()):
        if not path.exists():
            run([PYTHON, "-c", GENERATE, str(path), str(seed), str(args.tensors), str(args.rows), str(args.cols)])
    size = paths["base"].stat().st_size / 1e6
    print(f"4 checkpoints of {size:.0f} MB in {root}", flush=True)
    for path in paths.values():  # warm cache for both sides
        with open(path, "rb") as f:
            while f.read(64 * MiB):
                pass
    models = ["math", "code", "chat"]
    recipe = {"sources": {n: str(p) for n, p in paths.items()}, "target": None,
              "rules": [{"from": models, "merge": {"method": "ties", "base": "base", "density": args.density}}]}
    ours_out = root / "torchgraft.safetensors"
    results = {"checkpoint_mb": round(size), "torchgraft": measure(
        "torchgraft", [PYTHON, "-c", TORCHGRAFT, json.dumps(recipe), str(ours_out)], [ours_out], args.runs)}
    if Path(args.mergekit).exists():
        import yaml

        config = {"merge_method": "ties", "base_model": str(paths["base"]), "dtype": "float32",
                  "models": [{"model": str(paths[m]), "parameters": {"weight": 1.0, "density": args.density}} for m in models]
                  + [{"model": str(paths["base"])}]}
        (root / "mergekit.yaml").write_text(yaml.safe_dump(config))
        peer_dir = root / "mergekit"
        peer_out = peer_dir / "model.safetensors"
        results["peer"] = "mergekit-pytorch"
        results["peer_run"] = measure("mergekit-pytorch", [args.mergekit, str(root / "mergekit.yaml"), str(peer_dir), "--quiet"],
                                      [peer_dir], args.runs)
    else:
        peer_out = root / "script.safetensors"
        results["peer"] = "safetensors + torch script"
        results["peer_run"] = measure("script", [PYTHON, "-c", SCRIPT, str(paths["base"]), str(peer_out), str(args.density),
                                                 *(str(paths[m]) for m in models)], [peer_out], args.runs)
    check = ("import sys, torch; from safetensors.torch import load_file\n"
             "a, b = load_file(sys.argv[1]), load_file(sys.argv[2])\n"
             "print(max(float((a[k] - b[k]).abs().max()) for k in a))")
    results["max_abs_difference"] = float(subprocess.check_output([PYTHON, "-c", check, str(ours_out), str(peer_out)]))
    ours, peer = results["torchgraft"], results["peer_run"]
    results["wall_ratio"] = round(ours["wall_s"] / peer["wall_s"], 3)
    results["rss_ratio"] = round(ours["peak_rss_mib"] / peer["peak_rss_mib"], 3)
    print(json.dumps(results, indent=1))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
