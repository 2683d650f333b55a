"""Tensor transforms. Each is a pair: a shape rule the planner checks before any data
is read, and the tensor function the executor applies. A transform is written in a
recipe as a name (``transpose``) or a one-key mapping (``{scale: 0.5}``); the plan
stores the canonical spec (defaults filled in) and the executor compiles it again."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torchgraft.core.errors import RecipeError
from torchgraft.core.text import did_you_mean
from torchgraft.transforms.channels import adapt_channels
from torchgraft.transforms.core import Transform
from torchgraft.transforms.interpolate import OPTIONS as INTERPOLATE_OPTIONS
from torchgraft.transforms.interpolate import interpolate
from torchgraft.transforms.layout import cast, permute, reshape, scale, transpose
from torchgraft.transforms.pad_rows import pad_rows
from torchgraft.transforms.rope import rope

_BUILDERS: dict[str, Callable[[Any, str], Transform]] = {
    "transpose": transpose,
    "permute": permute,
    "reshape": reshape,
    "cast": cast,
    "scale": scale,
    "interpolate": interpolate,
    "adapt_channels": adapt_channels,
    "pad_rows": pad_rows,
    "rope": rope,
}
NAMES = tuple(_BUILDERS)
# Options print in this order, also for a plan read back from (key-sorted) JSON.
_OPTION_ORDER = {"interpolate": INTERPOLATE_OPTIONS, "pad_rows": ("to", "fill"), "rope": ("head_dim", "to")}


def compile_transform(spec: Any, field: str) -> Transform:
    """A recipe's (or plan's) transform spec -> Transform, or a RecipeError naming ``field``."""
    if isinstance(spec, str):
        name, arg = spec, None
    elif isinstance(spec, dict) and len(spec) == 1:
        ((name, arg),) = spec.items()
    else:
        raise RecipeError(field, f"expected a transform name or a one-key mapping, got {spec!r}")
    if name not in _BUILDERS:
        hint = did_you_mean(name, list(_BUILDERS)) or f" (known: {', '.join(_BUILDERS)})"
        raise RecipeError(field, f"unknown transform '{name}'{hint}")
    return _BUILDERS[name](arg, field)


def compile_transforms(specs: Sequence[Any], field: str) -> tuple[Transform, ...]:
    """A rule's transform list. One that fills from the destination's initial values
    must come last: only there do its rows line up with the destination's."""
    transforms = tuple(compile_transform(spec, f"{field}[{i}]") for i, spec in enumerate(specs))
    for i, transform in enumerate(transforms[:-1]):
        if transform.reads_initial:
            raise RecipeError(f"{field}[{i}]", f"{describe(transform.spec)} must be the last transform "
                                               "(its new rows are the destination's initial values)")
    return transforms


def describe(spec: Any) -> str:
    """A spec for plan lines: ``scale(0.5)``, ``pad_rows(to=15, fill=init)``."""
    if isinstance(spec, str):
        return spec
    ((name, arg),) = spec.items()
    if isinstance(arg, dict):
        order = _OPTION_ORDER.get(name, ())
        keys = sorted(arg, key=lambda k: (order.index(k) if k in order else len(order), k))
        return f"{name}(" + ", ".join(f"{k}={_text(arg[k])}" for k in keys) + ")"
    return f"{name}({_text(arg)})"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return "null" if value is None else str(value)


__all__ = ["Transform", "compile_transform", "compile_transforms", "describe", "NAMES"]
