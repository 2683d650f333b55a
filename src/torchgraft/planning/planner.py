"""Recipe x inventories -> Plan. Reads headers only: every check here runs before any
tensor data is touched, and the first problem stops planning with its recipe field."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torchgraft.checkpoints import Reader, open_checkpoint
from torchgraft.core.errors import PlanError
from torchgraft.core.target import build_model, check_resettable, model_inventory
from torchgraft.core.tensors import TensorInfo, is_floating
from torchgraft.core.text import shape_text
from torchgraft.core.version import __version__
from torchgraft.keys.patterns import KeyIndex, KeyPattern, PatternError
from torchgraft.keys.regions import describe, uncovered
from torchgraft.planning.expand import RuleExpander, _Assignment, pattern_matches
from torchgraft.planning.layout import resolve_layout
from torchgraft.plans.fingerprints import inventory_sha256
from torchgraft.plans.types import Entry, Piece, Plan, SourceRef, TargetRef, Unused
from torchgraft.recipe.parse import ExplicitRule, Recipe


class _Slots:
    """The assignments to one key, indexed by the first dimension a region indexes with an
    integer: two boxes indexed at different integers there cannot overlap. Stacking 128
    experts into one tensor then checks each slot against one, not against 127."""

    def __init__(self, assigned: list[_Assignment]):
        self._loose: list[tuple[int, _Assignment]] = []  # whole tensors and slices only
        self._by_index: dict[int, dict[int, list[tuple[int, _Assignment]]]] = {}  # dim -> index -> assignments
        self._count = 0
        for a in assigned:
            self.add(a, self.slot(a))

    @staticmethod
    def slot(a: _Assignment) -> tuple[int, int] | None:
        if a.box is None or all(a.box.kept):
            return None
        dim = a.box.kept.index(False)
        return dim, a.box.bounds[dim][0]

    def add(self, a: _Assignment, slot: tuple[int, int] | None) -> None:
        item = (self._count, a)
        self._count += 1
        if slot is None:
            self._loose.append(item)
        else:
            self._by_index.setdefault(slot[0], {}).setdefault(slot[1], []).append(item)

    def candidates(self, slot: tuple[int, int] | None) -> list[_Assignment]:
        """Earlier assignments that may overlap one at ``slot``, in the order they were made."""
        if slot is not None and not self._loose and len(self._by_index) == 1 and slot[0] in self._by_index:
            return [a for _, a in self._by_index[slot[0]].get(slot[1], ())]  # stacking: the one slot
        found = list(self._loose)
        for dim, indexes in self._by_index.items():
            if slot is not None and dim == slot[0]:
                found += indexes.get(slot[1], [])
            else:
                found += [item for items in indexes.values() for item in items]
        return [a for _, a in sorted(found, key=lambda item: item[0])]


class _Planner(RuleExpander):
    """Rule expansion (expand.py) plus the checks that need every assignment at once."""

    # -- the whole plan --------------------------------------------------------------

    def entries(self) -> list[Entry]:
        by_key = self._by_key()
        infos = self.target if self.target is not None else self.extracted
        kept = self._kept(infos, by_key)
        self._check_unassigned(infos, by_key, kept)
        output_dtype = self.recipe.output.dtype
        entries = []
        for key, info in infos.items():
            dtype = output_dtype if output_dtype and is_floating(info.dtype) else info.dtype
            assigned = by_key.get(key, ())
            if len(assigned) == 1 and assigned[0].box is None:  # most tensors: one rule writes it whole
                pieces, rest = (assigned[0].piece,), ()
            else:
                pieces, rest = self._pieces(info, assigned)
            entries.append(Entry(key, info.shape, dtype, pieces, rest, info.kind))
        return entries

    @staticmethod
    def _pieces(info: TensorInfo, assigned: Sequence[_Assignment]) -> tuple[tuple[Piece, ...], tuple[str, ...]]:
        """A tensor's pieces, ordered by region, and the regions none of them covers."""
        boxes = [a.box for a in assigned if a.box is not None]
        rest = ()
        if boxes and len(boxes) == len(assigned):
            rest = tuple(describe(b, info.shape) for b in uncovered(info.shape, boxes))
        if len(assigned) > 1:
            assigned = sorted(assigned, key=lambda a: a.box.bounds if a.box else ())
        return tuple(a.piece for a in assigned), rest

    def _by_key(self) -> dict[str, list[_Assignment]]:
        """The assignments to each key, in rule order; two that overlap are an error."""
        by_key: dict[str, list[_Assignment]] = {}
        slotted: dict[str, _Slots] = {}  # keys written region by region: candidates by index
        # keys that only one stacking rule writes so far: it checked its slots itself
        single: dict[str, str] = {}
        for a in self.assignments:
            others = by_key.get(a.key)
            if others is None:
                by_key[a.key] = [a]
                if a.field in self.slot_checked:
                    single[a.key] = a.field
                continue
            if single.get(a.key) == a.field:
                others.append(a)
                continue
            single.pop(a.key, None)
            slots = slotted.get(a.key)
            if slots is None:
                slots = slotted[a.key] = _Slots(others)
            slot = slots.slot(a)
            for other in slots.candidates(slot):
                if a.box is None or other.box is None or a.box.overlaps(other.box):
                    mine = f"{a.key}{a.piece.region or ''}"
                    theirs = f"{other.key}{other.piece.region or ''}"
                    what = f"'{mine}' overlaps '{theirs}'" if mine != theirs else f"'{mine}'"
                    raise PlanError(a.field, f"{what}, which {other.piece.rule} already assigns")
            others.append(a)
            slots.add(a, slot)
        return by_key

    def _kept(self, infos, by_key) -> set[str]:
        index = KeyIndex(list(infos))
        found = pattern_matches(index, self.recipe.keep, "keep")
        kept: set[str] = set()
        for i, positions in enumerate(found):
            if not positions:
                raise PlanError(f"keep[{i}]", f"'{self.recipe.keep[i]}' matches no target tensor")
        for key in index.keys_at(found):
            whole = [a for a in by_key.get(key, []) if a.box is None]
            if whole:
                i = next(i for i, p in enumerate(self.recipe.keep) if KeyPattern(p).matches(key))
                raise PlanError(f"keep[{i}]", f"'{key}' is kept, but {whole[0].piece.rule} assigns it")
            kept.add(key)
        self.kept_keys = kept  # a source tensor of a kept key's name stays behind on purpose
        return kept

    def _check_unassigned(self, infos, by_key, kept) -> None:
        missing = [k for k in infos if k not in by_key and k not in kept]
        if missing and self.recipe.policy.unassigned == "error":
            from torchgraft.plans.text import group_keys

            listed = ", ".join(group_keys(missing))
            raise PlanError(
                "policy.unassigned",
                f"{len(missing)} target tensor{'s' if len(missing) != 1 else ''} assigned by no rule and not "
                f"in keep: {listed} (list them in keep, or set policy.unassigned=keep)",
            )

    def unused(self, entries: list[Entry]) -> list[Unused]:
        reads = [r for e in entries for p in e.pieces for r in p.reads]
        read = {source: {r.key for r in reads if r.source == source} for source in self.inventories}
        base = self.recipe.base
        if base is not None:
            read[base] |= {e.key for e in entries if e.needs_initial}
        unused = [
            Unused(source, info.key, info.shape, info.dtype)
            for source, inventory in self.inventories.items()
            for info in inventory.values()
            if info.key not in read[source]
        ]
        self.excluded.update((u.source, u.key) for u in unused if u.key in self.kept_keys)
        if unused and self.recipe.policy.unused == "error":  # strict: left out on purpose or not
            from torchgraft.plans.text import group_keys

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
                    found = "has no such tensor" if info is None else f"has it with shape {shape_text(info.shape)}"
                    raise PlanError("base", f"'{entry.key}' {shape_text(entry.shape)} takes its initial value from '{base}', which {found}")


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
    return _make_plan(recipe, resolved, target=target, readers=readers)


