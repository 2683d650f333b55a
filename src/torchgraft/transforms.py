"""Tensor transforms. Each is a pair: a shape rule the planner checks before any data
is read, and the tensor function the executor applies. A transform is written in a
recipe as a name (``transpose``) or a one-key mapping (``{scale: 0.5}``); the plan
stores that canonical spec and the executor compiles it again."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from torchgraft.errors import RecipeError
from torchgraft.tensors import is_floating, parse_dtype, torch_dtype


@dataclass(frozen=True)
class Transform:
    spec: Any  # canonical, JSON-able: "transpose" or {"name": argument}
    out_shape: Callable[[tuple[int, ...]], tuple[int, ...]]  # raises ValueError with the reason
    out_dtype: Callable[[str], str]
    apply: Callable[[torch.Tensor], torch.Tensor]


def _same_dtype(dtype: str) -> str:
    return dtype


def _transpose(arg: Any, field: str) -> Transform:
    if arg is not None:
        raise RecipeError(field, "transpose takes no argument (it swaps the last two dimensions)")

    def shape(s: tuple[int, ...]) -> tuple[int, ...]:
        if len(s) < 2:
            raise ValueError(f"transpose needs at least 2 dimensions, got shape {list(s)}")
        return (*s[:-2], s[-1], s[-2])

    return Transform("transpose", shape, _same_dtype, lambda t: t.transpose(-2, -1))


def _int_list(arg: Any, field: str, name: str) -> list[int]:
    if not isinstance(arg, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in arg):
        raise RecipeError(field, f"{name} expects a list of integers, got {arg!r}")
    return list(arg)


def _permute(arg: Any, field: str) -> Transform:
    dims = _int_list(arg, field, "permute")
    if sorted(dims) != list(range(len(dims))):
        raise RecipeError(field, f"permute expects a permutation of 0..{len(dims) - 1}, got {dims}")

    def shape(s: tuple[int, ...]) -> tuple[int, ...]:
        if len(s) != len(dims):
            raise ValueError(f"permute {dims} needs {len(dims)} dimensions, got shape {list(s)}")
        return tuple(s[d] for d in dims)

    return Transform({"permute": dims}, shape, _same_dtype, lambda t: t.permute(*dims))


def _reshape(arg: Any, field: str) -> Transform:
    dims = _int_list(arg, field, "reshape")
    if sum(d == -1 for d in dims) > 1 or any(d < -1 for d in dims):
        raise RecipeError(field, f"reshape expects sizes >= 0 and at most one -1, got {dims}")

    def shape(s: tuple[int, ...]) -> tuple[int, ...]:
        numel, known = math.prod(s), math.prod(d for d in dims if d != -1)
        if -1 in dims:
            if known == 0 or numel % known:
                raise ValueError(f"cannot reshape {list(s)} to {dims}")
            return tuple(numel // known if d == -1 else d for d in dims)
        if known != numel:
            raise ValueError(f"cannot reshape {list(s)} ({numel} elements) to {dims} ({known} elements)")
        return tuple(dims)

    return Transform({"reshape": dims}, shape, _same_dtype, lambda t: t.reshape(dims))


def _cast(arg: Any, field: str) -> Transform:
    dtype = parse_dtype(arg) if isinstance(arg, str) else None
    if dtype is None:
        raise RecipeError(field, f"cast expects a dtype such as bfloat16, got {arg!r}")
    return Transform({"cast": dtype}, lambda s: s, lambda _: dtype, lambda t: t.to(torch_dtype(dtype)))


def _scale(arg: Any, field: str) -> Transform:
    if isinstance(arg, bool) or not isinstance(arg, (int, float)):
        raise RecipeError(field, f"scale expects a number, got {arg!r}")
    factor = float(arg)

    def dtype(d: str) -> str:
        if not is_floating(d):
            raise ValueError(f"scale needs a floating-point tensor, got {d}")
        return d

    return Transform({"scale": factor}, lambda s: s, dtype, lambda t: t * factor)


_BUILDERS: dict[str, Callable[[Any, str], Transform]] = {
    "transpose": _transpose,
    "permute": _permute,
    "reshape": _reshape,
    "cast": _cast,
    "scale": _scale,
}


def compile_transform(spec: Any, field: str) -> Transform:
    """A recipe's (or plan's) transform spec -> Transform, or a RecipeError naming ``field``."""
    if isinstance(spec, str):
        name, arg = spec, None
    elif isinstance(spec, dict) and len(spec) == 1:
        ((name, arg),) = spec.items()
    else:
        raise RecipeError(field, f"expected a transform name or a one-key mapping, got {spec!r}")
    if name not in _BUILDERS:
        close = difflib.get_close_matches(str(name), list(_BUILDERS), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(_BUILDERS)}"
        raise RecipeError(field, f"unknown transform '{name}' ({hint})")
    return _BUILDERS[name](arg, field)


def compile_transforms(specs: Sequence[Any], field: str) -> tuple[Transform, ...]:
    return tuple(compile_transform(spec, f"{field}[{i}]") for i, spec in enumerate(specs))


def describe(spec: Any) -> str:
    """``{"scale": 0.5}`` -> ``scale(0.5)``, for plan lines."""
    if isinstance(spec, str):
        return spec
    ((name, arg),) = spec.items()
    return f"{name}({arg})"
