"""Plans as text for people: the dry-run printout and ``plan.txt``.

Repeated layers fold into one line (``blocks.{0..11}.q.weight ← src:layer.{0..11}.q.weight``,
see grouping.py) so a plan of a deep model reads as a screenful; ``grouped=False``
gives one line per tensor. The text is stable under git: sorted or in the target's
order, no timestamps, no run directories, the home folder shown as ``~``.
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import replace

from torchgraft.grouping import Group, expand, fold, merge_leaves
from torchgraft.heap import paused_gc
from torchgraft.plan import Entry, Piece, Plan, Read, entry_form, entry_keys
from torchgraft.regions import Region
from torchgraft.tensors import itemsize, short_dtype
from torchgraft.transforms import describe as describe_transform

_MAX_COLUMN = 56  # wider keys overflow their column instead of pushing every line right


def human_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``; also rates (floats)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def shape_text(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def group_keys(keys: Iterable[str]) -> list[str]:
    """``fc1.weight, fc1.bias`` -> ``fc1.{weight,bias}``: siblings share one item (first-seen order)."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        parent, dot, leaf = key.rpartition(".")
        groups.setdefault(parent + dot, []).append(leaf)
    out = []
    for prefix, leaves in groups.items():
        out.append(prefix + (leaves[0] if len(leaves) == 1 else "{" + ",".join(leaves) + "}"))
    return out


def nbytes(shape: Sequence[int], dtype: str) -> int:
    n = itemsize(dtype)
    for d in shape:
        n *= d
    return n


def read_nbytes(read: Read) -> int:
    """Bytes a read touches: its region, else the whole tensor."""
    shape = Region.parse(read.region).box(read.shape).shape if read.region else read.shape
    return nbytes(shape, read.dtype)


def shown_path(path: str) -> str:
    """A path as plan text shows it: under the home folder as ``~/...`` (same text for every user)."""
    home = os.path.expanduser("~")
    if home not in ("", "/") and os.path.isabs(path) and path.startswith(home.rstrip("/") + "/"):
        return "~" + path[len(home.rstrip("/")) :]
    return path


# -- one entry ------------------------------------------------------------------------


def piece_text(piece: Piece, entry: Entry, keys: Sequence[str] | None = None) -> str:
    """``[:, :10] ← src:fc.weight[:, :10] | transpose``; ``keys`` replaces the read keys (patterns)."""
    keys = list(keys) if keys is not None else [r.key for r in piece.reads]
    reads = " + ".join(f"{r.source}:{k}{r.region or ''}" for r, k in zip(piece.reads, keys))
    if len(piece.reads) > 1:
        merge = piece.merge if piece.merge == "mean" else f"weights {piece.merge['weights']}"
        reads = f"{merge}({reads})"
    text = f"{piece.region + ' ' if piece.region else ''}← {reads}"
    steps = [describe_transform(t) for t in piece.transforms]
    source_dtype = piece.reads[0].dtype
    if not any(isinstance(t, dict) and "cast" in t for t in piece.transforms) and source_dtype != entry.dtype:
        steps.append(f"{short_dtype(source_dtype)}→{short_dtype(entry.dtype)}")
    if steps:
        text += " | " + ", ".join(steps)
    return text


def origin_text(entry: Entry, keys: Sequence[str] | None = None) -> str:
    """Where an entry's values come from, or ``keep``; ``keys`` replaces its read keys in order."""
    if entry.kept:
        return "keep"
    keys = list(keys) if keys is not None else [r.key for p in entry.pieces for r in p.reads]
    parts, at = [], 0
    for piece in entry.pieces:
        parts.append(piece_text(piece, entry, keys[at : at + len(piece.reads)]))
        at += len(piece.reads)
    parts += [f"{region} keep" for region in entry.uncovered]
    return "; ".join(parts)


def rules_text(entry: Entry) -> str:
    return ",".join(dict.fromkeys(p.rule for p in entry.pieces))


