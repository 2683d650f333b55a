"""A torch zip checkpoint's ``data.pkl`` read without torch: plain descriptions of its tensors.

``torch.save`` (zip format, since 1.6) writes ``ARCHIVE/data.pkl`` -- a protocol-2
pickle of the state dict whose tensors are ``torch._utils._rebuild_tensor_v2(storage,
offset, size, stride, ...)`` calls over persistent ids ``("storage", StorageType, key,
location, numel)`` -- and each storage's bytes as a stored member ``ARCHIVE/data/KEY``.
This module walks that pickle with its own interpreter: the opcodes
``torch.load(weights_only=True)`` accepts (no others), and a handful of globals mapped
to descriptions, never to anything callable. Nothing is imported or called; a tensor
becomes a ``StoredTensor`` (dtype, shape, stride, where its bytes are).

Two ways out, and the reader (``torch_file``) treats them differently:

- ``Refused``: something ``torch.load(weights_only=True)`` refuses as well (a global
  outside its allowlist, an opcode it does not implement, a target it does not allow).
- ``Undescribed``: something this module does not describe but torch may accept (a
  legacy file, a compressed member, a big-endian file, a tensor subclass, a quantized
  storage...). The reader then asks ``torch.load``, which is the arbiter.
"""

from __future__ import annotations

import struct
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchgraft.checkpoints.byteranges import OpenFile
from torchgraft.core.tensors import DTYPE_NAMES, itemsize

ZIP_MAGIC = b"PK\x03\x04"

# Legacy typed storages (the persistent id of a ``_rebuild_tensor_v2``) -> dtype.
_STORAGES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
}
# What torch's weights_only unpickler maps old module names to (torch._utils.IMPORT_MAPPING).
_IMPORT_MAPPING = {"__builtin__": "builtins", "copy_reg": "copyreg", "Queue": "queue", "repr": "reprlib",
                   "_abcoll": "collections.abc", "UserDict": "collections", "UserList": "collections",
                   "UserString": "collections", "whichdb": "dbm", "StringIO": "io", "cStringIO": "io"}
# Globals outside ``torch`` that weights_only allows: described here or not, torch may accept them.
_ALLOWED_ELSEWHERE = frozenset({"collections.OrderedDict", "collections.Counter", "_codecs.encode",
                                "builtins.bytearray", "builtins.set", "builtins.complex"})


class Undescribed(Exception):
    """Not described here; ``torch.load`` may still read it. ``str(e)`` says what."""


class Refused(Exception):
    """What ``torch.load(weights_only=True)`` refuses too. ``culprit``: the global, if one."""

    def __init__(self, reason: str, culprit: str | None = None):
        super().__init__(reason)
        self.culprit = culprit


@dataclass(frozen=True)
class Storage:
    """One ``data/KEY`` member: ``nbytes`` of ``dtype`` items (untyped storages: uint8)."""

    key: str
    dtype: str | None  # None: an UntypedStorage; the tensor gives the dtype
    nbytes: int


@dataclass(frozen=True)
class StoredTensor:
    """A tensor as ``torch.load`` would rebuild it: a strided view of a storage."""

    storage: Storage
    dtype: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int  # in items of dtype

    @property
    def nbytes(self) -> int:
        n = itemsize(self.dtype)
        for d in self.shape:
            n *= d
        return n

    def is_contiguous(self) -> bool:
        """Row-major and dense (strides of size-1 dimensions do not matter, as in torch)."""
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride)):
            if size == 0:
                return True
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True


@dataclass(frozen=True)
class Checkpoint:
    """The unpickled object (containers and ``StoredTensor`` leaves) and where each storage's
    bytes start in the file (``None``: a member that is not stored as is)."""

    path: Path
    top: Any
    starts: Mapping[str, int | None]

    def byte_span(self, tensor: StoredTensor) -> tuple[int, int] | None:
        """(absolute offset, length) of ``tensor``'s bytes if they lie in the file contiguous, else None."""
        start = self.starts.get(tensor.storage.key)
        if start is None or not tensor.is_contiguous():
            return None
        return start + tensor.offset * itemsize(tensor.dtype), tensor.nbytes


