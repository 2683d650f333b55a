"""A plan's sources, opened for execution: each refused if it is no longer the file
the plan was made from (its pinned fingerprint), when it is opened and again once
everything is read, before the output is published.

A reader holds its files open, so a file renamed over a source's path after it was
opened is never read; the check afterwards refuses it all the same (the path no longer
names what was read), and refuses a file rewritten in place while it was read, by the
same fingerprint as before (size, mtime and header; every byte with
``verify_sources=hash``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from torchgraft.checkpoints import Reader, open_checkpoint
from torchgraft.core.errors import DriftError
from torchgraft.plans import fingerprints
from torchgraft.plans.types import Plan


def open_plan_sources(plan: Plan) -> dict[str, Reader]:
    """Open the plan's sources and refuse any whose fingerprint changed since planning."""
    readers: dict[str, Reader] = {}
    try:
        for ref in plan.sources:
            reader = open_checkpoint(ref.path, format=ref.format, key=ref.key, field=f"sources.{ref.name}")
            readers[ref.name] = reader
            changed = fingerprints.changed(ref.fingerprint, reader)  # hashes every byte if the plan pins content
            if changed:
                raise DriftError(f"sources.{ref.name}", f"{ref.path} changed since the plan was made ({', '.join(changed)} differ)")
        return readers
    except BaseException:
        for reader in readers.values():
            reader.close()
        raise


def check_sources_unchanged(plan: Plan, readers: Mapping[str, Reader]) -> None:
    """After every read, before publishing: each source still the file the plan pinned,
    still at its path. Re-hashes every byte when the plan pins contents."""
    for ref in plan.sources:
        reader = readers[ref.name]
        replaced = reader.replaced()
        if replaced:
            raise DriftError(f"sources.{ref.name}", f"{replaced[0]} was replaced while torchgraft ran "
                                                    "(its path names another file now)")
        changed = fingerprints.changed(ref.fingerprint, reader)
        if changed:
            raise DriftError(f"sources.{ref.name}", f"{ref.path} changed while torchgraft ran ({', '.join(changed)} differ)")


def pin_contents(plan: Plan) -> Plan:
    """``verify_sources=hash``: the plan with each source's content sha256 in its fingerprint.
    Reads every byte of every source; refuses a source that changed since planning."""
    readers = open_plan_sources(plan)
    try:
        sources = tuple(replace(s, fingerprint={**s.fingerprint, "content_sha256": readers[s.name].content_sha256()}) for s in plan.sources)
    finally:
        for reader in readers.values():
            reader.close()
    return replace(plan, sources=sources)
