"""``graft``: the Hydra app. Thin on purpose: compose -> plan -> render -> execute.

Error reporting is owned here: a user error (``GraftError``, a bad override, an
unknown recipe) prints one line and exits 1; anything else is a bug and exits 2 with
its traceback. Tracebacks for user errors only with HYDRA_FULL_ERROR=1 or debug=true.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from torchgraft.api import apply, check
from torchgraft.cli import sweep
from torchgraft.core.errors import GraftError, RecipeError
from torchgraft.core.heap import paused_gc
from torchgraft.core.text import human_bytes
from torchgraft.execution.executor import check_output, execute
from torchgraft.execution.initial import advice as init_advice
from torchgraft.execution.outputs import output_bytes
from torchgraft.execution.sources import pin_contents
from torchgraft.planning.planner import make_plan
from torchgraft.plans import review
from torchgraft.plans.files import read_plan, refuse_sweep_overwrite, write_plan
from torchgraft.plans.files import register_resolver as register_job_name
from torchgraft.plans.text import render, target_nbytes, unused_warning
from torchgraft.recipe import source as recipe_source
from torchgraft.recipe.parse import parse_recipe
from torchgraft.recipe.resolve import recipe_record, register_resolver, resolve
from torchgraft.recipe.run_options import parse_run_options

log = logging.getLogger("torchgraft")


def run(cfg: DictConfig) -> sweep.Outcome:
    """One job: plan the composed recipe, print it, and execute it unless dry_run.
    ``apply=PLAN`` runs a reviewed plan instead; ``check=PLAN`` compares with a committed one."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.get("apply"):
        return _apply(cfg, run_dir)
    data = resolve(cfg)
    options = parse_run_options(data)
    recipe = parse_recipe(data)
    verify = options.verify_sources
    name = HydraConfig.get().runtime.choices.get("recipe") or "recipe"
    record = recipe_record(data, run_dir, pin_output=not _overrides_output(HydraConfig.get().overrides.task))
    if options.check:
        result = check(options.check, name, lambda: make_plan(recipe, record), verify)
        sys.stdout.write(result.text)
        sys.stdout.flush()
        if not result.same:
            raise review.out_of_date(options.check, name, replan_overrides(HydraConfig.get().overrides.task))
        return sweep.Outcome("check")
    dry_run = options.dry_run
    also = [Path(options.plan_dir) / f"{name}.plan"] if options.plan_dir else []
    if also and HydraConfig.get().mode == RunMode.MULTIRUN:
        refuse_sweep_overwrite(also[0], Path(HydraConfig.get().sweep.dir))
    output = Path(recipe.output.path) if recipe.output.path else run_dir / "model.safetensors"
    if not dry_run:
        check_output(output, recipe.output.overwrite)
    # Until the plan is shown and written, and through a whole dry run, the cyclic
    # collector would only walk the plan's objects (millions for 100k tensors, none
    # of them cyclic garbage), again and again as they pile up.
    with paused_gc():
        plan = make_plan(recipe, record)
        if verify == "hash":
            plan = pin_contents(plan)
        text = render(plan)
        sys.stdout.write(text)
        sys.stdout.flush()
        warning = unused_warning(plan)
        if warning:
            log.warning("%s", warning)
        note = init_advice(plan)
        if note:
            log.info("%s", note)
        written = write_plan(plan, run_dir / "plan", text, also=also)
        if dry_run:
            log.info("dry run: wrote %s (and .txt, .md); no tensor data read, no checkpoint written", written)
            return sweep.Outcome.of(plan, "dry_run")
    start = time.perf_counter()
    execute(plan, output, overwrite=recipe.output.overwrite)
    written = output_bytes(output)
    log.info("wrote %s (%s) in %.2f s; verified against the plan", output, written_text(plan, written), time.perf_counter() - start)
    return sweep.Outcome.of(plan, "run", output)


def replan_overrides(task: list[str]) -> list[str]:
    """The overrides of a ``check=`` run that the re-planning dry run needs too (all but
    the run switches it sets itself)."""
    return [o for o in task if o.lstrip("+~").split("=", 1)[0] not in ("check", "dry_run", "plan_dir", "recipe")]


