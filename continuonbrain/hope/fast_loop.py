"""Fast loop: the reflex policy, run at every control tick (50 Hz and up).

Architecture (small on purpose, ~20k parameters by default)::

    [obs_n, img_n, context] --Linear--> SSMStack --RMSNorm--> Linear --tanh--> scale to bounds
    obs (raw units) --Normalizer--> obs_n
    images (uint8) --PixelEncoder (convs)--> features --Normalizer--> img_n

* Input: the standardised vector observation plus the Mid loop's context vector (zeros when
  there is no Mid loop), so a brain without a Mid loop still acts; train with the context
  the brain will have (``batch["context"]``, e.g. the Mid loop's ``context_steps``).
* Images (config ``image_keys`` with ``fast.image_features``): every tick, each frame's
  continuous conv feature from :class:`~continuonbrain.hope.pixels.PixelEncoder` (the Fast
  loop's own conv encoder, trained end to end on the action loss by default, saved with the
  Fast loop). Training passes pooled frames (``batch[POOLED_PREFIX + key]``), precomputed
  features of a frozen encoder (``batch["image_features"]``) or the frames (``batch["images"]``).
* The SSM stack gives the policy a short memory (velocities, contact transients) over its
  50-100 ms training windows; the time constants are capped near that window (see
  :class:`~continuonbrain.hope.config.FastLoopConfig`).
* Output: ``tanh`` then an affine map onto ``[action_low, action_high]``, so the action can
  never leave the bounds, whatever the weights. Behaviour cloning is a masked MSE in the
  normalised space where the bounds are ``[-1, 1]``, so every action dimension counts the
  same whatever its units.

Because this runs every tick, :class:`FastLoopNumpy` is the same function on plain numpy
arrays with everything that can be precomputed folded into the weights (input
standardisation, RMSNorm gains, the SSM's ``γ``, ``C`` and ``D`` and all biases): one
matrix product per layer plus one in and one out, about two dozen numpy calls per tick and
no torch dispatch (~20-30 µs on one x86 core, against ~300 µs for the torch step).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from continuonbrain.hope.config import HopeConfig
from continuonbrain.hope.layers import RMS_EPS, ActionScaler, Normalizer, RMSNorm, as_float_tensor
from continuonbrain.hope.pixels import POOLED_PREFIX, PixelEncoder
from continuonbrain.hope.ssm import SSMStack, SSMState

__all__ = ["FastLoop", "FastLoopNumpy", "FastLoopNumpyState"]


class FastLoop(nn.Module):
    """Reflex policy over ``[B, L, obs_dim]`` windows; see the module doc."""

    def __init__(self, config: HopeConfig):
        super().__init__()
        f = config.fast
        self.config = config
        self.obs_dim, self.action_dim, self.context_dim = config.obs_dim, config.action_dim, config.context_dim
        self.image_dim = config.fast_image_dim
        if self.obs_dim + self.image_dim + self.context_dim == 0:
            raise ValueError(
                "the Fast loop needs obs_dim > 0, image features (fast.image_features with image_keys) "
                "or a Mid-loop context (fast.use_context)"
            )
        self.normalizer = Normalizer(max(self.obs_dim, 1))
        self.pixels = PixelEncoder(config) if self.image_dim else None
        self.actions = ActionScaler(config.action_low, config.action_high)  # type: ignore[arg-type]
        self.in_proj = nn.Linear(self.obs_dim + self.image_dim + self.context_dim, f.d_model)
        self.ssm = SSMStack(
            f.d_model, f.d_state, f.n_layers, tau_min=f.tau_min, tau_max=f.tau_max, tau_cap=f.tau_cap, dropout=f.dropout
        )
        self.out_norm = RMSNorm(f.d_model)
        self.head = nn.Linear(f.d_model, self.action_dim)
        with torch.no_grad():  # start near the centre of the action range
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()

    # -- helpers -------------------------------------------------------------------------

    def _features(self, obs: Any, context: Any, image_features: Any = None) -> Tensor:
        """``[..., obs_dim]`` raw obs (+ raw image features ``[..., F]``, + context ``[..., C]``
        or ``[B, C]``) -> ``[..., obs_dim + F + C]``."""
        x = as_float_tensor(obs, self.in_proj.weight.device)
        if x.shape[-1] != self.obs_dim:
            raise ValueError(f"observation has {x.shape[-1]} features, the Fast loop expects {self.obs_dim}")
        parts = [self.normalizer(x)] if self.obs_dim else []
        if self.pixels is not None:
            if image_features is None:
                raise ValueError(
                    f"this Fast loop reads the camera ({self.pixels.keys}) every tick: pass image_features "
                    "(PixelEncoder output) or, in a training batch, 'images'"
                )
            feat = as_float_tensor(image_features, x.device)
            if feat.shape[:-1] != x.shape[:-1] or feat.shape[-1] != self.image_dim:
                raise ValueError(
                    f"image_features have shape {tuple(feat.shape)}, the Fast loop expects "
                    f"{(*x.shape[:-1], self.image_dim)}"
                )
            parts.append(self.pixels.normalizer(feat))
        if self.context_dim:
            if context is None:
                ctx = x.new_zeros(*x.shape[:-1], self.context_dim)
            else:
                ctx = as_float_tensor(context, x.device)
                if ctx.shape[-1] != self.context_dim:
                    raise ValueError(f"context has {ctx.shape[-1]} features, the Fast loop expects {self.context_dim}")
                if ctx.dim() == x.dim() - 1:  # one context per sequence: hold it over the window
                    ctx = ctx.unsqueeze(-2).expand(*x.shape[:-1], self.context_dim)
            parts.append(ctx)
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]

    def _head(self, y: Tensor, normalized: bool) -> Tensor:
        a = torch.tanh(self.head(self.out_norm(y)))
        return a if normalized else self.actions.denormalize(a)

    # -- verbs ---------------------------------------------------------------------------

    def forward(
        self,
        obs: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        state: SSMState | None = None,
        normalized: bool = False,
        image_features: Tensor | None = None,
    ) -> Tensor:
        """Actions ``[B, L, A]`` for a window ``obs [B, L, obs_dim]`` (raw units).

        ``context``: ``[B, L, C]`` (per step) or ``[B, C]`` (held), None for zeros. ``mask``
        ``[B, L]``: padded steps are skipped by the SSM (see :mod:`~continuonbrain.hope.ssm`).
        ``normalized=True`` returns actions in ``[-1, 1]`` instead of robot units.
        ``image_features``: raw ``[B, L, F]`` (:attr:`pixels` output), needed when the Fast
        loop reads images.
        """
        y, _ = self.ssm(self.in_proj(self._features(obs, context, image_features)), state, mask)
        return self._head(y, normalized)

    def batch_image_features(self, batch: Mapping[str, Any]) -> Tensor | None:
        """A window batch's raw image features, from (first found) ``batch["image_features"]``
        (a frozen encoder's, precomputed once per frame by the trainer), the pooled frames
        ``batch[POOLED_PREFIX + key]`` (cached by the trainer for an encoder trained end to end:
        encoded here, with gradients), or the frames ``batch["images"]``."""
        if self.pixels is None:
            return None
        feats = batch.get("image_features")
        if feats is not None:
            return as_float_tensor(feats, self.in_proj.weight.device)
        if all(POOLED_PREFIX + k in batch for k in self.pixels.keys):
            shuffle = self.config.fast.channel_shuffle if self.training else 0.0  # a frozen encoder gets features
            return self.pixels.encode_prepared({k: batch[POOLED_PREFIX + k] for k in self.pixels.keys}, shuffle)
        images = batch.get("images")
        if not images:
            raise ValueError(
                f"this Fast loop reads images {self.pixels.keys}: the batch needs 'image_features', "
                f"pooled frames ({POOLED_PREFIX}<key>) or 'images'"
            )
        return self.pixels(images)

    def loss(self, batch: Mapping[str, Any], burn_in: int = 0) -> dict[str, Tensor]:
        """Behaviour cloning on a window batch: masked MSE in normalised action units.

        ``batch``: ``observation [B, L, D]``, ``action [B, L, A]``, optional ``mask [B, L]`` and
        ``context [B, L, C]``. The first ``burn_in`` steps of each window only build up the
        state and are not scored (use it with windows longer than the Fast horizon to train
        the state on realistic histories). Targets outside the bounds are clipped to them.
        Returns ``loss`` (with gradient), ``bc_mse`` and ``abs_err`` (mean absolute error in
        robot units), both detached.
        """
        obs = as_float_tensor(batch["observation"], self.in_proj.weight.device)
        target = as_float_tensor(batch["action"], obs.device)
        mask = batch.get("mask")
        mask_t = None if mask is None else torch.as_tensor(mask, device=obs.device).bool()
        pred = self.forward(
            obs, batch.get("context"), mask_t, normalized=True, image_features=self.batch_image_features(batch)
        )
        tgt = self.actions.normalize(target).clamp(-1.0, 1.0)
        err = (pred - tgt).pow(2).mean(-1)
        w = torch.ones_like(err) if mask_t is None else mask_t.to(err.dtype)
        if burn_in > 0:
            w = w.clone()
            w[:, :burn_in] = 0.0
        denom = w.sum().clamp_min(1.0)
        loss = (err * w).sum() / denom
        abs_err = (((pred - tgt).abs() * self.actions.scale).mean(-1) * w).sum() / denom
        return {"loss": loss, "bc_mse": loss.detach(), "abs_err": abs_err.detach()}

    def init_state(self, batch_size: int = 1) -> SSMState:
        return self.ssm.init_state(batch_size, self.in_proj.weight.device)

    def step(
        self,
        obs: Any,
        state: SSMState | None = None,
        context: Any = None,
        normalized: bool = False,
        image_features: Any = None,
    ) -> tuple[Tensor, SSMState]:
        """One control tick: ``obs [B, obs_dim]`` (or ``[obs_dim]``) -> ``(action [B, A], state)``.

        ``state`` None means a fresh (zero) state. ``image_features``: raw ``[B, F]`` (or
        ``[F]``) when the Fast loop reads images. Same function as :meth:`forward` stepped one
        time step at a time.
        """
        x = as_float_tensor(obs, self.in_proj.weight.device)
        single = x.dim() == 1
        if single:
            x = x[None]
            if context is not None:
                context = as_float_tensor(context).reshape(1, -1)
            if image_features is not None:
                image_features = as_float_tensor(image_features).reshape(1, -1)
        y, state = self.ssm.step(self.in_proj(self._features(x, context, image_features)), state)
        a = self._head(y, normalized)
        return (a[0] if single else a), state

    def fit_normalizer(self, obs: Tensor | np.ndarray, mask: Tensor | np.ndarray | None = None) -> None:
        """Set the observation mean/std from data ``[..., obs_dim]`` (raw units). The image
        features have their own statistics (``pixels.fit_normalizer``)."""
        if self.obs_dim:
            self.normalizer.fit(obs, mask)

    def export_numpy(self) -> FastLoopNumpy:
        return FastLoopNumpy.from_torch(self)


# --------------------------------------------------------------------------- numpy path


def _linear_weight(layer: nn.Module) -> tuple[np.ndarray, np.ndarray | None]:
    """(W, b) of an ``nn.Linear`` or of a LoRA-wrapped one (``W + scale * B @ A``), float64."""
    if hasattr(layer, "delta_weight"):  # LoRALinear, without importing lora.py here
        base = layer.base_layer  # type: ignore[union-attr]
        w = base.weight.detach().double() + layer.delta_weight().detach().double()  # type: ignore[operator]
        b = base.bias
    else:
        w, b = layer.weight.detach().double(), layer.bias  # type: ignore[union-attr]
    return w.cpu().numpy(), None if b is None else b.detach().double().cpu().numpy()


class FastLoopNumpyState:
    """Recurrent state of :class:`FastLoopNumpy`, updated **in place** by each step.

    It owns the scratch buffers of one control stream, laid out so that every matrix
    product also applies its bias (a constant 1 at the end of each buffer) and so that the
    SSM state ``h`` of layer ``l`` lives inside layer ``l``'s input buffer. One state per
    robot / session; do not share a state between threads.
    """

    __slots__ = ("batch_size", "d_state", "image_dim", "image_view", "inp", "layers", "out", "views")

    def __init__(self, model: FastLoopNumpy, batch_size: int | None = None):
        lead = () if batch_size is None else (batch_size,)
        dt = model.dtype
        self.batch_size = batch_size
        self.d_state = model.d_state
        self.inp = np.zeros((*lead, model.obs_dim + model.image_dim + model.context_dim + 1), dt)
        self.inp[..., -1] = 1.0
        self.layers = []
        for _ in range(model.n_layers):
            buf = np.zeros((*lead, model.d_state + model.d_model + 1), dt)
            buf[..., -1] = 1.0
            self.layers.append(buf)
        self.out = np.zeros((*lead, model.d_model + 1), dt)
        self.out[..., -1] = 1.0
        self._make_views(model.obs_dim, model.image_dim)

    def _make_views(self, obs_dim: int, image_dim: int) -> None:
        """Persistent views into the buffers (slicing costs as much as a small numpy op)."""
        n = self.d_state
        self.image_dim = image_dim
        self.image_view = self.inp[..., obs_dim : obs_dim + image_dim]
        self.views = (
            self.inp[..., :obs_dim],
            [(buf, buf[..., :n], buf[..., n:-1]) for buf in self.layers],
            self.out[..., :-1],
        )

    @property
    def h(self) -> list[np.ndarray]:
        """Copies of the per-layer SSM states ``[d_state]`` (or ``[B, d_state]``)."""
        return [buf[..., : self.d_state].copy() for buf in self.layers]

    def copy(self) -> FastLoopNumpyState:
        new = object.__new__(FastLoopNumpyState)
        new.batch_size = self.batch_size
        new.d_state = self.d_state
        new.inp = self.inp.copy()
        new.layers = [b.copy() for b in self.layers]
        new.out = self.out.copy()
        new._make_views(self.views[0].shape[-1], self.image_dim)
        return new


class FastLoopNumpy:
    """The Fast loop's ``step`` on numpy arrays, with the weights pre-folded (see the module doc).

    ``step(obs, state, context=None, image_features=None)`` takes ``obs [obs_dim]`` (fastest) or ``[B, obs_dim]`` in
    raw units and returns ``(action, state)`` in robot units. The state
    (:class:`FastLoopNumpyState`, from :meth:`init_state`; None makes a fresh one) is
    updated in place and returned. The context changes only at the Mid rate, so it is part
    of the state: pass it to ``step`` (or :meth:`set_context`) when it changes and it is used
    until the next change. The weights are a read-only snapshot shared by any number of
    states; retraining the torch module does not change them (export again).
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], dtype: type = np.float32):
        self.dtype = dtype
        a = {k: np.ascontiguousarray(v, dtype=dtype) for k, v in arrays.items()}
        for v in a.values():
            v.flags.writeable = False
        self.arrays = a
        self.n_layers = int(sum(1 for k in a if k.endswith(".W")))
        self.obs_dim = int(a["obs_dim"].shape[0])
        self.image_dim = int(a["image_dim"].shape[0]) if "image_dim" in a else 0
        self.context_dim = a["in_W"].shape[0] - 1 - self.obs_dim - self.image_dim
        self.d_model = a["in_W"].shape[1]
        self.d_state = a["l0.a"].shape[0] if self.n_layers else 0
        self.action_dim = a["out_W"].shape[1]
        self._in_W = a["in_W"]
        self._layers = [(a[f"l{i}.W"], a[f"l{i}.a"]) for i in range(self.n_layers)]
        self._out_W = a["out_W"]
        self._scale, self._center = a["scale"], a["center"]
        self._affine = not (np.all(self._scale == 1.0) and np.all(self._center == 0.0))
        self._eps = float(RMS_EPS)
        self._inv_d = 1.0 / self.d_model

    @classmethod
    def from_torch(cls, fast: FastLoop, dtype: type = np.float32) -> FastLoopNumpy:
        """Fold ``fast``'s weights (LoRA deltas included) into numpy arrays.

        Per layer, with ``x_r = x / rms(x)`` and the buffer ``[a ⊙ h, x_r, 1]``, one product
        gives both the gate pre-activations ``[v, g]`` and the SSM input ``u``::

            [v, g] = (a ⊙ h) Wc + x_r (B' Wc + Ws) + b      u = x_r B'      h <- a ⊙ h + u

        with ``B' = (γ ⊙ B ⊙ norm_gain)ᵀ``, ``Wc = (W_gate C)ᵀ``, ``Ws = (W_gate diag(D ⊙ norm_gain))ᵀ``.
        """
        n_obs, n_img = fast.obs_dim, fast.image_dim
        w_in, b_in = _linear_weight(fast.in_proj)
        assert b_in is not None
        mean = fast.normalizer.mean.detach().double().cpu().numpy()[:n_obs]
        std = fast.normalizer.std.detach().double().cpu().numpy()[:n_obs]
        if fast.pixels is not None:  # the image features' standardisation folds in the same way
            mean = np.concatenate([mean, fast.pixels.normalizer.mean.detach().double().cpu().numpy()])
            std = np.concatenate([std, fast.pixels.normalizer.std.detach().double().cpu().numpy()])
        n_in = n_obs + n_img
        w_obs = w_in[:, :n_in] / std[None, :]
        # rows: observation and image features (standardisation folded in), context, bias
        in_w = np.concatenate([w_obs.T, w_in[:, n_in:].T, (b_in - w_obs @ mean)[None, :]], axis=0)
        arrays: dict[str, np.ndarray] = {"in_W": in_w, "obs_dim": np.zeros(n_obs), "image_dim": np.zeros(n_img)}
        for i, block in enumerate(fast.ssm.blocks):
            ssm = block.ssm
            g = block.norm.weight.detach().double().cpu().numpy()
            b_mat, _ = _linear_weight(ssm.B)
            c_mat, _ = _linear_weight(ssm.C)
            w_glu, b_glu = _linear_weight(block.glu)
            assert b_glu is not None
            gamma = torch.exp(ssm.gamma_log).detach().double().cpu().numpy()
            bt = (gamma[:, None] * b_mat * g[None, :]).T  # [d, N]
            wc = (w_glu @ c_mat).T  # [N, 2d]
            ws = (w_glu * (ssm.D.detach().double().cpu().numpy() * g)[None, :]).T  # [d, 2d]
            n = bt.shape[1]
            top = np.concatenate([wc, np.zeros((n, n))], axis=1)
            mid = np.concatenate([bt @ wc + ws, bt], axis=1)
            bias = np.concatenate([b_glu, np.zeros(n)])[None, :]
            arrays[f"l{i}.W"] = np.concatenate([top, mid, bias], axis=0)
            arrays[f"l{i}.a"] = ssm.decay().detach().double().cpu().numpy()
        w_out, b_out = _linear_weight(fast.head)
        assert b_out is not None
        g_out = fast.out_norm.weight.detach().double().cpu().numpy()
        arrays["out_W"] = np.concatenate([(w_out * g_out[None, :]).T, b_out[None, :]], axis=0)
        arrays["scale"] = fast.actions.scale.detach().double().cpu().numpy()
        arrays["center"] = fast.actions.center.detach().double().cpu().numpy()
        return cls(arrays, dtype)

    def init_state(self, batch_size: int | None = None, context: Any = None) -> FastLoopNumpyState:
        """A fresh (zero) state for one stream (``batch_size`` None) or ``batch_size`` streams."""
        state = FastLoopNumpyState(self, batch_size)
        if context is not None:
            self.set_context(state, context)
        return state

    def set_context(self, state: FastLoopNumpyState, context: Any) -> None:
        """Use ``context`` (``[C]`` or ``[B, C]``; None: zeros) in ``state`` from now on."""
        if not self.context_dim:
            return
        off = self.obs_dim + self.image_dim
        sl = state.inp[..., off : off + self.context_dim]
        if context is None:
            sl[...] = 0.0
            return
        if isinstance(context, Tensor):
            context = context.detach().cpu().numpy()
        ctx = np.asarray(context, dtype=self.dtype)
        if ctx.shape[-1] != self.context_dim:
            raise ValueError(f"context has {ctx.shape[-1]} features, the Fast loop expects {self.context_dim}")
        sl[...] = ctx.reshape(sl.shape) if ctx.size == sl.size else ctx

    def step(
        self,
        obs: np.ndarray,
        state: FastLoopNumpyState | None = None,
        context: Any = None,
        image_features: np.ndarray | None = None,
    ) -> tuple[np.ndarray, FastLoopNumpyState]:
        """One tick; see the class doc. ``image_features``: this tick's raw ``[F]`` (or
        ``[B, F]``) when the Fast loop reads images (required then: a frame is per tick)."""
        if state is None:
            state = self.init_state(None if np.ndim(obs) == 1 else np.shape(obs)[0])
        if context is not None:
            self.set_context(state, context)
        if self.image_dim:
            if image_features is None:
                raise ValueError("this Fast loop reads images every tick: pass image_features")
            state.image_view[...] = image_features
        obs_view, views, out_view = state.views
        obs_view[...] = obs
        x = state.inp.dot(self._in_W)
        d, d2 = self.d_model, 2 * self.d_model
        eps, inv_d = self._eps, self._inv_d
        if state.batch_size is None:
            for (w, a), (buf, h, xr) in zip(self._layers, views, strict=True):
                np.multiply(a, h, out=h)
                np.multiply(x, 1.0 / math.sqrt(float(x.dot(x)) * inv_d + eps), out=xr)
                o = buf.dot(w)
                h += o[d2:]
                t = np.tanh(o[d:d2])
                t *= o[:d]
                x += t
            np.multiply(x, 1.0 / math.sqrt(float(x.dot(x)) * inv_d + eps), out=out_view)
        else:
            for (w, a), (buf, h, xr) in zip(self._layers, views, strict=True):
                np.multiply(a, h, out=h)
                r = 1.0 / np.sqrt(np.einsum("bi,bi->b", x, x) * inv_d + eps)
                np.multiply(x, r[:, None], out=xr)
                o = buf.dot(w)
                h += o[:, d2:]
                x += o[:, :d] * np.tanh(o[:, d:d2])
            r = 1.0 / np.sqrt(np.einsum("bi,bi->b", x, x) * inv_d + eps)
            np.multiply(x, r[:, None], out=out_view)
        y = state.out.dot(self._out_W)
        np.tanh(y, out=y)
        if self._affine:
            y *= self._scale
            y += self._center
        return y, state