# -- folding entries ------------------------------------------------------------------


def _same_kept(a: Group[Entry], b: Group[Entry]) -> bool:
    x, y = a.members[0], b.members[0]
    return x.kept and y.kept and (x.shape, x.dtype, x.kind) == (y.shape, y.dtype, y.kind)


def group_entries(entries: Sequence[Entry]) -> list[Group[Entry]]:
    """Entries folded into lines: repeated layers share one line; kept siblings with the
    same shape share one (``norm.{weight,bias}``). In the order of the target. Entries
    fold only when everything but their keys (``entry_form``) is equal."""
    with paused_gc():  # a 100k-entry plan: objects by the million, none cyclic garbage
        return merge_leaves(fold(entries, entry_keys, entry_form), _same_kept)


def ungroup(groups: Iterable[Group[Entry]]) -> list[Entry]:
    """Every entry the lines stand for, rebuilt from each line's patterns (the inverse of
    ``group_entries``, up to order)."""
    out = []
    for group in groups:
        first = group.members[0]
        for keys in expand(group.patterns):
            at, pieces = 1, []
            for piece in first.pieces:
                reads = tuple(replace(r, key=k) for r, k in zip(piece.reads, keys[at : at + len(piece.reads)]))
                pieces.append(replace(piece, reads=reads))
                at += len(piece.reads)
            out.append(replace(first, key=keys[0], pieces=tuple(pieces)))
    return out


def group_unused(plan: Plan) -> list[Group]:
    """Unused source tensors by name: repeated layers folded, then siblings (``fc.{weight,bias}``)."""
    folded = fold(plan.unused, lambda u: (u.key,), lambda u: u.source)
    return merge_leaves(folded, lambda a, b: a.members[0].source == b.members[0].source)


# -- the whole plan -------------------------------------------------------------------


def target_text(plan: Plan) -> str:
    spec = plan.target.spec
    if spec is None:
        base = f" patched from base '{plan.target.base}'" if plan.target.base else ""
        return f"no model class: the tensors the rules produce{base}"
    args = ", ".join(f"{k}={json.dumps(v)}" for k, v in spec.items() if k != "_target_")
    initial = f"initial values from base '{plan.target.base}'" if plan.target.base else f"seed {plan.target.seed}"
    if plan.target.init == "per_module":  # values differ from plain construction: say so
        initial += " (target_init=per_module)"
    return f"{spec['_target_']}({args})  {initial}"


def source_stats(plan: Plan) -> dict[str, tuple[int, int, int, int]]:
    """Per source: (tensors read, bytes read, tensors unused, bytes unused)."""
    read: dict[str, dict[str, int]] = {s.name: {} for s in plan.sources}
    for entry in plan.entries:
        for piece in entry.pieces:
            for r in piece.reads:
                read[r.source][r.key] = read[r.source].get(r.key, 0) + read_nbytes(r)
    stats = {}
    for s in plan.sources:
        unused = [u for u in plan.unused if u.source == s.name]
        stats[s.name] = (len(read[s.name]), sum(read[s.name].values()), len(unused), sum(nbytes(u.shape, u.dtype) for u in unused))
    return stats


def source_lines(plan: Plan) -> list[str]:
    lines = []
    stats = source_stats(plan)
    for s in plan.sources:
        nested = f" key={s.key}" if s.key else ""
        pinned = f", sha256 {s.fingerprint['content_sha256'][:12]}" if "content_sha256" in s.fingerprint else ""
        n_read, b_read, n_unused, b_unused = stats[s.name]
        lines.append(
            f"source  {s.name} = {shown_path(s.path)}  ({s.format}{nested}, {human_bytes(s.fingerprint['size'])}{pinned}): "
            f"{n_read} tensors read ({human_bytes(b_read)}), {n_unused} unused ({human_bytes(b_unused)})"
        )
    return lines


