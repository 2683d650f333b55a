"""Reader for ``torch.save`` pickles (.pt .pth .bin .ckpt), with ``weights_only=True`` only.

The file is opened once, here; every read below goes through that descriptor. The
inventory of a zip checkpoint comes from ``torch_pickle``, without torch: its tensors
are byte ranges of the file, so copying them imports nothing, and reading a whole one
is a ``pread`` of its bytes. What that module does not describe (a legacy file, a
compressed member, a tensor subclass...) falls back to a ``map_location="meta"`` load,
as does reading a non-contiguous view or a region: the data is one ``mmap=True`` load,
done on the first such ``read`` and kept, so reading a tensor touches only its pages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import re
import struct
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from torchgraft.checkpoints import torch_pickle
from torchgraft.checkpoints.base import Reader, as_index
from torchgraft.checkpoints.byteranges import ByteRange, OpenFile, read_range
from torchgraft.checkpoints.torch_pickle import ZIP_MAGIC, StoredTensor
from torchgraft.core.errors import SourceError
from torchgraft.core.tensors import TensorInfo, dtype_name

log = logging.getLogger(__name__)
# Where users' trainers put the state dict, most likely first (Lightning, DDP, timm...).
HINT_ENTRIES = ("state_dict", "model", "module")
MAX_LISTED = 10


class TorchReader(Reader):
    """``key`` is the dotted path of the state dict inside the pickle (``ema.model``)."""

    format = "torch"

    def __init__(self, path: Path, *, field: str, shown: str | None = None,
                 key: str | None = None):
        super().__init__(path, field=field, shown=shown)
        self.key = key
        self._file = OpenFile(self.path)
        self._data: Mapping[str, Any] | None = None
        self._ranges: dict[str, ByteRange | None] | None = None
        self._read_or_close(self._read_inventory)

    def _read_inventory(self) -> None:
        tensors, infos, self._ranges = self._walk()
        if self._ranges is None:
            # Meta tensors hold no data; they say where each tensor's bytes are (byte_range).
            self._meta = {info.key: tensors[info.key] for info in infos}
        self._set_inventory(infos)
        self._metadata = _torchgraft_metadata(tensors)
        self._listed = (_changes(self._file.stat()), _listing_sha256(infos))

    def _walk(self) -> tuple[Mapping, list[TensorInfo], dict[str, ByteRange | None] | None]:
        """The state dict, its tensors and their byte ranges, read from the file held
        open by ``torch_pickle``; what it does not describe, by a meta load (whose
        tensors are the state dict's, and no ranges yet)."""
        try:
            described = torch_pickle.load(self._file)
        except torch_pickle.Refused as e:
            raise self._error(_refusal(e.culprit)) from None
        except torch_pickle.Undescribed as e:
            log.debug("%s: read with torch (%s)", self.shown, e)
            tensors = self._state_dict(self._load(map_location="meta"), _is_torch_tensor)
            return tensors, self._torch_infos(tensors), None
        tensors = self._state_dict(described.top, _is_stored)
        infos = [TensorInfo(name, value.shape, value.dtype) for name, value in tensors.items()
                 if isinstance(name, str) and isinstance(value, StoredTensor)]
        file_bytes = self._file.stat().st_size
        for info in infos:
            self._check_fits(info, file_bytes)
        ranges: dict[str, ByteRange | None] = {}
        for info in infos:
            span = described.byte_span(tensors[info.key])
            ranges[info.key] = None if span is None else ByteRange(self._file.path, self._file.fd, *span)
        return tensors, infos, ranges

    def _torch_infos(self, tensors: Mapping) -> list[TensorInfo]:
        import torch

        infos = []
        file_bytes = self._file.stat().st_size
        for name, value in tensors.items():
            if not (isinstance(name, str) and isinstance(value, torch.Tensor)):
                continue  # _extra_state, counters, configs: not tensors to move
            if value.layout != torch.strided:
                raise self._error(f"tensor '{name}' has layout {value.layout}, "
                                  "which torchgraft does not support")
            try:
                dtype = dtype_name(value.dtype)
            except ValueError:
                raise self._error(f"tensor '{name}' has dtype {value.dtype}, "
                                  "which torchgraft does not support") from None
            info = TensorInfo(name, tuple(value.shape), dtype)
            self._check_fits(info, file_bytes)
            infos.append(info)
        return infos

    def _check_fits(self, info: TensorInfo, file_bytes: int) -> None:
        """A stride-0 or overlapping view declares more values than its file holds: refused,
        never expanded in memory."""
        if info.nbytes > file_bytes:
            raise self._error(f"tensor '{info.key}' declares {info.nbytes} bytes of values, more than the "
                              f"{file_bytes} bytes of the file (a stride-0 or overlapping view)")

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    def _files(self) -> list[OpenFile]:
        return [self._file]

    def _header_sha256(self) -> str:
        # A pickle has no header to hash; the inventory is what planning depends on. It
        # is walked again only if the file was written to since it was opened.
        changes, digest = self._listed
        if _changes(self._file.stat()) == changes:
            return digest
        try:
            return _listing_sha256(self._walk()[1])
        except SourceError:
            return ""  # no longer a readable checkpoint: differs from any hash

    def read(self, key: str, index: tuple | None = None) -> torch.Tensor:
        import torch

        info = self._info(key)
        index = as_index(index)
        if index is None:
            where = self.byte_range(key)
            if where is not None:
                return read_range(where, info.dtype, info.shape)
        if self._data is None:
            self._data = self._state_dict(self._load_data(), _is_torch_tensor)
        tensor = self._data.get(key)
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != self._info(key).shape:
            raise self._error(f"no tensor '{key}' (did the file change since it was opened?)")
        if index is not None:
            tensor = tensor[index]
        return tensor.detach().contiguous()

    def byte_range(self, key: str) -> ByteRange | None:
        self._info(key)
        if self._ranges is None:
            self._ranges = _byte_ranges(self._file, self._meta)
        return self._ranges.get(key)

    def close(self) -> None:
        self._data = None  # drops the mapping once the caller's tensors are gone
        super().close()

    # -- loading ----------------------------------------------------------------------

    def _load_data(self) -> Any:
        # mmap needs the zip format torch.save writes since 1.6; legacy files load whole. It
        # maps each member's bytes as they are in the file: a compressed member would read
        # as garbage (seen with torch 2.13), so such a file loads whole too.
        return self._load(map_location="cpu", mmap=_all_stored(self._file))

    def _load(self, **kwargs: Any) -> Any:
        """``torch.load`` of the file held open (through a path that opens that very
        file: ``mmap=True`` takes only a path)."""
        import torch

        try:
            return torch.load(self._file.reopened(), weights_only=True, **kwargs)
        except pickle.UnpicklingError as e:
            if "Weights only load failed" not in str(e):
                raise self._error(f"not a readable torch checkpoint ({_first_line(e)})") from None
            found = re.search(r"GLOBAL (\S+)", str(e))
            raise self._error(_refusal(found.group(1) if found else None)) from None
        except OSError as e:
            raise self._error(f"cannot read ({e.strerror or e})") from None
        except MemoryError:
            raise
        except Exception as e:
            # On a corrupt file the unpickler fails with whatever it trips on (KeyError,
            # struct.error, a bad zip's RuntimeError...): all mean "not a checkpoint".
            raise self._error(f"not a readable torch checkpoint ({_first_line(e)})") from None

    # -- finding the state dict -------------------------------------------------------

    def _state_dict(self, top: Any, is_tensor: Callable[[Any], bool]) -> Mapping:
        obj = self._follow(top, self.key) if self.key else top
        if _is_state_dict(obj, is_tensor):
            return obj
        if isinstance(obj, Mapping):
            under = _find_state_dict(obj, is_tensor)
            if under is not None:
                where = f"{self.key}.{under}" if self.key else under
                how = f"--key {where}" if self.field == "graft-inspect" else f"set key: {where}"  # the CLI's flag
                raise self._error(f"the tensors are under '{where}': {how}")
            found = f"{type(obj).__name__} with no tensors"
        else:
            found = type(obj).__name__
        raise self._error(f"expected a mapping of tensor names to tensors, found {found}")

    def _follow(self, top: Any, key: str) -> Any:
        if isinstance(top, Mapping) and key in top:  # a literal key with dots in it
            return top[key]
        obj, walked = top, []
        for part in key.split("."):
            if not isinstance(obj, Mapping):
                what = f"'{'.'.join(walked)}' is" if walked else "the file holds"
                raise self._error(f"no entry '{key}' ({what} {_a(type(obj).__name__)}, "
                                  "not a mapping)")
            if part not in obj:
                entries = _listing(obj)
                where = "top-level entries" if not walked else f"entries under '{'.'.join(walked)}'"
                raise self._error(f"no entry '{key}' ({where}: {entries})")
            obj = obj[part]
            walked.append(part)
        return obj


def _all_stored(file: OpenFile) -> bool:
    """A zip file whose members are all stored uncompressed."""
    try:
        if file.pread(4, 0) != ZIP_MAGIC:
            return False
        with open(file.fd, "rb", closefd=False) as f, zipfile.ZipFile(f) as archive:
            return all(item.compress_type == zipfile.ZIP_STORED for item in archive.infolist())
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError):
        return False  # torch.load names the problem


