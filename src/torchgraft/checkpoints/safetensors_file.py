"""Reader for one ``.safetensors`` file: the header is the inventory, reads are mmap slices."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

if TYPE_CHECKING:
    import torch

from torchgraft.checkpoints.base import Reader, as_index
from torchgraft.checkpoints.byteranges import ByteRange, OpenFile, read_range
from torchgraft.core.tensors import DTYPE_NAMES, TensorInfo, from_safetensors_code, itemsize, safetensors_code

MAX_HEADER = 100_000_000  # the safetensors library refuses larger headers
_ENTRY_FIELDS = frozenset({"dtype", "shape", "data_offsets"})
# A file has a few dtypes and many tensors: look each code up once.
_dtype_of_code = functools.lru_cache(maxsize=None)(from_safetensors_code)
_ITEMSIZE = {safetensors_code(name): itemsize(name) for name in DTYPE_NAMES}


class HeaderError(ValueError):
    """The first bytes of a file are not a safetensors header (``str(e)`` is the reason)."""


def read_header(source: Path | OpenFile) -> tuple[bytes, dict]:
    """The raw header bytes (8-byte length + JSON) and the parsed JSON of the file at a
    path, or of a file held open.

    A plain bounded read: used to sniff the format and to hash the header exactly as
    stored, without trusting anything past it.
    """
    file = source if isinstance(source, OpenFile) else OpenFile(source)
    try:
        prefix = file.pread(8, 0)
        if len(prefix) < 8:
            raise HeaderError("file is shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER:
            raise HeaderError(f"header length {n} is over the 100 MB limit")
        body = file.pread(n, 8)
    finally:
        if file is not source:
            file.close()
    if len(body) < n:
        raise HeaderError(f"header length {n} runs past the end of the file")
    try:
        # A float is never valid in a header; kept as its text, it can never pass for the
        # integer it equals (2.0 == 2) in the checks below.
        header = json.loads(body, parse_float=str)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HeaderError(f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise HeaderError("header is not a JSON object")
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if not (isinstance(entry, dict) and entry.keys() >= _ENTRY_FIELDS):
            raise HeaderError(f"entry '{key}' lacks dtype, shape or data_offsets")
    return prefix + body, header


def check_layout(header: dict, entries: list[tuple[str, dict]], data_size: int) -> None:
    """What ``safe_open`` checks before it maps a file, on the header already parsed.

    ``entries`` are in offset order. Each tensor's bytes must start where the previous
    one's end, hold exactly its shape times its dtype's size, and the last must end at
    the end of the file, so that no two tensors overlap and a byte-range copy takes
    exactly one tensor. (Asking ``safe_open`` itself would parse the header a second
    time and import numpy: 0.3 s on a 100k-tensor header.)
    """
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict)
                                     and all(isinstance(v, str) for v in metadata.values())):
        raise HeaderError("__metadata__ is not a map of strings to strings")
    end = 0
    numels: dict[tuple, int] = {}  # per distinct shape: 100k tensors have a few
    for key, entry in entries:
        offsets, shape = entry["data_offsets"], entry["shape"]
        if not (type(offsets) is list and len(offsets) == 2
                and type(offsets[0]) is int and type(offsets[1]) is int and offsets[0] >= 0):
            raise HeaderError(f"tensor '{key}' has data_offsets {offsets!r}, not two unsigned integers")
        numel = numels.get(tuple(shape)) if type(shape) is list else None
        if numel is None:
            if not (type(shape) is list and all(type(d) is int and d >= 0 for d in shape)):
                raise HeaderError(f"tensor '{key}' has shape {shape!r}, not a list of unsigned integers")
            numel = numels[tuple(shape)] = math.prod(shape)
        begin, stop = offsets
        if begin != end or stop < begin:
            raise HeaderError(f"tensor '{key}' has data_offsets {offsets}: the data before it ends at {end}")
        size = _ITEMSIZE.get(entry["dtype"])
        if size is not None and stop - begin != numel * size:
            raise HeaderError(f"tensor '{key}' has {stop - begin} bytes, its shape {shape} and dtype "
                              f"{entry['dtype']} need {numel * size}")
        end = stop
    if end != data_size:
        raise HeaderError(f"the header describes {end} bytes of data, the file holds {data_size}")


class SafetensorsReader(Reader):
    """One descriptor, opened here, for the header and every read; nothing but the
    header is read until ``read``.

    The header is checked here (``check_layout``). A whole tensor is a ``pread`` of its
    bytes into a buffer of its own; a region is sliced by ``safe_open``, which maps the
    file held open (not whatever its path names by then) at the first region read, so
    planning does not import torch.
    """

    format = "safetensors"

    def __init__(self, path: Path, *, field: str, shown: str | None = None):
        super().__init__(path, field=field, shown=shown)
        self._file = OpenFile(self.path)
        self._handle = None
        self._closed = False
        self._read_or_close(self._read_inventory)

    def _read_inventory(self) -> None:
        try:
            self._raw_header, header = read_header(self._file)
            entries = self._file_order(header)
            check_layout(header, entries, self._file.stat().st_size - len(self._raw_header))
        except HeaderError as e:
            raise self._error(f"not a valid safetensors file ({e})") from None
        self._metadata = dict(header.get("__metadata__") or {})
        self._offsets = {k: v["data_offsets"] for k, v in entries}  # [begin, end]
        shapes: dict[tuple, tuple] = {}  # one tuple per distinct shape (see _info_of)
        self._set_inventory([self._info_of(k, v, shapes) for k, v in entries])

    @staticmethod
    def _file_order(header: dict) -> list[tuple[str, dict]]:
        """The tensors' entries, by where the bytes are; ties (zero-size tensors) in header order.

        Not ``safe_open(...).offset_keys()``: it breaks such ties in hash-map order,
        which changes from run to run (seen with safetensors 0.8), and plans must not.
        Offsets compare as lists, as tuples would: check_layout has checked they are two ints.
        """
        entries = [(k, v) for k, v in header.items() if k != "__metadata__"]
        try:
            return sorted(entries, key=lambda item: item[1]["data_offsets"])
        except TypeError:  # offsets of different types: check_layout names the entry
            return entries

    def _info_of(self, key: str, entry: dict, shapes: dict[tuple, tuple]) -> TensorInfo:
        """The entry's TensorInfo. Its shape is shared with the tensors before it of that
        shape: 100k tensors of a few shapes then hold a few tuples, not 100k, which spares
        memory and the garbage collector's walk over what planning keeps."""
        try:
            dtype = _dtype_of_code(entry["dtype"])
        except KeyError:
            raise self._error(f"tensor '{key}' has dtype {entry['dtype']}, "
                              "which torchgraft does not support") from None
        shape = tuple(entry["shape"])
        return TensorInfo(key, shapes.setdefault(shape, shape), dtype)  # check_layout has checked: unsigned ints

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    def _files(self) -> list[OpenFile]:
        return [self._file]

    def _header_sha256(self) -> str:
        # As many bytes as the header had: the same bytes iff the same header (its
        # length comes first).
        return hashlib.sha256(self._file.pread(len(self._raw_header), 0)).hexdigest()

    def byte_range(self, key: str) -> ByteRange:
        info = self._info(key)
        begin, end = self._offsets[key]
        if end - begin != info.nbytes:  # check_layout has already checked; belt and braces
            raise self._error(f"tensor '{key}' has {end - begin} bytes, its shape and dtype need {info.nbytes}")
        return ByteRange(self.path, self._file.fd, len(self._raw_header) + begin, end - begin)

    def read(self, key: str, index: tuple | None = None) -> torch.Tensor:
        info = self._info(key)
        index = as_index(index)
        if self._closed:
            raise RuntimeError(f"{self.shown} is closed")
        if index is None:
            return read_range(self.byte_range(key), info.dtype, info.shape)
        try:
            if self._handle is None:
                self._handle = safe_open(self._file.reopened(), framework="pt")
            tensor = self._handle.get_slice(key)[index]
        except SafetensorError as e:
            raise self._error(f"cannot read '{key}' ({e})") from None
        return tensor.contiguous()

    def close(self) -> None:
        self._closed = True
        if self._handle is not None:
            self._handle.__exit__(None, None, None)
            self._handle = None
        super().close()
