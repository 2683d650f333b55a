"""The bundled BERT -> DistilBERT port of record, checked against transformers: a
DistilBertModel from every other layer of a 4-layer BertModel computes what a BertModel
of those two layers computes (token-type row folded into the position embeddings), and
the model folder it writes loads with from_pretrained."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

import torchgraft
from conftest import REFERENCE_LIBRARIES, ReferenceLibrary
from torchgraft.examples.checkpoints import HF_BERT, example_path
from torchgraft.recipe.source import bundled_recipes

transformers = ReferenceLibrary("transformers")  # the `ports` extra; installed in CI
pytestmark = REFERENCE_LIBRARIES  # loads transformers' models

IDS = torch.tensor([[5, 17, 42, 99, 3, 64, 0, 31], [8, 1, 77, 23, 2, 2, 0, 0]])
MASK = torch.tensor([[1] * 8, [1] * 6 + [0] * 2])


def cut_down_bert() -> torch.nn.Module:
    """BertModel with BERT's layers 0 and 2 only: what the student must compute."""
    state = load_file(Path(example_path("hf_bert")) / "model.safetensors")
    kept = {0: 0, 2: 1}
    cut = {}
    for key, value in state.items():
        m = re.match(r"encoder\.layer\.(\d+)\.(.*)", key)
        if m is None:
            cut[key] = value
        elif int(m[1]) in kept:
            cut[f"encoder.layer.{kept[int(m[1])]}.{m[2]}"] = value
    model = transformers.BertModel(transformers.BertConfig(**{**HF_BERT, "num_hidden_layers": 2}))
    missing, unexpected = model.load_state_dict(cut, strict=False)
    assert not unexpected and all(k.endswith("_ids") for k in missing)  # every tensor but id buffers
    return model.eval()


@torch.no_grad()
def test_distilbert_from_every_other_bert_layer_computes_the_cut_down_bert(tmp_path):
    cfg = OmegaConf.load(bundled_recipes() / "bert_to_distilbert.yaml")
    plan = torchgraft.plan(cfg)
    out = torchgraft.execute(plan, tmp_path / "distilbert")
    assert (out / "config.json").is_file()
    student = transformers.DistilBertModel.from_pretrained(str(out)).eval()
    got = student(input_ids=IDS, attention_mask=MASK).last_hidden_state
    expected = cut_down_bert()(input_ids=IDS, attention_mask=MASK, token_type_ids=torch.zeros_like(IDS)).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    source = load_file(Path(example_path("hf_bert")) / "model.safetensors")
    assert not torch.equal(load_file(out / "model.safetensors")["embeddings.position_embeddings.weight"],
                           source["embeddings.position_embeddings.weight"])  # the token-type row is in it
