"""Run a plan: stream each output tensor from the sources into the writer, then verify
the written file against the plan, and the sources against their fingerprints again,
before it is published. Never reads a recipe.

Every read goes through the sources' readers, which hold the files the plan was
checked against open. Memory is bounded by the tensors in flight: a tensor copied
unchanged from a file moves as bytes (the writer's ``copy`` of the reader's
``byte_range``), and any other whole-tensor read is a ``pread`` into a buffer of its
own (see ``Reader.read``).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from torchgraft.checkpoints import Reader, atomic_output, open_checkpoint, open_writer
from torchgraft.checkpoints.atomic import atomic_directory
from torchgraft.checkpoints.byteranges import ByteRange
from torchgraft.checkpoints.dcp_writer import DCP_FILES, write_dcp
from torchgraft.checkpoints.formats import directory_needed, output_format
from torchgraft.checkpoints.sharded import ShardedWriter, check_directory, split, write_index
from torchgraft.checkpoints.writers import SafetensorsWriter
from torchgraft.core.errors import OutputError
from torchgraft.core.heap import HeapTrimmer
from torchgraft.core.paths import overlap
from torchgraft.core.target import build_model
from torchgraft.core.tensors import TensorInfo, torch_dtype
from torchgraft.execution.casts import CASTS, read_cast
from torchgraft.execution.initial import check_initial, initial_values
from torchgraft.execution.merges import merge
from torchgraft.execution.outputs import replaceable, side_files
from torchgraft.execution.progress import Progress
from torchgraft.execution.ranks import ALONE, World
from torchgraft.execution.sources import check_sources_unchanged, open_plan_sources
from torchgraft.keys.regions import Region
from torchgraft.plans.types import Entry, Piece, Plan, Read
from torchgraft.transforms import compile_transform

log = logging.getLogger(__name__)


def _unchanged(entry: Entry, readers: Mapping[str, Reader]) -> ByteRange | None:
    """The bytes to copy when ``entry`` is one whole source tensor taken as it is (same
    dtype and shape; no region, merge or transform): its stored bytes are the output's."""
    if len(entry.pieces) != 1 or entry.uncovered:
        return None
    piece = entry.pieces[0]
    read = piece.reads[0]
    if piece != Piece((read,), piece.rule) or read.region is not None:  # any other field: values change
        return None
    if read.dtype != entry.dtype or tuple(read.shape) != tuple(entry.shape):
        return None
    return readers[read.source].byte_range(read.key)


def _cast_only(entry: Entry, readers: Mapping[str, Reader]) -> tuple[ByteRange, str] | None:
    """The stored bytes and dtype of the one whole source tensor that ``entry`` only casts,
    when numpy can do that cast as torch does (``casts.CASTS``): no torch needed."""
    if len(entry.pieces) != 1 or entry.uncovered:
        return None
    piece = entry.pieces[0]
    read = piece.reads[0]
    if piece != Piece((read,), piece.rule) or read.region is not None or tuple(read.shape) != tuple(entry.shape):
        return None
    if (read.dtype, entry.dtype) not in CASTS:
        return None
    where = readers[read.source].byte_range(read.key)
    return None if where is None else (where, read.dtype)


def _stored_as(entry: Entry, reader: Reader, infos: Mapping[str, TensorInfo]) -> ByteRange | None:
    """The bytes of ``entry`` if the base (``reader``, whose tensors are ``infos``)
    stores its tensor exactly as the output wants it."""
    info = infos[entry.key]
    if info.dtype != entry.dtype or info.shape != tuple(entry.shape):
        return None
    return reader.byte_range(entry.key)


def _first_copy_page_offset(plan: Plan, readers: Mapping[str, Reader]) -> int | None:
    """Where in a page the first tensor copied as bytes starts in its source (None: no
    such tensor): the output's data starts there too, so that copies move whole pages."""
    for entry in plan.entries:
        found = _unchanged(entry, readers)
        if found is not None:
            return found.offset % SafetensorsWriter.PAGE
    return None


def _values(piece: Piece, readers: Mapping[str, Reader], initial: Callable[[], torch.Tensor] | None = None,
            key: str = "") -> torch.Tensor:
    """A piece's values. ``initial`` gives the destination's initial value, for a transform
    that fills from it (pad_rows with fill: init); it is called only then. ``key`` (the
    target's) seeds random merges."""
    loaders = [functools.partial(_read, read, readers) for read in piece.reads]
    if isinstance(piece.merge, dict) and "each" in piece.merge:  # {concat: DIM} | {stack: DIM}
        value = join(piece.merge, [load() for load in loaders], piece.rule)
    elif len(loaders) == 1:
        value = loaders[0]()
    else:  # merged: the sources are read one by one as the method needs them
        value = merge(piece.merge, loaders, key + (piece.region or ""), piece.rule)
    for spec in piece.transforms:
        value = compile_transform(spec, piece.rule).apply(value, initial)
    return value


