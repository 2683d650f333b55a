"""Reader for ``torch.distributed.checkpoint`` (DCP) folders: a ``.metadata`` file and
``__RANK_N.distcp`` data files.

``.metadata`` is a pickle, which DCP itself reads with plain ``pickle.load``: a
crafted folder runs code there. This reader never does. It unpickles with an
allowlist of exactly the globals DCP writes (its metadata dataclasses, ``torch.Size``,
dtypes, a layout and memory-format tag, ``pathlib`` paths), each mapped to an inert
stand-in defined here: no torch class is constructed, no function of the file's
choosing is called, and torch is not even imported to plan. The result is then
checked field by field (types, shapes, dtypes, chunk bounds, plain file names inside
the folder, byte ranges inside their files) before it becomes an inventory.

A tensor saved sharded across ranks is stored as chunks (offsets and sizes within the
whole tensor), each a ``torch.save`` blob at a byte range of a data file. ``read``
assembles the whole tensor, or only the chunks a region touches, loading each blob
with ``torch.load(weights_only=True)``. ``.metadata`` and the data files are opened once,
when the metadata is read; every read is a ``pread`` of a file held open.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from torchgraft.checkpoints.base import Reader, as_index
from torchgraft.checkpoints.byteranges import OpenFile
from torchgraft.core.tensors import DTYPE_NAMES, TensorInfo

METADATA = ".metadata"
SIDE_FILE = "torchgraft.json"  # torchgraft's own metadata in a DCP folder it wrote
MAX_METADATA = 256 << 20  # a 1T-parameter model's metadata is tens of MB
_DCP = "torch.distributed.checkpoint."


class MetadataError(Exception):
    """``.metadata`` is not DCP metadata this reader accepts; the message says why."""


# -- the restricted unpickler -----------------------------------------------------------


class _Record:
    """An inert stand-in for one of DCP's metadata dataclasses: it only stores what the
    pickle gives it (constructor arguments and ``BUILD`` state)."""

    kind = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Record:  # NEWOBJ calls __new__ alone
        record = object.__new__(cls)
        record.args, record.kwargs, record.state = args, kwargs, None
        return record

    def __init__(self, *args: Any, **kwargs: Any):
        pass  # REDUCE: __new__ has stored the arguments

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def field(self, name: str, position: int) -> Any:
        """A dataclass field, from BUILD state (a dict) or constructor/state tuples."""
        if isinstance(self.state, dict):
            return self.state.get(name)
        if isinstance(self.state, tuple) and len(self.state) == 2 and isinstance(self.state[1], dict):
            return self.state[1].get(name)  # (None, {slots}) form
        values = self.state if isinstance(self.state, tuple) else self.args
        return values[position] if position < len(values) else self.kwargs.get(name)


def _record(kind: str) -> type[_Record]:
    return type(f"_{kind}", (_Record,), {"kind": kind})


@dataclass(frozen=True)
class _Dtype:
    name: str


def _size(*args: Any) -> tuple:
    if len(args) != 1 or not isinstance(args[0], (tuple, list)):
        raise MetadataError("a torch.Size that is not a sequence")
    return tuple(args[0])


def _tag(*args: Any) -> str:
    """``torch.serialization._get_layout('torch.strided')``, a memory-format enum value."""
    return repr(args)


def _path(*args: Any) -> str:
    return "/".join(str(a) for a in args)


_RECORDS = ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
            "TensorProperties", "MetadataIndex", "StorageMeta")
_ALLOWED: dict[tuple[str, str], Any] = {
    **{(_DCP + "metadata", name): _record(name) for name in _RECORDS},
    (_DCP + "filesystem", "_StorageInfo"): _record("_StorageInfo"),
    (_DCP + "metadata", "_MEM_FORMAT_ENCODING"): _tag,
    ("torch.serialization", "_get_layout"): _tag,
    ("torch", "Size"): _size,
    ("pathlib", "PosixPath"): _path,
    ("pathlib", "PurePosixPath"): _path,
    ("pathlib", "WindowsPath"): _path,
    ("collections", "OrderedDict"): dict,
    **{("torch", name): _Dtype(name) for name in DTYPE_NAMES},
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise MetadataError(f"refers to {module}.{name}, which DCP metadata does not hold "
                                "(refused: unpickling it could run code)") from None


def load_metadata(raw: bytes) -> _Record:
    """``.metadata`` bytes -> the inert ``Metadata`` record, or MetadataError."""
    try:
        top = _Unpickler(io.BytesIO(raw)).load()
    except MetadataError:
        raise
    except RecursionError:
        raise MetadataError("nested too deeply") from None
    except Exception as err:
        raise MetadataError(f"not a readable pickle ({type(err).__name__}: {str(err)[:120]})") from None
    if not (isinstance(top, _Record) and top.kind == "Metadata"):
        raise MetadataError("does not hold a torch.distributed.checkpoint Metadata object")
    return top


# -- checked, plain descriptions --------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    offsets: tuple[int, ...]  # where the chunk starts within the whole tensor
    sizes: tuple[int, ...]
    file: str  # a plain name inside the folder
    offset: int  # byte range of its torch.save blob in that file
    length: int


@dataclass(frozen=True)
class StoredTensor:
    info: TensorInfo  # key relative to the reader's ``key``
    chunks: tuple[Chunk, ...]


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(type(v) is int and v >= 0 for v in value):
        raise MetadataError(f"{what} is not a tuple of non-negative integers")
    return value


def _plain_name(name: Any) -> str:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or "\0" in name or name in (".", ".."):
        raise MetadataError(f"names a data file {name!r} that is not a plain file name inside the folder")
    return name


def describe(top: _Record, sizes: dict[str, int]) -> dict[str, StoredTensor]:
    """Every tensor of the metadata by its fully qualified name, checked. ``sizes`` are the
    folder's file sizes by name (a chunk must lie inside its file)."""
    state = top.field("state_dict_metadata", 0)
    storage = top.field("storage_data", 2)
    if not isinstance(state, dict) or not isinstance(storage, dict):
        raise MetadataError("has no state_dict_metadata or storage_data mapping")
    where: dict[tuple[str, int], Chunk] = {}
    for index, info in storage.items():
        if not (isinstance(index, _Record) and index.kind == "MetadataIndex"
                and isinstance(info, _Record) and info.kind == "_StorageInfo"):
            continue
        fqn, n = index.field("fqn", 0), index.field("index", 2)
        if not isinstance(fqn, str) or n is None:
            continue  # bytes items (counters, configs): not tensors to move
        name = _plain_name(info.field("relative_path", 0))
        offset, length = info.field("offset", 1), info.field("length", 2)
        if type(offset) is not int or type(length) is not int or offset < 0 or length < 0:
            raise MetadataError(f"'{fqn}' has a byte range that is not two non-negative integers")
        if info.field("transform_descriptors", 3):
            raise MetadataError(f"'{fqn}' is stored with transforms (compression), which torchgraft does not read")
        if name not in sizes:
            raise MetadataError(f"'{fqn}' is stored in {name}, which the folder does not have")
        if offset + length > sizes[name]:
            raise MetadataError(f"'{fqn}' is stored at bytes {offset}..{offset + length} of {name}, "
                                f"which has {sizes[name]}")
        if type(n) is not int:
            raise MetadataError(f"'{fqn}' has a chunk index that is not an integer")
        where[(fqn, n)] = Chunk((), (), name, offset, length)
    out: dict[str, StoredTensor] = {}
    for fqn, meta in state.items():
        if not isinstance(fqn, str) or not (isinstance(meta, _Record) and meta.kind == "TensorStorageMetadata"):
            continue
        props, size, chunks = meta.field("properties", 0), meta.field("size", 1), meta.field("chunks", 2)
        shape = _ints(size, f"'{fqn}': its size")
        dtype = props.field("dtype", 0) if isinstance(props, _Record) else None
        if not isinstance(dtype, _Dtype):
            raise MetadataError(f"'{fqn}' has no dtype torchgraft knows")
        if not isinstance(chunks, list) or (not chunks and math.prod(shape)):
            raise MetadataError(f"'{fqn}' lists no chunks")
        placed, covered = [], 0
        for n, chunk in enumerate(chunks):
            if not (isinstance(chunk, _Record) and chunk.kind == "ChunkStorageMetadata"):
                raise MetadataError(f"'{fqn}': chunk {n} is not a ChunkStorageMetadata")
            offsets = _ints(chunk.field("offsets", 0), f"'{fqn}': chunk {n} offsets")
            sizes_ = _ints(chunk.field("sizes", 1), f"'{fqn}': chunk {n} sizes")
            if len(offsets) != len(shape) or len(sizes_) != len(shape) or any(
                    o + s > d for o, s, d in zip(offsets, sizes_, shape)):
                raise MetadataError(f"'{fqn}': chunk {n} lies outside the tensor's size {list(shape)}")
            stored = where.get((fqn, n))
            if stored is None:
                raise MetadataError(f"'{fqn}': chunk {n} has no storage entry")
            placed.append(Chunk(offsets, sizes_, stored.file, stored.offset, stored.length))
            covered += math.prod(sizes_)
        if covered != math.prod(shape):
            raise MetadataError(f"'{fqn}': its chunks hold {covered} elements, its size {math.prod(shape)}")
        out[fqn] = StoredTensor(TensorInfo(fqn, shape, dtype.name), tuple(placed))
    return out


