"""Plan files on disk: ``NAME.plan.json`` (for machines, carries its own sha256),
``.plan.txt`` (the review text) and ``.plan.md`` (for a pull-request comment).

Reading a plan for ``apply`` or ``check`` refuses a file whose stored sha256 is not the
hash of its contents: a plan runs only as it was reviewed, and a hand edit has to go
through the planner again (a dry run) to become a plan.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from torchgraft.core.errors import DriftError, PlanError
from torchgraft.plans.codec import document_sha256, from_document
from torchgraft.plans.markdown import render_markdown
from torchgraft.plans.schema import validate
from torchgraft.plans.text import render
from torchgraft.plans.types import Plan

SUFFIX = ".plan.json"


def write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a plan file is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_plan(plan: Plan, stem: Path, text: str | None = None, *, also: Sequence[Path] = ()) -> Path:
    """Write ``STEM.json``, ``STEM.txt`` and ``STEM.md`` (and the same under each stem of
    ``also``, made once); returns the last JSON path."""
    files = {".json": plan.to_json(), ".txt": text if text is not None else render(plan), ".md": render_markdown(plan)}
    for where in (stem, *also):
        for suffix, content in files.items():
            write_text(where.with_name(where.name + suffix), content)
    return where.with_name(where.name + ".json")


def refuse_sweep_overwrite(stem: Path, sweep_dir: Path) -> None:
    """In a sweep, ``plan_dir`` names plans after their recipe: two jobs of one recipe
    (``output.dtype=float16,bfloat16``) would write the same file, and the last would
    silently replace the other's plan. A plan file newer than the sweep's
    ``multirun.yaml`` (which Hydra's sweeper writes once, before the first job) was
    written by an earlier job of this sweep: refuse, before planning anything."""
    path = stem.with_name(stem.name + ".json")
    try:
        written, started = path.stat().st_mtime_ns, (sweep_dir / "multirun.yaml").stat().st_mtime_ns
    except FileNotFoundError:  # no such plan yet, or a sweeper that writes no multirun.yaml
        return
    if written >= started:
        raise PlanError("plan_dir", f"{path} was written by another job of this sweep; jobs that share a recipe "
                                    "need a plan_dir each, e.g. plan_dir='plans/${hydra:job.num}'")


def recipe_name(path: str) -> str | None:
    """``plans/finetune_head.plan.json`` -> ``finetune_head`` (the name ``plan_dir`` gives it)."""
    name = Path(path).name
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) and len(name) > len(SUFFIX) else None


def job_name(recipe: str | None, apply: str | None) -> str:
    """Run directories are named after the recipe, or ``apply_NAME`` for ``apply=.../NAME.plan.json``."""
    if not apply:
        return str(recipe)
    name = recipe_name(str(apply))
    return f"apply_{name}" if name else "apply"


def register_resolver() -> None:
    """``${job_name:RECIPE,APPLY}`` for hydra.run.dir and hydra.sweep.subdir (idempotent)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("job_name"):
        OmegaConf.register_new_resolver("job_name", job_name)


def replan_command(path: str, recipe: str | None = None, overrides: Sequence[str] = ()) -> str:
    """The dry run that rewrites the plan file at ``path`` (when it is named as ``plan_dir``
    names plans), with the run's other ``overrides`` so that it plans the same recipe."""
    named = recipe_name(path)
    extra = "".join(f" {shlex.quote(o)}" for o in overrides)
    if named is None or (recipe is not None and recipe != named):
        return f"graft recipe={recipe or 'NAME'} dry_run=true{extra}"
    return f"graft recipe={named} dry_run=true plan_dir={Path(path).parent}{extra}"


def read_document(path: str, field: str) -> dict:
    """A plan file's JSON document, checked against the plan schema."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError(field, f"{path}: no such plan file") from None
    except OSError as err:
        raise PlanError(field, f"{path}: cannot read it ({err.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PlanError(field, f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise PlanError(field, f"{path}: not a torchgraft plan (expected a JSON object)")
    try:
        validate(data)
    except PlanError as err:
        raise PlanError(field, f"{path}: {err.message}") from None
    return data


def hash_matches(data: dict) -> bool:
    return data.get("sha256") == document_sha256(data)


def read_plan(path: str, field: str) -> Plan:
    """A plan file as written by a dry run: schema-valid and unedited, else PlanError/DriftError."""
    data = read_document(path, field)
    if not hash_matches(data):
        what = "carries no sha256" if "sha256" not in data else "does not match its sha256"
        raise DriftError(
            field,
            f"{path}: the plan {what} (was it edited by hand?); a plan runs only as it was written. "
            f"Re-validate the recipe with: {replan_command(path)}",
        )
    return from_document(data)  # checked by read_document
