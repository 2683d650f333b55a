"""plan.md opens with a Mermaid flowchart of source modules -> target modules."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

import torchgraft
from torchgraft.plans.flowchart import MAX_NODES, flowchart
from torchgraft.plans.markdown import render_markdown


def test_the_default_recipe_s_chart():
    md = render_markdown(torchgraft.plan("conv_only"))
    assert md.split("\n**Target**")[0].split("\n", 2)[2] == """\
```mermaid
flowchart LR
  subgraph source0["pretrained"]
    n0["conv1"]
    n1["conv2"]
  end
  n2(["initial values"])
  subgraph target["target"]
    n3["conv1"]
    n4["conv2"]
    n5["fc1"]
    n6["fc2"]
    n7["fc3"]
  end
  n0 --> n3
  n1 --> n4
  n2 -.-> n5
  n2 -.-> n6
  n2 -.-> n7
```
"""


def _nodes(lines: list[str]) -> int:
    return sum(1 for line in lines if line.strip().startswith("n") and "[" in line)


def test_layers_fold_and_the_chart_stays_small(tmp_path):
    tensors = {f"model.layers.{i}.{m}.{p}": torch.zeros(2) for i in range(40) for m in ("attn", "mlp", "norm") for p in ("weight", "bias")}
    save_file(tensors, tmp_path / "big.safetensors")
    plan = torchgraft.plan({"sources": {"s": str(tmp_path / "big.safetensors")}, "target": None,
                            "rules": [{"from": "s", "rename": {"model.layers": "blocks"}}]})
    lines = flowchart(plan)
    assert lines[2:9] == ['  subgraph source0["s"]', '    n0["model.layers.*"]', '  end', '  subgraph target["target"]',
                          '    n1["blocks.*.attn"]', '    n2["blocks.*.mlp"]', '    n3["blocks.*.norm"]']
    assert _nodes(lines) == 4
    wide = {f"m{i}.sub{j}.weight": torch.zeros(1) for i in range(8) for j in range(5)}  # 40 modules at depth 2
    save_file(wide, tmp_path / "wide.safetensors")
    lines = flowchart(torchgraft.plan({"sources": {"s": str(tmp_path / "wide.safetensors")}, "target": None, "rules": [{"from": "s"}]}))
    assert 0 < _nodes(lines) <= MAX_NODES
    assert '    n0["m0"]' in lines


def test_a_key_with_braces_of_its_own_is_its_own_module(tmp_path):
    """The chart is drawn from the folded lines: a key ``{0..2}.bias`` is no layer of ``*.scale``."""
    save_file({k: torch.zeros(2) for k in ("0.scale", "1.scale", "2.scale", "{0..2}.bias")}, tmp_path / "s.safetensors")
    plan = torchgraft.plan({"sources": {"s": str(tmp_path / "s.safetensors")}, "target": None, "base": "s", "rules": [],
                            "policy": {"unassigned": "keep"}})
    lines = flowchart(plan)
    assert lines[3:7] == ['  subgraph target["target"]', '    n1["*"]', '    n2["{0..2}"]', '  end']
