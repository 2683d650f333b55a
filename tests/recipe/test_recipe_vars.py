"""``vars:``: the user's own numbers, interpolated where used, ignored by the planner."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import torchgraft
from torchgraft.core.errors import GraftError


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "src.safetensors"
    save_file({"a.weight": torch.randn(4, 12), "b.weight": torch.randn(4, 12)}, str(path))
    return str(path)


def recipe(src: str, **extra) -> dict:
    return {"sources": {"s": src}, "target": None, "rules": [{"to": "x", "from": "s:a.weight",
                                                               "transform": [{"reshape": ["${vars.rows}", -1]}]}], **extra}


def test_vars_are_interpolated_and_not_pinned(src):
    plan = torchgraft.plan(recipe(src, vars={"rows": 8, "unused": "anything"}))
    assert plan.entries[0].shape == (8, 6)
    other = torchgraft.plan(recipe(src, vars={"rows": 8, "unused": "something else"}))
    assert plan.sha256 == other.sha256  # a variable nothing uses does not change the plan


def test_target_arguments_interpolate(src):
    spec = recipe(src, target={"_target_": "torchgraft.examples.LinearProbe", "in_features": 12, "num_classes": 4})
    spec["rules"] = [{"to": "fc.weight", "from": "s:a.weight", "transform": [{"reshape": ["${target.num_classes}", "${target.in_features}"]}]},
                     {"to": "fc.bias", "from": "s:b.weight[:, 0]"}]
    spec["keep"] = ["norm"]
    plan = torchgraft.plan(spec)
    fc = next(e for e in plan.entries if e.key == "fc.weight")
    assert fc.pieces[0].transforms == ({"reshape": [4, 12]},)


def test_vars_must_be_a_mapping(src):
    with pytest.raises(GraftError) as err:
        torchgraft.plan({"sources": {"s": src}, "target": None, "rules": [{"to": "x", "from": "s:a.weight"}], "vars": [1, 2]})
    assert str(err.value) == "vars: expected a mapping, got list"
