"""Typed reads of plain config data that name the field on failure.

``expect_str(value, "rules[0].from")`` returns the string or raises a ``RecipeError``
saying what was expected at that path, so the recipe schema reads as a list of fields.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import Decimal

from torchgraft.core.errors import RecipeError
from torchgraft.core.text import did_you_mean

_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]i?b|b)?\s*", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def wrong_type(value: object, field: str, expected: str) -> RecipeError:
    return RecipeError(field, f"expected {expected}, got {type_name(value)}")


def is_list(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def reject_unknown(mapping: Mapping, known: Sequence[str], field: str | None) -> None:
    for key in mapping:
        if key not in known:
            path = f"{field}.{key}" if field else str(key)
            raise RecipeError(path, "unknown field" + did_you_mean(key, known))


def expect_mapping(value: object, field: str) -> Mapping:
    """null counts as an empty mapping."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise wrong_type(value, field, "a mapping")
    return value


def expect_str(value: object, field: str) -> str:
    if value is None or value == "":
        raise RecipeError(field, "missing value")
    if not isinstance(value, str):
        raise wrong_type(value, field, "a string")
    return value


def optional_str(value: object, field: str) -> str | None:
    return None if value is None else expect_str(value, field)


def choice(value: object, field: str, choices: tuple[str, ...]) -> str:
    """One of ``choices``; null means the default, ``choices[0]``."""
    if value is None:
        return choices[0]
    if not isinstance(value, str):
        raise wrong_type(value, field, "a string")
    if value not in choices:
        raise RecipeError(field, f"must be one of {', '.join(choices)} (got {value!r})")
    return value


def one_or_many(value: object, field: str) -> list[tuple[str, object]]:
    """A field that takes one item or a list of them -> [(field path, item)]; null -> []."""
    if value is None:
        return []
    if is_list(value):
        return [(f"{field}[{i}]", item) for i, item in enumerate(value)]
    return [(field, value)]


def strings(value: object, field: str) -> list[tuple[str, str]]:
    """A string or a list of strings -> [(field path, string)]; null -> []."""
    if value is not None and not isinstance(value, str) and not is_list(value):
        raise wrong_type(value, field, "a string or a list")
    return [(path, expect_str(item, path)) for path, item in one_or_many(value, field)]


def byte_size(value: object, field: str) -> int | None:
    """``5GB`` -> 5 * 1000**3, ``1.5GiB`` -> 1.5 * 1024**3; plain integers are bytes."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            raise RecipeError(field, f"expected a size such as 5GB or 500MiB (got {value!r})")
        size = int(Decimal(match[1]) * _SIZE_UNITS[(match[2] or "b").lower()])
    if size <= 0:
        raise RecipeError(field, f"must be positive (got {value!r})")
    return size
