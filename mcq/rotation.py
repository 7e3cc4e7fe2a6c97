"""Rotations of linear inputs (`act_rotation`): the orthogonal A (x) B a "rotated_tensor" input
spec names (spec Q.2).

A per-tensor int8 scale is set by the input's widest channels; rotating the channels (after the
outlier channels left and smoothing divided) spreads every channel's range over the others, so
one scale fits the whole tensor better (QuaRot, Ashkboos et al. 2024, here with static scales).
The rotation is applied at run time to the activation and folded into the stored weight:
(W R^T)(R x) = W x.

The factors made here: A the identity (a block-diagonal rotation, which a reader skips), B the
normalized Sylvester Hadamard matrix of order b = min(64, the largest power of two dividing n),
with seeded random column signs: one small matrix product per rotation. On SmolLM2 W8A8KV8 this
gave the same perplexity as a dense A (a seeded random orthogonal matrix, 48 x 32 for 1536
channels) within noise at half the matrix products per decode step (CHANGELOG, session 8).
Same n, same factors: one pair per width, shared by every linear of that width.
"""
from __future__ import annotations

import numpy as np
import torch

SEED = 20261128
MAX_BLOCK = 64  # Hadamard block order: spreads over 64 channels with a [64, 64] product per token


def hadamard(n: int) -> np.ndarray:
    """Sylvester's Hadamard matrix of order n (a power of two), entries +-1."""
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def factors(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B), float32, with A (x) B orthogonal of order n; deterministic for n."""
    if n < 1:
        raise ValueError(f"rotation of {n} channels")
    b = min(MAX_BLOCK, n & -n)
    signs = np.random.default_rng([SEED, n]).choice([-1.0, 1.0], size=b)
    bm = hadamard(b) * signs[None, :] / np.sqrt(b)
    return torch.eye(n // b, dtype=torch.float32), torch.from_numpy(bm.astype(np.float32))


def matrix(rotation: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The full rotation R = A (x) B in float64 ([n, n]; for Hessians: H' = R H R^T)."""
    a, b = rotation
    return torch.kron(a.to(torch.float64).contiguous(), b.to(torch.float64).contiguous())
