"""Recipe fields for execution at scale (``target_init``, ``output.copy_files``): good
values parse, bad ones fail with their exact message."""

from __future__ import annotations

import pytest

from torchgraft.core.errors import RecipeError
from torchgraft.recipe.parse import CopyFiles, OutputSpec, parse_recipe

TARGET = {"_target_": "torchgraft.examples.ConvNet", "num_classes": 10}


def cfg(**fields):
    base = {"sources": {"pretrained": "cnn.safetensors", "hf": "models/bert"}, "target": TARGET,
            "rules": [{"from": "pretrained", "select": ["conv1"]}]}
    return {**base, **fields}


BAD = [
    (cfg(target_init="lazy"), "target_init: must be one of full, per_module (got 'lazy')"),
    (cfg(target_init=True), "target_init: expected a string, got bool"),
    (cfg(target_init="per_module", target=None), "target_init: per_module needs a target model class (target is null)"),
    (cfg(target_init="per_module", base="pretrained"),
     "target_init: per_module makes initial values from the target class, but this recipe takes them from base "
     "'pretrained'"),
    (cfg(target_int="full"), "target_int: unknown field (did you mean 'target_init'?)"),
    (cfg(output={"copy_files": 3}), "output.copy_files: expected a source name or a mapping, got int"),
    (cfg(output={"copy_files": "hff"}), "output.copy_files: unknown source 'hff' (did you mean 'hf'?)"),
    (cfg(output={"copy_files": {"files": ["config.json"]}}), "output.copy_files.from: missing value"),
    (cfg(output={"copy_files": {"from": "x"}}), "output.copy_files.from: unknown source 'x' (known: hf, pretrained)"),
    (cfg(output={"copy_files": {"from": "hf", "file": ["a"]}}),
     "output.copy_files.file: unknown field (did you mean 'files'?)"),
    (cfg(output={"copy_files": {"from": "hf", "files": {"a": 1}}}),
     "output.copy_files.files: expected a string or a list, got dict"),
    (cfg(output={"copy_files": {"from": "hf", "files": ["config.json", "sub/vocab.txt"]}}),
     "output.copy_files.files[1]: expected a file name or glob in the source's top folder (got 'sub/vocab.txt')"),
    (cfg(output={"copy_files": {"from": "hf", "files": [".."]}}),
     "output.copy_files.files[0]: expected a file name or glob in the source's top folder (got '..')"),
    (cfg(output={"copy_file": "hf"}), "output.copy_file: unknown field (did you mean 'copy_files'?)"),
]


@pytest.mark.parametrize(("recipe", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_recipe_names_field_and_reason(recipe, message):
    with pytest.raises(RecipeError) as err:
        parse_recipe(recipe)
    assert str(err.value) == message


def test_defaults():
    recipe = parse_recipe(cfg())
    assert recipe.target_init == "full"
    assert recipe.output == OutputSpec() and recipe.output.copy_files is None
    assert parse_recipe(cfg(target_init=None, output={"copy_files": None})).target_init == "full"


def test_good_values():
    recipe = parse_recipe(cfg(target_init="per_module", output={"path": "out/model", "shard_size": "5GB",
                                                                "copy_files": "hf"}))
    assert recipe.target_init == "per_module"
    assert recipe.output == OutputSpec("out/model", None, False, 5_000_000_000, CopyFiles("hf"))
    long = parse_recipe(cfg(output={"copy_files": {"from": "hf", "files": ["config.json", "tokenizer*"]}}))
    assert long.output.copy_files == CopyFiles("hf", ("config.json", "tokenizer*"))
    assert parse_recipe(cfg(output={"copy_files": {"from": "hf", "files": "config.json"}})
                        ).output.copy_files.files == ("config.json",)
