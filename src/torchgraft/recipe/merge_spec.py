"""``merge:`` of a rule -> its canonical spec.

Forms: ``mean`` and ``{weights: [...]}`` (the short forms of a linear merge, kept as they
are in plans), ``{concat: DIM}`` and ``{stack: DIM}`` (joins, of explicit rules), and
``{method: NAME, ...}`` for the methods of ``core/merge_methods.py``,
returned with every parameter present (defaults filled in). A numeric parameter, or a
weight, may be ``{gradient: [v0, ..., vn], over: VAR}``: it is resolved per tensor by the
planner (``planning/merging.py``), which also checks values and sources.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from torchgraft.core.errors import RecipeError
from torchgraft.core.fields import is_list, reject_unknown, type_name, wrong_type
from torchgraft.core.merge_methods import METHODS, REQUIRED, Method
from torchgraft.core.text import did_you_mean

_GRADIENT_FIELDS = ("gradient", "over")
JOINS = {"concat", "stack"}  # merges that join the sources' values along a dimension


def parse_merge(value: object, field: str, count: int, check_source: Callable[[str, str], None]) -> object:
    """None | "mean" | {"weights": [floats]} | {"concat"|"stack": DIM} | {"method": NAME, ...}; ``count`` sources (a
    method with a base may merge one source into it: how many a method takes is the planner's check)."""
    if value is None:
        if count > 1:
            raise RecipeError(field, "missing value (several sources need mean or {weights: [...]})")
        return None
    if isinstance(value, Mapping) and "method" in value:
        return _parse_method(value, field, count, check_source)
    if count < 2:
        raise RecipeError(field, "needs several sources in from")
    if isinstance(value, str):
        if value != "mean":
            raise RecipeError(field, f"must be mean or {{weights: [...]}} (got {value!r})")
        return value
    if not isinstance(value, Mapping):
        raise wrong_type(value, field, "a string or a mapping")
    if len(value) == 1 and next(iter(value)) in JOINS:  # {concat: DIM} | {stack: DIM}
        ((how, dim),) = value.items()
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise wrong_type(dim, f"{field}.{how}", "a dimension (an integer)")
        return {how: dim}
    reject_unknown(value, ("weights",) + tuple(sorted(JOINS)), field)
    return {"weights": _weights(value.get("weights"), f"{field}.weights", count, gradients=False)}


def _parse_method(value: Mapping, field: str, count: int, check_source) -> dict:
    name = value["method"]
    if not isinstance(name, str):
        raise wrong_type(name, f"{field}.method", "a string")
    method = METHODS.get(name)
    if method is None:
        known = list(METHODS)
        raise RecipeError(f"{field}.method", f"unknown merge method {name!r}"
                                             + (did_you_mean(name, known) or f" (known: {', '.join(known)})"))
    for key in value:
        if key not in method.fields:
            hint = did_you_mean(key, method.fields) or f" ({name} takes {', '.join(method.fields[1:])})"
            raise RecipeError(f"{field}.{key}", f"unknown field for {name}{hint}")
    spec: dict = {"method": name}
    if method.base:
        base = value.get("base")
        if base is not None:
            if not isinstance(base, str) or not base:
                raise wrong_type(base, f"{field}.base", "a source name")
            check_source(base, f"{field}.base")
        spec["base"] = base
    for param in method.params:
        spec[param.name] = _param(method, param, value.get(param.name), f"{field}.{param.name}")
    if method.weights:
        raw = value.get("weights")
        spec["weights"] = [1.0] * count if raw is None else _weights(raw, f"{field}.weights", count, gradients=True)
    return spec


def _param(method: Method, param, raw: object, field: str) -> object:
    if raw is None:
        if param.default is REQUIRED:
            raise RecipeError(field, f"missing value ({method.name} needs {param.name})")
        return param.default
    if param.kind == "bool":
        if not isinstance(raw, bool):
            raise wrong_type(raw, field, "true or false")
        return raw
    if param.kind == "int":
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise wrong_type(raw, field, "an integer")
        return raw
    return _number(raw, field, gradients=True)


def _weights(raw: object, field: str, count: int, *, gradients: bool) -> list:
    if raw is None:
        raise RecipeError(field, "missing value")
    if not is_list(raw):
        raise wrong_type(raw, field, "a list")
    weights = [_number(w, f"{field}[{i}]", gradients=gradients) for i, w in enumerate(raw)]
    if len(weights) != count:
        raise RecipeError(field, f"expected {count} weights, one per source (got {len(weights)})")
    return weights


def _number(raw: object, field: str, *, gradients: bool) -> float | dict:
    if gradients and isinstance(raw, Mapping):
        reject_unknown(raw, _GRADIENT_FIELDS, field)
        anchors = raw.get("gradient")
        if not is_list(anchors) or not anchors:
            raise RecipeError(f"{field}.gradient", f"expected a non-empty list of numbers, got {type_name(anchors)}")
        over = raw.get("over")
        if over is not None and (not isinstance(over, str) or not over.isidentifier()):
            raise RecipeError(f"{field}.over", f"expected a template variable name such as i (got {over!r})")
        return {"gradient": [_number(v, f"{field}.gradient[{i}]", gradients=False) for i, v in enumerate(anchors)],
                "over": over}
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise wrong_type(raw, field, "a number or {gradient: [...]}" if gradients else "a number")
    if not math.isfinite(raw):
        raise RecipeError(field, f"must be a finite number (got {raw!r})")
    return float(raw)
