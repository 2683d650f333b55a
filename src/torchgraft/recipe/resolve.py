"""From a composed config to plain data: OmegaConf interpolations resolved
(``${example:NAME}``, ``${hydra:...}``, ``${oc.env:...}``), each failure naming its field.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from torchgraft.core.errors import GraftError, RecipeError
from torchgraft.recipe.run_options import RUN_FIELDS


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


def _keep_env_references(resolved: Any, raw: Any) -> Any:
    if isinstance(raw, str) and "${oc.env:" in raw:
        return raw
    if isinstance(resolved, dict) and isinstance(raw, dict):
        return {k: _keep_env_references(v, raw.get(k)) for k, v in resolved.items()}
    if isinstance(resolved, list) and isinstance(raw, list) and len(raw) == len(resolved):
        return [_keep_env_references(v, r) for v, r in zip(resolved, raw)]
    return resolved


def recipe_record(data: Mapping[str, Any], run_dir: str | os.PathLike | None = None, *, pin_output: bool = True,
                  cfg: Mapping[str, Any] | DictConfig | None = None) -> dict:
    """What a plan pins of its recipe: every transfer field, not run switches. A recipe's
    literal ``output.path`` is pinned (a reviewed plan says where it writes); one in the
    run directory (``${hydra:runtime.output_dir}/...``, the default) is not, as it differs
    every run, nor one given for this run only (``pin_output=False``: ``output.path=`` on
    the command line).

    Nor ``vars``: the plan records the values they gave where they were used, so a
    variable nothing uses does not change the plan.

    With ``cfg`` (the config before resolution), a value that reads the environment
    (``${oc.env:TOKEN}``) is recorded as that reference, not its value: plan files are
    committed and shared. (Source paths and target arguments are in the plan resolved,
    because running it needs them.)"""
    if cfg is not None:
        raw = OmegaConf.to_container(cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg)),
                                     resolve=False)
        data = _keep_env_references(data, raw)
    record = {k: copy.deepcopy(v) for k, v in data.items() if k not in RUN_FIELDS and k != "vars"}
    output = dict(record.get("output") or {})
    path = output.pop("path", None)
    output.pop("overwrite", None)
    if not output.get("config", True):  # the default, left out: plans made before it keep their hash
        output.pop("config")
    if pin_output and path is not None and not (run_dir is not None and _inside(str(path), run_dir)):
        output["path"] = str(path)
    record["output"] = output
    return record


def _inside(path: str, folder: str | os.PathLike) -> bool:
    return Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))
