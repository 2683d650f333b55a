"""Template variables bind on the side where they appear plainly, with or without a target."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import torchgraft
from torchgraft.core.errors import GraftError


@pytest.fixture
def src(tmp_path):
    torch.manual_seed(0)
    tensors = {f"layers.{i}.y": torch.randn(3) for i in range(3)}
    path = tmp_path / "src.safetensors"
    save_file(tensors, str(path))
    return str(path), tensors


def test_to_variables_bind_from_the_source_without_a_target(src, tmp_path):
    path, tensors = src
    recipe = {"sources": {"src": path}, "target": None,
              "rules": [{"to": "model.layers.{i}.x", "from": "src:layers.{i}.y"}]}
    plan = torchgraft.plan(recipe)
    assert [e.key for e in plan.entries] == ["model.layers.0.x", "model.layers.1.x", "model.layers.2.x"]
    out = load_file(torchgraft.execute(plan, tmp_path / "out.safetensors"))
    assert all(torch.equal(out[f"model.layers.{i}.x"], tensors[f"layers.{i}.y"]) for i in range(3))


def test_to_may_use_arithmetic_on_a_variable_the_source_binds(src):
    path, _ = src
    recipe = {"sources": {"src": path}, "target": None,
              "rules": [{"to": "model.layers.{i}.x.{i*2}", "from": "src:layers.{i}.y"}]}
    assert [e.key for e in torchgraft.plan(recipe).entries] == ["model.layers.0.x.0", "model.layers.1.x.2", "model.layers.2.x.4"]


def test_a_variable_no_side_binds_is_named_against_the_source_that_binds(src):
    path, _ = src
    recipe = {"sources": {"src": path}, "target": None,
              "rules": [{"to": "model.layers.{j}.x", "from": "src:layers.{i}.y"}]}
    with pytest.raises(GraftError) as err:
        torchgraft.plan(recipe)
    assert str(err.value) == "rules[0].to: {j} in 'model.layers.{j}.x' is not bound ('src:layers.{i}.y' binds i)"


def test_to_variables_without_a_target_or_a_binding_source_are_refused(src):
    path, _ = src
    recipe = {"sources": {"src": path}, "target": None,
              "rules": [{"to": "model.layers.{i}.x", "from": "src:layers.0.y"}]}
    with pytest.raises(GraftError) as err:
        torchgraft.plan(recipe)
    assert str(err.value) == "rules[0].to: 'model.layers.{i}.x': template variables in 'to' need a target to bind against"
