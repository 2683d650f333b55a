"""A malformed or oversized pattern in keep, select or exclude is a user error naming the
field; a plan text line pasted into select takes the keys it stands for."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import torchgraft
from torchgraft.core.errors import PlanError

SYNTAX = "expected {name}, {name+N}, {name-N}, {name*N}, {name//N}, {A..B}, {A..B..STEP} or {a,b,...}"


@pytest.fixture
def source(tmp_path):
    tensors = {f"blocks.{i}.norm1.{leaf}": torch.zeros(2) for i in range(12) for leaf in ("weight", "bias")}
    path = tmp_path / "blocks.safetensors"
    save_file(tensors, path)
    return str(path)


def extraction(source: str, rule: dict, **fields) -> dict:
    return {"sources": {"src": source}, "target": None, "rules": [{"from": "src", **rule}],
            "policy": {"unused": "ignore"}, **fields}


@pytest.mark.parametrize("rule, field, message", [
    ({"select": ["blocks", "{"]}, "rules[0].select[1]", f"'{{': {SYNTAX}"),
    ({"select": ["re:("]}, "rules[0].select[0]",
     "'re:(': invalid regular expression: missing ), unterminated subpattern at position 0"),
    ({"select": ["conv{0..100000000}"]}, "rules[0].select[0]",
     "'{0..100000000}': a range stands for at most 1,000,000 values (this one for 100,000,001)"),
    ({"exclude": ["blocks.{3..0..0}"]}, "rules[0].exclude[0]", "'{3..0..0}': the step of a range is at least 1"),
    ({"exclude": ["a", "blocks.{i//0}"]}, "rules[0].exclude[1]", "'{i//0}': division by zero"),
    ({"select": ["blocks.{0.." + "9" * 4301 + "}"]}, "rules[0].select[0]",
     "'{0.." + "9" * 24 + "..." + "9" * 27 + "}': integers have at most 100 digits"),
])
def test_bad_select_and_exclude_name_the_field(source, rule, field, message):
    with pytest.raises(PlanError) as err:
        torchgraft.plan(extraction(source, rule))
    assert str(err.value) == f"{field}: {message}"


def test_bad_keep_names_the_field(source):
    recipe = {"sources": {"src": source}, "base": "src", "target": None, "rules": [{"from": "src", "select": "blocks.0"}],
              "keep": ["blocks.{1..11}", "{"], "policy": {"unused": "ignore"}}
    with pytest.raises(PlanError) as err:
        torchgraft.plan(recipe)
    assert str(err.value) == f"keep[1]: '{{': {SYNTAX}"


def test_plan_text_lines_select_what_they_stand_for(source):
    plan = torchgraft.plan(extraction(source, {"select": ["blocks.{0..10..2}.norm1.weight", "blocks.{1,7}.norm1.{weight,bias}",
                                                          "blocks.{11..9}.norm1.bias"]}))
    expected = ([f"blocks.{i}.norm1.weight" for i in range(0, 11, 2)] + [f"blocks.{i}.norm1.{leaf}" for i in (1, 7)
                                                                         for leaf in ("weight", "bias")]
                + [f"blocks.{i}.norm1.bias" for i in (9, 10, 11)])
    assert sorted(e.key for e in plan.entries) == sorted(expected)
