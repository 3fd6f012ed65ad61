"""ViT: conv patch embedding, cls token, learned positions, pre-LN blocks with fused-qkv SDPA."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import generator, randomize_norms


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv Linear(C, 3C) and an output projection."""

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads: int = n_heads
        self.head_dim: int = dim // n_heads
        self.qkv = nn.Linear(dim, 3 * n_heads * self.head_dim)
        self.proj = nn.Linear(n_heads * self.head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.proj(out)


class Mlp(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln1(x)); x + mlp(ln2(x))."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, n_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Patchify conv -> prepend cls token -> add position embedding -> blocks -> LN -> head(cls)."""

    def __init__(
        self,
        img_size: int = 32,
        patch: int = 4,
        dim: int = 64,
        depth: int = 4,
        n_heads: int = 4,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        n_patches = (img_size // patch) ** 2
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*[Block(dim, n_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def build() -> nn.Module:
    """ViT: 32x32 input, 4x4 patches (64 tokens + cls), dim 64, 4 heads, depth 4, 10 classes."""
    return randomize_norms(VisionTransformer())


def example_inputs() -> tuple[torch.Tensor]:
    """One 3x32x32 image."""
    return (torch.randn(1, 3, 32, 32, generator=generator()),)
