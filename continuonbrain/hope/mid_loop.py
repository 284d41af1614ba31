"""Mid loop: the world model over tokens and actions, and the context source for the Fast loop.

The Mid loop runs at a slower rate than the Fast loop: one Mid step every ``mid_every``
control steps (10 = 200 ms at 50 Hz). Training uses the same rate: a window of ``L``
control steps (the 1-10 s Mid windows of :mod:`continuonbrain.rlds.windows`) is
subsampled at ticks ``t_j = j * mid_every`` and actions are averaged over each interval
``[t_j, t_{j+1})`` (the mean action of a padded interval counts real steps only). At Mid
step ``j``::

    input_j  = [embed(tokens(obs_{t_j})), mean action of the interval that just ended]
    y_j      = SSMStack(input_0 .. input_j)            (carried state at inference)
    context_j = tanh(W_c y_j)                           -> the Fast loop, for ticks t_j .. t_{j+1}-1
    logits_j = head(y_j, mean action of the interval starting now)   -> tokens(obs_{t_{j+1}})

Conditioning the next-token head on the action *about to be taken* (rather than feeding it
through the state first) keeps the context computable before the Fast loop acts, and makes
the head a one-step world model ``p(tokens' | history, action)`` usable for imagined
rollouts (:meth:`MidLoop.imagine`): hold an action for one Mid step, sample the next tokens,
feed them back. Token logits use the input embedding table as output weights (weight tying),
which keeps the head small and the token geometry shared.

The Mid loop needs tokens: a batch either carries ``codes [B, L, n_tokens]`` already (the
trainer can tokenize once with a frozen VQ-VAE and free it) or the VQ-VAE is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from continuonbrain.hope.config import HopeConfig
from continuonbrain.hope.layers import ActionScaler, RMSNorm, as_float_tensor
from continuonbrain.hope.ssm import SSMStack, SSMState

__all__ = ["MidLoop", "MidState"]


@dataclass
class MidState:
    """Carried Mid-loop state.

    ``h``: SSM state per layer. ``y``: the last output (what :meth:`MidLoop.next_logits`
    reads), None before the first step. ``last_action``: the normalised action assumed for
    the running interval; the next :meth:`MidLoop.step` uses it as the "previous interval"
    action unless told otherwise (``prev_action``), i.e. an action is held until replaced.
    """

    h: SSMState
    last_action: Tensor
    y: Tensor | None = None


class MidLoop(nn.Module):
    """World model + context source; see the module doc."""

    def __init__(self, config: HopeConfig):
        super().__init__()
        m, v = config.mid, config.vqvae
        self.config = config
        self.every = config.mid_every
        self.n_tokens, self.codebook_size = v.n_tokens, v.codebook_size
        self.action_dim, self.context_dim = config.action_dim, m.context_dim
        e = m.token_embed_dim
        self.actions = ActionScaler(config.action_low, config.action_high)  # type: ignore[arg-type]
        self.tok_emb = nn.Embedding(v.codebook_size, e)
        self.slot_emb = nn.Parameter(torch.zeros(v.n_tokens, e))  # which of the n_tokens a code sits in
        self.in_proj = nn.Linear(v.n_tokens * e + config.action_dim, m.d_model)
        self.ssm = SSMStack(
            m.d_model, m.d_state, m.n_layers, tau_min=m.tau_min, tau_max=m.tau_max, tau_cap=m.tau_cap, dropout=m.dropout
        )
        self.norm = RMSNorm(m.d_model)
        self.ctx_proj = nn.Linear(m.d_model, m.context_dim)
        self.head_in = nn.Linear(m.d_model + config.action_dim, m.d_model)
        self.head_out = nn.Linear(m.d_model, v.n_tokens * e)
        self.tok_bias = nn.Parameter(torch.zeros(v.codebook_size))
        nn.init.normal_(self.tok_emb.weight, std=e**-0.5)

    # -- pieces --------------------------------------------------------------------------

    def _embed(self, codes: Tensor, prev_action_n: Tensor) -> Tensor:
        """``codes [..., T]`` + normalised action ``[..., A]`` -> ``[..., d_model]``."""
        tok = self.tok_emb(codes) + self.slot_emb  # [..., T, e]
        return self.in_proj(torch.cat([tok.flatten(-2), prev_action_n], dim=-1))

    def _logits(self, y: Tensor, action_n: Tensor) -> Tensor:
        """Next-token logits ``[..., T, K]`` from the output ``y`` and the action about to be held."""
        q = self.head_out(F.silu(self.head_in(torch.cat([y, action_n], dim=-1))))
        q = q.reshape(*q.shape[:-1], self.n_tokens, self.tok_emb.embedding_dim)
        return q @ self.tok_emb.weight.t() + self.tok_bias

    def _context(self, y: Tensor) -> Tensor:
        return torch.tanh(self.ctx_proj(y))

    def _check_codes(self, codes: Any) -> Tensor:
        c = torch.as_tensor(codes, device=self.tok_bias.device).long()
        if c.shape[-1] != self.n_tokens:
            raise ValueError(f"codes have {c.shape[-1]} tokens per observation, the Mid loop expects {self.n_tokens}")
        return c

    def _norm_action(self, action: Any, like: Tensor) -> Tensor:
        if action is None:
            return like.new_zeros(*like.shape[:-1], self.action_dim)
        a = as_float_tensor(action, like.device)
        if a.shape[-1] != self.action_dim:
            raise ValueError(f"action has {a.shape[-1]} dims, the Mid loop expects {self.action_dim}")
        return self.actions.normalize(a).clamp(-1.0, 1.0)

    # -- training ------------------------------------------------------------------------

    def forward(self, batch: Mapping[str, Any], vqvae: nn.Module | None = None) -> dict[str, Tensor]:
        """Teacher-forced next-token prediction over a window batch.

        ``batch``: ``action [B, L, A]`` (robot units), optional ``mask [B, L]``, and either
        ``codes [B, L, n_tokens]`` or ``observation`` (+ ``images``) with ``vqvae`` given (it
        is run without gradients). Windows must be longer than ``mid_every`` steps to contain
        a target. Returns ``loss`` (with gradient), ``token_ce`` and ``token_acc`` (detached),
        ``context [B, M, C]`` (one per Mid tick, ``M = ceil(L / mid_every)``),
        ``context_steps [B, L, C]`` (each tick's context held over its interval: what the Fast
        loop sees at each control step) and ``logits [B, M - 1, T, K]``.
        """
        actions = as_float_tensor(batch["action"], self.tok_bias.device)
        bsz, length, _ = actions.shape
        mask = batch.get("mask")
        m = (
            torch.ones(bsz, length, dtype=torch.bool, device=actions.device)
            if mask is None
            else torch.as_tensor(mask, device=actions.device).bool()
        )
        codes = batch.get("codes")
        if codes is None:
            if vqvae is None:
                raise ValueError("the batch has no 'codes': pass the trained vqvae to tokenize its observations")
            codes, _ = vqvae.encode(batch.get("observation"), batch.get("images"))  # type: ignore[operator]
        codes = self._check_codes(codes)
        if tuple(codes.shape[:2]) != (bsz, length):
            raise ValueError(f"codes cover {tuple(codes.shape[:2])} (batch, steps), the actions {(bsz, length)}")

        k = self.every
        n_mid = -(-length // k)
        pad = n_mid * k - length
        a_n = self.actions.normalize(actions).clamp(-1.0, 1.0)
        mf = F.pad(m, (0, pad)).to(a_n.dtype)  # [B, M*k]
        a_n = F.pad(a_n, (0, 0, 0, pad)) * mf[..., None]
        counts = mf.reshape(bsz, n_mid, k).sum(-1)
        interval = a_n.reshape(bsz, n_mid, k, -1).sum(2) / counts.clamp_min(1.0)[..., None]  # [B, M, A]
        prev = F.pad(interval[:, :-1], (0, 0, 1, 0))  # action of the interval that just ended
        tick_codes = codes[:, ::k]  # [B, M, T]
        tick_mask = m[:, ::k]

        y, _ = self.ssm(self._embed(tick_codes, prev), None, tick_mask)
        y = self.norm(y)
        context = self._context(y)
        logits = self._logits(y[:, :-1], interval[:, :-1])  # [B, M-1, T, K]
        target = tick_codes[:, 1:]
        valid = (tick_mask[:, 1:] & tick_mask[:, :-1])[..., None].expand_as(target)
        if bool(valid.any()):
            ce = F.cross_entropy(logits[valid], target[valid], label_smoothing=self.config.mid.label_smoothing)
            acc = (logits.argmax(-1) == target)[valid].float().mean()
        else:  # no (tick, next tick) pair inside the window
            ce = logits.sum() * 0.0
            acc = ce.detach()
        return {
            "loss": ce,
            "token_ce": ce.detach(),
            "token_acc": acc.detach(),
            "context": context,
            "context_steps": context.repeat_interleave(k, dim=1)[:, :length],
            "logits": logits,
        }

    def loss(self, batch: Mapping[str, Any], vqvae: nn.Module | None = None) -> dict[str, Tensor]:
        """Same as :meth:`forward` (the uniform training verb of every HOPE component)."""
        return self.forward(batch, vqvae)

    # -- inference -----------------------------------------------------------------------

    def init_state(self, batch_size: int = 1) -> MidState:
        dev = self.tok_bias.device
        return MidState(self.ssm.init_state(batch_size, dev), torch.zeros(batch_size, self.action_dim, device=dev))

    def step(self, codes: Any, state: MidState | None = None, prev_action: Any = None) -> tuple[Tensor, MidState]:
        """One Mid tick: ``codes [B, T]`` of the current observation -> ``(context [B, C], state)``.

        ``prev_action [B, A]`` (robot units) is the mean action of the interval that just
        ended; None uses ``state.last_action`` (zeros for a fresh state, as at an episode start).
        """
        c = self._check_codes(codes)
        state = state if state is not None else self.init_state(c.shape[0])
        prev = state.last_action if prev_action is None else self._norm_action(prev_action, state.last_action)
        y, h = self.ssm.step(self._embed(c, prev), state.h)
        y = self.norm(y)
        return self._context(y), MidState(h=h, last_action=prev, y=y)

    def next_logits(self, state: MidState, action: Any) -> Tensor:
        """Logits ``[B, T, K]`` of the tokens one Mid step ahead if ``action [B, A]`` is held."""
        if state.y is None:
            raise ValueError("next_logits needs a state that has seen at least one step")
        return self._logits(state.y, self._norm_action(action, state.last_action))

    def predict_next(
        self, codes: Any, action: Any, state: MidState | None = None, prev_action: Any = None
    ) -> tuple[Tensor, MidState]:
        """World-model step: observe ``codes [B, T]``, then predict the next tokens under ``action``.

        Returns ``(logits [B, T, K], state)``; the state remembers ``action`` as the one held,
        so a chain of ``predict_next`` calls needs no ``prev_action``.
        """
        _, state = self.step(codes, state, prev_action)
        logits = self.next_logits(state, action)
        state.last_action = self._norm_action(action, state.last_action)
        return logits, state

    @torch.no_grad()
    def imagine(
        self,
        codes: Any,
        actions: Any = None,
        *,
        horizon: int | None = None,
        policy: Callable[[int, Tensor, Tensor], Tensor] | None = None,
        state: MidState | None = None,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> dict[str, Any]:
        """Roll the world model forward from ``codes [B, T]`` for ``horizon`` Mid steps.

        Actions come from ``actions [B, H, A]`` (open loop, robot units) or from
        ``policy(j, codes_j, context_j) -> action [B, A]`` (closed loop). ``temperature`` 0
        takes the most likely tokens, > 0 samples. Returns ``codes [B, H + 1, T]`` (the
        start included), ``actions [B, H, A]``, ``logits [B, H, T, K]``, ``context [B, H, C]``
        and the final ``state``.
        """
        cur = self._check_codes(codes)
        if actions is not None:
            acts = as_float_tensor(actions, cur.device)
            horizon = acts.shape[1] if horizon is None else min(horizon, acts.shape[1])
        elif policy is None or horizon is None:
            raise ValueError("imagine needs actions [B, H, A], or a policy and a horizon")
        seq, logit_seq, ctx_seq, act_seq = [cur], [], [], []
        for j in range(int(horizon)):  # type: ignore[arg-type]
            ctx, state = self.step(cur, state)
            a = acts[:, j] if actions is not None else as_float_tensor(policy(j, cur, ctx), cur.device)  # type: ignore[misc]
            logits = self.next_logits(state, a)
            state.last_action = self._norm_action(a, state.last_action)
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1)
                cur = torch.multinomial(probs.reshape(-1, self.codebook_size), 1, generator=generator)
                cur = cur.reshape(logits.shape[:-1])
            else:
                cur = logits.argmax(-1)
            seq.append(cur)
            logit_seq.append(logits)
            ctx_seq.append(ctx)
            act_seq.append(a)
        return {
            "codes": torch.stack(seq, 1),
            "actions": torch.stack(act_seq, 1) if act_seq else cur.new_zeros(cur.shape[0], 0, self.action_dim).float(),
            "logits": torch.stack(logit_seq, 1) if logit_seq else None,
            "context": torch.stack(ctx_seq, 1) if ctx_seq else None,
            "state": state,
        }