def _changes(st) -> tuple[int, int, int]:
    """What moves when a file is written to: its size, mtime and ctime (which, unlike
    the mtime, cannot be set back)."""
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _listing_sha256(infos: list[TensorInfo]) -> str:
    listing = [[i.key, list(i.shape), i.dtype] for i in infos]
    text = json.dumps(listing, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _byte_ranges(file: OpenFile, tensors: Mapping[str, torch.Tensor]) -> dict[str, ByteRange | None]:
    """Byte ranges of the contiguous tensors of a zip checkpoint (torch.save since 1.6).

    A ``map_location="meta"`` load records each storage's file offset in
    ``_checkpoint_offset`` (torch >= 2.4, not public API): each is checked against the
    zip's own records -- stored uncompressed, little-endian, large enough -- so a file
    torch lays out differently some day gets no ranges, never wrong ones.
    """
    try:
        with open(file.fd, "rb", closefd=False) as f, zipfile.ZipFile(f) as archive:
            records = {}
            for item in archive.infolist():
                name = item.filename
                if name.endswith("/byteorder") and archive.read(item).strip() != b"little":
                    return {}
                if "/data/" not in name or item.compress_type != zipfile.ZIP_STORED:
                    continue
                f.seek(item.header_offset + 26)
                name_len, extra_len = struct.unpack("<HH", f.read(4))
                records[item.header_offset + 30 + name_len + extra_len] = item.file_size
    except (OSError, zipfile.BadZipFile, struct.error):
        return {}  # legacy (non-zip) files: read them the ordinary way
    ranges: dict[str, ByteRange | None] = {}
    for key, tensor in tensors.items():
        storage = tensor.untyped_storage()
        start = getattr(storage, "_checkpoint_offset", None)
        own = tensor.numel() * tensor.element_size()
        skip = tensor.storage_offset() * tensor.element_size()
        if (start is None or start not in records or not own or not tensor.is_contiguous()
                or skip + own > min(records[start], storage.nbytes())):
            ranges[key] = None
        else:
            ranges[key] = ByteRange(file.path, file.fd, start + skip, own)
    return ranges


def _is_stored(value: Any) -> bool:
    return isinstance(value, StoredTensor)


def _is_torch_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _is_state_dict(obj: Any, is_tensor: Callable[[Any], bool]) -> bool:
    """A flat mapping: some tensors (or nothing at all), and no nested tensor mapping."""
    if not isinstance(obj, Mapping):
        return False
    values = list(obj.values())
    if any(isinstance(v, Mapping) and _has_tensors(v, is_tensor) for v in values):
        return False
    return not values or any(is_tensor(v) for v in values)


def _has_tensors(obj: Any, is_tensor: Callable[[Any], bool], depth: int = 4) -> bool:
    if is_tensor(obj):
        return True
    if isinstance(obj, Mapping) and depth > 0:
        return any(_has_tensors(v, is_tensor, depth - 1) for v in obj.values())
    return False


def _find_state_dict(obj: Mapping, is_tensor: Callable[[Any], bool], depth: int = 3) -> str | None:
    """The dotted path of the most likely state dict nested in ``obj``, if any."""
    found = []

    def walk(node: Mapping, prefix: str, left: int) -> None:
        for name in sorted(k for k in node if isinstance(k, str)):
            value = node[name]
            if isinstance(value, Mapping) and value:
                if _is_state_dict(value, is_tensor):
                    found.append(prefix + name)
                elif left > 0:
                    walk(value, f"{prefix}{name}.", left - 1)

    walk(obj, "", depth)
    if not found:
        return None

    def rank(path: str) -> tuple:
        top = path.split(".")[0]
        hinted = HINT_ENTRIES.index(top) if top in HINT_ENTRIES else len(HINT_ENTRIES)
        return (path.count("."), hinted, path)

    return min(found, key=rank)


def _listing(obj: Mapping) -> str:
    names = sorted(str(k) for k in obj)
    shown = ", ".join(names[:MAX_LISTED])
    return shown + (", ..." if len(names) > MAX_LISTED else "")


def _torchgraft_metadata(state_dict: Mapping) -> dict[str, str]:
    """What ``TorchWriter`` stored in ``state_dict._metadata["__metadata__"]``, if anything."""
    meta = getattr(state_dict, "_metadata", None)
    entry = meta.get("__metadata__") if isinstance(meta, Mapping) else None
    if not isinstance(entry, Mapping):
        return {}
    return {str(k): str(v) for k, v in entry.items()}


def _refusal(culprit: str | None) -> str:
    """What torch.load(weights_only=True) names (builtins without their module), else a phrase."""
    if culprit is None:
        culprit = "an unsupported object"
    elif culprit.startswith("builtins."):
        culprit = culprit.removeprefix("builtins.")
    return (f"refused to unpickle {culprit}: torch.load(weights_only=True) allows only tensors and "
            f"plain containers, and torchgraft never runs code from a checkpoint{_refusal_hint(culprit)}")


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    if not text or isinstance(e, (KeyError, IndexError)):
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text.splitlines()[0].split(". ")[0]  # torch appends paragraphs of advice


def _refusal_hint(culprit: str) -> str:
    """What to do instead, when the refused global says what the file holds."""
    if culprit.startswith("numpy."):
        return ("; it holds numpy arrays: in code you trust, load it, convert them with torch.from_numpy "
                "and save the state dict again (or save_file it as .safetensors)")
    if culprit.rpartition(".")[2][:1].isupper():  # a class: most often a whole pickled model
        return (f"; if it is a whole pickled model ({culprit}), load it once in code you trust and "
                "save model.state_dict() instead")
    return ""
