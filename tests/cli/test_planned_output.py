"""A literal output.path is part of the reviewed plan, and apply= writes there."""

from __future__ import annotations

import json

import pytest

from conftest import graft_main
from torchgraft.examples.checkpoints import example_path
from torchgraft.recipe.source import bundled_recipes


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    recipe = (bundled_recipes() / "conv_only.yaml").read_text().replace("${example:convnet}", example_path("convnet"))
    (tmp_path / "recipes" / "ft.yaml").write_text(recipe + "output:\n  path: o.safetensors\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_apply_writes_where_the_reviewed_plan_says(project, monkeypatch, capsys):
    assert graft_main(monkeypatch, "recipe=ft", "dry_run=true", "plan_dir=plans") == 0
    plan = json.loads((project / "plans" / "ft.plan.json").read_text())
    assert plan["recipe"]["output"] == {"copy_files": None, "dtype": None, "path": "o.safetensors", "shard_size": None}
    assert "\noutput  o.safetensors\n" in (project / "plans" / "ft.plan.txt").read_text()
    assert graft_main(monkeypatch, "apply=plans/ft.plan.json") == 0
    applied = (project / "o.safetensors").read_bytes()
    (project / "o.safetensors").rename(project / "applied.safetensors")
    assert graft_main(monkeypatch, "recipe=ft") == 0  # a direct run of the recipe
    assert (project / "o.safetensors").read_bytes() == applied
    assert graft_main(monkeypatch, "apply=plans/ft.plan.json", "output.path=elsewhere.safetensors") == 0  # the command line wins
    assert (project / "elsewhere.safetensors").read_bytes() == applied
    assert "wrote elsewhere.safetensors (10 tensors, 240.6 KiB of tensor data, " in capsys.readouterr().err


def test_the_run_directory_default_stays_out_of_the_plan(project, monkeypatch):
    assert graft_main(monkeypatch, "recipe=conv_only", "dry_run=true", "plan_dir=plans") == 0
    plan = json.loads((project / "plans" / "conv_only.plan.json").read_text())
    assert "path" not in plan["recipe"]["output"]