def header(plan: Plan) -> list[str]:
    return [f"# torchgraft plan {plan.sha256[:12]}  (torchgraft {plan.version})", f"target  {target_text(plan)}", *source_lines(plan)]


def entry_row(group: Group[Entry]) -> tuple[str, str, str, str, str]:
    """(key pattern, shape, dtype, origin, rules) of a line of entries."""
    first = group.members[0]
    return (group.patterns[0], shape_text(first.shape), short_dtype(first.dtype), origin_text(first, group.patterns[1:]), rules_text(first))


def align(rows: Sequence[tuple[str, str, str, str, str]], prefix: str = "") -> list[str]:
    """Rows as text: key, shape and dtype in columns, then the origin and ``(rules)``."""
    widths = [min(max((len(r[i]) for r in rows), default=0), _MAX_COLUMN) for i in range(3)]
    lines = []
    for key, shape, dtype, origin, rule in rows:
        line = f"{prefix}{key:<{widths[0]}}  {shape:<{widths[1]}}  {dtype:<{widths[2]}}  {origin}"
        lines.append(f"{line}  ({rule})" if rule else line)
    return lines


_last_table: tuple[weakref.ref[Plan], list[str]] | None = None  # a plan's folded lines, the last asked for


def table(plan: Plan, grouped: bool = True) -> list[str]:
    """The entries, one line per (folded) row: key, shape, dtype, origin, rules."""
    if grouped:
        # A dry run shows a plan as text and as markdown: fold it once (a second at 100k entries).
        global _last_table
        if _last_table is None or _last_table[0]() is not plan:
            _last_table = (weakref.ref(plan), align([entry_row(g) for g in group_entries(plan.entries)]))
        return list(_last_table[1])
    return align([(e.key, shape_text(e.shape), short_dtype(e.dtype), origin_text(e), rules_text(e)) for e in plan.entries])


def unused_lines(plan: Plan, grouped: bool = True) -> list[str]:
    if grouped:
        return [f"{g.members[0].source}:{g.patterns[0]}" for g in group_unused(plan)]
    return [f"{u.source}:{u.key}  {shape_text(u.shape)}  {short_dtype(u.dtype)}" for u in plan.unused]


def render(plan: Plan, grouped: bool = True) -> str:
    """The plan for review: target and sources, every target tensor with its origin or
    ``keep`` (repeated layers folded unless ``grouped=False``), the source tensors
    nothing reads, then counts and bytes."""
    lines = [*header(plan), "", *table(plan, grouped)]
    if plan.skipped:
        lines += ["", f"skipped under policy.mismatch=skip ({len(plan.skipped)}):"]
        lines += [f"  {s.key}  ({s.rule}): {s.reason}" for s in plan.skipped]
    if plan.unused:
        unused_bytes = human_bytes(sum(nbytes(u.shape, u.dtype) for u in plan.unused))
        lines += ["", f"unused source tensors ({len(plan.unused)}, {unused_bytes}):"]
        lines += [f"  {line}" for line in unused_lines(plan, grouped)]
    lines += ["", summary(plan)]
    return "\n".join(lines) + "\n"


def summary(plan: Plan) -> str:
    assigned = [e for e in plan.entries if not e.kept]
    kept = [e for e in plan.entries if e.kept]
    partial = sum(1 for e in plan.entries if e.uncovered)
    size = lambda entries: human_bytes(sum(nbytes(e.shape, e.dtype) for e in entries))  # noqa: E731
    text = (
        f"{len(plan.entries)} target tensors ({size(plan.entries)}): {len(assigned)} assigned ({size(assigned)})"
        f"{f', {partial} of them in part' if partial else ''}, {len(kept)} kept ({size(kept)})"
    )
    if plan.skipped:
        text += f", {len(plan.skipped)} skipped"
    unused_bytes = human_bytes(sum(nbytes(u.shape, u.dtype) for u in plan.unused))
    return text + f"; {len(plan.unused)} source tensors unused ({unused_bytes})"
