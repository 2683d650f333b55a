"""PEFT LoRA adapters as a source: torchgraft's merge equals ``PeftModel.merge_and_unload()``
on tiny random transformers models; adapter folders are validated field by field."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import REFERENCE_LIBRARIES, ReferenceLibrary
from torchgraft.api import execute, plan, render
from torchgraft.core.errors import PlanError, SourceError

pytestmark = REFERENCE_LIBRARIES

transformers = ReferenceLibrary("transformers")
peft = ReferenceLibrary("peft")


def llama(tmp_path):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(tmp_path / "base")
    return model, config


def gpt2(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=32)
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(tmp_path / "base")
    return model, config


def adapter(tmp_path, make, **lora):
    """Save a LoRA adapter with non-zero B for a fresh copy of the model; return PEFT's merge."""
    _, _ = make(tmp_path)
    base, _ = make(tmp_path)
    torch.manual_seed(1)
    model = peft.get_peft_model(base, peft.LoraConfig(init_lora_weights=False, **lora))
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def reference(tmp_path, make, folder):
    base, _ = make(tmp_path)
    merged = peft.PeftModel.from_pretrained(base, folder).merge_and_unload()
    return {k: v.detach() for k, v in merged.state_dict().items()}


def ours(tmp_path, **rule):
    recipe = {"sources": {"base": str(tmp_path / "base"), "ad": str(tmp_path / "adapter")}, "target": None,
              "rules": [{"from": "base", "adapter": "ad", **rule}]}
    the_plan = plan(recipe)
    execute(the_plan, tmp_path / "out.safetensors")
    return load_file(str(tmp_path / "out.safetensors")), the_plan


def assert_equal_to_peft(out, expected, base):
    changed = 0
    for key, value in out.items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-6, msg=key)
        changed += not torch.equal(value, base[key])
    assert changed > 0


@pytest.mark.parametrize("options", [
    {"r": 4, "lora_alpha": 8},
    {"r": 4, "lora_alpha": 8, "use_rslora": True},
    {"r": 4, "lora_alpha": 6, "rank_pattern": {"layers.1.self_attn.q_proj": 2}, "alpha_pattern": {"v_proj": 3}},
], ids=["plain", "rslora", "rank_pattern"])
def test_lora_on_llama_equals_merge_and_unload(tmp_path, options):
    folder = adapter(tmp_path, llama, target_modules=["q_proj", "v_proj", "down_proj"], **options)
    expected = reference(tmp_path, llama, folder)
    out, _ = ours(tmp_path)
    assert_equal_to_peft(out, expected, load_file(str(tmp_path / "base" / "model.safetensors")))


def test_lora_with_fan_in_fan_out_on_gpt2_equals_merge_and_unload(tmp_path):
    folder = adapter(tmp_path, gpt2, r=4, lora_alpha=16, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True,
                     modules_to_save=["ln_f"])
    weights = folder / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    tensors["base_model.model.transformer.ln_f.weight"] += 0.5  # a trained copy: it replaces the base's
    save_file(tensors, str(weights))
    expected = reference(tmp_path, gpt2, folder)
    out, the_plan = ours(tmp_path)
    assert_equal_to_peft(out, expected, load_file(str(tmp_path / "base" / "model.safetensors")))
    text = render(the_plan)
    assert ("transformer.h.0.attn.c_attn.weight  [32,96]   f32  ← base:transformer.h.0.attn.c_attn.weight + "
            "4.0·(ad:base_model.model.transformer.h.0.attn.c_attn.lora_B.weight @ "
            "ad:base_model.model.transformer.h.0.attn.c_attn.lora_A.weight)ᵀ  (rules[0])\n") in text
    assert "transformer.ln_f.weight             [32]      f32  ← ad:base_model.model.transformer.ln_f.weight  (rules[0])\n" in text
    assert "unused source tensors (2, 256 B):\n  base:transformer.ln_f.{bias,weight}\n" in text


