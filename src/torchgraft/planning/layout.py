"""Where an output's non-tensor parts come from: the plan's ``Layout``.

``output.shard_size`` and ``output.copy_files`` are resolved at planning: the copied
files become an explicit list in the plan, each with its size and sha256, so a
reviewer sees exactly what will be copied and execution refuses a file that changed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from torchgraft.checkpoints import Reader
from torchgraft.checkpoints.formats import directory_needed, is_weights_file, output_format
from torchgraft.core.errors import PlanError, RecipeError
from torchgraft.core.hashing import sha256_files
from torchgraft.core.hf_config import config_files, is_transformers_model
from torchgraft.core.paths import UnsafePath, overlap, side_file
from torchgraft.plans.types import ConfigFile, CopiedFile, Layout
from torchgraft.recipe.parse import Recipe

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger("torchgraft")


def resolve_layout(recipe: Recipe, readers: Mapping[str, Reader], model: nn.Module | None = None) -> Layout:
    """The plan's Layout: shard size, the copied files and the config files written from
    the target (``model``, built on the meta device), each hashed now."""
    out = recipe.output
    if out.path is not None:
        reason = directory_needed(Path(out.path), sharded=out.shard_size is not None,
                                  copies=out.copy_files is not None)
        if reason:
            raise RecipeError("output.path", reason)
        if out.config and output_format(Path(out.path)) != "directory":
            raise RecipeError("output.config", f"{out.path}: config files go into a model directory; give "
                                               f"output.path without an extension (e.g. {Path(out.path).with_suffix('')})")
        refuse_overwriting_sources(Path(out.path), readers)
    files: tuple[CopiedFile, ...] = ()
    if out.copy_files is not None:
        copy = out.copy_files
        if copy.folder is not None:
            files = tuple(_files_to_copy(copy.files, None, _folder(copy.folder)))
        else:
            files = tuple(_files_to_copy(copy.files, copy.source, readers))
    config = _config_files(recipe, model, files)
    return Layout(out.shard_size, files, config)


def _folder(path: str) -> Path:
    """``copy_files.from`` that names a directory, not a source: absolute, and a directory."""
    folder = Path(os.path.abspath(os.path.expanduser(path)))
    if not folder.is_dir():
        raise PlanError("output.copy_files.from", f"{path}: no such directory (from names a source, or a directory path)")
    return folder


def _config_files(recipe: Recipe, model: nn.Module | None, files: tuple[CopiedFile, ...]) -> tuple[ConfigFile, ...]:
    """``output.config``: the target's config files, as its save_pretrained makes them. A
    transformers target whose model directory gets no config.json is warned about:
    from_pretrained would build a default-sized model instead."""
    out = recipe.output
    hf = model is not None and is_transformers_model(model)
    if not out.config:
        folder = out.path is not None and output_format(Path(out.path)) == "directory"
        if hf and folder and "config.json" not in {f.name for f in files}:
            log.warning("output: a transformers target's output has no config.json, so from_pretrained cannot load it; "
                        "set output.config=true (and a directory output.path) to write the target's")
        return ()
    if not hf:
        what = "target is null" if recipe.target is None else f"target {recipe.target['_target_']} is not a transformers PreTrainedModel"
        raise RecipeError("output.config", f"writes a transformers model's config.json, but the {what} "
                                           "(copy a config with output.copy_files instead)")
    made = config_files(model, recipe.output.dtype)
    for f in files:
        if f.name in made:
            raise PlanError("output.copy_files", f"'{f.name}' is also written from the target's config (output.config); "
                                                 "leave it out of copy_files")
    return tuple(ConfigFile(name, len(data), hashlib.sha256(data).hexdigest()) for name, data in made.items())


def refuse_overwriting_sources(output: Path, readers: Mapping[str, Reader]) -> None:
    """Sources are never modified: an output that is a source (also through a hard link
    or a symlink), holds one of its files or lies inside it is refused, whatever
    ``output.overwrite`` says."""
    for name, reader in readers.items():
        how = overlap(output, Path(reader.path))
        if how:
            raise RecipeError("output.path", f"{output} {how} '{name}' ({reader.path}); sources are never overwritten")


def _files_to_copy(patterns: tuple[str, ...], source: str | None, where: Mapping[str, Reader] | Path) -> list[CopiedFile]:
    """The files to copy from ``source``'s model directory (``where``: the readers), or,
    with ``source`` None, from the directory ``where``. Either is attacker-written: only
    regular files inside it, no link out of it."""
    field = "output.copy_files"
    if source is None:
        directory, shown, folder = str(where), str(where), str(where)
    else:
        reader = where[source]  # type: ignore[index]
        if reader.format != "hf":
            at = f"{field}.from" if patterns else field
            raise PlanError(at, f"source '{source}' is a {reader.format} file; files are copied from a model "
                                "directory (format hf)")
        directory, shown, folder = reader.path, reader.shown, None
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
            raise PlanError(field, f"{shown} has no files to copy besides checkpoint files")
    else:
        chosen = []
        for i, pattern in enumerate(patterns):
            matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not matched:
                refused = [n for n in unsafe if fnmatch.fnmatchcase(n, pattern)]
                if refused:
                    raise PlanError(f"{field}.files[{i}]", f"{unsafe[refused[0]]}; only regular files inside the "
                                                           "folder are copied")
                raise PlanError(f"{field}.files[{i}]", f"'{pattern}' matches no file in {shown}")
            weights = [n for n in matched if is_weights_file(n)]
            if weights:
                raise PlanError(f"{field}.files[{i}]", f"'{pattern}' matches {weights[0]}, a checkpoint file "
                                                       "(torchgraft writes the output's tensors itself)")
            chosen += [n for n in matched if n not in chosen]
        chosen.sort()
    return [CopiedFile(source, n, *sha256_files([side_file(directory, n)]), folder) for n in chosen]
