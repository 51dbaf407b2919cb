"""The masked Transformer: one token per scalar column of the joint vector.

Each token embeds its (possibly noisy) value, its identity (which column it is) and its condition
state (observed or latent); a Fourier embedding of the diffusion time is added to every token.
Pre-LayerNorm blocks attend under a per-sample boolean mask built from the edge mask, and a
per-token head reads one output per column (Gloeckler et al., "All-in-one simulation-based
inference", ICML 2024, section 3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MaskedTransformer"]


class FourierTime(nn.Module):
    """Scalar time -> ``dim`` features: fixed log-spaced sinusoids, then a small MLP."""

    def __init__(self, dim: int, n_freqs: int = 16):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(100.0), n_freqs)))
        self.mlp = nn.Sequential(nn.Linear(2 * n_freqs, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: tensor of shape (batch,) -> (batch, dim)."""
        angles = t[:, None] * self.freqs
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=-1))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block with masked multi-head self-attention."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int = 2):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model),
            nn.SiLU(),
            nn.Linear(mlp_ratio * d_model, d_model),
        )

    def forward(self, h: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """h: (batch, tokens, d_model); attn_mask: (batch, 1, tokens, tokens) bool or None."""
        B, T, D = h.shape
        q, k, v = (
            self.qkv(self.norm1(h)).view(B, T, 3, self.n_heads, D // self.n_heads).unbind(dim=2)
        )
        a = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask
        )
        h = h + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return h + self.mlp(self.norm2(h))


class MaskedTransformer(nn.Module):
    """Maps (values, time, condition mask, edge mask) to one output per token.

    Parameters
    ----------
    n_tokens : int
        Number of scalar columns of the joint vector.
    d_model, n_layers, n_heads : int
        Width, depth and number of attention heads (``d_model % n_heads == 0``).
    """

    def __init__(self, n_tokens: int, d_model: int = 64, n_layers: int = 4, n_heads: int = 4):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}).")
        self.n_tokens, self.d_model = n_tokens, d_model
        self.n_layers, self.n_heads = n_layers, n_heads
        self.value = nn.Linear(1, d_model)
        self.token_id = nn.Embedding(n_tokens, d_model)
        self.condition = nn.Embedding(2, d_model)
        self.time = FourierTime(d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def config(self) -> dict[str, int]:
        """Constructor arguments: ``MaskedTransformer(**net.config())`` builds its twin."""
        return {"n_tokens": self.n_tokens, "d_model": self.d_model, "n_layers": self.n_layers,
                "n_heads": self.n_heads}

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        observed: torch.Tensor,
        edges: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Network output for every token.

        Parameters
        ----------
        x : tensor of shape (batch, tokens)
            Token values (already scaled by the dynamics' preconditioning).
        t : tensor of shape (batch,)
            Noise feature (the dynamics' ``c_noise``, e.g. a scaled log noise level).
        observed : bool tensor of shape (batch, tokens) or (tokens,)
            Condition state of each token, True = observed.
        edges : bool tensor of shape (batch, tokens, tokens) or (tokens, tokens), optional
            ``edges[..., i, j]`` True lets token i attend to token j. None = full attention.

        Returns
        -------
        tensor of shape (batch, tokens)
        """
        B, T = x.shape
        ids = torch.arange(T, device=x.device)
        h = (
            self.value(x[..., None])
            + self.token_id(ids)
            + self.condition(observed.long().expand(B, T))
            + self.time(t)[:, None, :]
        )
        attn_mask = None
        if edges is not None:
            attn_mask = edges[:, None] if edges.ndim == 3 else edges
        for block in self.blocks:
            h = block(h, attn_mask)
        return self.head(self.norm(h)).squeeze(-1)
