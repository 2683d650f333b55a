"""A bound variable as a region index: per-expert tensors stacked into one ``[E, ...]``
tensor and split back, with the checks on bound indices and the folded plan lines."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import torchgraft
from torchgraft.core.errors import GraftError


class Experts(nn.Module):
    def __init__(self, experts: int, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(experts, hidden, dim))
        self.w2 = nn.Parameter(torch.empty(experts, dim, hidden))
        self.w3 = nn.Parameter(torch.empty(experts, hidden, dim))


class Layer(nn.Module):
    def __init__(self, experts: int, dim: int, hidden: int):
        super().__init__()
        self.moe = nn.Module()
        self.moe.experts = Experts(experts, dim, hidden)


class StackedMoE(nn.Module):
    """torchtitan's layout: each layer's experts in three stacked tensors."""

    def __init__(self, layers: int = 2, experts: int = 4, dim: int = 3, hidden: int = 5):
        super().__init__()
        self.layers = nn.ModuleList([Layer(experts, dim, hidden) for _ in range(layers)])


@pytest.fixture(autouse=True)
def moe_module(monkeypatch):
    module = types.ModuleType("stacked_moe_mod")
    module.StackedMoE = StackedMoE
    monkeypatch.setitem(sys.modules, "stacked_moe_mod", module)


HF = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}


def per_expert(layers: int, experts: int, dim: int, hidden: int, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    shapes = {"gate_proj": (hidden, dim), "down_proj": (dim, hidden), "up_proj": (hidden, dim)}
    return {f"model.layers.{i}.mlp.experts.{e}.{name}.weight": torch.randn(*shape)
            for i in range(layers) for e in range(experts) for name, shape in shapes.items()}


def stack_rules(source: str = "hf") -> list[dict]:
    return [{"to": f"layers.{{i}}.moe.experts.{w}[{{e}}]", "from": f"{source}:model.layers.{{i}}.mlp.experts.{{e}}.{name}.weight"}
            for w, name in HF.items()]


@pytest.fixture
def hf(tmp_path):
    tensors = per_expert(2, 4, 3, 5)
    path = tmp_path / "hf.safetensors"
    save_file(tensors, str(path))
    return str(path), tensors


def test_per_expert_tensors_stack_and_split_back(hf, tmp_path):
    path, tensors = hf
    stacked = {"sources": {"hf": path}, "target": {"_target_": "stacked_moe_mod.StackedMoE"}, "rules": stack_rules()}
    plan = torchgraft.plan(stacked)
    out_path = torchgraft.execute(plan, tmp_path / "stacked.safetensors")
    out = load_file(out_path)
    for i in range(2):
        for w, name in HF.items():
            expected = torch.stack([tensors[f"model.layers.{i}.mlp.experts.{e}.{name}.weight"] for e in range(4)])
            assert torch.equal(out[f"layers.{i}.moe.experts.{w}"], expected)
    StackedMoE().load_state_dict(out, strict=True)
    text = torchgraft.render(plan)
    assert "layers.1.moe.experts.w1  [4,5,3]  f32  [{0..3}] ← hf:model.layers.1.mlp.experts.{0..3}.gate_proj.weight  (rules[0])" in text

    split = {"sources": {"titan": str(out_path)}, "target": None,
             "rules": [{"to": f"model.layers.{{i}}.mlp.experts.{{e}}.{name}.weight", "from": f"titan:layers.{{i}}.moe.experts.{w}[{{e}}]"}
                       for w, name in HF.items()]}
    split_plan = torchgraft.plan(split)
    assert ("model.layers.{0,1}.mlp.experts.{0..3}.up_proj.weight    [5,3]  f32  ← titan:layers.{0,1}.moe.experts.w3[{0..3}]"
            "  (rules[2])") in torchgraft.render(split_plan).splitlines()  # one line for every expert
    back = load_file(torchgraft.execute(split_plan, tmp_path / "back.safetensors"))
    assert sorted(back) == sorted(tensors)
    assert all(torch.equal(back[k], v) for k, v in tensors.items())


def test_unstacking_into_a_target_binds_the_index_on_the_target_side(hf, tmp_path):
    path, tensors = hf
    stacked = torchgraft.execute(torchgraft.plan({"sources": {"hf": path}, "target": {"_target_": "stacked_moe_mod.StackedMoE"},
                                                  "rules": stack_rules()}), tmp_path / "stacked.safetensors")
    split = {"sources": {"titan": str(stacked), "hf": path}, "base": "hf", "target": None,
             "rules": [{"to": "model.layers.{i}.mlp.experts.{e}.gate_proj.weight", "from": "titan:layers.{i}.moe.experts.w1[{e}]"}],
             "policy": {"unused": "ignore", "unassigned": "keep"}}
    plan = torchgraft.plan(split)
    entries = {e.key: e for e in plan.entries}
    assert entries["model.layers.1.mlp.experts.2.gate_proj.weight"].pieces[0].reads[0].region == "[2]"
    assert entries["model.layers.1.mlp.experts.2.up_proj.weight"].kept


def test_slots_no_expert_fills_are_kept(tmp_path):
    tensors = {k: v for k, v in per_expert(2, 4, 3, 5).items() if ".experts.3." not in k}
    path = tmp_path / "hf.safetensors"
    save_file(tensors, str(path))
    plan = torchgraft.plan({"sources": {"hf": str(path)}, "target": {"_target_": "stacked_moe_mod.StackedMoE"}, "rules": stack_rules()})
    assert plan.entries[0].uncovered == ("[3:]",)
    assert "[{0..2}] ← hf:model.layers.0.mlp.experts.{0..2}.gate_proj.weight; [3:] keep" in torchgraft.render(plan)


def test_a_bound_index_outside_the_dimension_is_refused(tmp_path):
    path = tmp_path / "hf.safetensors"
    save_file(per_expert(2, 5, 3, 5), str(path))
    with pytest.raises(GraftError) as err:
        torchgraft.plan({"sources": {"hf": str(path)}, "target": {"_target_": "stacked_moe_mod.StackedMoE"}, "rules": stack_rules()})
    assert str(err.value) == ("rules[0].to: layers.0.moe.experts.w1[{e}] with e=4 from hf:model.layers.0.mlp.experts.4.gate_proj.weight: "
                              "index 4 is out of bounds for dim 0 of size 4 (shape [4,5,3])")


def test_two_bindings_on_one_slot_are_refused(tmp_path):
    tensors = per_expert(2, 4, 3, 5)
    tensors["model.layers.0.mlp.experts.01.gate_proj.weight"] = torch.zeros(5, 3)
    path = tmp_path / "hf.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(GraftError) as err:
        torchgraft.plan({"sources": {"hf": str(path)}, "target": {"_target_": "stacked_moe_mod.StackedMoE"}, "rules": stack_rules()})
    assert str(err.value) == ("rules[0].to: layers.0.moe.experts.w1[1] is written twice by this rule: by "
                              "hf:model.layers.0.mlp.experts.01.gate_proj.weight and by hf:model.layers.0.mlp.experts.1.gate_proj.weight "
                              "(two bindings give the same index)")


def test_an_index_that_is_not_an_integer_is_refused(tmp_path):
    tensors = per_expert(1, 4, 3, 5)
    tensors["model.layers.0.mlp.experts.shared.gate_proj.weight"] = torch.zeros(5, 3)
    path = tmp_path / "hf.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(GraftError) as err:
        torchgraft.plan({"sources": {"hf": str(path)}, "target": {"_target_": "stacked_moe_mod.StackedMoE", "layers": 1},
                         "rules": stack_rules()})
    assert str(err.value) == ("rules[0].to: 'layers.{i}.moe.experts.w1[{e}]': {e} indexes a dimension, so it needs an integer, "
                              "but e='shared'")


@pytest.mark.slow  # 6,144 experts: 2.5 s, in the scale tier (`pytest -m slow`; CI runs both tiers)
def test_48_layers_of_128_experts_stack_in_3_rules_with_short_plan_lines(tmp_path):
    path = tmp_path / "hf.safetensors"
    save_file(per_expert(48, 128, 2, 2), str(path))
    recipe = {"sources": {"hf": str(path)}, "rules": stack_rules(),
              "target": {"_target_": "stacked_moe_mod.StackedMoE", "layers": 48, "experts": 128, "dim": 2, "hidden": 2}}
    text = torchgraft.render(torchgraft.plan(recipe))
    assert max(len(line) for line in text.splitlines()) < 300
    assert ("layers.{0..47}.moe.experts.w2  [128,2,2]  f32  [{0..127}] ← hf:model.layers.{0..47}.mlp.experts.{0..127}.down_proj.weight"
            "  (rules[1])") in text
