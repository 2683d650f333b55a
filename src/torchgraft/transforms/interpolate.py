"""``interpolate``: resample absolute position embeddings to a new grid, as timm's
``resample_abs_pos_embed`` does (prefix tokens kept as they are, the grid resized in
float32, bicubic with antialiasing by default, an unchanged grid returned as is)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from torchgraft.core.errors import RecipeError
from torchgraft.core.fields import choice
from torchgraft.transforms.core import Shape, Transform, floating_only, is_int, options, working

# The first mode of each list is the default for that many grid dimensions.
MODES = {1: ("linear", "nearest", "nearest-exact", "area"),
         2: ("bicubic", "bilinear", "nearest", "nearest-exact", "area")}
_SMOOTH = ("linear", "bilinear", "bicubic")  # modes that take align_corners
_ANTIALIAS = ("bilinear", "bicubic")  # modes torch can antialias
OPTIONS = ("size", "mode", "prefix_tokens", "old_size", "antialias")


def interpolate(arg: Any, field: str) -> Transform:
    opts = options(arg, field, "interpolate", OPTIONS, "{size: [24, 24], mode: bicubic, prefix_tokens: 1}")
    at = f"{field}.interpolate"
    if "size" not in opts:
        raise RecipeError(f"{at}.size", "missing value (the new grid: [length] or [height, width])")
    size = _grid(opts["size"], f"{at}.size")
    old = None if opts.get("old_size") is None else _grid(opts["old_size"], f"{at}.old_size")
    if old is not None and len(old) != len(size):
        raise RecipeError(f"{at}.old_size", f"expected {len(size)} sizes like size, got {list(old)}")
    mode = choice(opts.get("mode", MODES[len(size)][0]), f"{at}.mode", MODES[len(size)])
    prefix = opts.get("prefix_tokens", 0)
    if not is_int(prefix) or prefix < 0:
        raise RecipeError(f"{at}.prefix_tokens", f"expected a number of tokens >= 0, got {prefix!r}")
    antialias = opts.get("antialias", mode in _ANTIALIAS)
    if not isinstance(antialias, bool):
        raise RecipeError(f"{at}.antialias", f"expected true or false, got {antialias!r}")
    if antialias and mode not in _ANTIALIAS:
        raise RecipeError(f"{at}.antialias", f"only bilinear and bicubic can antialias (mode is {mode})")
    spec = {"size": list(size), "mode": mode, "prefix_tokens": prefix, "antialias": antialias}
    if old is not None:
        spec["old_size"] = list(old)

    def old_grid(s: Shape) -> tuple[int, ...]:
        if len(s) < 2 or 0 in s:
            raise ValueError(f"interpolate needs a non-empty [..., positions, channels] tensor, got shape {list(s)}")
        positions = s[-2] - prefix
        tokens = "token" if prefix == 1 else "tokens"
        if positions < 1:
            raise ValueError(f"interpolate: {s[-2]} positions leave no grid after {prefix} prefix {tokens}")
        if old is not None:
            if math.prod(old) != positions:
                raise ValueError(f"interpolate: old_size {list(old)} holds {math.prod(old)} positions, "
                                 f"but the tensor has {positions} after {prefix} prefix {tokens}")
            return old
        if len(size) == 1:
            return (positions,)
        side = math.isqrt(positions)
        if side * side != positions:
            raise ValueError(f"interpolate: {positions} positions after {prefix} prefix {tokens} do not form "
                             "a square grid (set prefix_tokens, or old_size for a non-square grid)")
        return (side, side)

    def shape(s: Shape) -> Shape:
        old_grid(s)
        return (*s[:-2], prefix + math.prod(size), s[-1])

    def fn(t: torch.Tensor) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        grid = old_grid(tuple(t.shape))
        if tuple(grid) == tuple(size):
            return t
        *lead, positions, channels = t.shape
        x = working(t).reshape(-1, positions, channels)
        head, body = x[:, :prefix], x[:, prefix:]
        body = body.reshape(x.shape[0], *grid, channels).movedim(-1, 1)  # [B, C, *grid]
        extra = {"align_corners": False} if mode in _SMOOTH else {}
        if antialias:
            extra["antialias"] = True
        body = F.interpolate(body, size=tuple(size), mode=mode, **extra)
        body = body.movedim(1, -1).reshape(x.shape[0], -1, channels)
        return torch.cat([head, body], dim=1).to(t.dtype).reshape(*lead, -1, channels)

    return Transform({"interpolate": spec}, shape, floating_only("interpolate"), fn)


def _grid(value: Any, field: str) -> tuple[int, ...]:
    if (not isinstance(value, (list, tuple)) or len(value) not in (1, 2)
            or not all(is_int(v) and v >= 1 for v in value)):
        raise RecipeError(field, f"expected [length] or [height, width] (positive integers), got {value!r}")
    return tuple(value)
