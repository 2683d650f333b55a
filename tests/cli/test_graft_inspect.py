"""graft-inspect: module trees that fold repeated layers, for checkpoints and classes."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from torchgraft.cli.inspect import main


class Tower(torch.nn.Module):
    def __init__(self, depth: int = 4, width: int = 8):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(width, width) for _ in range(depth)])
        self.head = torch.nn.Linear(width, 2)


@pytest.fixture
def tower_module(monkeypatch):
    module = types.ModuleType("tower_mod")
    module.Tower = Tower
    monkeypatch.setitem(sys.modules, "tower_mod", module)


def test_a_class_is_listed_with_types_and_repeated_layers_folded(tower_module, capsys):
    main(["tower_mod.Tower", "depth=12"])
    assert capsys.readouterr().out == (
        "tower_mod.Tower(depth=12)  26 tensors, 882 elements, 3.4 KiB\n"
        "├── layers  ModuleList  864\n"
        "│   └── {0..11}  Linear  72 x12\n"
        "│       ├── weight  [8,8]  f32\n"
        "│       └── bias  [8]  f32\n"
        "└── head  Linear  18\n"
        "    ├── weight  [2,8]  f32\n"
        "    └── bias  [2]  f32\n"
    )


def test_expand_lists_every_layer(tower_module, capsys):
    main(["tower_mod.Tower", "depth=3", "--expand"])
    out = capsys.readouterr().out
    assert "├── 0  Linear  72" in out and "└── 2  Linear  72" in out and "{" not in out


def test_a_checkpoint_is_listed_from_its_header(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "tower.safetensors"
    save_file(Tower(depth=2).state_dict(), path)
    main([str(path)])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{path} (safetensors)  6 tensors, 162 elements, 648 B"
    assert "└── {0,1}  72 x2" in out  # as the plan text folds two values


def test_unknown_class_is_one_error_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["torchgraft.examples.Nope"])
    assert info.value.code == 1
    assert capsys.readouterr().err == (
        "error: target._target_: cannot import 'torchgraft.examples.Nope': 'torchgraft.examples' has no attribute 'Nope'\n"
    )
