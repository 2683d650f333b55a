"""Run a plan: stream each output tensor from the sources into the writer, then verify
the written file against the plan before it is published. Never reads a recipe."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from torchgraft.checkpoints import Reader, atomic_output, open_checkpoint, open_writer
from torchgraft.errors import DriftError, OutputError
from torchgraft.plan import Entry, Piece, Plan
from torchgraft.regions import Region
from torchgraft.target import build_model, initial_state
from torchgraft.tensors import TensorInfo, dtype_name, torch_dtype
from torchgraft.transforms import compile_transform

log = logging.getLogger(__name__)

OUTPUT_FORMATS = (".safetensors", ".pt", ".pth")


def open_plan_sources(plan: Plan) -> dict[str, Reader]:
    """Open the plan's sources and refuse any whose fingerprint changed since planning."""
    readers: dict[str, Reader] = {}
    try:
        for ref in plan.sources:
            reader = open_checkpoint(ref.path, format=ref.format, key=ref.key, field=f"sources.{ref.name}")
            readers[ref.name] = reader
            now = reader.fingerprint()
            changed = [k for k in ("size", "mtime_ns", "header_sha256") if now.get(k) != ref.fingerprint.get(k)]
            if changed:
                raise DriftError(f"sources.{ref.name}", f"{ref.path} changed since the plan was made ({', '.join(changed)} differ)")
        return readers
    except BaseException:
        for reader in readers.values():
            reader.close()
        raise


class _Initial:
    """Initial values, made only if some entry needs them: the seeded model, or the base checkpoint."""

    def __init__(self, plan: Plan, readers: Mapping[str, Reader], given: Mapping[str, torch.Tensor] | None):
        self.plan, self.readers, self.values = plan, readers, given

    def __getitem__(self, key: str) -> torch.Tensor:
        if self.values is None and self.plan.target.base is None:
            log.info("building %s (seed %d) for its initial values", self.plan.target.spec["_target_"], self.plan.target.seed)
            self.values = initial_state(self.plan.target.spec, self.plan.target.seed)
        if self.values is not None:
            return self.values[key]
        return self.readers[self.plan.target.base].read(key)


def _values(piece: Piece, readers: Mapping[str, Reader]) -> torch.Tensor:
    tensors = []
    for read in piece.reads:
        index = Region.parse(read.region).box(read.shape).index() if read.region else None
        tensors.append(readers[read.source].read(read.key, index))
    if len(tensors) == 1:
        value = tensors[0]
    else:
        weights = [1 / len(tensors)] * len(tensors) if piece.merge == "mean" else piece.merge["weights"]
        value = sum(w * t.to(torch.float32) for w, t in zip(weights, tensors)).to(tensors[0].dtype)
    for spec in piece.transforms:
        value = compile_transform(spec, piece.rule).apply(value)
    return value


def materialize(entry: Entry, readers: Mapping[str, Reader], initial) -> torch.Tensor:
    """The values of one output tensor, in the entry's dtype, contiguous."""
    dtype = torch_dtype(entry.dtype)
    whole = [p for p in entry.pieces if p.region is None]
    if whole:
        out = _values(whole[0], readers).to(dtype)
    else:
        out = initial[entry.key].to(dtype, copy=True)
        for piece in entry.pieces:
            box = Region.parse(piece.region).box(entry.shape)
            out[box.index()] = _values(piece, readers).to(dtype)
    if tuple(out.shape) != tuple(entry.shape):
        raise RuntimeError(f"{entry.key}: produced shape {list(out.shape)}, plan says {list(entry.shape)}")
    return out.contiguous()


def _verify(path: Path, fmt: str, plan: Plan) -> None:
    """The written file holds exactly the plan's tensors and loads strictly into the target."""
    with open_checkpoint(path, format=fmt, field="output.path") as written:
        found = [(t.key, tuple(t.shape), t.dtype) for t in written.inventory()]
    expected = [(e.key, tuple(e.shape), e.dtype) for e in plan.entries]
    if sorted(found) != sorted(expected):
        raise RuntimeError(f"{path}: written tensors differ from the plan")
    if plan.target.spec is not None:
        model = build_model(plan.target.spec, device="meta")
        state = {k: torch.empty(shape, dtype=torch_dtype(dtype), device="meta") for k, shape, dtype in found}
        model.load_state_dict(state, strict=True, assign=True)


def check_output(path: Path, overwrite: bool) -> None:
    """Refuse early, before reading any tensor, what the writer would refuse at the end."""
    if path.suffix not in OUTPUT_FORMATS:
        raise OutputError("output.path", f"{path}: unsupported extension '{path.suffix}' (use .safetensors, .pt or .pth)")
    if path.exists() and not overwrite:
        raise OutputError("output.path", f"{path}: already exists (set output.overwrite=true to replace it)")


def execute(plan: Plan, output: str | Path, *, overwrite: bool = False) -> Path:
    """Write the plan's output checkpoint at ``output`` (atomically) and verify it."""
    path = Path(output)
    check_output(path, overwrite)
    readers = open_plan_sources(plan)
    try:
        initial = _Initial(plan, readers, None)
        infos = [TensorInfo(e.key, tuple(e.shape), e.dtype) for e in plan.entries]
        metadata = {"format": "pt", "torchgraft.plan_sha256": plan.sha256, "torchgraft.version": plan.version}
        fmt = "safetensors" if path.suffix == ".safetensors" else "torch"
        with atomic_output(path, overwrite=overwrite) as tmp:
            with open_writer(tmp, infos, metadata) as writer:
                for entry in plan.entries:
                    writer.write(entry.key, materialize(entry, readers, initial))
            _verify(tmp, fmt, plan)
        return path
    finally:
        for reader in readers.values():
            reader.close()


def state_dict(plan: Plan, initial: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plan's tensors in memory, kept ones taken from ``initial`` (a live model's state)."""
    readers = open_plan_sources(plan)
    try:
        return {e.key: materialize(e, readers, initial) for e in plan.entries}
    finally:
        for reader in readers.values():
            reader.close()


__all__ = ["execute", "state_dict", "materialize", "check_output", "dtype_name"]
