"""A variable in a source's region binds on its own (it ranges over that dimension), so one
explicit rule fills a tensor row by row: here each row of ``fc.weight`` plus one fixed row,
which the plan shows as one folded piece."""

from __future__ import annotations

import torch
from safetensors.torch import load_file, save_file

import torchgraft
from torchgraft.examples import LinearProbe


def test_a_row_rule_adds_one_row_to_every_row(tmp_path):
    torch.manual_seed(0)
    state = LinearProbe().state_dict()
    path = tmp_path / "probe.safetensors"
    save_file(state, str(path))
    plan = torchgraft.plan({"sources": {"src": str(path)}, "target": {"_target_": "torchgraft.examples.LinearProbe"},
                            "rules": [{"to": "fc.weight[{p}]", "from": ["src:fc.weight[{p}]", "src:norm.weight"],
                                       "merge": {"weights": [1.0, 1.0]}}],
                            "keep": ["norm", "fc.bias"]})
    line = next(line for line in torchgraft.render(plan).splitlines() if line.startswith("fc.weight "))
    assert line.split(None, 1)[1] == "[4,12]  f32  [{0..3}] ← weights [1.0, 1.0](src:fc.weight[{0..3}] + src:norm.weight)  (rules[0])"
    out = load_file(torchgraft.execute(plan, tmp_path / "out.safetensors"))
    torch.testing.assert_close(out["fc.weight"], state["fc.weight"] + state["norm.weight"], rtol=0, atol=0)
