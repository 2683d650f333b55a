"""torch_pickle: data.pkl described without torch, checked against torch itself.

Agreement: on random state dicts (dtypes, shapes, transposes, slices, shared storages,
parameters), every key, shape and dtype equals ``torch.load(map_location="meta")``'s
and every byte range holds exactly the tensor's bytes. Refusal: on one corpus of
hostile pickles, torch_pickle never describes a file that ``torch.load(weights_only=True)``
refuses, and nothing runs. Fallbacks: a legacy file, a compressed member and a
non-contiguous view are each read through torch.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torchgraft.checkpoints import open_checkpoint, torch_pickle
from torchgraft.checkpoints.byteranges import OpenFile
from torchgraft.checkpoints.torch_file import TorchReader
from torchgraft.core.errors import SourceError

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
          torch.int16, torch.int8, torch.uint8, torch.bool, torch.uint16, torch.float8_e4m3fn, torch.complex64]


def _describe(path: Path) -> torch_pickle.Checkpoint:
    file = OpenFile(path)
    try:
        return torch_pickle.load(file)
    finally:
        file.close()


def _bytes(t: torch.Tensor) -> bytes:
    if t.numel() == 0:
        return b""
    dense = torch.empty(t.shape, dtype=t.dtype).copy_(t)  # standard strides, even for size-1 dimensions
    return dense.reshape(-1).view(torch.uint8).numpy().tobytes()


@st.composite
def state_dicts(draw):
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    state: dict[str, torch.Tensor] = {}
    for i in range(draw(st.integers(1, 6))):
        dtype = draw(st.sampled_from(DTYPES))
        shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
        base = torch.randint(0, 100, shape, generator=g).to(dtype)
        kind = draw(st.sampled_from(["plain", "transpose", "rows", "step", "share", "parameter", "expand"]))
        if kind == "transpose" and base.dim() >= 2:
            value = base.transpose(0, 1)
        elif kind == "rows" and base.dim() >= 1:
            value = base[draw(st.integers(0, shape[0])):]  # an offset into the storage, contiguous
        elif kind == "step" and base.dim() >= 1:
            value = base[::2]
        elif kind == "share" and state:
            value = next(iter(state.values())).reshape(-1)[1:]  # a view of another tensor's storage
        elif kind == "parameter" and dtype.is_floating_point:
            value = torch.nn.Parameter(base, requires_grad=False)
        elif kind == "expand" and base.dim() >= 1 and shape[0] == 1:
            value = base.expand(3, *shape[1:])  # stride 0
        else:
            value = base
        state[f"t{i}.{kind}"] = value
    return state


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=state_dicts())
def test_descriptions_agree_with_torch_on_every_key_shape_dtype_and_byte(tmp_path, state):
    path = tmp_path / "m.pt"
    torch.save(state, path)
    meta = torch.load(path, map_location="meta", weights_only=True)
    real = torch.load(path, weights_only=True)
    described = _describe(path)
    assert list(described.top) == list(meta)
    raw = path.read_bytes()
    for key, want in meta.items():
        got = described.top[key]
        assert got.shape == tuple(want.shape) and got.dtype == str(want.dtype).removeprefix("torch."), key
        assert got.stride == want.stride() and got.offset == want.storage_offset(), key
        span = described.byte_span(got)
        assert (span is not None) == want.is_contiguous(), key
        if span is not None:
            start, length = span
            assert raw[start:start + length] == _bytes(real[key]), key
    with TorchReader(path, field="src") as reader:  # the reader's own inventory, and its reads
        assert [(i.key, i.shape, i.dtype) for i in reader.inventory()] == [
            (k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in meta.items()]
        for key in meta:
            assert _bytes(reader.read(key)) == _bytes(real[key]), key


# -- the hostile corpus ----------------------------------------------------------------------


def _rewrite(path: Path, pickled: bytes) -> Path:
    """``path`` (a torch.save zip) with its data.pkl replaced by ``pickled``."""
    with zipfile.ZipFile(path) as src:
        members = [(i.filename, src.read(i)) for i in src.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for name, data in members:
            dst.writestr(name, pickled if name.endswith("/data.pkl") else data)
    return path


def _marker_call(module: str, name: str, marker: Path) -> bytes:
    """A protocol-2 pickle whose load calls ``module.name(<touch marker>)``."""
    arg = f"touch {marker}" if name in ("system", "getoutput") else str(marker)
    if (module, name) == ("builtins", "eval"):
        arg = f"open({str(marker)!r}, 'w').write('pwned')"
    if (module, name) == ("builtins", "exec"):
        arg = f"open({str(marker)!r}, 'w').write('pwned')"
    return (b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\nX" + struct.pack("<I", len(arg))
            + arg.encode() + b"\x85R.")


def _storage_pid(key: str = "0", storage: str = "FloatStorage", numel: int = 2) -> bytes:
    return (b"((X\x07\x00\x00\x00storagec" + b"torch\n" + storage.encode() + b"\nX" + struct.pack("<I", len(key))
            + key.encode() + b"X\x03\x00\x00\x00cpuK" + bytes([numel]) + b"tQ")


def _rebuild(size: tuple[int, ...], stride: tuple[int, ...], offset: int = 0, hooks: bytes = b"ccollections\nOrderedDict\n)R") -> bytes:
    ints = lambda xs: b"(" + b"".join(b"K" + bytes([x]) for x in xs) + b"t"
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" + _storage_pid() + b"K" + bytes([offset]) + ints(size) + ints(stride)
            + b"\x89" + hooks + b"tR")


def _dict_of(value: bytes) -> bytes:
    return b"\x80\x02}X\x01\x00\x00\x00w" + value + b"s."


class _Sentinel:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


CORPUS = {
    "os.system": lambda m: _marker_call("os", "system", m),
    "posix.system": lambda m: _marker_call("posix", "system", m),
    "subprocess.getoutput": lambda m: _marker_call("subprocess", "getoutput", m),
    "builtins.eval": lambda m: _marker_call("builtins", "eval", m),
    "__builtin__.exec (python 2 spelling)": lambda m: _marker_call("__builtin__", "exec", m),
    "a method by reduce": lambda m: pickle.dumps(_Sentinel(m), protocol=2),
    "torch.load by name": lambda m: _marker_call("torch", "load", m),
    "torch.save by name": lambda m: _marker_call("torch.serialization", "save", m),
    "protocol 4 (STACK_GLOBAL)": lambda m: pickle.dumps(OrderedDict(w=1), protocol=4),
    "a dtype called": lambda m: _dict_of(b"ctorch\nfloat32\n)R"),
    "OrderedDict called with pairs": lambda m: _dict_of(b"ccollections\nOrderedDict\n((X\x01\x00\x00\x00aK\x01ttR"),
    "a persistent id that is not a storage": lambda m: _dict_of(b"X\x04\x00\x00\x00evilQ"),
    "a storage of a missing member": lambda m: _dict_of(_rebuild((2,), (1,)).replace(b"X\x01\x00\x00\x000", b"X\x01\x00\x00\x009")),
    "a tensor past its storage": lambda m: _dict_of(_rebuild((4, 4), (4, 1))),
    "an offset past its storage": lambda m: _dict_of(_rebuild((2,), (1,), offset=5)),
    "backward hooks that are a list": lambda m: _dict_of(_rebuild((2,), (1,), hooks=b"]")),
    "SETITEM on a list": lambda m: b"\x80\x02]X\x01\x00\x00\x00aK\x01s.",
    "APPEND to a dict": lambda m: b"\x80\x02}K\x01a.",
    "BUILD of a dict": lambda m: b"\x80\x02}}X\x01\x00\x00\x00aK\x01sb.",
    "REDUCE of a string": lambda m: b"\x80\x02X\x01\x00\x00\x00a)R.",
    "a memo never stored": lambda m: b"\x80\x02h\x07.",
    "truncated": lambda m: b"\x80\x02}X\xff\xff\x00\x00w",
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_what_torch_refuses_is_never_described_and_nothing_runs(tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2)}, path)
    _rewrite(path, CORPUS[name](marker))
    with pytest.raises(Exception):  # noqa: B017 -- whatever torch raises: it refuses
        torch.load(path, weights_only=True)
    with pytest.raises((torch_pickle.Refused, torch_pickle.Undescribed)):
        _describe(path)
    with pytest.raises(SourceError) as e:
        open_checkpoint(path, field="src")
    assert "\n" not in e.value.message
    assert not marker.exists()


@pytest.mark.parametrize(("payload", "culprit"), [
    (lambda m: _marker_call("os", "system", m), "os.system"),
    (lambda m: _marker_call("subprocess", "getoutput", m), "subprocess.getoutput"),
    (lambda m: _marker_call("builtins", "eval", m), "eval"),
])
def test_a_refused_global_is_named_as_torch_names_it_without_importing_torch(tmp_path, payload, culprit, monkeypatch):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2)}, path)
    _rewrite(path, payload(tmp_path / "pwned"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    with pytest.raises(SourceError) as e:
        open_checkpoint(path, field="src")
    assert e.value.message == (f"{path}: refused to unpickle {culprit}: torch.load(weights_only=True) allows only "
                               "tensors and plain containers, and torchgraft never runs code from a checkpoint")


# -- the documented fallbacks ----------------------------------------------------------------


@pytest.fixture
def torch_loads(monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("map_location"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g).to(torch.bfloat16)}


def _read_by_torch(path: Path, reason: str, torch_loads: list) -> None:
    """torch_pickle does not describe ``path`` (``reason``); the reader's inventory is a meta load."""
    with pytest.raises(torch_pickle.Undescribed, match=reason):
        _describe(path)
    with open_checkpoint(path, field="src") as reader:
        assert torch_loads == ["meta"]
        assert reader.byte_range("a") is None
        assert torch.equal(reader.read("a"), _state()["a"])


