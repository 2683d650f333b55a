"""Typed reads of plain config data that name the field on failure.

``expect_str(value, "rules[0].from")`` returns the string or raises a ``RecipeError``
saying what was expected at that path, so the recipe schema reads as a list of fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torchgraft.core.errors import RecipeError
from torchgraft.core.text import did_you_mean


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