def load(file: OpenFile) -> Checkpoint:
    """Describe the torch zip checkpoint held open as ``file`` (read through its descriptor
    only, never its path). Raises ``Refused`` or ``Undescribed``."""
    with open(file.fd, "rb", closefd=False) as f:
        if f.read(4) != ZIP_MAGIC:
            raise Undescribed("not a zip file (the legacy torch.save format)")
        f.seek(0)
        try:
            with zipfile.ZipFile(f) as archive:
                items = archive.infolist()
                prefix = _archive_prefix(items)
                members = {item.filename: item for item in items}
                order = members.get(f"{prefix}/byteorder")
                if order is None or archive.read(order).strip() != b"little":
                    raise Undescribed("no byteorder record, or not little-endian")
                pickled = members.get(f"{prefix}/data.pkl")
                if pickled is None:
                    raise Undescribed("no data.pkl (a TorchScript archive?)")
                if pickled.compress_type != zipfile.ZIP_STORED or order.compress_type != zipfile.ZIP_STORED:
                    raise Undescribed("data.pkl or byteorder is compressed")  # never inflate a hostile member here
                top, storages = _Unpickler(archive.read(pickled)).load()
                starts = {key: _data_start(f, members.get(f"{prefix}/data/{key}"), storage)
                          for key, storage in storages.items()}
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, struct.error, ValueError, OSError) as e:
            raise Undescribed(f"not a readable zip file ({e})") from None
    return Checkpoint(file.path, top, starts)


def _archive_prefix(items: list[zipfile.ZipInfo]) -> str:
    """The archive's one top-level folder, as torch's reader takes it."""
    tops = {item.filename.split("/", 1)[0] for item in items if "/" in item.filename}
    if len(tops) != 1 or len(items) != len({item.filename for item in items}):
        raise Undescribed("not laid out as torch.save lays out a checkpoint")
    return tops.pop()


def _data_start(f, item: zipfile.ZipInfo | None, storage: Storage) -> int:
    """Where ``item``'s bytes start in the file, checked against its local header."""
    if item is None:
        raise Undescribed(f"no data/{storage.key} member")
    if item.compress_type != zipfile.ZIP_STORED:
        raise Undescribed(f"data/{storage.key} is compressed")
    if item.file_size != storage.nbytes or item.compress_size != item.file_size:
        raise Undescribed(f"data/{storage.key} holds {item.file_size} bytes, its storage {storage.nbytes}")
    f.seek(item.header_offset)
    local = f.read(30)
    if len(local) < 30 or local[:4] != ZIP_MAGIC:
        raise Undescribed(f"data/{storage.key}: bad local header")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return item.header_offset + 30 + name_len + extra_len


# -- the interpreter ----------------------------------------------------------------------