def written_text(plan, file_bytes: int) -> str:
    """``10 tensors, 240.6 KiB of tensor data, 245.3 KiB on disk``: the plan counts tensor
    bytes; a file adds its header (and a directory its index and copied files)."""
    return f"{len(plan.entries)} tensors, {human_bytes(target_nbytes(plan))} of tensor data, {human_bytes(file_bytes)} on disk"


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


def _overrides_output(overrides: list[str]) -> bool:
    """``output.path=`` on the command line: where this run writes, not part of its plan."""
    return any(o.lstrip("+~").split("=", 1)[0] == "output.path" for o in overrides)


def apply_output(path: str, overrides: list[str], cfg: DictConfig, run_dir: Path) -> Path:
    """Where ``apply`` writes: ``output.path=`` on the command line, else the plan's own
    (a recipe's literal ``output.path`` is part of its plan), else the run directory."""
    if _overrides_output(overrides) and cfg.output.get("path"):
        return Path(str(cfg.output.path))
    planned = (read_plan(path, "apply").recipe.get("output") or {}).get("path")
    return Path(planned) if planned else run_dir / "model.safetensors"


def _apply(cfg: DictConfig, run_dir: Path) -> sweep.Outcome:
    """``apply=PLAN``: the plan is the recipe; only output.path/overwrite and dry_run apply."""
    path = str(cfg.apply)
    overrides = list(HydraConfig.get().overrides.task)
    refuse_overrides(overrides, bool(cfg.get("check")))
    output = apply_output(path, overrides, cfg, run_dir)
    if cfg.get("dry_run"):
        plan = apply(path, output, dry_run=True)
        sys.stdout.write(render(plan))
        log.info("dry run: %s is unedited and its sources and target are unchanged; nothing written", path)
        return sweep.Outcome.of(plan, "apply")
    start = time.perf_counter()
    plan = apply(path, output, overwrite=bool(cfg.output.get("overwrite")))
    text = render(plan)
    sys.stdout.write(text)
    write_plan(plan, run_dir / "plan", text)
    log.info("applied %s: wrote %s (%s) in %.2f s; verified against the plan", path, output, written_text(plan, output_bytes(output)),
             time.perf_counter() - start)
    return sweep.Outcome.of(plan, "apply", output)


_user_wants_traceback = False


@hydra.main(version_base="1.3", config_path="pkg://torchgraft.conf", config_name="config")
def _job(cfg: DictConfig) -> sweep.Outcome:
    try:
        outcome = run(cfg)
    except GraftError as err:
        sweep.write_status(cfg, None, err)
        print(f"error: {err}", file=sys.stderr)
        if cfg.get("debug"):
            traceback.print_exc()
        if HydraConfig.get().mode == RunMode.RUN and not _user_wants_traceback:
            sys.exit(1)  # one line; raising would make Hydra add its own report
        err.reported = True  # type: ignore[attr-defined]
        raise  # multirun: Hydra runs the other jobs, then re-raises the first failure
    except Exception as err:
        sweep.write_status(cfg, None, err)
        raise
    sweep.write_status(cfg, outcome, None)
    return outcome


def main() -> None:
    """Console entry point of ``graft``."""
    register_resolver()
    register_job_name()
    recipe_source.register()
    global _user_wants_traceback
    _user_wants_traceback = user_wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach this function instead of Hydra's printer
    try:
        try:
            _job()
        finally:
            if sweep.last_summary is not None:  # a sweep ran in this process: show its table
                print(sweep.last_summary.read_text(encoding="utf-8"), file=sys.stderr, end="")
    except GraftError as err:
        if not getattr(err, "reported", False):
            print(f"error: {err}", file=sys.stderr)
        if user_wants_traceback:
            raise
        sys.exit(1)
    except (HydraException, OmegaConfBaseException) as err:
        if user_wants_traceback:
            raise
        print(f"error: {str(err).strip()}", file=sys.stderr)
        sys.exit(1)
    except Exception:
        traceback.print_exc()
        print("internal error: this is a bug in torchgraft; please report it with the traceback above", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
