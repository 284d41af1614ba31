"""Small building blocks shared by the HOPE components.

* :class:`RMSNorm`: written out (not ``nn.RMSNorm``) so that its exact formula, eps
  included, is the one the numpy fast path reproduces.
* :class:`Normalizer`: per-feature mean/std kept as *buffers*, so the statistics travel
  inside each component's ``.safetensors`` file and raw robot units work at inference
  without a separate preprocessing artefact.
* :class:`ActionScaler`: maps actions between robot units and ``[-1, 1]`` using the
  configured bounds; the policy's squashed output and the behaviour-cloning targets both
  live in that normalised space.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["ActionScaler", "Normalizer", "RMSNorm", "as_float_tensor"]

RMS_EPS = 1e-6


def as_float_tensor(x: Tensor | np.ndarray | Sequence[float], device: torch.device | None = None) -> Tensor:
    """A float32 tensor view of ``x`` (no copy when it already is one)."""
    if isinstance(x, Tensor):
        return x.to(device=device, dtype=torch.float32) if device is not None else x.float()
    return torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the last dimension."""

    def __init__(self, dim: int, eps: float = RMS_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Normalizer(nn.Module):
    """Per-feature standardisation with statistics fitted from data (``fit``).

    Before ``fit`` it is the identity (mean 0, std 1). The std is floored at ``min_std`` so
    that a feature that never moved in the fitting data (a constant flag, a joint at its
    limit) does not blow up to huge values the first time it moves.
    """

    def __init__(self, dim: int, min_std: float = 1e-3):
        super().__init__()
        self.min_std = min_std
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    @torch.no_grad()
    def fit(self, x: Tensor | np.ndarray, mask: Tensor | np.ndarray | None = None) -> None:
        """Set mean/std from ``x [..., dim]`` (rows where ``mask [...]`` is False are ignored)."""
        t = as_float_tensor(x)
        if t.dim() == 0 or t.shape[-1] != self.dim:
            raise ValueError(f"normalizer expects [..., {self.dim}] features, got shape {tuple(t.shape)}")
        t = t.reshape(-1, self.dim)
        if mask is not None:
            m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask).reshape(-1).bool()
            t = t[m]
        if t.shape[0] == 0:
            raise ValueError("cannot fit a normalizer on zero rows")
        t = t.double()
        self.mean.copy_(t.mean(0).float())
        std = t.std(0, unbiased=False) if t.shape[0] > 1 else torch.ones_like(t[0])
        self.std.copy_(std.clamp_min(self.min_std).float())

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: Tensor) -> Tensor:
        return x * self.std + self.mean


class ActionScaler(nn.Module):
    """Robot units <-> ``[-1, 1]`` from the configured action bounds (buffers ``center``, ``scale`` = half range)."""

    def __init__(self, low: Sequence[float], high: Sequence[float]):
        super().__init__()
        lo = torch.tensor(list(low), dtype=torch.float32)
        hi = torch.tensor(list(high), dtype=torch.float32)
        self.register_buffer("center", (hi + lo) / 2)
        self.register_buffer("scale", (hi - lo) / 2)

    def normalize(self, action: Tensor) -> Tensor:
        return (action - self.center) / self.scale

    def denormalize(self, action: Tensor) -> Tensor:
        return action * self.scale + self.center
