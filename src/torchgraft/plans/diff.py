"""What changed between two plans: the text ``graft ... check=PLAN`` prints when a
committed plan is out of date, and ``graft-diff A.json B.json``.

Differences are named the way a reviewer asks about them: recipe fields, the target,
each source's fingerprint, target tensors added, removed or given another origin
(``conv2.weight: ← pretrained:conv2.weight (rules[0]) -> keep``), and the unused
source tensors. Repeated layers fold into one line, as in the plan text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torchgraft.core.tensors import short_dtype
from torchgraft.core.text import shape_text
from torchgraft.keys.folding import fold, merge_leaves
from torchgraft.plans import fingerprints
from torchgraft.plans.codec import entry_document
from torchgraft.plans.text import align, entry_row, group_entries, origin_text, rules_text
from torchgraft.plans.types import Entry, Plan, SourceRef, entry_form, entry_keys


@dataclass(frozen=True)
class Section:
    title: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class PlanDiff:
    sections: tuple[Section, ...]

    @property
    def same(self) -> bool:
        return not self.sections

    def text(self, old_name: str, new_name: str, old: Plan, new: Plan) -> str:
        lines = [f"--- {old_name}  (plan {old.sha256[:12]})", f"+++ {new_name}  (plan {new.sha256[:12]})"]
        for section in self.sections:
            lines += [f"{section.title}:", *(f"  {line}" for line in section.lines)]
        return "\n".join(lines) + "\n"


def diff_plans(old: Plan, new: Plan) -> PlanDiff:
    """Every difference between ``old`` and ``new`` that changes what a run would do or
    what it is pinned to; empty when they describe the same transfer of the same files."""
    return _diff_plans(old, new)


def _diff_plans(old: Plan, new: Plan) -> PlanDiff:
    sections = [
        Section("plan", tuple(_plan_lines(old, new))),
        Section("recipe", tuple(_value_lines(_flatten(old.recipe), _flatten(new.recipe)))),
        Section("target", tuple(_target_lines(old, new))),
        Section("sources", tuple(_source_lines(old.sources, new.sources))),
        Section("entries", tuple(_entry_lines(old.entries, new.entries))),
        Section("unused source tensors", tuple(_unused_lines(old, new))),
        Section("skipped", tuple(_skipped_lines(old, new))),
    ]
    found = tuple(s for s in sections if s.lines)
    if not found and _canonical_body(old) != _canonical_body(new):  # never call two plans the same when they are not
        found = (Section("plan", ("~ other fields differ (compare the plan.json files)",)),)
    return PlanDiff(found)


# -- fields ---------------------------------------------------------------------------


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _flatten(value: Any, path: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"rules": [{"select": [...]}]}`` -> ``{"rules[0].select": [...]}`` (lists of plain values stay whole)."""
    out = {} if out is None else out
    if isinstance(value, dict) and value:
        for key in sorted(value):
            _flatten(value[key], f"{path}.{key}" if path else str(key), out)
    elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        for i, item in enumerate(value):
            _flatten(item, f"{path}[{i}]", out)
    elif path:  # an empty recipe has no fields
        out[path] = value
    return out


