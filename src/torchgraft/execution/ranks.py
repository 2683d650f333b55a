"""One plan, many ranks (``torchrun``): which part of the output each rank writes, and
the exchanges that make the ranks succeed, or fail, together.

Every rank plans the same recipe (planning is deterministic); the first exchange
checks that every rank holds a plan of the same sha256 naming the same output.

The work is split by output file. The plan's layout decides which tensors go in which
shard of a directory output (``sharded.split``, the same whatever the rank count);
the shards are dealt to the ranks by bytes, largest first, each to the least-loaded
rank (ties: the lower shard, the lower rank). Each rank writes its shards into the one
temporary directory rank 0 made; rank 0 then writes the index, copies the plan's
files, verifies the whole directory and publishes it. So the shards are byte-identical
to one process's. A DCP output is split by tensor, with the same rule, and written by
DCP's own writer over the process group (its coordinator writes ``.metadata``). A
single-file output is written by rank 0 alone; the other ranks wait for it.

Failing together. The ranks exchange their outcome at fixed steps (``step``), each
one ``all_gather_object`` of ``(failure or None, value)``. A rank that fails makes its
next exchange with its failure instead, so every rank learns of it at the same step
and raises the same ``RankFailed``; rank 0's temporary directory is removed as that
unwinds, and after it no rank exchanges again. At the end (``close``) every rank that
has not failed yet exchanges once more, so a rank that failed outside any step is heard
too, then after a failure all meet at a barrier, which keeps every rank alive until
rank 0 has cleaned up.
"""

from __future__ import annotations

import contextlib
import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torchgraft.checkpoints.sharded import split
from torchgraft.core.errors import GraftError, RankFailed
from torchgraft.core.tensors import TensorInfo
from torchgraft.plans.types import Plan