def _planner_paths(top: _Record) -> dict[str, tuple]:
    data = top.field("planner_data", 1)
    return data if isinstance(data, dict) else {}


# -- the reader -------------------------------------------------------------------------


class DCPReader(Reader):
    """A DCP folder. ``key`` selects a nested state dict (``model``, as torchtitan saves)."""

    format = "dcp"

    def __init__(self, path: Path, *, field: str, shown: str | None = None, key: str | None = None):
        super().__init__(path, field=field, shown=shown)
        self.key = key
        self._metadata_file: OpenFile | None = None
        self._data: dict[str, OpenFile] = {}  # the data files the tensors are in, by name
        self._read_or_close(self._read_metadata)

    def _read_metadata(self) -> None:
        self._metadata_file = OpenFile.inside(self.path, METADATA)
        if self._metadata_file.stat().st_size > MAX_METADATA:
            raise self._error(f"{METADATA} is larger than {MAX_METADATA >> 20} MiB")
        raw = self._metadata_file.read_all()
        sizes = {e.name: e.stat().st_size for e in os.scandir(self.path) if e.is_file(follow_symlinks=False)}
        try:
            top = load_metadata(raw)
            stored = describe(top, sizes)
        except MetadataError as err:
            raise self._error(f"{METADATA} {err}") from None
        self._stored = self._select(stored, _planner_paths(top))
        self._set_inventory(s.info for s in self._stored.values())
        for name in sorted({c.file for s in self._stored.values() for c in s.chunks}):
            self._data[name] = OpenFile.inside(self.path, name)

    def _select(self, stored: dict[str, StoredTensor], paths: dict[str, tuple]) -> dict[str, StoredTensor]:
        if self.key is None:
            return stored
        prefix = tuple(self.key.split("."))
        out = {}
        for fqn, tensor in stored.items():
            path = paths.get(fqn)
            parts = tuple(path) if isinstance(path, tuple) and all(isinstance(p, str) for p in path) else tuple(fqn.split("."))
            if parts[:len(prefix)] == prefix and len(parts) > len(prefix):
                name = ".".join(parts[len(prefix):])
                out[name] = StoredTensor(TensorInfo(name, tensor.info.shape, tensor.info.dtype), tensor.chunks)
        if not out:
            tops = sorted({(paths.get(f) or f.split("."))[0] for f in stored})
            raise self._error(f"no tensors under key '{self.key}' (top-level entries: {', '.join(map(str, tops))})")
        return out

    def _files(self) -> list[OpenFile]:
        return [f for f in (self._metadata_file, *self._data.values()) if f is not None]

    def _header_sha256(self) -> str:
        return hashlib.sha256(self._metadata_file.read_all()).hexdigest()

    def read(self, key: str, index: tuple | None = None) -> torch.Tensor:
        import torch

        from torchgraft.core.tensors import torch_dtype

        info = self._info(key)
        stored = self._stored[key]
        out = torch.empty(info.shape, dtype=torch_dtype(info.dtype))
        for chunk in stored.chunks:
            where = tuple(slice(o, o + s) for o, s in zip(chunk.offsets, chunk.sizes))
            out[where] = self._load_chunk(key, chunk)
        index = as_index(index)
        return out if index is None else out[index].contiguous()

    def _load_chunk(self, key: str, chunk: Chunk) -> torch.Tensor:
        import torch

        blob = self._data[chunk.file].pread(chunk.length, chunk.offset)
        try:
            value = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
        except Exception as err:
            raise self._error(f"'{key}': its chunk in {chunk.file} is not a readable tensor ({type(err).__name__})") from None
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != chunk.sizes:
            raise self._error(f"'{key}': its chunk in {chunk.file} does not hold a tensor of size {list(chunk.sizes)}")
        return value

    def metadata(self) -> dict[str, str]:
        """torchgraft's metadata, from ``torchgraft.json`` beside ``.metadata`` (a folder
        torchgraft wrote), else ``{}``. Read as untrusted JSON: str -> str or nothing."""
        path = self.path / SIDE_FILE
        try:
            if not path.is_file() or path.is_symlink() or path.stat().st_size > (1 << 20):
                return {}
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return {}
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            return {}
        return data

    def chunks(self, key: str) -> Iterator[Chunk]:
        """Where ``key``'s chunks are stored (for tests and the inspector)."""
        yield from self._stored[key].chunks
