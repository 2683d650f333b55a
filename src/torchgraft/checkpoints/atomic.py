"""Publish an output all at once or not at all.

Writers write to a hidden temporary file (or directory, for a sharded model
directory) next to the output; only a complete, fsynced one is renamed into place, so
an interrupted run (error, Ctrl-C) leaves no partial checkpoint behind and a crash
leaves at worst a hidden ``.tmp-`` file or directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from torchgraft.core.errors import OutputError

FIELD = "output.path"
_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-[0-9a-f]+$")
# Filesystems without hard links (FAT, some network mounts) say so with one of these.
_NO_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK,
             errno.EXDEV}


@contextlib.contextmanager
def atomic_output(path: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; publish it there if the block succeeds.

    ``overwrite=False`` never replaces a file, even one that appears while we write
    (the publish is a hard link, which fails if the name exists). On any exception,
    KeyboardInterrupt included, the temporary file is removed and nothing is published.
    """
    path = Path(path)
    if not overwrite and os.path.lexists(path):
        raise _exists(path)  # fail before any work, not after writing gigabytes
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temp(path)
    except OSError as e:
        raise OutputError(FIELD, f"{path}: cannot write ({e.strerror or e})") from None
    try:
        yield tmp
        _fsync(tmp)
        _publish(tmp, path, overwrite=overwrite)
    finally:
        tmp.unlink(missing_ok=True)  # after a link publish the temp is a spare name
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_directory(path: Path, *, overwrite: bool, replaceable: re.Pattern) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; publish it as ``path`` if the
    block succeeds (every file fsynced, then one rename).

    ``overwrite=True`` replaces an existing directory only if each of its entries is a
    file whose name ``replaceable`` matches (what an earlier run wrote), never a file
    or a directory holding anything else: ``output.path=.`` must not empty a project.
    """
    path = Path(path)
    if os.path.lexists(path):
        if not overwrite:
            raise _exists(path)
        _check_replaceable(path, replaceable)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temp(path, directory=True)
    except OSError as e:
        raise OutputError(FIELD, f"{path}: cannot write ({e.strerror or e})") from None
    try:
        yield tmp
        for entry in tmp.iterdir():
            _fsync(entry)
        _fsync(tmp)
        _publish_directory(tmp, path, overwrite=overwrite, replaceable=replaceable)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(path.parent)


def _check_replaceable(path: Path, replaceable: re.Pattern) -> None:
    if not path.is_dir() or path.is_symlink():
        raise OutputError(FIELD, f"{path}: exists and is not a directory (a model directory never replaces it)")
    others = sorted(p.name for p in path.iterdir() if not (p.is_file() and replaceable.fullmatch(p.name)))
    if others:
        raise OutputError(FIELD, f"{path}: not replaced, it holds files torchgraft did not write "
                                 f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''})")


def _publish_directory(tmp: Path, path: Path, *, overwrite: bool, replaceable: re.Pattern) -> None:
    old = None
    try:
        if os.path.lexists(path):
            if not overwrite:
                raise _exists(path)
            _check_replaceable(path, replaceable)  # again: it may have changed while we wrote
            old = _create_temp(path, directory=True, kind="old")
            os.rename(path, old)  # onto the empty placeholder: replaced atomically
        try:
            os.rename(tmp, path)  # fails on a non-empty directory that appeared meanwhile
        except OSError:
            if old is not None:
                os.rename(old, path)
                old = None
            raise
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise _exists(path) from None
        raise OutputError(FIELD, f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def final_name(path: Path) -> str:
    """The name a temporary path from ``atomic_output`` will be published under."""
    name = Path(path).name
    match = _TEMP.match(name)
    return match.group("name") if match else name


def _create_temp(path: Path, *, directory: bool = False, kind: str = "tmp") -> Path:
    while True:
        tmp = path.with_name(f".{path.name}.{kind}-{secrets.token_hex(4)}")
        try:
            if directory:
                os.mkdir(tmp, 0o777)  # the umask decides, as for a plain mkdir
                return tmp
            # O_EXCL: never reuse someone's file; mode 0o666 lets the umask decide, as
            # for any file the user creates (mkstemp would force 0o600).
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _publish(tmp: Path, path: Path, *, overwrite: bool) -> None:
    try:
        if overwrite:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise _exists(path) from None
        except OSError as e:
            if e.errno not in _NO_LINKS:
                raise
            # No hard links here: check-then-rename has a tiny race window, the best
            # such a filesystem allows.
            if os.path.lexists(path):
                raise _exists(path) from None
            os.rename(tmp, path)
    except IsADirectoryError:
        raise OutputError(FIELD, f"{path}: is a directory") from None
    except OSError as e:
        raise OutputError(FIELD, f"{path}: cannot write ({e.strerror or e})") from None


def _exists(path: Path) -> OutputError:
    return OutputError(FIELD, f"{path}: already exists (set output.overwrite=true to replace it)")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable. Not possible on every platform: best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
