"""Merge methods at plan time: a rule's merge spec checked against its sources, and
resolved per target tensor (gradients interpolated over the layers, as mergekit does).

A method's spec in the plan has every parameter present and no gradient left: the
executor needs no defaults and no layer arithmetic. A base is read as the last read of
the piece (``merge["base"]`` names its source).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from torchgraft.core.errors import PlanError
from torchgraft.core.merge_methods import METHODS

_NUMBER_SEGMENT = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def check_merge(merge: object, sources: Sequence[str], field: str) -> None:
    """What a method asks of the rule's sources and values; ``field`` is the rule's."""
    if not isinstance(merge, Mapping) or "method" not in merge:
        return
    method = METHODS[merge["method"]]
    name, count = method.name, len(sources)
    if method.max_sources is not None and count > method.max_sources or count < method.min_sources:
        if method.max_sources == method.min_sources:
            wanted = f"exactly {method.min_sources}"
        else:
            wanted = f"at least {method.min_sources}"
        raise PlanError(f"{field}.from", f"{name} merges {wanted} sources (got {count})")
    if method.base:
        base = merge.get("base")
        if base is None:
            raise PlanError(f"{field}.merge.base", f"missing value ({name} needs a base: the source "
                                                   "whose tensor for the same key the others are compared with)")
        if base in sources:
            raise PlanError(f"{field}.merge.base", f"'{base}' is also in from (name the base once, as base)")
    for param in method.params:
        if param.kind == "fraction":
            for value in _anchors(merge[param.name]):
                if not 0 < value <= 1:
                    raise PlanError(f"{field}.merge.{param.name}", f"must be in (0, 1] (got {value!r})")
        if param.name == "gamma":
            for value in _anchors(merge[param.name]):
                if not 0 <= value <= 1:
                    raise PlanError(f"{field}.merge.gamma", f"must be in [0, 1] (got {value!r})")


def has_gradient(merge: object) -> bool:
    return isinstance(merge, Mapping) and any(_is_gradient(v) or (isinstance(v, list) and any(map(_is_gradient, v)))
                                              for v in merge.values())


def gradient_variable(merge: Mapping) -> str | None:
    """The template variable the gradients interpolate over (``over:``), if one names it."""
    for value in merge.values():
        for item in value if isinstance(value, list) else [value]:
            if _is_gradient(item) and item.get("over"):
                return item["over"]
    return None


class LayerPositions:
    """Where each tensor of a rule sits among its layers: ``t = idx / (n - 1)`` over the
    distinct layer numbers the rule meets (mergekit's gradient position); 0 for a tensor
    outside the layers (embeddings, final norm), as mergekit gives them."""

    def __init__(self, numbers: Sequence[int | None]):
        distinct = sorted({n for n in numbers if n is not None})
        self._rank = {n: i for i, n in enumerate(distinct)}
        self._count = len(distinct)

    @staticmethod
    def number_in(key: str) -> int | None:
        """The layer number of a key: its first all-digit segment."""
        found = _NUMBER_SEGMENT.search(key)
        return int(found[1]) if found else None

    def t(self, number: int | None) -> float:
        if number is None:
            return 0.0
        return self._rank[number] / (self._count - 1) if self._count > 1 else 1.0


def resolve(merge: object, t: float) -> object:
    """The spec for one tensor at gradient position ``t``: every gradient replaced by its value."""
    if not has_gradient(merge):
        return merge
    out = {}
    for name, value in merge.items():
        if isinstance(value, list):
            out[name] = [_at(v, t) for v in value]
        else:
            out[name] = _at(value, t)
    return out


def _at(value: object, t: float) -> object:
    """mergekit's ``evaluate_setting`` for a list of numbers: linear between neighbouring anchors."""
    if not _is_gradient(value):
        return value
    anchors = value["gradient"]
    if len(anchors) == 1:
        return anchors[0]
    scaled = t * (len(anchors) - 1)
    i0 = int(scaled)
    i1 = min(len(anchors) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * anchors[i0] + frac * anchors[i1]


def _anchors(value: object) -> list[float]:
    return list(value["gradient"]) if _is_gradient(value) else [value]


def _is_gradient(value: object) -> bool:
    return isinstance(value, Mapping) and "gradient" in value