def test_an_adapter_tensor_the_rule_does_not_take_is_an_error(tmp_path):
    adapter(tmp_path, llama, r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    recipe = {"sources": {"base": str(tmp_path / "base"), "ad": str(tmp_path / "adapter")}, "target": None,
              "rules": [{"from": "base", "adapter": "ad", "exclude": "**.v_proj"}]}
    with pytest.raises(PlanError) as caught:
        plan(recipe)
    assert str(caught.value) == (
        "rules[0].adapter: ad:base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight applies to "
        "'model.layers.0.self_attn.v_proj.weight', which this rule does not take (2 such adapter tensors; "
        "set policy.unused=ignore to leave them out)")
    plan({**recipe, "policy": {"unused": "ignore"}})  # allowed


def fake_adapter(folder, config: dict) -> str:
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_file({"base_model.model.fc.lora_A.weight": torch.zeros(2, 4)}, str(folder / "adapter_model.safetensors"))
    return str(folder)


@pytest.mark.parametrize(("config", "reason"), [
    ({"peft_type": "IA3"}, "peft_type IA3 is not supported (only LORA adapters)"),
    ({"peft_type": "LOHA", "r": 4}, "peft_type LOHA is not supported (only LORA adapters)"),
    ({"peft_type": "LORA", "r": 4, "use_dora": True}, "use_dora is not supported (plain LoRA only)"),
    ({"peft_type": "LORA", "r": 0}, "r must be a positive integer"),
    ({"peft_type": "LORA", "r": 4, "lora_alpha": "8"}, "lora_alpha must be a finite number"),
    ({"peft_type": "LORA", "r": 4, "fan_in_fan_out": "yes"}, "fan_in_fan_out must be true or false"),
    ({"peft_type": "LORA", "r": 4, "rank_pattern": {"(a+)+$": 2}},
     "rank_pattern key '(a+)+$' is not a module name (regular expressions are not supported)"),
    ({"peft_type": "LORA", "r": 4, "alpha_pattern": {"q_proj": None}}, "alpha_pattern.q_proj must be a finite number"),
    ({"peft_type": "LORA", "r": 4, "modules_to_save": ["../x"]}, "modules_to_save must be a list of module names"),
])
def test_adapter_config_is_validated(tmp_path, config, reason):
    folder = fake_adapter(tmp_path / "ad", config)
    save_file({"fc.weight": torch.zeros(3, 4)}, str(tmp_path / "base.safetensors"))
    recipe = {"sources": {"base": str(tmp_path / "base.safetensors"), "ad": folder}, "target": None,
              "rules": [{"from": "base", "adapter": "ad"}]}
    with pytest.raises(SourceError) as caught:
        plan(recipe)
    assert str(caught.value) == f"sources.ad: {folder}: adapter_config.json: {reason}"


def test_adapter_shapes_are_checked_at_plan_time(tmp_path):
    folder = fake_adapter(tmp_path / "ad", {"peft_type": "LORA", "r": 2, "lora_alpha": 4})
    tensors = {"base_model.model.fc.lora_A.weight": torch.zeros(2, 4), "base_model.model.fc.lora_B.weight": torch.zeros(5, 2)}
    save_file(tensors, str(tmp_path / "ad" / "adapter_model.safetensors"))
    save_file({"fc.weight": torch.zeros(3, 4)}, str(tmp_path / "base.safetensors"))
    recipe = {"sources": {"base": str(tmp_path / "base.safetensors"), "ad": folder}, "target": None,
              "rules": [{"from": "base", "adapter": "ad"}]}
    with pytest.raises(PlanError) as caught:
        plan(recipe)
    assert str(caught.value) == ("rules[0].adapter: ad:base_model.model.fc.lora_B.weight @ lora_A gives [5,4], "
                                 "but base:fc.weight has shape [3,4]")


def test_a_listed_adapters_scale_multiplies_its_update(tmp_path):
    folder = fake_adapter(tmp_path / "ad", {"peft_type": "LORA", "r": 2, "lora_alpha": 4})
    g = torch.Generator().manual_seed(0)
    a, b, w = torch.randn(2, 4, generator=g), torch.randn(3, 2, generator=g), torch.randn(3, 4, generator=g)
    save_file({"base_model.model.fc.lora_A.weight": a, "base_model.model.fc.lora_B.weight": b},
              str(tmp_path / "ad" / "adapter_model.safetensors"))
    save_file({"fc.weight": w, "fc.bias": torch.zeros(3)}, str(tmp_path / "base.safetensors"))
    recipe = {"sources": {"base": str(tmp_path / "base.safetensors"), "ad": folder}, "target": None,
              "rules": [{"from": "base", "adapter": [{"name": "ad", "scale": 0.5}]}]}
    execute(plan(recipe), tmp_path / "out.safetensors")
    out = load_file(str(tmp_path / "out.safetensors"))
    torch.testing.assert_close(out["fc.weight"], w + 0.5 * (4 / 2) * (b @ a), rtol=0, atol=1e-6)
    assert torch.equal(out["fc.bias"], torch.zeros(3))
