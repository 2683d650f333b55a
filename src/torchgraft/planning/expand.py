"""Rules x inventories -> assignments: each bulk or explicit rule expanded into the
target tensors (or regions) it writes, with templates bound, renames applied, merged
sources paired and transforms' shapes checked. Reads headers only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from torchgraft.checkpoints import Reader
from torchgraft.core.errors import PlanError
from torchgraft.core.tensors import TensorInfo, is_floating
from torchgraft.core.text import closest, shape_text
from torchgraft.keys.patterns import KeyIndex, PatternError, Renamer, Template
from torchgraft.keys.regions import Box, Region, describe, slot_maker, split_key_region
from torchgraft.planning.adapters import RuleAdapters
from torchgraft.planning.merging import LayerPositions, check_merge, gradient_variable, has_gradient, resolve
from torchgraft.planning.selection import TargetFilter
from torchgraft.plans.types import Piece, Read, Skipped
from torchgraft.recipe.parse import BulkRule, ExplicitRule, Recipe
from torchgraft.transforms import Transform, compile_transforms
from torchgraft.transforms import describe as describe_transform
from torchgraft.transforms.core import check_size


class _Assignment(NamedTuple):
    """One rule writing one target tensor (or a region of it). A named tuple: a bulk
    rule makes one per tensor, and a frozen dataclass costs three times as much."""

    key: str
    box: Box | None  # None: the whole tensor
    piece: Piece
    field: str  # recipe field to blame


class _Sides(NamedTuple):
    """An explicit rule's two sides, parsed: key templates and regions."""

    rule: ExplicitRule
    to_template: Template
    to_region: Region | None
    from_templates: list[Template]
    from_regions: list[Region | None]


@dataclass(frozen=True)
class _RuleOutput:
    """What every assignment of one rule shares."""

    field: str
    transforms: tuple[Transform, ...]
    specs: tuple  # the transforms' canonical specs, as plans record them
    merge: object = None
    each: tuple = ()  # per source, its own transforms (concat and stack merges)

    @staticmethod
    def of(rule: BulkRule | ExplicitRule) -> _RuleOutput:
        transforms = compile_transforms(rule.transforms, f"{rule.field}.transform")
        merge, each = rule.merge, ()
        if isinstance(merge, Mapping) and "each" in merge:  # the plan records canonical specs
            each = tuple(compile_transforms(specs, f"{rule.field}.from[{i}].transform") for i, specs in enumerate(merge["each"]))
            merge = {**merge, "each": [[t.spec for t in ts] for ts in each]}
        return _RuleOutput(rule.field, transforms, tuple(t.spec for t in transforms), merge, each)


def _reads_text(reads: Sequence[Read]) -> str:
    return " + ".join(f"{r.source}:{r.key}{r.region or ''}" for r in reads)


def _mismatch(reads, key, box, target, src_shape, shape, dtype, transforms, expected=None) -> str | None:
    """Why values of ``shape`` and ``dtype`` cannot go to ``key`` (its region ``box``, of shape
    ``expected`` when the caller knows it), or None."""
    if expected is None:
        expected = box.shape if box is not None else target.shape
    if shape == tuple(expected) and is_floating(dtype) == is_floating(target.dtype):
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


def pattern_matches(index: KeyIndex, patterns: Sequence[str], field: str) -> list[list[int]]:
    """``index.matches(patterns)``; a malformed pattern is a user error naming ``field[i]``."""
    try:
        return index.matches(patterns)
    except PatternError as err:
        raise PlanError(f"{field}[{err.position}]", str(err)) from None


