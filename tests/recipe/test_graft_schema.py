"""The recipe JSON Schema (``graft-schema``) accepts every bundled recipe and refuses typos."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from torchgraft.cli import schema as schema_cli
from torchgraft.recipe.json_schema import recipe_schema
from torchgraft.recipe.source import bundled_recipes

BUNDLED = sorted(bundled_recipes().glob("*.yaml"))
VALIDATOR = jsonschema.Draft7Validator(recipe_schema())


def _errors(recipe: dict) -> list[str]:
    return sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(recipe))


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_every_bundled_recipe_is_valid(path):
    assert _errors(yaml.safe_load(path.read_text())) == []


def test_the_package_defaults_are_a_valid_recipe_too():
    config = yaml.safe_load((bundled_recipes().parent / "conf" / "config.yaml").read_text())
    config.pop("hydra")
    assert _errors(config) == []


def test_a_typo_d_field_is_refused_where_it_is():
    recipe = yaml.safe_load((bundled_recipes() / "conv_only.yaml").read_text())
    assert _errors({**recipe, "rules": [{"from": "pretrained", "selct": ["conv1"]}]}) != []
    assert _errors({**recipe, "kep": ["fc1"]}) == [": Additional properties are not allowed ('kep' was unexpected)"]
    assert _errors({**recipe, "policy": {"unusd": "ignore"}}) != []
    assert _errors({**recipe, "policy": {"unused": "quiet"}}) != []


def test_graft_schema_prints_it(capsys):
    schema_cli.main([])
    assert json.loads(capsys.readouterr().out) == recipe_schema()
