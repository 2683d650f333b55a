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
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from torchgraft.checkpoints import Reader, atomic_output, open_checkpoint, open_writer
from torchgraft.checkpoints.atomic import atomic_directory
from torchgraft.checkpoints.dcp_writer import DCP_FILES, write_dcp
from torchgraft.checkpoints.formats import directory_needed, output_format
from torchgraft.checkpoints.sharded import ShardedWriter, check_directory, split, write_index
from torchgraft.checkpoints.writers import SafetensorsWriter
from torchgraft.core.errors import OutputError
from torchgraft.core.heap import HeapTrimmer
from torchgraft.core.paths import overlap
from torchgraft.core.target import build_model
from torchgraft.core.tensors import TensorInfo, torch_dtype
from torchgraft.execution import pipeline
from torchgraft.execution import units as work
from torchgraft.execution.initial import check_initial, initial_values
from torchgraft.execution.outputs import replaceable, side_files
from torchgraft.execution.pipeline import Settings
from torchgraft.execution.progress import Progress
from torchgraft.execution.ranks import ALONE, World
from torchgraft.execution.sources import check_sources_unchanged, open_plan_sources
from torchgraft.execution.units import Unit, as_bytes, compute_unit, materialize, read_unit, unchanged, units
from torchgraft.plans.types import Plan

log = logging.getLogger(__name__)


def _first_copy_page_offset(plan: Plan, readers: Mapping[str, Reader]) -> int | None:
    """Where in a page the first tensor copied as bytes starts in its source (None: no
    such tensor): the output's data starts there too, so that copies move whole pages."""
    for entry in plan.entries:
        found = unchanged(entry, readers)
        if found is not None:
            return found.offset % SafetensorsWriter.PAGE
    return None


def _stream(plan: Plan, writer, readers: Mapping[str, Reader], initial, progress: Progress,
            settings: Settings) -> None:
    """Every entry into the writer, in plan order: as bytes when it is stored as the
    output wants it, else computed, written and dropped; reads, computes and writes
    overlapped (``pipeline``) when any entry computes."""
    heap = HeapTrimmer()
    todo = list(units(plan, readers, settings.chunk if writer.PARTS else None))
    if all(unit.kind == "copy" for unit in todo):
        settings = Settings(settings.in_flight, sequential=True)  # nothing to overlap

    def write(unit: Unit, data) -> None:
        if unit.kind == "copy":
            writer.copy(unit.entry.key, unit.where)
        elif unit.rows is not None:
            writer.write_part(unit.entry.key, as_bytes(data))
        elif unit.kind in ("cast", "mean"):  # numpy bytes
            writer.write_bytes(unit.entry.key, data)
        else:
            writer.write(unit.entry.key, data)
        if unit.kind != "copy":
            heap.freed(unit.out_bytes)
        progress.update(unit.out_bytes)

    stage = pipeline.Stage(functools.partial(read_unit, readers=readers, initial=initial),
                           compute_unit, write, lambda unit: unit.cost)
    try:
        pipeline.run(todo, stage, settings)
    finally:
        work.restore_threads()


def _write_dcp(plan: Plan, tmp: Path, infos: list[TensorInfo], readers: Mapping[str, Reader], initial,
               metadata: Mapping[str, str], progress: Progress, distributed: bool = False) -> None:
    """A DCP folder through torch.distributed.checkpoint's writer, which asks for each
    tensor in turn (no byte copies: DCP stores each tensor as a torch.save blob)."""
    by_key = {e.key: e for e in plan.entries}
    heap = HeapTrimmer()

    def value(key: str) -> torch.Tensor:
        entry = by_key[key]
        tensor = work.value(entry, readers, initial)
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


def execute(plan: Plan, output: str | Path, *, overwrite: bool = False, world: World = ALONE,
            settings: Settings | None = None) -> Path:
    """Write the plan's output at ``output`` (atomically), verify it, return its path.

    ``.safetensors`` streams: memory is the tensors in flight. ``.pt``/``.pth`` is one
    pickle: the whole output is held in memory until it is saved. A path without an
    extension is a Hugging Face model directory, in shards if the plan has a shard size;
    ``.dcp`` is a torch.distributed.checkpoint folder, one tensor in memory at a time.
    ``world``: this process's rank under ``torchrun``, which writes its share (``ranks``).
    ``settings``: how many bytes may be in flight, and whether to overlap reads, computes
    and writes (``pipeline``); the output is the same either way.
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
                        _stream(share.plan, writer, readers, initial, progress, settings or Settings())
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