def _value_lines(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    lines = []
    for path in dict.fromkeys([*old, *new]):
        if path not in new:
            lines.append(f"- {path}: {_show(old[path])}")
        elif path not in old:
            lines.append(f"+ {path}: {_show(new[path])}")
        elif _show(old[path]) != _show(new[path]):
            lines.append(f"~ {path}: {_show(old[path])} -> {_show(new[path])}")
    return lines


_SECTIONS = ("sha256", "recipe", "sources", "entries", "unused", "skipped")  # each has its own section
_TARGET = ("spec", "seed", "base", "inventory_sha256")


def _plan_lines(old: Plan, new: Plan) -> list[str]:
    """The plan's other fields (version, output layout, target.init ...), so that a new
    field of the plan can never differ unseen."""
    def rest(plan: Plan) -> dict:
        data = {k: v for k, v in plan.to_dict().items() if k not in _SECTIONS}
        target = {k: v for k, v in data.pop("target").items() if k not in _TARGET}
        return _flatten({**data, **({"target": target} if target else {})})

    return _value_lines(rest(old), rest(new))


def _canonical_body(plan: Plan) -> str:
    """The plan as compared: without its hash, and without mtimes where contents are pinned."""
    data = plan.to_dict()
    del data["sha256"]
    for source in data["sources"]:
        if fingerprints.pins_content(source["fingerprint"]):
            source["fingerprint"] = {k: v for k, v in source["fingerprint"].items() if k != "mtime_ns"}
    return json.dumps(data, sort_keys=True)


def _spec_text(spec: dict | None) -> str:
    if spec is None:
        return "no model class"
    args = ", ".join(f"{k}={json.dumps(v)}" for k, v in spec.items() if k != "_target_")
    return f"{spec['_target_']}({args})"


def _target_lines(old: Plan, new: Plan) -> list[str]:
    a, b = old.target, new.target
    lines = []
    if _show(a.spec) != _show(b.spec):
        lines.append(f"~ class: {_spec_text(a.spec)} -> {_spec_text(b.spec)}")
    if a.seed != b.seed:
        lines.append(f"~ seed: {a.seed} -> {b.seed}")
    if a.base != b.base:
        lines.append(f"~ base: {_show(a.base)} -> {_show(b.base)}")
    if a.inventory_sha256 != b.inventory_sha256:
        lines.append(f"~ structure: its tensors differ (inventory sha256 {a.inventory_sha256[:12]} -> {b.inventory_sha256[:12]})")
    return lines


def _pin(field: str, value: Any) -> str:
    if value is None:
        return "(not pinned)"
    return value[:12] if field.endswith("sha256") else str(value)


def _source_lines(old: Sequence[SourceRef], new: Sequence[SourceRef]) -> list[str]:
    old_by, new_by = {s.name: s for s in old}, {s.name: s for s in new}
    lines = []
    for name in dict.fromkeys([*old_by, *new_by]):
        if name not in new_by:
            lines.append(f"- {name}: {old_by[name].path}")
            continue
        if name not in old_by:
            lines.append(f"+ {name}: {new_by[name].path}")
            continue
        a, b = old_by[name], new_by[name]
        changes = [f"{field} {_show(getattr(a, field))} -> {_show(getattr(b, field))}"
                   for field in ("path", "format", "key") if getattr(a, field) != getattr(b, field)]
        for field in fingerprints.differences(a.fingerprint, b.fingerprint):
            x, y = a.fingerprint.get(field), b.fingerprint.get(field)
            changes.append(f"{field} changed" if field == "mtime_ns" else f"{field} {_pin(field, x)} -> {_pin(field, y)}")
        if changes:
            lines.append(f"~ {name}: {', '.join(changes)}")
    return lines


# -- entries --------------------------------------------------------------------------


def _canonical(entry: Entry) -> str:
    return json.dumps(entry_document(entry), sort_keys=True)


def _described(entry: Entry, keys: Sequence[str]) -> str:
    rules = rules_text(entry)
    return origin_text(entry, keys) + (f" ({rules})" if rules else "")


def _entry_lines(old: Sequence[Entry], new: Sequence[Entry]) -> list[str]:
    old_by, new_by = {e.key: e for e in old}, {e.key: e for e in new}
    removed = [e for e in old if e.key not in new_by]
    added = [e for e in new if e.key not in old_by]
    changed = [(old_by[e.key], e) for e in new if e.key in old_by and _canonical(old_by[e.key]) != _canonical(e)]
    lines = align([entry_row(g) for g in group_entries(removed)], "- ")
    lines += align([entry_row(g) for g in group_entries(added)], "+ ")
    n_reads = lambda e: sum(len(p.reads) for p in e.pieces)
    groups = fold(
        changed,
        lambda pair: (pair[1].key, *entry_keys(pair[0])[1:], *entry_keys(pair[1])[1:]),
        lambda pair: (entry_form(pair[0]), entry_form(pair[1])),
    )
    for group in groups:
        a, b = group.members[0]
        key, keys_a, keys_b = group.patterns[0], group.patterns[1 : 1 + n_reads(a)], group.patterns[1 + n_reads(a) :]
        if (a.shape, a.dtype) == (b.shape, b.dtype):
            lines.append(f"~ {key}: {_described(a, keys_a)} -> {_described(b, keys_b)}")
        else:
            was = f"{shape_text(a.shape)} {short_dtype(a.dtype)} {_described(a, keys_a)}"
            now = f"{shape_text(b.shape)} {short_dtype(b.dtype)} {_described(b, keys_b)}"
            lines.append(f"~ {key}: {was} -> {now}")
    return lines


def _unused_lines(old: Plan, new: Plan) -> list[str]:
    old_keys = {(u.source, u.key) for u in old.unused}
    new_keys = {(u.source, u.key) for u in new.unused}
    lines = []
    for sign, unused, other in (("-", old.unused, new_keys), ("+", new.unused, old_keys)):
        gone = [u for u in unused if (u.source, u.key) not in other]
        groups = merge_leaves(fold(gone, lambda u: (u.key,), lambda u: u.source), lambda a, b: a.members[0].source == b.members[0].source)
        lines += [f"{sign} {g.members[0].source}:{g.patterns[0]}" for g in groups]
    return lines


def _skipped_lines(old: Plan, new: Plan) -> list[str]:
    text = lambda s: f"{s.key}  ({s.rule}): {s.reason}"
    a, b = [text(s) for s in old.skipped], [text(s) for s in new.skipped]
    return [f"- {t}" for t in a if t not in b] + [f"+ {t}" for t in b if t not in a]


# -- graft-diff -----------------------------------------------------------------------
