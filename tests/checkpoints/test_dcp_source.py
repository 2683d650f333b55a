"""DCP folders as sources: read through a restricted unpickler, judged against what
``torch.distributed.checkpoint`` itself saved."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import torchgraft
from conftest import dcp
from torchgraft.checkpoints import open_checkpoint
from torchgraft.core.errors import GraftError

FIELD = "sources.titan"


def _state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {
            "tok_embeddings.weight": torch.randn(10, 4, generator=g),
            "layers.0.attention.wq.weight": torch.randn(4, 4, generator=g).to(torch.bfloat16),
            "norm.weight": torch.ones(4),
        },
        "optimizer": {"state": {"0": {"exp_avg": torch.zeros(3)}}},
        "step": 7,
    }


@pytest.fixture
def saved(tmp_path) -> tuple[Path, dict]:
    state = _state()
    folder = tmp_path / "step-7"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "assuming ... a single process": it is meant
        dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    return folder, state


def test_a_dcp_folder_is_detected_and_read_with_its_nested_key(saved):
    folder, state = saved
    with open_checkpoint(folder, key="model", field=FIELD) as reader:
        assert reader.format == "dcp"
        assert [(t.key, t.shape, t.dtype) for t in reader.inventory()] == [
            ("tok_embeddings.weight", (10, 4), "float32"),
            ("layers.0.attention.wq.weight", (4, 4), "bfloat16"),
            ("norm.weight", (4,), "float32"),
        ]
        for key, value in state["model"].items():
            assert torch.equal(reader.read(key), value)
        assert torch.equal(reader.read("tok_embeddings.weight", (slice(2, 5),)), state["model"]["tok_embeddings.weight"][2:5])


def test_a_dcp_source_converts_to_safetensors_with_equal_tensors(saved, tmp_path):
    folder, state = saved
    recipe = {"sources": {"titan": {"path": str(folder), "key": "model"}}, "target": None,
              "rules": [{"from": "titan", "rename": {"layers.{i}.attention.wq": "model.layers.{i}.self_attn.q_proj"}}]}
    out = torchgraft.execute(torchgraft.plan(recipe), tmp_path / "out.safetensors")
    written = load_file(out)
    assert set(written) == {"tok_embeddings.weight", "model.layers.0.self_attn.q_proj.weight", "norm.weight"}
    assert torch.equal(written["model.layers.0.self_attn.q_proj.weight"], state["model"]["layers.0.attention.wq.weight"])
    assert torch.equal(written["tok_embeddings.weight"], state["model"]["tok_embeddings.weight"])


def test_the_fingerprint_covers_the_data_files(saved):
    folder, _ = saved
    with open_checkpoint(folder, field=FIELD) as reader:
        before = reader.fingerprint()
    data = next(folder.glob("*.distcp"))
    later = os.stat(folder / ".metadata").st_mtime_ns + 10**9
    os.utime(data, ns=(later, later))  # the data changed after the metadata was written
    with open_checkpoint(folder, field=FIELD) as reader:
        after = reader.fingerprint()
    assert before["mtime_ns"] != after["mtime_ns"]
    assert before["header_sha256"] == after["header_sha256"]


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_metadata_pickle_that_would_run_code_is_refused_and_runs_nothing(saved, tmp_path):
    folder, _ = saved
    marker = tmp_path / "pwned"
    (folder / ".metadata").write_bytes(pickle.dumps({"x": _RunsCode(str(marker))}))
    with pytest.raises(GraftError) as err:
        open_checkpoint(folder, field=FIELD)
    assert str(err.value) == (f"{FIELD}: {folder}: .metadata refers to posix.system, which DCP metadata does not hold "
                              "(refused: unpickling it could run code)")
    assert not marker.exists()


@pytest.mark.parametrize("payload, reason", [
    (b"not a pickle", "not a readable pickle"),
    (pickle.dumps({"a": 1}), "does not hold a torch.distributed.checkpoint Metadata object"),
])
def test_malformed_metadata_is_one_line(saved, payload, reason):
    folder, _ = saved
    (folder / ".metadata").write_bytes(payload)
    with pytest.raises(GraftError, match=reason):
        open_checkpoint(folder, field=FIELD)


def test_a_chunk_naming_a_file_outside_the_folder_is_refused(saved):
    folder, _ = saved
    raw = (folder / ".metadata").read_bytes()
    name = next(folder.glob("*.distcp")).name
    (folder / ".metadata").write_bytes(raw.replace(name.encode(), b"../" + name.encode()[3:]))
    with pytest.raises(GraftError, match="not a plain file name inside the folder"):
        open_checkpoint(folder, field=FIELD)


SHARDED_SAVE = textwrap.dedent("""
    import sys, torch, torch.distributed as dist, torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    full = torch.arange(48, dtype=torch.float32).reshape(8, 6)
    dcp.save({"model": {"w": distribute_tensor(full, mesh, [Shard(0)]), "b": torch.ones(3)}}, checkpoint_id=sys.argv[1])
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_a_tensor_sharded_across_two_ranks_reads_back_whole(tmp_path):
    script = tmp_path / "save.py"
    script.write_text(SHARDED_SAVE)
    folder = tmp_path / "sharded"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(script), str(folder)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with open_checkpoint(folder, key="model", field=FIELD) as reader:
        assert len(list(reader.chunks("w"))) == 2  # one chunk per rank
        assert torch.equal(reader.read("w"), torch.arange(48, dtype=torch.float32).reshape(8, 6))
        assert torch.equal(reader.read("w", (slice(3, 6),)), torch.arange(48, dtype=torch.float32).reshape(8, 6)[3:6])
