"""Long lists of near-identical items sorted into *forms* once: what a plan's text,
JSON, hash and counts all need of its 100k entries, made once per plan."""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Forms:
    """A list of items sorted into forms, once: each item's keys and the number of its
    form, and where each form first occurs. A plan's text, JSON, hash and counts all
    need this for its 100k entries: made once per plan instead of once per pass.

    Two items have one form exactly when their objects are equal but for their keys
    (a few strings).
    """

    keys: list[tuple[str, ...]]  # each item's keys
    numbers: list[int]  # each item's form, numbered in order of first occurrence
    firsts: list[int]  # each form's first item

    @classmethod
    def of(cls, items: Sequence[Any], parts: Callable[[Any], tuple[tuple[str, ...], Hashable]]) -> Forms:
        """``parts(item)`` is ``(keys, form)``: the item's keys, and all else of it."""
        numbered: dict[Hashable, int] = {}
        keys, numbers = [], []
        for item_keys, form in map(parts, items):
            keys.append(item_keys)
            numbers.append(numbered.setdefault(form, len(numbered)))
        firsts: list[int] = []
        for i, number in enumerate(numbers):
            if number == len(firsts):  # a form not seen before: numbers grow one at a time
                firsts.append(i)
        return cls(keys, numbers, firsts)

    @functools.cached_property
    def counts(self) -> list[int]:
        """How many items each form has."""
        counts = [0] * len(self.firsts)
        for number in self.numbers:
            counts[number] += 1
        return counts
