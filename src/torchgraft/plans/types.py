"""The plan: every target tensor and where its values come from. The seam between
the planner (which never touches tensor data) and the executor (which never reads a
recipe). Plans are values; ``codec`` turns them into their JSON document and back,
and ``schema`` checks that document whenever a plan is written or read."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

from torchgraft.plans.forms import Forms


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
    merge: Any = None  # None | "mean" | {"weights": [...]} | {"method": ..., every parameter} (core/merge_methods.py)

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

    source: str | None  # a source that is a model directory; None: from ``folder``
    name: str  # file name in that directory
    size: int
    sha256: str
    folder: str | None = None  # an absolute directory that is not a source


@dataclass(frozen=True)
class ConfigFile:
    """A file written from the target's config (``output.config``): its bytes are made
    again at execution and must be these."""

    name: str  # config.json | generation_config.json
    size: int
    sha256: str


@dataclass(frozen=True)
class Layout:
    """The output beyond its tensors. The defaults (one file, nothing copied) are left
    out of the plan's JSON, so plans that do not use them keep their hash."""

    shard_size: int | None = None  # bytes of tensor data per shard of a directory output
    files: tuple[CopiedFile, ...] = ()
    config: tuple[ConfigFile, ...] = ()  # written from the target's config

    @property
    def names(self) -> tuple[str, ...]:
        """Every file besides the tensors that the output directory gets."""
        return tuple(f.name for f in self.files) + tuple(f.name for f in self.config)


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
    # (source, key) of unused tensors left out on purpose (a rule's exclude, types or kind;
    # the name of a tensor in keep): not warned about. Not in the plan file: the recipe it
    # records says as much.
    excluded: frozenset = field(default=frozenset(), compare=False, repr=False)

    def source(self, name: str) -> SourceRef:
        return next(s for s in self.sources if s.name == name)

    def to_dict(self) -> dict:
        """The plan's JSON document as plain data (``codec.to_document``)."""
        from torchgraft.plans import codec

        return codec.to_document(self)

    def to_json(self) -> str:
        """The plan file's text: canonical, byte-deterministic, schema-checked (``codec.dumps``)."""
        from torchgraft.plans import codec

        return codec.dumps(self)

    @functools.cached_property
    def sha256(self) -> str:
        """The plan's identity (``codec.sha256``), computed once: a plan is a value."""
        from torchgraft.plans import codec

        return codec.sha256(self)

    @functools.cached_property
    def entry_forms(self) -> Forms:
        """The entries' keys and forms (``entry_keys``, ``entry_form``), made once for the
        passes over them: text, JSON, hash, counts."""
        return Forms.of(self.entries, entry_parts)

    @functools.cached_property
    def unused_forms(self) -> Forms:
        """The unused tensors' keys and forms (all but the key)."""
        return Forms.of(self.unused, lambda u: ((u.key,), (u.source, u.shape, u.dtype)))


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
