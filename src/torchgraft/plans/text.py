"""Plans as text for people: the dry-run printout and ``plan.txt``.

Repeated layers fold into one line (``blocks.{0..11}.q.weight ← src:layer.{0..11}.q.weight``,
see grouping.py) so a plan of a deep model reads as a screenful; ``grouped=False``
gives one line per tensor. The text is stable under git: sorted or in the target's
order, no timestamps, no run directories, the home folder shown as ``~``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TypeVar

from torchgraft.core.tensors import itemsize, short_dtype
from torchgraft.core.text import human_bytes, printable, shape_text
from torchgraft.keys.folding import Group, brace, fold, fold_keyed, merge_leaves
from torchgraft.keys.regions import Region
from torchgraft.plans.forms import Forms
from torchgraft.plans.merge_text import merge_text
from torchgraft.plans.types import Entry, Piece, Plan, Read, entry_parts
from torchgraft.transforms import describe as describe_transform

R = TypeVar("R")
_MAX_COLUMN = 56  # wider keys overflow their column instead of pushing every line right


def unused_warning(plan: Plan) -> str | None:
    """The warning for source tensors no rule reads, under ``policy.unused: warn``.
    Tensors left out on purpose (``Plan.excluded``) are listed in the plan, not here."""
    policy = (plan.recipe.get("policy") or {}).get("unused", "warn")
    unused = [u for u in plan.unused if (u.source, u.key) not in plan.excluded]
    if policy != "warn" or not unused:
        return None
    names = group_keys(f"{u.source}:{u.key}" for u in unused)
    shown = printable(", ".join(names[:8]) + (", ..." if len(names) > 8 else ""))
    return f"warning: {len(unused)} source tensors are read by no rule: {shown} (policy.unused=ignore silences this)"


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


def _per_plan(make: Callable[[Plan], R]) -> Callable[[Plan], R]:
    """``make(plan)``, remembered for the last plan it was asked about: a dry run shows
    a plan as text and as Markdown, and both need its folded lines and counts (which
    take a while at 100k entries). The result is shared: callers must not change it.
    It is forgotten with the plan: a result holding the plan's entries (``entry_groups``)
    would keep millions of objects alive for the collector to walk, at exit if not before
    (0.9 CPU s at 108k entries)."""
    last: list = [None, None]  # a weak reference to the plan, the result

    def forget(ref: weakref.ref) -> None:
        if last[0] is ref:
            last[:] = [None, None]

    @functools.wraps(make)
    def remembered(plan: Plan) -> R:
        if last[0] is None or last[0]() is not plan:
            last[:] = [weakref.ref(plan, forget), make(plan)]
        return last[1]

    return remembered


# -- one entry ------------------------------------------------------------------------


def piece_text(piece: Piece, entry: Entry, keys: Sequence[str] | None = None) -> str:
    """``[:, :10] ← src:fc.weight[:, :10] | transpose``; ``keys`` replaces the read keys (patterns)."""
    keys = list(keys) if keys is not None else [r.key for r in piece.reads]
    if isinstance(piece.merge, dict) and "each" in piece.merge:  # concat(0: a | rope(...), b, c)
        how = "concat" if "concat" in piece.merge else "stack"
        texts = [f"{r.source}:{k}{r.region or ''}" + (" | " + ", ".join(describe_transform(t) for t in specs) if specs else "")
                 for r, k, specs in zip(piece.reads, keys, piece.merge["each"])]
        reads = f"{how}({piece.merge[how]}: {'; '.join(texts)})"
    elif len(piece.reads) > 1:
        reads = merge_text(piece.merge, [f"{r.source}:{k}{r.region or ''}" for r, k in zip(piece.reads, keys)], keys)
    else:
        reads = f"{piece.reads[0].source}:{keys[0]}{piece.reads[0].region or ''}"
    text = f"{piece.region + ' ' if piece.region else ''}← {reads}"
    steps = [describe_transform(t) for t in piece.transforms]
    source_dtype = piece.reads[0].dtype
    if not any(isinstance(t, dict) and "cast" in t for t in piece.transforms) and source_dtype != entry.dtype:
        steps.append(f"{short_dtype(source_dtype)}→{short_dtype(entry.dtype)}")
    if steps:
        text += " | " + ", ".join(steps)
    return text


def origin_text(entry: Entry, keys: Sequence[str] | None = None) -> str:
    """Where an entry's values come from, or ``keep``; ``keys`` replaces its read keys in order.
    Pieces that differ only by one index, found again in their read keys (stacked experts),
    read as one: ``[{0..127}] ← hf:experts.{0..127}.w``."""
    if entry.kept:
        return "keep"
    keys = list(keys) if keys is not None else [r.key for p in entry.pieces for r in p.reads]
    per_piece, at = [], 0
    for piece in entry.pieces:
        per_piece.append(keys[at : at + len(piece.reads)])
        at += len(piece.reads)
    parts = [piece_text(replace(piece, region=region) if region != piece.region else piece, entry, piece_keys)
             for piece, piece_keys, region in _index_runs(entry.pieces, per_piece)]
    parts += [f"{region} keep" for region in entry.uncovered]
    return "; ".join(parts)


def _index_step(a: Piece, a_keys: Sequence[str], b: Piece, b_keys: Sequence[str]):
    """``(region item, where each read shows the index, a's index, b's index)`` when ``b``
    is ``a`` at another integer index of one region item, that index also being the one
    segment in which a read key differs (stacked experts) or the one item in which a read's
    region differs (rows of a table); reads that do neither must be the same. Else None."""
    if not (a.region and b.region) or (a.rule, a.transforms, a.merge) != (b.rule, b.transforms, b.merge):
        return None
    if [(r.source, r.shape, r.dtype) for r in a.reads] != [(r.source, r.shape, r.dtype) for r in b.reads]:
        return None
    items_a, items_b = a.region[1:-1].split(", "), b.region[1:-1].split(", ")
    differ = [i for i, (x, y) in enumerate(zip(items_a, items_b)) if x != y]
    if len(items_a) != len(items_b) or len(differ) != 1 or not (items_a[differ[0]].isdigit() and items_b[differ[0]].isdigit()):
        return None
    item = differ[0]
    values = (items_a[item], items_b[item])
    where: list[tuple[str, int] | None] = []
    for read_a, read_b, key_a, key_b in zip(a.reads, b.reads, a_keys, b_keys):
        if key_a != key_b and read_a.region == read_b.region:
            seg_a, seg_b = key_a.split("."), key_b.split(".")
            diff = [i for i, (x, y) in enumerate(zip(seg_a, seg_b)) if x != y]
            if len(seg_a) != len(seg_b) or len(diff) != 1 or (seg_a[diff[0]], seg_b[diff[0]]) != values:
                return None
            where.append(("key", diff[0]))
        elif key_a == key_b and read_a.region != read_b.region and read_a.region and read_b.region:
            reg_a, reg_b = read_a.region[1:-1].split(", "), read_b.region[1:-1].split(", ")
            diff = [i for i, (x, y) in enumerate(zip(reg_a, reg_b)) if x != y]
            if len(reg_a) != len(reg_b) or len(diff) != 1 or (reg_a[diff[0]], reg_b[diff[0]]) != values:
                return None
            where.append(("region", diff[0]))
        elif key_a == key_b and read_a.region == read_b.region:
            where.append(None)  # the same read in every piece (a bias row added to each)
        else:
            return None
    if all(w is None for w in where):
        return None
    return item, tuple(where), int(values[0]), int(values[1])


def _index_runs(pieces: Sequence[Piece], keys: Sequence[Sequence[str]]) -> list[tuple[Piece, list[str], str | None]]:
    """Pieces as shown: ``(piece, read keys, region)``, runs of three or more folded (the
    piece returned then has its reads' regions folded too)."""
    out: list[tuple[Piece, list[str], str | None]] = []
    i = 0
    while i < len(pieces):
        j, shape, values = i + 1, None, []
        while j < len(pieces):
            step = _index_step(pieces[j - 1], keys[j - 1], pieces[j], keys[j])
            if step is None or (shape is not None and step[:2] != shape):
                break
            shape = step[:2]
            values = values or [step[2]]
            values.append(step[3])
            j += 1
        if j - i < 3:
            out.append((pieces[i], list(keys[i]), pieces[i].region))
            i += 1
            continue
        item, where = shape
        braced = brace(values)
        items = pieces[i].region[1:-1].split(", ")
        items[item] = braced
        folded, reads = [], []
        for key, read, at in zip(keys[i], pieces[i].reads, where):
            if at is not None and at[0] == "key":
                parts = key.split(".")
                parts[at[1]] = braced
                key = ".".join(parts)
            elif at is not None:
                region = read.region[1:-1].split(", ")
                region[at[1]] = braced
                read = replace(read, region="[" + ", ".join(region) + "]")
            folded.append(key)
            reads.append(read)
        out.append((replace(pieces[i], reads=tuple(reads)), folded, "[" + ", ".join(items) + "]"))
        i = j
    return out


def rules_text(entry: Entry) -> str:
    return ",".join(dict.fromkeys(p.rule for p in entry.pieces))


# -- folding entries ------------------------------------------------------------------


def _same_kept(a: Group[Entry], b: Group[Entry]) -> bool:
    x, y = a.members[0], b.members[0]
    return x.kept and y.kept and (x.shape, x.dtype, x.kind) == (y.shape, y.dtype, y.kind)


def group_entries(entries: Sequence[Entry], forms: Forms | None = None) -> list[Group[Entry]]:
    """Entries folded into lines: repeated layers share one line; kept siblings with the
    same shape share one (``norm.{weight,bias}``). In the order of the target. Entries
    fold only when everything but their keys (``entry_form``) is equal. ``forms``: the
    entries' keys and forms if already made (``Plan.entry_forms``)."""
    forms = forms if forms is not None else Forms.of(entries, entry_parts)
    keys, rests = forms.keys, forms.numbers
    if any(_index_region(r.region) for e in entries for p in e.pieces for r in p.reads):
        keys, rests = _index_regions_as_keys(entries, keys, rests)
    return merge_leaves(fold_keyed(entries, keys, rests), _same_kept)


def _index_region(region: str | None) -> bool:
    """Whether a read's region only indexes with integers (``[3]``, ``[:, 3]``): unstacked
    experts, which fold across the index as they fold across a key's number."""
    if not region:
        return False
    items = region[1:-1].split(", ")
    return any(i.isdigit() for i in items) and all(i.isdigit() or i in (":", "...") for i in items)


def _region_key(region: str) -> str:
    """``[:, 3]`` -> ``:.3``: its items as dotted segments, which fold as a key's do."""
    return ".".join("~" if item == "..." else item for item in region[1:-1].split(", "))


def _region_of(key: str) -> str:
    items = re.split(r"\.(?![^{]*\})", key)  # not at the dots of a brace: {0..127}
    return "[" + ", ".join("..." if item == "~" else item for item in items) + "]"


def _index_regions_as_keys(entries: Sequence[Entry], keys, rests) -> tuple[list, list]:
    """Keys and forms for folding in which each index region of a read is one more key
    (after the entry's keys), and not part of the form: ``experts.{0..127}.w ← x.w[{0..127}]``."""
    new_keys, new_rests = [], []
    for entry, entry_keys, rest in zip(entries, keys, rests):
        regions = tuple(_region_key(r.region) for p in entry.pieces for r in p.reads if _index_region(r.region))
        if not regions:
            new_keys.append(entry_keys)
            new_rests.append(("form", rest))
            continue
        reads = [replace(p, reads=tuple(replace(r, region="[]") if _index_region(r.region) else r for r in p.reads))
                 for p in entry.pieces]
        new_keys.append((*entry_keys, *regions))
        new_rests.append(("indexed", entry_parts(replace(entry, pieces=tuple(reads)))[1]))
    return new_keys, new_rests


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


@_per_plan
def source_stats(plan: Plan) -> dict[str, tuple[int, int, int, int]]:
    """Per source: (tensors read, bytes read, tensors unused, bytes unused). Bytes are
    counted form by form (``Plan.entry_forms``): entries of one form read the same
    regions of the same shapes; only the keys read are gathered entry by entry."""
    forms = plan.entry_forms
    read_keys: dict[str, set[str]] = {s.name: set() for s in plan.sources}
    read_bytes = dict.fromkeys(read_keys, 0)
    sources = []  # per form: the source of each of its reads
    for first, count in zip(forms.firsts, forms.counts):
        reads = [r for piece in plan.entries[first].pieces for r in piece.reads]
        for r in reads:
            read_bytes[r.source] += count * read_nbytes(r)
        sources.append([r.source for r in reads])
    for number, keys in zip(forms.numbers, forms.keys):
        for source, key in zip(sources[number], keys[1:]):
            read_keys[source].add(key)
    unused_count, unused_bytes = _unused_by_source(plan)
    return {name: (len(read_keys[name]), read_bytes[name], unused_count.get(name, 0), unused_bytes.get(name, 0))
            for name in read_keys}


def _unused_by_source(plan: Plan) -> tuple[dict[str, int], dict[str, int]]:
    """How many unused tensors each source has, and their bytes (form by form)."""
    count: dict[str, int] = {}
    size: dict[str, int] = {}
    forms = plan.unused_forms
    for first, n in zip(forms.firsts, forms.counts):
        u = plan.unused[first]
        count[u.source] = count.get(u.source, 0) + n
        size[u.source] = size.get(u.source, 0) + n * nbytes(u.shape, u.dtype)
    return count, size


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
    lines = [f"# torchgraft plan {plan.sha256[:12]}  (torchgraft {plan.version})", f"target  {target_text(plan)}", *source_lines(plan)]
    written = (plan.recipe.get("output") or {}).get("path")
    if written:  # a literal output.path is part of the plan (the run directory's is not)
        lines.append(f"output  {shown_path(written)}")
    files = layout_text(plan)
    if files:
        lines.append(f"files   {files}")
    return lines


def layout_text(plan: Plan) -> str:
    """The files a directory output gets besides its tensors, for review:
    ``config.json, generation_config.json (from the target's config); tokenizer.json (copied from ~/hf)``."""
    parts = []
    if plan.layout.config:
        parts.append(", ".join(printable(f.name) for f in plan.layout.config) + " (from the target's config)")
    by_origin: dict[str, list[str]] = {}
    for f in plan.layout.files:
        origin = shown_path(f.folder) if f.folder is not None else f.source
        by_origin.setdefault(printable(origin or ""), []).append(printable(f.name))
    parts += [f"{', '.join(names)} (copied from {origin})" for origin, names in by_origin.items()]
    return "; ".join(parts)


def entry_row(group: Group[Entry]) -> tuple[str, str, str, str, str]:
    """(key pattern, shape, dtype, origin, rules) of a line of entries."""
    first = group.members[0]
    reads = [r for p in first.pieces for r in p.reads]
    keys = group.patterns[1 : 1 + len(reads)]
    regions = iter(group.patterns[1 + len(reads):])  # the folded index regions (group_entries)
    if len(group.patterns) > 1 + len(reads):
        first = replace(first, pieces=tuple(
            replace(p, reads=tuple(replace(r, region=_region_of(next(regions))) if _index_region(r.region) else r for r in p.reads))
            for p in first.pieces))
    return (group.patterns[0], shape_text(first.shape), short_dtype(first.dtype), origin_text(first, keys), rules_text(first))


def align(rows: Sequence[tuple[str, str, str, str, str]], prefix: str = "") -> list[str]:
    """Rows as text: key, shape and dtype in columns, then the origin and ``(rules)``."""
    widths = [min(max((len(r[i]) for r in rows), default=0), _MAX_COLUMN) for i in range(3)]
    lines = []
    for key, shape, dtype, origin, rule in rows:
        line = f"{prefix}{key:<{widths[0]}}  {shape:<{widths[1]}}  {dtype:<{widths[2]}}  {origin}"
        lines.append(f"{line}  ({rule})" if rule else line)
    return lines


def table(plan: Plan, grouped: bool = True) -> list[str]:
    """The entries, one line per (folded) row: key, shape, dtype, origin, rules."""
    if grouped:
        return list(_folded_table(plan))
    return align([(e.key, shape_text(e.shape), short_dtype(e.dtype), origin_text(e), rules_text(e)) for e in plan.entries])


@_per_plan
def entry_groups(plan: Plan) -> list[Group[Entry]]:
    """``group_entries`` of a plan's entries, made once for its text, Markdown and flowchart."""
    return group_entries(plan.entries, plan.entry_forms)


@_per_plan
def _folded_table(plan: Plan) -> list[str]:
    return align([entry_row(g) for g in entry_groups(plan)])


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
        lines += ["", f"unused source tensors ({len(plan.unused)}, {human_bytes(unused_nbytes(plan))}):"]
        lines += [f"  {line}" for line in unused_lines(plan, grouped)]
    lines += ["", summary(plan)]
    # Keys, names and paths come from files: nothing in them may start a line of its own
    # or reach the terminal as an escape sequence.
    return "\n".join(map(printable, lines)) + "\n"


def summary(plan: Plan) -> str:
    """Counts and bytes of the target tensors and the unused source tensors."""
    counts, sizes = _tally(plan)
    partial = counts["partial"]
    text = (
        f"{counts['all']} target tensors ({human_bytes(sizes['all'])}): {counts['assigned']} assigned ({human_bytes(sizes['assigned'])})"
        f"{f', {partial} of them in part' if partial else ''}, {counts['kept']} kept ({human_bytes(sizes['kept'])})"
    )
    if plan.skipped:
        text += f", {len(plan.skipped)} skipped"
    return text + f"; {len(plan.unused)} source tensors unused ({human_bytes(unused_nbytes(plan))})"


def target_nbytes(plan: Plan) -> int:
    """The bytes of the target tensors' data, as the summary line counts them (not file bytes)."""
    return _tally(plan)[1]["all"]


def _tally(plan: Plan) -> tuple[dict[str, int], dict[str, int]]:
    """Entries and their bytes: all, assigned, kept, and partly assigned (form by form:
    all of that is the same for the entries of one form)."""
    counts = {"all": 0, "assigned": 0, "kept": 0, "partial": 0}
    sizes = dict.fromkeys(counts, 0)
    forms = plan.entry_forms
    for first, count in zip(forms.firsts, forms.counts):
        entry = plan.entries[first]
        size = count * nbytes(entry.shape, entry.dtype)
        for part in ("all", "kept" if entry.kept else "assigned", *(("partial",) if entry.uncovered else ())):
            counts[part] += count
            sizes[part] += size
    return counts, sizes


def unused_nbytes(plan: Plan) -> int:
    return sum(_unused_by_source(plan)[1].values())
