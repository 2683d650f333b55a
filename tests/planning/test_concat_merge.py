"""Concatenation and stacking merges with per-source transforms: torchtitan's fused GQA
``wqkv`` (per kv group: its q heads, then k, then v) from separate q, k, v in one rule."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import torchgraft
from torchgraft.core.errors import GraftError

HEADS, KV, HD, DIM = 4, 2, 8, 16


@pytest.fixture
def hf(tmp_path):
    torch.manual_seed(0)
    tensors = {}
    for i in range(2):
        tensors[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(HEADS * HD, DIM)
        tensors[f"model.layers.{i}.self_attn.k_proj.weight"] = torch.randn(KV * HD, DIM)
        tensors[f"model.layers.{i}.self_attn.v_proj.weight"] = torch.randn(KV * HD, DIM)
    path = tmp_path / "hf.safetensors"
    save_file(tensors, str(path))
    return str(path), tensors


def rope(to: str = "interleaved") -> dict:
    return {"rope": {"head_dim": HD, "to": to}}


def wqkv_rule() -> dict:
    group = HEADS // KV
    return {"to": "layers.{i}.attention.wqkv.weight",
            "from": [{"key": "hf:model.layers.{i}.self_attn.q_proj.weight", "transform": [rope(), {"reshape": [KV, group * HD, DIM]}]},
                     {"key": "hf:model.layers.{i}.self_attn.k_proj.weight", "transform": [rope(), {"reshape": [KV, HD, DIM]}]},
                     {"key": "hf:model.layers.{i}.self_attn.v_proj.weight", "transform": [{"reshape": [KV, HD, DIM]}]}],
            "merge": {"concat": 1},
            "transform": [{"reshape": [-1, DIM]}]}


def interleave(w: torch.Tensor) -> torch.Tensor:
    """torchtitan's Llama3StateDictAdapter permutation, written out."""
    return w.view(w.shape[0] // HD, 2, HD // 2, DIM).transpose(1, 2).reshape(w.shape)


def test_fused_gqa_wqkv_in_one_rule(hf, tmp_path):
    path, tensors = hf
    plan = torchgraft.plan({"sources": {"hf": path}, "target": None, "rules": [wqkv_rule()]})
    out = load_file(torchgraft.execute(plan, tmp_path / "out.safetensors"))
    for i in range(2):
        q, k, v = (tensors[f"model.layers.{i}.self_attn.{n}_proj.weight"] for n in "qkv")
        q, k = interleave(q), interleave(k)
        per_group = [torch.cat([q.view(KV, -1, DIM)[g], k.view(KV, HD, DIM)[g], v.view(KV, HD, DIM)[g]]) for g in range(KV)]
        assert torch.equal(out[f"layers.{i}.attention.wqkv.weight"], torch.cat(per_group))
    assert torchgraft.render(plan).splitlines()[4] == (
        "layers.0.attention.wqkv.weight  [64,16]  f32  ← concat(1: hf:model.layers.0.self_attn.q_proj.weight | "
        "rope(head_dim=8, to=interleaved), reshape([2, 16, 16]); hf:model.layers.0.self_attn.k_proj.weight | "
        "rope(head_dim=8, to=interleaved), reshape([2, 8, 16]); hf:model.layers.0.self_attn.v_proj.weight | reshape([2, 8, 16])) "
        "| reshape([-1, 16])  (rules[0])")


def test_stack_merge(hf, tmp_path):
    path, tensors = hf
    rule = {"to": "layers.{i}.kv", "from": ["hf:model.layers.{i}.self_attn.k_proj.weight", "hf:model.layers.{i}.self_attn.v_proj.weight"],
            "merge": {"stack": 0}}
    out = load_file(torchgraft.execute(torchgraft.plan({"sources": {"hf": path}, "target": None, "rules": [rule]}), tmp_path / "o.safetensors"))
    assert torch.equal(out["layers.1.kv"], torch.stack([tensors["model.layers.1.self_attn.k_proj.weight"],
                                                        tensors["model.layers.1.self_attn.v_proj.weight"]]))


def test_concat_shapes_are_checked_at_plan_time(hf):
    rule = wqkv_rule()
    rule["from"][1]["transform"] = [{"reshape": [KV, HD, DIM]}, "transpose"]
    with pytest.raises(GraftError) as err:
        torchgraft.plan({"sources": {"hf": hf[0]}, "target": None, "rules": [rule]})
    assert str(err.value) == ("rules[0].from[1]: cannot concat hf:model.layers.0.self_attn.k_proj.weight [2,16,8] with "
                              "hf:model.layers.0.self_attn.q_proj.weight [2,16,16] along dim 1 (concat needs the same shape except in dim 1)")


def test_per_source_transforms_need_a_joining_merge(hf):
    rule = wqkv_rule()
    rule["merge"] = "mean"
    with pytest.raises(GraftError) as err:
        torchgraft.plan({"sources": {"hf": hf[0]}, "target": None, "rules": [rule]})
    assert str(err.value) == "rules[0].from[0].transform: per-source transforms need merge: {concat: DIM} or {stack: DIM}"


def test_a_plan_with_a_concat_merge_reads_back(hf, tmp_path):
    from torchgraft.plans.codec import from_json

    plan = torchgraft.plan({"sources": {"hf": hf[0]}, "target": None, "rules": [wqkv_rule()]})
    assert from_json(plan.to_json()) == plan
