"""What review compares: a committed plan against a fresh one (``check``, the CI gate),
and a plan's target against the class as it is now (``apply`` and ``check``).

A reviewed plan is trusted only while the world it was made in holds: the plan file
is unedited (its sha256), every source has its pinned fingerprint, and the target
class still builds the tensors the plan was made for. Any difference is a
``DriftError`` naming what changed, raised before anything is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from torchgraft.core.errors import DriftError
from torchgraft.core.target import target_inventory
from torchgraft.core.tensors import TensorInfo
from torchgraft.core.text import shape_text
from torchgraft.plans import fingerprints
from torchgraft.plans.diff import diff_plans
from torchgraft.plans.files import replan_command
from torchgraft.plans.text import group_keys
from torchgraft.plans.types import Entry, Plan, SourceRef

_SHOWN = 6  # changes named in a one-line drift message before "... (N more)"


def pins_content(plan: Plan) -> bool:
    return any(fingerprints.pins_content(s.fingerprint) for s in plan.sources)


# -- the target -----------------------------------------------------------------------


def check_target(plan: Plan) -> None:
    """Refuse a plan whose target class no longer builds the tensors it was made for."""
    spec = plan.target.spec
    if spec is None:
        return  # no model class: the sources (pinned) define the output
    infos = target_inventory(spec)
    if fingerprints.inventory_sha256(infos) == plan.target.inventory_sha256:
        return
    raise DriftError("target", f"{spec['_target_']} changed since the plan was made (its tensors differ: {_inventory_changes(plan.entries, infos)})")


def _inventory_changes(entries: tuple[Entry, ...], infos: list[TensorInfo]) -> str:
    planned = {e.key: e for e in entries}
    now = {t.key: t for t in infos}
    parts = []
    added = [k for k in now if k not in planned]
    removed = [k for k in planned if k not in now]
    if added:
        parts.append("new " + ", ".join(group_keys(added)))
    if removed:
        parts.append("gone " + ", ".join(group_keys(removed)))
    parts += [
        f"{k} {shape_text(planned[k].shape)} -> {shape_text(now[k].shape)}"
        for k in now
        if k in planned and tuple(planned[k].shape) != tuple(now[k].shape)
    ]
    if not parts:
        return "same names and shapes; their dtypes, kinds or order changed"
    shown = parts[:_SHOWN]
    return "; ".join(shown) + (f"; ... ({len(parts) - _SHOWN} more)" if len(parts) > _SHOWN else "")


# -- check ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    same: bool
    text: str  # the one-line OK, or the diff


def compare(path: str, recipe: str, committed: Plan, fresh: Plan) -> CheckResult:
    """The committed plan at ``path`` against a fresh one of ``recipe``. A source whose
    size and header are as pinned but whose mtime is not (a fresh clone or checkout sets
    every mtime) does not fail the check: it is named in a note. ``apply`` stays strict."""
    touched = [s.name for s, c in zip(fresh.sources, committed.sources) if _only_mtime_differs(c, s)]
    if touched:
        pinned = {s.name: s.fingerprint["mtime_ns"] for s in committed.sources}
        fresh = replace(fresh, sources=tuple(
            replace(s, fingerprint={**s.fingerprint, "mtime_ns": pinned[s.name]}) if s.name in touched else s for s in fresh.sources))
    result = diff_plans(committed, fresh)
    if result.same:
        note = "".join(f"note: sources.{name}: only its modification time differs from the plan's (size and header as pinned); "
                       "check does not compare it, apply does\n" for name in touched)
        return CheckResult(True, f"OK: {path} is up to date (plan {committed.sha256[:12]})\n{note}")
    return CheckResult(False, result.text(path, f"recipe={recipe} now", committed, fresh))


def _only_mtime_differs(pinned: SourceRef, now: SourceRef) -> bool:
    a, b = pinned.fingerprint, now.fingerprint
    return (pinned.name == now.name and pinned.path == now.path and fingerprints.differences(a, b) == ["mtime_ns"])


def out_of_date(path: str, recipe: str, overrides: Sequence[str] = ()) -> DriftError:
    return DriftError(
        "check", f"{path} is out of date (differences above); if they are intended, re-plan and commit: "
                 f"{replan_command(path, recipe, overrides)}"
    )
