"""Reader for a Hugging Face model directory: one checkpoint spread over shards.

The ``weight_map`` of ``*.index.json`` says which shard holds each tensor; the shards
are read with the single-file readers, each opened once. The index is held open too,
so the fingerprint is of the files that are read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

from torchgraft.checkpoints.base import Reader
from torchgraft.checkpoints.byteranges import ByteRange, OpenFile
from torchgraft.checkpoints.safetensors_file import SafetensorsReader
from torchgraft.checkpoints.torch_file import TorchReader
from torchgraft.core.paths import stays_inside

# Safetensors first, as transformers prefers it when both are present.
CANDIDATES = ("model.safetensors.index.json", "model.safetensors",
              "pytorch_model.bin.index.json", "pytorch_model.bin")


class HFReader(Reader):
    format = "hf"

    def __init__(self, path: Path, *, field: str, shown: str | None = None):
        super().__init__(path, field=field, shown=shown)
        found = next((name for name in CANDIDATES if (self.path / name).is_file()), None)
        if found is None:
            raise self._error("no model.safetensors, pytorch_model.bin or *.index.json (Hugging Face), "
                              "nor .metadata (torch.distributed.checkpoint), in this directory")
        self._index: OpenFile | None = None
        self._index_metadata: dict[str, str] = {}
        self._shards: dict[str, Reader] = {}
        self._read_or_close(lambda: self._read_directory(found))

    def _read_directory(self, found: str) -> None:
        weight_map = None
        if found.endswith(".index.json"):
            self._index = OpenFile.inside(self.path, found)
            weight_map = self._read_index(self._index)
        self._open_shards(weight_map, single=found)

    def _read_index(self, index: OpenFile) -> dict[str, str]:
        try:
            data = json.loads(index.read_all())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise self._error(f"{index.path.name} is not valid JSON ({e})") from None
        except RecursionError:
            raise self._error(f"{index.path.name} is not valid JSON (nested too deeply)") from None
        except ValueError as e:  # an integer of more than 4,300 digits
            raise self._error(f"{index.path.name} is not valid JSON ({str(e).splitlines()[0]})") from None
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not (isinstance(weight_map, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())):
            raise self._error(f"{index.path.name} has no weight_map of tensor names to shard files")
        if isinstance(data.get("metadata"), dict):
            self._index_metadata = {str(k): str(v) for k, v in data["metadata"].items()
                                    if not isinstance(v, (dict, list)) and not (isinstance(v, int) and abs(v) >= 2**64)}
        return weight_map

    def _open_shards(self, weight_map: dict[str, str] | None, *, single: str) -> None:
        owner: dict[str, Reader] = {}
        infos = []
        names = sorted(set(weight_map.values())) if weight_map is not None else [single]
        for name in names:
            shard = self._open_shard(name)
            self._shards[name] = shard
            keys = set()
            for info in shard.inventory():
                # The index is the source of truth: tensors it does not map are not read.
                if weight_map is None or weight_map.get(info.key) == name:
                    infos.append(info)
                    owner[info.key] = shard
                    keys.add(info.key)
            lost = sorted(k for k, v in (weight_map or {}).items() if v == name and k not in keys)
            if lost:
                raise self._error(f"{self._index.path.name} maps '{lost[0]}' to {name}, "
                                  "which has no such tensor")
        self._owner = owner
        self._set_inventory(infos)

    def _open_shard(self, name: str) -> Reader:
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise self._error(f"{self._index.path.name} names {name}, outside this directory")
        path = self.path / rel
        if not stays_inside(self.path, path):  # a link to /etc/passwd: not a byte of it in a message
            raise self._error(f"{self._index.path.name if self._index else name} names {name}, a link out of this directory")
        if not path.is_file():
            raise self._error(f"{self._index.path.name} names {name}, which does not exist")
        shown = f"{self.shown.rstrip('/')}/{name}"
        if name.endswith(".safetensors"):
            return SafetensorsReader(path, field=self.field, shown=shown)
        return TorchReader(path, field=self.field, shown=shown)

    def _files(self) -> list[OpenFile]:
        shards = [file for shard in self._shards.values() for file in shard._files()]
        return ([self._index] if self._index else []) + shards

    def metadata(self) -> dict[str, str]:
        if self._index is None:
            return next(iter(self._shards.values())).metadata()
        return dict(self._index_metadata)

    def _header_sha256(self) -> str:
        digest = hashlib.sha256()
        if self._index is not None:
            digest.update(self._index.read_all())
        for shard in self._shards.values():
            digest.update(shard.fingerprint()["header_sha256"].encode())
        return digest.hexdigest()

    def read(self, key: str, index: tuple | None = None) -> torch.Tensor:
        self._info(key)
        return self._owner[key].read(key, index)

    def byte_range(self, key: str) -> ByteRange | None:
        self._info(key)
        return self._owner[key].byte_range(key)

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()
        if self._index is not None:
            self._index.close()
