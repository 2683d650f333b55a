"""The one mapping from an exception to what ``graft`` prints and its exit code.

0 ok · 1 the user's to fix (one line; the traceback only with HYDRA_FULL_ERROR=1 or
debug=true) · 2 a bug in torchgraft (the traceback, then a line saying so). To treat a
new kind of exception, extend ``exit_code`` and ``message``; nothing else maps errors.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import traceback
import warnings
from typing import TextIO

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from torchgraft.core.errors import GraftError
from torchgraft.core.text import printable

OK, USER_ERROR, BUG = 0, 1, 2
# A bad override, an unknown recipe or a config that does not compose is the user's to fix too.
USER_ERRORS = (GraftError, HydraException, OmegaConfBaseException)
BUG_LINE = "internal error: this is a bug in torchgraft; please report it with the traceback above"


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the run is so its cleanup runs as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def interrupt(signum: int, frame) -> None:
    raise Interrupted(signum)


def _environment(err: BaseException) -> bool:
    """An OSError with an errno is the environment, not a bug: disk full, file too large, I/O error."""
    return isinstance(err, OSError) and err.errno is not None


def exit_code(err: BaseException) -> int:
    """1 for a user error or a failing environment; 128 + the signal for an interrupt; else 2."""
    if isinstance(err, KeyboardInterrupt):
        return 128 + getattr(err, "signum", signal.SIGINT)
    return USER_ERROR if isinstance(err, USER_ERRORS) or _environment(err) else BUG


def environment_error(err: OSError) -> str:
    """``PATH: No space left on device (ENOSPC)``: the path and the errno's meaning."""
    name = errno.errorcode.get(err.errno, str(err.errno))
    where = f"{err.filename}: " if err.filename else ""
    return printable(f"{where}{err.strerror or os.strerror(err.errno)} ({name})")


def message(err: BaseException) -> str:
    """What the user reads last: ``error: FIELD: reason``, or the internal-error line.
    Escaped (``core.text.printable``): a key or path from a file prints as text."""
    if isinstance(err, KeyboardInterrupt):
        name = signal.Signals(getattr(err, "signum", signal.SIGINT)).name
        return f"error: interrupted ({name}); no output was written"
    if exit_code(err) == BUG:
        return BUG_LINE
    if _environment(err):
        return f"error: {environment_error(err)}"
    return f"error: {printable(str(err).strip())}"


def one_line(err: BaseException) -> str:
    """A job's failure in one line, for the sweep summary."""
    text = str(err) if exit_code(err) == USER_ERROR else f"internal error: {type(err).__name__}: {err}"
    return (text.strip().splitlines() or [""])[0]


def report(err: BaseException, *, show_traceback: bool, stream: TextIO | None = None) -> int:
    """Print ``err`` as the CLI reports it; returns the exit code."""
    stream = stream or sys.stderr
    code = exit_code(err)
    if code == BUG or show_traceback:  # (an interrupt, or a failing environment: one line)
        traceback.print_exception(err, file=stream)
    print(message(err), file=stream)
    return code


def one_line_warnings() -> None:
    """A library warning (torch's UserWarning) is one ``warning:`` line, not three."""
    def show(message, category, filename, lineno, file=None, line=None):
        text = str(message).strip().splitlines()[0] if str(message).strip() else category.__name__
        print(f"warning: {printable(text)}", file=file or sys.stderr)

    warnings.showwarning = show
