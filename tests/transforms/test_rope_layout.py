"""``rope``: Hugging Face's half-split rotary rows <-> Meta's interleaved pairs, checked
against transformers' own rotary code, and its plan-time checks."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import torchgraft
from conftest import REFERENCE_LIBRARIES, ReferenceLibrary
from torchgraft.core.errors import GraftError
from torchgraft.transforms import compile_transform, describe

transformers = ReferenceLibrary("transformers")
pytestmark = REFERENCE_LIBRARIES  # loads transformers' models


def meta_rotary(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Meta's (and torchtitan's) complex-number RoPE on [seq, heads, head_dim]."""
    head_dim = x.shape[-1]
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.polar(torch.ones(len(positions), head_dim // 2, dtype=torch.float64), positions[:, None].double() * freqs)
    pairs = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * angles[:, None, :]).flatten(-2)


def test_interleaved_rows_give_huggingface_attention_scores():
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    heads, kv_heads, head_dim, dim, seq = 4, 2, 16, 64, 7
    config = transformers.LlamaConfig(hidden_size=dim, num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim)
    torch.manual_seed(0)
    wq, wk = torch.randn(heads * head_dim, dim, dtype=torch.float64), torch.randn(kv_heads * head_dim, dim, dtype=torch.float64)
    x = torch.randn(seq, dim, dtype=torch.float64)
    positions = torch.arange(seq)
    cos, sin = LlamaRotaryEmbedding(config)(x[None].float(), positions[None])
    q_hf = (x @ wq.T).view(1, seq, heads, head_dim).transpose(1, 2)
    k_hf = (x @ wk.T).view(1, seq, kv_heads, head_dim).transpose(1, 2)
    q_hf, k_hf = apply_rotary_pos_emb(q_hf, k_hf, cos.double(), sin.double())
    scores_hf = q_hf[0, ::2] @ k_hf[0].transpose(-1, -2)  # q head 2g shares kv head g

    to_meta = compile_transform({"rope": {"head_dim": head_dim, "to": "interleaved"}}, "t")
    q = meta_rotary((x @ to_meta.apply(wq).T).view(seq, heads, head_dim), positions, config.rope_parameters["rope_theta"])
    k = meta_rotary((x @ to_meta.apply(wk).T).view(seq, kv_heads, head_dim), positions, config.rope_parameters["rope_theta"])
    scores_meta = q.transpose(0, 1)[::2] @ k.transpose(0, 1).transpose(-1, -2)
    torch.testing.assert_close(scores_meta, scores_hf, rtol=1e-4, atol=1e-4)  # transformers' cos/sin are float32
    q_raw = meta_rotary((x @ wq.T).view(seq, heads, head_dim), positions, config.rope_parameters["rope_theta"])
    k_raw = meta_rotary((x @ wk.T).view(seq, kv_heads, head_dim), positions, config.rope_parameters["rope_theta"])
    assert (q_raw.transpose(0, 1)[::2] @ k_raw.transpose(0, 1).transpose(-1, -2) - scores_hf).abs().max() > 1


@pytest.mark.parametrize("shape", [(32, 8), (32,)])
def test_halves_undoes_interleaved(shape):
    t = torch.randn(*shape)
    there = compile_transform({"rope": {"head_dim": 8, "to": "interleaved"}}, "t").apply(t)
    back = compile_transform({"rope": {"head_dim": 8, "to": "halves"}}, "t").apply(there)
    assert not torch.equal(there, t) and torch.equal(back, t)
    assert there[:8].tolist()[:4] == [t[0].tolist(), t[4].tolist(), t[1].tolist(), t[5].tolist()]


def test_rope_reads_in_plans():
    assert describe({"rope": {"to": "halves", "head_dim": 64}}) == "rope(head_dim=64, to=halves)"


@pytest.fixture
def q_proj(tmp_path):
    torch.manual_seed(0)
    tensors = {"q.weight": torch.randn(40, 8)}
    path = tmp_path / "src.safetensors"
    save_file(tensors, str(path))
    return str(path), tensors


def rope_recipe(path: str, head_dim) -> dict:
    return {"sources": {"hf": path}, "target": None,
            "rules": [{"to": "wq.weight", "from": "hf:q.weight", "transform": [{"rope": {"head_dim": head_dim, "to": "interleaved"}}]}]}


def test_a_head_dim_that_does_not_divide_the_rows_fails_planning_naming_the_rule(q_proj):
    with pytest.raises(GraftError) as err:
        torchgraft.plan(rope_recipe(q_proj[0], 16))
    assert str(err.value) == "rules[0].transform[0]: hf:q.weight: rope head_dim 16 does not divide the tensor's 40 rows"


def test_an_odd_head_dim_fails_planning_naming_the_rule(q_proj):
    with pytest.raises(GraftError) as err:
        torchgraft.plan(rope_recipe(q_proj[0], 5))
    assert str(err.value) == "rules[0].transform[0].rope.head_dim: rope needs an even head_dim (rows pair up), got 5"


def test_an_unknown_layout_is_refused(q_proj):
    recipe = rope_recipe(q_proj[0], 8)
    recipe["rules"][0]["transform"] = [{"rope": {"head_dim": 8, "to": "meta"}}]
    with pytest.raises(GraftError) as err:
        torchgraft.plan(recipe)
    assert str(err.value) == "rules[0].transform[0].rope.to: expected interleaved or halves, got 'meta'"


def test_head_dim_from_vars(q_proj, tmp_path):
    path, tensors = q_proj
    recipe = rope_recipe(path, "${vars.head_dim}")
    recipe["vars"] = {"head_dim": 8}
    plan = torchgraft.plan(recipe)
    assert plan.entries[0].pieces[0].transforms == ({"rope": {"head_dim": 8, "to": "interleaved"}},)
    assert "vars" not in plan.recipe
    out = load_file(torchgraft.execute(plan, tmp_path / "out.safetensors"))
    assert torch.equal(out["wq.weight"], tensors["q.weight"].view(5, 2, 4, 8).transpose(1, 2).reshape(40, 8))
