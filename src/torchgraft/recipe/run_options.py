"""The run switches of ``graft`` (``dry_run``, ``apply``, ``check``, ``plan_dir``,
``verify_sources``, ``debug``, ``in_flight``, ``sequential``), read and validated like
recipe fields.

They steer one run and are not part of the transfer: a plan does not record them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torchgraft.core.errors import RecipeError
from torchgraft.core.fields import byte_size, choice, optional_str

RUN_FIELDS = ("dry_run", "debug", "apply", "check", "plan_dir", "verify_sources", "in_flight", "sequential")
VERIFY_MODES = ("fast", "hash")  # fast: size, mtime, header hash | hash: also every byte


@dataclass(frozen=True)
class RunOptions:
    dry_run: bool = False
    debug: bool = False
    apply: str | None = None
    check: str | None = None
    plan_dir: str | None = None
    verify_sources: str = "fast"
    in_flight: int | None = None  # bytes read ahead and not yet written (None: the executor's default)
    sequential: bool = False  # read, compute and write one after another (for debugging)

    @property
    def mode(self) -> str:
        """What the run does: apply | check | dry_run | run."""
        if self.apply:
            return "apply"
        if self.check:
            return "check"
        return "dry_run" if self.dry_run else "run"


def flag(value: object, field: str) -> bool:
    """A true/false switch; null is false. ``dry_run=nope`` is refused, not truthy."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    raise RecipeError(field, f"must be true or false (got {value!r})")


def verify_mode(value: object) -> str:
    """``verify_sources``: fast (size, mtime, header hash) or hash (every byte)."""
    return choice(value, "verify_sources", VERIFY_MODES)


def parse_run_options(data: Mapping[str, Any]) -> RunOptions:
    """The run switches of a composed config (its recipe fields are read elsewhere)."""
    options = RunOptions(
        dry_run=flag(data.get("dry_run"), "dry_run"),
        debug=flag(data.get("debug"), "debug"),
        apply=optional_str(data.get("apply"), "apply"),
        check=optional_str(data.get("check"), "check"),
        plan_dir=optional_str(data.get("plan_dir"), "plan_dir"),
        verify_sources=verify_mode(data.get("verify_sources")),
        in_flight=byte_size(data.get("in_flight"), "in_flight"),
        sequential=flag(data.get("sequential"), "sequential"),
    )
    if options.apply and options.check:
        raise RecipeError("check", "cannot be combined with apply (check compares a recipe with a plan; apply runs a plan)")
    return options
