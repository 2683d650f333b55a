"""Writers and atomic publishing: streamed safetensors, torch pickles, no partial outputs."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from torchgraft.checkpoints import atomic_output, final_name, open_checkpoint, open_writer
from torchgraft.checkpoints.writers import SafetensorsWriter, TorchWriter
from torchgraft.core.errors import OutputError
from torchgraft.core.tensors import TensorInfo, dtype_name

META = {"torchgraft.plan_sha256": "0" * 64, "format": "pt", "note": "ünïcode"}


def sample_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "emb.weight": torch.randn(6, 4, generator=g),
        "block.0.w": torch.randn(5, 3, generator=g).to(torch.bfloat16),
        "block.0.h": torch.randn(3, generator=g).to(torch.float16),
        "block.0.idx": torch.randint(0, 1000, (7,), generator=g),
        "mask": torch.rand(3, 2, generator=g) > 0.5,  # 6 bytes: later tensors misaligned
        "bytes": torch.randint(0, 255, (5,), generator=g, dtype=torch.uint8),
        "f8": torch.randn(4, generator=g).to(torch.float8_e4m3fn),
        "scale": torch.tensor(1.25),
        "count": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 3),
        "empty.bf16": torch.zeros(2, 0, dtype=torch.bfloat16),
        "f64": torch.randn(2, 2, generator=g, dtype=torch.float64),
    }


def infos_of(tensors: dict[str, torch.Tensor]) -> list[TensorInfo]:
    return [TensorInfo(k, tuple(t.shape), dtype_name(t.dtype)) for k, t in tensors.items()]


def write_all(path: Path, tensors: dict, metadata: dict | None = None) -> Path:
    writer = open_writer(path, infos_of(tensors), metadata or {})
    for key, tensor in tensors.items():
        writer.write(key, tensor)
    writer.close()
    return path


def bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """torch.equal, also for dtypes without comparison kernels (fp8)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


# -- streaming safetensors --------------------------------------------------------------


def test_streamed_safetensors_equals_save_file(tmp_path):
    tensors = sample_tensors()
    ours = write_all(tmp_path / "ours.safetensors", tensors, META)
    ref = tmp_path / "ref.safetensors"
    save_file(tensors, str(ref), metadata=META)
    got, want = load_file(str(ours)), load_file(str(ref))
    assert got.keys() == want.keys() == tensors.keys()
    for key in tensors:
        assert bit_equal(got[key], want[key]), key
        assert bit_equal(got[key], tensors[key]), key
    with safe_open(str(ours), "pt") as f:
        assert f.metadata() == META
        assert set(f.keys()) == set(tensors)
        for key in tensors:
            assert bit_equal(f.get_tensor(key), tensors[key])
    with open_checkpoint(ours, field="x") as reader:
        assert reader.inventory() == infos_of(tensors)  # data in the declared order
        assert reader.metadata() == META


def test_header_is_padded_to_a_multiple_of_8(tmp_path):
    for n in range(1, 9):  # vary the key length so every padding amount occurs
        tensors = {"k" * n: torch.ones(1)}
        raw = write_all(tmp_path / f"{n}.safetensors", tensors).read_bytes()
        (size,) = struct.unpack("<Q", raw[:8])
        assert size % 8 == 0
        assert raw[8:8 + size].rstrip(b" ").endswith(b"}")
        assert len(raw) == 8 + size + 4


def test_no_metadata_and_no_tensors(tmp_path):
    path = write_all(tmp_path / "empty.safetensors", {})
    with safe_open(str(path), "pt") as f:
        assert list(f.keys()) == []
        assert f.metadata() is None


def test_non_contiguous_and_parameter_inputs(tmp_path):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {"t": base.t(), "cols": base[:, 1:3], "p": torch.nn.Parameter(torch.ones(2))}
    for name in ("a.safetensors", "a.pt"):
        path = write_all(tmp_path / name, tensors)
        with open_checkpoint(path, field="x") as reader:
            for key, want in tensors.items():
                assert torch.equal(reader.read(key), want.detach())


