"""``open_checkpoint``: decide a source's format, then hand it to that format's reader."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from torchgraft.checkpoints.base import Reader
from torchgraft.checkpoints.dcp import METADATA, DCPReader
from torchgraft.checkpoints.formats import SOURCE_SUFFIXES
from torchgraft.checkpoints.hf_dir import HFReader
from torchgraft.checkpoints.peft import PeftReader, is_adapter_dir
from torchgraft.checkpoints.safetensors_file import HeaderError, SafetensorsReader, read_header
from torchgraft.checkpoints.torch_file import ZIP_MAGIC, TorchReader
from torchgraft.core.errors import SourceError

FORMATS = ("auto", "safetensors", "torch", "hf", "dcp", "peft")
# torch.save's pre-1.6 format starts with this pickled magic number.
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."


def open_checkpoint(path: str | os.PathLike, *, format: str = "auto",
                    key: str | None = None, field: str) -> Reader:
    """Open a source checkpoint. Every problem is a ``SourceError`` naming ``field``.

    ``format`` is auto | safetensors | torch | hf; ``key`` is the dotted path of the
    state dict inside a torch checkpoint (``state_dict``, ``ema.model``).
    """
    shown = os.fspath(path)
    if format not in FORMATS:
        raise SourceError(field, f"unknown format '{format}' "
                                 "(expected auto, safetensors, torch, hf, dcp or peft)")
    p = Path(path)
    if not p.exists():
        raise SourceError(field, f"{shown}: no such file or directory")
    kind = special_kind(p)
    if kind:  # opening a FIFO blocks until someone writes to it: refused before any open
        raise SourceError(field, f"{shown}: is a {kind}, not a checkpoint file or directory")
    try:
        fmt = detect_format(p, shown=shown, field=field) if format == "auto" else format
        if p.is_dir() and fmt not in ("hf", "dcp", "peft"):
            raise SourceError(field, f"{shown}: is a directory (set format: hf, dcp, peft or auto)")
        if not p.is_dir() and fmt in ("hf", "dcp", "peft"):
            raise SourceError(field, f"{shown}: format {fmt} expects a directory")
        if key is not None and fmt not in ("torch", "dcp"):
            raise SourceError(field, f"{shown}: 'key' applies only to torch and DCP checkpoints, "
                                     f"and this is a {fmt} checkpoint")
        if fmt == "safetensors":
            return SafetensorsReader(p, field=field, shown=shown)
        if fmt == "torch":
            return TorchReader(p, field=field, shown=shown, key=key)
        if fmt == "dcp":
            return DCPReader(p, field=field, shown=shown, key=key)
        if fmt == "peft":
            return PeftReader(p, field=field, shown=shown)
        return HFReader(p, field=field, shown=shown)
    except OSError as e:  # permissions, a file vanishing mid-open...
        raise SourceError(field, f"{shown}: cannot read ({e.strerror or e})") from None


def special_kind(path: Path) -> str | None:
    """``'FIFO'``, ``'socket'``, ``'device'`` for what is neither a regular file nor a directory."""
    mode = path.stat().st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device"


def detect_format(path: Path, *, shown: str, field: str) -> str:
    """Directory -> dcp (with a ``.metadata`` file), peft (with adapter_config.json and
    adapter_model.safetensors) or hf; known extension; else sniff the first bytes."""
    if path.is_dir():
        if (path / METADATA).is_file():
            return "dcp"
        return "peft" if is_adapter_dir(path) else "hf"
    by_suffix = SOURCE_SUFFIXES.get(path.suffix.lower())
    if by_suffix:
        return by_suffix
    with open(path, "rb") as f:
        head = f.read(len(LEGACY_TORCH_MAGIC))
    if head.startswith(ZIP_MAGIC) or head == LEGACY_TORCH_MAGIC:
        return "torch"
    try:
        read_header(path)
        return "safetensors"
    except HeaderError:
        pass
    raise SourceError(field, f"{shown}: cannot tell the checkpoint format "
                             "(set format: safetensors | torch | hf)")
