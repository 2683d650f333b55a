"""A user's own model class in the current directory imports without PYTHONPATH."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

import torchgraft
from conftest import graft_main, run_cli
from torchgraft.cli import inspect as inspect_cli
from torchgraft.core.errors import TargetError

MYMODELS = """
import torch.nn as nn

class Net(nn.Module):
    def __init__(self, classes: int = 3):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, classes)
"""

RECIPE = """
sources:
  old: old.safetensors
target:
  _target_: mymodels.Net
  classes: 5
rules:
  - from: old
    select: body
keep: [head]
policy:
  unused: ignore
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with mymodels.py, a checkpoint and recipes/mine.yaml, as the cwd;
    sys.path and sys.modules are restored afterwards."""
    (tmp_path / "mymodels.py").write_text(textwrap.dedent(MYMODELS))
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "mine.yaml").write_text(RECIPE)
    torch.manual_seed(0)
    save_file({"body.weight": torch.randn(8, 4), "body.bias": torch.randn(8), "head.weight": torch.randn(3, 8), "head.bias": torch.randn(3)},
              tmp_path / "old.safetensors")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "mymodels", raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    yield tmp_path
    sys.modules.pop("mymodels", None)




def test_a_recipe_targeting_a_class_in_the_current_directory_plans_and_executes(project, monkeypatch, capsys):
    assert graft_main(monkeypatch, "recipe=mine", "output.path=new.safetensors") == 0
    out = capsys.readouterr().out
    assert "target  mymodels.Net(classes=5)  seed 0" in out
    from safetensors.torch import load_file

    written = load_file(project / "new.safetensors")
    old = load_file(project / "old.safetensors")
    assert torch.equal(written["body.weight"], old["body.weight"])
    assert written["head.weight"].shape == (5, 8)


def test_the_api_imports_it_too(project):
    plan = torchgraft.plan(project / "recipes" / "mine.yaml")
    assert [e.key for e in plan.entries] == ["body.weight", "body.bias", "head.weight", "head.bias"]


def test_graft_inspect_lists_a_class_in_the_current_directory(project, capsys):
    inspect_cli.main(["mymodels.Net", "classes=5"])
    assert capsys.readouterr().out.splitlines()[0] == "mymodels.Net(classes=5)  4 tensors, 85 elements, 340 B"


def test_a_module_still_missing_says_where_it_was_looked_for(project):
    from torchgraft.core.target import build_model

    with pytest.raises(TargetError) as err:
        build_model({"_target_": "mymodel.Net"}, device="meta")
    assert str(err.value) == (
        f"target._target_: cannot import 'mymodel.Net': no module named 'mymodel' "
        f"(neither mymodel.py nor mymodel/ in the current directory {project}, nor an installed package)"
    )


@pytest.mark.slow
def test_the_installed_graft_inspect_finds_it_without_pythonpath(project):
    result = run_cli("graft-inspect", "mymodels.Net", cwd=project)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("mymodels.Net()  4 tensors, 67 elements, 268 B\n")
