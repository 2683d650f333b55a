"""Tensors as byte ranges of their files, moved by the kernel instead of through Python.

A tensor stored whole, contiguous and little-endian -- every tensor of a safetensors
file, most of a torch zip checkpoint -- is just ``length`` bytes at ``offset``. Copied
unchanged into a safetensors output it needs no tensor at all: ``copy_range`` asks the
kernel (``copy_file_range``, then ``sendfile``) and falls back to read/write. When a
tensor must be computed on, ``read_range`` reads it with ``pread`` into a fresh buffer
rather than through a memory map, whose touched pages would stay resident (and count
in RSS) until the whole map is closed.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from torchgraft.core.tensors import torch_dtype

CHUNK = 64 << 20  # per kernel call: large enough to be free, small enough to stay interruptible
_FALLBACK_ERRNOS = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL,
                    errno.EBADF, errno.EPERM, errno.EIO}
# Kernel copy paths found not to work here (another filesystem, an old kernel...).
_unsupported: set[str] = set()


@dataclass(frozen=True)
class ByteRange:
    """``length`` bytes at absolute ``offset`` of ``path``: one stored tensor's data."""

    path: Path
    offset: int
    length: int


class SourceFiles:
    """Each source file opened once, read-only, for copies and preads."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}

    def fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return fd

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


def copy_range(src: int, offset: int, length: int, dst: int) -> None:
    """Append ``length`` bytes at ``offset`` of ``src`` at the current position of ``dst``."""
    done = 0
    while done < length:
        n = _copy_some(src, offset + done, min(length - done, CHUNK), dst)
        if n == 0:
            raise OSError(errno.EIO, f"source ended {length - done} bytes early (truncated since it was opened?)")
        done += n


def _copy_some(src: int, offset: int, count: int, dst: int) -> int:
    if "copy_file_range" not in _unsupported and hasattr(os, "copy_file_range"):
        try:
            return os.copy_file_range(src, dst, count, offset)
        except OSError as e:
            if e.errno not in _FALLBACK_ERRNOS:
                raise
            _unsupported.add("copy_file_range")
    if "sendfile" not in _unsupported and hasattr(os, "sendfile"):
        try:
            return os.sendfile(dst, src, offset, count)
        except OSError as e:
            if e.errno not in _FALLBACK_ERRNOS:
                raise
            _unsupported.add("sendfile")
    data = os.pread(src, min(count, 8 << 20), offset)
    write_all(dst, memoryview(data))
    return len(data)


def read_range(src: int, rng: ByteRange, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The tensor stored at ``rng``, in a fresh CPU buffer of its own."""
    import torch

    buffer = torch.empty(rng.length, dtype=torch.uint8)
    view = memoryview(buffer.numpy())
    done = 0
    while done < rng.length:
        if hasattr(os, "preadv"):
            n = os.preadv(src, [view[done:]], rng.offset + done)
        else:
            data = os.pread(src, rng.length - done, rng.offset + done)
            n = len(data)
            view[done:done + n] = data
        if n == 0:
            raise OSError(errno.EIO, f"{rng.path}: ended {rng.length - done} bytes early (truncated since it was opened?)")
        done += n
    return buffer.view(torch_dtype(dtype)).reshape(shape)


def write_all(fd: int, data: memoryview) -> None:
    """``os.write`` until every byte is written (it may write fewer)."""
    while len(data):
        n = os.write(fd, data)
        data = data[n:]