def deal(sizes: Sequence[int], ranks: int) -> list[int]:
    """The rank of each item: largest first (ties: the lower index), each onto the rank
    with the fewest bytes so far (ties: the lower rank)."""
    owner = [0] * len(sizes)
    loads = [(0, rank) for rank in range(ranks)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        load, rank = heapq.heappop(loads)
        owner[i] = rank
        heapq.heappush(loads, (load + sizes[i], rank))
    return owner


@dataclass(frozen=True)
class Share:
    """What one rank writes: ``plan`` holds only its entries (in plan order); ``shards``
    the indices of its shards of a directory output (None: not a directory)."""

    plan: Plan
    shards: frozenset[int] | None = None

    @property
    def infos(self) -> list[TensorInfo]:
        return [TensorInfo(e.key, tuple(e.shape), e.dtype) for e in self.plan.entries]


@dataclass
class Failure:
    rank: int
    field: str | None
    message: str
    user: bool  # the user's to fix (a GraftError or the environment), not a bug

    @classmethod
    def of(cls, err: BaseException, rank: int) -> Failure:
        if isinstance(err, RankFailed):
            return cls(err.rank, err.field, err.reason, True)
        if isinstance(err, GraftError):
            return cls(rank, err.field, err.message, True)
        if isinstance(err, OSError) and err.errno is not None:
            return cls(rank, None, str(err), True)
        text = (str(err).strip().splitlines() or [""])[0]
        return cls(rank, None, f"internal error: {type(err).__name__}: {text}", False)


@dataclass
class Step:
    """One exchange: ``value`` is what this rank gives, ``values`` every rank's, by rank."""

    value: Any = None
    values: list = field(default_factory=list)


@dataclass
class World:
    """This process's rank among ``size`` (1: alone, no process group, no exchanges)."""

    rank: int = 0
    size: int = 1
    failed: bool = False  # a failure was agreed: no exchange but the closing barrier

    @property
    def alone(self) -> bool:
        return self.size == 1

    def exchange(self, error: BaseException | None, value: Any = None) -> list:
        """Every rank's value, by rank; or, if any rank gives a failure, ``RankFailed``
        with the first one (a user error before a bug, then the lower rank) on every rank.
        The rank whose bug it is raises its own exception (its traceback)."""
        if self.alone:
            if error is not None:
                raise error
            return [value]
        import torch.distributed as dist

        mine = (None, value) if error is None else (Failure.of(error, self.rank), None)
        everyone: list = [None] * self.size
        dist.all_gather_object(everyone, mine)
        failures = [f for f, _ in everyone if f is not None]
        if failures:
            self.failed = True
            first = min(failures, key=lambda f: (not f.user, f.rank))
            if error is not None and first.rank == self.rank and not first.user:
                raise error
            raise RankFailed(first.field, first.message, first.rank, self.size) from error
        return [v for _, v in everyone]

    @contextlib.contextmanager
    def step(self) -> Iterator[Step]:
        """Run the block, then exchange its outcome with every rank (see ``exchange``)."""
        box = Step()
        if self.alone:
            yield box
            box.values = [box.value]
            return
        try:
            yield box
        except KeyboardInterrupt:
            raise  # torchrun signals every rank
        except Exception as err:
            if not self.failed:  # else agreed already, by an inner step
                self.exchange(err)
            raise
        box.values = self.exchange(None, box.value)

    def same(self, what: str, field_name: str, values: list, hint: str = "") -> None:
        """Every rank gave the same value (values from ``step``), else every rank refuses."""
        if any(v != values[0] for v in values):
            other = next(r for r, v in enumerate(values) if v != values[0])
            self.failed = True
            raise GraftError(field_name, f"the {self.size} ranks disagree on the {what} (rank 0: {values[0]}, "
                                         f"rank {other}: {values[other]}){hint}")

    def share(self, plan: Plan, fmt: str) -> Share:
        """This rank's part of the plan's output (``fmt``: directory, dcp, or a file's)."""
        if self.alone:
            return Share(plan, None)
        infos = [TensorInfo(e.key, tuple(e.shape), e.dtype) for e in plan.entries]
        if fmt == "directory":
            groups = split(infos, plan.layout.shard_size)
            owner = deal([sum(i.nbytes for i in g) for g in groups], self.size)
            shards = frozenset(n for n, r in enumerate(owner) if r == self.rank)
            keys = {i.key for n in shards for i in groups[n]}
        elif fmt == "dcp":
            owner = deal([i.nbytes for i in infos], self.size)
            keys = {i.key for i, r in zip(infos, owner) if r == self.rank}
            shards = None
        else:  # one file: rank 0's
            keys = {i.key for i in infos} if self.rank == 0 else set()
            shards = None
        return Share(replace(plan, entries=tuple(e for e in plan.entries if e.key in keys)), shards)

    @contextlib.contextmanager
    def publishing(self, publish: contextlib.AbstractContextManager[Path]) -> Iterator[Path]:
        """``publish`` (entered on rank 0 only: it yields the temporary output and
        publishes it on a clean exit) for every rank: each gets rank 0's temporary path;
        rank 0 publishes only once every rank's block succeeded, and every rank learns
        whether that worked."""
        if self.alone:
            with publish as tmp:
                yield tmp
            return
        with contextlib.ExitStack() as stack:
            with self.step() as made:
                if self.rank == 0:
                    made.value = str(stack.enter_context(publish))
            with self.step():
                yield Path(made.values[0])
            with self.step():
                stack.close()  # rank 0: the rename into place

    def barrier(self) -> None:
        """Every rank got here, or every rank raises the failure of one that did not."""
        with self.step():
            pass

    def close(self, error: BaseException | None) -> None:
        """At the end of the run, every rank: unless a failure was agreed already, one last
        exchange of the run's outcome (so a rank that failed outside any step, before or
        after the others' steps, is heard and none waits for it); then, after any failure,
        a barrier, so that no rank exits (and torchrun stops the rest) while rank 0 still
        cleans up."""
        if self.alone or isinstance(error, KeyboardInterrupt):
            return
        try:
            if not self.failed:
                with contextlib.suppress(Exception):  # it raises the failure it agrees on
                    self.exchange(error)
            if self.failed:
                import torch.distributed as dist

                dist.barrier()
        except RuntimeError:  # a peer is gone already: nothing left to wait for
            pass


ALONE = World()

__all__ = ["ALONE", "Share", "Step", "World", "deal"]
