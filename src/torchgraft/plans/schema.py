"""The plan's JSON Schema (shipped beside this module) and the check of a document
against it."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from importlib import resources

from torchgraft.core.errors import PlanError

SCHEMA_VERSION = 1


@functools.cache
def schema() -> dict:
    return json.loads(resources.files("torchgraft.plans").joinpath("plan.schema.json").read_text())


# Checking form by form: the schema constrains entry and read keys no further than
# being non-empty strings (tests/plans/ assert it of plan.schema.json), so entries that
# differ only in their keys are equally valid, and a 100k-entry plan has about a hundred
# forms: 0.8 s instead of 20 s to check.


def _validator():
    import jsonschema  # only where plans are written or read: executing one needs no schema

    return jsonschema.Draft202012Validator(schema())


def validate(data: dict) -> None:
    """Check a plan document against the shipped JSON Schema; PlanError names where it fails."""
    import jsonschema

    validator = _validator()
    if _valid_by_form(data, validator):
        return
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise PlanError("plan", f"does not conform to the plan schema at {where}: {error.message}")


def validate_by_form(sampled: dict, keys: Sequence[Sequence[str]]) -> bool:
    """True if a document being written is valid, judged from ``sampled``: the document
    with one entry per form in place of its entries, and ``keys``, every entry's keys.
    False means "not shown valid": the caller runs the full ``validate``."""
    return all(map(all, keys)) and _validator().is_valid(sampled)


def _valid_by_form(data: object, validator) -> bool:
    """True if a document read from a file is valid, checking each form of entry once.
    False means "not shown valid": the caller runs the full check, which words the error."""
    defs = schema()["$defs"]
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return False
    if not validator.is_valid({**data, "entries": []}):
        return False
    one = type(validator)({"$defs": defs, "$ref": "#/$defs/entry"})
    seen = set()
    for entry in entries:
        try:
            form = repr(_form(entry))  # key order counts too: at worst, more forms to check
        except (TypeError, ValueError, AttributeError, KeyError):
            return False
        if form not in seen:
            if not one.is_valid(entry):
                return False
            seen.add(form)
    return True


def _form(entry: dict) -> dict:
    """The entry with its key and its reads' keys replaced by one placeholder."""
    form = {**entry, "key": "k" if isinstance(entry["key"], str) and entry["key"] else entry["key"]}
    form["pieces"] = [
        {**p, "reads": [{**r, "key": "" if isinstance(r["key"], str) else r["key"]} for r in p["reads"]]}
        for p in entry["pieces"]
    ]
    return form
