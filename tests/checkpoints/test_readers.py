"""Readers: inventories from headers only, exact reads, exact error messages."""

from __future__ import annotations

import json
import os
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from torchgraft.checkpoints import Reader, open_checkpoint
from torchgraft.core.errors import SourceError
from torchgraft.core.tensors import TensorInfo, from_safetensors_code

FIELD = "sources.pretrained"
REFUSAL = ("refused to unpickle {}: torch.load(weights_only=True) allows only tensors and "
           "plain containers, and torchgraft never runs code from a checkpoint")


def sample_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "emb.weight": torch.randn(6, 4, generator=g),
        "block.0.w": torch.randn(5, 3, generator=g).to(torch.bfloat16),
        "block.0.idx": torch.randint(0, 1000, (7,), generator=g),
        "mask": torch.rand(3, 2, generator=g) > 0.5,
        "scale": torch.tensor(1.25),
        "empty": torch.zeros(0, 3),
    }


# Regions per rank: row ranges, columns, single rows, ellipsis, steps.
INDEXES = {
    0: [(), (Ellipsis,)],
    1: [(slice(2, 5),), (3,), (slice(None, None, 2),), (-1,)],
    2: [(slice(1, 3),), (slice(None), slice(0, 2)), (2,), (Ellipsis, 1), (slice(-2, None),)],
}


def write_safetensors(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    save_file(tensors, str(path), metadata=metadata)
    return path


def write_torch(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path


def write_hf(directory: Path, tensors: dict, *, ext: str = "safetensors") -> Path:
    """Two shards, listed in the index out of order on purpose; one tensor per shard alternately."""
    directory.mkdir()
    keys = list(tensors)
    shards = {f"model-0000{i}-of-00002.{ext}": {k: tensors[k] for k in keys[i - 1::2]}
              for i in (1, 2)}
    weight_map = {}
    for name, part in shards.items():
        if ext == "safetensors":
            save_file(part, str(directory / name))
        else:
            torch.save(part, directory / name)
        weight_map.update({k: name for k in part})
    index = "model.safetensors.index.json" if ext == "safetensors" else "pytorch_model.bin.index.json"
    weight_map = dict(sorted(weight_map.items(), reverse=True))
    (directory / index).write_text(json.dumps({"metadata": {"total_size": 123},
                                               "weight_map": weight_map}))
    return directory


def safetensors_inventory(path: Path) -> list[TensorInfo]:
    """What the safetensors library itself reports, in file order."""
    with safe_open(str(path), "pt") as f:
        return [TensorInfo(k, tuple(f.get_slice(k).get_shape()),
                           from_safetensors_code(f.get_slice(k).get_dtype()))
                for k in f.offset_keys()]


def raises(message: str, fn, *args, expect_field: str = FIELD, **kwargs) -> None:
    with pytest.raises(SourceError) as e:
        fn(*args, **kwargs)
    assert e.value.field == expect_field
    assert e.value.message == message


# -- safetensors ------------------------------------------------------------------------


def test_safetensors_inventory_matches_the_library(tmp_path):
    path = write_safetensors(tmp_path / "m.safetensors", sample_tensors())
    with open_checkpoint(path, field=FIELD) as reader:
        assert reader.format == "safetensors"
        assert reader.inventory() == safetensors_inventory(path)
        # File order is the data layout (the reference writer sorts by alignment), not
        # the order of the dict that was saved.
        assert [i.key for i in reader.inventory()] != list(sample_tensors())
        by_key = reader.by_key()
        assert list(by_key.items()) == [(i.key, i) for i in reader.inventory()]
        by_key.clear()  # a copy
        assert reader.by_key()


def test_safetensors_file_order_from_a_handmade_header(tmp_path):
    """Offsets order the inventory, whatever the header's order; ties in header order."""
    header = {"b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
              "z": {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]},
              "a": {"dtype": "I64", "shape": [], "data_offsets": [0, 8]},
              "y": {"dtype": "F16", "shape": [0, 3], "data_offsets": [8, 8]},
              "__metadata__": {"note": "x"}}
    raw = json.dumps(header).encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(16))
    with open_checkpoint(path, field=FIELD) as reader:
        assert reader.inventory() == [TensorInfo("a", (), "int64"), TensorInfo("z", (0,), "float32"),
                                      TensorInfo("y", (0, 3), "float16"), TensorInfo("b", (2,), "float32")]
        assert reader.metadata() == {"note": "x"}
        assert reader.byte_range("b").offset == 8 + len(raw) + 8


