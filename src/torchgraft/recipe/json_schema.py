"""The recipe format as a JSON Schema (draft-07), for editors: the YAML language server
completes field names and flags a typo'd one as the recipe is written
(``# yaml-language-server: $schema=recipe.schema.json``). ``graft-schema`` prints it.

Built from the parser's own field lists, so the two cannot disagree about which fields
exist; values are checked loosely (the parser's messages are the precise ones), and any
value may be an OmegaConf interpolation such as ``${example:convnet}``.
"""

from __future__ import annotations

from typing import Any

from torchgraft.recipe.parse import (
    INIT_MODES,
    KINDS,
    MISMATCH_MODES,
    MISSING_MODES,
    RECIPE_FIELDS,
    SECTION_FIELDS,
    SOURCE_FORMATS,
    UNASSIGNED_MODES,
    UNUSED_MODES,
)
from torchgraft.recipe.run_options import RUN_FIELDS, VERIFY_MODES

_INTERPOLATION = {"type": "string", "pattern": r"^\$\{.*\}$"}
_STRINGS = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_ANY: dict = {}


def _or_interpolation(schema: dict) -> dict:
    return {"anyOf": [schema, _INTERPOLATION]}


def _enum(values: tuple[str, ...], description: str) -> dict:
    return {"enum": [*values, None], "description": description}


def _section(name: str, properties: dict[str, dict], required: tuple[str, ...] = ()) -> dict:
    missing = [f for f in SECTION_FIELDS[name] if f not in properties]
    extra = [f for f in properties if f not in SECTION_FIELDS[name]]
    if missing or extra:  # a field added to the parser needs its entry here
        raise RuntimeError(f"recipe schema section {name!r} out of step with the parser: missing {missing}, extra {extra}")
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return schema


def recipe_schema() -> dict:
    """The JSON Schema of a recipe file."""
    source = _section("source", {
        "path": {"type": "string", "description": "a .safetensors or torch file, or a Hugging Face model folder"},
        "format": _enum(SOURCE_FORMATS, "auto: by extension, then magic bytes"),
        "key": {"type": ["string", "null"], "description": "dotted path of the state dict inside a torch checkpoint"},
    }, required=("path",))
    common = {
        "from": {**_STRINGS, "description": "a source name (bulk), or SOURCE:KEY[REGION] (explicit); several are merged"},
        "merge": {"description": "mean, {weights: [...]}, {concat: DIM} or {stack: DIM} (explicit), "
                           "or {method: NAME, ...} (linear, task_arithmetic, ties, dare_ties, slerp...)"},
        "missing": _enum(MISSING_MODES, "a renamed key the target lacks"),
        "transform": {"description": "a transform, or a list applied in order"},
    }
    bulk = _section("bulk", {
        **common,
        "select": {**_STRINGS, "description": "key patterns to take (default: every tensor of the source)"},
        "exclude": {**_STRINGS, "description": "key patterns to leave out"},
        "rename": {"type": "object", "additionalProperties": {"type": "string"}, "description": "pattern: replacement, first match wins"},
        "types": {**_STRINGS, "description": "module classes of the target tensors to take (subclasses too)"},
        "kind": _enum(KINDS, "parameters, buffers or all"),
        "adapter": {"anyOf": [{"type": "string"}, {"type": "array"}],
                    "description": "PEFT LoRA adapter source(s) to merge in: NAME, or a list of NAME / {name, scale}"},
    }, required=("from",))
    with_transform = {"type": "object", "required": ["key"], "additionalProperties": False,
                      "properties": {"key": {"type": "string"}, "transform": {"description": "this source's own transforms"}}}
    explicit_from = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": [{"type": "string"}, with_transform]}}],
                     "description": "SOURCE:KEY[REGION], or several (merged); {key, transform} for a source's own transforms"}
    explicit = _section("explicit", {**common, "from": explicit_from, "to": {"type": "string", "description": "TARGET_KEY[REGION]"}},
                        required=("to", "from"))
    policy = _section("policy", {
        "unassigned": _enum(UNASSIGNED_MODES, "a target tensor no rule assigns and keep does not list"),
        "unused": _enum(UNUSED_MODES, "source tensors no rule reads"),
        "mismatch": _enum(MISMATCH_MODES, "a shape that does not fit"),
    })
    copy_files = _section("copy_files", {"from": {"type": "string"}, "files": _STRINGS})
    output = _section("output", {
        "path": {"type": ["string", "null"], "description": ".safetensors, .pt/.pth, or a folder (no extension)"},
        "dtype": {"type": ["string", "null"], "description": "cast floating tensors, e.g. bfloat16"},
        "overwrite": _or_interpolation({"type": ["boolean", "null"]}),
        "shard_size": {"type": ["string", "integer", "null"], "description": "e.g. 5GB: HF-style shards"},
        "copy_files": {"anyOf": [{"type": ["string", "null"]}, copy_files]},
        "config": _or_interpolation({"type": ["boolean", "null"], "description": "write a transformers target's config.json"}),
    })
    fields: dict[str, dict] = {
        "sources": {"type": ["object", "null"], "additionalProperties": {"anyOf": [{"type": "string"}, source]},
                    "description": "NAME: PATH, or NAME: {path, format, key}"},
        "target": {"anyOf": [{"type": "null"}, {"type": "object", "required": ["_target_"],
                                                "properties": {"_target_": {"type": "string", "description": "the model class, a dotted path"}}}]},
        "rules": {"type": ["array", "null"], "items": {"anyOf": [bulk, explicit]}},
        "keep": {"anyOf": [{"type": "null"}, _STRINGS], "description": "target tensors that keep their initial values"},
        "base": {"type": ["string", "null"], "description": "a source whose tensors the rules patch"},
        "policy": {"anyOf": [{"type": "null"}, policy]},
        "output": {"anyOf": [{"type": "null"}, output]},
        "target_seed": _or_interpolation({"type": "integer"}),
        "target_init": _enum(INIT_MODES, "full, or per_module (memory-bounded)"),
        "vars": {"type": ["object", "null"], "description": "your own values, for ${vars.NAME} and template arithmetic"},
        "dry_run": _or_interpolation({"type": ["boolean", "null"]}),
        "debug": _or_interpolation({"type": ["boolean", "null"]}),
        "apply": {"type": ["string", "null"]},
        "check": {"type": ["string", "null"]},
        "plan_dir": {"type": ["string", "null"]},
        "verify_sources": _enum(VERIFY_MODES, "fast: size, mtime, header hash; hash: every byte"),
        "in_flight": {"type": ["integer", "string", "null"], "description": "bytes read ahead and not yet written: 32MiB"},
        "sequential": _or_interpolation({"type": ["boolean", "null"]}),
    }
    if set(fields) != set(RECIPE_FIELDS + RUN_FIELDS):  # a field added to the parser needs its entry here
        raise RuntimeError(f"recipe schema out of step with the parser: {sorted(set(fields) ^ set(RECIPE_FIELDS + RUN_FIELDS))}")
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "torchgraft recipe",
        "type": "object",
        "properties": {**fields, "defaults": {"type": "array", "description": "Hydra's defaults list"}},
        "additionalProperties": False,
    }
