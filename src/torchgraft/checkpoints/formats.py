"""The one table of checkpoint file names: which suffix is which format, which
outputs torchgraft writes, and which files in a model directory hold weights."""

from __future__ import annotations

from pathlib import Path

# Reading: a source's format by its suffix (anything else is sniffed from its first bytes).
SOURCE_SUFFIXES = {".safetensors": "safetensors", ".pt": "torch", ".pth": "torch",
                   ".bin": "torch", ".ckpt": "torch"}
# Writing: the single-file outputs, and DCP folders (``step-1000.dcp``); a path without a
# suffix is a Hugging Face model directory.
OUTPUT_SUFFIXES = {".safetensors": "safetensors", ".pt": "torch", ".pth": "torch", ".dcp": "dcp"}
# Weights are what torchgraft writes itself; never copied alongside them.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf",
                   ".onnx", ".npz", ".pkl")


def output_format(path: Path) -> str | None:
    """``safetensors`` | ``torch`` | ``dcp`` | ``directory`` (no extension) | None (unsupported)."""
    path = Path(path)
    if not path.suffix:
        return "directory"
    return OUTPUT_SUFFIXES.get(path.suffix)


def is_weights_file(name: str) -> bool:
    """A checkpoint file or a shard index: tensors, which torchgraft writes itself."""
    return name.lower().endswith(WEIGHT_SUFFIXES) or name.endswith(".index.json")


def looks_like_checkpoint(name: str) -> bool:
    """A name that a user means as a checkpoint path rather than a class path."""
    return Path(name).suffix.lower() in SOURCE_SUFFIXES


def directory_needed(path: Path, *, sharded: bool, copies: bool) -> str | None:
    """Why ``path`` must be a directory and is not (sharding or copied files ask for one)."""
    if output_format(path) == "directory" or not (sharded or copies):
        return None
    what = "output.shard_size" if sharded else "output.copy_files"
    return (f"{path}: {what} needs a model directory as output; give a path without an extension "
            f"(e.g. {Path(path).with_suffix('')})")