@pytest.mark.parametrize("maker", ["safetensors", "torch", "hf", "hf-bin"])
def test_reads_are_bit_equal_with_and_without_index(tmp_path, maker):
    tensors = sample_tensors()
    path = {
        "safetensors": lambda: write_safetensors(tmp_path / "m.safetensors", tensors),
        "torch": lambda: write_torch(tmp_path / "m.pt", tensors),
        "hf": lambda: write_hf(tmp_path / "hf", tensors),
        "hf-bin": lambda: write_hf(tmp_path / "hf", tensors, ext="bin"),
    }[maker]()
    with open_checkpoint(path, field=FIELD) as reader:
        assert {i.key for i in reader.inventory()} == set(tensors)
        for key, want in tensors.items():
            got = reader.read(key)
            assert got.is_contiguous() and got.device.type == "cpu"
            assert got.dtype == want.dtype and torch.equal(got, want), key
            for index in INDEXES[want.dim()]:
                if want.numel() == 0 and index and isinstance(index[0], int):
                    continue
                region = reader.read(key, index)
                assert region.is_contiguous()
                assert torch.equal(region, want[index]), (key, index)


def test_zero_size_tensors_keep_header_order(tmp_path):
    # safe_open().offset_keys() orders tensors sharing an offset differently from run
    # to run; the inventory must not.
    tensors = {"a": torch.ones(2), "z1": torch.zeros(0), "z2": torch.zeros(0, 2),
               "z0": torch.zeros(0), "b": torch.ones(1, dtype=torch.int64)}
    path = write_safetensors(tmp_path / "m.safetensors", tensors)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    expected = sorted(header, key=lambda k: tuple(header[k]["data_offsets"]))
    for _ in range(5):
        with open_checkpoint(path, field=FIELD) as reader:
            assert [i.key for i in reader.inventory()] == expected
            assert set(reader.inventory()) == set(safetensors_inventory(path))


def test_single_index_is_accepted_without_a_tuple(tmp_path):
    tensors = sample_tensors()
    path = write_safetensors(tmp_path / "m.safetensors", tensors)
    with open_checkpoint(path, field=FIELD) as reader:
        assert torch.equal(reader.read("emb.weight", slice(1, 3)), tensors["emb.weight"][1:3])


