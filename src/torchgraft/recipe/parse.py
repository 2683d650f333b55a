"""The recipe schema: a resolved Hydra config (a plain dict) -> frozen dataclasses.

``parse_recipe`` reports the first problem with its field (``rules[1].select``). Unknown
fields come first at every level (a typo usually explains the rest); then sections in the
documented order, not Hydra's composed key order, so the error is the same however composed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from torchgraft.core.errors import RecipeError
from torchgraft.core.fields import (
    byte_size,
    choice,
    expect_mapping,
    expect_str,
    is_list,
    one_or_many,
    optional_str,
    reject_unknown,
    strings,
    type_name,
    wrong_type,
)
from torchgraft.core.tensors import DTYPE_NAMES, is_floating, parse_dtype
from torchgraft.core.text import did_you_mean
from torchgraft.recipe.merge_spec import JOINS, parse_merge
from torchgraft.recipe.run_options import RUN_FIELDS

# Run-time switches composed into the same config; they are not part of the recipe.
RECIPE_FIELDS = ("sources", "target", "rules", "keep", "base", "policy", "output", "target_seed", "target_init", "vars")

# The first value of each choice is its default.
SOURCE_FORMATS = ("auto", "safetensors", "torch", "hf", "dcp", "peft")
MISSING_MODES = ("error", "skip")
UNASSIGNED_MODES = ("error", "keep")
UNUSED_MODES = ("warn", "ignore", "error")
MISMATCH_MODES = ("error", "skip")
INIT_MODES = ("full", "per_module")  # how kept tensors get initial values without a base
KINDS = ("all", "parameters", "buffers")

_SOURCE_FIELDS = ("path", "format", "key")
_BULK_FIELDS = ("from", "select", "exclude", "rename", "types", "kind", "merge", "missing", "transform", "adapter")
_ADAPTER_FIELDS = ("name", "scale")
_EXPLICIT_FIELDS = ("to", "from", "merge", "missing", "transform")
_POLICY_FIELDS = ("unassigned", "unused", "mismatch")
_OUTPUT_FIELDS = ("path", "dtype", "overwrite", "shard_size", "copy_files", "config")
_COPY_FIELDS = ("from", "files")

_SOURCE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_CLASS_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


@dataclass(frozen=True)
class SourceSpec:
    name: str
    path: str
    format: str = "auto"  # auto | safetensors | torch | hf | dcp
    key: str | None = None  # dotted path of the state dict inside a torch checkpoint


@dataclass(frozen=True)
class BulkRule:
    index: int  # position in rules
    sources: tuple[str, ...]  # `from`: source names (several: merged, tensor by tensor)
    select: tuple[str, ...] = ()  # empty: every key of the source
    exclude: tuple[str, ...] = ()
    rename: tuple[tuple[str, str], ...] = ()  # (pattern, replacement), in recipe order
    missing: str = "error"  # error | skip
    # Raw specs (names or one-key dicts), validated by transforms.py; dicts are not
    # hashable, so they stay out of the hash but still count for equality.
    transforms: tuple = dataclasses.field(default=(), hash=False)
    merge: object = dataclasses.field(default=None, hash=False)  # None | "mean" | {"weights": [...]} | {"method": ...}
    # Filters on the target tensor a key lands on: module classes (dotted paths,
    # subclasses match), and parameters or buffers.
    types: tuple[str, ...] = ()
    kind: str = "all"  # all | parameters | buffers
    adapters: tuple[tuple[str, float], ...] = ()  # PEFT sources applied to the tensors taken: (name, scale)

    @property
    def field(self) -> str:
        return f"rules[{self.index}]"


@dataclass(frozen=True)
class ExplicitRule:
    index: int
    to: str  # "fc.weight[:, :10]", "blocks.{i}.qkv.weight[0:384]"
    sources: tuple[str, ...]  # `from`: "source:key[region]" strings, several to merge
    merge: object = dataclasses.field(default=None, hash=False)  # as BulkRule.merge
    missing: str = "error"
    transforms: tuple = dataclasses.field(default=(), hash=False)

    @property
    def field(self) -> str:
        return f"rules[{self.index}]"


@dataclass(frozen=True)
class Policy:
    unassigned: str = "error"  # error | keep
    unused: str = "warn"  # warn | ignore | error
    mismatch: str = "error"  # error | skip


@dataclass(frozen=True)
class CopyFiles:
    """Non-tensor files (config.json, tokenizer files) to copy into a directory output."""

    source: str | None  # a source that is a model directory; None: from ``folder``
    files: tuple[str, ...] = ()  # names or globs in its top folder; empty: every non-checkpoint file
    folder: str | None = None  # a directory that is not a source (``from: path/to/hf_dir``)


@dataclass(frozen=True)
class OutputSpec:
    path: str | None = None
    dtype: str | None = None  # canonical floating dtype name
    overwrite: bool = False
    shard_size: int | None = None  # bytes
    copy_files: CopyFiles | None = None
    config: bool = False  # write the transformers target's config.json (and generation_config.json)


@dataclass(frozen=True)
class Recipe:
    sources: tuple[SourceSpec, ...]  # in recipe order
    target: dict | None = dataclasses.field(hash=False)  # {"_target_": "pkg.Class", **kwargs}
    rules: tuple[BulkRule | ExplicitRule, ...]
    keep: tuple[str, ...] = ()
    base: str | None = None  # a source name
    policy: Policy = Policy()
    output: OutputSpec = OutputSpec()
    target_seed: int = 0
    target_init: str = "full"  # full | per_module

    def source(self, name: str) -> SourceSpec:
        for spec in self.sources:
            if spec.name == name:
                return spec
        raise KeyError(name)


def parse_recipe(cfg: Mapping) -> Recipe:
    """A resolved config (``hydra`` key removed) -> Recipe, or the first RecipeError."""
    if not isinstance(cfg, Mapping):
        raise RecipeError(None, f"expected a mapping at the top of the recipe, got {type_name(cfg)}")
    reject_unknown(cfg, RECIPE_FIELDS + RUN_FIELDS, None)
    # `vars` holds the user's own numbers for `${vars.NAME}`; resolved before this, it
    # means nothing to the planner, so it only has to be a mapping.
    expect_mapping(cfg.get("vars"), "vars")
    sources = _parse_sources(cfg.get("sources"))
    if not sources and (cfg.get("rules") or cfg.get("base") is not None):
        raise RecipeError("sources", "no sources (name at least one checkpoint)")
    names = [spec.name for spec in sources]
    target = _parse_target(cfg.get("target"))
    rules = _parse_rules(cfg.get("rules"), names)
    keep = tuple(text for _, text in strings(cfg.get("keep"), "keep"))
    base = None
    if cfg.get("base") is not None:
        base = expect_str(cfg["base"], "base")
        _check_source(base, "base", names)
    seed = cfg.get("target_seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise wrong_type(seed, "target_seed", "an integer")
    policy, output = _parse_policy(cfg.get("policy")), _parse_output(cfg.get("output"), names)
    init = choice(cfg.get("target_init"), "target_init", INIT_MODES)
    if init == "per_module" and target is None:
        raise RecipeError("target_init", "per_module needs a target model class (target is null)")
    if init == "per_module" and base is not None:
        raise RecipeError("target_init", "per_module makes initial values from the target class, "
                                         f"but this recipe takes them from base '{base}'")
    return Recipe(sources=sources, target=target, rules=rules, keep=keep, base=base, policy=policy,
                  output=output, target_seed=seed or 0, target_init=init)


def _parse_sources(value: object) -> tuple[SourceSpec, ...]:
    specs = []
    for name, raw in expect_mapping(value, "sources").items():
        field = f"sources.{name}"
        if not isinstance(name, str) or not _SOURCE_NAME.fullmatch(name):
            raise RecipeError(field, "invalid source name (letters, digits, '_' and '-')")
        if raw is None or isinstance(raw, str):
            specs.append(SourceSpec(name, expect_str(raw, field)))
            continue
        if not isinstance(raw, Mapping):
            raise wrong_type(raw, field, "a string or a mapping")
        reject_unknown(raw, _SOURCE_FIELDS, field)
        path = expect_str(raw.get("path"), f"{field}.path")
        fmt = choice(raw.get("format"), f"{field}.format", SOURCE_FORMATS)
        key = optional_str(raw.get("key"), f"{field}.key")
        if key is not None and fmt in ("safetensors", "hf"):
            raise RecipeError(f"{field}.key", f"only torch and DCP checkpoints have a key (format is '{fmt}')")
        specs.append(SourceSpec(name, path, fmt, key))
    return tuple(specs)


def _parse_target(value: object) -> dict | None:
    if value is None:
        return None
    target = expect_mapping(value, "target")
    if target.get("_target_") in (None, ""):
        raise RecipeError("target._target_",
                          "missing value (the model class to fill, e.g. torchgraft.examples.ConvNet)")
    expect_str(target["_target_"], "target._target_")
    return copy.deepcopy(dict(target))


def _parse_rules(value: object, sources: list[str]) -> tuple[BulkRule | ExplicitRule, ...]:
    if value is None:
        return ()
    if not is_list(value):
        raise wrong_type(value, "rules", "a list")
    return tuple(_parse_rule(index, raw, sources) for index, raw in enumerate(value))


def _parse_rule(index: int, raw: object, sources: list[str]) -> BulkRule | ExplicitRule:
    field = f"rules[{index}]"
    if not isinstance(raw, Mapping):
        raise wrong_type(raw, field, "a mapping")
    explicit = "to" in raw
    checker = lambda name, path: _check_source(name, path, sources)
    known = _EXPLICIT_FIELDS if explicit else _BULK_FIELDS
    for key in raw:
        if key in known:
            continue
        if key in _EXPLICIT_FIELDS + _BULK_FIELDS:  # a real field, of the other kind of rule
            kind = "bulk rules (without 'to')" if explicit else "explicit rules (with 'to')"
            raise RecipeError(f"{field}.{key}", f"only {kind} take this field")
        # A bulk rule may be an explicit rule whose `to` is misspelt.
        raise RecipeError(f"{field}.{key}", "unknown field" + did_you_mean(key, known + ("to",)))
    if explicit:
        to = expect_str(raw["to"], f"{field}.to")
        refs, each = _explicit_sources(raw.get("from"), f"{field}.from")
        if not refs:
            raise RecipeError(f"{field}.from", "missing value")
        for path, ref in refs:
            name, colon, key = ref.partition(":")
            if not colon or not key or not _SOURCE_NAME.fullmatch(name):
                raise RecipeError(path, f"expected 'source:key' (got {ref!r})")
            _check_source(name, path, sources)
        merge = parse_merge(raw.get("merge"), f"{field}.merge", len(refs), checker)
        if any(each) and not (isinstance(merge, Mapping) and JOINS & set(merge)):
            at = next(i for i, t in enumerate(each) if t)
            raise RecipeError(f"{field}.from[{at}].transform", "per-source transforms need merge: {concat: DIM} or {stack: DIM}")
        if isinstance(merge, Mapping) and JOINS & set(merge):
            merge = {**merge, "each": [list(t) for t in each]}
        return ExplicitRule(
            index, to, tuple(ref for _, ref in refs),
            merge=merge,
            missing=choice(raw.get("missing"), f"{field}.missing", MISSING_MODES),
            transforms=_parse_transforms(raw.get("transform"), f"{field}.transform"))
    names = strings(raw.get("from"), f"{field}.from")
    if not names:
        raise RecipeError(f"{field}.from", "missing value")
    for path, name in names:
        if ":" in name:
            raise RecipeError(path, f"expected a source name (got {name!r}; "
                                    "'source:key' is for explicit rules, with 'to')")
        _check_source(name, path, sources)
    select = tuple(p for _, p in strings(raw.get("select"), f"{field}.select"))
    exclude = tuple(p for _, p in strings(raw.get("exclude"), f"{field}.exclude"))
    rename = _parse_rename(raw.get("rename"), f"{field}.rename")
    types = []
    for path, text in strings(raw.get("types"), f"{field}.types"):
        if not _CLASS_PATH.fullmatch(text):
            raise RecipeError(path, f"expected a module class such as torch.nn.Conv2d (got {text!r})")
        types.append(text)
    merge = parse_merge(raw.get("merge"), f"{field}.merge", len(names), checker)
    if isinstance(merge, Mapping) and JOINS & set(merge):
        raise RecipeError(f"{field}.merge", "concat and stack join the tensors of an explicit rule (with 'to')")
    return BulkRule(
        index, tuple(name for _, name in names), select=select, exclude=exclude, rename=rename,
        types=tuple(types), kind=choice(raw.get("kind"), f"{field}.kind", KINDS),
        merge=merge,
        adapters=_parse_adapters(raw.get("adapter"), f"{field}.adapter", sources),
        missing=choice(raw.get("missing"), f"{field}.missing", MISSING_MODES),
        transforms=_parse_transforms(raw.get("transform"), f"{field}.transform"))


def _parse_rename(value: object, field: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for pattern, replacement in expect_mapping(value, field).items():
        if not isinstance(pattern, str):
            raise RecipeError(field, f"expected string patterns, got {type_name(pattern)} {pattern!r}")
        if replacement == "":
            pairs.append((pattern, ""))  # strips the prefix: `model: ""`
            continue
        pairs.append((pattern, expect_str(replacement, f"{field}.{pattern}")))
    return tuple(pairs)


def _parse_adapters(value: object, field: str, sources: list[str]) -> tuple[tuple[str, float], ...]:
    """``adapter: NAME`` or a list of names and ``{name: NAME, scale: S}`` -> ((name, scale), ...)."""
    adapters = []
    for path, item in one_or_many(value, field):
        scale = 1.0
        if isinstance(item, Mapping):
            reject_unknown(item, _ADAPTER_FIELDS, path)
            raw_scale = item.get("scale", 1.0)
            if isinstance(raw_scale, bool) or not isinstance(raw_scale, (int, float)) or not math.isfinite(raw_scale):
                raise wrong_type(raw_scale, f"{path}.scale", "a finite number")
            scale, item, path = float(raw_scale), item.get("name"), f"{path}.name"
        name = expect_str(item, path)
        _check_source(name, path, sources)
        if name in (a for a, _ in adapters):
            raise RecipeError(path, f"adapter '{name}' is listed twice")
        adapters.append((name, scale))
    return tuple(adapters)


def _explicit_sources(value: object, field: str) -> tuple[list[tuple[str, str]], list[tuple]]:
    """An explicit rule's ``from``: ``source:key`` strings, or ``{key: source:key, transform: [...]}``
    mappings whose transforms apply to that source alone (before a concat or stack merge)."""
    if value is not None and not isinstance(value, (str, Mapping)) and not is_list(value):
        raise wrong_type(value, field, "a string or a list")
    refs, each = [], []
    for path, item in one_or_many(value, field):
        if isinstance(item, Mapping):
            reject_unknown(item, ("key", "transform"), path)
            refs.append((f"{path}.key", expect_str(item.get("key"), f"{path}.key")))
            each.append(_parse_transforms(item.get("transform"), f"{path}.transform"))
        else:
            refs.append((path, expect_str(item, path)))
            each.append(())
    return refs, each


def _parse_transforms(value: object, field: str) -> tuple:
    specs = []
    for path, item in one_or_many(value, field):
        if isinstance(item, str):
            specs.append(expect_str(item, path))
        elif isinstance(item, Mapping) and len(item) == 1 and isinstance(next(iter(item)), str):
            specs.append(copy.deepcopy(dict(item)))
        elif isinstance(item, Mapping):
            raise RecipeError(path,
                              f"expected a one-key mapping such as {{scale: 0.5}}, got {len(item)} keys")
        else:
            raise wrong_type(item, path, "a string or a one-key mapping")
    return tuple(specs)


def _parse_policy(value: object) -> Policy:
    raw = expect_mapping(value, "policy")
    reject_unknown(raw, _POLICY_FIELDS, "policy")
    return Policy(unassigned=choice(raw.get("unassigned"), "policy.unassigned", UNASSIGNED_MODES),
                  unused=choice(raw.get("unused"), "policy.unused", UNUSED_MODES),
                  mismatch=choice(raw.get("mismatch"), "policy.mismatch", MISMATCH_MODES))


def _parse_output(value: object, sources: list[str]) -> OutputSpec:
    raw = expect_mapping(value, "output")
    reject_unknown(raw, _OUTPUT_FIELDS, "output")
    path = optional_str(raw.get("path"), "output.path")
    dtype = _parse_dtype(raw.get("dtype"), "output.dtype")
    overwrite = raw.get("overwrite")
    if overwrite is not None and not isinstance(overwrite, bool):
        raise wrong_type(overwrite, "output.overwrite", "true or false")
    config = raw.get("config")
    if config is not None and not isinstance(config, bool):
        raise wrong_type(config, "output.config", "true or false")
    return OutputSpec(path, dtype, bool(overwrite), byte_size(raw.get("shard_size"), "output.shard_size"),
                      _parse_copy_files(raw.get("copy_files"), sources), bool(config))


def _parse_copy_files(value: object, sources: list[str]) -> CopyFiles | None:
    """``copy_files: NAME`` (every non-checkpoint file) or ``{from: NAME, files: [globs]}``;
    a ``from`` with a ``/`` in it is a directory that is not a source (``path/to/hf_dir``)."""
    field = "output.copy_files"
    if value is None:
        return None
    if isinstance(value, str):
        _check_source(expect_str(value, field), field, sources)
        return CopyFiles(value)
    if not isinstance(value, Mapping):
        raise wrong_type(value, field, "a source name or a mapping")
    reject_unknown(value, _COPY_FIELDS, field)
    source = expect_str(value.get("from"), f"{field}.from")
    folder = None
    if source not in sources and ("/" in source or "\\" in source):
        source, folder = None, source
    else:
        _check_source(source, f"{field}.from", sources)
    files = strings(value.get("files"), f"{field}.files")
    for path, name in files:
        if "/" in name or "\\" in name or name in (".", ".."):
            raise RecipeError(path, f"expected a file name or glob in the source's top folder (got {name!r})")
    return CopyFiles(source, tuple(name for _, name in files), folder)


def _parse_dtype(value: object, field: str) -> str | None:
    if value is None:
        return None
    text = expect_str(value, field)
    name = parse_dtype(text)
    if name is None:
        known = sorted(n for n in DTYPE_NAMES if is_floating(n))
        hint = did_you_mean(text, known) or f" (known: {', '.join(known)})"
        raise RecipeError(field, f"unknown dtype {text!r}{hint}")
    if not is_floating(name):
        raise RecipeError(field, f"must be a floating dtype (got {text!r})")
    return name


def _check_source(name: str, field: str, sources: list[str]) -> None:
    if name not in sources:
        hint = did_you_mean(name, sources) or f" (known: {', '.join(sorted(sources))})"
        raise RecipeError(field, f"unknown source {name!r}{hint}")


# The field names of each section, for the recipe's JSON Schema (recipe/json_schema.py).
SECTION_FIELDS = {"source": _SOURCE_FIELDS, "bulk": _BULK_FIELDS, "explicit": _EXPLICIT_FIELDS,
                  "policy": _POLICY_FIELDS, "output": _OUTPUT_FIELDS, "copy_files": _COPY_FIELDS}
