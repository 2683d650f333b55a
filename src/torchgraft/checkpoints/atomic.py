"""Publish an output all at once or not at all.

Writers write to a hidden temporary file (or directory, for a sharded model
directory) next to the output; only a complete, fsynced one is renamed into place, so
an interrupted run (error, Ctrl-C, SIGTERM) leaves no partial checkpoint behind and a
crash (SIGKILL) leaves at worst a hidden ``.NAME.tmp-PID-HEX`` file or directory,
which the next run at the same path removes.
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
# ``.NAME.tmp-PID-HEX`` (and ``.old-`` for the output a directory overwrite moves
# aside): the owner's pid lets the next run at the same path remove what a killed run
# left, and only that (stale_temporaries).
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?:(?P<pid>[0-9]+)-)?[0-9a-f]+$")
RENAME_EXCHANGE = 2  # linux/fs.h
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
    remove_stale_temporaries(path)
    if not overwrite and os.path.lexists(path):
        raise _exists(path)  # fail before any work, not after writing gigabytes
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _create_temp(path)
    except OSError as e:
        raise OutputError(FIELD, f"{path}: cannot write ({e.strerror or e})") from None
    try:
        with _output_errors(path):
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
    remove_stale_temporaries(path)
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
        with _output_errors(path):
            yield tmp
            for entry in tmp.iterdir():
                _fsync(entry)
            _fsync(tmp)
        _publish_directory(tmp, path, overwrite=overwrite, replaceable=replaceable)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(path.parent)


# Errors writing can only mean the output's filesystem: named as the output's.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


@contextlib.contextmanager
def _output_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS:
            raise
        raise OutputError(FIELD, f"{path}: cannot write ({e.strerror}, {errno.errorcode[e.errno]})") from None


def _check_replaceable(path: Path, replaceable: re.Pattern) -> None:
    if not path.is_dir() or path.is_symlink():
        raise OutputError(FIELD, f"{path}: exists and is not a directory (a model directory never replaces it)")
    others = sorted(p.name for p in path.iterdir() if not (p.is_file() and replaceable.fullmatch(p.name)))
    if others:
        raise OutputError(FIELD, f"{path}: not replaced, it holds files torchgraft did not write "
                                 f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''})")


def _publish_directory(tmp: Path, path: Path, *, overwrite: bool, replaceable: re.Pattern) -> None:
    """One atomic step where the filesystem can: ``renameat2(RENAME_EXCHANGE)`` swaps the
    new directory with the old one, which then is at ``tmp`` and is removed. Elsewhere,
    two renames (old aside to ``.NAME.old-PID-HEX``, new into place): killed between
    them, the old output stands aside under a name the next run recognises and puts
    back (``remove_stale_temporaries``), so the old or the new output is at the path."""
    old = None
    try:
        if os.path.lexists(path):
            if not overwrite:
                raise _exists(path)
            _check_replaceable(path, replaceable)  # again: it may have changed while we wrote
            if _exchange(tmp, path):
                return  # tmp now holds the old output: the caller removes it
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


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically; False where the system or filesystem cannot."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove what a killed run at ``path`` left beside it: only names torchgraft gives
    (``.NAME.tmp-PID-HEX``, ``.NAME.old-PID-HEX``) whose process is gone. An ``old``
    directory with nothing at ``path`` is the output a run moved aside and was killed
    before replacing: it is put back. Returns what was removed or restored."""
    path = Path(path)
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return []
    done = []
    for entry in sorted(entries, key=lambda e: e.name):
        match = _TEMP.match(entry.name)
        if not match or match.group("name") != path.name or not match.group("pid") \
                or _alive(int(match.group("pid"))):
            continue
        stale = Path(entry.path)
        try:
            if match.group("kind") == "old" and not os.path.lexists(path):
                os.rename(stale, path)
            elif entry.is_dir(follow_symlinks=False):
                shutil.rmtree(stale)
            else:
                stale.unlink()
        except OSError:
            continue
        done.append(stale)
    return done


def final_name(path: Path) -> str:
    """The name a temporary path from ``atomic_output`` will be published under."""
    name = Path(path).name
    match = _TEMP.match(name)
    return match.group("name") if match else name


def _create_temp(path: Path, *, directory: bool = False, kind: str = "tmp") -> Path:
    while True:
        tmp = path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")
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
