"""A small Vision Transformer for 1x28x28 inputs (~0.2M parameters): 7x7 patches, 6 pre-norm blocks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Block", "SmallViT"]


class Block(nn.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)). Tokens (N, T, D) -> (N, T, D)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class SmallViT(nn.Module):
    """ViT (Dosovitskiy et al. 2021) at small scale: ``patch_embed`` (conv 7x7/7 -> 16 tokens), class token,
    learned position embedding, ``blocks.0..blocks.{depth-1}``, final ``norm`` and ``head`` on the class token.
    Input (N, C, 28, 28) normalized; output logits (N, num_classes); penultimate = the D-d class token."""

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, dim: int = 64, depth: int = 6, heads: int = 4, patch: int = 7
    ) -> None:
        super().__init__()
        n_tokens = (28 // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n_tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, T, D)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
        t = self.norm(self.blocks(t))
        return self.head(t[:, 0])
