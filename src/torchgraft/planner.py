"""Recipe x inventories -> Plan. Reads headers only: every check here runs before any
tensor data is touched, and the first problem stops planning with its recipe field."""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torchgraft import __version__
from torchgraft.checkpoints import Reader, open_checkpoint
from torchgraft.errors import PlanError, RecipeError
from torchgraft.patterns import KeyPattern, PatternError, Renamer, Template, matching_counts, select_keys
from torchgraft.plan import Entry, Piece, Plan, Read, Skipped, SourceRef, TargetRef, Unused
from torchgraft.recipe import BulkRule, ExplicitRule, Recipe
from torchgraft.regions import Box, Region, describe, split_key_region, uncovered
from torchgraft.target import target_inventory
from torchgraft.tensors import TensorInfo, is_floating, short_dtype
from torchgraft.transforms import Transform, compile_transforms


@dataclass(frozen=True)
class _Assignment:
    """One rule writing one target tensor (or a region of it)."""

    key: str
    box: Box | None  # None: the whole tensor
    piece: Piece
    shape: tuple[int, ...]  # of the values, after transforms
    dtype: str
    field: str  # recipe field to blame


def closest(key: str, candidates: Sequence[str], n: int = 3) -> str:
    """``(closest: a, b)`` hint for a key that is not there."""
    close = difflib.get_close_matches(key, candidates, n=n, cutoff=0.5)
    return f" (closest: {', '.join(close)})" if close else ""


def _fmt_shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