def _read(read: Read, readers: Mapping[str, Reader]) -> torch.Tensor:
    index = Region.parse(read.region).box(read.shape).index() if read.region else None
    return readers[read.source].read(read.key, index)


def join(merge: dict, tensors: list, rule: str):
    """Concatenate or stack the sources' values, each after its own transforms."""
    import torch

    parts = [tensor for tensor in tensors]
    for i, specs in enumerate(merge["each"]):
        for spec in specs:
            parts[i] = compile_transform(spec, f"{rule}.from[{i}]").apply(parts[i])
    if "concat" in merge:
        return torch.cat(parts, dim=merge["concat"])
    return torch.stack(parts, dim=merge["stack"])


def materialize(entry: Entry, readers: Mapping[str, Reader], initial) -> torch.Tensor:
    """The values of one output tensor, in the entry's dtype, contiguous."""
    dtype = torch_dtype(entry.dtype)
    whole = [p for p in entry.pieces if p.region is None]
    if whole:
        out = _values(whole[0], readers, lambda: initial[entry.key], entry.key).to(dtype)
    else:
        out = initial[entry.key].to(dtype, copy=True)
        for piece in entry.pieces:
            index = Region.parse(piece.region).box(entry.shape).index()
            out[index] = _values(piece, readers, lambda: out[index], entry.key).to(dtype)  # noqa: B023 -- called now; regions are disjoint: still initial
    if tuple(out.shape) != tuple(entry.shape):
        raise RuntimeError(f"{entry.key}: produced shape {list(out.shape)}, plan says {list(entry.shape)}")
    return out.contiguous()


def _stream(plan: Plan, writer, readers: Mapping[str, Reader], initial, progress: Progress) -> None:
    """Every entry into the writer, in plan order: as bytes when it is stored as the
    output wants it, else computed, written and dropped."""
    heap = HeapTrimmer()
    base = readers[plan.target.base] if plan.target.base is not None else None
    base_infos = base.by_key() if base is not None else {}
    for entry in plan.entries:
        nbytes = TensorInfo(entry.key, tuple(entry.shape), entry.dtype).nbytes
        unchanged = _unchanged(entry, readers)
        if unchanged is None and entry.kept and base is not None:
            unchanged = _stored_as(entry, base, base_infos)  # patching: the base as it is
        cast = None if unchanged is not None or entry.kept else _cast_only(entry, readers)
        if unchanged is not None:
            writer.copy(entry.key, unchanged)
        elif cast is not None:
            where, dtype = cast
            writer.write_bytes(entry.key, read_cast(where, dtype, entry.dtype))
            heap.freed(nbytes)
        else:
            writer.write(entry.key, _value(entry, readers, initial))
            heap.freed(nbytes)
        progress.update(nbytes)


def _value(entry: Entry, readers: Mapping[str, Reader], initial) -> torch.Tensor:
    """One output tensor's values; a kept one is its initial value as it is (no copy)."""
    if entry.kept:
        return initial[entry.key].to(torch_dtype(entry.dtype))
    return materialize(entry, readers, initial)


def _write_dcp(plan: Plan, tmp: Path, infos: list[TensorInfo], readers: Mapping[str, Reader], initial,
               metadata: Mapping[str, str], progress: Progress, distributed: bool = False) -> None:
    """A DCP folder through torch.distributed.checkpoint's writer, which asks for each
    tensor in turn (no byte copies: DCP stores each tensor as a torch.save blob)."""
    by_key = {e.key: e for e in plan.entries}
    heap = HeapTrimmer()

    def value(key: str) -> torch.Tensor:
        entry = by_key[key]
        tensor = _value(entry, readers, initial)
        nbytes = TensorInfo(key, tuple(entry.shape), entry.dtype).nbytes
        heap.freed(nbytes)
        progress.update(nbytes)
        return tensor

    write_dcp(tmp, infos, value, metadata, distributed=distributed)


def _verify(path: Path, fmt: str, plan: Plan, metadata: Mapping[str, str]) -> None:
    """The written file (or every shard) holds exactly the plan's tensors, carries the
    plan's hash, and loads strictly into the target."""
    with open_checkpoint(path, format="hf" if fmt == "directory" else fmt, field="output.path") as written:
        found = [(t.key, tuple(t.shape), t.dtype) for t in written.inventory()]
        stored = written.metadata()
    expected = [(e.key, tuple(e.shape), e.dtype) for e in plan.entries]
    if sorted(found) != sorted(expected):
        raise RuntimeError(f"{path}: written tensors differ from the plan")
    if fmt == "directory":
        check_directory(path, [TensorInfo(*row) for row in expected], plan.layout.shard_size, metadata)
    elif stored != metadata:
        raise RuntimeError(f"{path}: written metadata {stored} differs from {dict(metadata)}")
    if plan.target.spec is not None:
        import torch

        model = build_model(plan.target.spec, device="meta")
        state = {k: torch.empty(shape, dtype=torch_dtype(dtype), device="meta") for k, shape, dtype in found}
        model.load_state_dict(state, strict=True, assign=True)


