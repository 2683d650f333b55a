"""``pad_rows``: grow the first dimension (a vocabulary, a classifier's classes) to
``to`` rows. Existing rows are copied; new rows come from the target's initial values
(``init``, as if the rows were kept), the mean of the existing rows (``mean``, the
usual choice for new token embeddings), or ``zeros``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from torchgraft.core.errors import RecipeError
from torchgraft.core.fields import choice
from torchgraft.transforms.core import Shape, Transform, floating_only, options, positive_int, same_dtype, working

FILLS = ("init", "mean", "zeros")  # the first is the default


def pad_rows(arg: Any, field: str) -> Transform:
    opts = options(arg, field, "pad_rows", ("to", "fill"), "{to: 15, fill: init}")
    at = f"{field}.pad_rows"
    if "to" not in opts:
        raise RecipeError(f"{at}.to", "missing value (the number of rows after padding)")
    to = positive_int(opts["to"], f"{at}.to", "a number of rows")
    fill = choice(opts.get("fill", FILLS[0]), f"{at}.fill", FILLS)

    def shape(s: Shape) -> Shape:
        if not s:
            raise ValueError("pad_rows needs at least 1 dimension, got a scalar")
        if s[0] > to:
            raise ValueError(f"pad_rows: the tensor has {s[0]} rows, more than to={to} "
                             "(take a region of the source to drop rows)")
        if fill == "mean" and s[0] == 0:
            raise ValueError("pad_rows fill: mean needs at least one row to average")
        return (to, *s[1:])

    def fn(t: torch.Tensor, initial: torch.Tensor | None = None) -> torch.Tensor:
        import torch

        rows, rest = t.shape[0], tuple(t.shape[1:])
        if fill == "zeros":
            extra = t.new_zeros((to - rows, *rest))
        elif fill == "mean":
            extra = working(t).mean(dim=0, keepdim=True).to(t.dtype).expand(to - rows, *rest)
        else:
            if initial is None or tuple(initial.shape) != (to, *rest):
                got = None if initial is None else list(initial.shape)
                raise RuntimeError(f"pad_rows fill: init got initial values of shape {got}, expected {[to, *rest]}")
            extra = initial[rows:].to(t.dtype)
        return torch.cat([t, extra], dim=0)

    dtype = floating_only("pad_rows fill: mean") if fill == "mean" else same_dtype
    return Transform({"pad_rows": {"to": to, "fill": fill}}, shape, dtype, fn, reads_initial=fill == "init")
