"""What an output is beyond its tensors: one checkpoint file, or a model directory.

``output.path`` decides: ``.safetensors`` or ``.pt``/``.pth`` is one file; a path
without an extension is a Hugging Face model directory (``model.safetensors``, or
shards and an index with ``output.shard_size``), into which the plan's copied files
(``output.copy_files``, resolved and hashed at planning) are copied.
"""

from __future__ import annotations

import re
from pathlib import Path

from torchgraft.checkpoints.sharded import INDEX, SHARD, WEIGHTS
from torchgraft.core.errors import DriftError, OutputError
from torchgraft.core.hashing import sha256_files
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
    """Copy the plan's files into ``directory``, refusing any that changed since planning."""
    for item in plan.layout.files:
        path = Path(plan.source(item.source).path) / item.name
        try:
            with open(directory / item.name, "wb") as dst:
                size, sha256 = sha256_files([path], copy_to=dst)
        except OSError as e:
            raise OutputError("output.copy_files", f"{path}: cannot copy ({e.strerror or e})") from None
        if (size, sha256) != (item.size, item.sha256):
            raise DriftError("output.copy_files", f"{path} changed since the plan was made (size or sha256 differ)")
