"""Targets as they are in real model code: factories instead of classes, nested
``_target_`` configs, and state-dict hooks that rename keys (torchtitan's fused qkv)."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import torchgraft
from torchgraft.core.errors import GraftError
from torchgraft.core.target import model_inventory


class FusedQKV(nn.Module):
    """One ``wqkv`` weight in memory, ``wq``/``wk``/``wv`` in its state dict, as torchtitan's
    ``FusedQKVLinear`` does: the hooks rename keys that no submodule has."""

    def __init__(self, dim: int = 8, q: int = 8, kv: int = 4):
        super().__init__()
        self.sizes = (q, kv, kv)
        self.wqkv = nn.Linear(dim, q + 2 * kv, bias=False)
        self.register_state_dict_post_hook(FusedQKV._split)
        self.register_load_state_dict_pre_hook(FusedQKV._fuse)

    @staticmethod
    def _split(module, state_dict, prefix, local_metadata):
        fused = state_dict.pop(prefix + "wqkv.weight")
        for name, part in zip(("wq", "wk", "wv"), fused.split(module.sizes)):
            state_dict[f"{prefix}{name}.weight"] = part

    @staticmethod
    def _fuse(module, state_dict, prefix, *args):
        names = [f"{prefix}{n}.weight" for n in ("wq", "wk", "wv")]
        if all(n in state_dict for n in names):
            state_dict[prefix + "wqkv.weight"] = torch.cat([state_dict.pop(n) for n in names])

    def forward(self, x):
        return self.wqkv(x)


class Block(nn.Module):
    def __init__(self, dim: int = 8, layers: int = 2):
        super().__init__()
        self.layers = nn.ModuleList([FusedQKV(dim) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)[..., :8]
        return self.norm(x)


def make_block(layers: int = 2) -> nn.Module:
    return Block(layers=layers)


def not_a_model(layers: int = 2) -> dict:
    return {"layers": layers}


class Config:
    def __init__(self, layers: int = 2):
        self.layers = layers


def from_config(config: Config) -> nn.Module:
    return Block(layers=config.layers)


@pytest.fixture(autouse=True)
def hooked_module(monkeypatch):
    module = types.ModuleType("hooked_mod")
    for obj in (FusedQKV, Block, make_block, not_a_model, Config, from_config):
        setattr(module, obj.__name__, obj)
    monkeypatch.setitem(sys.modules, "hooked_mod", module)


@pytest.fixture
def source(tmp_path):
    """A per-projection checkpoint (HF style), seeded."""
    torch.manual_seed(0)
    tensors = {}
    for i in range(2):
        for name, rows in (("q_proj", 8), ("k_proj", 4), ("v_proj", 4)):
            tensors[f"model.layers.{i}.attn.{name}.weight"] = torch.randn(rows, 8)
    tensors["model.norm.weight"] = torch.randn(8)
    tensors["model.norm.bias"] = torch.randn(8)
    path = tmp_path / "hf.safetensors"
    save_file(tensors, str(path))
    return str(path), tensors


def recipe(path: str, output: str, target: dict) -> dict:
    return {
        "sources": {"hf": path},
        "target": target,
        "rules": [
            {"from": "hf", "rename": {"model.layers.{i}.attn.q_proj": "layers.{i}.wq", "model.layers.{i}.attn.k_proj": "layers.{i}.wk",
                                      "model.layers.{i}.attn.v_proj": "layers.{i}.wv", "model": ""}},
        ],
        "output": {"path": output},
    }


def test_the_inventory_is_the_state_dict_with_its_renamed_keys():
    infos = model_inventory(Block())
    assert [(t.key, t.shape, t.kind, t.module_type) for t in infos][:3] == [
        ("layers.0.wq.weight", (8, 8), None, None),
        ("layers.0.wk.weight", (4, 8), None, None),
        ("layers.0.wv.weight", (4, 8), None, None),
    ]
    assert (infos[-1].key, infos[-1].kind, infos[-1].module_type) == ("norm.bias", "parameter", "torch.nn.modules.normalization.LayerNorm")


def test_a_hooked_target_plans_executes_verifies_and_loads(source, tmp_path):
    path, tensors = source
    plan = torchgraft.plan(recipe(path, str(tmp_path / "out.safetensors"), {"_target_": "hooked_mod.Block"}))
    assert [e.key for e in plan.entries][:3] == ["layers.0.wq.weight", "layers.0.wk.weight", "layers.0.wv.weight"]
    out = torchgraft.execute(plan, tmp_path / "out.safetensors")
    model = Block()
    model.load_state_dict(load_file(out), strict=True)  # through the model's own fusing hook
    fused = torch.cat([tensors[f"model.layers.1.attn.{n}.weight"] for n in ("q_proj", "k_proj", "v_proj")])
    assert torch.equal(model.layers[1].wqkv.weight, fused)
    x = torch.randn(3, 8)
    ref = Block()
    with torch.no_grad():
        for i, layer in enumerate(ref.layers):
            layer.wqkv.weight.copy_(torch.cat([tensors[f"model.layers.{i}.attn.{n}.weight"] for n in ("q_proj", "k_proj", "v_proj")]))
        ref.norm.weight.copy_(tensors["model.norm.weight"])
        ref.norm.bias.copy_(tensors["model.norm.bias"])
    assert torch.equal(model(x), ref(x))


def test_a_hooked_target_keeps_renamed_tensors_at_their_initial_values(source, tmp_path):
    path, _ = source
    spec = recipe(path, str(tmp_path / "out.safetensors"), {"_target_": "hooked_mod.Block"})
    spec["rules"][0]["exclude"] = ["model.layers.0.attn.v_proj.weight"]
    spec["keep"] = ["layers.0.wv"]
    plan = torchgraft.plan(spec)
    out = load_file(torchgraft.execute(plan, tmp_path / "out.safetensors"))
    torch.manual_seed(0)
    assert torch.equal(out["layers.0.wv.weight"], Block().state_dict()["layers.0.wv.weight"])


def test_a_factory_function_is_a_target(source, tmp_path):
    path, _ = source
    plan = torchgraft.plan(recipe(path, str(tmp_path / "out.safetensors"), {"_target_": "hooked_mod.make_block", "layers": 2}))
    assert len(plan.entries) == 8


def test_a_nested_target_builds_the_config_object_first(source, tmp_path):
    path, _ = source
    target = {"_target_": "hooked_mod.from_config", "config": {"_target_": "hooked_mod.Config", "layers": 2}}
    plan = torchgraft.plan(recipe(path, str(tmp_path / "out.safetensors"), target))
    assert plan.entries[-1].key == "norm.bias"


def test_a_factory_that_returns_no_module_is_refused(source, tmp_path):
    path, _ = source
    with pytest.raises(GraftError) as err:
        torchgraft.plan(recipe(path, str(tmp_path / "out.safetensors"), {"_target_": "hooked_mod.not_a_model"}))
    assert str(err.value) == "target._target_: 'hooked_mod.not_a_model' returned builtins.dict, not a torch.nn.Module"


def test_a_factory_argument_it_does_not_take_is_named(source, tmp_path):
    path, _ = source
    with pytest.raises(GraftError) as err:
        torchgraft.plan(recipe(path, str(tmp_path / "out.safetensors"), {"_target_": "hooked_mod.make_block", "layer": 2}))
    assert str(err.value) == "target.layer: hooked_mod.make_block has no argument 'layer' (did you mean 'layers'?)"


def test_per_module_init_refuses_a_renamed_key_by_name(source, tmp_path):
    path, _ = source
    spec = recipe(path, str(tmp_path / "out.safetensors"), {"_target_": "hooked_mod.Block"})
    spec["rules"][0]["exclude"] = ["model.layers.0.attn.v_proj.weight"]
    spec["keep"] = ["layers.0.wv"]
    spec["target_init"] = "per_module"
    with pytest.raises(GraftError) as err:
        torchgraft.plan(spec)
    assert str(err.value) == ("target_init: per_module cannot initialize 'layers.0.wv.weight': the model has no parameter "
                              "or buffer of that name (a custom state_dict?) (set target_init=full)")
