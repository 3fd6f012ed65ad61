"""BERT-style encoder: token/position/type embeddings, separate q/k/v, masked SDPA, post-LN, pooler."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import generator, randomize_norms


class BertEmbeddings(nn.Module):
    """Sum of word, position and token-type embeddings followed by LayerNorm and dropout."""

    def __init__(self, vocab: int, hidden: int, max_pos: int, type_vocab: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(max_pos, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = nn.Dropout(0.1)
        self.register_buffer("position_ids", torch.arange(max_pos).unsqueeze(0), persistent=False)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        T = input_ids.shape[1]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        pos = self.position_ids[:, :T]
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Separate query/key/value Linears, heads via view+transpose, SDPA with a key-padding mask."""

    def __init__(self, hidden: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads: int = n_heads
        self.head_dim: int = hidden // n_heads
        inner = n_heads * self.head_dim
        self.query = nn.Linear(hidden, inner)
        self.key = nn.Linear(hidden, inner)
        self.value = nn.Linear(hidden, inner)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.query(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.key(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.value(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)


class BertLayer(nn.Module):
    """Post-LN encoder layer: LN(x + proj(attn(x))) then LN(h + out(gelu(inter(h))))."""

    def __init__(self, hidden: int, n_heads: int, intermediate: int) -> None:
        super().__init__()
        self.attention = BertSelfAttention(hidden, n_heads)
        self.attn_output = nn.Linear(n_heads * self.attention.head_dim, hidden)
        self.attn_dropout = nn.Dropout(0.1)
        self.attn_norm = nn.LayerNorm(hidden, eps=1e-12)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.act = nn.GELU()
        self.output = nn.Linear(intermediate, hidden)
        self.out_dropout = nn.Dropout(0.1)
        self.out_norm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.attn_norm(x + self.attn_dropout(self.attn_output(self.attention(x, attn_mask))))
        return self.out_norm(h + self.out_dropout(self.output(self.act(self.intermediate(h)))))


class BertForSequenceClassification(nn.Module):
    """Embeddings -> encoder layers -> pooler (Linear+tanh on token 0) -> classifier."""

    def __init__(
        self,
        vocab: int = 1000,
        hidden: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        intermediate: int = 256,
        max_pos: int = 64,
        type_vocab: int = 2,
        num_labels: int = 2,
    ) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(vocab, hidden, max_pos, type_vocab)
        self.layers = nn.ModuleList(BertLayer(hidden, n_heads, intermediate) for _ in range(n_layers))
        self.pooler = nn.Linear(hidden, hidden)
        self.pooler_act = nn.Tanh()
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(hidden, num_labels)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.embeddings(input_ids, token_type_ids)
        mask = None
        if attention_mask is not None:
            # [B, T] (1 = keep) -> boolean [B, 1, 1, T], broadcast over heads and queries.
            mask = attention_mask[:, None, None, :].bool()
        for layer in self.layers:
            x = layer(x, mask)
        pooled = self.pooler_act(self.pooler(x[:, 0]))
        return self.classifier(self.dropout(pooled))


def build() -> nn.Module:
    """BERT: vocab 1000, hidden 64, 4 heads, 2 layers, FFN 256, 2 labels."""
    return randomize_norms(BertForSequenceClassification())


def example_inputs() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(input_ids [2, 16], {"attention_mask": [2, 16]}); the second sequence has 4 padding tokens."""
    g = generator()
    input_ids = torch.randint(0, 1000, (2, 16), generator=g)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 12:] = 0
    return (input_ids, {"attention_mask": mask})
