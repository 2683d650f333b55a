"""A Llama in Meta's layout (the reference ``llama`` code's names, torchtitan's too):
``tok_embeddings``, ``layers.{i}.attention.{wq,wk,wv,wo}``, ``feed_forward.{w1,w2,w3}``,
``attention_norm``/``ffn_norm``, ``norm``, ``output``; rotary embeddings as complex
numbers on interleaved pairs of rows. Grouped-query attention when ``n_kv_heads`` is
less than ``n_heads``. The numbers follow Hugging Face's ``LlamaForCausalLM`` (RMSNorm
in float32, SiLU gate), so a port between the two gives the same logits.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate each interleaved pair ``(2j, 2j+1)`` of ``x`` [batch, seq, heads, head_dim]."""
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * angles[None, :, None, :]).flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = rotate(self.wq(x).view(b, s, self.n_heads, self.head_dim), angles)
        k = rotate(self.wk(x).view(b, s, self.n_kv_heads, self.head_dim), angles)
        v = self.wv(x).view(b, s, self.n_kv_heads, self.head_dim)
        repeat = self.n_heads // self.n_kv_heads
        k, v = (t.repeat_interleave(repeat, dim=2) for t in (k, v))
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class FusedAttention(Attention):
    """torchtitan's fused ``wqkv``: for each key/value head in turn, the rows of the query
    heads that share it, then its key rows, then its value rows (one matmul for all three)."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int):
        super().__init__(dim, n_heads, n_kv_heads)
        del self.wq, self.wk, self.wv
        self.wqkv = nn.Linear(dim, (n_heads + 2 * n_kv_heads) * self.head_dim, bias=False)

    def forward(self, x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        repeat = self.n_heads // self.n_kv_heads
        qkv = self.wqkv(x).view(b, s, self.n_kv_heads, repeat + 2, self.head_dim)
        q = rotate(qkv[:, :, :, :repeat].reshape(b, s, self.n_heads, self.head_dim), angles)
        k = rotate(qkv[:, :, :, repeat], angles).repeat_interleave(repeat, dim=2)
        v = qkv[:, :, :, repeat + 1].repeat_interleave(repeat, dim=2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, hidden_dim: int, norm_eps: float, fused_qkv: bool = False):
        super().__init__()
        self.attention = (FusedAttention if fused_qkv else Attention)(dim, n_heads, n_kv_heads)
        self.feed_forward = FeedForward(dim, hidden_dim)
        self.attention_norm = RMSNorm(dim, norm_eps)
        self.ffn_norm = RMSNorm(dim, norm_eps)

    def forward(self, x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), angles)
        return x + self.feed_forward(self.ffn_norm(x))


class RotaryDecoder(nn.Module):
    """What Meta-layout decoders share: token embeddings, blocks taking the rotary angles,
    a final norm and the output head (set by the subclass)."""

    head_dim: int
    rope_theta: float

    def angles(self, seq_len: int, device: torch.device) -> torch.Tensor:
        freqs = 1.0 / self.rope_theta ** (torch.arange(0, self.head_dim, 2, device=device).float() / self.head_dim)
        t = torch.outer(torch.arange(seq_len, device=device).float(), freqs)
        return torch.polar(torch.ones_like(t), t)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok_embeddings(tokens)
        angles = self.angles(tokens.shape[1], tokens.device)
        for layer in self.layers:
            x = layer(x, angles)
        return self.output(self.norm(x))


class MetaLlama(RotaryDecoder):
    """``MetaLlama(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, hidden_dim=96)``;
    ``fused_qkv=True``: torchtitan's one ``attention.wqkv`` in place of ``wq/wk/wv``."""

    def __init__(self, dim: int = 64, n_layers: int = 2, n_heads: int = 4, n_kv_heads: int | None = None,
                 vocab_size: int = 128, hidden_dim: int = 96, norm_eps: float = 1e-5, rope_theta: float = 10000.0,
                 fused_qkv: bool = False):
        super().__init__()
        n_kv_heads = n_kv_heads or n_heads
        self.head_dim, self.rope_theta = dim // n_heads, rope_theta
        self.tok_embeddings = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList([TransformerBlock(dim, n_heads, n_kv_heads, hidden_dim, norm_eps, fused_qkv)
                                     for _ in range(n_layers)])
        self.norm = RMSNorm(dim, norm_eps)
        self.output = nn.Linear(dim, vocab_size, bias=False)
