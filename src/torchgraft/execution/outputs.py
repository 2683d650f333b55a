"""What an output is beyond its tensors: one checkpoint file, or a model directory.

``output.path`` decides: ``.safetensors`` or ``.pt``/``.pth`` is one file; a path
without an extension is a Hugging Face model directory (``model.safetensors``, or
shards and an index with ``output.shard_size``), into which ``output.copy_files``
copies the non-tensor files (config.json, tokenizer files) of a source directory.

Planning resolves the copied files to an explicit, hashed list in the plan, so a
reviewer sees exactly what will be copied and execution refuses a file that changed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

from torchgraft.checkpoints import Reader
from torchgraft.checkpoints.sharded import INDEX, SHARD, WEIGHTS
from torchgraft.core.errors import DriftError, OutputError, PlanError, RecipeError
from torchgraft.plans.types import CopiedFile, Layout, Plan
from torchgraft.recipe.parse import Recipe

FILES = {".safetensors": "safetensors", ".pt": "torch", ".pth": "torch"}
# Weights are what torchgraft writes itself; never copied alongside.
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf",
                       ".onnx", ".npz", ".pkl")
CHUNK = 1 << 20


def output_format(path: Path) -> str | None:
    """``safetensors`` | ``torch`` | ``directory`` (no extension) | None (unsupported)."""
    path = Path(path)
    if not path.suffix:
        return "directory"
    return FILES.get(path.suffix)


def output_bytes(path: Path) -> int:
    """Size of a written output: the file, or every file of the directory."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return path.stat().st_size


def is_checkpoint_file(name: str) -> bool:
    return name.lower().endswith(CHECKPOINT_SUFFIXES) or name.endswith(".index.json")


def replaceable(layout: Layout) -> re.Pattern:
    """Names an earlier run may have left in a directory output, which overwrite may replace."""
    names = [re.escape(WEIGHTS), re.escape(INDEX), SHARD.pattern] + [re.escape(f.name) for f in layout.files]
    return re.compile("|".join(names))


def directory_needed(path: Path, *, sharded: bool, copies: bool) -> str | None:
    """Why ``path`` must be a directory and is not (sharding or copied files ask for one)."""
    if output_format(path) == "directory" or not (sharded or copies):
        return None
    what = "output.shard_size" if sharded else "output.copy_files"
    return (f"{path}: {what} needs a model directory as output; give a path without an extension "
            f"(e.g. {Path(path).with_suffix('')})")


def resolve_layout(recipe: Recipe, readers: Mapping[str, Reader]) -> Layout:
    """The plan's Layout: shard size and the copied files, each hashed now."""
    out = recipe.output
    if out.path is not None:
        reason = directory_needed(Path(out.path), sharded=out.shard_size is not None,
                                  copies=out.copy_files is not None)
        if reason:
            raise RecipeError("output.path", reason)
    files: tuple[CopiedFile, ...] = ()
    if out.copy_files is not None:
        files = tuple(_files_to_copy(out.copy_files.source, out.copy_files.files, readers))
    return Layout(out.shard_size, files)


def _files_to_copy(source: str, patterns: tuple[str, ...], readers: Mapping[str, Reader]) -> list[CopiedFile]:
    field = "output.copy_files"
    reader = readers[source]
    if reader.format != "hf":
        where = f"{field}.from" if patterns else field
        raise PlanError(where, f"source '{source}' is a {reader.format} file; files are copied from a model "
                               "directory (format hf)")
    directory = reader.path
    names = sorted(e.name for e in os.scandir(directory) if e.is_file())
    if not patterns:
        chosen = [n for n in names if not (n.startswith(".") or n.upper().startswith("README")
                                           or is_checkpoint_file(n))]
        if not chosen:
            raise PlanError(field, f"{reader.shown} has no files to copy besides checkpoint files")
    else:
        chosen = []
        for i, pattern in enumerate(patterns):
            matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not matched:
                raise PlanError(f"{field}.files[{i}]", f"'{pattern}' matches no file in {reader.shown}")
            weights = [n for n in matched if is_checkpoint_file(n)]
            if weights:
                raise PlanError(f"{field}.files[{i}]", f"'{pattern}' matches {weights[0]}, a checkpoint file "
                                                       "(torchgraft writes the output's tensors itself)")
            chosen += [n for n in matched if n not in chosen]
        chosen.sort()
    return [CopiedFile(source, n, *_size_and_sha256(directory / n)) for n in chosen]


def _size_and_sha256(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def copy_files(plan: Plan, directory: Path) -> None:
    """Copy the plan's files into ``directory``, refusing any that changed since planning."""
    for item in plan.layout.files:
        path = Path(plan.source(item.source).path) / item.name
        digest, size = hashlib.sha256(), 0
        try:
            with open(path, "rb") as src, open(directory / item.name, "wb") as dst:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    dst.write(chunk)
        except OSError as e:
            raise OutputError("output.copy_files", f"{path}: cannot copy ({e.strerror or e})") from None
        if (size, digest.hexdigest()) != (item.size, item.sha256):
            raise DriftError("output.copy_files", f"{path} changed since the plan was made (size or sha256 differ)")