class _Planner:
    def __init__(self, recipe: Recipe, readers: Mapping[str, Reader], target: list[TensorInfo] | None):
        self.recipe = recipe
        self.readers = readers
        self.inventories = {name: {t.key: t for t in r.inventory()} for name, r in readers.items()}
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
        field = f"rules[{rule.index}]"
        transforms = compile_transforms(rule.transforms, f"{field}.transform")
        for source in rule.sources:
            keys = list(self.inventories[source])
            selected = keys
            if rule.select:
                for i, count in enumerate(matching_counts(keys, rule.select)):
                    if count == 0:
                        raise PlanError(f"{field}.select[{i}]", f"'{rule.select[i]}' matches no tensor of source '{source}'")
                selected = select_keys(keys, rule.select)
            if rule.exclude:
                excluded = set(select_keys(selected, rule.exclude))
                selected = [k for k in selected if k not in excluded]
            renamer = Renamer(list(rule.rename))
            produced: dict[str, str] = {}
            for key in selected:
                try:
                    new_key, used = renamer.rename(key)
                except PatternError as err:
                    raise PlanError(f"{field}.rename", f"{source}:{key}: {err}") from None
                blame = f"{field}.rename" if used is not None else f"{field}.select"
                if new_key in produced:
                    raise PlanError(blame, f"{source}:{produced[new_key]} and {source}:{key} both map to '{new_key}'")
                produced[new_key] = key
                info = self.inventories[source][key]
                target = self._target_info(new_key, blame, rule.missing, f"{source}:{key}")
                if target is None and self.target is not None:
                    continue  # missing: skip
                read = Read(source, key, info.shape, info.dtype)
                self._assign(new_key, None, target, (read,), transforms, field, blame, info.shape)

    def explicit(self, rule: ExplicitRule) -> None:
        field = f"rules[{rule.index}]"
        transforms = compile_transforms(rule.transforms, f"{field}.transform")
        to_key, to_region = self._split(rule.to, f"{field}.to")
        froms = [self._parse_from(text, f"{field}.from") for text in rule.sources]
        to_template = Template(to_key)
        from_templates = [Template(key) for _, key, _ in froms]
        for bindings, to_text in self._expand(rule, field, to_template, froms, from_templates):
            target = self._target_info(to_text, f"{field}.to", rule.missing, rule.to)
            if target is None and self.target is not None:
                continue
            reads = []
            for (source, _, region), template in zip(froms, from_templates):
                try:
                    key = template.format(bindings)
                except PatternError as err:
                    raise PlanError(f"{field}.from", str(err)) from None
                info = self.inventories[source].get(key)
                if info is None:
                    if rule.missing == "skip":
                        break
                    raise PlanError(
                        f"{field}.from", f"source '{source}' has no tensor '{key}'{closest(key, list(self.inventories[source]))}"
                    )
                text = str(region) if region else None
                if region is not None:
                    self._box(region, info.shape, f"{field}.from", f"{source}:{key}")
                reads.append(Read(source, key, info.shape, info.dtype, text))
            else:
                src_shape = self._read_shape(reads[0], f"{field}.from")
                for read in reads[1:]:
                    if self._read_shape(read, f"{field}.from") != src_shape or read.dtype != reads[0].dtype:
                        raise PlanError(
                            f"{field}.from",
                            f"cannot merge {reads[0].source}:{reads[0].key} {_fmt_shape(src_shape)} {reads[0].dtype} "
                            f"with {read.source}:{read.key} {_fmt_shape(self._read_shape(read, field))} {read.dtype}",
                        )
                box = None
                if to_region is not None:
                    if target is None:
                        raise PlanError(f"{field}.to", f"'{rule.to}': a region needs a target tensor to write into (set target or base)")
                    box = self._box(to_region, target.shape, f"{field}.to", to_text)
                self._assign(to_text, box, target, tuple(reads), transforms, field, f"{field}.to", src_shape, rule.merge)

    def _expand(self, rule, field, to_template, froms, from_templates):
        """Bind template variables on the side where they appear plainly."""
        if to_template.variables:
            if self.target is None:
                raise PlanError(f"{field}.to", f"'{rule.to}': template variables in 'to' need a target to bind against")
            pairs = [(b, key) for key in self.target if (b := to_template.match(key)) is not None]
            if not pairs:
                raise PlanError(f"{field}.to", f"'{rule.to}' matches no target tensor")
            return pairs
        plain = [(i, t) for i, t in enumerate(from_templates) if t.variables]
        if plain:
            i, template = plain[0]
            source = froms[i][0]
            pairs = []
            for key in self.inventories[source]:
                b = template.match(key)
                if b is not None:
                    try:
                        pairs.append((b, to_template.format(b)))
                    except PatternError as err:
                        raise PlanError(f"{field}.to", str(err)) from None
            if not pairs:
                raise PlanError(f"{field}.from", f"'{rule.sources[i]}' matches no tensor of source '{source}'")
            return pairs
        try:
            return [({}, to_template.format({}))]
        except PatternError as err:
            raise PlanError(f"{field}.to", str(err)) from None

    def _assign(self, key, box, target, reads, transforms: tuple[Transform, ...], field, blame, shape, merge=None):
        dtype = reads[0].dtype
        for i, transform in enumerate(transforms):
            try:
                shape, dtype = transform.out_shape(shape), transform.out_dtype(dtype)
            except ValueError as err:
                raise PlanError(f"{field}.transform[{i}]", f"{reads[0].source}:{reads[0].key}: {err}") from None
        if target is None:  # extraction: the rule defines the output tensor
            target = TensorInfo(key, shape, dtype)
            if key in self.extracted and self.extracted[key] != target:
                pass  # conflicting assignment: reported by the overlap check
            self.extracted.setdefault(key, target)
        expected = box.shape if box is not None else target.shape
        source_text = " + ".join(f"{r.source}:{r.key}{r.region or ''}" for r in reads)
        where = f"{key}{describe(box, target.shape) if box is not None else ''}"
        problem = None
        if tuple(shape) != tuple(expected):
            problem = f"{source_text} has shape {_fmt_shape(shape)} but {where} has shape {_fmt_shape(expected)}"
        elif is_floating(dtype) != is_floating(target.dtype):
            problem = f"{source_text} is {dtype} but {where} is {target.dtype}"
        if problem:
            if self.recipe.policy.mismatch == "skip":
                self.skipped.append(Skipped(key, field, problem))
                return
            raise PlanError(blame, problem + " (set policy.mismatch=skip to leave it out)")
        region = describe(box, target.shape) if box is not None else None
        piece = Piece(reads, field, region, tuple(t.spec for t in transforms), merge)
        self.assignments.append(_Assignment(key, box, piece, tuple(shape), dtype, blame))

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
            raise PlanError(field, f"{key}{region}: {err} (shape {_fmt_shape(shape)})") from None

    def _read_shape(self, read: Read, field: str) -> tuple[int, ...]:
        if read.region is None:
            return tuple(read.shape)
        return Region.parse(read.region).box(tuple(read.shape)).shape

    # -- the whole plan --------------------------------------------------------------

    def entries(self) -> list[Entry]:
        by_key: dict[str, list[_Assignment]] = {}
        for a in self.assignments:
            for other in by_key.setdefault(a.key, []):
                if a.box is None or other.box is None or a.box.overlaps(other.box):
                    mine = f"{a.key}{a.piece.region or ''}"
                    theirs = f"{other.key}{other.piece.region or ''}"
                    what = f"'{mine}' overlaps '{theirs}'" if mine != theirs else f"'{mine}'"
                    raise PlanError(a.field, f"{what}, which {other.piece.rule} already assigns")
            by_key[a.key].append(a)
        infos = self.target if self.target is not None else self.extracted
        kept = self._kept(infos, by_key)
        self._check_unassigned(infos, by_key, kept)
        output_dtype = self.recipe.output.dtype
        entries = []
        for key, info in infos.items():
            assigned = by_key.get(key, [])
            boxes = [a.box for a in assigned if a.box is not None]
            rest = ()
            if boxes and len(boxes) == len(assigned):
                rest = tuple(describe(b, info.shape) for b in uncovered(info.shape, boxes))
            dtype = output_dtype if output_dtype and is_floating(info.dtype) else info.dtype
            pieces = tuple(a.piece for a in sorted(assigned, key=lambda a: a.box.bounds if a.box else ()))
            entries.append(Entry(key, info.shape, dtype, pieces, rest, info.kind))
        return entries

    def _kept(self, infos, by_key) -> set[str]:
        keys = list(infos)
        kept: set[str] = set()
        for i, count in enumerate(matching_counts(keys, self.recipe.keep)):
            if count == 0:
                raise PlanError(f"keep[{i}]", f"'{self.recipe.keep[i]}' matches no target tensor")
        for key in select_keys(keys, self.recipe.keep):
            whole = [a for a in by_key.get(key, []) if a.box is None]
            if whole:
                i = next(i for i, p in enumerate(self.recipe.keep) if KeyPattern(p).matches(key))
                raise PlanError(f"keep[{i}]", f"'{key}' is kept, but {whole[0].piece.rule} assigns it")
            kept.add(key)
        return kept

    def _check_unassigned(self, infos, by_key, kept) -> None:
        missing = [k for k in infos if k not in by_key and k not in kept]
        if missing and self.recipe.policy.unassigned == "error":
            from torchgraft.render import group_keys

            listed = ", ".join(group_keys(missing))
            raise PlanError(
                "policy.unassigned",
                f"{len(missing)} target tensor{'s' if len(missing) != 1 else ''} assigned by no rule and not "
                f"in keep: {listed} (list them in keep, or set policy.unassigned=keep)",
            )

    def unused(self, entries: list[Entry]) -> list[Unused]:
        read = {(r.source, r.key) for e in entries for p in e.pieces for r in p.reads}
        base = self.recipe.base
        if base is not None:
            read |= {(base, e.key) for e in entries if e.needs_initial}
        unused = [
            Unused(source, info.key, info.shape, info.dtype)
            for source, inventory in self.inventories.items()
            for info in inventory.values()
            if (source, info.key) not in read
        ]
        if unused and self.recipe.policy.unused == "error":
            from torchgraft.render import group_keys

            listed = ", ".join(group_keys([f"{u.source}:{u.key}" for u in unused]))
            raise PlanError("policy.unused", f"{len(unused)} source tensor{'s' if len(unused) != 1 else ''} read by no rule: {listed}")
        return unused

    def check_base(self, entries: list[Entry]) -> None:
        base = self.recipe.base
        if base is None:
            return
        inventory = self.inventories[base]
        for entry in entries:
            if entry.needs_initial:
                info = inventory.get(entry.key)
                if info is None or info.shape != entry.shape:
                    found = "has no such tensor" if info is None else f"has it with shape {_fmt_shape(info.shape)}"
                    raise PlanError("base", f"'{entry.key}' {_fmt_shape(entry.shape)} takes its initial value from '{base}', which {found}")


