"""The library API the CLI is built on: ``plan``, ``render``, ``execute``, ``load_into``."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

if TYPE_CHECKING:
    from torch import nn

from torchgraft.core.errors import GraftError, RecipeError
from torchgraft.execution.executor import execute, state_dict
from torchgraft.plans.types import Plan
from torchgraft.planning.planner import make_plan
from torchgraft.recipe.parse import RUN_FIELDS, Recipe, parse_recipe
from torchgraft.plans.text import render
from torchgraft.core.target import model_inventory

RecipeLike = Recipe | Mapping[str, Any] | DictConfig | str | Path


def _find_cause(err: BaseException, kind: type) -> BaseException | None:
    """The first ``kind`` in an exception's cause/context chain (OmegaConf wraps resolver errors twice)."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, kind):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def _example_path(name: str) -> str:
    # The example models need torch; import them only when a recipe names one.
    from torchgraft.examples.checkpoints import example_path

    return example_path(name)


def register_resolver() -> None:
    """Make ``${example:NAME}`` available to recipes (idempotent)."""
    if not OmegaConf.has_resolver("example"):
        OmegaConf.register_new_resolver("example", _example_path)


def resolve(cfg: Mapping[str, Any] | DictConfig) -> dict:
    """Resolve interpolations (``${example:...}``, ``${hydra:...}``) to plain data, naming the field on failure."""
    register_resolver()
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    try:
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as err:
        graft_error = _find_cause(err, GraftError)
        if graft_error is not None:
            reason = graft_error.message
        else:
            cause = err.__cause__
            reason = str(cause) if cause is not None else str(err).splitlines()[0]
        raise RecipeError(err.full_key or None, reason if reason else "missing value") from None
    data.pop("hydra", None)
    return data


def recipe_record(data: Mapping[str, Any]) -> dict:
    """What a plan pins of its recipe: every transfer field, not run switches or where the output goes."""
    record = {k: copy.deepcopy(v) for k, v in data.items() if k not in RUN_FIELDS}
    output = dict(record.get("output") or {})
    output.pop("path", None)
    output.pop("overwrite", None)
    record["output"] = output
    return record


def _load(recipe: RecipeLike) -> tuple[Recipe, dict]:
    if isinstance(recipe, Recipe):
        raise TypeError("pass the recipe as a mapping or a YAML path, so the plan can record it")
    if isinstance(recipe, (str, Path)):
        register_resolver()
        recipe = OmegaConf.load(recipe)
    data = resolve(recipe)
    return parse_recipe(data), recipe_record(data)


def plan(recipe: RecipeLike) -> Plan:
    """Plan a recipe (a mapping, a DictConfig or a YAML path). Reads headers only."""
    parsed, record = _load(recipe)
    return make_plan(parsed, record)


def load_into(model: nn.Module, recipe: RecipeLike) -> Plan:
    """Fill ``model`` in place from the recipe's sources: the one call that replaces a
    hand-written ``state_dict`` loop. Tensors no rule assigns keep the model's current
    values; the recipe's ``target`` is ignored (the model is the target)."""
    parsed, record = _load(recipe)
    the_plan = make_plan(parsed, record, target=model_inventory(model))
    current = {k: v.detach() for k, v in model.state_dict().items()}
    model.load_state_dict(state_dict(the_plan, current), strict=True)
    return the_plan


__all__ = ["plan", "render", "execute", "load_into", "resolve", "recipe_record"]
