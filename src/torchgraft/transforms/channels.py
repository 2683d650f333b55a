"""``adapt_channels``: a stem convolution trained on RGB, for 1 or N input channels,
as timm's ``adapt_input_conv`` does. One channel sums the RGB filters, so a grey image
gives the response the RGB model gives to that image copied into R, G and B. N channels
repeat the filters and rescale by in/N, so N/in copies of an input give the same
response as the input did."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from torchgraft.core.errors import RecipeError
from torchgraft.transforms.core import Shape, Transform, floating_only, is_int, working


def adapt_channels(arg: Any, field: str) -> Transform:
    if not is_int(arg) or arg < 1:
        raise RecipeError(field, f"adapt_channels expects the number of input channels (a positive integer), got {arg!r}")
    n = arg

    def shape(s: Shape) -> Shape:
        if len(s) < 2 or s[1] == 0:
            raise ValueError(f"adapt_channels needs a weight [out, in, ...] with in > 0, got shape {list(s)}")
        return (s[0], n, *s[2:])

    def fn(t: torch.Tensor) -> torch.Tensor:
        channels = t.shape[1]
        if channels == n:
            return t
        w = working(t)
        if n == 1:
            w = w.sum(dim=1, keepdim=True)
        else:
            w = w.repeat(1, math.ceil(n / channels), *([1] * (t.dim() - 2)))[:, :n] * (channels / n)
        return w.to(t.dtype)

    return Transform({"adapt_channels": n}, shape, floating_only("adapt_channels"), fn)
