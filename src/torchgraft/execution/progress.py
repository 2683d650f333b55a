"""Progress of a long write, in bytes: a tqdm bar on a terminal, log lines elsewhere.

On a terminal the bar (bytes, bytes/s, time left) appears only once a run has lasted
``delay`` seconds, so quick runs print nothing. When stderr is not a terminal (CI,
SLURM logs, a pipe) there is no bar, whose carriage returns garble a log file: a plain
log line every ``interval`` seconds instead, and none for shorter runs.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

from torchgraft.core.text import human_bytes

log = logging.getLogger("torchgraft.execution.progress")


class Progress:
    """``update(n)`` after each ``n`` bytes written; ``close()`` at the end."""

    def __init__(self, total: int, description: str, *, stream: TextIO | None = None,
                 delay: float = 1.0, interval: float = 15.0, clock: Callable[[], float] = time.monotonic):
        self.total, self.description = total, description
        self.done = 0
        self._clock, self._interval = clock, interval
        self._start = self._last = clock()
        stream = stream if stream is not None else sys.stderr
        self._bar = None
        if _is_terminal(stream):
            from tqdm import tqdm

            # Sizes as everywhere else (KiB, MiB, GiB): tqdm's own scaling prints MB for MiB.
            self._bar = tqdm(total=total, desc=self.line(self._start), delay=delay, leave=False, file=stream, dynamic_ncols=True,
                             mininterval=0.25, bar_format="{desc} |{bar}| {elapsed}<{remaining}")

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.set_description_str(self.line(self._clock()), refresh=False)
            self._bar.update(n)
            return
        now = self._clock()
        if now - self._last >= self._interval:
            self._last = now
            log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        elapsed = max(now - self._start, 1e-9)
        percent = 100 * self.done / self.total if self.total else 100.0
        return (f"{self.description}: {human_bytes(self.done)} of {human_bytes(self.total)} ({percent:.0f}%), "
                f"{human_bytes(self.done / elapsed)}/s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
