"""The one interface every checkpoint format implements.

A reader answers three questions cheaply (what tensors, what identity, what metadata)
from headers only, and reads one tensor -- or one region of it -- on demand. Planning
uses the cheap half; execution streams through ``read`` and ``byte_range``. A new
format (DCP, GGUF...) is one module with one ``Reader`` subclass.

A reader opens each of its files once, when it reads the header, and every read,
byte copy and fingerprint goes through those descriptors: what is checked against a
plan is the file that is then read, even if another file is renamed over its path.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch

from torchgraft.checkpoints.byteranges import ByteRange, OpenFile
from torchgraft.core.errors import SourceError
from torchgraft.core.hashing import sha256_files
from torchgraft.core.paths import UnsafePath
from torchgraft.core.tensors import TensorInfo


class Reader(abc.ABC):
    """A checkpoint opened for reading. ``shown`` is the path as the user wrote it."""

    format: ClassVar[str]

    def __init__(self, path: Path, *, field: str, shown: str | None = None):
        self.path = Path(path)
        self.field = field
        self.shown = shown if shown is not None else str(path)
        self._infos: list[TensorInfo] = []
        self._by_key: dict[str, TensorInfo] = {}

    # -- header-only half -------------------------------------------------------------

    def inventory(self) -> list[TensorInfo]:
        """Every tensor, in file order, from headers only."""
        return list(self._infos)

    def by_key(self) -> dict[str, TensorInfo]:
        """Every tensor by key, in file order (a copy, made faster than from ``inventory()``)."""
        return dict(self._by_key)

    def metadata(self) -> dict[str, str]:
        """The file's str->str metadata (safetensors ``__metadata__``), else ``{}``."""
        return {}

    def fingerprint(self) -> dict:
        """Size, mtime and a hash of the header of the files held open, as they are now:
        cheap identity, reads no tensor data (a multi-file checkpoint sums its sizes and
        takes its latest mtime).

        A file whose values changed but whose header did not is caught by size/mtime,
        or for certain by ``content_sha256``.
        """
        stats = [file.stat() for file in self._files()]
        return {"size": sum(st.st_size for st in stats), "mtime_ns": max(st.st_mtime_ns for st in stats),
                "header_sha256": self._header_sha256()}

    def content_sha256(self) -> str:
        """sha256 of every byte of the files held open. Expensive: opt-in only."""
        return sha256_files([file.fd for file in self._files()])[1]

    def replaced(self) -> list[str]:
        """The files (as shown) whose path no longer names the file held open: another
        was renamed over it, or it was removed, since it was opened."""
        return [self._shown(file) for file in self._files() if file.replaced()]

    @abc.abstractmethod
    def _files(self) -> list[OpenFile]:
        """The files held open, in a fixed order (an index before its shards)."""

    @abc.abstractmethod
    def _header_sha256(self) -> str:
        """A hash of the header(s) as they are now in the files held open."""

    def _shown(self, file: OpenFile) -> str:
        """``file`` as the user would name it: the checkpoint, or a file in its directory."""
        if file.path == self.path:
            return self.shown
        return f"{self.shown.rstrip('/')}/{file.path.relative_to(self.path).as_posix()}"

    # -- data half --------------------------------------------------------------------

    @abc.abstractmethod
    def read(self, key: str, index: tuple | None = None) -> torch.Tensor:
        """One tensor (or ``tensor[index]``), CPU and contiguous, owning or mmap-backed.

        ``index`` is applied before the data is materialized, so a row region reads
        only its rows. Treat the result as read-only.
        """

    def byte_range(self, key: str) -> ByteRange | None:
        """Where ``key``'s data lies in a file held open, if it is stored there whole,
        contiguous and little-endian (so its bytes are exactly what a safetensors file
        holds); else None. The range's descriptor is valid until ``close``."""
        self._info(key)
        return None

    def close(self) -> None:
        """Release file handles and mappings."""
        for file in self._files():
            file.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.shown!r}: {len(self._infos)} tensors>"

    # -- helpers for subclasses -------------------------------------------------------

    def _set_inventory(self, infos: Iterable[TensorInfo]) -> None:
        self._infos = list(infos)
        self._by_key = {info.key: info for info in self._infos}

    def _read_or_close(self, read: Callable[[], None]) -> None:
        """``read()`` the headers; on any failure, release the files opened so far and re-raise."""
        try:
            read()
        except UnsafePath as err:  # a side file that is a link out of the folder, or not a file
            self.close()
            raise self._error(err.reason) from None
        except BaseException:
            self.close()
            raise

    def _info(self, key: str) -> TensorInfo:
        try:
            return self._by_key[key]
        except KeyError:
            raise self._error(f"no tensor '{key}'") from None

    def _error(self, message: str) -> SourceError:
        return SourceError(self.field, f"{self.shown}: {message}")


def as_index(index: object) -> tuple | None:
    """Accept ``tensor[2]``-style single indices as well as tuples."""
    if index is None or isinstance(index, tuple):
        return index
    return (index,)
