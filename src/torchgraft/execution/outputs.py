"""What an output is beyond its tensors: one checkpoint file, or a model directory.

``output.path`` decides: ``.safetensors`` or ``.pt``/``.pth`` is one file; a path
without an extension is a Hugging Face model directory (``model.safetensors``, or
shards and an index with ``output.shard_size``), into which the plan's copied files
(``output.copy_files``, resolved and hashed at planning) are copied.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from torchgraft.checkpoints.sharded import INDEX, SHARD, WEIGHTS
from torchgraft.core.errors import DriftError, OutputError
from torchgraft.core.hashing import sha256_files
from torchgraft.core.paths import UnsafePath, open_regular, side_file
from torchgraft.plans.types import Layout, Plan


def output_bytes(path: Path) -> int:
    """Size of a written output: the file, or every file of the directory."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return path.stat().st_size


def replaceable(layout: Layout) -> re.Pattern:
    """Names an earlier run may have left in a directory output, which overwrite may replace."""
    names = [re.escape(WEIGHTS), re.escape(INDEX), SHARD.pattern] + [re.escape(f.name) for f in layout.files]
    return re.compile("|".join(names))


def copy_files(plan: Plan, directory: Path) -> None:
    """Copy the plan's files into ``directory``, refusing any that changed since planning.

    Each source file is a regular file inside its folder (no link out of it, no FIFO),
    hashed before its copy is opened for writing; the copy is a new file of a plain
    name in ``directory``, never a link followed."""
    field = "output.copy_files"
    for item in plan.layout.files:
        folder = Path(plan.source(item.source).path)
        path = folder / item.name
        try:
            fd = open_regular(side_file(folder, item.name))
        except UnsafePath as e:
            raise OutputError(field, e.reason) from None
        except OSError as e:
            raise OutputError(field, f"{path}: cannot copy ({e.strerror or e})") from None
        with os.fdopen(fd, "rb") as src:
            if sha256_files([src.fileno()]) != (item.size, item.sha256):
                raise DriftError(field, f"{path} changed since the plan was made (size or sha256 differ)")
            src.seek(0)
            try:
                out = os.open(directory / item.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _mode(fd))
                with os.fdopen(out, "wb") as dst:
                    copied = sha256_files([src.fileno()], copy_to=dst)
            except OSError as e:
                raise OutputError(field, f"{path}: cannot copy ({e.strerror or e})") from None
        if copied != (item.size, item.sha256):
            raise DriftError(field, f"{path} changed while it was copied (size or sha256 differ)")


def _mode(fd: int) -> int:
    """The copy keeps a restrictive source's mode (0600 stays 0600)."""
    return stat.S_IMODE(os.fstat(fd).st_mode) & 0o666 or 0o600
