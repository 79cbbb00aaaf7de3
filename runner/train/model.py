"""The network: a residual MLP over the features, one policy logit and one value per tile.

Outputs are per tile id (28), not per local slot: a tile means the same thing in every
deal, while "local slot 3" does not. The loop gathers the mover's seven tiles from them.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from runner.oracle.rules import N_TILES

F32 = jnp.float32


class Block(nn.Module):
    hidden: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, h: jax.Array, train: bool) -> jax.Array:
        y = nn.LayerNorm(dtype=F32, param_dtype=F32)(h)
        y = nn.Dense(2 * self.hidden, dtype=F32, param_dtype=F32)(y)
        y = nn.gelu(y)
        y = nn.Dense(self.hidden, dtype=F32, param_dtype=F32)(y)
        if self.dropout > 0:
            y = nn.Dropout(self.dropout, deterministic=not train)(y)
        return h + y


class PolicyValueNet(nn.Module):
    """``x`` (B, F) float32 -> (policy logits (B, 28), values (B, 28) in units of 42 points).

    With ``dropout > 0`` and ``train=True`` the caller passes ``rngs={"dropout": key}``.
    """

    hidden: int = 512
    layers: int = 3
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        h = nn.Dense(self.hidden, dtype=F32, param_dtype=F32)(x.astype(F32))
        for _ in range(self.layers):
            h = Block(self.hidden, self.dropout)(h, train)
        h = nn.LayerNorm(dtype=F32, param_dtype=F32)(h)
        out = nn.Dense(2 * N_TILES, dtype=F32, param_dtype=F32)(h)
        return out[:, :N_TILES], out[:, N_TILES:]
