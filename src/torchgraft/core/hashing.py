"""Streamed sha256 of files: the one loop behind content fingerprints and copied files."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20  # streamed 1 MiB at a time: flat memory on 100 GB files


def sha256_files(paths: Iterable[Path | BinaryIO], *, copy_to: BinaryIO | None = None) -> tuple[int, str]:
    """(total size, sha256) over the concatenated bytes of ``paths`` (paths, or files
    open for reading, read from where they are), streamed; with ``copy_to`` the bytes
    are also written there (copy and hash in one read)."""
    digest, size = hashlib.sha256(), 0
    for path in paths:
        with contextlib.nullcontext(path) if hasattr(path, "read") else open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                if copy_to is not None:
                    copy_to.write(chunk)
    return size, digest.hexdigest()
