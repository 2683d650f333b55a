"""The review workflow around a plan file: pin source contents, ``apply`` a reviewed
plan exactly, and ``check`` a committed plan against a fresh one (the CI gate).

A reviewed plan is trusted only while the world it was made in holds: the plan file
is unedited (its sha256), every source has its pinned fingerprint, and the target
class still builds the tensors the plan was made for. Any difference is a
``DriftError`` naming what changed, raised before anything is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from torchgraft.plans import fingerprints
from torchgraft.plans.diff import diff_plans
from torchgraft.core.errors import DriftError, RecipeError
from torchgraft.execution.executor import check_output, execute, open_plan_sources
from torchgraft.plans.types import Entry, Plan
from torchgraft.plans.files import read_plan, replan_command
from torchgraft.planning.planner import _inventory_sha256  # the one definition of the target's inventory hash
from torchgraft.plans.text import group_keys, shape_text
from torchgraft.core.target import target_inventory
from torchgraft.core.tensors import TensorInfo

_SHOWN = 6  # changes named in a one-line drift message before "... (N more)"


def verify_mode(value: object) -> str:
    """``verify_sources``: fast (size, mtime, header hash) or hash (every byte)."""
    if value is None:
        return "fast"
    if value not in fingerprints.MODES:
        raise RecipeError("verify_sources", f"must be one of {', '.join(fingerprints.MODES)} (got {value!r})")
    return str(value)


def pins_content(plan: Plan) -> bool:
    return any(fingerprints.pins_content(s.fingerprint) for s in plan.sources)


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


# -- the target -----------------------------------------------------------------------


def check_target(plan: Plan) -> None:
    """Refuse a plan whose target class no longer builds the tensors it was made for."""
    spec = plan.target.spec
    if spec is None:
        return  # no model class: the sources (pinned) define the output
    infos = target_inventory(spec)
    if _inventory_sha256(infos) == plan.target.inventory_sha256:
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


# -- apply ----------------------------------------------------------------------------


_APPLY_FIELDS = ("apply", "dry_run", "debug", "output.path", "output.overwrite")


def refuse_overrides(overrides: list[str], check: bool) -> None:
    """``apply`` takes everything from the plan: an override that would change the transfer
    (a recipe, a field) is refused rather than silently ignored."""
    if check:
        raise RecipeError("check", "cannot be combined with apply (check compares a recipe with a plan; apply runs a plan)")
    ignored = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in _APPLY_FIELDS and not o.lstrip("+~").startswith("hydra.")]
    if ignored:
        raise RecipeError(
            "apply",
            f"a reviewed plan runs as it is; {' '.join(ignored)} would not change it "
            "(only output.path, output.overwrite and dry_run apply; to change the transfer, make and review a new plan)",
        )


def apply(path: str, output: Path, *, overwrite: bool = False, dry_run: bool = False) -> Plan:
    """Execute the reviewed plan at ``path`` exactly, after checking that it is unedited
    and that its sources and target are unchanged. ``dry_run``: check only."""
    plan = read_plan(path, "apply")
    if not dry_run:
        check_output(output, overwrite)
    check_target(plan)
    if dry_run:
        for reader in open_plan_sources(plan).values():
            reader.close()
        return plan
    execute(plan, output, overwrite=overwrite)  # checks the sources' fingerprints before writing
    return plan


# -- check ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    same: bool
    text: str  # the one-line OK, or the diff


def check(path: str, recipe: str, make: Callable[[], Plan], verify: str) -> CheckResult:
    """Re-plan with ``make`` and compare with the committed plan at ``path``. Sources are
    hashed when either side asks for it (``verify_sources=hash`` or a committed plan
    that pins contents), so the two are compared on equal terms."""
    committed = read_plan(path, "check")
    fresh = make()
    if verify == "hash" or pins_content(committed):
        fresh = pin_contents(fresh)
    result = diff_plans(committed, fresh)
    if result.same:
        return CheckResult(True, f"OK: {path} is up to date (plan {committed.sha256[:12]})\n")
    return CheckResult(False, result.text(path, f"recipe={recipe} now", committed, fresh))


def out_of_date(path: str, recipe: str) -> DriftError:
    return DriftError(
        "check", f"{path} is out of date (differences above); if they are intended, re-plan and commit: {replan_command(path, recipe)}"
    )
