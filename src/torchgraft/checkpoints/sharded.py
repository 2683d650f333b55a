"""Hugging Face model directories as output: ``model.safetensors``, or shards
``model-0000i-of-0000N.safetensors`` plus ``model.safetensors.index.json``.

The split is decided up front from the declared tensors (as ``transformers``'
``max_shard_size`` does it: consecutive tensors, a new shard when the next one would
not fit, a tensor larger than the limit alone in its shard), so each shard streams
like a single file: one shard open at a time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from torchgraft.checkpoints.byteranges import ByteRange
from torchgraft.checkpoints.safetensors_file import read_header
from torchgraft.checkpoints.writers import SafetensorsWriter, Writer
from torchgraft.core.tensors import TensorInfo

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
SHARD = re.compile(r"model-(\d{5})-of-(\d{5})\.safetensors")


def split(infos: Sequence[TensorInfo], shard_size: int | None) -> list[list[TensorInfo]]:
    """Consecutive groups whose data fits in ``shard_size`` bytes (one group if None)."""
    groups: list[list[TensorInfo]] = [[]]
    size = 0
    for info in infos:
        if shard_size is not None and groups[-1] and size + info.nbytes > shard_size:
            groups.append([])
            size = 0
        groups[-1].append(info)
        size += info.nbytes
    return groups


def shard_names(count: int) -> list[str]:
    if count == 1:
        return [WEIGHTS]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def index_json(groups: Sequence[Sequence[TensorInfo]], names: Sequence[str]) -> str:
    """The index ``transformers`` reads: total data bytes, and each tensor's shard."""
    weight_map = {info.key: name for group, name in zip(groups, names) for info in group}
    total = sum(info.nbytes for group in groups for info in group)
    data = {"metadata": {"total_size": total}, "weight_map": weight_map}
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_index(path: Path, groups: Sequence[Sequence[TensorInfo]]) -> None:
    """``path/model.safetensors.index.json`` for the shards ``groups``, if there are several."""
    if len(groups) > 1:
        (path / INDEX).write_text(index_json(groups, shard_names(len(groups))), encoding="utf-8")


class ShardedWriter(Writer):
    """Writes a model directory (``path``, which must exist and be empty).

    ``shards``: only these shards (indices into the split of all ``infos``), whose
    tensors alone are then written, in order; the index is left to ``write_index``
    (one rank of several writes it, once every rank has written its shards)."""

    def __init__(self, path: Path, infos: Sequence[TensorInfo], metadata: Mapping[str, str],
                 shard_size: int | None, shards: frozenset[int] | None = None):
        groups = split(list(infos), shard_size)
        self.only = None if shards is None else sorted(shards)
        super().__init__(path, infos if self.only is None else [i for n in self.only for i in groups[n]], metadata)
        self.groups = groups
        self.names = shard_names(len(self.groups))
        self._order = list(range(len(groups))) if self.only is None else self.only
        self._shard = -1
        self._current: SafetensorsWriter | None = None
        self._left = 0  # tensors the current shard still expects

    def _next(self) -> SafetensorsWriter:
        while self._current is None or self._left == 0:
            if self._current is not None:
                self._current.close()
            self._shard += 1
            n = self._order[self._shard]
            self._current = SafetensorsWriter(self.path / self.names[n], self.groups[n], self.metadata)
            self._left = len(self.groups[n])
        self._left -= 1
        return self._current

    def _write(self, info: TensorInfo, tensor: torch.Tensor) -> None:
        self._next().write(info.key, tensor)

    def _copy(self, info: TensorInfo, source: ByteRange) -> None:
        self._next().copy(info.key, source)

    def _write_bytes(self, info: TensorInfo, data: memoryview) -> None:
        self._next().write_bytes(info.key, data)

    PARTS = True

    def _write_part(self, info: TensorInfo, data: memoryview, first: bool) -> None:
        (self._next() if first else self._current).write_part(info.key, data)

    def _finish(self) -> None:
        if self._current is None and not self.groups[0] and (self.only is None or 0 in self.only):
            self._current = SafetensorsWriter(self.path / self.names[0], [], self.metadata)  # no tensors: one empty file
        if self._current is not None:
            self._current.close()
        if self.only is None:
            write_index(self.path, self.groups)

    def _discard(self) -> None:
        if self._current is not None:
            self._current.abort()


def check_directory(path: Path, expected: Sequence[TensorInfo], shard_size: int | None,
                    metadata: Mapping[str, str]) -> None:
    """The written directory's layout: every tensor in exactly one shard, the one the
    index names; shards within ``shard_size`` (unless one tensor alone is larger) and
    each carrying ``metadata``; ``total_size`` right. A failure is a bug: RuntimeError."""
    groups = split(expected, shard_size)
    names = shard_names(len(groups))
    files = sorted(p.name for p in path.iterdir() if p.name.endswith(".safetensors"))
    if files != sorted(names):
        raise RuntimeError(f"{path}: shard files {files}, expected {names}")
    if len(names) > 1:
        index = json.loads((path / INDEX).read_text(encoding="utf-8"))
        if index != json.loads(index_json(groups, names)):
            raise RuntimeError(f"{path / INDEX}: does not list each tensor in its shard")
    for name, group in zip(names, groups):
        _, header = read_header(path / name)
        keys = [k for k in header if k != "__metadata__"]
        if sorted(keys) != sorted(info.key for info in group):
            raise RuntimeError(f"{path / name}: holds other tensors than the index says")
        if header.get("__metadata__", {}) != dict(metadata):
            raise RuntimeError(f"{path / name}: metadata {header.get('__metadata__')} differs from {dict(metadata)}")
        size = sum(info.nbytes for info in group)
        if shard_size is not None and size > shard_size and len(group) > 1:
            raise RuntimeError(f"{path / name}: {size} bytes of tensors, over the shard size {shard_size}")
