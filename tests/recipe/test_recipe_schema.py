"""Recipe schema: good recipes parse into the expected values; every bad one fails with
its exact, user-facing message (the message is part of the contract)."""

from __future__ import annotations

import pytest

from torchgraft.core.errors import RecipeError
from torchgraft.recipe.parse import BulkRule, CopyFiles, ExplicitRule, OutputSpec, Policy, Recipe, SourceSpec, parse_recipe

TARGET = {"_target_": "torchgraft.examples.ConvNet", "num_classes": 10}


def cfg(**fields):
    """A valid recipe with two sources and one bulk rule; keyword arguments replace fields."""
    base = {"sources": {"pretrained": "cnn.safetensors", "other": "b.pt"}, "target": TARGET,
            "rules": [{"from": "pretrained", "select": ["conv1"]}]}
    return {**base, **fields}


def rules(*rules):
    return cfg(rules=[{"from": "pretrained"}, *rules])


def with_hf(**fields):
    """``cfg`` with an HF directory source ``hf`` too (the source of ``output.copy_files``)."""
    return cfg(**{"sources": {"pretrained": "cnn.safetensors", "hf": "models/bert"}, **fields})


BAD = [
    # top level
    ([], "expected a mapping at the top of the recipe, got list"),
    (cfg(sorces={}), "sorces: unknown field (did you mean 'sources'?)"),
    (cfg(dryrun=True), "dryrun: unknown field (did you mean 'dry_run'?)"),
    (cfg(zzz=1), "zzz: unknown field"),
    (cfg(target_seed="1"), "target_seed: expected an integer, got str"),
    (cfg(target_seed=True), "target_seed: expected an integer, got bool"),
    (cfg(keep={"a": 1}), "keep: expected a string or a list, got dict"),
    (cfg(keep=["fc1", 3]), "keep[1]: expected a string, got int"),
    (cfg(base="pretraind"), "base: unknown source 'pretraind' (did you mean 'pretrained'?)"),
    (cfg(base=["pretrained"]), "base: expected a string, got list"),
    # sources
    (cfg(sources={}), "sources: no sources (name at least one checkpoint)"),
    (cfg(sources=None), "sources: no sources (name at least one checkpoint)"),
    (cfg(sources={}, rules=[], base="x"), "sources: no sources (name at least one checkpoint)"),
    (cfg(sources=["a.pt"]), "sources: expected a mapping, got list"),
    (cfg(sources={"pre trained": "a.pt"}),
     "sources.pre trained: invalid source name (letters, digits, '_' and '-')"),
    (cfg(sources={"1st": "a.pt"}), "sources.1st: invalid source name (letters, digits, '_' and '-')"),
    (cfg(sources={"pre": 3}), "sources.pre: expected a string or a mapping, got int"),
    (cfg(sources={"pre": None}), "sources.pre: missing value"),
    (cfg(sources={"pre": {"format": "torch"}}), "sources.pre.path: missing value"),
    (cfg(sources={"pre": {"path": None}}), "sources.pre.path: missing value"),
    (cfg(sources={"pre": {"path": "a", "format": "x"}}),
     "sources.pre.format: must be one of auto, safetensors, torch, hf, dcp, peft (got 'x')"),
    (cfg(sources={"pretrained": {"path": "a", "formt": "torch"}}),
     "sources.pretrained.formt: unknown field (did you mean 'format'?)"),
    (cfg(sources={"pre": {"path": "a", "key": 1}}), "sources.pre.key: expected a string, got int"),
    (cfg(sources={"pre": {"path": "a", "format": "safetensors", "key": "model"}}),
     "sources.pre.key: only torch and DCP checkpoints have a key (format is 'safetensors')"),
    # target
    (cfg(target="torchgraft.examples.ConvNet"), "target: expected a mapping, got str"),
    (cfg(target={"num_classes": 10}),
     "target._target_: missing value (the model class to fill, e.g. torchgraft.examples.ConvNet)"),
    (cfg(target={"_target_": 3}), "target._target_: expected a string, got int"),
    # rules: shape and fields
    (cfg(rules={"from": "pretrained"}), "rules: expected a list, got dict"),
    (cfg(rules=["pretrained"]), "rules[0]: expected a mapping, got str"),
    (cfg(rules=[{"select": "conv1"}]), "rules[0].from: missing value"),
    (cfg(rules=[{"from": None}]), "rules[0].from: missing value"),
    (cfg(rules=[{"from": []}]), "rules[0].from: missing value"),
    (rules({"from": "pretrained", "selct": "conv1"}), "rules[1].selct: unknown field (did you mean 'select'?)"),
    (rules({"form": "pretrained"}), "rules[1].form: unknown field (did you mean 'from'?)"),
    (rules({"too": "fc.weight", "from": "pretrained:fc.weight"}),
     "rules[1].too: unknown field (did you mean 'to'?)"),
    (rules({"to": "fc.weight", "from": "pretrained:fc.weight", "slect": "x"}),
     "rules[1].slect: unknown field"),  # suggestions come from the fields of that kind of rule
    (rules({"to": "fc.weight", "from": "pretrained:fc.weight", "rename": {}}),
     "rules[1].rename: only bulk rules (without 'to') take this field"),
    (rules({"to": "fc.weight", "from": "pretrained:fc.weight", "kind": "parameters"}),
     "rules[1].kind: only bulk rules (without 'to') take this field"),
    # rules: bulk values
    (rules({"from": "pretrianed"}), "rules[1].from: unknown source 'pretrianed' (did you mean 'pretrained'?)"),
    (rules({"from": "zzz"}), "rules[1].from: unknown source 'zzz' (known: other, pretrained)"),
    (rules({"from": ["pretrained", "othr"]}), "rules[1].from[1]: unknown source 'othr' (did you mean 'other'?)"),
    (rules({"from": 3}), "rules[1].from: expected a string or a list, got int"),
    (rules({"from": "pretrained:fc.weight"}),
     "rules[1].from: expected a source name (got 'pretrained:fc.weight'; "
     "'source:key' is for explicit rules, with 'to')"),
    (rules({"from": "pretrained", "select": {"a": 1}}), "rules[1].select: expected a string or a list, got dict"),
    (rules({"from": "pretrained", "exclude": ["a", None]}), "rules[1].exclude[1]: missing value"),
    (rules({"from": "pretrained", "rename": ["a", "b"]}), "rules[1].rename: expected a mapping, got list"),
    (rules({"from": "pretrained", "rename": {"conv1": 1}}), "rules[1].rename.conv1: expected a string, got int"),
    (rules({"from": "pretrained", "rename": {1: "a"}}), "rules[1].rename: expected string patterns, got int 1"),
    (rules({"from": "pretrained", "missing": "ignore"}), "rules[1].missing: must be one of error, skip (got 'ignore')"),
    (rules({"from": "pretrained", "missing": False}), "rules[1].missing: expected a string, got bool"),
    (rules({"from": ["pretrained", "other"]}),
     "rules[1].merge: missing value (several sources need mean or {weights: [...]})"),
    (rules({"from": "pretrained", "merge": "mean"}), "rules[1].merge: needs several sources in from"),
    (rules({"from": ["pretrained", "other"], "merge": {"weights": [1]}}),
     "rules[1].merge.weights: expected 2 weights, one per source (got 1)"),
    (rules({"from": "pretrained", "types": "Conv2d"}),
     "rules[1].types: expected a module class such as torch.nn.Conv2d (got 'Conv2d')"),
    (rules({"from": "pretrained", "types": ["torch.nn.Conv2d", "torch.nn.Conv2d()"]}),
     "rules[1].types[1]: expected a module class such as torch.nn.Conv2d (got 'torch.nn.Conv2d()')"),
    (rules({"from": "pretrained", "types": {"a": 1}}), "rules[1].types: expected a string or a list, got dict"),
    (rules({"from": "pretrained", "kind": "parameter"}),
     "rules[1].kind: must be one of all, parameters, buffers (got 'parameter')"),
    (rules({"from": "pretrained", "typs": ["torch.nn.Conv2d"]}), "rules[1].typs: unknown field (did you mean 'types'?)"),
    (rules({"from": "pretrained", "transform": [3]}),
     "rules[1].transform[0]: expected a string or a one-key mapping, got int"),
    (rules({"from": "pretrained", "transform": {"scale": 0.5, "cast": "bf16"}}),
     "rules[1].transform: expected a one-key mapping such as {scale: 0.5}, got 2 keys"),
    # rules: explicit values
    (rules({"to": None, "from": "pretrained:fc.weight"}), "rules[1].to: missing value"),
    (rules({"to": "fc.weight"}), "rules[1].from: missing value"),
    (rules({"to": "fc.weight", "from": "fc.weight"}), "rules[1].from: expected 'source:key' (got 'fc.weight')"),
    (rules({"to": "fc.weight", "from": "fc.weight[:, :10]"}),
     "rules[1].from: expected 'source:key' (got 'fc.weight[:, :10]')"),
    (rules({"to": "fc.weight", "from": "pretrained:"}), "rules[1].from: expected 'source:key' (got 'pretrained:')"),
    (rules({"to": "fc.weight", "from": "pretrianed:fc.weight"}),
     "rules[1].from: unknown source 'pretrianed' (did you mean 'pretrained'?)"),
    (rules({"to": "fc.weight", "from": ["pretrained:fc.weight", "x:fc.weight"], "merge": "mean"}),
     "rules[1].from[1]: unknown source 'x' (known: other, pretrained)"),
    (rules({"to": "fc.weight", "from": "pretrained:fc.weight", "merge": "mean"}),
     "rules[1].merge: needs several sources in from"),
    (rules({"to": "fc.weight", "from": ["pretrained:fc.weight"], "merge": "mean"}),
     "rules[1].merge: needs several sources in from"),
    (rules({"to": "fc.weight", "from": ["pretrained:fc.weight", "other:fc.weight"]}),
     "rules[1].merge: missing value (several sources need mean or {weights: [...]})"),
    (rules({"to": "w", "from": ["pretrained:w", "other:w"], "merge": "sum"}),
     "rules[1].merge: must be mean or {weights: [...]} (got 'sum')"),
    (rules({"to": "w", "from": ["pretrained:w", "other:w"], "merge": [0.5, 0.5]}),
     "rules[1].merge: expected a string or a mapping, got list"),
    (rules({"to": "w", "from": ["pretrained:w", "other:w"], "merge": {"weigths": [1, 1]}}),
     "rules[1].merge.weigths: unknown field (did you mean 'weights'?)"),
    (rules({"to": "w", "from": ["pretrained:w", "other:w"], "merge": {}}), "rules[1].merge.weights: missing value"),
    (rules({"to": "w", "from": ["pretrained:w", "other:w"], "merge": {"weights": [0.7, "a"]}}),
     "rules[1].merge.weights[1]: expected a number, got str"),
    (rules({"to": "w", "from": ["pretrained:w", "other:w"], "merge": {"weights": [0.7, float("nan")]}}),
     "rules[1].merge.weights[1]: must be a finite number (got nan)"),
    (rules({"to": "w", "from": ["pretrained:w", "other:w"], "merge": {"weights": [0.7, 0.2, 0.1]}}),
     "rules[1].merge.weights: expected 2 weights, one per source (got 3)"),
    # policy
    (cfg(policy={"unasigned": "keep"}), "policy.unasigned: unknown field (did you mean 'unassigned'?)"),
    (cfg(policy={"unassigned": "x"}), "policy.unassigned: must be one of error, keep (got 'x')"),
    (cfg(policy={"unused": "skip"}), "policy.unused: must be one of warn, ignore, error (got 'skip')"),
    (cfg(policy={"mismatch": "keep"}), "policy.mismatch: must be one of error, skip (got 'keep')"),
    (cfg(policy="strict"), "policy: expected a mapping, got str"),
    # output
    (cfg(output={"pth": "out.pt"}), "output.pth: unknown field (did you mean 'path'?)"),
    (cfg(output={"path": 3}), "output.path: expected a string, got int"),
    (cfg(output={"dtype": "bfloat"}), "output.dtype: unknown dtype 'bfloat' (did you mean 'bfloat16'?)"),
    (cfg(output={"dtype": "zz"}), "output.dtype: unknown dtype 'zz' (known: bfloat16, float16, float32, "
                                  "float64, float8_e4m3fn, float8_e5m2)"),
    (cfg(output={"dtype": "int8"}), "output.dtype: must be a floating dtype (got 'int8')"),
    (cfg(output={"overwrite": "yes"}), "output.overwrite: expected true or false, got str"),
    (cfg(output={"shard_size": "x"}), "output.shard_size: expected a size such as 5GB or 500MiB (got 'x')"),
    (cfg(output={"shard_size": "5 GiBs"}),
     "output.shard_size: expected a size such as 5GB or 500MiB (got '5 GiBs')"),
    (cfg(output={"shard_size": True}), "output.shard_size: expected a size such as 5GB or 500MiB (got True)"),
    (cfg(output={"shard_size": 1.5}), "output.shard_size: expected a size such as 5GB or 500MiB (got 1.5)"),
    (cfg(output={"shard_size": 0}), "output.shard_size: must be positive (got 0)"),
    (cfg(output={"shard_size": "0GB"}), "output.shard_size: must be positive (got '0GB')"),
    # execution at scale: target_init, output.copy_files
    (with_hf(target_init="lazy"), "target_init: must be one of full, per_module (got 'lazy')"),
    (with_hf(target_init=True), "target_init: expected a string, got bool"),
    (with_hf(target_init="per_module", target=None), "target_init: per_module needs a target model class (target is null)"),
    (with_hf(target_init="per_module", base="pretrained"),
     "target_init: per_module makes initial values from the target class, but this recipe takes them from base "
     "'pretrained'"),
    (with_hf(target_int="full"), "target_int: unknown field (did you mean 'target_init'?)"),
    (with_hf(output={"copy_files": 3}), "output.copy_files: expected a source name or a mapping, got int"),
    (with_hf(output={"copy_files": "hff"}), "output.copy_files: unknown source 'hff' (did you mean 'hf'?)"),
    (with_hf(output={"copy_files": {"files": ["config.json"]}}), "output.copy_files.from: missing value"),
    (with_hf(output={"copy_files": {"from": "x"}}), "output.copy_files.from: unknown source 'x' (known: hf, pretrained)"),
    (with_hf(output={"copy_files": {"from": "hf", "file": ["a"]}}),
     "output.copy_files.file: unknown field (did you mean 'files'?)"),
    (with_hf(output={"copy_files": {"from": "hf", "files": {"a": 1}}}),
     "output.copy_files.files: expected a string or a list, got dict"),
    (with_hf(output={"copy_files": {"from": "hf", "files": ["config.json", "sub/vocab.txt"]}}),
     "output.copy_files.files[1]: expected a file name or glob in the source's top folder (got 'sub/vocab.txt')"),
    (with_hf(output={"copy_files": {"from": "hf", "files": [".."]}}),
     "output.copy_files.files[0]: expected a file name or glob in the source's top folder (got '..')"),
    (with_hf(output={"copy_file": "hf"}), "output.copy_file: unknown field (did you mean 'copy_files'?)"),
]


