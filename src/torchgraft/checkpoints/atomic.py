"""Publish an output all at once or not at all.

Writers write to a hidden temporary file next to the output; only a complete,
fsynced file is renamed into place, so an interrupted run (error, Ctrl-C) leaves no
partial checkpoint behind and a crash leaves at worst a hidden ``.tmp-`` file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

from torchgraft.errors import OutputError

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


def final_name(path: Path) -> str:
    """The name a temporary path from ``atomic_output`` will be published under."""
    name = Path(path).name
    match = _TEMP.match(name)
    return match.group("name") if match else name


def _create_temp(path: Path) -> Path:
    while True:
        tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
        try:
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
