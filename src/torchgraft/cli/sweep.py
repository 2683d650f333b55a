"""One table over every job of a sweep (``graft -m ...``): what each job did, or why
it failed.

Hydra calls ``on_multirun_end`` only when every job succeeded, so the table cannot
wait for the end: each job writes ``status.json`` in its own run directory (ok or
failed, from the job wrapper in cli/graft.py), and after each job the ``SweepSummary``
callback rewrites ``summary.txt`` and ``summary.json`` in the sweep directory from
all status files present. After the last job, they list every job.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from torchgraft.cli.exits import one_line
from torchgraft.core.errors import RecipeError
from torchgraft.core.text import human_bytes
from torchgraft.execution.outputs import output_bytes
from torchgraft.plans.types import Plan

STATUS = "status.json"
SUMMARY = "summary"  # summary.txt and summary.json, in the sweep directory


@dataclass(frozen=True)
class Outcome:
    """What one job did."""

    mode: str  # run | dry_run | apply | check
    assigned: int | None = None
    kept: int | None = None
    unused: int | None = None
    bytes_written: int | None = None
    output: str | None = None

    @staticmethod
    def of(plan: Plan, mode: str, output: Path | None = None) -> Outcome:
        kept = sum(1 for e in plan.entries if e.kept)
        written = _size(output) if output is not None else None
        return Outcome(mode, len(plan.entries) - kept, kept, len(plan.unused), written, str(output) if output is not None else None)


def _size(path: Path) -> int | None:
    return output_bytes(path) if path.exists() else None


def as_typed(override: str, argv: list[str]) -> str:
    """A job's override as the user typed it in ``argv``: Hydra hands it over rewritten
    (``dry_run=True``, ``$``, ``{``, ``:`` escaped). One value of a sweep list, unescaped."""
    key = override.split("=", 1)[0]
    for typed in _sweep_overrides(argv):
        if typed.input_line and typed.input_line.split("=", 1)[0] == key and not typed.is_sweep_override():
            return typed.input_line
    return re.sub(r"\\(.)", r"\1", override)


def _sweep_overrides(argv: list[str]) -> list[Any]:
    """The parsed overrides of ``graft -m ...`` (none if they do not parse: Hydra reports that)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [a for a in argv if not a.startswith("-")]
    try:
        return OverridesParser.create().parse_overrides(args)
    except Exception:
        return []


def _is_one_of_many(override: Any) -> bool:
    if not override.is_sweep_override():
        return False
    try:
        return len(list(override.sweep_string_iterator())) > 1
    except Exception:  # glob(...): expanded by Hydra against the recipes
        return True


def refuse_shared_output(argv: list[str]) -> None:
    """A fixed ``output.path=FILE`` in a sweep of several jobs would have each job replace
    (or refuse) the one before: refused before the first job runs, with the fix."""
    overrides = _sweep_overrides(argv)
    by_key = {o.key_or_group: o for o in overrides}
    path, dry = by_key.get("output.path"), by_key.get("dry_run")
    if path is None or path.is_sweep_override() or not any(_is_one_of_many(o) for o in overrides):
        return
    if dry is not None and not dry.is_sweep_override() and dry.value() is True:
        return  # a dry run writes no checkpoint
    value = str(path.value())
    if "${" in value:
        return  # an interpolation (${hydra:job.num} ...) can differ per job
    raise _shared_output(value)


def refuse_recipe_output(cfg: Any, argv: list[str]) -> None:
    """The same refusal for a literal ``output.path`` written in the recipe, in a sweep of
    several jobs of that one recipe: every job raises it before it writes anything."""
    overrides = _sweep_overrides(argv)
    many = [o for o in overrides if _is_one_of_many(o)]
    if not many or any(o.key_or_group in ("output.path", "recipe") for o in many) or \
            any(o.key_or_group == "output.path" for o in overrides):
        return  # set on the command line (checked above), or each recipe's own path
    output = cfg.get("output")
    if output is None or output.get("path") is None or OmegaConf.is_interpolation(output, "path"):
        return
    raise _shared_output(str(output.path))


def _shared_output(value: str) -> RecipeError:
    where = Path(value)
    fix = str(where.parent / "${hydra:job.num}" / where.name) if str(where.parent) != "." else "${hydra:job.num}/" + where.name
    return RecipeError(
        "output.path",
        f"every job of this sweep would write {value}; jobs need an output.path each, e.g. output.path='{fix}'",
    )


def no_jobs(argv: list[str]) -> RecipeError:
    """The error for a sweep whose lists and globs expand to no job at all."""
    globs = [a for a in argv if "glob(" in a]
    if globs:
        return RecipeError(
            "sweep",
            f"0 jobs to run: {' '.join(globs)} matched nothing (glob(...) matches the names of recipes, "
            "recipe='glob(*)', not files: list the values instead, e.g. sources.pretrained=a.pt,b.pt)",
        )
    return RecipeError("sweep", "0 jobs to run (the sweep's lists expand to no job)")


def write_status(mode: str | None, outcome: Outcome | None, error: BaseException | None, argv: list[str]) -> None:
    """Record this job's result in its run directory (sweeps only). ``mode`` is None when
    the job failed before its run switches were read; ``argv``: the sweep's command line."""
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return
    record = {
        "job": int(hydra.job.num),
        "recipe": None if mode == "apply" else hydra.runtime.choices.get("recipe"),  # apply: the plan is the recipe
        "overrides": [as_typed(o, argv) for o in hydra.overrides.task if not o.startswith("recipe=")],
        "status": "ok" if error is None else "failed",
        "error": None if error is None else one_line(error),
        **asdict(outcome if outcome is not None else Outcome(mode or "-")),
    }
    _write(Path(hydra.runtime.output_dir) / STATUS, json.dumps(record, indent=1, sort_keys=True) + "\n")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _shown(path: str | None) -> str:
    if path is None:
        return "-"
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def collect(sweep_dir: Path) -> list[dict]:
    """Every job's status record under ``sweep_dir``, by job number."""
    jobs = []
    for path in sorted(sweep_dir.rglob(STATUS)):
        try:
            jobs.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue  # being written by a parallel job: the next summary has it
    return sorted(jobs, key=lambda job: job["job"])


def summary_text(sweep_dir: Path, jobs: list[dict]) -> str:
    ok = sum(1 for job in jobs if job["status"] == "ok")
    head = f"sweep {_shown(str(sweep_dir))}: {len(jobs)} job{'s' if len(jobs) != 1 else ''}, {ok} ok, {len(jobs) - ok} failed"
    number = lambda v: "-" if v is None else str(v)
    rows = [("job", "recipe", "overrides", "mode", "status", "assigned", "kept", "unused", "written", "output")]
    for job in jobs:
        written = "-" if job["bytes_written"] is None else human_bytes(job["bytes_written"])
        rows.append(
            (
                str(job["job"]), job["recipe"] or "-", " ".join(job["overrides"]) or "-", job["mode"], job["status"],
                number(job["assigned"]), number(job["kept"]), number(job["unused"]), written, _shown(job["output"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [head, ""] + ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    failed = [job for job in jobs if job["status"] != "ok"]
    if failed:
        lines += ["", "errors:"] + [f"  job {job['job']} ({job['recipe']}): {job['error']}" for job in failed]
    return "\n".join(lines) + "\n"


def summary_path(sweep_dir: Path) -> Path:
    """Where the table over a sweep's jobs is (``graft`` prints it after the sweep)."""
    return sweep_dir / f"{SUMMARY}.txt"


def summarize(sweep_dir: Path) -> Path:
    """(Re)write ``summary.txt`` and ``summary.json`` in ``sweep_dir``; returns the text's path."""
    jobs = collect(sweep_dir)
    _write(sweep_dir / f"{SUMMARY}.json", json.dumps({"jobs": jobs}, indent=1, sort_keys=True) + "\n")
    _write(summary_path(sweep_dir), summary_text(sweep_dir, jobs))
    return summary_path(sweep_dir)


class SweepSummary(Callback):
    """Registered in conf/config.yaml (hydra.callbacks); acts in sweeps only."""

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        hydra = HydraConfig.get()
        if hydra.mode == RunMode.MULTIRUN:
            summarize(Path(hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Called (in graft's process, whichever launcher ran the jobs) only when no job failed;
        after a failure, graft prints the table itself."""
        table = summarize(Path(config.hydra.sweep.dir))
        print(table.read_text(encoding="utf-8"), file=sys.stderr, end="")
