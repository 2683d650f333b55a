"""Fold near-identical lines into one, and unfold them again.

A 60-layer model has sixty lines that differ only by the layer number. Folding keys
whose integer segments vary together gives one line a reviewer can read
(``blocks.{0..59}.q.weight ← src:layer.{0..59}.query.weight``), and ``expand`` turns
such a line back into every key it stands for, so the folded text never hides an
entry: the folder only emits a pattern after checking that ``expand`` gives back
exactly its members.

The braces are those of recipe patterns (``keys.patterns``, one grammar): ranges
``{3..7}`` ``{7..3}`` ``{0..118..2}``, integers listed ``{0,2,5}``, names listed
``{weight,bias}`` (sibling leaves of a module), so a line pasted into ``select`` matches
the keys it stands for. The folder prints no brace a pattern would refuse (too many values).
The first key of a line (the target key) iterates over the product of its braces, in
order (``layers.{0..59}.experts.{0..7}`` is 480 keys). A brace in another key of the
same line (a source key) follows one brace of the first key, value for value: the only
one if there is one; else the one at the same position when the key has as many braces;
else the one with as many values. The folder never emits a line where that is ambiguous.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from torchgraft.keys.patterns import MAX_LISTED, MAX_VALUES, PatternError, brace_values

T = TypeVar("T")

_INT = re.compile(r"0|[1-9][0-9]*")
_INTEGER = "(0|[1-9][0-9]*)"
_INT_SEGMENT = re.compile(rf"(?<![^.]){_INTEGER}(?![^.])")  # a whole dotted segment
_BRACE = re.compile(r"\{([^{}\s]*)\}")
_NAME = re.compile(r"[^,{}\s.]+")
_LINE_COST = 60  # a line costs as much as this many characters when choosing a folding
_MAX_FIXED_CHOICES = 6  # keys with more integer segments than this try fewer foldings
_MIN_FOLD = 3  # two lines folded into one read worse than the two lines
_KEEP = 16  # templates kept as regexes per rest when splitting keys (_split_items)


@dataclass(frozen=True)
class Group(Generic[T]):
    """Items folded into one line: ``patterns[0]`` is the first key, the rest follow it."""

    patterns: tuple[str, ...]
    members: tuple[T, ...]  # in input order
    first: int  # input position of the first member: lines keep the input's order


# -- patterns -------------------------------------------------------------------------


def brace(values: Sequence[int | str]) -> str:
    """``[0, 1, 2, 3]`` -> ``{0..3}``; ``[0, 2, 4]`` -> ``{0..4..2}``; else a list."""
    if len(values) >= 3 and all(isinstance(v, int) for v in values):
        step = values[1] - values[0]  # type: ignore[operator]
        if step != 0 and all(b - a == step for a, b in zip(values, values[1:])):  # type: ignore[operator]
            by = f"..{abs(step)}" if abs(step) != 1 else ""
            return f"{{{values[0]}..{values[-1]}{by}}}"
    return "{" + ",".join(str(v) for v in values) + "}"


def _fits(written: str, count: int) -> bool:
    """Whether a pattern may hold this brace (``patterns.MAX_VALUES``, ``MAX_LISTED``)."""
    return count <= (MAX_VALUES if written.count("..") == 1 else MAX_LISTED)


def slot_values(content: str) -> list[str] | None:
    """The values a brace's content stands for, or None if it is not a pattern brace
    (the grammar is the recipe's: ``patterns.brace_values``)."""
    try:
        return brace_values(content)
    except PatternError:
        return None


def _slots(text: str) -> list[tuple[int, int, list[str]]]:
    """(start, end, values) of each pattern brace in ``text``."""
    out = []
    for m in _BRACE.finditer(text):
        values = slot_values(m[1])
        if values is not None:
            out.append((m.start(), m.end(), values))
    return out


def _substitute(text: str, slots: list[tuple[int, int, list[str]]], chosen: Sequence[str]) -> str:
    parts, last = [], 0
    for (start, end, _), value in zip(slots, chosen):
        parts += [text[last:start], value]
        last = end
    return "".join(parts) + text[last:]


def expand(patterns: Sequence[str]) -> list[tuple[str, ...]]:
    """Every tuple of keys a line stands for (see the module docstring for the rules)."""
    dims = _slots(patterns[0])
    followers = []
    for pattern in patterns[1:]:
        slots = _slots(pattern)
        followers.append((pattern, slots, _attribute(slots, dims, pattern)))
    out = []
    for combo in itertools.product(*(range(len(values)) for _, _, values in dims)):
        keys = [_substitute(patterns[0], dims, [values[i] for (_, _, values), i in zip(dims, combo)])]
        for pattern, slots, owners in followers:
            keys.append(_substitute(pattern, slots, [values[combo[d]] for (_, _, values), d in zip(slots, owners)]))
        out.append(tuple(keys))
    return out


def _attribute(slots, dims, pattern: str) -> list[int]:
    """Which brace of the first key each brace of ``pattern`` follows."""
    if not slots:
        return []
    if len(dims) == 1:
        owners = [0] * len(slots)
    elif len(slots) == len(dims):
        owners = list(range(len(slots)))
    else:
        owners = []
        for _, _, values in slots:
            same = [d for d, (_, _, dim_values) in enumerate(dims) if len(dim_values) == len(values)]
            if len(same) != 1:
                raise ValueError(f"'{pattern}': cannot tell which brace of the first key each of its braces follows")
            owners.append(same[0])
    for (_, _, values), d in zip(slots, owners):
        if not dims or len(values) != len(dims[d][2]):
            raise ValueError(f"'{pattern}': a brace has {len(values)} values, the brace it follows has a different number")
    return owners


def expand_line(line: str) -> list[str]:
    """A folded text line -> one line per key tuple it stands for. Its first
    space-separated token is the first key; other tokens holding braces follow it."""
    tokens = line.split(" ")
    lead = next((i for i, t in enumerate(tokens) if t), None)
    if lead is None or not _slots(tokens[lead]):
        return [line]
    others = [i for i, t in enumerate(tokens) if i != lead and _slots(t)]
    out = []
    for keys in expand([tokens[lead]] + [tokens[i] for i in others]):
        copy = list(tokens)
        for i, key in zip([lead, *others], keys):
            copy[i] = key
        out.append(" ".join(copy))
    return out


# -- folding --------------------------------------------------------------------------


def split_key(key: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """``blocks.3.q.7.weight`` -> (("blocks.", ".q.", ".weight"), (3, 7)): the text around
    its integer segments, and the integers. Keys with braces of their own never fold (a
    brace would read as a pattern)."""
    template, digits = _split_digits(key)
    return template, tuple(map(int, digits))


def _split_digits(key: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``split_key`` with the integers left as text: folding turns into numbers only the
    distinct values of a column, not the 200k of a large plan."""
    if "{" in key or "}" in key:
        return (key,), ()
    parts = _INT_SEGMENT.split(key)
    return tuple(parts[0::2]), tuple(parts[1::2])


def _join(template: tuple[str, ...], values: Sequence[str]) -> str:
    out = [template[0]]
    for value, text in zip(values, template[1:]):
        out += [value, text]
    return "".join(out)


def fold(items: Sequence[T], keys: Callable[[T], Sequence[str]], rest: Callable[[T], Hashable], *,
         least: int = _MIN_FOLD) -> list[Group[T]]:
    """Fold items whose ``rest`` is equal and whose keys differ only by integer segments
    that vary together, ``least`` or more to a line. Groups come in the order of their first member."""
    return fold_keyed(items, [tuple(keys(item)) for item in items], [rest(item) for item in items], least=least)


def fold_keyed(items: Sequence[T], keys: Sequence[tuple[str, ...]], rests: Sequence[Hashable], *,
               least: int = _MIN_FOLD) -> list[Group[T]]:
    """``fold`` with each item's keys and rest given (a plan has them at hand)."""
    # members are (position, item, integers of its keys as text, its keys)
    buckets: dict[tuple, list[tuple[int, T, tuple[str, ...], tuple[str, ...]]]] = {}
    for i, (item, item_keys, rest, (templates, values)) in enumerate(zip(items, keys, rests, _split_items(keys, rests))):
        buckets.setdefault((templates, rest), []).append((i, item, values, item_keys))
    groups: list[Group[T]] = []
    for (templates, _), members in buckets.items():
        groups.extend(_fold_bucket(templates, members, least))
    groups.sort(key=lambda g: g.first)
    return groups


def _split_items(keys: Sequence[tuple[str, ...]], rests: Sequence[Hashable]) -> Iterator[tuple[tuple, tuple[str, ...]]]:
    """``_split_digits`` of each item's keys: their templates, and the integers of them all.

    Items with one rest mostly have keys of a few templates (``layers.*.q.weight``): the
    first ``_KEEP`` met per rest are kept as one anchored regex over an item's keys joined
    by newlines, and an item that fully matches one splits the same way (the text around
    its integers is the template's, which holds no integer segment). Matching costs a third
    of splitting: on the 108k-entry MoE dry run the splits take 0.31 s instead of 1.03 s
    (the plan text's folding 0.85 s instead of 1.56 s). Keys holding a newline are split in
    full, and so are a rest's items once its regexes fail more than twice as often as they
    match: then no slower than splitting every key (100k keys of 20k templates)."""
    known: dict[Hashable, _Templates] = {}
    for item_keys, rest in zip(keys, rests):
        seen = known.setdefault(rest, _Templates())
        matched = seen.match(item_keys)
        if matched is not None:
            yield matched
            continue
        split_templates, split_values = [], []
        for key in item_keys:
            template, digits = _split_digits(key)
            split_templates.append(template)
            split_values += digits
        templates = tuple(split_templates)
        if split_values and not any("\n" in key for key in item_keys):
            seen.keep(templates)
        yield templates, tuple(split_values)


class _Templates:
    """The key templates met for one rest, as regexes, and how well they have matched."""

    def __init__(self) -> None:
        self.patterns: list[tuple[Callable, tuple]] = []  # (fullmatch, templates)
        self.matched = self.failed = 0

    def match(self, keys: tuple[str, ...]) -> tuple[tuple, tuple[str, ...]] | None:
        """The templates and integers of ``keys`` if they fit templates met before."""
        if not self.patterns or self.failed > 2 * self.matched + _KEEP * _KEEP:  # mostly new templates: stop trying
            return None
        joined = "\n".join(keys)
        if joined.count("\n") != len(keys) - 1:  # a key holds a newline
            return None
        for fullmatch, templates in self.patterns:
            match = fullmatch(joined)
            if match is not None:
                self.matched += 1
                return templates, match.groups()
            self.failed += 1
        return None

    def keep(self, templates: tuple) -> None:
        if len(self.patterns) < _KEEP:
            pattern = "\n".join(_INTEGER.join(map(re.escape, template)) for template in templates)
            self.patterns.append((re.compile(pattern).fullmatch, templates))


def _fold_bucket(templates, members, least: int) -> list[Group]:
    if len(members) == 1:
        return [_single(members[0])]
    primary = len(templates[0]) - 1
    choices = range(primary + 1) if primary <= _MAX_FIXED_CHOICES else (0, primary)
    # Every line costs at least this: its keys hold all the text around their integers.
    line_floor = _LINE_COST + sum(len(text) for template in templates for text in template)
    distinct = [len(set(column)) for column in list(zip(*(member[2] for member in members)))[:primary]]
    best, best_cost = None, None
    for n_fixed in choices:
        for fixed in itertools.combinations(range(primary), n_fixed):
            # a line per value of a fixed integer at least, then per group of members:
            # a folding that cannot beat the best so far is not made
            if best_cost is not None and max((distinct[j] for j in fixed), default=1) * line_floor >= best_cost:
                continue
            subs = _partition(members, fixed)
            if best_cost is not None and len(subs) * line_floor >= best_cost:
                continue
            groups = []
            for sub in subs:
                folded = _fold_exact(templates, sub, primary, least)
                groups += [folded] if folded is not None else [_single(m) for m in sub]
            cost = sum(sum(len(p) for p in g.patterns) + _LINE_COST for g in groups)
            if best_cost is None or cost < best_cost:
                best, best_cost = groups, cost
    return best


def _partition(members, fixed: tuple[int, ...]) -> list[list]:
    if not fixed:
        return [members]
    subs: dict[tuple, list] = {}
    for member in members:
        subs.setdefault(tuple([member[2][j] for j in fixed]), []).append(member)
    return list(subs.values())


def _single(member) -> Group:
    i, item, _, keys = member
    return Group(keys, (item,), i)


def _fold_exact(templates, sub, primary: int, least: int) -> Group | None:
    """One line for ``sub`` if its primary integers form a full product and every other
    integer follows one of them; None otherwise."""
    if len(sub) < least:
        return None
    width = len(sub[0][2])
    columns = list(zip(*(member[2] for member in sub)))
    lists = [sorted(set(col), key=int) for col in columns]  # numeric order reads best: {1..11..2}, not {1,11,3,5,7,9}
    dims = [j for j in range(primary) if len(lists[j]) > 1]
    size = 1
    for j in dims:
        size *= len(lists[j])
    if size != len(sub):
        return None
    text: list[str] = []
    followers: dict[int, tuple[int, list[str]]] = {}  # column -> (the dim it was read along, its values along it)
    for j in range(width):
        if len(lists[j]) == 1:
            text.append(lists[j][0])
            continue
        if j < primary:
            values = [int(v) for v in lists[j]]
        else:
            follows = _follows(columns[j], [columns[d] for d in dims], [lists[d] for d in dims])
            if follows is None:
                return None
            followers[j] = follows
            values = [int(v) for v in follows[1]]
        text.append(brace(values))
        if not _fits(text[-1], len(values)):
            return None
    patterns, at = [], 0
    for template in templates:
        n = len(template) - 1
        patterns.append(_join(template, text[at : at + n]))
        at += n
    if not _covers(templates, patterns, sub, columns, [lists[d] for d in dims], [columns[d] for d in dims], followers):
        return None
    return Group(tuple(patterns), tuple([member[1] for member in sub]), sub[0][0])


def _covers(templates, patterns, sub, columns, dim_lists, dim_columns, followers) -> bool:
    """``expand(patterns)`` gives back exactly the keys of ``sub``: checked on the
    integers, without writing out the keys (1/10 of the time at 100k keys).

    The line's size is the product of its dims' sizes, so the first keys come back iff
    no two members share their dim values. A follower brace comes back iff it follows,
    in ``expand``, the dim it was read along, or takes the same values along the one it
    follows there. Keys with braces of their own are checked by expanding them."""
    if any("{" in text or "}" in text for template in templates for text in template):
        return _expands_to(patterns, sub)
    if len(set(zip(*dim_columns))) != len(sub):
        return False
    dims = [(0, 0, values) for values in dim_lists]  # as _slots gives them: only the values count
    at = len(templates[0]) - 1
    for template, pattern in zip(templates[1:], patterns[1:]):
        braced = [j for j in range(at, at + len(template) - 1) if j in followers]
        at += len(template) - 1
        try:
            owners = _attribute([(0, 0, followers[j][1]) for j in braced], dims, pattern)
        except ValueError:
            return False
        for j, owner in zip(braced, owners):
            along, values = followers[j]
            if owner != along:
                position = {value: i for i, value in enumerate(dim_lists[owner])}
                if any(v != values[position[d]] for v, d in zip(columns[j], dim_columns[owner])):
                    return False
    return True


def _expands_to(patterns, sub) -> bool:
    """``_covers`` by writing out every key of the line."""
    try:
        return sorted(expand(patterns)) == sorted(member[3] for member in sub)
    except ValueError:
        return False


def _follows(column, dim_columns, dim_lists) -> tuple[int, list[str]] | None:
    """The first dimension ``column`` is a function of, and its values listed along it."""
    for k, (dim_column, dim_list) in enumerate(zip(dim_columns, dim_lists)):
        if len(set(zip(dim_column, column))) == len(dim_list):  # one value per value of the dim
            mapping = dict(zip(dim_column, column))
            return k, [mapping[d] for d in dim_list]
    return None


def merge_leaves(groups: Sequence[Group[T]], same: Callable[[Group[T], Group[T]], bool]) -> list[Group[T]]:
    """Adjacent single-key lines that differ only in their last segment share one line
    (``norm.{weight,bias}``) when ``same`` says the rest of the two lines is equal. A key
    with braces of its own shares no line: ``expand`` would not give it back."""
    out: list[Group[T]] = []
    for group in groups:
        prev = out[-1] if out else None
        if (prev is not None and len(group.patterns) == 1 and len(prev.patterns) == 1
                and not _literal_braces(prev) and not _literal_braces(group) and same(prev, group)):
            merged = _merge(prev.patterns[0], group.patterns[0])
            if merged is not None:
                out[-1] = Group((merged,), prev.members + group.members, prev.first)
                continue
        out.append(group)
    return out


def _literal_braces(group: Group) -> bool:
    """A line of one key that holds braces (a folded line's braces are the folder's)."""
    return len(group.members) == 1 and ("{" in group.patterns[0] or "}" in group.patterns[0])


def _merge(a: str, b: str) -> str | None:
    parent_a, _, leaf_a = a.rpartition(".")
    parent_b, _, leaf_b = b.rpartition(".")
    if not parent_a or parent_a != parent_b or not _NAME.fullmatch(leaf_b) or _INT.fullmatch(leaf_b):
        return None
    if _NAME.fullmatch(leaf_a) and not _INT.fullmatch(leaf_a):
        leaves = [leaf_a]
    elif leaf_a.startswith("{") and (values := slot_values(leaf_a[1:-1])) is not None and not _INT.fullmatch(values[0]):
        leaves = values
    else:
        return None
    if leaf_b in leaves or len(leaves) >= MAX_LISTED:
        return None
    return f"{parent_a}.{{{','.join(leaves + [leaf_b])}}}"
