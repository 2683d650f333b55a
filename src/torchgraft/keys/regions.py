"""NumPy-style regions of a tensor (``fc.weight[:, :10]``) and the boxes they select.

A ``Region`` is what the recipe says; a ``Box`` is what it means for one tensor
shape. Resolution is stricter than NumPy: an out-of-range slice is an error rather
than silently clipped, because a clipped region in a transfer plan hides a bug.
Errors are ``ValueError`` without a prefix; callers add the recipe field and key.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Slice = tuple[int | None, int | None]


@dataclass(frozen=True)
class Var:
    """A bound template variable used as an integer index: ``[{e}]`` (stacking experts)."""

    name: str


Item = int | Slice | str | Var  # str is always "..."

_INT = re.compile(r"[+-]?\d+")
_VAR = re.compile(r"\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}")
_MAX_INDEX_DIGITS = 18  # a bound value is text from a key: keep int() away from hostile lengths


@dataclass(frozen=True)
class Region:
    """A basic index written in a recipe: ints, start:stop slices (step 1 only), at most one '...'."""

    items: tuple[Item, ...]

    @staticmethod
    def parse(text: str) -> Region:
        """Parse the bracketed part of ``key[...]``, brackets included."""
        invalid = f"invalid region '{text}': "
        inner = text.strip()
        if len(inner) < 2 or inner[0] != "[" or inner[-1] != "]":
            raise ValueError(invalid + "expected integers, start:stop slices, '...' or a bound {name}")
        items = tuple(_parse_item(part.strip(), invalid) for part in inner[1:-1].split(","))
        if items.count("...") > 1:
            raise ValueError(invalid + "at most one '...' is allowed")
        return Region(items)

    def __str__(self) -> str:
        return "[" + ", ".join(_item_text(item) for item in self.items) + "]"

    @functools.cached_property
    def variables(self) -> tuple[str, ...]:
        """The names used as indices, in order."""
        return tuple(dict.fromkeys(item.name for item in self.items if isinstance(item, Var)))

    def var_dim(self, name: str, ndim: int) -> int:
        """The dimension of an ``ndim``-d tensor that variable ``name`` indexes."""
        at = next(i for i, item in enumerate(self.items) if isinstance(item, Var) and item.name == name)
        if "..." in self.items[:at]:
            return ndim - (len(self.items) - at)
        return at

    def bind(self, bindings) -> Region:
        """The region with each variable replaced by its integer value from ``bindings``."""
        if not self.variables:
            return self
        items = []
        for item in self.items:
            if isinstance(item, Var):
                if item.name not in bindings:
                    raise ValueError(f"{{{item.name}}} is not bound (bound: {', '.join(sorted(bindings)) or 'nothing'})")
                value = bindings[item.name]
                if not (isinstance(value, int) or len(value) <= _MAX_INDEX_DIGITS and value.isdecimal() and value.isascii()):
                    raise ValueError(f"{{{item.name}}} indexes a dimension, so it needs an integer, but {item.name}='{value}'")
                item = int(value)
            items.append(item)
        return Region(tuple(items))

    def box(self, shape: Sequence[int]) -> Box:
        """Resolve against a tensor shape; raises ``ValueError`` instead of clipping."""
        if self.variables:
            raise ValueError(f"{{{self.variables[0]}}} is not bound")
        shape = tuple(shape)
        explicit = [item for item in self.items if item != "..."]
        if len(explicit) > len(shape):
            raise ValueError(f"too many indices for a {len(shape)}-d tensor: {len(explicit)}")
        full: Slice = (None, None)
        expanded: list[Item] = []
        for item in self.items:
            if item == "...":
                expanded.extend([full] * (len(shape) - len(explicit)))
            else:
                expanded.append(item)
        expanded.extend([full] * (len(shape) - len(expanded)))
        bounds, kept = [], []
        for dim, (item, size) in enumerate(zip(expanded, shape)):
            if isinstance(item, int):
                bounds.append(_resolve_int(item, dim, size))
                kept.append(False)
            else:
                bounds.append(_resolve_slice(item, dim, size))
                kept.append(True)
        return Box(tuple(bounds), tuple(kept))


@dataclass(frozen=True)
class Box:
    """A resolved region of a tensor of some shape: per-dimension half-open bounds.

    ``bounds`` has one ``(start, stop)`` per dimension of the full tensor; ``kept`` is
    False where the region indexed with an int, so that dimension is dropped from
    ``tensor[box.index()]`` the way NumPy and torch drop it.
    """

    bounds: tuple[tuple[int, int], ...]
    kept: tuple[bool, ...]

    def __post_init__(self) -> None:
        if len(self.bounds) != len(self.kept):
            raise ValueError(f"a box needs one 'kept' flag per dimension: {self}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(stop - start for (start, stop), k in zip(self.bounds, self.kept) if k)

    def index(self) -> tuple[int | slice, ...]:
        return tuple(slice(start, stop) if k else start
                     for (start, stop), k in zip(self.bounds, self.kept))

    def overlaps(self, other: Box) -> bool:
        if len(self.bounds) != len(other.bounds):
            raise ValueError(f"boxes of a {len(self.bounds)}-d and a {len(other.bounds)}-d tensor")
        return all(a0 < b1 and b0 < a1 for (a0, a1), (b0, b1) in zip(self.bounds, other.bounds))

    @staticmethod
    def full(shape: Sequence[int]) -> Box:
        return Box(tuple((0, size) for size in shape), (True,) * len(shape))


def slot_maker(region: Region, shape: Sequence[int]) -> Callable[[Sequence[str]], tuple[Box, str] | None] | None:
    """For a region whose variables each index one dimension (``[{e}]``, ``[:, {e}]``) of a
    tensor of ``shape``: a function from the variables' values (as bound, decimal text) to
    the box and its ``describe`` text, without resolving the region again for each of 128
    experts. It gives None for a value that is not an index of its dimension, and
    ``slot_maker`` None when the region's other items do not resolve:
    ``region.bind(...).box(shape)`` then says why."""
    shape = tuple(shape)
    names = region.variables
    try:
        base = Region(tuple(0 if isinstance(item, Var) else item for item in region.items)).box(shape)
    except ValueError:
        return None
    dims = [region.var_dim(name, len(shape)) for name in names]
    parts = describe(base, shape)[1:-1].split(", ")
    bounds, kept = list(base.bounds), base.kept
    # 48 layers x 3 rules bind the same 128 values: each slot is made once, and its box
    # shared (the planner then hashes and compares one object per slot, not 144).
    made: dict[tuple[str, ...], tuple[Box, str] | None] = {}

    def make(values: Sequence[str]) -> tuple[Box, str] | None:
        values = tuple(values)
        found = made.get(values, False)
        if found is not False:
            return found
        for dim, value in zip(dims, values):
            if not (value.isdecimal() and value.isascii() and len(value) <= _MAX_INDEX_DIGITS) or int(value) >= shape[dim]:
                found = None
                break
            value = int(value)
            bounds[dim] = (value, value + 1)
            parts[dim] = str(value)
        else:
            found = Box(tuple(bounds), kept), "[" + ", ".join(parts) + "]"
        made[values] = found
        return found

    make.shape = base.shape  # type: ignore[attr-defined]  # every slot's box has this shape
    return make


def split_key_region(text: str) -> tuple[str, Region | None]:
    """``"fc.weight[:, :10]"`` -> ``("fc.weight", Region(...))``; no brackets -> region None.

    ``re:`` patterns are returned whole: their brackets are character classes.
    """
    if text.startswith("re:") or "[" not in text:
        return text, None
    at = text.index("[")
    return text[:at], Region.parse(text[at:])


def uncovered(shape: Sequence[int], boxes: Sequence[Box]) -> list[Box]:
    """The parts of a tensor that no box covers, as disjoint boxes ordered by bounds.

    Plans use this to say exactly which parts of a tensor keep their initial values.
    """
    shape = tuple(shape)
    if 0 in shape:
        return []
    for box in boxes:
        if len(box.bounds) != len(shape):
            raise ValueError(f"a box of a {len(box.bounds)}-d tensor used on shape {list(shape)}")
    slots = _slots_of(shape, boxes)
    if slots is not None:  # stacked experts: one index each along one dim, the rest whole
        dim, taken = slots
        rest, start = [], 0
        for index in [*sorted(taken), shape[dim]]:
            if start < index:
                rest.append((*((0, n) for n in shape[:dim]), (start, index), *((0, n) for n in shape[dim + 1:])))
            start = index + 1
        return [Box(bounds, (True,) * len(shape)) for bounds in rest]
    remaining = [Box.full(shape).bounds]
    for box in boxes:
        remaining = [piece for rest in remaining for piece in _subtract(rest, box.bounds)]
    merged = _merge(sorted(remaining))
    return [Box(bounds, (True,) * len(shape)) for bounds in merged]


def describe(box: Box, shape: Sequence[int]) -> str:
    """The shortest readable region text for ``box`` in a tensor of ``shape``.

    Full dims read ``:``, and trailing full dims are omitted, so that ``[:, 10:]``
    reads at a glance as "the columns from 10 on".
    """
    parts = []
    for (start, stop), k, size in zip(box.bounds, box.kept, shape):
        if not k:
            parts.append(str(start))
        else:
            parts.append(("" if start == 0 else str(start)) + ":"
                         + ("" if stop == size else str(stop)))
    while parts and parts[-1] == ":":
        parts.pop()
    if not box.bounds:
        return "[...]"  # a scalar has no dim for ":" to select
    return "[" + (", ".join(parts) or ":") + "]"


def _parse_item(part: str, invalid: str) -> Item:
    if part == "...":
        return "..."
    if m := _VAR.fullmatch(part):
        return Var(m[1])
    if _INT.fullmatch(part):
        return int(part)
    pieces = [piece.strip() for piece in part.split(":")]
    if not 2 <= len(pieces) <= 3 or not all(p == "" or _INT.fullmatch(p) for p in pieces):
        raise ValueError(invalid + "expected integers, start:stop slices, '...' or a bound {name}")
    if len(pieces) == 3 and pieces[2] not in ("", "1", "+1"):
        raise ValueError(invalid + "slice steps are not supported")
    start, stop = (int(p) if p else None for p in pieces[:2])
    return (start, stop)


def _item_text(item: Item) -> str:
    if isinstance(item, tuple):
        return _slice_text(item)
    if isinstance(item, Var):
        return "{" + item.name + "}"
    return str(item)


def _slice_text(item: Slice) -> str:
    start, stop = item
    return f"{'' if start is None else start}:{'' if stop is None else stop}"


def _resolve_int(index: int, dim: int, size: int) -> tuple[int, int]:
    at = index + size if index < 0 else index
    if not 0 <= at < size:
        raise ValueError(f"index {index} is out of bounds for dim {dim} of size {size}")
    return (at, at + 1)


def _resolve_slice(item: Slice, dim: int, size: int) -> tuple[int, int]:
    resolved = []
    for bound, default in zip(item, (0, size)):
        if bound is None:
            resolved.append(default)
        elif not -size <= bound <= size:
            raise ValueError(f"slice {_slice_text(item)} exceeds dim {dim} of size {size}")
        else:
            resolved.append(bound + size if bound < 0 else bound)
    start, stop = resolved
    if start >= stop:
        raise ValueError(f"slice {_slice_text(item)} selects nothing in dim {dim} of size {size}")
    return (start, stop)


Bounds = tuple[tuple[int, int], ...]


def _slots_of(shape: tuple[int, ...], boxes: Sequence[Box]) -> tuple[int, set[int]] | None:
    """``(dim, indices)`` if every box is one index along the same dim and whole elsewhere."""
    if len(boxes) < 2:
        return None
    full = tuple((0, n) for n in shape)
    first = boxes[0].kept
    if first.count(False) != 1:
        return None
    dim = first.index(False)
    taken: set[int] = set()
    for box in boxes:
        bounds = box.bounds
        if box.kept != first or bounds[:dim] != full[:dim] or bounds[dim + 1:] != full[dim + 1:]:
            return None
        taken.add(bounds[dim][0])
    return dim, taken


def _subtract(rest: Bounds, cut: Bounds) -> list[Bounds]:
    """``rest`` minus ``cut``: peel off the slabs below and above ``cut`` one dim at a time."""
    if not all(a0 < b1 and b0 < a1 for (a0, a1), (b0, b1) in zip(rest, cut)):
        return [rest]
    pieces = []
    core = list(rest)
    for dim, ((r0, r1), (c0, c1)) in enumerate(zip(rest, cut)):
        if r0 < c0:
            pieces.append(tuple(core[:dim] + [(r0, c0)] + core[dim + 1:]))
        if c1 < r1:
            pieces.append(tuple(core[:dim] + [(c1, r1)] + core[dim + 1:]))
        core[dim] = (max(r0, c0), min(r1, c1))
    return pieces


def _merge(boxes: list[Bounds]) -> list[Bounds]:
    """Join boxes that differ in one dim and touch there, so plans list few, large parts."""
    boxes = list(boxes)
    changed = True
    while changed:
        changed = False
        for i, a in enumerate(boxes):
            for j in range(i + 1, len(boxes)):
                joined = _join(a, boxes[j])
                if joined is not None:
                    boxes[i] = joined
                    del boxes[j]
                    changed = True
                    break
            if changed:
                break
    return sorted(boxes)


def _join(a: Bounds, b: Bounds) -> Bounds | None:
    differ = [dim for dim, (x, y) in enumerate(zip(a, b)) if x != y]
    if len(differ) != 1:
        return None
    dim = differ[0]
    (a0, a1), (b0, b1) = a[dim], b[dim]
    if a1 == b0 or b1 == a0:
        return a[:dim] + ((min(a0, b0), max(a1, b1)),) + a[dim + 1:]
    return None
