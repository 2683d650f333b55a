"""timm-style pre-norm transformers: a ViT (``patch_embed``, ``cls_token``, ``pos_embed``,
``blocks.{i}.attn.qkv`` ...) and a text encoder with the same blocks. Behind the
``vit_resize_pos_embed`` and ``drop_layers`` recipes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchgraft.examples.layers import attention


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).split(x.size(-1), dim=-1)
        return self.proj(attention(q, k, v, self.heads))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, H*W, C], row-major over the grid


class TinyViT(nn.Module):
    """A ViT whose position embedding is [1, 1 + (img_size/patch_size)^2, dim]: a class
    token, then the patch grid row by row, as in timm."""

    def __init__(self, img_size: int = 32, patch_size: int = 8, in_chans: int = 3, dim: int = 32, depth: int = 2,
                 heads: int = 4, num_classes: int = 10):
        super().__init__()
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid * grid, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


class TextEncoder(nn.Module):
    """A small text classifier; ``depth`` is what layer dropping changes."""

    def __init__(self, vocab_size: int = 100, max_len: int = 16, dim: int = 16, depth: int = 12, heads: int = 2,
                 num_classes: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.randn(1, max_len, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, ids: torch.Tensor, layers: list[int] | None = None) -> torch.Tensor:
        """``layers``: run only these blocks, in this order (default: all)."""
        x = self.embed(ids) + self.pos_embed[:, : ids.size(1)]
        for i in range(len(self.blocks)) if layers is None else layers:
            x = self.blocks[i](x)
        return self.head(self.norm(x).mean(dim=1))


__all__ = ["TinyViT", "TextEncoder", "Block"]
