"""Paths from untrusted places: files inside a directory, and outputs that must not be sources.

A model folder is attacker-written (docs/security.md): a side file may be a symlink to
``/etc/shadow`` or a FIFO. ``side_file`` resolves a name in a folder to a regular file
that lies inside it; the only link followed out of the folder is the Hugging Face
cache's own (``snapshots/REV/NAME -> ../../blobs/SHA``, inside the same repository
folder). ``open_regular`` opens it without following a link swapped in afterwards.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UnsafePath(Exception):
    """Why a path is refused: ``reason`` is one line for the user."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _roots(directory: Path) -> list[Path]:
    real = directory.resolve()
    roots = [real]
    if real.parent.name == "snapshots":  # an HF hub cache: links point into ../../blobs
        roots.append(real.parent.parent / "blobs")
    return roots


def stays_inside(directory: Path, path: Path) -> bool:
    """``path`` (resolved, links followed) lies in ``directory`` (or its HF cache blobs)."""
    real = Path(path).resolve()
    return any(_inside(real, root) for root in _roots(Path(directory)))


def side_file(directory: Path, name: str) -> Path:
    """The real path of the regular file ``name`` in ``directory``; UnsafePath if ``name``
    is not a plain name, leads out of the directory, or is not a regular file."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UnsafePath(f"'{name}' is not a plain file name")
    path = Path(directory) / name
    real = path.resolve()
    if not stays_inside(directory, real):
        raise UnsafePath(f"{path} is a link out of {directory}")
    try:
        mode = os.stat(real).st_mode
    except OSError as err:
        raise UnsafePath(f"{path}: {err.strerror}") from None
    if not stat.S_ISREG(mode):
        raise UnsafePath(f"{path} is not a regular file")
    return real


def open_regular(path: Path) -> int:
    """A read-only descriptor of the regular file at ``path`` (resolved already): a link
    or special file put there since is refused, and a FIFO does not block the open."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePath(f"{path} is not a regular file")
    os.set_blocking(fd, True)
    return fd


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _inodes(path: Path) -> set[tuple[int, int]]:
    """(device, inode) of ``path`` and, for a directory, of every file in it."""
    found = {_inode(path)} - {None}
    if os.path.isdir(path):
        for entry in os.scandir(path):
            found |= {_inode(Path(entry.path))} - {None}
    return found


def overlap(output: Path, source: Path) -> str | None:
    """How writing ``output`` would touch ``source``: it is the source (same inode: a hard
    link or symlink too), lies inside it, contains it, or holds one of its files (a hard
    link). None when they are apart."""
    out, src = Path(os.path.abspath(output)), Path(os.path.abspath(source))
    real_out = out.parent.resolve() / out.name
    real_src = src.resolve()
    same = _inode(real_out)
    if real_out == real_src or (same is not None and same == _inode(real_src)):
        return "is the source"
    if _inside(real_out, real_src):
        return "lies inside the source"
    if _inside(real_src, real_out):
        return "contains the source"
    if _inodes(real_out) & _inodes(real_src):
        return "holds a file of the source"
    return None
