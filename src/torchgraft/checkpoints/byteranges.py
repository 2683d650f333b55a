"""Source files held open, and tensors as byte ranges of them, moved by the kernel
instead of through Python.

A reader opens each of its files once (``OpenFile``). A tensor stored whole, contiguous
and little-endian -- every tensor of a safetensors file, most of a torch zip
checkpoint -- is just ``length`` bytes at ``offset`` of such a file. Copied
unchanged into a safetensors output it needs no tensor at all: ``copy_range`` asks the
kernel (``copy_file_range``, then ``sendfile``) and falls back to read/write. When a
tensor must be computed on, ``read_range`` reads it with ``pread`` into a fresh buffer
rather than through a memory map, whose touched pages would stay resident (and count
in RSS) until the whole map is closed.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from torchgraft.core.paths import UnsafePath, side_file
from torchgraft.core.tensors import torch_dtype

CHUNK = 64 << 20  # per kernel call: large enough to be free, small enough to stay interruptible
_FALLBACK_ERRNOS = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL,
                    errno.EBADF, errno.EPERM, errno.EIO}
# Kernel copy paths found not to work here (another filesystem, an old kernel...).
_unsupported: set[str] = set()


class OpenFile:
    """A source file held open, read-only, from the moment its reader reads its header.

    Every read and copy of the file goes through ``fd``, so all of them see the one file
    whose header was read, whatever is renamed over ``path`` later. ``replaced`` says
    whether ``path`` still names it; a rewrite in place shows in ``stat()``.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))  # a FIFO must not block
        if not stat.S_ISREG(os.fstat(self.fd).st_mode):
            os.close(self.fd)
            raise UnsafePath(f"{self.path.name} is not a regular file")
        os.set_blocking(self.fd, True)

    @classmethod
    def inside(cls, directory: Path, name: str) -> OpenFile:
        """The regular file ``name`` of an attacker-written folder (``.metadata``, an index,
        ``adapter_config.json``): never a link out of it (UnsafePath)."""
        return cls(side_file(directory, name))

    def stat(self) -> os.stat_result:
        return os.fstat(self.fd)

    def pread(self, length: int, offset: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer only at the end of the file)."""
        parts, done = [], 0
        while done < length:
            data = os.pread(self.fd, length - done, offset + done)
            if not data:
                break
            parts.append(data)
            done += len(data)
        return b"".join(parts)

    def read_all(self) -> bytes:
        return self.pread(self.stat().st_size, 0)

    def reopened(self) -> str:
        """A path that opens this very file, for libraries that take only a path (the
        mapping of ``safe_open`` and ``torch.load(mmap=True)``)."""
        return f"/proc/self/fd/{self.fd}" if os.path.isdir("/proc/self/fd") else f"/dev/fd/{self.fd}"

    def replaced(self) -> bool:
        """Whether ``path`` now names another file (or none) than the one held open."""
        try:
            now = os.stat(self.path)
        except OSError:
            return True
        held = self.stat()
        return (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True)
class ByteRange:
    """``length`` bytes at absolute ``offset`` of the file open as ``fd``: one stored
    tensor's data. Valid while the reader that gave it is open."""

    path: Path  # for messages
    fd: int
    offset: int
    length: int


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


def read_range(rng: ByteRange, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The tensor stored at ``rng``, in a fresh CPU buffer of its own."""
    import torch

    buffer = torch.empty(rng.length, dtype=torch.uint8)
    view = memoryview(buffer.numpy())
    done = 0
    while done < rng.length:
        if hasattr(os, "preadv"):
            n = os.preadv(rng.fd, [view[done:]], rng.offset + done)
        else:
            data = os.pread(rng.fd, rng.length - done, rng.offset + done)
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
