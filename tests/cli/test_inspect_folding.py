"""graft-inspect folds repeated layers with the plan text's folder (keys.folding)."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from torchgraft.cli.inspect import main


def test_inspect_folds_as_the_plan_text_does(tmp_path, capsys):
    """Layers alternating between two structures: a stepped range each, as plan text prints."""
    tensors = {}
    for i in range(6):
        tensors[f"layers.{i}.w"] = torch.zeros(2, 2) if i % 2 == 0 else torch.zeros(3)
    tensors["head.w"] = torch.zeros(1)
    path = tmp_path / "alternating.safetensors"
    save_file(tensors, path)
    main([str(path)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == [
        "├── head  1",
        "│   └── w  [1]  f32",
        "└── layers  21",
        "    ├── {0..4..2}  4 x3",
        "    │   └── w  [2,2]  f32",
        "    └── {1..5..2}  3 x3",
        "        └── w  [3]  f32",
    ]
