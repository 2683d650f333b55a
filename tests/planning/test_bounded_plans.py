"""A few words of a recipe never reach the allocator: transform outputs are bounded, and
what the reference safetensors reader refuses (a ``__metadata__`` tensor) is refused
at planning."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import torchgraft
from torchgraft.core.errors import PlanError


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "s.safetensors"
    save_file({"emb": torch.zeros(4, 3), "pos": torch.zeros(1, 4, 4, 3)}, str(path))
    return str(path)


def extraction(source, rule) -> dict:
    return {"sources": {"s": source}, "target": None, "rules": [rule], "policy": {"unused": "ignore"}}


@pytest.mark.parametrize("rule, reason", [
    ({"to": "emb", "from": "s:emb", "transform": [{"pad_rows": {"to": 100000000000, "fill": "zeros"}}]},
     "rules[0].transform[0]: s:emb: would make a tensor of 300000000000 elements [100000000000, 3], over the "
     "limit of 4294967296 (2**32) for a transform's output"),
    ({"to": "pos", "from": "s:pos", "transform": [{"interpolate": {"size": [100000, 100000]}}]},
     "rules[0].transform[0]: s:pos: would make a tensor of 120000000000 elements [1, 4, 10000000000, 3], "
     "over the limit of 4294967296 (2**32) for a transform's output"),
])
def test_a_transform_output_is_bounded(source, rule, reason):
    with pytest.raises(PlanError) as info:
        torchgraft.plan(extraction(source, rule))
    assert str(info.value) == reason


def test_an_output_tensor_named_metadata_is_refused_at_planning(source):
    with pytest.raises(PlanError) as info:
        torchgraft.plan(extraction(source, {"to": "__metadata__", "from": "s:emb"}))
    assert str(info.value) == "rules[0]: '__metadata__' cannot name a tensor (safetensors reserves it for metadata)"


def test_an_environment_value_is_recorded_as_its_reference(source, monkeypatch):
    monkeypatch.setenv("GRAFT_SECRET", "pos")
    plan = torchgraft.plan({"sources": {"s": source}, "target": None, "policy": {"unused": "ignore"},
                            "rules": [{"from": "s", "select": ["${oc.env:GRAFT_SECRET}"]}]})
    assert [e.key for e in plan.entries] == ["pos"]
    assert plan.recipe["rules"][0]["select"] == ["${oc.env:GRAFT_SECRET}"]

