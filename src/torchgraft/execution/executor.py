"""Run a plan: stream each output tensor from the sources into the writer, then verify
the written file against the plan before it is published. Never reads a recipe.

Memory is bounded by the tensors in flight: a tensor copied unchanged from a file
moves as bytes (the writer's ``copy``), and any other whole-tensor read comes from
``pread`` into a buffer of its own rather than from a memory map, whose touched pages
would stay resident until the end of the run.
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
from torchgraft.checkpoints.byteranges import ByteRange, SourceFiles, read_range
from torchgraft.checkpoints.formats import directory_needed, output_format
from torchgraft.checkpoints.sharded import ShardedWriter, check_directory
from torchgraft.checkpoints.writers import SafetensorsWriter
from torchgraft.core.errors import OutputError
from torchgraft.core.heap import HeapTrimmer
from torchgraft.core.target import build_model
from torchgraft.core.tensors import TensorInfo, torch_dtype
from torchgraft.execution.initial import check_initial, initial_values
from torchgraft.execution.merges import merge
from torchgraft.execution.outputs import copy_files, replaceable
from torchgraft.execution.progress import Progress
from torchgraft.execution.sources import open_plan_sources
from torchgraft.keys.regions import Region
from torchgraft.plans.types import Entry, Piece, Plan, Read
from torchgraft.transforms import compile_transform

log = logging.getLogger(__name__)


class _Streaming:
    """A reader whose whole-tensor reads are preads of the tensor's byte range, when it has one."""

    def __init__(self, reader: Reader, files: SourceFiles):
        self.reader, self.files = reader, files
        self._infos: dict[str, TensorInfo] | None = None

    def read(self, key: str, index: tuple | None = None) -> torch.Tensor:
        if index is None:
            where = self.reader.byte_range(key)
            if where is not None:
                info = self._info(key)
                return read_range(self.files.fd(where.path), where, info.dtype, info.shape)
        return self.reader.read(key, index)

    def stored_as(self, entry: Entry) -> ByteRange | None:
        """The bytes of ``entry`` if this source stores its tensor exactly as the output wants it."""
        info = self._info(entry.key)
        if info.dtype != entry.dtype or info.shape != tuple(entry.shape):
            return None
        return self.reader.byte_range(entry.key)

    def _info(self, key: str) -> TensorInfo:
        if self._infos is None:
            self._infos = {info.key: info for info in self.reader.inventory()}
        return self._infos[key]

    def __getattr__(self, name: str):
        return getattr(self.reader, name)


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
    if len(loaders) == 1:
        value = loaders[0]()
    else:  # merged: the sources are read one by one as the method needs them
        value = merge(piece.merge, loaders, key + (piece.region or ""), piece.rule)
    for spec in piece.transforms:
        value = compile_transform(spec, piece.rule).apply(value, initial)
    return value


def _read(read: Read, readers: Mapping[str, Reader]) -> torch.Tensor:
    index = Region.parse(read.region).box(read.shape).index() if read.region else None
    return readers[read.source].read(read.key, index)


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


def _stream(plan: Plan, writer, readers: Mapping[str, Reader], sources: Mapping[str, _Streaming],
            initial, files: SourceFiles, progress: Progress) -> None:
    """Every entry into the writer, in plan order: as bytes when it is stored as the
    output wants it, else computed, written and dropped."""
    heap = HeapTrimmer()
    for entry in plan.entries:
        nbytes = TensorInfo(entry.key, tuple(entry.shape), entry.dtype).nbytes
        unchanged = _unchanged(entry, readers)
        if unchanged is None and entry.kept and plan.target.base is not None:
            unchanged = sources[plan.target.base].stored_as(entry)  # patching: the base as it is
        if unchanged is not None:
            writer.copy(entry.key, unchanged, files)
        elif entry.kept:  # written as it is: no copy next to the initial value
            writer.write(entry.key, initial[entry.key].to(torch_dtype(entry.dtype)))
            heap.freed(nbytes)
        else:
            writer.write(entry.key, materialize(entry, sources, initial))
            heap.freed(nbytes)
        progress.update(nbytes)


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
                                         "or .pth, or no extension for a model directory)")
    if os.path.lexists(path) and not overwrite:
        raise OutputError("output.path", f"{path}: already exists (set output.overwrite=true to replace it)")


def execute(plan: Plan, output: str | Path, *, overwrite: bool = False) -> Path:
    """Write the plan's output at ``output`` (atomically), verify it, return its path.

    ``.safetensors`` streams: memory is the tensors in flight. ``.pt``/``.pth`` is one
    pickle: the whole output is held in memory until it is saved. A path without an
    extension is a Hugging Face model directory, in shards if the plan has a shard size.
    """
    path = Path(output)
    check_output(path, overwrite)
    fmt = output_format(path)
    reason = directory_needed(path, sharded=plan.layout.shard_size is not None, copies=bool(plan.layout.files))
    if reason:
        raise OutputError("output.path", reason)
    readers = open_plan_sources(plan)
    files = SourceFiles()
    try:
        check_initial(plan)
        sources = {name: _Streaming(reader, files) for name, reader in readers.items()}
        initial = initial_values(plan, sources)
        infos = [TensorInfo(e.key, tuple(e.shape), e.dtype) for e in plan.entries]
        metadata = {"format": "pt", "torchgraft.plan_sha256": plan.sha256, "torchgraft.version": plan.version}
        if fmt == "directory":
            publish = atomic_directory(path, overwrite=overwrite, replaceable=replaceable(plan.layout))
        else:
            publish = atomic_output(path, overwrite=overwrite)
        with publish as tmp:
            if fmt == "directory":
                writer = ShardedWriter(tmp, infos, metadata, plan.layout.shard_size)
            else:
                writer = open_writer(tmp, infos, metadata, _first_copy_page_offset(plan, readers))
            with writer, Progress(sum(i.nbytes for i in infos), f"writing {path.name}") as progress:
                _stream(plan, writer, readers, sources, initial, files, progress)
            if fmt == "directory":
                copy_files(plan, tmp)
            _verify(tmp, fmt, plan, metadata)
        return path
    finally:
        files.close()
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


__all__ = ["execute", "state_dict", "materialize", "check_output"]
