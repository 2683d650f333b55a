"""Execution at scale: tensors copied unchanged move as byte ranges, others are read
with pread; the streamed output equals what ``safetensors.torch.save_file`` writes."""

from __future__ import annotations

import io
import logging
import os
import sys
import zipfile
from collections import OrderedDict

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import torchgraft
from torchgraft.checkpoints import byteranges, open_checkpoint, open_writer, torch_file
from torchgraft.checkpoints.appender import Appender
from torchgraft.checkpoints.byteranges import ByteRange, OpenFile
from torchgraft.core.errors import OutputError
from torchgraft.core.tensors import TensorInfo, dtype_name
from torchgraft.execution.executor import check_output
from torchgraft.execution.progress import Progress


def source_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model.layers.0.w": torch.randn(6, 4, generator=g),
        "model.layers.0.h": torch.randn(5, 3, generator=g).to(torch.bfloat16),
        "model.layers.1.w": torch.randn(6, 4, generator=g),
        "model.layers.1.h": torch.randn(5, 3, generator=g).to(torch.float16),
        "model.mask": torch.rand(3, 2, generator=g) > 0.5,  # 6 bytes: later tensors misaligned
        "model.idx": torch.randint(0, 1000, (7,), generator=g),
        "model.f8": torch.randn(4, generator=g).to(torch.float8_e4m3fn),
        "model.scale": torch.tensor(1.25),
        "model.empty": torch.zeros(0, 3),
    }


def bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """torch.equal, also for dtypes without comparison kernels (fp8)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def extraction(path, **output) -> dict:
    recipe = {"sources": {"src": str(path)}, "target": None,
              "rules": [{"from": "src", "rename": {"model.layers.{i}": "blocks.{i}", "model": "misc"}}]}
    if output:
        recipe["output"] = output
    return recipe


def renamed(tensors: dict) -> dict:
    return {k.replace("model.layers.", "blocks.").replace("model.", "misc."): v for k, v in tensors.items()}


@pytest.fixture
def spies(monkeypatch):
    """Counts of byte-range copies and of preads, by key."""
    seen = {"copied": 0, "pread": 0}
    copy, pread = Appender.copy, byteranges.read_range

    def counting_copy(self, *args):
        seen["copied"] += 1
        return copy(self, *args)

    def counting_pread(*args):
        seen["pread"] += 1
        return pread(*args)

    monkeypatch.setattr(Appender, "copy", counting_copy)
    for reader in ("safetensors_file", "torch_file"):
        monkeypatch.setattr(sys.modules[f"torchgraft.checkpoints.{reader}"], "read_range", counting_pread)
    return seen


@pytest.mark.parametrize("ext", [".safetensors", ".pt"])
def test_streamed_output_equals_save_file_of_the_same_state_dict(tmp_path, ext, spies):
    tensors = source_tensors()
    src = tmp_path / f"src{ext}"
    save_file(tensors, str(src)) if ext == ".safetensors" else torch.save(tensors, src)
    plan = torchgraft.plan(extraction(src))
    out = torchgraft.execute(plan, tmp_path / "out.safetensors")
    reference = tmp_path / "ref.safetensors"
    metadata = {"format": "pt", "torchgraft.plan_sha256": plan.sha256, "torchgraft.version": plan.version}
    save_file(renamed(tensors), str(reference), metadata=metadata)
    got, want = load_file(str(out)), load_file(str(reference))
    assert got.keys() == want.keys()
    for key in want:
        assert bit_equal(got[key], want[key]), key
    with safe_open(str(out), "pt") as f:
        assert f.metadata() == metadata
        assert f.metadata()["torchgraft.plan_sha256"] == plan.sha256
        for key in want:
            assert bit_equal(f.get_tensor(key), want[key]), key
    # Every tensor moved as bytes (the empty one too: zero bytes of a torch file's
    # empty storage); none was read.
    assert spies == {"copied": len(tensors), "pread": 0}


def test_changed_tensors_are_read_with_pread_and_cast(tmp_path, spies):
    tensors = source_tensors()
    src = tmp_path / "src.pt"
    torch.save(tensors, src)
    plan = torchgraft.plan(extraction(src, dtype="bfloat16"))
    got = load_file(str(torchgraft.execute(plan, tmp_path / "out.safetensors")))
    for key, value in renamed(tensors).items():
        want = value.to(torch.bfloat16) if value.is_floating_point() else value
        assert bit_equal(got[key], want), key
    # Cast by torch: f16 and f8 are read. The float32 ones (w, w, scale and the empty one)
    # are cast in numpy (execution.casts). Copied as they are: h (already bf16), the mask
    # and the indices.
    assert spies == {"pread": 2, "copied": 3}


def test_a_torch_source_is_never_memory_mapped_for_whole_tensors(tmp_path, monkeypatch):
    src = tmp_path / "src.pt"
    tensors = source_tensors()
    del tensors["model.empty"]  # stores no bytes: read the ordinary way
    torch.save(tensors, src)
    loads = []
    from torchgraft.checkpoints.torch_file import TorchReader

    original = TorchReader._load_data
    monkeypatch.setattr(TorchReader, "_load_data", lambda self: loads.append(1) or original(self))
    torchgraft.execute(torchgraft.plan(extraction(src, dtype="float16")), tmp_path / "out.safetensors")
    assert loads == []


def test_regions_and_transforms_still_go_through_the_reader(tmp_path, spies):
    tensors = {"fc.weight": torch.randn(4, 6), "fc.bias": torch.randn(4)}
    src = tmp_path / "src.safetensors"
    save_file(tensors, str(src))
    recipe = {"sources": {"src": str(src)}, "target": None,
              "rules": [{"to": "w", "from": "src:fc.weight[:2]"},
                        {"from": "src", "select": "fc.bias", "transform": [{"scale": 2.0}]}]}
    got = load_file(str(torchgraft.execute(torchgraft.plan(recipe), tmp_path / "out.safetensors")))
    assert torch.equal(got["w"], tensors["fc.weight"][:2])
    assert torch.equal(got["fc.bias"], tensors["fc.bias"] * 2)
    assert spies == {"copied": 0, "pread": 1}  # the bias is read whole; the region is sliced


@pytest.mark.parametrize("broken", [(), ("copy_file_range",), ("copy_file_range", "sendfile")])
def test_kernel_copy_falls_back_to_read_and_write(tmp_path, monkeypatch, broken):
    monkeypatch.setattr(byteranges, "_unsupported", set(broken))
    data = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "src").write_bytes(b"head" + data)
    src = os.open(tmp_path / "src", os.O_RDONLY)
    dst = os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT)
    try:
        os.write(dst, b"xy")
        byteranges.copy_range(src, 4, len(data), dst)
    finally:
        os.close(src)
        os.close(dst)
    assert (tmp_path / "dst").read_bytes() == b"xy" + data


def test_an_unsupported_kernel_copy_is_remembered(tmp_path, monkeypatch):
    monkeypatch.setattr(byteranges, "_unsupported", set())

    def exdev(*args):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", exdev, raising=False)
    (tmp_path / "src").write_bytes(b"0123456789")
    src, dst = os.open(tmp_path / "src", os.O_RDONLY), os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT)
    try:
        byteranges.copy_range(src, 2, 5, dst)
    finally:
        os.close(src)
        os.close(dst)
    assert (tmp_path / "dst").read_bytes() == b"23456"
    assert byteranges._unsupported == {"copy_file_range"}


def test_a_truncated_source_is_an_error_not_a_short_file(tmp_path):
    (tmp_path / "src").write_bytes(b"0123")
    src, dst = os.open(tmp_path / "src", os.O_RDONLY), os.open(tmp_path / "dst", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError, match="source ended 6 bytes early"):
            byteranges.copy_range(src, 0, 10, dst)
    finally:
        os.close(src)
        os.close(dst)


# -- byte ranges of stored tensors -------------------------------------------------------


def torch_views() -> OrderedDict:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return OrderedDict(plain=torch.randn(3, 4), rows=base[1:3], transposed=base.t(), whole=base,
                       half=torch.ones(5, dtype=torch.bfloat16), scalar=torch.tensor(7), empty=torch.zeros(0))


@pytest.mark.parametrize("ext", [".safetensors", ".pt", "hf"])
def test_byte_ranges_hold_exactly_the_tensor(tmp_path, ext):
    tensors = torch_views()
    if ext == ".safetensors":
        path = tmp_path / "m.safetensors"
        save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(path))
    elif ext == ".pt":
        path = tmp_path / "m.pt"
        torch.save(tensors, path)
    else:
        path = tmp_path / "hf"
        path.mkdir()
        save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(path / "model.safetensors"))
    with open_checkpoint(path, field="src") as reader:
        for info in reader.inventory():
            where = reader.byte_range(info.key)
            if ext == ".pt" and info.key == "transposed":
                assert where is None, info.key  # not stored contiguously
                continue
            assert where.length == info.nbytes
            value = byteranges.read_range(where, info.dtype, info.shape)
            assert bit_equal(value, tensors[info.key].contiguous()), info.key
            assert bit_equal(reader.read(info.key), tensors[info.key].contiguous()), info.key


def test_torch_files_that_are_not_little_endian_zips_have_no_byte_ranges(tmp_path):
    legacy = tmp_path / "legacy.pt"
    torch.save({"a": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    with open_checkpoint(legacy, field="src") as reader:
        assert reader.byte_range("a") is None
    modern = tmp_path / "m.pt"
    torch.save({"a": torch.ones(3)}, modern)
    with open_checkpoint(modern, field="src") as reader:
        assert reader.byte_range("a") is not None
    # torch itself crashes loading a big-endian file here: check the zip scan alone.
    big_endian = tmp_path / "be.pt"
    with zipfile.ZipFile(modern) as zin, zipfile.ZipFile(big_endian, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            zout.writestr(item, b"big" if item.filename.endswith("/byteorder") else zin.read(item))
    meta = torch.load(modern, map_location="meta", weights_only=True)
    for path, found in ((modern, True), (big_endian, False)):
        file = OpenFile(path)
        assert (torch_file._byte_ranges(file, meta).get("a") is not None) is found
        file.close()


def test_writer_copy_checks_order_and_length(tmp_path):
    (tmp_path / "data").write_bytes(bytes(range(16)))
    infos = [TensorInfo("a", (2,), "float32"), TensorInfo("b", (8,), "uint8")]
    data = OpenFile(tmp_path / "data")
    for name in ("m.safetensors", "m.pt"):
        writer = open_writer(tmp_path / name, infos, {})
        with pytest.raises(RuntimeError, match=r"expected 'a' next \(declared order\), got 'b'"):
            writer.copy("b", ByteRange(data.path, data.fd, 0, 8))
        with pytest.raises(RuntimeError, match="'a' needs 8 bytes, the source range has 4"):
            writer.copy("a", ByteRange(data.path, data.fd, 0, 4))
        writer.copy("a", ByteRange(data.path, data.fd, 0, 8))
        writer.write("b", torch.arange(8, dtype=torch.uint8))
        writer.close()
        with open_checkpoint(tmp_path / name, field="x") as reader:
            assert bit_equal(reader.read("a"), torch.frombuffer(bytearray(range(8)), dtype=torch.float32))
            assert torch.equal(reader.read("b"), torch.arange(8, dtype=torch.uint8))
    data.close()


def test_small_writes_are_gathered_and_large_ones_go_through(tmp_path):
    tensors = {f"t{i}": torch.full((i + 1,), float(i)) for i in range(50)}
    tensors["big"] = torch.randn(600, 1000)  # > the 1 MiB buffer
    tensors["after"] = torch.ones(3)
    infos = [TensorInfo(k, tuple(v.shape), dtype_name(v.dtype)) for k, v in tensors.items()]
    with open_writer(tmp_path / "m.safetensors", infos, {}) as writer:
        for key, value in tensors.items():
            writer.write(key, value)
    got = load_file(str(tmp_path / "m.safetensors"))
    assert all(torch.equal(got[k], v) for k, v in tensors.items())


def test_writer_replaces_what_was_in_its_file(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"x" * 10_000)
    with open_writer(path, [TensorInfo("a", (1,), "float32")], {}) as writer:
        writer.write("a", torch.ones(1))
    assert load_file(str(path))["a"].tolist() == [1.0]


# -- outputs -----------------------------------------------------------------------------


def test_torch_output_still_works(tmp_path):
    tensors = source_tensors()
    src = tmp_path / "src.safetensors"
    save_file(tensors, str(src))
    plan = torchgraft.plan(extraction(src))
    out = torchgraft.execute(plan, tmp_path / "out.pt")
    loaded = torch.load(out, weights_only=True)
    assert loaded._metadata["__metadata__"]["torchgraft.plan_sha256"] == plan.sha256
    for key, value in renamed(tensors).items():
        assert bit_equal(loaded[key], value), key


def test_check_output_names_every_accepted_form(tmp_path):
    with pytest.raises(OutputError) as e:
        check_output(tmp_path / "m.bin", False)
    assert str(e.value) == (f"output.path: {tmp_path / 'm.bin'}: unsupported extension '.bin' "
                            "(use .safetensors, .pt or .pth, .dcp for a DCP folder, or no extension for a model directory)")
    check_output(tmp_path / "model-dir", False)  # a directory output
    (tmp_path / "model-dir").mkdir()
    with pytest.raises(OutputError, match="already exists"):
        check_output(tmp_path / "model-dir", False)


# -- progress ----------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_logs_plain_lines_when_not_on_a_terminal(caplog):
    clock = Clock()
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="torchgraft.execution.progress"):
        with Progress(4 * 2**30, "writing model.safetensors", stream=stream, interval=15, clock=clock) as progress:
            clock.now += 5
            progress.update(2**30)  # before the first interval: quiet
            clock.now += 11
            progress.update(2**30)
            clock.now += 1
            progress.update(2**30)  # within the interval: quiet
    assert [r.getMessage() for r in caplog.records] == [
        "writing model.safetensors: 2.0 GiB of 4.0 GiB (50%), 128.0 MiB/s"]
    assert stream.getvalue() == ""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_a_bar_on_a_terminal(caplog):
    stream = Terminal()
    with caplog.at_level(logging.INFO, logger="torchgraft.execution.progress"):
        with Progress(3 * 2**20, "writing m.safetensors", stream=stream, delay=0) as progress:
            for _ in range(3):
                progress.update(2**20)
    assert "writing m.safetensors" in stream.getvalue() and " of 3.0 MiB (" in stream.getvalue()
    assert "MB" not in stream.getvalue()  # the units of every other size torchgraft prints
    assert caplog.records == []


def test_execute_shows_no_bar_and_logs_nothing_for_a_quick_run(tmp_path, caplog):
    src = tmp_path / "src.safetensors"
    save_file(source_tensors(), str(src))
    with caplog.at_level(logging.INFO, logger="torchgraft.execution.progress"):
        torchgraft.execute(torchgraft.plan(extraction(src)), tmp_path / "out.safetensors")
    assert caplog.records == []


def test_patching_a_base_copies_its_kept_tensors_as_bytes(tmp_path, spies):
    tensors = source_tensors()
    base = tmp_path / "base.safetensors"
    save_file(tensors, str(base))
    save_file({"model.layers.0.w": torch.ones(6, 4)}, str(tmp_path / "fix.safetensors"))
    recipe = {"sources": {"base": str(base), "fix": str(tmp_path / "fix.safetensors")}, "target": None,
              "base": "base", "rules": [{"from": "fix"}], "policy": {"unassigned": "keep"}}
    got = load_file(str(torchgraft.execute(torchgraft.plan(recipe), tmp_path / "out.safetensors")))
    assert torch.equal(got["model.layers.0.w"], torch.ones(6, 4))
    for key, value in tensors.items():
        if key != "model.layers.0.w":
            assert bit_equal(got[key], value), key
    assert spies == {"copied": len(tensors), "pread": 0}
