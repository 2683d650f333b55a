"""``graft``: the Hydra app. Thin on purpose: compose -> plan -> render -> execute.

Jobs raise; ``main`` reports, once for the whole call, through ``exits`` (the one
mapping from an exception to a message and an exit code).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra._internal.hydra import Hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from torchgraft.api import apply, check
from torchgraft.cli import exits, rundir, sweep, torchrun
from torchgraft.core.errors import RecipeError
from torchgraft.core.heap import no_collection_at_exit, paused_gc
from torchgraft.core.text import human_bytes, printable
from torchgraft.core.version import __version__
from torchgraft.execution.executor import check_output, execute
from torchgraft.execution.initial import advice as init_advice
from torchgraft.execution.outputs import output_bytes
from torchgraft.execution.pipeline import Settings
from torchgraft.execution.ranks import ALONE, World
from torchgraft.execution.sources import pin_contents
from torchgraft.planning.planner import make_plan
from torchgraft.plans import review
from torchgraft.plans.files import read_plan, refuse_sweep_overwrite, write_plan
from torchgraft.plans.files import register_resolver as register_job_name
from torchgraft.plans.text import render, target_nbytes, unused_warning
from torchgraft.recipe import source as recipe_source
from torchgraft.recipe.parse import parse_recipe
from torchgraft.recipe.resolve import recipe_record, register_resolver, resolve
from torchgraft.recipe.run_options import RUN_FIELDS, RunOptions, flag, parse_run_options

log = logging.getLogger("torchgraft")


def run(cfg: DictConfig, options: RunOptions, run_dir: Path, world: World = ALONE) -> sweep.Outcome:
    """One job: plan the composed recipe, print it, and execute it unless dry_run.
    ``apply=PLAN`` runs a reviewed plan instead; ``check=PLAN`` compares with a committed one.
    Under torchrun (``world``) every rank plans, rank 0 prints, each writes its share."""
    if options.apply:
        return _apply(cfg, options, run_dir, world)
    data = resolve(cfg)
    recipe = parse_recipe(data)
    verify = options.verify_sources
    name = HydraConfig.get().runtime.choices.get("recipe") or "recipe"
    record = recipe_record(data, run_dir, pin_output=not _overrides_output(HydraConfig.get().overrides.task), cfg=cfg)
    if options.check:
        result = check(options.check, name, lambda: make_plan(recipe, record), verify)
        sys.stdout.write("\n".join(map(printable, result.text.split("\n"))))
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
        if world.rank == 0:
            sys.stdout.write(text)
            sys.stdout.flush()
        warning = unused_warning(plan)
        if warning and world.rank == 0:
            log.warning("%s", warning)
        note = init_advice(plan)
        if note:
            log.info("%s", note)
        written = write_plan(plan, run_dir / "plan", text, also=also)
        if dry_run:
            log.info("dry run: wrote %s (and .txt, .md); no tensor data read, no checkpoint written", written)
            return sweep.Outcome.of(plan, "dry_run")
    start = time.perf_counter()
    try:
        execute(plan, output, overwrite=recipe.output.overwrite, world=world, settings=settings(options))
    except BaseException:  # nothing is written on error: not the run's plan files either
        for suffix in (".json", ".txt", ".md"):
            (run_dir / f"plan{suffix}").unlink(missing_ok=True)
        raise
    written = output_bytes(output)
    log.info("wrote %s (%s) in %.2f s; verified against the plan", output, written_text(plan, written), time.perf_counter() - start)
    return sweep.Outcome.of(plan, "run", output)


def settings(options: RunOptions) -> Settings:
    """How the run moves tensors (``in_flight``, ``sequential``): never what it writes."""
    if options.in_flight is None:
        return Settings(sequential=options.sequential)
    return Settings(options.in_flight, options.sequential)


def replan_overrides(task: list[str]) -> list[str]:
    """The overrides of a ``check=`` run that the re-planning dry run needs too (all but
    the run switches it sets itself)."""
    return [o for o in task if o.lstrip("+~").split("=", 1)[0] not in ("check", "dry_run", "plan_dir", "recipe")]


def written_text(plan, file_bytes: int) -> str:
    """``10 tensors, 240.6 KiB of tensor data, 245.3 KiB on disk``: the plan counts tensor
    bytes; a file adds its header (and a directory its index and copied files)."""
    return f"{len(plan.entries)} tensors, {human_bytes(target_nbytes(plan))} of tensor data, {human_bytes(file_bytes)} on disk"


_APPLY_FIELDS = ("apply", "dry_run", "debug", "output.path", "output.overwrite", "in_flight", "sequential")


def refuse_overrides(overrides: list[str]) -> None:
    """``apply`` takes everything from the plan: an override that would change the transfer
    (a recipe, a field) is refused rather than silently ignored. (``check`` with ``apply``
    is refused by ``parse_run_options``.)"""
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


def _apply(cfg: DictConfig, options: RunOptions, run_dir: Path, world: World = ALONE) -> sweep.Outcome:
    """``apply=PLAN``: the plan is the recipe; only output.path/overwrite and dry_run apply."""
    path = str(options.apply)
    overrides = list(HydraConfig.get().overrides.task)
    refuse_overrides(overrides)
    output = apply_output(path, overrides, cfg, run_dir)
    if options.dry_run:
        plan = apply(path, output, dry_run=True)
        sys.stdout.write(render(plan))
        log.info("dry run: %s is unedited and its sources and target are unchanged; nothing written", path)
        return sweep.Outcome.of(plan, "apply")
    start = time.perf_counter()
    plan = apply(path, output, overwrite=flag(cfg.output.get("overwrite"), "output.overwrite"), world=world,
                 settings=settings(options))
    text = render(plan)
    if world.rank == 0:
        sys.stdout.write(text)
    write_plan(plan, run_dir / "plan", text)
    log.info("applied %s: wrote %s (%s) in %.2f s; verified against the plan", path, output, written_text(plan, output_bytes(output)),
             time.perf_counter() - start)
    return sweep.Outcome.of(plan, "apply", output)


@dataclass
class _Call:
    """What the jobs of one ``graft`` call tell ``main``, which reports for all of them."""

    multirun: bool = False
    debug: bool = False  # the last job's debug switch
    mode: str | None = None  # the last job's: run | dry_run | apply | check
    argv: list[str] = field(default_factory=list)  # the command line (a sweep's summary shows it as typed)
    run_dir: Path | None = None
    sweep_dir: Path | None = None
    errors: list[Exception] = field(default_factory=list)  # of the jobs, in order
    world: World = field(default_factory=World)  # this process's rank under torchrun

    def worst_error(self) -> Exception | None:
        """The error ``main`` reports: the first bug, else the first user error."""
        return max(self.errors, key=exits.exit_code, default=None)


def read_options(cfg: DictConfig) -> RunOptions:
    """The run switches, typed (``dry_run=nope`` is refused), without resolving the recipe."""
    return parse_run_options({name: cfg.get(name) for name in RUN_FIELDS})


def _job(cfg: DictConfig, call: _Call) -> sweep.Outcome | None:
    """One Hydra job: run it and record its status (sweeps). A failure is handed to
    ``main`` in ``call``; raised too in a sweep, whose jobs may run in other processes."""
    hydra_cfg = HydraConfig.get()
    call.multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if call.multirun:
        call.sweep_dir = Path(hydra_cfg.sweep.dir)
    else:
        call.run_dir = run_dir
    mode = None
    try:
        options = read_options(cfg)
        mode = call.mode = options.mode
        call.debug = options.debug
        if call.multirun and not options.dry_run:
            sweep.refuse_recipe_output(cfg, call.argv)
        outcome = run(cfg, options, run_dir, call.world)
    except Exception as err:
        sweep.write_status(mode, None, err, call.argv)
        call.errors.append(err)
        if call.multirun:
            raise  # a launcher may run jobs in other processes: Hydra hands their failure to main
        return None
    sweep.write_status(mode, outcome, None, call.argv)
    return outcome


def _mode_from_overrides(self: Hydra, config_name: str | None, overrides: list[str]) -> RunMode | None:
    """Hydra's ``get_mode`` composes the whole config only to read ``hydra.mode``, which
    torchgraft's config never sets: only an override can. Read that instead (one
    composition per run instead of two; see ``compose_once``)."""
    for override in reversed(overrides):
        key, _, value = override.partition("=")
        if key.lstrip("+~") == "hydra.mode" and value.upper() in RunMode.__members__:
            return RunMode[value.upper()]
    return None


@contextmanager
def compose_once():
    """For one call: the run mode from the overrides, not from a first composition of the
    whole config, which cost about 0.2 s of every run (a quarter of a 1-tensor dry run)."""
    saved = Hydra.get_mode
    Hydra.get_mode = _mode_from_overrides
    try:
        yield
    finally:
        Hydra.get_mode = saved


@contextmanager
def _hydra_app_args(argv: list[str]):
    """Hydra reads ``sys.argv``, and reports errors itself unless HYDRA_FULL_ERROR=1:
    set both for the call, so every error reaches ``main``, and restore them after."""
    saved_argv, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = ["graft", *argv]
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``graft``: runs the Hydra app on ``argv`` and exits with
    0 (ok), 1 (a user error) or 2 (a bug), as mapped by ``exits``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    no_collection_at_exit()
    if "--version" in argv:
        print(f"torchgraft {__version__} (Hydra {hydra.__version__})")
        sys.exit(exits.OK)
    register_resolver()
    register_job_name()
    rundir.register_resolver()
    recipe_source.register()
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    call = _Call(argv=argv)
    app = hydra.main(version_base="1.3", config_path="pkg://torchgraft.conf", config_name="config")(
        lambda cfg: _job(cfg, call)
    )
    multirun = "-m" in argv or "--multirun" in argv or "hydra.mode=MULTIRUN" in argv
    error: BaseException | None = None
    exits.one_line_warnings()
    # SIGTERM and SIGHUP clean up as Ctrl-C does (temporaries removed); restored on return.
    previous = {signum: signal.signal(signum, exits.interrupt) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        call.world = torchrun.join()
        if multirun:
            if not call.world.alone:
                raise RecipeError("-m", "a sweep does not run under torchrun (each job would run on every rank); "
                                        "run one recipe per torchrun, or sweep with hydra/launcher=submitit_slurm")
            sweep.refuse_shared_output(argv)
        with _hydra_app_args(argv), compose_once():
            app()
    except (Exception, KeyboardInterrupt) as err:  # composing failed, the sweep is refused, or interrupted
        error = err
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    error = call.worst_error() or error
    local = not any(a.startswith(("hydra/launcher=", "+hydra/launcher=")) for a in argv)
    if multirun and error is None and local and call.sweep_dir is None:
        error = sweep.no_jobs(argv)  # (a launcher running jobs elsewhere leaves call.sweep_dir unset)
    if call.sweep_dir is not None and error is not None:  # the table, which SweepSummary prints after a sweep without failures
        summary = sweep.summary_path(call.sweep_dir)
        if summary.exists():
            print(summary.read_text(encoding="utf-8"), file=sys.stderr, end="")
    code = exits.OK if error is None else exits.report(error, show_traceback=full_error or call.debug)
    if call.run_dir is not None and not call.multirun:
        if (code == exits.USER_ERROR or call.mode == "check") and not call.debug:
            rundir.discard(call.run_dir)
        elif code == exits.OK:
            rundir.point_latest(call.run_dir)
    torchrun.leave(call.world, error, code)  # under torchrun: once every rank knows, and rank 0 has cleaned up
    sys.exit(code)



if __name__ == "__main__":
    main()
