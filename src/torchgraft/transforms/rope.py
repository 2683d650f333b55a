"""``rope``: move rotary-embedding rows between the two layouts real checkpoints use.

Within each head of ``head_dim`` rows, Hugging Face pairs row ``j`` with ``j + head_dim/2``
(``rotate_half``: the two *halves*); Meta's and torchtitan's complex-number code pairs
``2j`` with ``2j+1`` (*interleaved*). ``{rope: {head_dim: 128, to: interleaved}}`` turns
halves into interleaved, ``to: halves`` the inverse. Rows are the first dimension, so
q and k projections (weights and biases) alike work for any number of heads.
"""

from __future__ import annotations

from typing import Any

from torchgraft.core.errors import RecipeError
from torchgraft.transforms.core import Shape, Transform, options, positive_int, same_dtype

LAYOUTS = ("interleaved", "halves")


def rope(arg: Any, field: str) -> Transform:
    opts = options(arg, field, "rope", ("head_dim", "to"), "{head_dim: 128, to: interleaved}")
    head_dim = positive_int(opts.get("head_dim"), f"{field}.rope.head_dim", "the rows of one head")
    if head_dim % 2:
        raise RecipeError(f"{field}.rope.head_dim", f"rope needs an even head_dim (rows pair up), got {head_dim}")
    to = opts.get("to")
    if to not in LAYOUTS:
        raise RecipeError(f"{field}.rope.to", f"expected interleaved or halves, got {to!r}")

    def shape(s: Shape) -> Shape:
        if not s or s[0] % head_dim:
            rows = f"{s[0]} rows" if s else "no rows (a scalar)"
            raise ValueError(f"rope head_dim {head_dim} does not divide the tensor's {rows}")
        return s

    # halves -> interleaved: split each head into (2, head_dim/2) and read it by columns;
    # the inverse reads (head_dim/2, 2) by columns.
    inner = (2, head_dim // 2) if to == "interleaved" else (head_dim // 2, 2)

    def fn(t):
        heads = t.shape[0] // head_dim
        return t.reshape(heads, *inner, *t.shape[1:]).transpose(1, 2).reshape(t.shape)

    return Transform({"rope": {"head_dim": head_dim, "to": to}}, shape, same_dtype, fn)