@pytest.mark.parametrize("ext", [".safetensors", ".pt"])
def test_writer_refuses_what_was_not_declared(tmp_path, ext):
    infos = [TensorInfo("a", (2,), "float32"), TensorInfo("b", (), "int64")]

    def writer():
        return open_writer(tmp_path / f"m{ext}", infos, {})

    w = writer()
    with pytest.raises(RuntimeError, match=r"expected 'a' next \(declared order\), got 'b'"):
        w.write("b", torch.tensor(1))
    w.abort()
    w = writer()
    with pytest.raises(RuntimeError, match=r"'a' was declared with shape \[2\], got \[3\]"):
        w.write("a", torch.ones(3))
    w.abort()
    w = writer()
    with pytest.raises(RuntimeError, match="'a' was declared as float32, got bfloat16"):
        w.write("a", torch.ones(2, dtype=torch.bfloat16))
    w.abort()
    w = writer()
    w.write("a", torch.ones(2))
    with pytest.raises(RuntimeError, match=r"closed after 1 of 2 declared tensors; 'b'"):
        w.close()
    w = writer()
    w.write("a", torch.ones(2))
    w.write("b", torch.tensor(3))
    with pytest.raises(RuntimeError, match="'c' was not declared"):
        w.write("c", torch.ones(1))
    w.close()
    with pytest.raises(RuntimeError, match="after close"):
        w.write("a", torch.ones(2))
    with pytest.raises(RuntimeError, match="declared twice"):
        open_writer(tmp_path / f"d{ext}", infos + infos[:1], {})


def test_writer_as_context_manager_does_not_mask_errors(tmp_path):
    infos = [TensorInfo("a", (2,), "float32")]
    with pytest.raises(KeyError), open_writer(tmp_path / "m.safetensors", infos, {}):
        raise KeyError("the real error")


# -- torch ------------------------------------------------------------------------------


def test_torch_writer_round_trip_with_metadata(tmp_path):
    tensors = sample_tensors()
    path = write_all(tmp_path / "m.pt", tensors, META)
    loaded = torch.load(path, weights_only=True)
    assert list(loaded) == list(tensors)
    for key in tensors:
        assert bit_equal(loaded[key], tensors[key])
    assert loaded._metadata == {"__metadata__": META}
    with open_checkpoint(path, field="x") as reader:
        assert reader.metadata() == META
        assert reader.inventory() == infos_of(tensors)


def test_torch_metadata_does_not_change_how_a_model_loads(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    sd = model.state_dict()
    path = write_all(tmp_path / "m.pth", dict(sd), META)
    fresh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    result = fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in sd.items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_torch_writer_saves_only_a_views_own_bytes(tmp_path):
    big = torch.zeros(1000, 1000)
    path = write_all(tmp_path / "m.pt", {"row": big[3:4]})
    assert path.stat().st_size < 100_000
    assert torch.equal(torch.load(path, weights_only=True)["row"], big[3:4])


# -- choosing a writer ------------------------------------------------------------------


def test_open_writer_by_final_extension(tmp_path):
    infos = [TensorInfo("a", (1,), "float32")]
    for name, cls in [("m.safetensors", SafetensorsWriter), ("m.pt", TorchWriter),
                      ("m.pth", TorchWriter), (".m.safetensors.tmp-0a1b2c3d", SafetensorsWriter),
                      (".m.pt.tmp-deadbeef", TorchWriter)]:
        writer = open_writer(tmp_path / name, infos, {})
        assert type(writer) is cls, name
        writer.abort()
    for name, ext in [("m.npz", ".npz"), ("model", ""), (".m.bin.tmp-0a1b2c3d", ".bin")]:
        with pytest.raises(OutputError) as e:
            open_writer(tmp_path / name, infos, {})
        assert e.value.field == "output.path"
        assert e.value.message == (f"{final_name(Path(name))}: unsupported extension '{ext}' "
                                   "(use .safetensors, .pt or .pth)")


def test_atomic_output_and_writer_together(tmp_path):
    tensors = sample_tensors()
    out = tmp_path / "run" / "model.safetensors"
    with atomic_output(out, overwrite=False) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".model.safetensors.tmp-")
        write_all(tmp, tensors, META)
        assert not out.exists()
    assert os.listdir(out.parent) == ["model.safetensors"]
    with open_checkpoint(out, field="x") as reader:
        assert reader.metadata() == META


# -- atomic_output ----------------------------------------------------------------------


def test_existing_output_is_refused_and_untouched(tmp_path):
    out = tmp_path / "model.pt"
    out.write_bytes(b"precious")
    with pytest.raises(OutputError) as e, atomic_output(out, overwrite=False) as tmp:
        tmp.write_bytes(b"new")
    assert e.value.field == "output.path"
    assert e.value.message == f"{out}: already exists (set output.overwrite=true to replace it)"
    assert out.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["model.pt"]