def test_a_legacy_file_is_read_by_torch(tmp_path, torch_loads):
    path = tmp_path / "legacy.pt"
    torch.save(_state(), path, _use_new_zipfile_serialization=False)
    _read_by_torch(path, "legacy", torch_loads)


def test_a_compressed_member_is_read_by_torch(tmp_path, torch_loads):
    path = tmp_path / "m.pt"
    torch.save(_state(), path)
    with zipfile.ZipFile(path) as src:
        members = [(i.filename, src.read(i)) for i in src.infolist()]
    with zipfile.ZipFile(path, "w") as dst:
        for name, data in members:
            dst.writestr(name, data, zipfile.ZIP_DEFLATED if name.endswith("/data/0") else zipfile.ZIP_STORED)
    _read_by_torch(path, "data/0 is compressed", torch_loads)


def test_a_non_contiguous_view_is_described_but_read_by_torch(tmp_path, torch_loads):
    state = _state()
    state["t"] = state["a"].t()
    path = tmp_path / "m.pt"
    torch.save(state, path)
    with open_checkpoint(path, field="src") as reader:
        assert torch_loads == []  # described: no torch.load for the inventory
        assert [(i.key, i.shape) for i in reader.inventory()] == [("a", (4, 3)), ("b", (3,)), ("t", (3, 4))]
        assert reader.byte_range("a") is not None and reader.byte_range("t") is None
        assert torch.equal(reader.read("t"), state["a"].t())
        assert torch_loads == ["cpu"]


def test_a_big_endian_file_is_read_by_torch(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(_state(), path)
    with zipfile.ZipFile(path) as src:
        members = [(i.filename, src.read(i)) for i in src.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as dst:
        for name, data in members:
            dst.writestr(name, b"big" if name.endswith("/byteorder") else data)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(torch_pickle.Undescribed, match="little-endian"):
        _describe(path)
    assert os.path.getsize(path) > 0
