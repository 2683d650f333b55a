"""The plan's one codec: ``Plan`` <-> its JSON document, the plan file's text, and the
plan's sha256 (of the compact document without its ``sha256`` field).

``to_document`` is the plain definition; ``dumps`` and ``sha256`` write the same bytes
form by form through a private fast path (``_json_fast``), because ``json.dumps`` of a
100k-entry plan takes 3.5 s indented and this takes a few tenths. The differential
tests (tests/plans/) are the contract: fast text == ``json.dumps`` of ``to_document``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from torchgraft.core.errors import PlanError
from torchgraft.plans import _json_fast
from torchgraft.plans.schema import SCHEMA_VERSION, validate, validate_by_form
from torchgraft.plans.types import (
    ConfigFile,
    CopiedFile,
    Entry,
    Layout,
    Piece,
    Plan,
    Read,
    Skipped,
    SourceRef,
    TargetRef,
    Unused,
    entry_keys,
)


def to_document(plan: Plan) -> dict:
    """The plan's JSON document as plain data, its ``sha256`` included."""
    return {**_body(plan), "sha256": plan.sha256}


def dumps(plan: Plan) -> str:
    """The plan file's text: indented JSON with one line per entry (a changed tensor is
    one changed line in a diff), sorted keys, checked against the schema."""
    members = {**_members(plan), "sha256": plan.sha256}
    text, samples = _json_fast.document(members, indent=1, end="\n")
    if not validate_by_form({**members, **samples}, plan.entry_forms.keys):
        validate(to_document(plan))  # the full check, which also words the error
    return text


def sha256(plan: Plan) -> str:
    """sha256 of the compact document without its ``sha256``: ``document_sha256(to_document(plan))``."""
    text, _ = _json_fast.document(_members(plan))
    return hashlib.sha256(text.encode()).hexdigest()


def document_sha256(data: dict) -> str:
    """The sha256 a plan document should carry: of everything in it but its ``sha256``
    field. A stored hash that differs means the file was edited after it was written."""
    body = {k: v for k, v in data.items() if k != "sha256"}
    return hashlib.sha256(_json_fast.dumps(body).encode()).hexdigest()


def _members(plan: Plan) -> dict:
    """The plan's document without its sha256, its entries and unused tensors as
    ``Similar`` lists (dumped form by form)."""
    return {
        **_head(plan),
        "entries": _json_fast.Similar(plan.entries, plan.entry_forms, entry_document),
        "unused": _json_fast.Similar(plan.unused, plan.unused_forms, lambda u, keys: _unused_dict(u, keys[0])),
    }


def _body(plan: Plan) -> dict:
    return {
        **_head(plan),
        "entries": [entry_document(e) for e in plan.entries],
        "unused": [_unused_dict(u) for u in plan.unused],
    }


def _unused_dict(unused: Unused, key: str | None = None) -> dict:
    return {"source": unused.source, "key": unused.key if key is None else key, "shape": list(unused.shape),
            "dtype": unused.dtype}


def _head(plan: Plan) -> dict:
    """Everything of the plan's document but its sha256, entries and unused tensors."""
    target = {
        "spec": plan.target.spec,
        "seed": plan.target.seed,
        "inventory_sha256": plan.target.inventory_sha256,
        "base": plan.target.base,
    }
    if plan.target.init != "full":  # left out at its default: older plans keep their hash
        target["init"] = plan.target.init
    body = {
        "format": "torchgraft.plan",
        "schema_version": SCHEMA_VERSION,
        "torchgraft_version": plan.version,
        "recipe": plan.recipe,
        "target": target,
        "sources": [
            {"name": s.name, "path": s.path, "format": s.format, "key": s.key, "fingerprint": s.fingerprint}
            for s in plan.sources
        ],
        "skipped": [{"key": s.key, "rule": s.rule, "reason": s.reason} for s in plan.skipped],
    }
    if plan.layout != Layout():
        body["output"] = {
            "shard_size": plan.layout.shard_size,
            "files": [{**({"folder": f.folder} if f.folder is not None else {"source": f.source}),
                       "name": f.name, "size": f.size, "sha256": f.sha256} for f in plan.layout.files],
        }
        if plan.layout.config:  # left out when empty: plans without it keep their hash
            body["output"]["config"] = [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in plan.layout.config]
    return body


def entry_document(entry: Entry, keys: Sequence[str] | None = None) -> dict:
    """The entry's object in the document; ``keys`` in place of ``entry_keys(entry)``."""
    keys = iter(keys if keys is not None else entry_keys(entry))
    return {
        "key": next(keys),
        "shape": list(entry.shape),
        "dtype": entry.dtype,
        "kind": entry.kind,
        "pieces": [
            {
                "reads": [
                    {"source": r.source, "key": next(keys), "shape": list(r.shape), "dtype": r.dtype, "region": r.region}
                    for r in p.reads
                ],
                "rule": p.rule,
                "region": p.region,
                "transforms": list(p.transforms),
                "merge": p.merge,
            }
            for p in entry.pieces
        ],
        "uncovered": list(entry.uncovered),
    }


def from_dict(data: dict) -> Plan:
    """Rebuild a plan from its JSON document (schema-checked first)."""
    validate(data)
    return from_document(data)


def from_document(data: dict) -> Plan:
    """``from_dict`` of a document already schema-checked (``plan_files.read_document``):
    a 100k-entry plan is not checked twice."""
    target = data["target"]
    output = data.get("output") or {}
    return Plan(
        entries=tuple(
            Entry(
                key=e["key"],
                shape=tuple(e["shape"]),
                dtype=e["dtype"],
                kind=e["kind"],
                uncovered=tuple(e["uncovered"]),
                pieces=tuple(
                    Piece(
                        reads=tuple(
                            Read(r["source"], r["key"], tuple(r["shape"]), r["dtype"], r["region"]) for r in p["reads"]
                        ),
                        rule=p["rule"],
                        region=p["region"],
                        transforms=tuple(p["transforms"]),
                        merge=p["merge"],
                    )
                    for p in e["pieces"]
                ),
            )
            for e in data["entries"]
        ),
        unused=tuple(Unused(u["source"], u["key"], tuple(u["shape"]), u["dtype"]) for u in data["unused"]),
        skipped=tuple(Skipped(s["key"], s["rule"], s["reason"]) for s in data["skipped"]),
        sources=tuple(SourceRef(s["name"], s["path"], s["format"], s["key"], s["fingerprint"]) for s in data["sources"]),
        target=TargetRef(target["spec"], target["seed"], target["inventory_sha256"], target["base"],
                         target.get("init", "full")),
        recipe=data["recipe"],
        version=data["torchgraft_version"],
        layout=Layout(output.get("shard_size"),
                      tuple(CopiedFile(f.get("source"), f["name"], f["size"], f["sha256"], f.get("folder"))
                            for f in output.get("files", [])),
                      tuple(ConfigFile(f["name"], f["size"], f["sha256"]) for f in output.get("config", []))),
    )


def from_json(text: str) -> Plan:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PlanError("plan", f"not valid JSON: {err}") from None
    return from_dict(data)
