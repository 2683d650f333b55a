"""The plan: every target tensor and where its values come from. The seam between
the planner (which never touches tensor data) and the executor (which never reads a
recipe). Plans are frozen values, serialized as canonical JSON and checked against
the JSON Schema shipped beside this module whenever they are written or read."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from torchgraft.core.errors import PlanError
from torchgraft.core.heap import paused_gc
from torchgraft.plans import _json_forms as json_forms

SCHEMA_VERSION = 1


# The per-tensor types below (and tensors.TensorInfo) are values: nothing changes one
# once it is made. They are not ``frozen`` only because a frozen dataclass is slow to
# build (0.6 µs against 0.17 µs): a 100k-tensor plan makes half a million of them, and
# the difference was 0.35 s of a 2.8 s dry run. Hashes and equality are by value.
@dataclass(slots=True, unsafe_hash=True)
class Read:
    """One source tensor (or a region of it) that a piece reads."""

    source: str
    key: str
    shape: tuple[int, ...]  # of the source tensor
    dtype: str
    region: str | None = None  # e.g. "[:, :10]"; None = whole tensor


@dataclass(slots=True, unsafe_hash=True)
class Piece:
    """Values for a target tensor, or for one region of it."""

    reads: tuple[Read, ...]  # several only when merged
    rule: str  # "rules[0]"
    region: str | None = None  # destination region; None = the whole tensor
    transforms: tuple[Any, ...] = ()  # canonical transform specs, applied in order
    merge: Any = None  # None | "mean" | {"weights": [...]}

    @property
    def reads_initial(self) -> bool:
        """A transform fills part of the values from the destination's initial value
        (``pad_rows`` with ``fill: init``), so execution needs the initial tensor."""
        return any(isinstance(t, dict) and isinstance(t.get("pad_rows"), dict) and t["pad_rows"].get("fill") == "init"
                   for t in self.transforms)


@dataclass(slots=True, unsafe_hash=True)
class Entry:
    """One tensor of the output, in the target's own order."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    pieces: tuple[Piece, ...] = ()  # empty: the tensor keeps its initial value
    uncovered: tuple[str, ...] = ()  # regions left at their initial value, when pieces are partial
    kind: str | None = None  # "parameter" | "buffer" (target tensors)

    @property
    def kept(self) -> bool:
        return not self.pieces

    @property
    def needs_initial(self) -> bool:
        """Kept wholly, only partly covered by regions, or padded from its initial rows."""
        return not self.pieces or bool(self.uncovered) or any(p.reads_initial for p in self.pieces)


@dataclass(slots=True, unsafe_hash=True)
class Unused:
    """A source tensor that no rule reads."""

    source: str
    key: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Skipped:
    """A tensor a rule would have assigned but skipped under ``policy.mismatch: skip``."""

    key: str
    rule: str
    reason: str


@dataclass(frozen=True)
class SourceRef:
    name: str
    path: str
    format: str
    key: str | None
    fingerprint: dict = field(hash=False)


@dataclass(frozen=True)
class TargetRef:
    """How to rebuild the target: its class and arguments, seed, and a hash of its inventory."""

    spec: dict | None = field(hash=False)  # {"_target_": ..., **kwargs}; None without a model class
    seed: int
    inventory_sha256: str
    base: str | None = None  # source whose tensors are the initial values
    init: str = "full"  # full | per_module: how initial values are made without a base


@dataclass(frozen=True)
class CopiedFile:
    """A non-tensor file (config.json, tokenizer...) copied into a directory output."""

    source: str  # a source that is a model directory
    name: str  # file name in that directory
    size: int
    sha256: str


@dataclass(frozen=True)
class Layout:
    """The output beyond its tensors. The defaults (one file, nothing copied) are left
    out of the plan's JSON, so plans that do not use them keep their hash."""

    shard_size: int | None = None  # bytes of tensor data per shard of a directory output
    files: tuple[CopiedFile, ...] = ()


@dataclass(frozen=True)
class Plan:
    entries: tuple[Entry, ...]
    unused: tuple[Unused, ...]
    skipped: tuple[Skipped, ...]
    sources: tuple[SourceRef, ...]
    target: TargetRef
    recipe: dict = field(hash=False)  # the resolved recipe the plan was made from
    version: str = ""
    layout: Layout = Layout()

    def source(self, name: str) -> SourceRef:
        return next(s for s in self.sources if s.name == name)

    def to_dict(self) -> dict:
        return {**_body(self), "sha256": self.sha256}

    def to_json(self) -> str:
        """Canonical, byte-deterministic JSON (sorted keys, fixed separators)."""
        with paused_gc():  # a 100k-entry document is millions of objects, none cyclic garbage
            members = {**_members(self), "sha256": self.sha256}
            text, samples = json_forms.document(members, indent=1, end="\n")
            if _keys_unconstrained() and all(map(all, self.entry_forms.keys)):
                validate({**members, **samples})  # one entry per form: as valid as all (see _valid_by_form)
            else:
                validate(self.to_dict())  # the full check, which also words the error
            return text

    @functools.cached_property
    def sha256(self) -> str:
        """Computed once: a plan is frozen. The same bytes as ``_digest(_body(self))``,
        made form by form (json_forms.py)."""
        with paused_gc():
            text, _ = json_forms.document(_members(self))
            return hashlib.sha256(text.encode()).hexdigest()

    @functools.cached_property
    def entry_forms(self) -> json_forms.Forms:
        """The entries' keys and forms (``entry_keys``, ``entry_form``), made once for the
        passes over them: text, JSON, hash, counts."""
        with paused_gc():
            return json_forms.Forms.of(self.entries, entry_parts)

    @functools.cached_property
    def unused_forms(self) -> json_forms.Forms:
        """The unused tensors' keys and forms (all but the key)."""
        with paused_gc():
            return json_forms.Forms.of(self.unused, lambda u: ((u.key,), (u.source, u.shape, u.dtype)))


