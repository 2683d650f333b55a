"""The schema check by form rests on one fact about plan.schema.json: entry and read keys
are strings it constrains no further than being non-empty. If the schema ever says
more of them, checking one entry per form would no longer speak for all entries."""

from __future__ import annotations

import pytest

from torchgraft.core.errors import PlanError
from torchgraft.plans.schema import schema, validate, validate_by_form

FREE_STRINGS = ({"type": "string"}, {"type": "string", "minLength": 1})


def test_entry_and_read_keys_are_free_strings_in_the_schema():
    defs = schema()["$defs"]
    assert defs["entry"]["properties"]["key"] in FREE_STRINGS
    assert defs["piece"]["properties"]["reads"]["items"]["properties"]["key"] in FREE_STRINGS


def _document(keys):
    entries = [{"key": k, "shape": [2], "dtype": "float32", "kind": "parameter", "uncovered": [],
                "pieces": [{"reads": [{"source": "s", "key": k, "shape": [2], "dtype": "float32", "region": None}],
                            "rule": "rules[0]", "region": None, "transforms": [], "merge": None}]} for k in keys]
    return {"format": "torchgraft.plan", "schema_version": 1, "torchgraft_version": "0", "recipe": {},
            "target": {"spec": None, "seed": 0, "inventory_sha256": "0" * 64, "base": None},
            "sources": [{"name": "s", "path": "s.safetensors", "format": "safetensors", "key": None,
                         "fingerprint": {"size": 1, "mtime_ns": 1, "header_sha256": "0" * 64}}],
            "skipped": [], "entries": entries, "unused": [], "sha256": "0" * 64}


def test_a_document_valid_by_form_is_valid_in_full_and_an_empty_key_is_not_shown_valid():
    document = _document(["a.weight", "b.weight", "c.weight"])
    validate(document)  # the full check passes
    assert validate_by_form({**document, "entries": document["entries"][:1]}, [("a.weight",), ("b.weight",), ("c.weight",)])
    assert not validate_by_form({**document, "entries": document["entries"][:1]}, [("a.weight",), ("",)])
    with pytest.raises(PlanError, match="entries/1/key"):
        validate(_document(["a.weight", ""]))
