"""DCP folders as outputs, judged by torch.distributed.checkpoint's own loader."""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import torchgraft
from conftest import dcp
from torchgraft.checkpoints import open_checkpoint


@pytest.fixture
def source(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"model.layers.0.weight": torch.randn(6, 4, generator=g), "model.layers.1.weight": torch.randn(6, 4, generator=g),
               "model.norm.weight": torch.randn(4, generator=g).to(torch.bfloat16), "model.step": torch.tensor(3)}
    path = tmp_path / "src.safetensors"
    save_file(tensors, path)
    return path, tensors


def _recipe(path, **output):
    return {"sources": {"hf": str(path)}, "target": None,
            "rules": [{"from": "hf", "rename": {"model.layers.{i}": "layers.{i}", "model.norm": "norm", "model.step": "step"}}],
            "output": output}


def test_a_dcp_output_loads_with_dcp_load_equal_to_the_plan(source, tmp_path):
    path, tensors = source
    out = torchgraft.execute(torchgraft.plan(_recipe(path, dtype="float16")), tmp_path / "step-3.dcp")
    assert (out / ".metadata").is_file()
    loaded = {"layers.0.weight": torch.empty(6, 4, dtype=torch.float16), "layers.1.weight": torch.empty(6, 4, dtype=torch.float16),
              "norm.weight": torch.empty(4, dtype=torch.float16), "step": torch.empty((), dtype=torch.int64)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(loaded, checkpoint_id=str(out), no_dist=True)
    assert torch.equal(loaded["layers.1.weight"], tensors["model.layers.1.weight"].half())
    assert torch.equal(loaded["norm.weight"], tensors["model.norm.weight"].half())
    assert int(loaded["step"]) == 3
    with open_checkpoint(out, field="x") as reader:
        assert reader.metadata()["torchgraft.plan_sha256"] == torchgraft.plan(_recipe(path, dtype="float16")).sha256


def test_a_dcp_output_round_trips_to_safetensors(source, tmp_path):
    path, tensors = source
    dcp_out = torchgraft.execute(torchgraft.plan(_recipe(path)), tmp_path / "ckpt.dcp")
    back = {"sources": {"titan": str(dcp_out)}, "target": None,
            "rules": [{"from": "titan", "rename": {"layers.{i}": "model.layers.{i}", "norm": "model.norm", "step": "model.step"}}]}
    again = load_file(torchgraft.execute(torchgraft.plan(back), tmp_path / "again.safetensors"))
    assert set(again) == set(tensors)
    assert all(torch.equal(again[k], v) for k, v in tensors.items())


def test_overwriting_a_dcp_output_replaces_only_what_torchgraft_wrote(source, tmp_path):
    path, _ = source
    out = torchgraft.execute(torchgraft.plan(_recipe(path)), tmp_path / "ckpt.dcp")
    torchgraft.execute(torchgraft.plan(_recipe(path, dtype="float16")), out, overwrite=True)
    with open_checkpoint(out, field="x") as reader:
        assert {t.dtype for t in reader.inventory()} == {"float16", "int64"}