def check_output(path: Path, overwrite: bool) -> None:
    """Refuse early, before reading any tensor, what the writer would refuse at the end."""
    if output_format(path) is None:
        raise OutputError("output.path", f"{path}: unsupported extension '{path.suffix}' (use .safetensors, .pt "
                                         "or .pth, .dcp for a DCP folder, or no extension for a model directory)")
    if os.path.lexists(path) and not overwrite:
        raise OutputError("output.path", f"{path}: already exists (set output.overwrite=true to replace it)")


def execute(plan: Plan, output: str | Path, *, overwrite: bool = False, world: World = ALONE) -> Path:
    """Write the plan's output at ``output`` (atomically), verify it, return its path.

    ``.safetensors`` streams: memory is the tensors in flight. ``.pt``/``.pth`` is one
    pickle: the whole output is held in memory until it is saved. A path without an
    extension is a Hugging Face model directory, in shards if the plan has a shard size;
    ``.dcp`` is a torch.distributed.checkpoint folder, one tensor in memory at a time.
    ``world``: this process's rank under ``torchrun``, which writes its share (``ranks``).
    """
    path = Path(output)
    readers: dict[str, Reader] = {}
    try:
        with world.step() as same:
            same.value = (plan.sha256, str(path))
            _check_path(plan, path, overwrite)
            readers = open_plan_sources(plan)
            check_initial(plan)
        world.same("output path", "output.path", [v[1] for v in same.values],
                   "; give output.path, on a filesystem every rank sees (the default is in each rank's run directory)")
        world.same("plan sha256", "plan", [v[0] for v in same.values])
        fmt = output_format(path)
        initial = initial_values(plan, readers)
        infos = [TensorInfo(e.key, tuple(e.shape), e.dtype) for e in plan.entries]
        metadata = {"format": "pt", "torchgraft.plan_sha256": plan.sha256, "torchgraft.version": plan.version}
        share = world.share(plan, fmt)
        if not world.alone and world.rank == 0 and fmt not in ("directory", "dcp"):
            log.warning("%s is one file: rank 0 writes it alone (a directory output, output.shard_size, or a .dcp "
                        "output splits the work across the %d ranks)", path.name, world.size)
        if fmt == "directory":
            publish = atomic_directory(path, overwrite=overwrite, replaceable=replaceable(plan.layout))
        elif fmt == "dcp":
            publish = atomic_directory(path, overwrite=overwrite, replaceable=DCP_FILES)
        else:
            publish = atomic_output(path, overwrite=overwrite)
        with world.publishing(publish) as tmp:
            label = f"writing {path.name}" + ("" if world.alone else f" (rank {world.rank} of {world.size})")
            with Progress(sum(i.nbytes for i in share.infos), label) as progress:
                if fmt == "dcp":
                    _write_dcp(share.plan, tmp, share.infos, readers, initial, metadata, progress, not world.alone)
                elif world.alone or (share.shards if fmt == "directory" else world.rank == 0):
                    if fmt == "directory":
                        writer = ShardedWriter(tmp, infos, metadata, plan.layout.shard_size, share.shards)
                    else:
                        writer = open_writer(tmp, infos, metadata, _first_copy_page_offset(plan, readers))
                    with writer:
                        _stream(share.plan, writer, readers, initial, progress)
            world.barrier()  # every rank's share is written
            if world.rank == 0:
                if fmt == "directory":
                    if not world.alone:  # the shards are all written: rank 0 indexes them
                        write_index(tmp, split(infos, plan.layout.shard_size))
                    side_files(plan, tmp)
                _verify(tmp, fmt, plan, metadata)
            check_sources_unchanged(plan, readers)  # what was read is what was checked
        return path
    finally:
        for reader in readers.values():
            reader.close()


def _check_path(plan: Plan, path: Path, overwrite: bool) -> None:
    check_output(path, overwrite)
    for ref in plan.sources:  # apply: the output may be named after the plan was made
        how = overlap(path, Path(ref.path))
        if how:
            raise OutputError("output.path", f"{path} {how} '{ref.name}' ({ref.path}); sources are never overwritten")
    reason = directory_needed(path, sharded=plan.layout.shard_size is not None, copies=bool(plan.layout.names))
    if reason:
        raise OutputError("output.path", reason)


def state_dict(plan: Plan, initial: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plan's tensors in memory, kept ones taken from ``initial`` (a live model's state)."""
    readers = open_plan_sources(plan)
    try:
        tensors = {e.key: materialize(e, readers, initial) for e in plan.entries}
        check_sources_unchanged(plan, readers)
        return tensors
    finally:
        for reader in readers.values():
            reader.close()


__all__ = ["execute", "state_dict", "materialize", "check_output"]