class RuleExpander:
    """Expands each rule against the inventories into assignments (one per target tensor or
    region), checking shapes, dtypes and keys as it goes. The planner checks the whole."""

    def __init__(self, recipe: Recipe, readers: Mapping[str, Reader], target: list[TensorInfo] | None):
        self.recipe = recipe
        self.readers = readers
        self.inventories = {name: r.by_key() for name, r in readers.items()}
        self._indexes: dict[str | None, KeyIndex] = {}  # by source, None for the target (see _index)
        # (source, key) left out on purpose: by a bulk rule's exclude, types or kind, or
        # (planner) named like a target tensor in keep. Unused, but not warned about.
        self.excluded: set[tuple[str, str]] = set()
        self.kept_keys: set[str] = set()
        self.target = {t.key: t for t in target} if target is not None else None
        self.extracted: dict[str, TensorInfo] = {}  # the output's tensors when there is no target
        self.assignments: list[_Assignment] = []
        # explicit rules that index a region with a bound variable (stacking): each checked
        # that no two of its bindings write one slot, so their slots need no second check
        self.slot_checked: set[str] = set()
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
        # the fields to blame: only ones the recipe wrote (no select: the rule itself)
        renamed, not_renamed = f"{field}.rename", f"{field}.select" if rule.select else field
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
                    self.excluded.add((source, key))  # the rule's types/kind leave it out
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
            found = pattern_matches(index, rule.select, f"{rule.field}.select")
            for i, positions in enumerate(found):
                if not positions:
                    raise PlanError(f"{rule.field}.select[{i}]", f"'{rule.select[i]}' matches no tensor of source '{source}'")
            selected = index.keys_at(found)
        if rule.exclude:
            among = KeyIndex(selected)
            excluded = set(among.keys_at(pattern_matches(among, rule.exclude, f"{rule.field}.exclude")))
            selected = [k for k in selected if k not in excluded]
            self.excluded.update((source, k) for k in excluded)
        return selected

    def _target_filter(self, rule: BulkRule) -> TargetFilter | None:
        if not rule.types and rule.kind == "all":
            return None
        which = "types" if rule.types else "kind"
        # A base checkpoint says nothing of modules; a model's state-dict hooks may rename
        # some keys (those stay unknown and are never selected), not all of them.
        if self.target is None or all(t.kind is None and t.module_type is None for t in self.target.values()):
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
        sides = _Sides(rule, to_template, to_region, from_templates, [region for _, _, region in froms])
        at = self._binder(sides)
        self._check_bound(sides, at)
        slots: dict[tuple[str, Box], tuple] = {}  # (key, slot) -> the reads a bound index wrote there
        makers: dict = {}  # target shape -> slot_maker of the to region
        pairs = self._expand(rule, field, sides, at, froms)
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
        to_field, from_field = f"{field}.to", f"{field}.from"  # made once: a stacking rule loops 18k times
        joined = isinstance(rule.merge, Mapping) and "each" in rule.merge
        if to_region is not None and to_region.variables:
            self.slot_checked.add(to_field)
        for bindings, to_text in pairs:
            target = self._target_info(to_text, to_field, rule.missing, rule.to)
            if target is None and self.target is not None:
                continue
            reads = []
            for text, (source, _, region), template in zip(rule.sources, froms, from_templates):
                try:
                    key = template.format(bindings)
                except PatternError as err:
                    raise PlanError(from_field, f"{err} (filling '{text}' for {to_text})") from None
                info = self.inventories[source].get(key)
                if info is None:
                    if rule.missing == "skip":
                        break
                    raise PlanError(
                        f"{field}.from", f"source '{source}' has no tensor '{key}'{closest(key, list(self.inventories[source]))}"
                    )
                if region is not None:
                    bound = self._bind_region(region, bindings, f"{field}.from", text)
                    self._box(bound, info.shape, f"{field}.from", f"{source}:{key}", region, bindings)
                    region = bound
                reads.append(Read(source, key, info.shape, info.dtype, str(region) if region else None))
            else:
                if base is not None:
                    first = reads[0]
                    info = self.inventories[base].get(first.key)
                    if info is None:
                        raise PlanError(f"{field}.merge.base", f"base '{base}' has no tensor '{first.key}'"
                                                               f"{closest(first.key, list(self.inventories[base]))}")
                    reads.append(Read(base, first.key, info.shape, info.dtype, first.region))
                if joined:
                    src_shape = self._joined_shape(reads, rule, output)
                elif len(reads) == 1 and reads[0].region is None:
                    src_shape = reads[0].shape
                else:
                    src_shape = self._merged_shape(reads, from_field)
                merge = output.merge
                if positions is not None:
                    number = int(bindings[over]) if over is not None else LayerPositions.number_in(to_text)
                    merge = resolve(rule.merge, positions.t(number))
                box = text = expected = None
                if to_region is not None:
                    if target is None:
                        raise PlanError(f"{field}.to", f"'{rule.to}': a region needs a target tensor to write into (set target or base)")
                    made = None
                    if to_region.variables:  # stacking: one slot per binding, made fast
                        if target.shape not in makers:
                            makers[target.shape] = slot_maker(to_region, target.shape)
                        maker = makers[target.shape]
                        made = maker([bindings.get(v, "") for v in to_region.variables]) if maker else None
                        expected = maker.shape if made is not None else None
                    if made is None:  # the slow way, which says what is wrong
                        bound = self._bind_region(to_region, bindings, f"{field}.to", rule.to)
                        made = self._box(bound, target.shape, f"{field}.to", to_text, to_region, bindings, reads), None
                    box, text = made
                    if to_region.variables:
                        self._one_write_per_slot(slots, to_text, box, reads, to_field, target.shape)
                self._assign(to_text, box, target, tuple(reads), output, to_field, src_shape, merge, text, expected)

    def _binder(self, sides: _Sides) -> int | None:
        """The side that binds the variables: -1 for ``to``, else the index of a ``from``;
        None when no side has a plain variable. ``to`` binds against the target's keys when
        there is a target and its key names every index variable of its region; otherwise
        the first ``from`` with plain variables does."""
        to_vars = sides.to_template.variables
        region_vars = sides.to_region.variables if sides.to_region is not None else ()
        if to_vars and self.target is not None and all(v in to_vars for v in region_vars):
            return -1
        plain = next((i for i, (t, r) in enumerate(zip(sides.from_templates, sides.from_regions))
                      if t.variables or (r is not None and r.variables)), None)
        if plain is not None:
            return plain
        return -1 if to_vars or region_vars else None

    def _check_bound(self, sides: _Sides, at: int | None) -> None:
        """Every variable a side uses must be bound by the side that binds (up front, not per key).
        A ``from`` that binds also binds the index variables of its region: they range over
        that dimension (unstacking)."""
        rule = sides.rule
        listed = [(f"{rule.field}.to", rule.to, sides.to_template, sides.to_region)]
        listed += [(f"{rule.field}.from", text, t, r) for text, t, r in zip(rule.sources, sides.from_templates, sides.from_regions)]
        binder = listed[0] if at is None else listed[at + 1]
        bound = binder[2].variables
        if at is not None and at >= 0 and binder[3] is not None:
            bound = bound + tuple(v for v in binder[3].variables if v not in bound)
        for field, text, template, region in listed:
            for name in template.referenced + (region.variables if region is not None else ()):
                if name not in bound:
                    names = ", ".join(bound) or "nothing"
                    raise PlanError(field, f"{{{name}}} in '{text}' is not bound ('{binder[1]}' binds {names})")

    def _expand(self, rule, field, sides: _Sides, at: int | None, froms):
        """Bind template variables on the side where they appear plainly."""
        to_template = sides.to_template
        if at == -1:
            if self.target is None:
                raise PlanError(f"{field}.to", f"'{rule.to}': template variables in 'to' need a target to bind against")
            index = self._index(None)
            pairs = [(b, index.keys[found]) for found, b in index.full_matches(to_template)]
            if not pairs:
                raise PlanError(f"{field}.to", f"'{rule.to}' matches no target tensor")
            return pairs
        if at is not None:
            template, region = sides.from_templates[at], sides.from_regions[at]
            source = froms[at][0]
            free = [v for v in region.variables if v not in template.variables] if region is not None else []
            pairs = []
            index = self._index(source)
            for found, b in index.full_matches(template):
                key = index.keys[found]
                for bindings in self._over_dimension(b, free, region, self.inventories[source][key].shape):
                    try:
                        pairs.append((bindings, to_template.format(bindings)))
                    except PatternError as err:
                        raise PlanError(f"{field}.to", f"{err} (filling '{rule.to}' for {source}:{key})") from None
            if not pairs:
                raise PlanError(f"{field}.from", f"'{rule.sources[at]}' matches no tensor of source '{source}'")
            return pairs
        try:
            return [({}, to_template.format({}))]
        except PatternError as err:
            raise PlanError(f"{field}.to", str(err)) from None

    @staticmethod
    def _over_dimension(bindings: dict, free: list[str], region: Region | None, shape) -> list[dict]:
        """``bindings`` extended with each index of the dimensions the ``free`` region variables index."""
        out = [bindings]
        for name in free:
            dim = region.var_dim(name, len(shape))
            size = shape[dim] if 0 <= dim < len(shape) else 0
            out = [{**b, name: str(n)} for b in out for n in range(size)]
        return out

    def _bind_region(self, region: Region, bindings, field: str, text: str) -> Region:
        try:
            return region.bind(bindings)
        except ValueError as err:
            raise PlanError(field, f"'{text}': {err}") from None

    @staticmethod
    def _one_write_per_slot(slots: dict, key: str, box: Box, reads, field: str, shape) -> None:
        """Two bindings of one rule must not write the same slot (``experts.1`` and ``experts.01``)."""
        slot = (key, box.bounds)
        if slot in slots:
            raise PlanError(field, f"{key}{describe(box, shape)} is written twice by this rule: by {_reads_text(slots[slot])} "
                                   f"and by {_reads_text(reads)} (two bindings give the same index)")
        slots[slot] = reads

    def _assign(self, key, box, target, reads, output: _RuleOutput, blame, shape, merge, region_text: str | None = None,
                expected: tuple[int, ...] | None = None):
        field, transforms = output.field, output.transforms
        src_shape, dtype = tuple(shape), reads[0].dtype
        for i, transform in enumerate(transforms):
            try:
                shape, dtype = transform.out_shape(tuple(shape)), transform.out_dtype(dtype)
                check_size(shape)
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
            problem = _mismatch(reads, key, box, target, src_shape, shape, dtype, transforms, expected)
            if problem:
                if self.recipe.policy.mismatch == "skip":
                    self.skipped.append(Skipped(key, field, problem))
                    return
                if blame.endswith(".to"):  # an explicit rule: it names this one tensor
                    fix = f"remove the rule and add '{key}' to keep to keep its initial value"
                else:
                    fix = f"add '{reads[0].key}' to {field}.exclude and '{key}' to keep to keep its initial value"
                raise PlanError(blame, f"{problem} ({fix}, or set policy.mismatch=skip to leave out every mismatch)")
            if box is not None:
                region = region_text or describe(box, target.shape)
        piece = Piece(reads, field, region, output.specs, merge)
        self.assignments.append(_Assignment(key, box, piece, blame))

    def _read(self, source: str, key: str) -> Read:
        info = self.inventories[source][key]
        return Read(source, key, info.shape, info.dtype)

    def _joined_shape(self, reads: Sequence[Read], rule: ExplicitRule, output: _RuleOutput) -> tuple[int, ...]:
        """The shape of ``{concat: DIM}`` or ``{stack: DIM}`` of the reads, each after its own
        transforms: the same dtype, and the same shape but in DIM when concatenating."""
        how = "concat" if "concat" in rule.merge else "stack"
        dim = rule.merge[how]
        shapes = []
        for i, (read, transforms) in enumerate(zip(reads, output.each)):
            shape, dtype = self._read_shape(read, f"{rule.field}.from"), read.dtype
            for j, transform in enumerate(transforms):
                try:
                    shape, dtype = tuple(transform.out_shape(tuple(shape))), transform.out_dtype(dtype)
                except ValueError as err:
                    raise PlanError(f"{rule.field}.from[{i}].transform[{j}]", f"{_reads_text([read])}: {err}") from None
            if dtype != reads[0].dtype:
                raise PlanError(f"{rule.field}.from[{i}]", f"cannot {how} {_reads_text([read])} ({dtype}) with "
                                                           f"{_reads_text(reads[:1])} ({reads[0].dtype}): the dtypes differ")
            shapes.append(shape)
        first = shapes[0]
        ndim = len(first) + (how == "stack")
        if not -ndim <= dim < ndim:
            raise PlanError(f"{rule.field}.merge.{how}", f"dimension {dim} is out of range for {ndim}-d values")
        at = dim % ndim
        for i, shape in enumerate(shapes[1:], 1):
            same = shape == first if how == "stack" else (len(shape) == len(first) and all(
                a == b for d, (a, b) in enumerate(zip(shape, first)) if d != at))
            if not same:
                need = "the same shape" if how == "stack" else f"the same shape except in dim {dim}"
                raise PlanError(f"{rule.field}.from[{i}]", f"cannot {how} {_reads_text([reads[i]])} {shape_text(shape)} with "
                                                           f"{_reads_text(reads[:1])} {shape_text(first)} along dim {dim} "
                                                           f"({how} needs {need})")
        if how == "stack":
            return (*first[:at], len(shapes), *first[at:])
        return (*first[:at], sum(s[at] for s in shapes), *first[at + 1:])

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

    def _box(self, region: Region, shape, field: str, key: str, written: Region | None = None,
             bindings: Mapping[str, str] | None = None, reads: Sequence[Read] = ()) -> Box:
        try:
            return region.box(tuple(shape))
        except ValueError as err:
            if written is not None and written.variables:  # say which binding gave the index
                values = ", ".join(f"{v}={bindings[v]}" for v in written.variables)
                origin = f" from {_reads_text(reads)}" if reads else ""
                raise PlanError(field, f"{key}{written} with {values}{origin}: {err} (shape {shape_text(shape)})") from None
            raise PlanError(field, f"{key}{region}: {err} (shape {shape_text(shape)})") from None

    def _read_shape(self, read: Read, field: str) -> tuple[int, ...]:
        if read.region is None:
            return tuple(read.shape)
        return Region.parse(read.region).box(tuple(read.shape)).shape
