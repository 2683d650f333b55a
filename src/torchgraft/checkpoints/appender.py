"""Appending a large file fast, with its write-back overlapped.

A checkpoint is published only once it is on disk (``fsync``), and writing gigabytes
back is as slow as copying them into the page cache. Done at the end, the two add up;
here a second thread makes what is written durable while the writer goes on, so on two
cores they overlap and the final ``fsync`` has almost nothing left to do.
"""

from __future__ import annotations

import os
import threading

from torchgraft.checkpoints.byteranges import copy_range, write_all

_datasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


class Appender:
    """Appends to a file through its descriptor: small writes are gathered into one,
    large ones and kernel copies go straight through, and write-back runs behind."""

    BUFFER = 1 << 20

    def __init__(self, path: os.PathLike):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        # Not O_TRUNC on the (empty) temporary file: ext4 flushes a file truncated at open
        # when it is closed, which would write everything synchronously a second time.
        if os.fstat(self.fd).st_size:
            os.ftruncate(self.fd, 0)
        self.position = 0
        self._pending = bytearray()
        self._behind = WriteBehind(self.fd)

    def write(self, data: memoryview) -> None:
        if len(data) < self.BUFFER:
            self._pending += data
            if len(self._pending) >= self.BUFFER:
                self.flush()
            return
        self.flush()
        write_all(self.fd, data)
        self._advance(len(data))

    def copy(self, src: int, offset: int, length: int) -> None:
        self.flush()
        copy_range(src, offset, length, self.fd)
        self._advance(length)

    def flush(self) -> None:
        if self._pending:
            write_all(self.fd, memoryview(self._pending))
            self._advance(len(self._pending))
            self._pending = bytearray()

    def finish(self) -> int:
        """Flush and wait for the write-back thread; the number of bytes in the file."""
        self.flush()
        self._behind.finish()
        return os.lseek(self.fd, 0, os.SEEK_CUR)

    def close(self) -> None:
        if self.fd >= 0:
            self._behind.stop()
            os.close(self.fd)
            self.fd = -1

    def _advance(self, n: int) -> None:
        self.position += n
        self._behind.advance(self.position)


class WriteBehind:
    """A thread that ``fdatasync``s a growing file every ``WINDOW`` new bytes, then drops
    the now clean pages from the page cache (so a 100 GB output does not push everything
    else out of it). Started at the first full window: small files never start it.

    An error on the thread (EIO, ENOSPC) is raised in the writer by ``advance`` or
    ``finish``: the file is then not published.
    """

    WINDOW = 64 << 20

    def __init__(self, fd: int):
        self._fd = fd
        self._written = 0
        self._stopping = False
        self._error: OSError | None = None
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None

    def advance(self, position: int) -> None:
        """The file now has ``position`` bytes."""
        self._raise()
        with self._ready:
            self._written = position
            if self._thread is None and position >= self.WINDOW:
                self._thread = threading.Thread(target=self._run, name="torchgraft-write-behind", daemon=True)
                self._thread.start()
            self._ready.notify()

    def finish(self) -> None:
        """Wait for the thread; raise what it met."""
        self.stop()
        self._raise()

    def stop(self) -> None:
        with self._ready:
            self._stopping = True
            self._ready.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        synced = 0
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._stopping or self._written - synced >= self.WINDOW)  # noqa: B023 -- waited on here
                if self._stopping:
                    return
                upto = self._written
            try:
                _datasync(self._fd)
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(self._fd, synced, upto - synced, os.POSIX_FADV_DONTNEED)
            except OSError as e:
                self._error = e
                return
            synced = upto
