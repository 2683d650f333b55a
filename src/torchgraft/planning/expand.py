"""Rules x inventories -> assignments: each bulk or explicit rule expanded into the
target tensors (or regions) it writes, with templates bound, renames applied, merged
sources paired and transforms' shapes checked. Reads headers only."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from torchgraft.checkpoints import Reader
from torchgraft.core.errors import PlanError
from torchgraft.core.tensors import TensorInfo, is_floating
from torchgraft.core.text import closest, shape_text
from torchgraft.keys.patterns import KeyIndex, PatternError, Renamer, Template, select_keys
from torchgraft.keys.regions import Box, Region, describe, split_key_region
from torchgraft.planning.adapters import RuleAdapters
from torchgraft.planning.merging import LayerPositions, check_merge, gradient_variable, has_gradient, resolve
from torchgraft.planning.selection import TargetFilter
from torchgraft.plans.types import Piece, Read, Skipped
from torchgraft.recipe.parse import BulkRule, ExplicitRule, Recipe
from torchgraft.transforms import Transform, compile_transforms
from torchgraft.transforms import describe as describe_transform


class _Assignment(NamedTuple):
    """One rule writing one target tensor (or a region of it). A named tuple: a bulk
    rule makes one per tensor, and a frozen dataclass costs three times as much."""

    key: str
    box: Box | None  # None: the whole tensor
    piece: Piece
    field: str  # recipe field to blame


@dataclass(frozen=True)
class _RuleOutput:
    """What every assignment of one rule shares."""

    field: str
    transforms: tuple[Transform, ...]
    specs: tuple  # the transforms' canonical specs, as plans record them

    @staticmethod
    def of(rule: BulkRule | ExplicitRule) -> _RuleOutput:
        transforms = compile_transforms(rule.transforms, f"{rule.field}.transform")
        return _RuleOutput(rule.field, transforms, tuple(t.spec for t in transforms))


_floating = functools.lru_cache(maxsize=None)(is_floating)  # per dtype name, not per tensor


def _reads_text(reads: Sequence[Read]) -> str:
    return " + ".join(f"{r.source}:{r.key}{r.region or ''}" for r in reads)


def _mismatch(reads, key, box, target, src_shape, shape, dtype, transforms) -> str | None:
    """Why values of ``shape`` and ``dtype`` cannot go to ``key`` (its region ``box``), or None."""
    expected = box.shape if box is not None else target.shape
    if shape == tuple(expected) and _floating(dtype) == _floating(target.dtype):
        return None
    source_text = _reads_text(reads)
    where = f"{key}{describe(box, target.shape) if box is not None else ''}"
    if shape != tuple(expected):
        if transforms:
            steps = ", ".join(describe_transform(t.spec) for t in transforms)
            return (f"{source_text} {shape_text(src_shape)} becomes {shape_text(shape)} after {steps}, "
                    f"but {where} has shape {shape_text(expected)}")
        return f"{source_text} has shape {shape_text(shape)} but {where} has shape {shape_text(expected)}"
    return f"{source_text} is {dtype} but {where} is {target.dtype}"


class RuleExpander:
    """Expands each rule against the inventories into assignments (one per target tensor or
    region), checking shapes, dtypes and keys as it goes. The planner checks the whole."""

    def __init__(self, recipe: Recipe, readers: Mapping[str, Reader], target: list[TensorInfo] | None):
        self.recipe = recipe
        self.readers = readers
        self.inventories = {name: r.by_key() for name, r in readers.items()}
        self._indexes: dict[str | None, KeyIndex] = {}  # by source, None for the target (see _index)
        self.target = {t.key: t for t in target} if target is not None else None
        self.extracted: dict[str, TensorInfo] = {}  # the output's tensors when there is no target
        self.assignments: list[_Assignment] = []
        self.skipped: list[Skipped] = []

    # -- the target's tensors ------------------------------------------------------

    def _target_info(self, key: str, field: str, missing: str, hint_from: str) -> TensorInfo | None:
        if self.target is None:
            return None
        if key in self.target:
            return self.target[key]
        if missing == "skip":
            return None
        raise PlanError(field, f"{hint_from} -> '{key}': the target has no such tensor{closest(key, list(self.target))}")

    # -- rules ---------------------------------------------------------------------

    def bulk(self, rule: BulkRule) -> None:
        field = rule.field
        check_merge(rule.merge, rule.sources, field)
        output = _RuleOutput.of(rule)
        for pattern, replacement in rule.rename:  # every entry checked before any key reaches it
            try:
                Renamer([(pattern, replacement)])
            except PatternError as err:
                raise PlanError(f"{field}.rename.{pattern}", str(err)) from None
        renamer = Renamer(list(rule.rename))
        only = self._target_filter(rule)
        taken = [self._bulk_keys(rule, source, renamer, only) for source in rule.sources]
        lead = rule.sources[0]
        for source, keys in zip(rule.sources[1:], taken[1:]):  # merged sources give the same tensors
            for a, a_keys, b, b_keys in ((lead, taken[0], source, keys), (source, keys, lead, taken[0])):
                extra = next((k for k in a_keys if k not in b_keys), None)
                if extra is not None:
                    raise PlanError(f"{field}.from", f"{a}:{a_keys[extra][0]} -> '{extra}' has no counterpart in '{b}' "
                                                     "(merged sources must provide the same tensors)")
        if only is not None and not taken[0]:
            raise PlanError(field, f"no tensor of source '{lead}' lands on a target tensor that types/kind select")
        others = list(zip(rule.sources[1:], taken[1:]))
        base = rule.merge.get("base") if isinstance(rule.merge, Mapping) else None
        if base is not None:  # the base's tensor for each new key, read last
            base_keys = self._bulk_keys(rule, base, renamer, only)
            extra = next((k for k in taken[0] if k not in base_keys), None)
            if extra is not None:
                raise PlanError(f"{field}.merge.base", f"{lead}:{taken[0][extra][0]} -> '{extra}' has no counterpart "
                                                       f"in base '{base}'")
            others.append((base, base_keys))
        if has_gradient(rule.merge) and gradient_variable(rule.merge):
            raise PlanError(f"{field}.merge", "over: applies to explicit rules (a bulk rule's gradients run over the "
                                              "first number in each key)")
        positions = LayerPositions([LayerPositions.number_in(k) for k in taken[0]]) if has_gradient(rule.merge) else None
        adapters = RuleAdapters(rule, self.readers, self.recipe.policy.unused) if rule.adapters else None
        from_field = f"{field}.from"
        for new_key, (key, blame, target) in taken[0].items():
            reads = (self._read(lead, key),)
            if others:  # merged: the tensor each other source gives for the same new key
                reads += tuple(self._read(source, keys[new_key][0]) for source, keys in others)
            shape = self._merged_shape(reads, from_field)
            merge = rule.merge if positions is None else resolve(rule.merge, positions.t(LayerPositions.number_in(new_key)))
            if adapters is not None:
                reads, merge = adapters.apply(reads[0], shape)
                shape = self._read_shape(reads[0], from_field) if merge is None else shape  # modules_to_save
            self._assign(new_key, None, target, reads, output, blame, shape, merge)
        if adapters is not None:
            adapters.check_used()

    def _bulk_keys(self, rule: BulkRule, source: str, renamer: Renamer, only) -> dict[str, tuple[str, str, TensorInfo | None]]:
        """The tensors ``rule`` takes from ``source``: new key -> (source key, field to blame, target tensor)."""
        field = rule.field
        selected = self._selected(rule, source)
        renamed, not_renamed = f"{field}.rename", f"{field}.select"  # the fields to blame
        produced: dict[str, str] = {}
        taken: dict[str, tuple[str, str, TensorInfo | None]] = {}
        for key in selected:
            try:
                new_key, used = renamer.rename(key)
            except PatternError as err:
                raise PlanError(f"{field}.rename", f"{source}:{key}: {err}") from None
            blame = renamed if used is not None else not_renamed
            if new_key in produced:
                raise PlanError(blame, f"{source}:{produced[new_key]} and {source}:{key} both map to '{new_key}'")
            produced[new_key] = key
            if only is not None:  # a filter selects among target tensors: others are not this rule's
                target = self.target.get(new_key)
                if target is None or not only.accepts(target):
                    continue
            elif self.target is None:  # extraction: the rule defines the output tensor
                target = None
            else:
                target = self._target_info(new_key, blame, rule.missing, f"{source}:{key}")
                if target is None:
                    continue  # missing: skip
            taken[new_key] = (key, blame, target)
        return taken

    def _index(self, source: str | None) -> KeyIndex:
        """The key index of a source (None: of the target), made when a rule first matches its keys."""
        if source not in self._indexes:
            keys = self.target if source is None else self.inventories[source]
            self._indexes[source] = KeyIndex(list(keys))
        return self._indexes[source]

    def _selected(self, rule: BulkRule, source: str) -> list[str]:
        """The keys of ``source`` that ``rule`` selects and does not exclude, in file order."""
        index = self._index(source)
        selected = index.keys
        if rule.select:
            found = index.matches(rule.select)
            for i, positions in enumerate(found):
                if not positions:
                    raise PlanError(f"{rule.field}.select[{i}]", f"'{rule.select[i]}' matches no tensor of source '{source}'")
            selected = index.keys_at(found)
        if rule.exclude:
            excluded = set(select_keys(selected, rule.exclude))
            selected = [k for k in selected if k not in excluded]
        return selected

    def _target_filter(self, rule: BulkRule) -> TargetFilter | None:
        if not rule.types and rule.kind == "all":
            return None
        which = "types" if rule.types else "kind"
        if self.target is None or any(t.kind is None or t.module_type is None for t in self.target.values()):
            raise PlanError(f"{rule.field}.{which}", "selecting by module type or kind needs a target model class")
        return TargetFilter(rule.types, rule.kind, rule.field, list(self.target.values()))

    def explicit(self, rule: ExplicitRule) -> None:
        field = rule.field
        check_merge(rule.merge, [ref.partition(":")[0] for ref in rule.sources], field)
        output = _RuleOutput.of(rule)
        base = rule.merge.get("base") if isinstance(rule.merge, Mapping) else None
        to_key, to_region = self._split(rule.to, f"{field}.to")
        froms = [self._parse_from(text, f"{field}.from") for text in rule.sources]
        to_template = Template(to_key)
        from_templates = [Template(key) for _, key, _ in froms]
        self._check_bound(rule, to_template, from_templates)
        pairs = self._expand(rule, field, to_template, froms, from_templates)
        positions, over = None, None
        if has_gradient(rule.merge):
            over = gradient_variable(rule.merge) or next(iter(pairs[0][0]), None)
            if over is not None and over not in pairs[0][0]:
                raise PlanError(f"{field}.merge", f"over: {over} is not a variable of this rule")
            if over is not None:
                odd = next((b[over] for b, _ in pairs if not str(b[over]).isdigit()), None)
                if odd is not None:
                    raise PlanError(f"{field}.merge", f"a gradient over {over} needs layer numbers, but {over} binds {odd!r}")
            numbers = [int(b[over]) if over is not None else LayerPositions.number_in(to) for b, to in pairs]
            positions = LayerPositions(numbers)
        for bindings, to_text in pairs:
            target = self._target_info(to_text, f"{field}.to", rule.missing, rule.to)
            if target is None and self.target is not None:
                continue
            reads = []
            for text, (source, _, region), template in zip(rule.sources, froms, from_templates):
                try:
                    key = template.format(bindings)
                except PatternError as err:
                    raise PlanError(f"{field}.from", f"{err} (filling '{text}' for {to_text})") from None
                info = self.inventories[source].get(key)
                if info is None:
                    if rule.missing == "skip":
                        break
                    raise PlanError(
                        f"{field}.from", f"source '{source}' has no tensor '{key}'{closest(key, list(self.inventories[source]))}"
                    )
                if region is not None:
                    self._box(region, info.shape, f"{field}.from", f"{source}:{key}")
                reads.append(Read(source, key, info.shape, info.dtype, str(region) if region else None))
            else:
                if base is not None:
                    first = reads[0]
                    info = self.inventories[base].get(first.key)
                    if info is None:
                        raise PlanError(f"{field}.merge.base", f"base '{base}' has no tensor '{first.key}'"
                                                               f"{closest(first.key, list(self.inventories[base]))}")
                    reads.append(Read(base, first.key, info.shape, info.dtype, first.region))
                src_shape = self._merged_shape(reads, f"{field}.from")
                merge = rule.merge
                if positions is not None:
                    number = int(bindings[over]) if over is not None else LayerPositions.number_in(to_text)
                    merge = resolve(rule.merge, positions.t(number))
                box = None
                if to_region is not None:
                    if target is None:
                        raise PlanError(f"{field}.to", f"'{rule.to}': a region needs a target tensor to write into (set target or base)")
                    box = self._box(to_region, target.shape, f"{field}.to", to_text)
                self._assign(to_text, box, target, tuple(reads), output, f"{field}.to", src_shape, merge)

    def _check_bound(self, rule: ExplicitRule, to_template: Template, from_templates: list[Template]) -> None:
        """Every variable a side uses must be bound by the side that binds (up front, not per key)."""
        sides = [(f"{rule.field}.to", rule.to, to_template)]
        sides += [(f"{rule.field}.from", text, t) for text, t in zip(rule.sources, from_templates)]
        binder = next((s for s in sides if s[2].variables), sides[0])
        bound = binder[2].variables
        for field, text, template in sides:
            for name in template.referenced:
                if name not in bound:
                    names = ", ".join(bound) or "nothing"
                    raise PlanError(field, f"{{{name}}} in '{text}' is not bound ('{binder[1]}' binds {names})")

    def _expand(self, rule, field, to_template, froms, from_templates):
        """Bind template variables on the side where they appear plainly."""
        if to_template.variables:
            if self.target is None:
                raise PlanError(f"{field}.to", f"'{rule.to}': template variables in 'to' need a target to bind against")
            index = self._index(None)
            pairs = [(b, index.keys[at]) for at, b in index.full_matches(to_template)]
            if not pairs:
                raise PlanError(f"{field}.to", f"'{rule.to}' matches no target tensor")
            return pairs
        plain = [(i, t) for i, t in enumerate(from_templates) if t.variables]
        if plain:
            i, template = plain[0]
            source = froms[i][0]
            pairs = []
            index = self._index(source)
            for at, b in index.full_matches(template):
                try:
                    pairs.append((b, to_template.format(b)))
                except PatternError as err:
                    raise PlanError(f"{field}.to", f"{err} (filling '{rule.to}' for {source}:{index.keys[at]})") from None
            if not pairs:
                raise PlanError(f"{field}.from", f"'{rule.sources[i]}' matches no tensor of source '{source}'")
            return pairs
        try:
            return [({}, to_template.format({}))]
        except PatternError as err:
            raise PlanError(f"{field}.to", str(err)) from None

    def _assign(self, key, box, target, reads, output: _RuleOutput, blame, shape, merge):
        field, transforms = output.field, output.transforms
        src_shape, dtype = tuple(shape), reads[0].dtype
        for i, transform in enumerate(transforms):
            try:
                shape, dtype = transform.out_shape(tuple(shape)), transform.out_dtype(dtype)
            except ValueError as err:
                raise PlanError(f"{field}.transform[{i}]", f"{_reads_text(reads)}: {err}") from None
            if transform.reads_initial and self.target is None:
                raise PlanError(f"{field}.transform[{i}]", f"{describe_transform(transform.spec)} needs the target's "
                                                           "initial values (set target, or base)")
        shape = tuple(shape)
        region = None
        if target is None:  # extraction: the rule defines the output tensor, so its values fit
            self.extracted.setdefault(key, TensorInfo(key, shape, dtype))  # a second, conflicting rule fails the overlap check
        else:
            problem = _mismatch(reads, key, box, target, src_shape, shape, dtype, transforms)
            if problem:
                if self.recipe.policy.mismatch == "skip":
                    self.skipped.append(Skipped(key, field, problem))
                    return
                raise PlanError(blame, problem + " (set policy.mismatch=skip to leave it out)")
            if box is not None:
                region = describe(box, target.shape)
        piece = Piece(reads, field, region, output.specs, merge)
        self.assignments.append(_Assignment(key, box, piece, blame))

    def _read(self, source: str, key: str) -> Read:
        info = self.inventories[source][key]
        return Read(source, key, info.shape, info.dtype)

    def _merged_shape(self, reads: Sequence[Read], field: str) -> tuple[int, ...]:
        """The shape of the values the reads give; merged reads must agree in shape and dtype."""
        first = reads[0]
        shape = self._read_shape(first, field)
        for read in reads[1:]:
            other = self._read_shape(read, field)
            if other != shape or read.dtype != first.dtype:
                raise PlanError(
                    field,
                    f"cannot merge {first.source}:{first.key}{first.region or ''} {shape_text(shape)} {first.dtype} "
                    f"with {read.source}:{read.key}{read.region or ''} {shape_text(other)} {read.dtype} "
                    "(merged tensors must have the same shape and dtype)",
                )
        return shape

    # -- helpers -------------------------------------------------------------------

    def _split(self, text: str, field: str) -> tuple[str, Region | None]:
        try:
            return split_key_region(text)
        except ValueError as err:
            raise PlanError(field, str(err)) from None

    def _parse_from(self, text: str, field: str) -> tuple[str, str, Region | None]:
        source, _, rest = text.partition(":")
        key, region = self._split(rest, field)
        return source, key, region

    def _box(self, region: Region, shape, field: str, key: str) -> Box:
        try:
            return region.box(tuple(shape))
        except ValueError as err:
            raise PlanError(field, f"{key}{region}: {err} (shape {shape_text(shape)})") from None

    def _read_shape(self, read: Read, field: str) -> tuple[int, ...]:
        if read.region is None:
            return tuple(read.shape)
        return Region.parse(read.region).box(tuple(read.shape)).shape
