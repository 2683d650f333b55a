"""Write a DCP folder through ``torch.distributed.checkpoint``'s own writer, one tensor
in memory at a time.

``dcp.save`` wants a state dict of tensors. It is given meta tensors (shapes and
dtypes, no memory), and a save planner whose ``resolve_data`` makes each real tensor
only when the writer asks for it. ``FileSystemWriter`` keeps every tensor of one data
file alive until that file is written, so each tensor gets a file of its own
(``single_file_per_rank=False``): memory is one tensor, whatever the checkpoint size
(measured: 300 MiB peak, torch included, writing 960 MiB in 16 MiB tensors).

torchgraft's own metadata (the plan's sha256) goes in ``torchgraft.json`` beside
``.metadata``: DCP's metadata has no place for it.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from torchgraft.checkpoints.dcp import SIDE_FILE
from torchgraft.core.errors import GraftError, RankFailed
from torchgraft.core.tensors import TensorInfo, torch_dtype

# What a DCP folder torchgraft wrote holds: an overwrite may replace exactly these.
DCP_FILES = re.compile(r"\.metadata|__\d+_\d+\.distcp|" + re.escape(SIDE_FILE))


def write_dcp(directory: Path, infos: Sequence[TensorInfo], value: Callable[[str], torch.Tensor],
              metadata: Mapping[str, str], *, distributed: bool = False) -> None:
    """Write ``infos``' tensors (``value(key)`` makes each, when asked) as a DCP folder.

    ``distributed``: over the default process group, each rank giving its own tensors;
    DCP's coordinator (rank 0) writes ``.metadata``, and this function ``torchgraft.json``
    there. A rank's failure inside DCP reaches every rank (a ``CheckpointException``):
    the first user error among its failures is raised as it is."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
    from torch.distributed.checkpoint.planner import WriteItemType

    shapes = {info.key: (tuple(info.shape), torch_dtype(info.dtype)) for info in infos}

    class _OnDemand(DefaultSavePlanner):
        def resolve_data(self, write_item):
            if write_item.type == WriteItemType.TENSOR:
                key = write_item.index.fqn
                tensor = value(key)
                if (tuple(tensor.shape), tensor.dtype) != shapes[key]:
                    raise RuntimeError(f"{key}: made {tuple(tensor.shape)} {tensor.dtype}, declared {shapes[key]}")
                return tensor.contiguous()
            return super().resolve_data(write_item)

    state = {key: torch.empty(shape, dtype=dtype, device="meta") for key, (shape, dtype) in shapes.items()}
    writer = FileSystemWriter(str(directory), single_file_per_rank=False, thread_count=1, sync_files=True)
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "assuming ... a single process": it is one
            dcp.save(state, storage_writer=writer, planner=_OnDemand(), no_dist=not distributed)
    except CheckpointException as err:  # a BaseException: made an Exception, a user error first
        raise _failure(err, torch.distributed.get_rank() if distributed else 0) from None
    if not distributed or torch.distributed.get_rank() == 0:
        (directory / SIDE_FILE).write_text(json.dumps(dict(metadata), sort_keys=True, indent=1) + "\n")


def _failure(err: BaseException, rank: int) -> Exception:
    """What a ``CheckpointException`` (every rank's failures inside DCP) means here: the
    first user error, as it is on its own rank, a ``RankFailed`` on the others."""
    failures = sorted((r, f) for r, (f, _tb) in err.failures.items() if isinstance(f, Exception))
    for failed, failure in failures:
        if isinstance(failure, GraftError):
            return failure if failed == rank else RankFailed(failure.field, failure.message, failed, _size())
    return failures[0][1] if failures else RuntimeError(str(err))


def _size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1
