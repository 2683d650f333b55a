"""The bundled port recipes, run end to end on their seeded example checkpoints, and
checked numerically: the ported model computes what the source model computes where
the architectures are the same computation, else the tensors equal their expected values.
Where ``transformers`` is installed, the GPT-2 and BERT ports also run on real
Hugging Face models (built tiny and random, saved with ``save_pretrained``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import load_file

import torchgraft
from conftest import REFERENCE_LIBRARIES
from torchgraft.examples import ConvNet, SequentialNet
from torchgraft.examples.bert import BertForPreTraining, FusedQKVClassifier
from torchgraft.examples.checkpoints import example_path
from torchgraft.examples.encoders import TextEncoder, TinyViT
from torchgraft.examples.gpt import GPT2LMHeadModel, NanoGPT
from torchgraft.recipe.resolve import register_resolver
from torchgraft.recipe.source import bundled_recipes

GPT = dict(vocab_size=64, n_layer=2, n_head=4, n_embd=32)
BERT = dict(vocab_size=100, max_positions=32, hidden=32, layers=2, heads=4, intermediate=64)


def run(name: str, tmp_path, **sources: str):
    """Plan and execute bundled recipe ``name`` (``sources`` override source paths)."""
    register_resolver()
    cfg = OmegaConf.load(bundled_recipes() / f"{name}.yaml")
    for source, path in sources.items():
        cfg.sources[source] = path
    plan = torchgraft.plan(cfg)
    return plan, load_file(torchgraft.execute(plan, tmp_path / "out.safetensors"))


def initial(cls, **kwargs) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return cls(**kwargs).state_dict()


def loaded(model: torch.nn.Module, state) -> torch.nn.Module:
    model.load_state_dict(state, strict=True)
    return model.eval()


def tokens(high: int, shape=(2, 16), seed: int = 0) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


def reference_gpt2() -> GPT2LMHeadModel:
    model = GPT2LMHeadModel(**GPT)
    missing, unexpected = model.load_state_dict(load_file(example_path("gpt2")), strict=False)
    assert missing == ["lm_head.weight"] and not unexpected  # tied to wte, left out as in HF files
    return model.eval()


@torch.no_grad()
def test_gpt2_to_nanogpt_gives_gpt2s_logits(tmp_path):
    plan, state = run("gpt2_to_nanogpt", tmp_path)
    source = load_file(example_path("gpt2"))
    assert torch.equal(state["transformer.h.1.mlp.c_fc.weight"], source["transformer.h.1.mlp.c_fc.weight"].T)
    assert torch.equal(state["lm_head.weight"], source["transformer.wte.weight"])
    assert sorted(u.key for u in plan.unused) == ["transformer.h.0.attn.bias", "transformer.h.1.attn.bias"]
    idx = tokens(64)
    expected = reference_gpt2()(idx)
    torch.testing.assert_close(loaded(NanoGPT(**GPT), state)(idx), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(NanoGPT(**GPT).eval()(idx), expected, atol=1e-2)  # not equal by accident


@torch.no_grad()
def test_gpt2_split_qkv_gives_gpt2s_logits(tmp_path):
    _, state = run("gpt2_split_qkv", tmp_path)
    source = load_file(example_path("gpt2"))
    c_attn = source["transformer.h.0.attn.c_attn.weight"]  # [in, 3*out]: column blocks q, k, v
    assert torch.equal(state["transformer.h.0.attn.k_proj.weight"], c_attn[:, 32:64].T)
    assert torch.equal(state["transformer.h.0.attn.v_proj.bias"], source["transformer.h.0.attn.c_attn.bias"][64:])
    idx = tokens(64, seed=1)
    ported = loaded(NanoGPT(**GPT, fused_qkv=False), state)
    torch.testing.assert_close(ported(idx), reference_gpt2()(idx), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_bert_to_fused_qkv_classifier_gives_berts_features(tmp_path):
    plan, state = run("bert_fused_qkv", tmp_path)
    source = torch.load(example_path("bert"), weights_only=True)
    bert = BertForPreTraining(**BERT)
    bert.load_state_dict(source, strict=True)
    layer = "bert.encoder.layer.1.attention.self"
    assert torch.equal(state["blocks.1.qkv.weight"], torch.cat([source[f"{layer}.{p}.weight"] for p in ("query", "key", "value")]))
    init = initial(FusedQKVClassifier, **BERT, num_classes=3)
    assert torch.equal(state["head.weight"], init["head.weight"]) and torch.equal(state["head.bias"], init["head.bias"])
    ids, types = tokens(100, seed=2), tokens(2, seed=3)
    sequence, pooled = loaded(FusedQKVClassifier(**BERT, num_classes=3), state).features(ids, types)
    expected_sequence, expected_pooled = bert.eval()(ids, types)
    torch.testing.assert_close(sequence, expected_sequence, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, expected_pooled, rtol=1e-5, atol=1e-5)
    assert all(e.uncovered == () for e in plan.entries)  # q, k and v cover the fused rows exactly


@torch.no_grad()
def test_drop_layers_takes_every_other_block(tmp_path):
    _, state = run("drop_layers", tmp_path)
    teacher = loaded(TextEncoder(depth=12), load_file(example_path("encoder_12")))
    student = loaded(TextEncoder(depth=6), state)
    for j in range(6):
        for name, value in student.blocks[j].state_dict().items():
            assert torch.equal(value, teacher.blocks[2 * j].state_dict()[name]), (j, name)
    ids = tokens(100, seed=4)
    assert torch.equal(student(ids), teacher(ids, layers=[0, 2, 4, 6, 8, 10]))


@torch.no_grad()
def test_vit_position_embedding_is_resampled_like_timm(tmp_path):
    _, state = run("vit_resize_pos_embed", tmp_path)
    source = load_file(example_path("vit"))
    old = source["pos_embed"]  # [1, 1 + 4*4, 32]
    grid = old[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(6, 6), mode="bicubic", antialias=True, align_corners=False)
    expected = torch.cat([old[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 36, 32)], dim=1)
    assert torch.equal(state["pos_embed"], expected)
    assert all(torch.equal(state[k], v) for k, v in source.items() if k != "pos_embed")
    logits = loaded(TinyViT(img_size=48, patch_size=8), state)(torch.randn(2, 3, 48, 48))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_vit_position_embedding_matches_timm_when_installed(tmp_path):
    layers = pytest.importorskip("timm.layers")
    _, state = run("vit_resize_pos_embed", tmp_path)
    old = load_file(example_path("vit"))["pos_embed"]
    torch.testing.assert_close(state["pos_embed"], layers.resample_abs_pos_embed(old, [6, 6], num_prefix_tokens=1))


@torch.no_grad()
def test_grow_classes_copies_rows_0_to_9_and_initializes_the_rest(tmp_path):
    plan, state = run("grow_classes", tmp_path)
    source = load_file(example_path("convnet"))
    init = initial(ConvNet, num_classes=15)
    for key in ("fc3.weight", "fc3.bias"):
        assert torch.equal(state[key][:10], source[key]) and torch.equal(state[key][10:], init[key][10:]), key
    x = torch.randn(4, 3, 32, 32)
    old = loaded(ConvNet(num_classes=10), source)(x)
    torch.testing.assert_close(loaded(ConvNet(num_classes=15), state)(x)[:, :10], old)  # old classes score the same
    assert all(e.needs_initial == (e.key.startswith("fc3.")) for e in plan.entries)


@torch.no_grad()
def test_average_checkpoints_is_the_mean_of_the_last_three(tmp_path):
    _, state = run("average_checkpoints", tmp_path)
    runs = [torch.load(example_path(f"run_step{s}"), weights_only=True)["model"] for s in (3000, 4000, 5000)]
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            assert value.item() == 5000
        else:
            torch.testing.assert_close(value, (runs[0][key] + runs[1][key] + runs[2][key]) / 3, rtol=1e-6, atol=1e-7)
    assert not torch.equal(state["sequential.0.weight"], runs[2]["sequential.0.weight"])
    loaded(SequentialNet(num_classes=10, hidden=32), state)


@torch.no_grad()
def test_grayscale_stem_responds_to_gray_as_rgb_did_to_gray_in_three_channels(tmp_path):
    _, state = run("grayscale_stem", tmp_path)
    rgb = loaded(ConvNet(), load_file(example_path("convnet")))
    gray = loaded(ConvNet(in_channels=1), state)
    x = torch.rand(4, 1, 32, 32)
    torch.testing.assert_close(gray(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-5, atol=1e-6)


def test_backbone_by_type_takes_every_conv_and_batchnorm(tmp_path):
    plan, state = run("backbone_by_type", tmp_path)
    source = torch.load(example_path("sequential"), weights_only=True)
    init = initial(SequentialNet, num_classes=5, hidden=32)
    for key, value in state.items():
        takes = key.startswith(("sequential.0.", "sequential.1.", "sequential.3.", "sequential.4.")) \
            and not key.endswith("num_batches_tracked")
        assert torch.equal(value, source[key] if takes else init[key]), key
    assert sorted(u.key for u in plan.unused) == ["sequential.1.num_batches_tracked", "sequential.4.num_batches_tracked",
                                                  "sequential.8.bias", "sequential.8.weight"]


# --- the same ports from real Hugging Face models ----------------------------------------------

@torch.no_grad()
@REFERENCE_LIBRARIES
def test_gpt2_port_from_a_transformers_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_positions=16, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **GPT)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path / "gpt2")
    _, state = run("gpt2_to_nanogpt", tmp_path, gpt2=str(tmp_path / "gpt2"))
    idx = tokens(64, seed=5)
    torch.testing.assert_close(loaded(NanoGPT(**GPT), state)(idx), hf(idx).logits, rtol=1e-4, atol=1e-4)


@torch.no_grad()
@REFERENCE_LIBRARIES
def test_bert_port_from_a_transformers_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(config).eval()
    hf.save_pretrained(tmp_path / "bert")
    _, state = run("bert_fused_qkv", tmp_path, bert=str(tmp_path / "bert"))
    ids, types = tokens(100, seed=6), tokens(2, seed=7)
    out = hf.bert(input_ids=ids, token_type_ids=types)
    sequence, pooled = loaded(FusedQKVClassifier(**BERT, num_classes=3), state).features(ids, types)
    torch.testing.assert_close(sequence, out.last_hidden_state, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pooled, out.pooler_output, rtol=1e-4, atol=1e-4)
