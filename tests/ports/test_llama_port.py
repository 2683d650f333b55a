"""The bundled Llama ports of record, checked against transformers: Hugging Face's
LlamaForCausalLM (grouped-query attention) to Meta's layout gives the same logits, and
the way back restores the Hugging Face file bit for bit."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

import torchgraft
from conftest import REFERENCE_LIBRARIES, ReferenceLibrary
from torchgraft.examples import MetaLlama
from torchgraft.examples.checkpoints import HF_LLAMA, example_path
from torchgraft.recipe.source import bundled_recipes

transformers = ReferenceLibrary("transformers")  # the `ports` extra; installed in CI
pytestmark = REFERENCE_LIBRARIES  # loads transformers' models


def recipe(name: str, **sources: str):
    cfg = OmegaConf.load(bundled_recipes() / f"{name}.yaml")
    for source, path in sources.items():
        cfg.sources[source] = path
    return cfg


def hf_model(path: str) -> torch.nn.Module:
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**HF_LLAMA))
    model.load_state_dict(load_file(path), strict=True)
    return model.eval()


def meta_model(path: Path) -> MetaLlama:
    model = MetaLlama(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, hidden_dim=96)
    model.load_state_dict(load_file(path), strict=True)
    return model.eval()


TOKENS = torch.tensor([[1, 17, 42, 99, 3, 64, 5, 127, 0, 31]])


def test_hf_llama_to_meta_gives_huggingface_logits_and_comes_back_bit_exact(tmp_path):
    hf_path = str(Path(example_path("hf_llama")) / "model.safetensors")
    plan = torchgraft.plan(recipe("hf_llama_to_meta"))
    assert len(plan.recipe["rules"]) == 3
    meta_path = torchgraft.execute(plan, tmp_path / "meta.safetensors")
    with torch.no_grad():
        expected = hf_model(hf_path)(TOKENS).logits
        got = meta_model(meta_path)(TOKENS)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert expected.abs().max() > 0.1  # random weights: the logits are not all zero

    back = torchgraft.execute(torchgraft.plan(recipe("meta_to_hf_llama", meta=str(meta_path))), tmp_path / "hf.safetensors")
    original, restored = load_file(hf_path), load_file(back)
    assert sorted(original) == sorted(restored)
    assert all(torch.equal(original[k], restored[k]) for k in original)


def test_meta_to_hf_llama_gives_the_meta_models_logits(tmp_path):
    meta_path = example_path("meta_llama")
    out = torchgraft.execute(torchgraft.plan(recipe("meta_to_hf_llama")), tmp_path / "hf.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(hf_model(str(out))(TOKENS).logits, meta_model(Path(meta_path))(TOKENS), rtol=0, atol=1e-5)


def test_without_the_rope_transform_the_logits_differ(tmp_path):
    cfg = recipe("hf_llama_to_meta")
    for rule in cfg.rules[:2]:
        rule.transform = []
    out = torchgraft.execute(torchgraft.plan(cfg), tmp_path / "meta.safetensors")
    hf_path = str(Path(example_path("hf_llama")) / "model.safetensors")
    with torch.no_grad():
        assert (meta_model(out)(TOKENS) - hf_model(hf_path)(TOKENS).logits).abs().max() > 0.1


def test_hf_llama_to_fused_wqkv_gives_huggingface_logits(tmp_path):
    """torchtitan's fused GQA wqkv (per kv head: its q heads, k, v) from one concat rule."""
    hf_path = str(Path(example_path("hf_llama")) / "model.safetensors")
    plan = torchgraft.plan(recipe("hf_llama_to_fused_qkv"))
    assert len(plan.recipe["rules"]) <= 3
    out = torchgraft.execute(plan, tmp_path / "fused.safetensors")
    model = MetaLlama(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, hidden_dim=96, fused_qkv=True)
    model.load_state_dict(load_file(out), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(TOKENS), hf_model(hf_path)(TOKENS).logits, rtol=0, atol=1e-5)
    q = load_file(hf_path)["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.equal(load_file(out)["layers.0.attention.wqkv.weight"][:32], q[:32])  # rows interleaved, not copied