def entry_keys(entry: Entry) -> tuple[str, ...]:
    """An entry's own key, then its reads' keys in order."""
    return (entry.key, *(r.key for p in entry.pieces for r in p.reads))


def entry_form(entry: Entry) -> tuple:
    """Everything of an entry except its keys: equal for two entries only when their
    documents differ in nothing but their keys (shapes are ints: 2.0 would pass for 2)."""
    return entry_parts(entry)[1]


def entry_parts(entry: Entry) -> tuple[tuple[str, ...], tuple]:
    """``(entry_keys(entry), entry_form(entry))``, in one walk over the entry's reads."""
    keys = [entry.key]
    pieces = []
    for p in entry.pieces:
        reads = []
        for r in p.reads:
            keys.append(r.key)
            reads.append((r.source, r.shape, r.dtype, r.region))
        transforms = json.dumps(list(p.transforms), sort_keys=True) if p.transforms else ""
        merge = json.dumps(p.merge, sort_keys=True) if p.merge is not None else ""
        pieces.append((p.rule, p.region, transforms, merge, tuple(reads)))
    return tuple(keys), (entry.shape, entry.dtype, entry.kind, entry.uncovered, tuple(pieces))


def _members(plan: Plan) -> dict:
    """The plan's document without its sha256, its entries and unused tensors as
    ``Similar`` lists (dumped form by form)."""
    return {
        **_head(plan),
        "entries": json_forms.Similar(plan.entries, plan.entry_forms, _entry_dict),
        "unused": json_forms.Similar(plan.unused, plan.unused_forms, lambda u, keys: _unused_dict(u, keys[0])),
    }


def _body(plan: Plan) -> dict:
    return {
        **_head(plan),
        "entries": [_entry_dict(e) for e in plan.entries],
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
            "files": [{"source": f.source, "name": f.name, "size": f.size, "sha256": f.sha256}
                      for f in plan.layout.files],
        }
    return body


def _entry_dict(entry: Entry, keys: Sequence[str] | None = None) -> dict:
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


def _digest(body: dict) -> str:
    return hashlib.sha256(json_forms.dumps(body).encode()).hexdigest()


def document_sha256(data: dict) -> str:
    """The sha256 a plan document should carry: of everything in it but its ``sha256``
    field. A stored hash that differs means the file was edited after it was written."""
    return _digest({k: v for k, v in data.items() if k != "sha256"})


@functools.cache
def schema() -> dict:
    return json.loads(resources.files("torchgraft.plans").joinpath("plan.schema.json").read_text())


def validate(data: dict) -> None:
    """Check a plan document against the shipped JSON Schema."""
    import jsonschema  # only where plans are written or read: executing one needs no schema

    validator = jsonschema.Draft202012Validator(schema())
    if _valid_by_form(data, validator):
        return
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise PlanError("plan", f"does not conform to the plan schema at {where}: {error.message}")


_FREE_STRINGS = ({"type": "string"}, {"type": "string", "minLength": 1})


def _keys_unconstrained() -> bool:
    """The schema asks no more of entry and read keys than to be non-empty strings."""
    defs = schema()["$defs"]
    return (defs["entry"]["properties"]["key"] in _FREE_STRINGS
            and defs["piece"]["properties"]["reads"]["items"]["properties"]["key"] in _FREE_STRINGS)


def _valid_by_form(data: object, validator) -> bool:
    """True if the document is valid, checking each distinct *form* of entry once.

    Entries that differ only in their keys -- strings the schema constrains no further
    than being non-empty -- are equally valid, and a 100k-entry plan has about a
    hundred forms: 0.8 s instead of 20 s. False means "not shown valid": the caller
    runs the full check, which also words the error.
    """
    defs = schema()["$defs"]
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not _keys_unconstrained():
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
                      tuple(CopiedFile(f["source"], f["name"], f["size"], f["sha256"]) for f in output.get("files", []))),
    )


def from_json(text: str) -> Plan:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PlanError("plan", f"not valid JSON: {err}") from None
    return from_dict(data)