def _make_plan(recipe: Recipe, resolved: dict, *, target: list[TensorInfo] | None, readers: Mapping[str, Reader] | None) -> Plan:
    own = readers is None
    readers = open_sources(recipe) if own else readers
    try:
        model = None  # the target, built on the meta device: its inventory, and its config (output.config)
        if target is None and recipe.target is not None:
            model = build_model(recipe.target, device="meta")
            target = model_inventory(model)
        elif target is None and recipe.base is not None:
            target = readers[recipe.base].inventory()
        planner = _Planner(recipe, readers, target)
        for rule in recipe.rules:
            try:
                planner.explicit(rule) if isinstance(rule, ExplicitRule) else planner.bulk(rule)
            except PatternError as err:
                raise PlanError(f"rules[{rule.index}]", str(err)) from None
        entries = planner.entries()
        reserved = next((e for e in entries if e.key == "__metadata__"), None)
        if reserved is not None:  # the reference reader refuses such a file: refused before it is written
            where = reserved.pieces[0].rule if reserved.pieces else "target"
            raise PlanError(where, "'__metadata__' cannot name a tensor (safetensors reserves it for metadata)")
        planner.check_base(entries)
        unused = planner.unused(entries)
        sources = tuple(
            SourceRef(s.name, s.path, readers[s.name].format, s.key, readers[s.name].fingerprint()) for s in recipe.sources
        )
        inventory = target if target is not None else list(planner.extracted.values())
        plan = Plan(
            entries=tuple(entries),
            unused=tuple(unused),
            excluded=frozenset(planner.excluded & {(u.source, u.key) for u in unused}),
            skipped=tuple(planner.skipped),
            sources=sources,
            target=TargetRef(recipe.target, recipe.target_seed, inventory_sha256(inventory), recipe.base,
                             recipe.target_init),
            recipe=resolved,
            version=__version__,
            layout=resolve_layout(recipe, readers, model),
        )
        if recipe.target_init == "per_module" and recipe.target is not None and recipe.base is None:
            # a module without reset_parameters fails the dry run, not the execution
            check_resettable(recipe.target, [e.key for e in entries if e.needs_initial])
        return plan
    finally:
        if own:
            for reader in readers.values():
                reader.close()