def test_a_file_appearing_meanwhile_is_not_replaced(tmp_path):
    out = tmp_path / "model.pt"
    with pytest.raises(OutputError, match="already exists"), atomic_output(out, overwrite=False) as tmp:
        tmp.write_bytes(b"ours")
        out.write_bytes(b"someone else's")
    assert out.read_bytes() == b"someone else's"
    assert os.listdir(tmp_path) == ["model.pt"]


def test_overwrite_replaces(tmp_path):
    out = tmp_path / "model.pt"
    out.write_bytes(b"old")
    with atomic_output(out, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
        assert out.read_bytes() == b"old"
    assert out.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["model.pt"]


@pytest.mark.parametrize("exc", [ValueError, KeyboardInterrupt])
@pytest.mark.parametrize("overwrite", [False, True])
def test_an_error_inside_leaves_no_file_and_no_temp(tmp_path, exc, overwrite):
    out = tmp_path / "sub" / "model.safetensors"
    with pytest.raises(exc), atomic_output(out, overwrite=overwrite) as tmp:
        tmp.write_bytes(b"partial")
        raise exc("interrupted")
    assert not out.exists()
    assert os.listdir(out.parent) == []


def test_an_error_inside_keeps_the_old_file_when_overwriting(tmp_path):
    out = tmp_path / "model.pt"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(out, overwrite=True) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert out.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.pt"]


def test_published_file_gets_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    out = tmp_path / "model.pt"
    with atomic_output(out, overwrite=False) as tmp:
        tmp.write_bytes(b"x")
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_output_onto_a_directory(tmp_path):
    out = tmp_path / "model.pt"
    out.mkdir()
    with pytest.raises(OutputError) as e, atomic_output(out, overwrite=True) as tmp:
        tmp.write_bytes(b"x")
    assert e.value.message == f"{out}: is a directory"
    assert os.listdir(tmp_path) == ["model.pt"]


def test_final_name():
    assert final_name(Path("/a/.model.safetensors.tmp-0a1b2c3d")) == "model.safetensors"
    assert final_name(Path("/a/model.safetensors")) == "model.safetensors"
    assert final_name(Path(".hidden.pt")) == ".hidden.pt"


def _data_start(path: Path) -> int:
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def test_copied_tensors_keep_their_offset_within_a_page(tmp_path):
    """The output's data starts where the source's does within a page, so the kernel
    copies whole pages; the file stays valid and equal to the source, tensor for tensor."""
    import torchgraft

    generator = torch.Generator().manual_seed(0)
    state = {f"layers.{i}.weight": torch.randn(64, 64, generator=generator) for i in range(4)}
    src = tmp_path / "src.safetensors"
    save_file(state, src, metadata={"note": "x" * 1000})  # a header longer than ours
    recipe = {"sources": {"src": str(src)}, "target": None,
              "rules": [{"from": "src", "rename": {"layers.{i}": "blocks.{i}"}}]}
    out = torchgraft.execute(torchgraft.plan(recipe), tmp_path / "out.safetensors")
    assert _data_start(out) % 4096 == _data_start(src) % 4096
    assert _data_start(out) % 8 == 0
    got = load_file(out)
    assert all(torch.equal(got[f"blocks.{i}.weight"], state[f"layers.{i}.weight"]) for i in range(4))


def test_page_offset_pads_the_header_with_spaces_only(tmp_path):
    infos = [TensorInfo("w", (4,), "float32")]
    with open_writer(tmp_path / "a.safetensors", infos, {}, page_offset=1000) as writer:
        writer.write("w", torch.ones(4))
    assert _data_start(tmp_path / "a.safetensors") % 4096 == 1000
    raw = (tmp_path / "a.safetensors").read_bytes()[8:_data_start(tmp_path / "a.safetensors")]
    assert raw.rstrip(b" ").endswith(b"}") and set(raw[len(raw.rstrip(b" ")):]) == {0x20}
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("w"), torch.ones(4))
    with open_writer(tmp_path / "b.safetensors", infos, {}, page_offset=1001) as writer:  # not a multiple of 8
        writer.write("w", torch.ones(4))
    assert _data_start(tmp_path / "b.safetensors") % 8 == 0
