"""The library API the CLI is built on: ``plan``, ``render``, ``execute``, ``load_into``,
and the review calls ``apply`` and ``check``.

Each call that plans or reads a plan runs with the cyclic garbage collector paused
(``core.heap.paused_gc``): the one place it is applied for library users, as the CLI's
entry points are for commands."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    from torch import nn

from torchgraft.core.errors import PlanError
from torchgraft.core.heap import paused_gc
from torchgraft.core.specs import check_plan_spec
from torchgraft.core.target import model_inventory
from torchgraft.execution.executor import check_output, execute, state_dict
from torchgraft.execution.sources import open_plan_sources, pin_contents
from torchgraft.planning.planner import make_plan
from torchgraft.plans import review
from torchgraft.plans import text as plan_text
from torchgraft.plans.files import read_plan
from torchgraft.plans.types import Plan
from torchgraft.recipe.parse import Recipe, parse_recipe
from torchgraft.recipe.resolve import recipe_record, register_resolver, resolve

RecipeLike = Mapping[str, Any] | DictConfig | str | Path


def _load(recipe: RecipeLike) -> tuple[Recipe, dict]:
    if isinstance(recipe, Recipe):
        raise TypeError("pass the recipe as a mapping or a YAML path, so the plan can record it")
    if isinstance(recipe, (str, Path)):
        register_resolver()
        recipe = OmegaConf.load(recipe)
    data = resolve(recipe)
    return parse_recipe(data), recipe_record(data, recipe)


@paused_gc()
def plan(recipe: RecipeLike) -> Plan:
    """Plan a recipe (a mapping, a DictConfig or a YAML path). Reads headers only."""
    parsed, record = _load(recipe)
    return make_plan(parsed, record)


@paused_gc()
def render(plan: Plan, grouped: bool = True) -> str:
    """The plan as text for review, repeated layers folded: what ``plan.txt`` holds."""
    return plan_text.render(plan, grouped)


@paused_gc()
def load_into(model: nn.Module, recipe: RecipeLike) -> Plan:
    """Fill ``model`` in place from the recipe's sources: the one call that replaces a
    hand-written ``state_dict`` loop. Tensors no rule assigns keep the model's current
    values; the recipe's ``target`` is ignored (the model is the target)."""
    parsed, record = _load(recipe)
    the_plan = make_plan(parsed, record, target=model_inventory(model))
    current = {k: v.detach() for k, v in model.state_dict().items()}
    model.load_state_dict(state_dict(the_plan, current), strict=True)
    return the_plan


@paused_gc()
def apply(path: str, output: Path, *, overwrite: bool = False, dry_run: bool = False) -> Plan:
    """Execute the reviewed plan at ``path`` exactly, after checking that it is unedited
    and that its sources and target are unchanged. ``dry_run``: check only."""
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
    execute(the_plan, output, overwrite=overwrite)  # checks the sources' fingerprints before writing
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
