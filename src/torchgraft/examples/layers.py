"""Building blocks shared by the example models: attention written out once, so that a
source model and its port compute the same way and their outputs can be compared."""

from __future__ import annotations

import math

import torch


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head scaled dot-product attention on [B, T, C] inputs; ``mask`` is [T, T] bool (True: attend)."""
    b, t, c = q.shape
    q, k, v = (x.view(b, t, heads, c // heads).transpose(1, 2) for x in (q, k, v))
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(c // heads)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, c)


def causal_mask(t: int, device: torch.device) -> torch.Tensor:
    return torch.ones(t, t, dtype=torch.bool, device=device).tril()
