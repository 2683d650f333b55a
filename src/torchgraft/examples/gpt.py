"""GPT-2 in Hugging Face's layout (``Conv1D`` weights stored [in, out]) and nanoGPT
(``nn.Linear``), at toy size: the two ends of the ``gpt2_to_nanogpt`` port.

They are the same computation, so a ported nanoGPT's logits equal GPT-2's; the port
tests check exactly that. No dropout: every forward is deterministic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchgraft.examples.layers import attention, causal_mask

# -- GPT-2, Hugging Face layout ------------------------------------------------------


class Conv1D(nn.Module):
    """Hugging Face GPT-2's linear layer: its weight is stored [in, out], the transpose of
    ``nn.Linear``'s [out, in]; this is why GPT-2 ports transpose four weights per block."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.size(-1)), self.weight).view(*x.shape[:-1], self.nf)


class GPT2Attention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, n_positions: int):
        super().__init__()
        self.n_head = n_head
        self.c_attn = Conv1D(3 * n_embd, n_embd)
        self.c_proj = Conv1D(n_embd, n_embd)
        # Older GPT-2 files carry the causal mask as the buffer `attn.bias`; ports leave it out.
        self.register_buffer("bias", causal_mask(n_positions, None).view(1, 1, n_positions, n_positions))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.c_attn(x).split(x.size(-1), dim=2)
        t = x.size(1)
        return self.c_proj(attention(q, k, v, self.n_head, self.bias[0, 0, :t, :t]))


class GPT2MLP(nn.Module):
    def __init__(self, n_embd: int):
        super().__init__()
        self.c_fc = Conv1D(4 * n_embd, n_embd)
        self.c_proj = Conv1D(n_embd, 4 * n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class GPT2Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, n_positions: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = GPT2Attention(n_embd, n_head, n_positions)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = GPT2MLP(n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    def __init__(self, vocab_size: int, n_positions: int, n_embd: int, n_layer: int, n_head: int):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(n_positions, n_embd)
        self.h = nn.ModuleList(GPT2Block(n_embd, n_head, n_positions) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


class GPT2LMHeadModel(nn.Module):
    """Keys as in Hugging Face files: ``transformer.h.{i}.attn.c_attn.weight`` [C, 3C]...
    ``lm_head`` is tied to ``transformer.wte`` and, as in those files, not saved."""

    def __init__(self, vocab_size: int = 64, n_positions: int = 16, n_embd: int = 32, n_layer: int = 2, n_head: int = 4):
        super().__init__()
        self.transformer = GPT2Model(vocab_size, n_positions, n_embd, n_layer, n_head)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.transformer(idx))


# -- nanoGPT -------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """nanoGPT's attention: one fused ``c_attn`` Linear, or (``fused_qkv=False``) three."""

    def __init__(self, n_embd: int, n_head: int, fused_qkv: bool = True):
        super().__init__()
        self.n_head, self.fused = n_head, fused_qkv
        if fused_qkv:
            self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        else:
            self.q_proj, self.k_proj, self.v_proj = (nn.Linear(n_embd, n_embd) for _ in range(3))
        self.c_proj = nn.Linear(n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            q, k, v = self.c_attn(x).split(x.size(-1), dim=2)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return self.c_proj(attention(q, k, v, self.n_head, causal_mask(x.size(1), x.device)))


class NanoMLP(nn.Module):
    def __init__(self, n_embd: int):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.c_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class NanoBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int, fused_qkv: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, fused_qkv)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = NanoMLP(n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """nanoGPT's GPT with ``nn.Linear`` layers, the head tied to the token embedding."""

    def __init__(self, vocab_size: int = 64, block_size: int = 16, n_layer: int = 2, n_head: int = 4, n_embd: int = 32,
                 fused_qkv: bool = True):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd),
            wpe=nn.Embedding(block_size, n_embd),
            h=nn.ModuleList(NanoBlock(n_embd, n_head, fused_qkv) for _ in range(n_layer)),
            ln_f=nn.LayerNorm(n_embd),
        ))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = self.transformer
        x = t.wte(idx) + t.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in t.h:
            x = block(x)
        return self.lm_head(t.ln_f(x))


__all__ = ["GPT2LMHeadModel", "NanoGPT", "Conv1D"]
