"""The one mapping from an exception to what ``graft`` prints and its exit code.

0 ok · 1 the user's to fix (one line; the traceback only with HYDRA_FULL_ERROR=1 or
debug=true) · 2 a bug in torchgraft (the traceback, then a line saying so). To treat a
new kind of exception, extend ``exit_code`` and ``message``; nothing else maps errors.
"""

from __future__ import annotations

import sys
import traceback
from typing import TextIO

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from torchgraft.core.errors import GraftError

OK, USER_ERROR, BUG = 0, 1, 2
# A bad override, an unknown recipe or a config that does not compose is the user's to fix too.
USER_ERRORS = (GraftError, HydraException, OmegaConfBaseException)
BUG_LINE = "internal error: this is a bug in torchgraft; please report it with the traceback above"


def exit_code(err: BaseException) -> int:
    return USER_ERROR if isinstance(err, USER_ERRORS) else BUG


def message(err: BaseException) -> str:
    """What the user reads last: ``error: FIELD: reason``, or the internal-error line."""
    if exit_code(err) == BUG:
        return BUG_LINE
    return f"error: {str(err).strip()}"


def one_line(err: BaseException) -> str:
    """A job's failure in one line, for the sweep summary."""
    text = str(err) if exit_code(err) == USER_ERROR else f"internal error: {type(err).__name__}: {err}"
    return (text.strip().splitlines() or [""])[0]


def report(err: BaseException, *, show_traceback: bool, stream: TextIO | None = None) -> int:
    """Print ``err`` as the CLI reports it; returns the exit code."""
    stream = stream or sys.stderr
    code = exit_code(err)
    if code == BUG or show_traceback:
        traceback.print_exception(err, file=stream)
    print(message(err), file=stream)
    return code
