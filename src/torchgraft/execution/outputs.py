"""What an output is beyond its tensors: one checkpoint file, or a model directory.

``output.path`` decides: ``.safetensors`` or ``.pt``/``.pth`` is one file; a path
without an extension is a Hugging Face model directory (``model.safetensors``, or
shards and an index with ``output.shard_size``), into which the plan's copied files
(``output.copy_files``, resolved and hashed at planning) are copied and the target's
config files (``output.config``) written.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

from torchgraft.checkpoints.sharded import INDEX, SHARD, WEIGHTS
from torchgraft.core.errors import DriftError, OutputError
from torchgraft.core.hashing import sha256_files
from torchgraft.core.hf_config import config_files, is_transformers_model
from torchgraft.core.paths import UnsafePath, open_regular, side_file
from torchgraft.core.target import build_model
from torchgraft.plans.types import Layout, Plan


def output_bytes(path: Path) -> int:
    """Size of a written output: the file, or every file of the directory."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return path.stat().st_size


def replaceable(layout: Layout) -> re.Pattern:
    """Names an earlier run may have left in a directory output, which overwrite may replace."""
    names = [re.escape(WEIGHTS), re.escape(INDEX), SHARD.pattern] + [re.escape(name) for name in layout.names]
    return re.compile("|".join(names))


def side_files(plan: Plan, directory: Path) -> None:
    """Everything of a directory output besides its tensors: the copied files, then the
    config files written from the target."""
    copy_files(plan, directory)
    write_config(plan, directory)


def write_config(plan: Plan, directory: Path) -> None:
    """``output.config``: the target's config files, made again by its config objects and
    written only if they are the bytes the plan names (a changed transformers version or
    target would write another config than the one reviewed)."""
    if not plan.layout.config:
        return
    model = build_model(plan.target.spec, device="meta")
    if not is_transformers_model(model):
        raise DriftError("output.config", f"target {plan.target.spec['_target_']} is no longer a transformers PreTrainedModel")
    output_dtype = (plan.recipe.get("output") or {}).get("dtype")
    made = config_files(model, output_dtype)
    for item in plan.layout.config:
        data = made.get(item.name)
        if data is None or (len(data), hashlib.sha256(data).hexdigest()) != (item.size, item.sha256):
            raise DriftError("output.config", f"the target's {item.name} differs from the one the plan was made with "
                                              "(transformers or the target changed); re-plan")
        out = os.open(directory / item.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(out, "wb") as f:
            f.write(data)


def copy_files(plan: Plan, directory: Path) -> None:
    """Copy the plan's files into ``directory``, refusing any that changed since planning.

    Each source file is a regular file inside its folder (no link out of it, no FIFO),
    hashed before its copy is opened for writing; the copy is a new file of a plain
    name in ``directory``, never a link followed. A folder that is not a source is
    treated the same way."""
    field = "output.copy_files"
    for item in plan.layout.files:
        folder = Path(item.folder) if item.folder is not None else Path(plan.source(item.source).path)
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
