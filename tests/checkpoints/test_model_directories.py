"""Model directories: HF-style sharded output with its index, copied non-tensor files,
HF directory sources, and publishing a whole directory atomically."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import torchgraft
from conftest import REFERENCE_LIBRARIES
from torchgraft.checkpoints.atomic import atomic_directory
from torchgraft.checkpoints.sharded import split
from torchgraft.core.errors import DriftError, OutputError, PlanError, RecipeError
from torchgraft.core.tensors import TensorInfo

KiB = 1024


def tensors(n: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """``n`` 4 KiB float32 tensors, then one int64 and one bool."""
    g = torch.Generator().manual_seed(seed)
    out = {f"model.layers.{i}.weight": torch.randn(32, 32, generator=g) for i in range(n)}
    out["model.step"] = torch.tensor(3)
    out["model.mask"] = torch.tensor([True, False, True])
    return out


def recipe(src, **output) -> dict:
    return {"sources": {"src": str(src)}, "target": None, "output": output,
            "rules": [{"from": "src", "rename": {"model.layers.{i}": "blocks.{i}"}}]}


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "src.safetensors"
    save_file(tensors(), str(path))
    return path


def read_directory(directory) -> dict[str, torch.Tensor]:
    """A sharded directory read the way transformers does: the index, then each shard."""
    index = directory / "model.safetensors.index.json"
    if not index.exists():
        return load_file(str(directory / "model.safetensors"))
    weight_map = json.loads(index.read_text())["weight_map"]
    out = {}
    for name in sorted(set(weight_map.values())):
        with safe_open(str(directory / name), "pt") as f:
            for key in f.keys():
                assert key not in out, key  # every tensor once
                out[key] = f.get_tensor(key)
    assert set(out) == set(weight_map)
    return out


def test_sharded_output_has_the_index_and_equals_the_single_file(tmp_path, source):
    plan = torchgraft.plan(recipe(source, shard_size="10KiB"))
    out = torchgraft.execute(plan, tmp_path / "model")
    single = load_file(str(torchgraft.execute(torchgraft.plan(recipe(source)), tmp_path / "one.safetensors")))
    names = [f"model-0000{i}-of-00005.safetensors" for i in range(1, 6)]
    assert sorted(os.listdir(out)) == names + ["model.safetensors.index.json"]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    # In source file order: the int64 first (save_file sorts by alignment), then pairs
    # of 4 KiB tensors, the bool last.
    expected_map = {f"blocks.{i}.weight": names[i // 2] for i in range(10)}
    expected_map.update({"model.step": names[0], "model.mask": names[4]})
    assert index == {"metadata": {"total_size": 10 * 4 * KiB + 8 + 3}, "weight_map": expected_map}
    for name in names:
        with safe_open(str(out / name), "pt") as f:
            data = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())
            assert data <= 10 * KiB
            assert f.metadata()["torchgraft.plan_sha256"] == plan.sha256
    got = read_directory(out)
    assert got.keys() == single.keys()
    assert all(torch.equal(got[k], single[k]) for k in single)


def test_a_tensor_larger_than_the_shard_size_gets_a_shard_of_its_own():
    infos = [TensorInfo("a", (1,), "float32"), TensorInfo("big", (100,), "float32"),
             TensorInfo("b", (1,), "float32"), TensorInfo("c", (1,), "float32")]
    assert [[i.key for i in g] for g in split(infos, 8)] == [["a"], ["big"], ["b", "c"]]
    assert [[i.key for i in g] for g in split(infos, None)] == [["a", "big", "b", "c"]]
    assert split([], 8) == [[]]


def test_a_directory_that_fits_in_one_shard_is_one_model_file(tmp_path, source):
    out = torchgraft.execute(torchgraft.plan(recipe(source, shard_size="5GB")), tmp_path / "model")
    assert os.listdir(out) == ["model.safetensors"]
    out = torchgraft.execute(torchgraft.plan(recipe(source)), tmp_path / "plain")  # no shard size
    assert os.listdir(out) == ["model.safetensors"]
    assert read_directory(out).keys() == load_file(str(source)).keys() - {f"model.layers.{i}.weight" for i in range(10)} \
        | {f"blocks.{i}.weight" for i in range(10)}


def test_sharding_needs_a_directory_path(tmp_path, source):
    with pytest.raises(RecipeError) as e:
        torchgraft.plan(recipe(source, shard_size="1MB", path=str(tmp_path / "model.safetensors")))
    assert str(e.value) == (f"output.path: {tmp_path / 'model.safetensors'}: output.shard_size needs a model "
                            f"directory as output; give a path without an extension (e.g. {tmp_path / 'model'})")
    plan = torchgraft.plan(recipe(source, shard_size="1MB"))
    with pytest.raises(OutputError) as e:
        torchgraft.execute(plan, tmp_path / "m.pt")
    assert e.value.message == (f"{tmp_path / 'm.pt'}: output.shard_size needs a model directory as output; "
                               f"give a path without an extension (e.g. {tmp_path / 'm'})")
    assert sorted(os.listdir(tmp_path)) == ["src.safetensors"]


# -- HF directory sources ----------------------------------------------------------------


def write_hf(directory, state: dict, *, ext: str = "safetensors") -> None:
    """A hand-written HF directory (transformers is not installed): three shards + index."""
    directory.mkdir()
    keys = list(state)
    weight_map = {}
    for i in range(3):
        name = f"model-0000{i + 1}-of-00003.{ext}"
        part = {k: state[k] for k in keys[i::3]}
        save_file(part, str(directory / name)) if ext == "safetensors" else torch.save(part, directory / name)
        weight_map.update(dict.fromkeys(part, name))
    index = "model.safetensors.index.json" if ext == "safetensors" else "pytorch_model.bin.index.json"
    (directory / index).write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": weight_map}))
    (directory / "config.json").write_text('{"model_type": "tiny"}')
    (directory / "tokenizer.json").write_text('{"version": "1.0"}')
    (directory / "tokenizer_config.json").write_text("{}")
    (directory / "README.md").write_text("# the source model's card")
    (directory / ".gitattributes").write_text("*.safetensors filter=lfs")


@pytest.mark.parametrize("ext", ["safetensors", "bin"])
def test_hf_directory_source_plans_and_executes(tmp_path, ext):
    state = tensors(7)
    write_hf(tmp_path / "hf", state, ext=ext)
    plan = torchgraft.plan(recipe(tmp_path / "hf", shard_size="12KiB"))
    assert plan.sources[0].format == "hf"
    out = torchgraft.execute(plan, tmp_path / "out")
    got = read_directory(out)
    assert got.keys() == {k.replace("model.layers.", "blocks.") for k in state}
    for key, value in state.items():
        assert torch.equal(got[key.replace("model.layers.", "blocks.")], value), key


def test_copy_files_copies_the_non_tensor_files_of_a_model_directory(tmp_path):
    write_hf(tmp_path / "hf", tensors(3))
    plan = torchgraft.plan(recipe(tmp_path / "hf", copy_files="src"))
    assert [f.name for f in plan.layout.files] == ["config.json", "tokenizer.json", "tokenizer_config.json"]
    assert plan.layout.files[0].size == len('{"model_type": "tiny"}')
    out = torchgraft.execute(plan, tmp_path / "out")
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert (out / "config.json").read_text() == '{"model_type": "tiny"}'
    data = plan.to_dict()["output"]
    assert data["shard_size"] is None and [f["name"] for f in data["files"]] == [f.name for f in plan.layout.files]
    assert torchgraft.plan(recipe(tmp_path / "hf", copy_files={"from": "src", "files": ["tok*", "README.md"]})
                           ).layout.files[0].name == "README.md"


def test_copy_files_errors(tmp_path, source):
    write_hf(tmp_path / "hf", tensors(3))

    def error(copy, cls=PlanError, src=None):
        with pytest.raises(cls) as e:
            torchgraft.plan(recipe(src or tmp_path / "hf", copy_files=copy))
        return str(e.value)

    assert error({"from": "src", "files": ["vocab*"]}) == (
        f"output.copy_files.files[0]: 'vocab*' matches no file in {tmp_path / 'hf'}")
    assert error({"from": "src", "files": ["config.json", "model-*"]}) == (
        "output.copy_files.files[1]: 'model-*' matches model-00001-of-00003.safetensors, a checkpoint file "
        "(torchgraft writes the output's tensors itself)")
    assert error("src", src=source) == (
        "output.copy_files: source 'src' is a safetensors file; files are copied from a model directory (format hf)")
    with pytest.raises(RecipeError) as e:
        torchgraft.plan(recipe(tmp_path / "hf", copy_files="src", path=str(tmp_path / "m.safetensors")))
    assert str(e.value).startswith(f"output.path: {tmp_path / 'm.safetensors'}: output.copy_files needs a model directory")


def test_a_copied_file_that_changed_after_planning_is_refused(tmp_path):
    write_hf(tmp_path / "hf", tensors(3))
    plan = torchgraft.plan(recipe(tmp_path / "hf", copy_files="src"))
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "other"}')
    with pytest.raises(DriftError) as e:
        torchgraft.execute(plan, tmp_path / "out")
    assert str(e.value) == (f"output.copy_files: {tmp_path / 'hf' / 'config.json'} changed since the plan "
                            "was made (size or sha256 differ)")
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # nothing published, no temporary left


# -- publishing a directory --------------------------------------------------------------

REPLACEABLE = re.compile(r"model\.safetensors|config\.json")


def test_directory_is_published_whole_or_not_at_all(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt), atomic_directory(out, overwrite=False, replaceable=REPLACEABLE) as tmp:
        (tmp / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []
    with atomic_directory(out, overwrite=False, replaceable=REPLACEABLE) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".model.tmp-")
        (tmp / "model.safetensors").write_bytes(b"first")
        assert not out.exists()
    assert os.listdir(out) == ["model.safetensors"]
    with pytest.raises(OutputError) as e, atomic_directory(out, overwrite=False, replaceable=REPLACEABLE):
        pass
    assert e.value.message == f"{out}: already exists (set output.overwrite=true to replace it)"


def test_overwrite_replaces_only_what_torchgraft_wrote(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"old")
    with atomic_directory(out, overwrite=True, replaceable=REPLACEABLE) as tmp:
        (tmp / "model.safetensors").write_bytes(b"new")
        (tmp / "config.json").write_text("{}")
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["model"]
    (out / "notes.txt").write_text("mine")
    (out / "runs").mkdir()
    with pytest.raises(OutputError) as e, atomic_directory(out, overwrite=True, replaceable=REPLACEABLE):
        pass
    assert e.value.message == f"{out}: not replaced, it holds files torchgraft did not write (notes.txt, runs)"
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError) as e, atomic_directory(tmp_path / "file", overwrite=True, replaceable=REPLACEABLE):
        pass
    assert e.value.message == f"{tmp_path / 'file'}: exists and is not a directory (a model directory never replaces it)"
    assert sorted(os.listdir(tmp_path)) == ["file", "model"]


def test_execute_overwrites_an_earlier_sharded_output(tmp_path, source):
    out = torchgraft.execute(torchgraft.plan(recipe(source, shard_size="10KiB")), tmp_path / "model")
    assert len(os.listdir(out)) == 6
    torchgraft.execute(torchgraft.plan(recipe(source, shard_size="20KiB")), out, overwrite=True)
    assert len(os.listdir(out)) == 4  # three shards and the index; nothing left of the first run
    assert sorted(os.listdir(tmp_path)) == ["model", "src.safetensors"]


def test_a_failure_mid_write_leaves_no_directory(tmp_path, source, monkeypatch):
    plan = torchgraft.plan(recipe(source, shard_size="10KiB"))
    import torchgraft.checkpoints.sharded as sharded

    calls = []
    original = sharded.SafetensorsWriter.__init__

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        original(self, *args, **kwargs)

    monkeypatch.setattr(sharded.SafetensorsWriter, "__init__", failing)
    with pytest.raises(OutputError, match=r"model: cannot write \(No space left on device, ENOSPC\)"):
        torchgraft.execute(plan, tmp_path / "model")
    assert sorted(os.listdir(tmp_path)) == ["src.safetensors"]


def test_graft_writes_a_sharded_directory_from_the_command_line(graft, tmp_path):
    result = graft("recipe=conv_only", "output.path=converted", "output.shard_size=100KB")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "converted"
    assert sorted(os.listdir(out)) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)] + [
        "model.safetensors.index.json"]
    size = sum(p.stat().st_size for p in out.iterdir())
    assert f"wrote converted (10 tensors, 240.6 KiB of tensor data, {size / 1024:.1f} KiB on disk) in " in result.stderr
    result = graft("recipe=conv_only", "output.shard_size=100KB", "dry_run=true")
    assert result.returncode == 1
    assert "error: output.path: " in result.stderr and "model.safetensors: output.shard_size needs a model directory" \
        in result.stderr


@REFERENCE_LIBRARIES
def test_a_sharded_model_directory_loads_with_from_pretrained(tmp_path):
    """The issue's promise: an HF directory written by torchgraft is a model transformers loads."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    torch.manual_seed(0)
    original = transformers.GPT2LMHeadModel(config).eval()
    original.save_pretrained(tmp_path / "gpt2")
    out = tmp_path / "copy"
    cfg = {"sources": {"hf": str(tmp_path / "gpt2")}, "target": None, "rules": [{"from": "hf"}],
           "output": {"shard_size": "40KB", "copy_files": "hf"}}
    torchgraft.execute(torchgraft.plan(cfg), out)
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1 and (out / "config.json").exists()
    loaded = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ids = torch.arange(10).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, original(ids).logits)
