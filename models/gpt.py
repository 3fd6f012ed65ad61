"""GPT-style decoder: learned positions, pre-LN blocks, causal SDPA, GELU MLP, tied LM head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import generator, randomize_norms


class CausalSelfAttention(nn.Module):
    """Fused c_attn Linear(C, 3C) split into q/k/v, heads via view+transpose, causal SDPA."""

    def __init__(self, n_embd: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads: int = n_heads
        self.head_dim: int = n_embd // n_heads
        self.c_attn = nn.Linear(n_embd, 3 * n_heads * self.head_dim)
        self.c_proj = nn.Linear(n_heads * self.head_dim, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.c_attn(x).split(self.n_heads * self.head_dim, dim=2)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.c_proj(y)


class MLP(nn.Module):
    """c_fc (4x) -> GELU -> c_proj."""

    def __init__(self, n_embd: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    """Pre-LN: x + attn(ln_1(x)); x + mlp(ln_2(x))."""

    def __init__(self, n_embd: int, n_heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_heads)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = MLP(n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """wte + wpe -> blocks -> ln_f -> lm_head (weight tied to wte)."""

    def __init__(
        self, vocab: int = 1000, block_size: int = 32, n_embd: int = 64, n_heads: int = 4, n_layers: int = 2
    ) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def build() -> nn.Module:
    """GPT: vocab 1000, context 32, n_embd 64, 4 heads, 2 layers, tied embeddings."""
    return randomize_norms(GPT())


def example_inputs() -> tuple[torch.Tensor]:
    """Token ids [2, 16]."""
    return (torch.randint(0, 1000, (2, 16), generator=generator()),)