def test_safetensors_inventory_reads_headers_only(tmp_path):
    tensors = sample_tensors()
    path = write_safetensors(tmp_path / "m.safetensors", tensors, metadata={"a": "b"})
    expected = safetensors_inventory(path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    path.write_bytes(raw[:8 + n] + bytes([0xA5]) * (len(raw) - 8 - n))  # garbage data
    with open_checkpoint(path, field=FIELD) as reader:
        assert reader.inventory() == expected
        assert reader.metadata() == {"a": "b"}
        before = reader.fingerprint()
        assert before["size"] == len(raw)
    path.write_bytes(raw)
    with open_checkpoint(path, field=FIELD) as reader:
        after = reader.fingerprint()
        assert after["header_sha256"] == before["header_sha256"]


def test_fingerprint_hashes_the_raw_header_and_content_hashes_everything(tmp_path):
    import hashlib

    path = write_safetensors(tmp_path / "m.safetensors", sample_tensors())
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    with open_checkpoint(path, field=FIELD) as reader:
        fp = reader.fingerprint()
        assert set(fp) == {"size", "mtime_ns", "header_sha256"}
        assert fp["header_sha256"] == hashlib.sha256(raw[:8 + n]).hexdigest()
        assert fp["mtime_ns"] == os.stat(path).st_mtime_ns
        assert reader.content_sha256() == hashlib.sha256(raw).hexdigest()


def test_broken_safetensors_header(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"abc")
    raises(f"{path}: not a valid safetensors file (file is shorter than the 8-byte header "
           "length)", open_checkpoint, path, field=FIELD)
    path.write_bytes(struct.pack("<Q", 5) + b"{oops")
    with pytest.raises(SourceError) as e:
        open_checkpoint(path, field=FIELD)
    assert e.value.message.startswith(f"{path}: not a valid safetensors file (header is not "
                                      "valid JSON: ")
    # Well-formed JSON whose offsets run past the file: the library's own check.
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(SourceError) as e:
        open_checkpoint(path, field=FIELD)
    assert e.value.message.startswith(f"{path}: not a valid safetensors file (")


# -- torch ------------------------------------------------------------------------------


def test_torch_inventory_is_file_order_without_a_torch_load(tmp_path, monkeypatch):
    tensors = sample_tensors()
    path = write_torch(tmp_path / "m.pt", tensors)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    with open_checkpoint(path, field=FIELD) as reader:
        assert reader.inventory() == [TensorInfo(k, tuple(t.shape), str(t.dtype).removeprefix("torch."))
                                      for k, t in tensors.items()]
        assert calls == []  # torch_pickle describes the zip file
        reader.read("emb.weight")
        reader.read("mask", (slice(0, 1),))
        assert calls == [{"weights_only": True, "map_location": "cpu", "mmap": True}]


def test_torch_inventory_reads_no_tensor_data(tmp_path):
    tensors = sample_tensors()
    path = write_torch(tmp_path / "m.pt", tensors)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        records = [i for i in z.infolist() if "/data/" in i.filename]
    assert records
    for rec in records:  # overwrite every tensor's bytes in place
        name_len, extra_len = struct.unpack("<HH", raw[rec.header_offset + 26:rec.header_offset + 30])
        start = rec.header_offset + 30 + name_len + extra_len
        raw[start:start + rec.file_size] = b"\xa5" * rec.file_size
    path.write_bytes(bytes(raw))
    with open_checkpoint(path, field=FIELD) as reader:
        assert [(i.key, i.shape) for i in reader.inventory()] == [
            (k, tuple(t.shape)) for k, t in tensors.items()]
        # ...while the data really is garbage now.
        assert not torch.equal(reader.read("emb.weight"), tensors["emb.weight"])


def test_torch_skips_non_tensor_values(tmp_path):
    sd = OrderedDict(w=torch.ones(2), _extra_state=b"xx", step=3, name="x", b=torch.zeros(1))
    with open_checkpoint(write_torch(tmp_path / "m.pt", sd), field=FIELD) as reader:
        assert [i.key for i in reader.inventory()] == ["w", "b"]


def test_legacy_torch_file_falls_back_to_a_plain_load(tmp_path):
    tensors = sample_tensors()
    path = tmp_path / "legacy.pt"
    torch.save(tensors, path, _use_new_zipfile_serialization=False)
    with open_checkpoint(path, field=FIELD) as reader:
        for key, want in tensors.items():
            assert torch.equal(reader.read(key), want)


def test_lightning_checkpoint_with_key(tmp_path):
    tensors = sample_tensors()
    path = write_torch(tmp_path / "last.ckpt", {"state_dict": tensors, "epoch": 3,
                                                "optimizer_states": [{"lr": 0.1}]})
    with open_checkpoint(path, key="state_dict", field=FIELD) as reader:
        assert [i.key for i in reader.inventory()] == list(tensors)
        assert torch.equal(reader.read("emb.weight", (slice(0, 2),)), tensors["emb.weight"][:2])
    raises(f"{path}: the tensors are under 'state_dict': set key: state_dict",
           open_checkpoint, path, field=FIELD)


def test_dotted_key_and_nested_hints(tmp_path):
    tensors = sample_tensors()
    path = write_torch(tmp_path / "m.pt", {"ema": {"model": tensors}, "step": 7})
    with open_checkpoint(path, key="ema.model", field=FIELD) as reader:
        assert [i.key for i in reader.inventory()] == list(tensors)
        assert torch.equal(reader.read("scale"), tensors["scale"])
    raises(f"{path}: the tensors are under 'ema.model': set key: ema.model",
           open_checkpoint, path, field=FIELD)
    raises(f"{path}: the tensors are under 'ema.model': set key: ema.model",
           open_checkpoint, path, key="ema", field=FIELD)
    # The usual names win over others at the same depth.
    both = write_torch(tmp_path / "both.pt", {"ema": tensors, "model": tensors})
    raises(f"{both}: the tensors are under 'model': set key: model",
           open_checkpoint, both, field=FIELD)


def test_missing_key_lists_top_level_entries(tmp_path):
    path = write_torch(tmp_path / "m.pt", {"state_dict": sample_tensors(), "epoch": 3,
                                           "callbacks": {}})
    raises(f"{path}: no entry 'model' (top-level entries: callbacks, epoch, state_dict)",
           open_checkpoint, path, key="model", field=FIELD)
    raises(f"{path}: no entry 'state_dict.x' (entries under 'state_dict': block.0.idx, "
           "block.0.w, emb.weight, empty, mask, scale)",
           open_checkpoint, path, key="state_dict.x", field=FIELD)
    raises(f"{path}: no entry 'epoch.x' ('epoch' is an int, not a mapping)",
           open_checkpoint, path, key="epoch.x", field=FIELD)
    many = write_torch(tmp_path / "many.pt", {f"k{i:02d}": i for i in range(12)})
    raises(f"{many}: no entry 'state_dict' (top-level entries: k00, k01, k02, k03, k04, k05, "
           "k06, k07, k08, k09, ...)", open_checkpoint, many, key="state_dict", field=FIELD)


def test_not_a_tensor_mapping(tmp_path):
    path = write_torch(tmp_path / "list.pt", [torch.ones(2)])
    raises(f"{path}: expected a mapping of tensor names to tensors, found list",
           open_checkpoint, path, field=FIELD)
    path = write_torch(tmp_path / "cfg.pt", {"epoch": 3, "lr": 0.1})
    raises(f"{path}: expected a mapping of tensor names to tensors, found dict with no tensors",
           open_checkpoint, path, field=FIELD)


def _write_marker(path):
    """What a malicious checkpoint would run on load."""
    Path(path).write_text("pwned")


class _RunsCode:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


@pytest.mark.parametrize("how", ["os.system", "function"])
def test_unsafe_pickle_is_refused_without_running_code(tmp_path, how):
    marker = tmp_path / "marker"
    if how == "os.system":
        payload, culprit = _RunsCode(os.system, f"touch {marker}"), f"{os.system.__module__}.system"
    else:
        payload, culprit = _RunsCode(_write_marker, str(marker)), f"{__name__}._write_marker"
    path = write_torch(tmp_path / "evil.pt", {"w": torch.ones(2), "x": payload})
    raises(f"{path}: " + REFUSAL.format(culprit), open_checkpoint, path, field=FIELD)
    raises(f"{path}: " + REFUSAL.format(culprit), open_checkpoint, path, format="torch",
           field=FIELD)
    assert not marker.exists()
    if how == "function":  # the payload is live: an unsafe load would have run it
        torch.load(path, weights_only=False)
        assert marker.read_text() == "pwned"


@pytest.mark.parametrize("content", [b"PK\x03\x04 this is not a zip archive", b"hello world",
                                     b"", "truncated"])
def test_unreadable_torch_file(tmp_path, content):
    path = tmp_path / "m.pt"
    if content == "truncated":
        torch.save(sample_tensors(), path)
        content = path.read_bytes()[:-100]
    path.write_bytes(content)
    with pytest.raises(SourceError) as e:
        open_checkpoint(path, field=FIELD)
    assert e.value.message.startswith(f"{path}: not a readable torch checkpoint (")
    assert "\n" not in e.value.message


def test_torch_metadata_written_by_torchgraft_is_read_back(tmp_path):
    sd = OrderedDict(w=torch.ones(2))
    sd._metadata = {"__metadata__": {"torchgraft.plan_sha256": "abc"}, "": {"version": 1}}
    with open_checkpoint(write_torch(tmp_path / "m.pt", sd), field=FIELD) as reader:
        assert reader.metadata() == {"torchgraft.plan_sha256": "abc"}


# -- Hugging Face directories -----------------------------------------------------------


@pytest.mark.parametrize("ext", ["safetensors", "bin"])
def test_hf_directory_with_index_and_two_shards_is_one_checkpoint(tmp_path, ext):
    tensors = sample_tensors()
    directory = write_hf(tmp_path / "hf", tensors, ext=ext)
    shards = sorted(p for p in directory.iterdir() if p.suffix == f".{ext}")
    assert len(shards) == 2
    expected = []
    for shard in shards:  # shard-name order, then each shard's own file order
        with open_checkpoint(shard, field=FIELD) as sub:
            expected += sub.inventory()
    with open_checkpoint(directory, field=FIELD) as reader:
        assert reader.format == "hf"
        assert reader.inventory() == expected
        assert sorted(i.key for i in expected) == sorted(tensors)
        for key, want in tensors.items():
            assert torch.equal(reader.read(key), want)
        fp = reader.fingerprint()
        files = [*directory.glob("*.index.json"), *shards]
        assert fp["size"] == sum(p.stat().st_size for p in files)
        assert fp["mtime_ns"] == max(p.stat().st_mtime_ns for p in files)
        assert reader.metadata() == {"total_size": "123"}
        content = reader.content_sha256()
    shards[1].write_bytes(shards[1].read_bytes())  # same bytes: same content hash
    with open_checkpoint(directory, field=FIELD) as reader:
        assert reader.content_sha256() == content
        assert reader.fingerprint()["header_sha256"] == fp["header_sha256"]


def test_hf_single_file_directory(tmp_path):
    tensors = sample_tensors()
    directory = tmp_path / "hf"
    directory.mkdir()
    write_safetensors(directory / "model.safetensors", tensors, metadata={"format": "pt"})
    with open_checkpoint(directory, format="hf", field=FIELD) as reader:
        assert reader.inventory() == safetensors_inventory(directory / "model.safetensors")
        assert reader.metadata() == {"format": "pt"}
        assert torch.equal(reader.read("mask"), tensors["mask"])


def test_hf_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    raises(f"{empty}: no model.safetensors, pytorch_model.bin or *.index.json (Hugging Face), "
           "nor .metadata (torch.distributed.checkpoint), in this directory",
           open_checkpoint, empty, field=FIELD)
    directory = write_hf(tmp_path / "hf", sample_tensors())
    (directory / "model-00002-of-00002.safetensors").unlink()
    raises(f"{directory}: model.safetensors.index.json names model-00002-of-00002.safetensors, "
           "which does not exist", open_checkpoint, directory, field=FIELD)


# -- opening: formats, detection, errors ------------------------------------------------


def test_missing_path(tmp_path):
    raises("nope/model.pt: no such file or directory", open_checkpoint, "nope/model.pt",
           field=FIELD)


def test_unknown_format_value(tmp_path):
    path = write_safetensors(tmp_path / "m.safetensors", sample_tensors())
    raises("unknown format 'xyz' (expected auto, safetensors, torch, hf, dcp or peft)",
           open_checkpoint, path, format="xyz", field=FIELD)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt", ".PT"])
def test_torch_suffixes(tmp_path, suffix):
    path = write_torch(tmp_path / f"m{suffix}", sample_tensors())
    with open_checkpoint(path, field=FIELD) as reader:
        assert reader.format == "torch"


def test_sniffing_without_a_known_suffix(tmp_path):
    tensors = sample_tensors()
    zipped = write_torch(tmp_path / "weights.data", tensors)
    legacy = tmp_path / "legacy.data"
    torch.save(tensors, legacy, _use_new_zipfile_serialization=False)
    st = write_safetensors(tmp_path / "weights.bytes", tensors)
    for path, fmt in [(zipped, "torch"), (legacy, "torch"), (st, "safetensors")]:
        with open_checkpoint(path, field=FIELD) as reader:
            assert reader.format == fmt
            assert torch.equal(reader.read("emb.weight"), tensors["emb.weight"])
    junk = tmp_path / "junk.data"
    junk.write_bytes(b"\x00" * 64)
    raises(f"{junk}: cannot tell the checkpoint format (set format: safetensors | torch | hf)",
           open_checkpoint, junk, field=FIELD)
    short = tmp_path / "short"
    short.write_bytes(b"ab")
    raises(f"{short}: cannot tell the checkpoint format (set format: safetensors | torch | hf)",
           open_checkpoint, short, field=FIELD)


def test_explicit_format_overrides_the_suffix(tmp_path):
    tensors = sample_tensors()
    path = write_safetensors(tmp_path / "m.pt", tensors)
    with open_checkpoint(path, format="safetensors", field=FIELD) as reader:
        assert torch.equal(reader.read("scale"), tensors["scale"])


def test_key_and_format_mismatches(tmp_path):
    path = write_safetensors(tmp_path / "m.safetensors", sample_tensors())
    raises(f"{path}: 'key' applies only to torch and DCP checkpoints, and this is a safetensors "
           "checkpoint", open_checkpoint, path, key="state_dict", field=FIELD)
    raises(f"{path}: format hf expects a directory", open_checkpoint, path, format="hf",
           field=FIELD)
    raises(f"{tmp_path}: is a directory (set format: hf, dcp, peft or auto)", open_checkpoint, tmp_path,
           format="torch", field=FIELD)


def test_unknown_tensor_key_on_read(tmp_path):
    path = write_safetensors(tmp_path / "m.safetensors", sample_tensors())
    with open_checkpoint(path, field="sources.x") as reader:
        raises(f"{path}: no tensor 'nope'", reader.read, "nope", expect_field="sources.x")


def test_readers_share_one_interface(tmp_path):
    tensors = sample_tensors()
    paths = [write_safetensors(tmp_path / "m.safetensors", tensors),
             write_torch(tmp_path / "m.pt", tensors), write_hf(tmp_path / "hf", tensors)]
    for path in paths:
        reader = open_checkpoint(str(path), field=FIELD)
        assert isinstance(reader, Reader)
        assert reader.path == path and isinstance(reader.path, Path)
        assert len(reader.content_sha256()) == 64
        reader.close()


@pytest.mark.parametrize(("entries", "data", "reason"), [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, 12,
     "tensor 'b' has data_offsets [4, 12]: the data before it ends at 8"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}, 20,
     "tensor 'b' has data_offsets [12, 20]: the data before it ends at 8"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 8,
     "tensor 'a' has 8 bytes, its shape [3] and dtype F32 need 12"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 12,
     "the header describes 8 bytes of data, the file holds 12"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, 8,
     "tensor 'a' has shape [-2], not a list of unsigned integers"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8.0]}}, 8,
     "tensor 'a' has data_offsets [0, '8.0'], not two unsigned integers"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2.0], "data_offsets": [8, 16]}}, 16,
     "tensor 'b' has shape ['2.0'], not a list of unsigned integers"),
    ({"__metadata__": {"step": 3}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 8,
     "__metadata__ is not a map of strings to strings"),
])
def test_safetensors_layout_is_checked_as_safe_open_would(tmp_path, entries, data, reason):
    """Overlaps, gaps, sizes and trailing bytes: each refused with the tensor named."""
    path = tmp_path / "m.safetensors"
    header = json.dumps(entries).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * data)
    raises(f"{path}: not a valid safetensors file ({reason})", open_checkpoint, path, field=FIELD)
    from safetensors import SafetensorError, safe_open

    with pytest.raises(SafetensorError):  # the library refuses each of these too
        safe_open(str(path), framework="numpy")