class _Global:
    """A global this module describes: never a callable, only a name."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


_REBUILDS = frozenset({"torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3",
                       "torch._utils._rebuild_parameter"})


def _describe_global(module: str, name: str) -> _Global:
    module = _IMPORT_MAPPING.get(module, module)
    full = f"{module}.{name}"
    if full in _REBUILDS or full in ("collections.OrderedDict", "torch.Size", "torch.storage.UntypedStorage"):
        return _Global(full)
    if module == "torch" and (name in _STORAGES or name in DTYPE_NAMES):
        return _Global(full)
    if module in ("sys", "os", "posix", "nt"):
        raise Refused(f"global {full} (module {module} is blocked)", full)
    if module == "torch" or module.startswith("torch.") or full in _ALLOWED_ELSEWHERE:
        raise Undescribed(f"global {full}")  # torch allows some of these: let it decide
    raise Refused(f"global {full} is not allowed", full)


class _Unpickler:
    """The opcodes of torch's weights_only unpickler, over bytes; descriptions, not objects."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0
        self.memo: dict[int, Any] = {}
        self.storages: dict[str, Storage] = {}

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise Undescribed("data.pkl ends early")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def line(self) -> str:
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            raise Undescribed("data.pkl ends early")
        text = self.data[self.pos:end].decode("utf-8")
        self.pos = end + 1
        return text

    def load(self) -> tuple[Any, dict[str, Storage]]:
        stack: list[Any] = []
        marks: list[int] = []

        def pop_mark() -> list:
            if not marks:
                raise Undescribed("data.pkl: no MARK")
            at = marks.pop()
            items = stack[at:]
            del stack[at:]
            return items

        try:
            while True:
                op = self.take(1)
                if op == b"c":  # GLOBAL
                    stack.append(_describe_global(self.line(), self.line()))
                elif op == b"R":  # REDUCE
                    args = stack.pop()
                    stack[-1] = self.reduce(stack[-1], args)
                elif op == b"Q":  # BINPERSID
                    stack.append(self.persistent(stack.pop()))
                elif op == b"b":  # BUILD
                    state = stack.pop()
                    self.build(stack[-1], state)
                elif op == b"q":  # BINPUT
                    self.memo[self.take(1)[0]] = stack[-1]
                elif op == b"r":  # LONG_BINPUT
                    self.memo[struct.unpack("<I", self.take(4))[0]] = stack[-1]
                elif op == b"h":  # BINGET
                    stack.append(self.get(self.take(1)[0]))
                elif op == b"j":  # LONG_BINGET
                    stack.append(self.get(struct.unpack("<I", self.take(4))[0]))
                elif op == b"(":  # MARK
                    marks.append(len(stack))
                elif op == b"t":  # TUPLE
                    stack.append(tuple(pop_mark()))
                elif op == b"\x85":  # TUPLE1
                    stack[-1] = (stack[-1],)
                elif op == b"\x86":  # TUPLE2
                    stack[-2:] = [(stack[-2], stack[-1])]
                elif op == b"\x87":  # TUPLE3
                    stack[-3:] = [(stack[-3], stack[-2], stack[-1])]
                elif op == b"X":  # BINUNICODE
                    (n,) = struct.unpack("<I", self.take(4))
                    stack.append(self.take(n).decode("utf-8", "surrogatepass"))
                elif op == b"U":  # SHORT_BINSTRING (torch.load decodes it as utf-8)
                    stack.append(self.take(self.take(1)[0]).decode("utf-8"))
                elif op == b"K":  # BININT1
                    stack.append(self.take(1)[0])
                elif op == b"M":  # BININT2
                    stack.append(struct.unpack("<H", self.take(2))[0])
                elif op == b"J":  # BININT
                    stack.append(struct.unpack("<i", self.take(4))[0])
                elif op == b"\x8a":  # LONG1
                    stack.append(int.from_bytes(self.take(self.take(1)[0]), "little", signed=True))
                elif op == b"G":  # BINFLOAT
                    stack.append(struct.unpack(">d", self.take(8))[0])
                elif op in (b"s", b"u"):  # SETITEM, SETITEMS
                    items = [stack.pop(), stack.pop()][::-1] if op == b"s" else pop_mark()
                    target = stack[-1]
                    if type(target) not in (dict, OrderedDict) or len(items) % 2:
                        raise Refused(f"SETITEM on {type(target).__name__}")
                    for i in range(0, len(items), 2):
                        key = items[i]
                        if type(key) not in (str, int):  # all a state dict uses; a nested tuple could hash deep
                            raise Undescribed(f"a {type(key).__name__} as a key")
                        target[key] = items[i + 1]
                elif op in (b"a", b"e"):  # APPEND, APPENDS
                    items = [stack.pop()] if op == b"a" else pop_mark()
                    if type(stack[-1]) is not list:
                        raise Refused(f"APPEND to {type(stack[-1]).__name__}")
                    stack[-1].extend(items)
                elif op == b"}":
                    stack.append({})
                elif op == b"]":
                    stack.append([])
                elif op == b")":
                    stack.append(())
                elif op == b"N":
                    stack.append(None)
                elif op == b"\x88":
                    stack.append(True)
                elif op == b"\x89":
                    stack.append(False)
                elif op == b"\x80":  # PROTO
                    self.take(1)
                elif op == b"\x8f":  # EMPTY_SET
                    raise Undescribed("a set")
                elif op == b"\x81":  # NEWOBJ: torch allows it for Parameter and allowlisted classes only
                    raise Undescribed("NEWOBJ")
                elif op == b".":  # STOP
                    if len(stack) != 1 or marks:
                        raise Undescribed("data.pkl: stack not empty at STOP")
                    top = stack.pop()
                    if isinstance(top, _Global):
                        raise Undescribed(f"a bare global {top.name}")
                    return top, self.storages
                else:
                    raise Refused(f"pickle opcode {op!r}, which torch.load(weights_only=True) does not implement")
        except IndexError:
            raise Undescribed("data.pkl: stack underflow") from None
        except UnicodeDecodeError:
            raise Undescribed("data.pkl: a string that is not UTF-8") from None
        except TypeError as e:  # e.g. a tuple of the wrong length unpacked: torch.load decides
            raise Undescribed(f"data.pkl: {e}") from None

    def get(self, index: int) -> Any:
        if index not in self.memo:
            raise Undescribed(f"data.pkl: memo {index} never stored")
        return self.memo[index]

    def persistent(self, pid: Any) -> Storage:
        if type(pid) is not tuple or not pid or pid[0] != "storage":
            raise Undescribed("a persistent id that is not a storage")
        if len(pid) != 5:
            raise Undescribed("a storage id of another shape")
        _, kind, key, location, numel = pid
        if not (isinstance(kind, _Global) and type(key) is str and type(location) is str
                and type(numel) is int and numel >= 0):
            raise Undescribed("a storage id of other types")
        if kind.name == "torch.storage.UntypedStorage":
            dtype, nbytes = None, numel
        else:
            dtype = _STORAGES.get(kind.name.removeprefix("torch."))
            if dtype is None:
                raise Undescribed(f"a {kind.name}")
            nbytes = numel * itemsize(dtype)
        storage = Storage(key, dtype, nbytes)
        if self.storages.setdefault(key, storage) != storage:
            raise Undescribed(f"storage {key} seen with two types")
        return storage

    def reduce(self, func: Any, args: Any) -> Any:
        if not isinstance(func, _Global):
            raise Refused(f"a call of {type(func).__name__}")
        if type(args) is not tuple:
            raise Undescribed(f"{func.name} with arguments that are not a tuple")
        if func.name == "collections.OrderedDict":
            if args:
                raise Undescribed("OrderedDict with arguments")
            return OrderedDict()
        if func.name == "torch.Size":
            if len(args) != 1 or not _ints(args[0]):
                raise Undescribed("torch.Size of other arguments")
            return tuple(args[0])
        if func.name == "torch._utils._rebuild_parameter":
            if len(args) != 3 or not isinstance(args[0], StoredTensor) or type(args[1]) is not bool or not _no_hooks(args[2]):
                raise Undescribed("_rebuild_parameter with other arguments")
            return args[0]
        if func.name in ("torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3"):
            return self.tensor(func.name, args)
        raise Undescribed(f"a call of {func.name}")

    def tensor(self, name: str, args: tuple) -> StoredTensor:
        v3 = name.endswith("v3")
        fixed = 7 if v3 else 6
        if len(args) not in (fixed, fixed + 1) or (len(args) == fixed + 1 and args[-1] not in (None, {})):
            raise Undescribed(f"{name} with metadata or other arguments")  # metadata: e.g. a negative bit
        storage, offset, size, stride, requires_grad, hooks = args[:6]
        if not (isinstance(storage, Storage) and type(offset) is int and offset >= 0 and _ints(size) and _ints(stride)
                and len(size) == len(stride) and type(requires_grad) is bool and _no_hooks(hooks)):
            raise Undescribed(f"{name} with arguments of other types")
        if v3:
            dtype = args[6]
            if not (isinstance(dtype, _Global) and dtype.name.removeprefix("torch.") in DTYPE_NAMES and storage.dtype is None):
                raise Undescribed(f"{name} with another dtype or storage")
            dtype = dtype.name.removeprefix("torch.")
        else:
            dtype = storage.dtype
            if dtype is None:
                raise Undescribed(f"{name} over an untyped storage")
        tensor = StoredTensor(storage, dtype, tuple(size), tuple(stride), offset)
        numel = 1
        for d in tensor.shape:
            numel *= d
        if numel:
            last = offset + sum((d - 1) * s for d, s in zip(tensor.shape, tensor.stride))
            if (last + 1) * itemsize(dtype) > storage.nbytes:
                raise Undescribed(f"a tensor reaching past the end of storage {storage.key}")
        return tensor

    def build(self, inst: Any, state: Any) -> None:
        # torch updates an OrderedDict's __dict__; the only state a state dict carries is _metadata.
        if type(inst) is OrderedDict and type(state) is dict and set(state) <= {"_metadata"}:
            inst.__dict__.update(state)
        elif type(inst) in (OrderedDict, StoredTensor):
            raise Undescribed(f"BUILD of {type(inst).__name__} with other state")
        else:
            raise Refused(f"BUILD of {type(inst).__name__}")


def _ints(value: Any) -> bool:
    return type(value) is tuple and all(type(v) is int and v >= 0 for v in value)


def _no_hooks(value: Any) -> bool:
    return type(value) is OrderedDict and not value and not value.__dict__
