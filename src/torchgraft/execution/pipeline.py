"""Read, compute and write overlapped: three stages, one thread each, bounded in bytes.

While the main thread writes item ``i``, a compute thread works on ``i + 1`` and a read
thread reads ``i + 2`` (or further ahead, while the budget allows). ``pread``, file writes,
numpy's and torch's kernels all release the GIL, so on two cores the stages run at once.
Measured on the shared 2-core machine (load average 8-10, so wall times are inflated;
three runs each, sequential / overlapped): a cast of 256 MiB to bfloat16 took 1.60-3.20 s
/ 1.09-2.48 s at the same CPU time; a linear merge of 3 x 256 MiB 9.9 s / 3.0 s wall and
9.5 / 3.3 CPU s (docs/performance.md). A plan that only copies bytes has nothing to
overlap and runs sequentially: threads would only add a hand-off per tensor.

Memory: an item is admitted to the read stage only while the items in flight (read, not
yet written) cost at most ``in_flight`` bytes, as the caller prices them; one item alone
is always admitted, so the caller keeps each item within the bound (large tensors are cut
into row chunks: ``executor``). Writes happen in order, in the calling thread.

Errors: an exception in a stage travels down to the main thread in its item's place and
is raised there, the same object as a sequential run raises, after the items before it
are written; the stages stop at their next item. ``KeyboardInterrupt`` (main thread)
stops them too; each finishes at most the item it holds.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

IN_FLIGHT = 32 << 20  # bytes in flight by default: three to four units of work, each a quarter of it at most


@dataclass(frozen=True)
class Settings:
    """How a run moves its tensors; never changes what it writes."""

    in_flight: int = IN_FLIGHT  # bytes read and not yet written (one item may exceed it alone)
    sequential: bool = False  # read, compute and write one after another, in one thread

    @property
    def chunk(self) -> int:
        """The bytes of one row chunk of a large tensor: a quarter of the bound, so
        reads ahead, the chunk computed and the one written fit together."""
        return max(4096, self.in_flight // 4)


@dataclass
class Stage:
    """What to do with each item: ``read(item) -> r``, ``compute(item, r) -> c``,
    ``write(item, c)``; ``cost(item)``: its bytes in flight."""

    read: Callable[[Any], Any]
    compute: Callable[[Any, Any], Any]
    write: Callable[[Any, Any], None]
    cost: Callable[[Any], int]


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()
_POLL = 0.1  # seconds a waiting stage sleeps between looks at the stop flag


class _Budget:
    """Bytes in flight, waited on by the read stage."""

    def __init__(self, limit: int, stop: threading.Event):
        self.limit, self.used, self.stop = limit, 0, stop
        self.changed = threading.Condition()

    def take(self, n: int) -> bool:
        with self.changed:
            while self.used and self.used + n > self.limit and not self.stop.is_set():
                self.changed.wait(_POLL)
            self.used += n
            return not self.stop.is_set()

    def give(self, n: int) -> None:
        with self.changed:
            self.used -= n
            self.changed.notify_all()


def run(items: Iterable[Any], stage: Stage, settings: Settings) -> None:
    """Every item read, computed and written, in order (see the module docstring)."""
    if settings.sequential:
        for item in items:
            stage.write(item, stage.compute(item, stage.read(item)))
        return
    stop = threading.Event()
    budget = _Budget(settings.in_flight, stop)
    read_q: queue.Queue = queue.Queue()
    done_q: queue.Queue = queue.Queue()

    def reader() -> None:
        try:
            for item in items:
                if not budget.take(stage.cost(item)):
                    return
                read_q.put((item, stage.read(item)))
            read_q.put(_END)
        except BaseException as e:
            read_q.put(_Failed(e))

    def computer() -> None:
        while True:
            got = _get(read_q, stop)
            if got is None:
                return
            if got is _END or isinstance(got, _Failed):
                done_q.put(got)
                return
            item, data = got
            try:
                done_q.put((item, stage.compute(item, data)))
            except BaseException as e:
                done_q.put(_Failed(e))
                return

    threads = [threading.Thread(target=reader, name="torchgraft-read", daemon=True),
               threading.Thread(target=computer, name="torchgraft-compute", daemon=True)]
    for thread in threads:
        thread.start()
    try:
        while True:
            got = done_q.get()
            if got is _END:
                return
            if isinstance(got, _Failed):
                raise got.error
            item, data = got
            stage.write(item, data)
            del data, got
            budget.give(stage.cost(item))
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while not stop.is_set():
        try:
            return q.get(timeout=_POLL)
        except queue.Empty:
            continue
    return None
