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
from hydra.types import RunMode
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from torchgraft import recipe_source
from torchgraft.api import recipe_record, resolve
from torchgraft.errors import GraftError
from torchgraft.examples.checkpoints import register_resolver
from torchgraft.execute import check_output, execute
from torchgraft.planner import make_plan
from torchgraft.recipe import parse_recipe
from torchgraft.render import group_keys, human_bytes, render

log = logging.getLogger("torchgraft")


def _write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a plan file is whole or absent."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def run(cfg: DictConfig) -> None:
    """One job: plan the composed recipe, print it, and execute it unless dry_run."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    data = resolve(cfg)
    recipe = parse_recipe(data)
    dry_run = bool(data.get("dry_run"))
    output = Path(recipe.output.path) if recipe.output.path else run_dir / "model.safetensors"
    if not dry_run:
        check_output(output, recipe.output.overwrite)
    plan = make_plan(recipe, recipe_record(data))
    text = render(plan)
    sys.stdout.write(text)
    sys.stdout.flush()
    if plan.unused and recipe.policy.unused == "warn":
        names = group_keys(f"{u.source}:{u.key}" for u in plan.unused)
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        log.warning("warning: %d source tensors are read by no rule: %s (policy.unused=ignore silences this)", len(plan.unused), shown)
    _write_text(run_dir / "plan.json", plan.to_json())
    _write_text(run_dir / "plan.txt", text)
    if dry_run:
        log.info("dry run: wrote %s and plan.txt; no tensor data read, no checkpoint written", run_dir / "plan.json")
        return
    start = time.perf_counter()
    execute(plan, output, overwrite=recipe.output.overwrite)
    written = output.stat().st_size
    log.info("wrote %s (%d tensors, %s) in %.2f s; verified against the plan", output, len(plan.entries), human_bytes(written), time.perf_counter() - start)


_user_wants_traceback = False


@hydra.main(version_base="1.3", config_path="pkg://torchgraft.conf", config_name="config")
def _job(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except GraftError as err:
        print(f"error: {err}", file=sys.stderr)
        if cfg.get("debug"):
            traceback.print_exc()
        if HydraConfig.get().mode == RunMode.RUN and not _user_wants_traceback:
            sys.exit(1)  # one line; raising would make Hydra add its own report
        err.reported = True  # type: ignore[attr-defined]
        raise  # multirun: Hydra runs the other jobs, then re-raises the first failure


def main() -> None:
    """Console entry point of ``graft``."""
    register_resolver()
    recipe_source.register()
    global _user_wants_traceback
    _user_wants_traceback = user_wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach this function instead of Hydra's printer
    try:
        _job()
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
