"""Where an output's non-tensor parts come from: the plan's ``Layout``.

``output.shard_size`` and ``output.copy_files`` are resolved at planning: the copied
files become an explicit list in the plan, each with its size and sha256, so a
reviewer sees exactly what will be copied and execution refuses a file that changed.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from pathlib import Path

from torchgraft.checkpoints import Reader
from torchgraft.checkpoints.formats import directory_needed, is_weights_file
from torchgraft.core.errors import PlanError, RecipeError
from torchgraft.core.hashing import sha256_files
from torchgraft.core.paths import UnsafePath, overlap, side_file
from torchgraft.plans.types import CopiedFile, Layout
from torchgraft.recipe.parse import Recipe


def resolve_layout(recipe: Recipe, readers: Mapping[str, Reader]) -> Layout:
    """The plan's Layout: shard size and the copied files, each hashed now."""
    out = recipe.output
    if out.path is not None:
        reason = directory_needed(Path(out.path), sharded=out.shard_size is not None,
                                  copies=out.copy_files is not None)
        if reason:
            raise RecipeError("output.path", reason)
        refuse_overwriting_sources(Path(out.path), readers)
    files: tuple[CopiedFile, ...] = ()
    if out.copy_files is not None:
        files = tuple(_files_to_copy(out.copy_files.source, out.copy_files.files, readers))
    return Layout(out.shard_size, files)


def refuse_overwriting_sources(output: Path, readers: Mapping[str, Reader]) -> None:
    """Sources are never modified: an output that is a source (also through a hard link
    or a symlink), holds one of its files or lies inside it is refused, whatever
    ``output.overwrite`` says."""
    for name, reader in readers.items():
        how = overlap(output, Path(reader.path))
        if how:
            raise RecipeError("output.path", f"{output} {how} '{name}' ({reader.path}); sources are never overwritten")


def _files_to_copy(source: str, patterns: tuple[str, ...], readers: Mapping[str, Reader]) -> list[CopiedFile]:
    field = "output.copy_files"
    reader = readers[source]
    if reader.format != "hf":
        where = f"{field}.from" if patterns else field
        raise PlanError(where, f"source '{source}' is a {reader.format} file; files are copied from a model "
                               "directory (format hf)")
    directory = reader.path
    # Only regular files inside the folder: a link to /etc/shadow or a FIFO is never copied.
    names, unsafe = [], {}
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        try:
            side_file(directory, entry.name)
            names.append(entry.name)
        except UnsafePath as err:
            unsafe[entry.name] = err.reason
    if not patterns:
        chosen = [n for n in names if not (n.startswith(".") or n.upper().startswith("README")
                                           or is_weights_file(n))]
        if not chosen:
            raise PlanError(field, f"{reader.shown} has no files to copy besides checkpoint files")
    else:
        chosen = []
        for i, pattern in enumerate(patterns):
            matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not matched:
                refused = [n for n in unsafe if fnmatch.fnmatchcase(n, pattern)]
                if refused:
                    raise PlanError(f"{field}.files[{i}]", f"{unsafe[refused[0]]}; only regular files inside the "
                                                           "folder are copied")
                raise PlanError(f"{field}.files[{i}]", f"'{pattern}' matches no file in {reader.shown}")
            weights = [n for n in matched if is_weights_file(n)]
            if weights:
                raise PlanError(f"{field}.files[{i}]", f"'{pattern}' matches {weights[0]}, a checkpoint file "
                                                       "(torchgraft writes the output's tensors itself)")
            chosen += [n for n in matched if n not in chosen]
        chosen.sort()
    return [CopiedFile(source, n, *sha256_files([side_file(directory, n)])) for n in chosen]