def _inventory_sha256(infos: Sequence[TensorInfo]) -> str:
    rows = [[t.key, list(t.shape), t.dtype, t.kind] for t in infos]
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


def open_sources(recipe: Recipe) -> dict[str, Reader]:
    """Open every source (headers only); the caller closes them."""
    readers: dict[str, Reader] = {}
    try:
        for spec in recipe.sources:
            readers[spec.name] = open_checkpoint(spec.path, format=spec.format, key=spec.key, field=f"sources.{spec.name}")
        return readers
    except BaseException:
        for reader in readers.values():
            reader.close()
        raise


def make_plan(recipe: Recipe, resolved: dict, *, target: list[TensorInfo] | None = None, readers: Mapping[str, Reader] | None = None) -> Plan:
    """Plan ``recipe``. ``resolved`` is the recipe as plain data, recorded in the plan;
    ``target`` overrides the target inventory (load_into passes a live model's)."""
    own = readers is None
    readers = open_sources(recipe) if own else readers
    try:
        if target is None and recipe.target is not None:
            target = target_inventory(recipe.target)
        elif target is None and recipe.base is not None:
            target = readers[recipe.base].inventory()
        planner = _Planner(recipe, readers, target)
        for rule in recipe.rules:
            try:
                planner.explicit(rule) if isinstance(rule, ExplicitRule) else planner.bulk(rule)
            except PatternError as err:
                raise PlanError(f"rules[{rule.index}]", str(err)) from None
        entries = planner.entries()
        planner.check_base(entries)
        unused = planner.unused(entries)
        sources = tuple(
            SourceRef(s.name, s.path, readers[s.name].format, s.key, readers[s.name].fingerprint()) for s in recipe.sources
        )
        inventory = target if target is not None else list(planner.extracted.values())
        return Plan(
            entries=tuple(entries),
            unused=tuple(unused),
            skipped=tuple(planner.skipped),
            sources=sources,
            target=TargetRef(recipe.target, recipe.target_seed, _inventory_sha256(inventory), recipe.base),
            recipe=resolved,
            version=__version__,
        )
    finally:
        if own:
            for reader in readers.values():
                reader.close()
