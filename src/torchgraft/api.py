"""The library API the CLI is built on: ``plan``, ``render``, ``execute``, ``load_into``,
and the review calls ``apply`` and ``check``.

Each call that plans or reads a plan runs with the cyclic garbage collector paused
(``core.heap.paused_gc``): the one place it is applied for library users, as the CLI's
entry points are for commands."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

if TYPE_CHECKING:
    from torch import nn

from torchgraft.core.errors import PlanError, RecipeError
from torchgraft.core.heap import paused_gc
from torchgraft.core.specs import check_plan_spec
from torchgraft.core.target import model_inventory
from torchgraft.execution.executor import check_output, execute, state_dict
from torchgraft.execution.pipeline import Settings
from torchgraft.execution.ranks import ALONE, World
from torchgraft.execution.sources import open_plan_sources, pin_contents
from torchgraft.planning.planner import make_plan
from torchgraft.plans import review
from torchgraft.plans import text as plan_text
from torchgraft.plans.files import read_plan
from torchgraft.plans.types import Plan
from torchgraft.recipe.parse import Recipe, parse_recipe
from torchgraft.recipe.resolve import recipe_record, register_resolver, resolve
from torchgraft.recipe.source import find_recipe

RecipeLike = Mapping[str, Any] | DictConfig | str | Path

log = logging.getLogger("torchgraft")


def _defaults() -> DictConfig:
    """The CLI's defaults (conf/config.yaml) without Hydra's own sections. The default
    ``output.path`` lives in a run directory, which only the CLI has."""
    return OmegaConf.create(_default_fields())  # a new config: the cached dict is not shared


@functools.cache
def _default_fields() -> dict:
    # Parsed once per process: OmegaConf's pure-Python YAML loader takes ~30 ms for this
    # file, which was 13 of the test suite's 120 CPU seconds (455 calls); a caller that
    # plans in a loop paid it on every call too. The file is package data.
    config = OmegaConf.load(str(resources.files("torchgraft") / "conf" / "config.yaml"))
    for section in ("defaults", "hydra"):
        config.pop(section, None)
    config.output.path = None
    return OmegaConf.to_container(config, resolve=False)


def _load(recipe: RecipeLike, **fill: Any) -> tuple[Recipe, dict]:
    """The recipe merged over the CLI's defaults, as ``graft recipe=...`` composes it."""
    if isinstance(recipe, Recipe):
        raise TypeError("pass the recipe as a mapping or a YAML path, so the plan can record it")
    register_resolver()
    if isinstance(recipe, (str, Path)):
        recipe = OmegaConf.load(find_recipe(recipe))
    elif not isinstance(recipe, DictConfig):
        recipe = OmegaConf.create(dict(recipe))
    for dotted, value in fill.items():  # a default of this call, unless the recipe sets it
        if OmegaConf.select(recipe, dotted, default=None) is None:
            OmegaConf.update(recipe, dotted, value, force_add=True)
    try:  # a field of the wrong kind (``output: []``): the recipe's to fix, one line
        merged = OmegaConf.merge(_defaults(), recipe)
    except OmegaConfBaseException as err:
        raise RecipeError("recipe", str(err).strip().splitlines()[0]) from None
    output = merged.get("output")
    path = OmegaConf.to_container(output, resolve=False).get("path") if isinstance(output, DictConfig) else None
    if isinstance(path, str) and "${hydra:" in path:  # a recipe's path in the run directory, which only the CLI has
        merged.output.path = None
    data = resolve(merged)
    return parse_recipe(data), recipe_record(data, cfg=merged)


@paused_gc()
def plan(recipe: RecipeLike) -> Plan:
    """Plan a recipe: a bundled or ``./recipes`` name (``"conv_only"``), a YAML path, a
    mapping or a DictConfig. Fields it leaves out take the CLI's defaults, so the plan
    (and its sha256) is the one ``graft recipe=... dry_run=true`` writes. Reads headers only.
    Unused source tensors are reported through the ``torchgraft`` logger, as the CLI does."""
    parsed, record = _load(recipe)
    the_plan = make_plan(parsed, record)
    warning = plan_text.unused_warning(the_plan)
    if warning:
        log.warning("%s", warning)
    return the_plan


@paused_gc()
def render(plan: Plan, grouped: bool = True) -> str:
    """The plan as text for review, repeated layers folded: what ``plan.txt`` holds."""
    return plan_text.render(plan, grouped)


@paused_gc()
def load_into(model: nn.Module, recipe: RecipeLike) -> Plan:
    """Fill ``model`` in place from the recipe's sources: the one call that replaces a
    hand-written ``state_dict`` loop. The recipe's ``target`` is ignored (the model is
    the target). Tensors no rule assigns keep the model's current values: here
    ``policy.unassigned`` defaults to ``keep`` (a recipe that sets ``error`` gets the error)."""
    parsed, record = _load(recipe, **{"policy.unassigned": "keep"})
    the_plan = make_plan(parsed, record, target=model_inventory(model))
    current = {k: v.detach() for k, v in model.state_dict().items()}
    model.load_state_dict(state_dict(the_plan, current), strict=True)
    return the_plan


@paused_gc()
def apply(path: str, output: Path, *, overwrite: bool = False, dry_run: bool = False, world: World = ALONE,
          settings: Settings | None = None) -> Plan:
    """Execute the reviewed plan at ``path`` exactly, after checking that it is unedited
    and that its sources and target are unchanged. ``dry_run``: check only. ``world``:
    this process's rank under torchrun (``execution.ranks``). ``settings``: as for ``execute``."""
    the_plan = read_plan(path, "apply")
    if the_plan.target.spec is not None:
        try:  # before anything is built: a plan file calls nothing but its model class
            check_plan_spec(the_plan.target.spec)
        except PlanError as err:
            raise PlanError("apply", f"{path}: {err}") from None
    if not dry_run:
        check_output(output, overwrite)
    review.check_target(the_plan)
    if dry_run:
        for reader in open_plan_sources(the_plan).values():
            reader.close()
        return the_plan
    execute(the_plan, output, overwrite=overwrite, world=world, settings=settings)  # checks the sources' fingerprints
    return the_plan


@paused_gc()
def check(path: str, recipe: str, make: Callable[[], Plan], verify: str) -> review.CheckResult:
    """Re-plan with ``make`` and compare with the committed plan at ``path``. Sources are
    hashed when either side asks for it (``verify_sources=hash`` or a committed plan
    that pins contents), so the two are compared on equal terms."""
    committed = read_plan(path, "check")
    fresh = make()
    if verify == "hash" or review.pins_content(committed):
        fresh = pin_contents(fresh)
    return review.compare(path, recipe, committed, fresh)


__all__ = ["plan", "render", "execute", "load_into", "apply", "check"]
