"""Diagonal linear state-space layers (LRU / S5 style), parallel in training, O(1) at inference.

The recurrence of one layer, per state channel ``n``::

    h_t = a ⊙ h_{t-1} + γ ⊙ (B x_t)        y_t = C h_t + D ⊙ x_t

Why this shape:

* **Diagonal and linear** in ``h``: a window of ``L`` steps can be computed with a parallel
  (associative) scan in ``ceil(log2 L)`` tensor operations, which is what makes training on
  a 2-core CPU practical, and one inference step costs a handful of vector operations,
  which is what lets the Fast loop run at every control tick.
* ``a = exp(-(exp(ν) + 1/τ_cap))`` keeps every decay in ``(0, 1)`` for any real ``ν``
  (no clipping, no projection step), and ``τ_cap`` bounds the longest time constant: the
  model is trained on finite windows starting from a zero state, so an unbounded memory
  would see, at inference, states it never met in training. ``ν`` is initialised so that
  the time constants ``τ = 1/(exp(ν) + 1/τ_cap)`` are log-spaced over
  ``[tau_min, tau_max]`` steps (the "ring" initialisation of Orvieto et al., 2023, with real
  decays).
* ``γ = exp(γ_log)``, initialised to ``sqrt(1 - a²)`` (LRU's normalisation): it keeps the
  stationary variance of ``h`` equal to that of ``B x`` whatever the time constant, so slow
  channels do not dominate.

Masks: ``mask[b, t] = False`` marks a step that does not exist (the left padding of a window
that starts before its episode). Such a step is *skipped*: its input is ignored and the state
passes through unchanged (``a`` is replaced by 1 and the input by 0), and its output is 0.
A window padded at the start therefore reaches its first real step with the initial state
(zero by default), exactly like :meth:`DiagonalSSM.step` after a reset.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from continuonbrain.hope.layers import RMSNorm

__all__ = ["DiagonalSSM", "SSMBlock", "SSMStack", "linear_scan"]

SSMState = list[Tensor]


def linear_scan(log_a: Tensor, u: Tensor, h0: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """All states ``h_t = a ⊙ h_{t-1} + u_t`` of a window, by a Hillis-Steele scan.

    ``log_a`` is ``[N]`` (time-invariant decay), ``u`` is ``[B, L, N]``, ``h0`` ``[B, N]`` or
    None (zeros), ``mask`` ``[B, L]`` bool or None (see the module doc). Returns ``[B, L, N]``.

    The scan takes ``ceil(log2 L)`` rounds; round ``k`` folds every prefix with the one
    ``d = 2^k`` steps earlier. Without a mask every step has the same decay, so the combined
    decay of ``d`` steps is simply ``a^d`` and only ``u`` needs to be scanned; with a mask the
    per-step decays are scanned alongside.
    """
    _, length, _ = u.shape
    if mask is None:
        d = 1
        while d < length:
            u = u + torch.exp(log_a * d) * F.pad(u[:, :-d], (0, 0, d, 0))
            d *= 2
        if h0 is not None:
            steps = torch.arange(1, length + 1, device=u.device, dtype=u.dtype)
            u = u + torch.exp(steps[:, None] * log_a)[None] * h0[:, None, :]
        return u
    m = mask.to(u.dtype)[..., None]
    a = torch.exp(log_a) * m + (1.0 - m)  # masked steps: a = 1 (hold the state)
    u = u * m  # ... and no input
    d = 1
    while d < length:
        u = u + a * F.pad(u[:, :-d], (0, 0, d, 0))
        a = a * F.pad(a[:, :-d], (0, 0, d, 0), value=1.0)
        d *= 2
    if h0 is not None:
        u = u + a * h0[:, None, :]
    return u


class DiagonalSSM(nn.Module):
    """One diagonal linear recurrence (see the module doc); ``d_in -> d_out`` through ``d_state`` channels.

    ``B`` and ``C`` are ``nn.Linear`` layers so that LoRA adapters can target them like any
    other projection. ``D`` is a per-channel skip when ``d_in == d_out`` and a matrix otherwise.
    """

    def __init__(
        self,
        d_in: int,
        d_state: int,
        d_out: int | None = None,
        *,
        tau_min: float = 1.0,
        tau_max: float = 100.0,
        tau_cap: float | None = None,
    ):
        super().__init__()
        d_out = d_in if d_out is None else d_out
        if not 0 < tau_min <= tau_max:
            raise ValueError(f"need 0 < tau_min <= tau_max, got {tau_min}, {tau_max}")
        if tau_cap is not None and tau_cap <= tau_max:
            raise ValueError(f"tau_cap ({tau_cap}) must be > tau_max ({tau_max})")
        self.d_in, self.d_state, self.d_out = d_in, d_state, d_out
        self.lambda_min = 0.0 if tau_cap is None else 1.0 / tau_cap
        self.B = nn.Linear(d_in, d_state, bias=False)
        self.C = nn.Linear(d_state, d_out, bias=False)
        if d_in == d_out:
            self.D = nn.Parameter(torch.randn(d_out))
        else:
            self.D = nn.Parameter(torch.randn(d_out, d_in) / math.sqrt(d_in))
        taus = torch.exp(torch.linspace(math.log(tau_min), math.log(tau_max), d_state, dtype=torch.float64))
        rates = 1.0 / taus - self.lambda_min  # > 0 because tau < tau_cap
        self.nu = nn.Parameter(torch.log(rates).float())
        a = torch.exp(-1.0 / taus)
        self.gamma_log = nn.Parameter((0.5 * torch.log1p(-(a**2))).float())

    def log_decay(self) -> Tensor:
        """``log a`` ``[N]``, always ``< -lambda_min <= 0``."""
        return -(torch.exp(self.nu) + self.lambda_min)

    def decay(self) -> Tensor:
        """``a`` ``[N]``, in ``(0, 1)``."""
        return torch.exp(self.log_decay())

    def time_constants(self) -> Tensor:
        """``τ = -1 / log a`` in steps, for inspection."""
        return -1.0 / self.log_decay()

    def _skip(self, x: Tensor) -> Tensor:
        return x * self.D if self.D.dim() == 1 else x @ self.D.t()

    def forward(self, x: Tensor, h0: Tensor | None = None, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x [B, L, d_in]`` -> ``(y [B, L, d_out], h_L [B, N])`` by a parallel scan."""
        u = self.B(x) * torch.exp(self.gamma_log)
        h = linear_scan(self.log_decay(), u, h0, mask)
        y = self.C(h) + self._skip(x)
        if mask is not None:
            y = y * mask.to(y.dtype)[..., None]
        return y, h[:, -1]

    def step(self, x: Tensor, h: Tensor | None = None, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One step: ``x [B, d_in]``, ``h [B, N]`` (None: zeros) -> ``(y [B, d_out], h)``."""
        u = self.B(x) * torch.exp(self.gamma_log)
        h_new = u if h is None else self.decay() * h + u
        if mask is not None:
            keep = mask.to(x.dtype)[:, None]
            h_prev = torch.zeros_like(h_new) if h is None else h
            h_new = keep * h_new + (1 - keep) * h_prev
            return (self.C(h_new) + self._skip(x)) * keep, h_new
        return self.C(h_new) + self._skip(x), h_new


class SSMBlock(nn.Module):
    """Pre-norm residual block: ``x + Gate(SSM(RMSNorm(x)))`` with ``Gate(y) = v ⊙ tanh(g)``, ``[v, g] = W y + b``.

    The gate is the block's only nonlinearity: the recurrence itself is linear, so the
    multiplicative gate is what lets the stack compute nonlinear functions of its history.
    It costs one ``d -> 2d`` matrix product and, with ``tanh`` rather than a sigmoid, two
    elementwise operations, which matters for the per-tick cost of the Fast loop's numpy
    path (a sigmoid GLU costs one more numpy call per block, and did no better in a reach2d
    behaviour-cloning check).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int,
        *,
        tau_min: float = 1.0,
        tau_max: float = 100.0,
        tau_cap: float | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.norm = RMSNorm(d_model)
        self.ssm = DiagonalSSM(d_model, d_state, d_model, tau_min=tau_min, tau_max=tau_max, tau_cap=tau_cap)
        self.glu = nn.Linear(d_model, 2 * d_model)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def _gate(self, y: Tensor) -> Tensor:
        v, g = self.glu(y).chunk(2, dim=-1)
        return self.dropout(v * torch.tanh(g))

    def forward(self, x: Tensor, h0: Tensor | None = None, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y, h = self.ssm(self.norm(x), h0, mask)
        return x + self._gate(y), h

    def step(self, x: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y, h = self.ssm.step(self.norm(x), h)
        return x + self._gate(y), h


class SSMStack(nn.Module):
    """``n_layers`` :class:`SSMBlock` s; the state is a list with one ``[B, d_state]`` tensor per layer."""

    def __init__(
        self,
        d_model: int,
        d_state: int,
        n_layers: int,
        *,
        tau_min: float = 1.0,
        tau_max: float = 100.0,
        tau_cap: float | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.d_model, self.d_state = d_model, d_state
        self.blocks = nn.ModuleList(
            SSMBlock(d_model, d_state, tau_min=tau_min, tau_max=tau_max, tau_cap=tau_cap, dropout=dropout)
            for _ in range(n_layers)
        )

    def init_state(self, batch_size: int = 1, device: torch.device | None = None) -> SSMState:
        return [torch.zeros(batch_size, self.d_state, device=device) for _ in self.blocks]

    def forward(self, x: Tensor, state: SSMState | None = None, mask: Tensor | None = None) -> tuple[Tensor, SSMState]:
        """``x [B, L, d_model]`` -> ``(y [B, L, d_model], final state)``."""
        out: SSMState = []
        for i, block in enumerate(self.blocks):
            x, h = block(x, None if state is None else state[i], mask)
            out.append(h)
        return x, out

    def step(self, x: Tensor, state: SSMState | None = None) -> tuple[Tensor, SSMState]:
        """``x [B, d_model]`` -> ``(y [B, d_model], new state)``; ``state`` None means zeros."""
        out: SSMState = []
        for i, block in enumerate(self.blocks):
            x, h = block.step(x, None if state is None else state[i])
            out.append(h)
        return x, out
