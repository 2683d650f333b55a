"""The Mermaid flowchart that opens ``plan.md``: which source modules feed which target
modules, repeated layers folded (``blocks.*``), small enough to read in a pull request.

A module is a key's leading segments (its tensor name dropped), numbers replaced by
``*``. The deepest level (up to 3 segments) whose graph has at most ``MAX_NODES`` nodes
is drawn; kept tensors come from one "initial values" node. A plan whose top-level
modules alone are more has no chart.

The chart is drawn from the lines of the plan text (``text.entry_groups``), one entry
per line: the entries of a line have the same modules, since their keys differ only in
whole integer segments (``*`` here) or, for kept siblings, in their last segment (the
tensor name, dropped here). At 100k entries that is 0.6 s less than walking them all.
"""

from __future__ import annotations

import re

from torchgraft.core.text import printable
from torchgraft.plans.text import entry_groups
from torchgraft.plans.types import Entry, Plan

MAX_NODES = 30
_NUMBER = re.compile(r"^\d+$")


def _segments(key: str, cache: dict[tuple[str, ...], tuple[str, ...]]) -> tuple[str, ...]:
    """The first 3 segments of a key's module (its tensor name dropped), numbers as ``*``.
    Cached by those segments: a 100k-tensor plan has a few hundred of them."""
    parts = key.split(".", 3)
    head = tuple(parts[:3] if len(parts) == 4 else parts[:-1] or parts)
    found = cache.get(head)
    if found is None:
        found = cache[head] = tuple("*" if _NUMBER.match(p) else p for p in head)
    return found


def _deepest_edges(entries: list[Entry]) -> set[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """(source name or "" for initial values, source segments, target segments), once."""
    cache: dict[tuple[str, ...], tuple[str, ...]] = {}
    edges = set()
    for entry in entries:
        to = _segments(entry.key, cache)
        for piece in entry.pieces:
            for read in piece.reads:
                edges.add((read.source, _segments(read.key, cache), to))
        if entry.needs_initial:
            edges.add(("", (), to))
    return edges


def _edges(deepest: set, depth: int) -> set[tuple[str, str, str]]:
    """(source name or "" for initial values, source module, target module) at ``depth``."""
    return {(source, ".".join(module[:depth]), ".".join(to[:depth])) for source, module, to in deepest}


def _nodes(edges: set[tuple[str, str, str]]) -> int:
    return len({(s, m) for s, m, _ in edges}) + len({t for _, _, t in edges})


_ENTITIES = {'"': "#quot;", "`": "#96;", "<": "#lt;", ">": "#gt;", "&": "#amp;"}


def _label(text: str) -> str:
    """A key or source name (from a file) as a mermaid node label: one line, no quote to
    end the label, no backtick run to close the block, no HTML (mermaid's entity codes)."""
    return "".join(_ENTITIES.get(c, c) for c in printable(text))


def flowchart(plan: Plan) -> list[str]:
    """The Markdown lines of the chart (a mermaid block), or none for an empty plan."""
    entries = [group.members[0] for group in entry_groups(plan)]  # one per line, in plan order
    deepest = _deepest_edges(entries)
    edges: set[tuple[str, str, str]] = set()
    depth = 3
    for depth in (3, 2, 1):
        edges = _edges(deepest, depth)
        if _nodes(edges) <= MAX_NODES:
            break
    if not edges or _nodes(edges) > MAX_NODES:  # even the top-level modules are too many to draw
        return []
    ids: dict[tuple[str, str], str] = {}  # (source name, module) -> node id; ("", "") initial values; (None, module) target

    def node(source: str | None, module: str) -> str:
        return ids.setdefault((source, module), f"n{len(ids)}")

    lines = ["```mermaid", "flowchart LR"]
    sources = [s.name for s in plan.sources]
    for i, source in enumerate(sources):
        modules = sorted({m for s, m, _ in edges if s == source})
        if modules:
            lines += [f'  subgraph source{i}["{_label(source)}"]', *(f'    {node(source, m)}["{_label(m)}"]' for m in modules), "  end"]
    if any(s == "" for s, _, _ in edges):
        lines.append(f'  {node("", "")}(["initial values"])')
    cache: dict[tuple[str, ...], tuple[str, ...]] = {}
    segments = dict.fromkeys(_segments(e.key, cache) for e in entries)  # in plan order
    targets = list(dict.fromkeys(".".join(t[:depth]) for t in segments))
    lines += ['  subgraph target["target"]', *(f'    {node(None, t)}["{_label(t)}"]' for t in targets), "  end"]
    for source, module, to in sorted(edges, key=lambda e: (e[0] == "", sources.index(e[0]) if e[0] else 0, e[1], targets.index(e[2]))):
        lines.append(f"  {node(source, module)} {'-.->' if source == '' else '-->'} {node(None, to)}")
    return [*lines, "```", ""]
