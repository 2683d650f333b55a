"""``graft`` under ``torchrun``: the process group of one run across ranks.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and the rendezvous (``MASTER_ADDR``,
``MASTER_PORT``); with ``WORLD_SIZE`` above 1, ``join`` starts the gloo process group
from them (``torch.distributed``'s own rendezvous) and ``leave`` ends it. What each
rank writes, and how they fail together, is ``execution.ranks``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from datetime import timedelta

from torchgraft.core.errors import GraftError
from torchgraft.execution.ranks import ALONE, World

# A rank waits this long for the others at each step (the slowest rank's share).
TIMEOUT = timedelta(hours=2)


def _int(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise GraftError(name, f"'{text}' is not an integer (torchrun sets it)") from None


def join() -> World:
    """This process's ``World``: alone unless ``WORLD_SIZE`` > 1, then its gloo group."""
    size = _int("WORLD_SIZE", 1)
    if size <= 1:
        return ALONE
    rank = _int("RANK", -1)
    if not 0 <= rank < size:
        raise GraftError("RANK", f"'{os.environ.get('RANK', '')}' is not a rank of WORLD_SIZE={size} (run under torchrun)")
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=size, timeout=TIMEOUT)
    return World(rank, size)


def leave(world: World, error: BaseException | None, code: int) -> None:
    """After the run, its message printed: every rank learns of a failure and waits for
    the others (``World.close``). torchrun stops the other ranks (SIGTERM) as soon as one
    exits non-zero; past this point that only ends a rank as it was ending: with ``code``."""
    if world.alone:
        return
    import torch.distributed as dist

    if code != 0:
        signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(code))
    world.close(error)
    dist.destroy_process_group()
    if code != 0:
        # Exit now, not through the interpreter's shutdown: that puts SIGTERM back to its
        # default first, so torchrun's stop (sent once the first rank exits) would end this
        # rank by the signal (-15) instead of with its code. Everything is cleaned up and said.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