@pytest.mark.parametrize(("recipe", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_recipe_names_field_and_reason(recipe, message):
    with pytest.raises(RecipeError) as err:
        parse_recipe(recipe)
    assert str(err.value) == message


def test_first_error_wins_in_documented_order():
    bad = {"output": {"dtype": "zz"}, "rules": [{"from": "nope"}], "sources": {"pre": {"path": None}}}
    with pytest.raises(RecipeError, match=r"^sources\.pre\.path: missing value$"):
        parse_recipe(bad)
    bad["sources"] = {"pre": "a.pt"}
    with pytest.raises(RecipeError, match=r"^rules\[0\]\.from: unknown source 'nope'"):
        parse_recipe(bad)
    with pytest.raises(RecipeError, match=r"^typo: unknown field$"):  # unknown fields before all else
        parse_recipe({**bad, "typo": 1})


def test_minimal_recipe_uses_defaults():
    recipe = parse_recipe(cfg(dry_run=True, debug=False, apply=None, check=None, plan_dir="p",
                              verify_sources=True))
    assert recipe == Recipe(
        sources=(SourceSpec("pretrained", "cnn.safetensors"), SourceSpec("other", "b.pt")),
        target=TARGET, rules=(BulkRule(0, ("pretrained",), select=("conv1",)),))
    assert recipe.policy == Policy("error", "warn", "error")
    assert recipe.output == OutputSpec(None, None, False, None)
    assert recipe.keep == () and recipe.base is None and recipe.target_seed == 0
    assert recipe.source("other").path == "b.pt"
    with pytest.raises(KeyError):
        recipe.source("nope")


def test_nulls_mean_empty_or_default():
    recipe = parse_recipe({"sources": None, "target": None, "rules": None, "keep": None, "base": None,
                           "policy": None, "output": None, "target_seed": None})
    assert recipe == Recipe(sources=(), target=None, rules=())
    recipe = parse_recipe(cfg(policy={"unused": None}, output={"overwrite": None},
                              rules=[{"from": "pretrained", "missing": None, "select": None}]))
    assert recipe.policy.unused == "warn" and recipe.output.overwrite is False
    assert recipe.rules == (BulkRule(0, ("pretrained",)),)


def test_long_source_form():
    recipe = parse_recipe(cfg(sources={"run3": {"path": "run3/last.ckpt", "format": "torch", "key": "ema.model"},
                                       "pretrained": {"path": "cnn.safetensors"}}))
    assert recipe.sources == (SourceSpec("run3", "run3/last.ckpt", "torch", "ema.model"),
                              SourceSpec("pretrained", "cnn.safetensors", "auto", None))


def test_bulk_rule_fields():
    rename = {"embeddings.word_embeddings": "tok_emb", "encoder.layer.{i}.attention.output.dense": "blocks.{i}.proj",
              "re:^encoder\\.(\\d+)\\.": "blocks.\\1.", "a": "b"}
    recipe = parse_recipe(cfg(rules=[{"from": "pretrained", "select": "embeddings", "exclude": ["**.position_ids"],
                                      "rename": rename, "missing": "skip", "transform": "transpose"},
                                     {"from": ["pretrained", "other"], "transform": [{"scale": 0.5}, "transpose"],
                                      "merge": {"weights": [3, 1]}, "types": ["torch.nn.Conv2d"], "kind": "buffers"}]))
    first, second = recipe.rules
    assert first == BulkRule(0, ("pretrained",), ("embeddings",), ("**.position_ids",),
                             tuple(rename.items()), "skip", ("transpose",))
    assert [pattern for pattern, _ in first.rename] == list(rename)  # order kept
    assert first.field == "rules[0]"
    assert second.sources == ("pretrained", "other") and second.select == ()
    assert second.transforms == ({"scale": 0.5}, "transpose")
    assert second.merge == {"weights": [3.0, 1.0]} and second.types == ("torch.nn.Conv2d",)
    assert second.kind == "buffers" and first.kind == "all" and first.merge is None and first.types == ()


def test_explicit_rules():
    recipe = parse_recipe(cfg(rules=[
        {"to": "fc.weight[:, :10]", "from": "pretrained:fc.weight[:, :10]"},
        {"to": "blocks.{j}.ff.weight", "from": ["pretrained:layers.{j*2}.ff.weight", "other:ff.weight"],
         "merge": "mean", "missing": "skip", "transform": [{"cast": "bfloat16"}]},
        {"to": "w", "from": ["pretrained:w", "other:w"], "merge": {"weights": [0.7, 1]}}]))
    assert recipe.rules[0] == ExplicitRule(0, "fc.weight[:, :10]", ("pretrained:fc.weight[:, :10]",))
    assert recipe.rules[1] == ExplicitRule(1, "blocks.{j}.ff.weight",
                                           ("pretrained:layers.{j*2}.ff.weight", "other:ff.weight"),
                                           "mean", "skip", ({"cast": "bfloat16"},))
    assert recipe.rules[2].merge == {"weights": [0.7, 1.0]}
    assert recipe.rules[2].field == "rules[2]"


def test_values_are_frozen_and_hashable():
    recipe = parse_recipe(cfg(rules=[{"from": "pretrained", "transform": [{"scale": 0.5}]},
                                     {"to": "w", "from": ["pretrained:w", "other:w"], "merge": {"weights": [1, 1]}}]))
    assert len({recipe, recipe}) == 1 and len(set(recipe.rules)) == 2
    with pytest.raises(AttributeError):
        recipe.rules[0].missing = "skip"


def test_parse_copies_user_data():
    raw = cfg(target={"_target_": "m.M", "layers": [1, 2]},
              rules=[{"from": "pretrained", "transform": [{"permute": [1, 0]}]}])
    recipe = parse_recipe(raw)
    raw["target"]["layers"].append(3)
    raw["rules"][0]["transform"][0]["permute"].append(2)
    assert recipe.target == {"_target_": "m.M", "layers": [1, 2]}
    assert recipe.rules[0].transforms == ({"permute": [1, 0]},)


@pytest.mark.parametrize(("text", "size"), [
    (1000, 1000), ("1000", 1000), ("100KB", 100_000), ("500MB", 500_000_000), ("5GB", 5_000_000_000),
    ("2TB", 2 * 10**12), ("1KiB", 1024), ("500MiB", 500 * 2**20), ("1.5GiB", 3 * 2**29), ("1TiB", 2**40),
    ("5 gb", 5_000_000_000), ("10B", 10)])
def test_shard_size_units(text, size):
    assert parse_recipe(cfg(output={"shard_size": text})).output.shard_size == size


def test_output_fields():
    output = parse_recipe(cfg(output={"path": "out/model.safetensors", "dtype": "torch.bfloat16",
                                      "overwrite": True, "shard_size": "5GB"})).output
    assert output == OutputSpec("out/model.safetensors", "bfloat16", True, 5_000_000_000)
    assert parse_recipe(cfg(output={"dtype": "fp16"})).output.dtype == "float16"


def test_policy_and_top_level_fields():
    recipe = parse_recipe(cfg(policy={"unassigned": "keep", "unused": "error", "mismatch": "skip"},
                              keep="fc1", base="other", target_seed=7))
    assert recipe.policy == Policy("keep", "error", "skip")
    assert (recipe.keep, recipe.base, recipe.target_seed) == (("fc1",), "other", 7)
    assert parse_recipe(cfg(keep=["fc1", "fc2"])).keep == ("fc1", "fc2")


def test_base_patching_without_target():
    recipe = parse_recipe({"sources": {"ckpt": "a.safetensors"}, "target": None, "base": "ckpt",
                           "rules": [{"to": "head.weight", "from": "ckpt:head.weight"}]})
    assert recipe.target is None and recipe.base == "ckpt"


def test_execution_field_defaults():
    recipe = parse_recipe(with_hf())
    assert recipe.target_init == "full"
    assert recipe.output == OutputSpec() and recipe.output.copy_files is None
    assert parse_recipe(with_hf(target_init=None, output={"copy_files": None})).target_init == "full"


def test_execution_field_good_values():
    recipe = parse_recipe(with_hf(target_init="per_module", output={"path": "out/model", "shard_size": "5GB",
                                                                "copy_files": "hf"}))
    assert recipe.target_init == "per_module"
    assert recipe.output == OutputSpec("out/model", None, False, 5_000_000_000, CopyFiles("hf"))
    long = parse_recipe(with_hf(output={"copy_files": {"from": "hf", "files": ["config.json", "tokenizer*"]}}))
    assert long.output.copy_files == CopyFiles("hf", ("config.json", "tokenizer*"))
    assert parse_recipe(with_hf(output={"copy_files": {"from": "hf", "files": "config.json"}})
                        ).output.copy_files.files == ("config.json",)
