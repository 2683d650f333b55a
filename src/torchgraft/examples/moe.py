"""A mixture-of-experts Llama with stacked experts, torchtitan's layout: each layer's
experts are three parameters ``moe.experts.w1 [E, F, D]``, ``w2 [E, D, F]``, ``w3 [E, F, D]``
(where Hugging Face files keep one ``experts.{e}.w1.weight`` per expert), the router is
``moe.router.gate``, attention is Meta's (``wq/wk/wv/wo``, rotary embeddings as complex
numbers on interleaved rows). The numbers follow Hugging Face's ``MixtralForCausalLM``:
softmax over the router's logits in float32, the top ``top_k`` renormalized, SiLU-gated
experts; so a port between the two gives the same logits.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from torchgraft.examples.llama import Attention, RMSNorm, RotaryDecoder


class Router(nn.Module):
    def __init__(self, dim: int, n_experts: int):
        super().__init__()
        self.gate = nn.Linear(dim, n_experts, bias=False)


class Experts(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, n_experts: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n_experts, hidden_dim, dim))
        self.w2 = nn.Parameter(torch.empty(n_experts, dim, hidden_dim))
        self.w3 = nn.Parameter(torch.empty(n_experts, hidden_dim, dim))
        for w in (self.w1, self.w2, self.w3):
            nn.init.normal_(w, std=0.02)


class MoE(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, n_experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.router = Router(dim, n_experts)
        self.experts = Experts(dim, hidden_dim, n_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        probs = torch.softmax(self.router.gate(x).float(), dim=-1)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        for e in range(self.experts.w1.shape[0]):
            token, slot = torch.where(chosen == e)
            if token.numel() == 0:
                continue
            h = x[token]
            y = F.linear(F.silu(F.linear(h, self.experts.w1[e])) * F.linear(h, self.experts.w3[e]), self.experts.w2[e])
            out.index_add_(0, token, (y * weights[token, slot, None]).to(out.dtype))
        return out.reshape(shape)


class MoEBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, hidden_dim: int, n_experts: int, top_k: int, norm_eps: float):
        super().__init__()
        self.attention = Attention(dim, n_heads, n_kv_heads)
        self.moe = MoE(dim, hidden_dim, n_experts, top_k)
        self.attention_norm = RMSNorm(dim, norm_eps)
        self.ffn_norm = RMSNorm(dim, norm_eps)

    def forward(self, x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), angles)
        return x + self.moe(self.ffn_norm(x))


class MoELlama(RotaryDecoder):
    """``MoELlama(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=128, hidden_dim=48, n_experts=4, top_k=2)``."""

    def __init__(self, dim: int = 32, n_layers: int = 2, n_heads: int = 4, n_kv_heads: int | None = None,
                 vocab_size: int = 128, hidden_dim: int = 48, n_experts: int = 4, top_k: int = 2,
                 norm_eps: float = 1e-5, rope_theta: float = 1e6):
        super().__init__()
        n_kv_heads = n_kv_heads or n_heads
        self.head_dim, self.rope_theta = dim // n_heads, rope_theta
        self.tok_embeddings = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList([MoEBlock(dim, n_heads, n_kv_heads, hidden_dim, n_experts, top_k, norm_eps)
                                     for _ in range(n_layers)])
        self.norm = RMSNorm(dim, norm_eps)
        self.output = nn.Linear(dim, vocab_size, bias=False)
