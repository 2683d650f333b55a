"""BERT in Hugging Face's layout (``bert.encoder.layer.{i}.attention.self.query`` ...,
with the pre-training heads under ``cls``), and the classifier a user writes by hand:
one fused ``qkv`` projection per block and a new head. The two ends of ``bert_fused_qkv``.

The encoders are the same computation (post-LayerNorm blocks, exact GELU), so a ported
classifier's features equal BERT's sequence and pooled outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchgraft.examples.layers import attention

EPS = 1e-12  # BERT's LayerNorm epsilon


# -- BERT, Hugging Face layout -------------------------------------------------------


class BertEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, max_positions: int, type_vocab_size: int, hidden: int):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=EPS)
        # Saved in older files, an int64 buffer nothing needs to port.
        self.register_buffer("position_ids", torch.arange(max_positions).expand((1, -1)))

    def forward(self, ids: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        positions = self.position_ids[:, : ids.size(1)]
        x = self.word_embeddings(ids) + self.position_embeddings(positions) + self.token_type_embeddings(types)
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return attention(self.query(x), self.key(x), self.value(x), self.heads)


class BertSelfOutput(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=EPS)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class BertAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.self = BertSelfAttention(hidden, heads)
        self.output = BertSelfOutput(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x), x)


class BertIntermediate(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class BertOutput(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.dense = nn.Linear(intermediate, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=EPS)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class BertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int):
        super().__init__()
        self.attention = BertAttention(hidden, heads)
        self.intermediate = BertIntermediate(hidden, intermediate)
        self.output = BertOutput(hidden, intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attention(x)
        return self.output(self.intermediate(a), a)


class BertEncoder(nn.Module):
    def __init__(self, hidden: int, layers: int, heads: int, intermediate: int):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(hidden, heads, intermediate) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class BertPooler(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class BertModel(nn.Module):
    def __init__(self, vocab_size: int, max_positions: int, type_vocab_size: int, hidden: int, layers: int, heads: int,
                 intermediate: int):
        super().__init__()
        self.embeddings = BertEmbeddings(vocab_size, max_positions, type_vocab_size, hidden)
        self.encoder = BertEncoder(hidden, layers, heads, intermediate)
        self.pooler = BertPooler(hidden)

    def forward(self, ids: torch.Tensor, types: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sequence output [B, T, C], pooled output [B, C])."""
        types = torch.zeros_like(ids) if types is None else types
        x = self.encoder(self.embeddings(ids, types))
        return x, self.pooler(x)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=EPS)


class BertLMPredictionHead(nn.Module):
    """The masked-LM head; its decoder is tied to the word embeddings (not a module here)."""

    def __init__(self, hidden: int, vocab_size: int):
        super().__init__()
        self.transform = BertPredictionHeadTransform(hidden)
        self.bias = nn.Parameter(torch.zeros(vocab_size))


class BertPreTrainingHeads(nn.Module):
    def __init__(self, hidden: int, vocab_size: int):
        super().__init__()
        self.predictions = BertLMPredictionHead(hidden, vocab_size)
        self.seq_relationship = nn.Linear(hidden, 2)


class BertForPreTraining(nn.Module):
    """The layout of ``bert-base-uncased``'s checkpoint: the encoder under ``bert``, the
    pre-training heads (which a fine-tuned classifier does not use) under ``cls``."""

    def __init__(self, vocab_size: int = 100, max_positions: int = 32, type_vocab_size: int = 2, hidden: int = 32,
                 layers: int = 2, heads: int = 4, intermediate: int = 64):
        super().__init__()
        self.bert = BertModel(vocab_size, max_positions, type_vocab_size, hidden, layers, heads, intermediate)
        self.cls = BertPreTrainingHeads(hidden, vocab_size)

    def forward(self, ids: torch.Tensor, types: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.bert(ids, types)


# -- the hand-written classifier -------------------------------------------------------


class FusedBlock(nn.Module):
    """A BERT layer with q, k and v in one [3C, C] projection (rows: q, then k, then v)."""

    def __init__(self, hidden: int, heads: int, intermediate: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden, eps=EPS)
        self.ff1 = nn.Linear(hidden, intermediate)
        self.ff2 = nn.Linear(intermediate, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).split(x.size(-1), dim=-1)
        x = self.norm1(x + self.proj(attention(q, k, v, self.heads)))
        return self.norm2(x + self.ff2(F.gelu(self.ff1(x))))


class FusedQKVClassifier(nn.Module):
    """A sequence classifier: BERT's encoder with fused qkv, BERT's pooler, a new head."""

    def __init__(self, vocab_size: int = 100, max_positions: int = 32, type_vocab_size: int = 2, hidden: int = 32,
                 layers: int = 2, heads: int = 4, intermediate: int = 64, num_classes: int = 3):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, hidden)
        self.pos_emb = nn.Embedding(max_positions, hidden)
        self.type_emb = nn.Embedding(type_vocab_size, hidden)
        self.emb_norm = nn.LayerNorm(hidden, eps=EPS)
        self.blocks = nn.ModuleList(FusedBlock(hidden, heads, intermediate) for _ in range(layers))
        self.pooler = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def features(self, ids: torch.Tensor, types: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(sequence output, pooled output), as ``BertModel`` returns them."""
        types = torch.zeros_like(ids) if types is None else types
        positions = torch.arange(ids.size(1), device=ids.device)
        x = self.emb_norm(self.tok_emb(ids) + self.pos_emb(positions) + self.type_emb(types))
        for block in self.blocks:
            x = block(x)
        return x, torch.tanh(self.pooler(x[:, 0]))

    def forward(self, ids: torch.Tensor, types: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.features(ids, types)[1])


__all__ = ["BertForPreTraining", "BertModel", "FusedQKVClassifier"]
