"""Transforms that move or relabel values without computing new ones: transpose,
permute, reshape, cast, scale. (cast and scale keep the layout and change values only
elementwise; they live here because they are as small.)"""

from __future__ import annotations

import math
from typing import Any

from torchgraft.core.errors import RecipeError
from torchgraft.core.tensors import parse_dtype, torch_dtype
from torchgraft.transforms.core import Shape, Transform, floating_only, int_list, is_int, same_dtype


def transpose(arg: Any, field: str) -> Transform:
    if arg is not None:
        raise RecipeError(field, "transpose takes no argument (it swaps the last two dimensions)")

    def shape(s: Shape) -> Shape:
        if len(s) < 2:
            raise ValueError(f"transpose needs at least 2 dimensions, got shape {list(s)}")
        return (*s[:-2], s[-1], s[-2])

    return Transform("transpose", shape, same_dtype, lambda t: t.transpose(-2, -1))


def permute(arg: Any, field: str) -> Transform:
    dims = int_list(arg, field, "permute")
    if sorted(dims) != list(range(len(dims))):
        raise RecipeError(field, f"permute expects a permutation of 0..{len(dims) - 1}, got {dims}")

    def shape(s: Shape) -> Shape:
        if len(s) != len(dims):
            raise ValueError(f"permute {dims} needs {len(dims)} dimensions, got shape {list(s)}")
        return tuple(s[d] for d in dims)

    return Transform({"permute": dims}, shape, same_dtype, lambda t: t.permute(*dims))


def reshape(arg: Any, field: str) -> Transform:
    dims = int_list(arg, field, "reshape")
    if sum(d == -1 for d in dims) > 1 or any(d < -1 for d in dims):
        raise RecipeError(field, f"reshape expects sizes >= 0 and at most one -1, got {dims}")

    def shape(s: Shape) -> Shape:
        numel, known = math.prod(s), math.prod(d for d in dims if d != -1)
        if -1 in dims:
            if known == 0 or numel % known:
                raise ValueError(f"cannot reshape {list(s)} to {dims}")
            return tuple(numel // known if d == -1 else d for d in dims)
        if known != numel:
            raise ValueError(f"cannot reshape {list(s)} ({numel} elements) to {dims} ({known} elements)")
        return tuple(dims)

    return Transform({"reshape": dims}, shape, same_dtype, lambda t: t.reshape(dims))


def cast(arg: Any, field: str) -> Transform:
    dtype = parse_dtype(arg) if isinstance(arg, str) else None
    if dtype is None:
        raise RecipeError(field, f"cast expects a dtype such as bfloat16, got {arg!r}")
    return Transform({"cast": dtype}, lambda s: s, lambda _: dtype, lambda t: t.to(torch_dtype(dtype)))


def scale(arg: Any, field: str) -> Transform:
    if not (is_int(arg) or isinstance(arg, float)):
        raise RecipeError(field, f"scale expects a number, got {arg!r}")
    factor = float(arg)
    return Transform({"scale": factor}, lambda s: s, floating_only("scale"), lambda t: t * factor)
