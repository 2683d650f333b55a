"""One output tensor's work: how it is made (copied as bytes, cast in numpy, computed
from its reads, or taken whole), split into the read, compute and write steps that
``pipeline`` overlaps, and into row chunks where the tensor is large.

A unit is one tensor, or one chunk of its leading rows. Only work that is the same
row by row is chunked: a numpy cast or mean, and a piece whose reads are whole tensors of the
output's shape, merged by ``mean`` or ``linear`` (or not merged), with ``cast`` and
``scale`` transforms. Anything else (a transpose, a concat, a region, a kept tensor,
another merge method) is one unit however large, computed as before. Reads happen in
the read step only, so the readers, whose state is filled in lazily, are used by one
thread at a time.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from torchgraft.checkpoints import Reader
from torchgraft.checkpoints.byteranges import ByteRange, read_range
from torchgraft.core.tensors import TensorInfo, itemsize, torch_dtype
from torchgraft.execution.casts import CASTS, mean_bits, read_bits, read_cast
from torchgraft.execution.merges import merge
from torchgraft.keys.regions import Region
from torchgraft.plans.types import Entry, Piece, Plan, Read
from torchgraft.transforms import compile_transform


def unchanged(entry: Entry, readers: Mapping[str, Reader]) -> ByteRange | None:
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


def cast_only(entry: Entry, readers: Mapping[str, Reader]) -> tuple[ByteRange, str] | None:
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


def stored_as(entry: Entry, reader: Reader, infos: Mapping[str, TensorInfo]) -> ByteRange | None:
    """The bytes of ``entry`` if the base (``reader``, whose tensors are ``infos``)
    stores its tensor exactly as the output wants it."""
    info = infos[entry.key]
    if info.dtype != entry.dtype or info.shape != tuple(entry.shape):
        return None
    return reader.byte_range(entry.key)


def values(piece: Piece, readers: Mapping[str, Reader], initial: Callable[[], torch.Tensor] | None = None,
            key: str = "") -> torch.Tensor:
    """A piece's values. ``initial`` gives the destination's initial value, for a transform
    that fills from it (pad_rows with fill: init); it is called only then. ``key`` (the
    target's) seeds random merges."""
    return computed(piece, [functools.partial(_read, read, readers) for read in piece.reads], initial, key)


def computed(piece: Piece, loaders: list[Callable[[], torch.Tensor]], initial: Callable[[], torch.Tensor] | None,
             key: str) -> torch.Tensor:
    """A piece's values from one loader per read (see ``_values``)."""
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
        out = values(whole[0], readers, lambda: initial[entry.key], entry.key).to(dtype)
    else:
        out = initial[entry.key].to(dtype, copy=True)
        for piece in entry.pieces:
            index = Region.parse(piece.region).box(entry.shape).index()
            out[index] = values(piece, readers, lambda: out[index], entry.key).to(dtype)  # noqa: B023 -- called now; regions are disjoint: still initial
    if tuple(out.shape) != tuple(entry.shape):
        raise RuntimeError(f"{entry.key}: produced shape {list(out.shape)}, plan says {list(entry.shape)}")
    return out.contiguous()


def value(entry: Entry, readers: Mapping[str, Reader], initial) -> torch.Tensor:
    """One output tensor's values; a kept one is its initial value as it is (no copy)."""
    if entry.kept:
        return initial[entry.key].to(torch_dtype(entry.dtype))
    return materialize(entry, readers, initial)




# -- units ----------------------------------------------------------------------------------

ROW_WISE_TRANSFORMS = frozenset({"cast", "scale"})


@dataclass(frozen=True)
class Unit:
    """``entry``'s work (``kind``: copy | cast | mean | piece | whole), or the part of it for
    ``rows`` (first, end) of dim 0; ``out_bytes`` it writes, ``cost``: bytes it holds."""

    entry: Entry
    kind: str
    out_bytes: int
    cost: int
    where: ByteRange | None = None  # copy: the bytes; cast, mean: the (first) float32 source's (rows: those rows)
    rows: tuple[int, int] | None = None
    sources: tuple[ByteRange, ...] = ()  # mean: every source's bytes


def units(plan: Plan, readers: Mapping[str, Reader], chunk: int | None) -> Iterator[Unit]:
    """The plan's work in order; a tensor whose unit would cost more than ``chunk`` bytes
    is cut into row chunks of at most that (None: never; the writer takes whole tensors)."""
    base = readers[plan.target.base] if plan.target.base is not None else None
    base_infos = base.by_key() if base is not None else {}
    for entry in plan.entries:
        out = TensorInfo(entry.key, tuple(entry.shape), entry.dtype).nbytes
        where = unchanged(entry, readers)
        if where is None and entry.kept and base is not None:
            where = stored_as(entry, base, base_infos)  # patching: the base as it is
        if where is not None:
            yield Unit(entry, "copy", out, 0, where)
            continue
        cast = None if entry.kept else cast_only(entry, readers)
        sources = None if entry.kept or cast is not None else _float32_mean(entry, readers)
        if cast is not None:
            yield from _chunks(entry, "cast", cast[0], out, chunk)  # plus one 1 MiB buffer
        elif sources is not None:
            items = out // itemsize(entry.dtype)
            yield from _chunks(entry, "mean", sources[0], (4 * len(sources) + 8) * items + out, chunk, sources)
        elif _separable(entry):
            row_wise = _row_wise(entry)
            yield from _chunks(entry, "piece", None, _piece_cost(entry), chunk if row_wise else None)
        else:
            yield Unit(entry, "whole", out, 2 * out)


def _chunks(entry: Entry, kind: str, where: ByteRange | None, cost: int, chunk: int | None,
            sources: tuple[ByteRange, ...] = ()) -> Iterator[Unit]:
    out = TensorInfo(entry.key, tuple(entry.shape), entry.dtype).nbytes
    rows = entry.shape[0] if entry.shape else 0
    if chunk is None or cost <= chunk or rows < 2:
        yield Unit(entry, kind, out, cost, where, None, sources)
        return
    per_row, out_row = cost // rows, out // rows
    step = max(1, chunk // max(1, per_row))
    in_row = where.length // rows if where is not None else 0
    for first in range(0, rows, step):
        end = min(rows, first + step)
        part = None if where is None else _rows(where, first, end, in_row)
        yield Unit(entry, kind, (end - first) * out_row, (end - first) * per_row, part, (first, end),
                   tuple(_rows(source, first, end, in_row) for source in sources))


def _rows(where: ByteRange, first: int, end: int, row: int) -> ByteRange:
    return ByteRange(where.path, where.fd, where.offset + first * row, (end - first) * row)


def _float32_mean(entry: Entry, readers: Mapping[str, Reader]) -> tuple[ByteRange, ...] | None:
    """The stored bytes of the float32 tensors that ``entry`` only averages (``mean``, no
    transform, each whole and of the output's shape), when numpy can do it as torch does."""
    if len(entry.pieces) != 1 or entry.uncovered:
        return None
    piece = entry.pieces[0]
    if piece.merge != "mean" or piece.transforms or piece.region is not None or len(piece.reads) < 2:
        return None
    if entry.dtype != "float32" and ("float32", entry.dtype) not in CASTS:
        return None
    if any(r.dtype != "float32" or r.region is not None or tuple(r.shape) != tuple(entry.shape) for r in piece.reads):
        return None
    if Piece(piece.reads, piece.rule, merge="mean") != piece:  # any other field: not only a mean
        return None
    found = tuple(readers[r.source].byte_range(r.key) for r in piece.reads)
    return None if any(where is None for where in found) else found


def _separable(entry: Entry) -> bool:
    """Whether ``entry`` is one whole piece computed from its reads alone (not from the
    destination's initial values): its reads can be made ahead of its computation."""
    if entry.kept or len(entry.pieces) != 1 or entry.uncovered or entry.pieces[0].region is not None:
        return False
    return not entry.pieces[0].reads_initial


def _row_wise(entry: Entry) -> bool:
    """Whether rows of ``entry`` are computed from the same rows of its reads alone."""
    piece = entry.pieces[0]
    if any(r.region is not None or tuple(r.shape) != tuple(entry.shape) for r in piece.reads):
        return False
    names = [spec if isinstance(spec, str) else next(iter(spec), None) for spec in piece.transforms]
    if not all(name in ROW_WISE_TRANSFORMS for name in names):
        return False
    spec = piece.merge
    if len(piece.reads) == 1 or spec == "mean":
        return True
    return isinstance(spec, Mapping) and "each" not in spec and spec.get("method", "linear") == "linear"


def _piece_cost(entry: Entry) -> int:
    """The bytes a piece holds: its reads, its output, and float32 work buffers (two
    when merged, one when transformed)."""
    piece = entry.pieces[0]
    items = TensorInfo(entry.key, tuple(entry.shape), entry.dtype).nbytes // itemsize(entry.dtype)
    reads = sum(TensorInfo(r.key, tuple(r.shape), r.dtype).nbytes for r in piece.reads)
    work = 8 * items if len(piece.reads) > 1 else 4 * items if piece.transforms else 0
    return reads + items * itemsize(entry.dtype) + work


def read_unit(unit: Unit, readers: Mapping[str, Reader], initial) -> Any:
    """The read step: the bytes or tensors ``unit`` computes from (a whole unit: its values)."""
    if unit.kind == "copy":
        return None
    if unit.kind == "cast":  # read as it is cast (casts.read_cast): a fresh buffer would cost a page fault per 4 KiB
        return None
    if unit.kind == "mean":
        return [read_bits(where) for where in unit.sources]
    if unit.kind == "piece":
        return [_read(read, readers) if unit.rows is None else _read_rows(read, readers, unit.rows)
                for read in unit.entry.pieces[0].reads]
    return value(unit.entry, readers, initial)


def _read_rows(read: Read, readers: Mapping[str, Reader], rows: tuple[int, int]) -> torch.Tensor:
    """Rows ``first:end`` of a whole source tensor: a ``pread`` of their bytes where it is
    stored whole (no mapping, which would stay resident), else through the reader."""
    first, end = rows
    where = readers[read.source].byte_range(read.key)
    if where is None:
        return readers[read.source].read(read.key, (slice(first, end),))
    row = where.length // read.shape[0]
    part = ByteRange(where.path, where.fd, where.offset + first * row, (end - first) * row)
    return read_range(part, read.dtype, (end - first, *read.shape[1:]))


def compute_unit(unit: Unit, data: Any) -> Any:
    """The compute step: what the writer takes (numpy bytes for a cast, else a tensor)."""
    if unit.kind == "cast":
        return read_cast(unit.where, "float32", unit.entry.dtype)
    if unit.kind == "mean":
        out = mean_bits(data, unit.entry.dtype)
        return out if out is not None else as_bytes(_torch_mean(unit, data))
    if unit.kind != "piece":
        return data
    entry = unit.entry
    _one_torch_thread()

    def loader(i: int) -> torch.Tensor:
        tensor, data[i] = data[i], None  # handed over: the merge frees each source as it goes
        return tensor

    loaders = [functools.partial(loader, i) for i in range(len(data))]
    out = computed(entry.pieces[0], loaders, None, entry.key).to(torch_dtype(entry.dtype))
    shape = tuple(entry.shape) if unit.rows is None else (unit.rows[1] - unit.rows[0], *entry.shape[1:])
    if tuple(out.shape) != shape:
        raise RuntimeError(f"{entry.key}: produced shape {list(out.shape)}, plan says {list(shape)}")
    return out.contiguous()


_thread = threading.local()


def _one_torch_thread() -> None:
    """On a compute thread, torch's kernels run on that thread alone: the read and write
    threads use the other core, and torch's own thread pool would spin waiting for it (a
    linear merge of 3 x 256 MiB: 7.8 CPU s with two torch threads, 3.2 with one). The
    setting also becomes torch's default for threads that start using it: ``restore_threads``
    puts it back after the run."""
    if threading.current_thread() is threading.main_thread() or getattr(_thread, "one", False):
        return
    import torch

    _threads_before.append(torch.get_num_threads())
    torch.set_num_threads(1)
    _thread.one = True


_threads_before: list[int] = []


def restore_threads() -> None:
    """torch's thread count as it was before a compute thread set it to one (called on the
    caller's thread once the run's threads are gone)."""
    if _threads_before:
        import torch

        torch.set_num_threads(_threads_before[0])
        _threads_before.clear()


def _torch_mean(unit: Unit, sources: list) -> torch.Tensor:
    """``unit``'s mean from its sources' float32 bits, through torch (``casts.mean_bits``
    declined: NaNs meet)."""
    import torch

    _one_torch_thread()
    tensors = [torch.from_numpy(bits).view(torch.float32) for bits in sources]
    value = merge("mean", [lambda t=t: t for t in tensors], unit.entry.key, unit.entry.pieces[0].rule)
    return value.to(torch_dtype(unit.entry.dtype)).contiguous()


def as_bytes(data: Any) -> memoryview:
    """A unit's output (numpy bytes or a tensor) as bytes."""
    if hasattr(data, "untyped_storage"):
        import torch

        data = data.contiguous().reshape(-1).view(torch.uint8).numpy()
    return memoryview(data)
