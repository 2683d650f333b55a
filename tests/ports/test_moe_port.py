"""The bundled mixture-of-experts ports of record, checked against transformers: Hugging
Face's MixtralForCausalLM, as its saved file holds it (one tensor per expert), stacked
into torchtitan's layout gives the same logits, and the way back restores the file bit
for bit and loads into transformers with the same logits."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

import torchgraft
from conftest import REFERENCE_LIBRARIES, ReferenceLibrary
from torchgraft.examples import MoELlama
from torchgraft.examples.checkpoints import MOE_LLAMA, example_path
from torchgraft.recipe.source import bundled_recipes

transformers = ReferenceLibrary("transformers")  # the `ports` extra; installed in CI
pytestmark = REFERENCE_LIBRARIES  # loads transformers' models

TOKENS = torch.tensor([[1, 17, 42, 99, 3, 64, 5, 127, 0, 31, 8, 77]])


def recipe(name: str, **sources: str):
    cfg = OmegaConf.load(bundled_recipes() / f"{name}.yaml")
    for source, path in sources.items():
        cfg.sources[source] = path
    return cfg


def hf_model(directory: str | Path) -> torch.nn.Module:
    """transformers' own loader: it turns the per-expert file into its fused experts."""
    assert (Path(directory) / "config.json").is_file()  # never a default-sized model
    return transformers.MixtralForCausalLM.from_pretrained(str(directory)).eval()


def moe_model(path: str | Path) -> MoELlama:
    model = MoELlama(**MOE_LLAMA)
    model.load_state_dict(load_file(path), strict=True)
    return model.eval()


def test_the_saved_mixtral_file_holds_one_tensor_per_expert():
    keys = load_file(Path(example_path("hf_mixtral")) / "model.safetensors")
    assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in keys
    assert not any("gate_up_proj" in k for k in keys)


@torch.no_grad()
def test_mixtral_to_stacked_experts_gives_huggingface_logits_and_comes_back_bit_exact(tmp_path):
    hf_dir = Path(example_path("hf_mixtral"))
    plan = torchgraft.plan(recipe("hf_mixtral_to_moe"))
    assert len(plan.recipe["rules"]) <= 4
    moe_path = torchgraft.execute(plan, tmp_path / "moe.safetensors")
    expected = hf_model(hf_dir)(TOKENS).logits
    torch.testing.assert_close(moe_model(moe_path)(TOKENS), expected, rtol=0, atol=1e-5)
    assert expected.abs().max() > 0.1  # random weights: the logits are not all zero

    back_plan = torchgraft.plan(recipe("moe_to_hf_mixtral", moe=str(moe_path)))
    assert len(back_plan.recipe["rules"]) <= 4
    back = torchgraft.execute(back_plan, tmp_path / "back.safetensors")
    original, restored = load_file(hf_dir / "model.safetensors"), load_file(back)
    assert sorted(original) == sorted(restored)
    assert all(torch.equal(original[k], restored[k]) for k in original)


@torch.no_grad()
def test_stacked_experts_to_mixtral_load_into_transformers_with_the_same_logits(tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    torchgraft.execute(torchgraft.plan(recipe("moe_to_hf_mixtral")), out / "model.safetensors")
    shutil.copy(Path(example_path("hf_mixtral")) / "config.json", out / "config.json")
    expected = moe_model(example_path("moe_llama"))(TOKENS)
    torch.testing.assert_close(hf_model(out)(TOKENS).logits, expected, rtol=0, atol=1e-5)
    assert expected.abs().max() > 0.1
