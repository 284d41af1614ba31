"""VQ-VAE observation tokenizer: raw robot observations -> a few discrete codes and back.

The Mid loop (the world model) reasons over discrete tokens: predicting a categorical over a
codebook is a well-posed, multi-modal next-step target, and imagined rollouts are then just
sequences of tokens decoded back to observations. This module learns those tokens.

* Vector observations go through an MLP, images (``uint8 [H, W, C]``) through a small strided
  conv net; for dict observations both feature vectors are concatenated before the latent
  projection, so one set of tokens describes the whole observation.
* Each observation becomes ``n_tokens`` vectors of ``code_dim`` floats, each snapped to the
  nearest entry of one shared codebook (product quantisation): 4 tokens of 256 codes can
  tell apart far more states than one code of 256.
* The codebook is learned by exponential moving averages of the encoder outputs assigned to
  each code (van den Oord et al. 2017, appendix; Razavi et al. 2019), with Laplace smoothing
  of the cluster sizes. EMA codebooks train more stably than a codebook loss, and they need
  no optimiser state. Codes unused for ``dead_code_steps`` training updates are restarted at
  random encoder outputs of the current batch, which keeps the codebook from collapsing onto
  a few codes (codebook perplexity is reported so that collapse is visible).
* Gradients reach the encoder through the straight-through estimator
  (``z_e + sg(z_q - z_e)``), plus the commitment loss ``beta * ||z_e - sg(z_q)||^2``.
* Observations are standardised by a :class:`~continuonbrain.hope.layers.Normalizer` fitted
  from data (:meth:`VQVAE.fit_normalizer`) and saved with the weights, so callers pass raw
  robot units; images are scaled from ``[0, 255]`` to ``[-1, 1]``.

The codebook statistics are buffers, updated only in ``train()`` mode inside
:meth:`VQVAE.forward`; :meth:`VQVAE.encode` never changes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from continuonbrain.hope.config import HopeConfig, pool_factor, pooled_size
from continuonbrain.hope.layers import Normalizer, as_float_tensor

__all__ = ["VQVAE", "DecodedObservation", "EMAQuantizer", "VQVAEOutput"]


# --------------------------------------------------------------------------- quantizer


class EMAQuantizer(nn.Module):
    """Nearest-neighbour vector quantizer with an EMA-updated codebook and dead-code restarts.

    Buffers: ``embed [K, d]`` (the codebook), ``cluster_size [K]`` and ``embed_sum [K, d]``
    (EMA statistics, ``embed = embed_sum / smoothed(cluster_size)``), ``code_age [K]``
    (training updates since each code was last used), ``initialized`` (the codebook is set
    from the first training batch, so that every code starts where the data is).
    """

    def __init__(
        self, codebook_size: int, code_dim: int, decay: float = 0.99, epsilon: float = 1e-5, dead_after: int = 50
    ):
        super().__init__()
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.decay, self.epsilon, self.dead_after = decay, epsilon, dead_after
        embed = torch.randn(codebook_size, code_dim)
        self.register_buffer("embed", embed)
        self.register_buffer("embed_sum", embed.clone())
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("code_age", torch.zeros(codebook_size))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def nearest(self, z: Tensor) -> Tensor:
        """Index of the nearest code for each row of ``z [M, d]``."""
        dist = z.pow(2).sum(1, keepdim=True) - 2 * z @ self.embed.t() + self.embed.pow(2).sum(1)[None]
        return dist.argmin(1)

    @staticmethod
    def _sample_rows(z: Tensor, n: int) -> Tensor:
        """``n`` rows of ``z``: distinct when there are enough, else with replacement plus jitter."""
        if z.shape[0] >= n:
            return z[torch.randperm(z.shape[0], device=z.device)[:n]].clone()
        idx = torch.randint(0, z.shape[0], (n,), device=z.device)
        return z[idx] + 0.01 * z.std() * torch.randn(n, z.shape[1], device=z.device)

    @torch.no_grad()
    def _init_from(self, z: Tensor) -> None:
        rows = self._sample_rows(z, self.codebook_size)
        self.embed.copy_(rows)
        self.embed_sum.copy_(rows)
        self.cluster_size.fill_(1.0)
        self.code_age.zero_()
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, z: Tensor, codes: Tensor, counts: Tensor) -> int:
        """One EMA step on the batch assignment; returns how many dead codes were restarted."""
        g = self.decay
        sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, z)
        self.cluster_size.mul_(g).add_(counts, alpha=1 - g)
        self.embed_sum.mul_(g).add_(sums, alpha=1 - g)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.epsilon) / (total + self.codebook_size * self.epsilon) * total
        self.embed.copy_(self.embed_sum / smoothed[:, None])
        self.code_age.add_(1.0)
        self.code_age[counts > 0] = 0.0
        dead = (self.code_age >= self.dead_after).nonzero().flatten()
        if dead.numel():
            rows = self._sample_rows(z, dead.numel())
            self.embed[dead] = rows
            self.embed_sum[dead] = rows
            self.cluster_size[dead] = 1.0
            self.code_age[dead] = 0.0
        return int(dead.numel())

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``z [M, d]`` -> ``(z_q [M, d] (no gradient path), codes [M], stats)``.

        In training mode the codebook is initialised from the first batch and then EMA-updated
        on every call. ``stats``: ``perplexity`` (``exp`` of the entropy of this batch's code
        histogram: 1 when one code is used, ``K`` when all are used equally), ``codes_used``,
        ``dead_restarts``.
        """
        restarts = 0
        if self.training and not bool(self.initialized):
            self._init_from(z.detach())
        codes = self.nearest(z.detach())
        counts = torch.bincount(codes, minlength=self.codebook_size).to(z.dtype)
        if self.training:
            restarts = self._ema_update(z.detach(), codes, counts)
        z_q = F.embedding(codes, self.embed)
        p = counts / counts.sum().clamp_min(1.0)
        perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
        stats = {
            "perplexity": perplexity,
            "codes_used": (counts > 0).sum().to(z.dtype),
            "dead_restarts": torch.tensor(float(restarts)),
        }
        return z_q, codes, stats


# --------------------------------------------------------------------------- nets


def _mlp(d_in: int, hidden: int, n_hidden: int) -> tuple[nn.Module, int]:
    """``n_hidden`` Linear+SiLU layers; returns the module and its output width."""
    if n_hidden == 0:
        return nn.Identity(), d_in
    layers: list[nn.Module] = []
    for i in range(n_hidden):
        layers += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.SiLU()]
    return nn.Sequential(*layers), hidden


def conv_sizes(size: int, n_convs: int) -> list[int]:
    """Spatial sizes through ``n_convs`` stride-2 convs (kernel 4, padding 1), input first:
    each halves rounding down (``(s + 2 - 4) // 2 + 1 == s // 2``), so any size of at least
    ``2 ** n_convs`` works; the decoder retraces the same sizes exactly."""
    sizes = [size]
    for _ in range(n_convs):
        sizes.append(sizes[-1] // 2)
    return sizes


def pool_frames(x: Tensor, factor: int) -> Tensor:
    """``[M, C, H, W]`` average-pooled by ``factor`` (edge windows partial: ceil mode)."""
    return x if factor == 1 else F.avg_pool2d(x, factor, ceil_mode=True)


class ConvEncoder(nn.Module):
    """``[M, C, H, W]`` in ``[-1, 1]`` -> ``[M, feature_dim]``; one stride-2 conv per channel count.

    Frames are first average-pooled by ``pool`` (see ``VQVAEConfig.max_image_side``). Any
    pooled ``H, W >= 2 ** len(channels)``: the convs round odd sizes down (:func:`conv_sizes`),
    and the projection is sized from the last feature map, so 64x64, 100x75 and 160x120 frames
    all work without touching the config."""

    def __init__(self, shape: tuple[int, int, int], channels: list[int], feature_dim: int, pool: int = 1):
        super().__init__()
        self.pool = pool
        h, w, c = (-(-shape[0] // pool), -(-shape[1] // pool), shape[2])
        layers: list[nn.Module] = []
        for ch in channels:
            layers += [nn.Conv2d(c, ch, 4, stride=2, padding=1), nn.SiLU()]
            c = ch
        self.convs = nn.Sequential(*layers)
        hs, ws = conv_sizes(h, len(channels)), conv_sizes(w, len(channels))
        self.proj = nn.Linear(c * hs[-1] * ws[-1], feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.encode_pooled(pool_frames(x, self.pool))

    def encode_pooled(self, x: Tensor) -> Tensor:
        """:meth:`forward` on frames already pooled by ``pool`` (``[M, C, h, w]``)."""
        return F.silu(self.proj(self.convs(x).flatten(1)))


class ConvDecoder(nn.Module):
    """``[M, d_in]`` -> ``[M, C, H, W]``: the mirror image of :class:`ConvEncoder`, each
    transposed conv given the ``output_padding`` (0 or 1) that restores the encoder's size at
    that depth, so odd sizes come back exactly."""

    def __init__(self, d_in: int, shape: tuple[int, int, int], channels: list[int]):
        super().__init__()
        h, w, c = shape
        hs, ws = conv_sizes(h, len(channels)), conv_sizes(w, len(channels))
        self.start = (channels[-1], hs[-1], ws[-1])
        self.proj = nn.Linear(d_in, channels[-1] * hs[-1] * ws[-1])
        outs = [*reversed(channels[:-1]), c]
        layers: list[nn.Module] = []
        prev = channels[-1]
        n = len(channels)
        for i, ch in enumerate(outs):
            depth = n - 1 - i  # the size this layer must produce is the encoder's input size at this depth
            pad = (hs[depth] - 2 * hs[depth + 1], ws[depth] - 2 * ws[depth + 1])
            layers.append(nn.ConvTranspose2d(prev, ch, 4, stride=2, padding=1, output_padding=pad))
            if i < len(outs) - 1:
                layers.append(nn.SiLU())
            prev = ch
        self.deconvs = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.deconvs(F.silu(self.proj(x)).reshape(-1, *self.start))


def images_to_unit(img: Tensor) -> Tensor:
    """``[..., H, W, C]`` pixels in ``[0, 255]`` (uint8 or float) -> float in ``[-1, 1]``."""
    return img.float() / 127.5 - 1.0


def checked_images(
    images: Mapping[str, Any],
    key: str,
    shape: tuple[int, int, int],
    lead: tuple[int, ...] | None,
    device: torch.device,
    *,
    expected: str,
    lead_of: str,
    to_unit: bool = True,
) -> tuple[Tensor, tuple[int, ...]]:
    """Image ``key`` of ``images`` checked and flattened -> (``[M, H, W, C]`` in ``[-1, 1]``, its
    leading dims). It must be there and end in ``shape``; its leading dims must be ``lead`` (those
    of the inputs read before it; None: it sets them). The VQVAE and the pixel encoder read their
    cameras by these rules, so a bad frame gets the same error from both; ``expected`` says what
    was expected when the image is missing, ``lead_of`` whose leading dims it had to match.
    ``to_unit=False`` keeps the pixel values (float32 in ``[0, 255]``) instead of ``[-1, 1]``."""
    if key not in images:
        raise ValueError(f"image {key!r} is missing ({expected})")
    img = torch.as_tensor(images[key])
    if tuple(img.shape[-3:]) != shape:
        raise ValueError(f"image {key!r} has shape {tuple(img.shape[-3:])}, expected [H, W, C] = {list(shape)}")
    ilead = tuple(img.shape[:-3])
    if lead is not None and ilead != lead:
        raise ValueError(f"image {key!r} has leading dims {ilead}, {lead_of} {lead}")
    flat = img.reshape(-1, *shape).to(device)
    return (images_to_unit(flat) if to_unit else flat.float()), ilead


def unit_to_uint8(img: Tensor) -> Tensor:
    return ((img + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------- model


@dataclass
class VQVAEOutput:
    """What :meth:`VQVAE.forward` returns. Leading dims ``...`` are those of the input."""

    #: Reconstructed vector observation in raw units ``[..., obs_dim]`` (None without one).
    recon: Tensor | None
    #: Reconstructed images in ``[-1, 1]``, ``[..., H, W, C]`` per image key.
    recon_images: dict[str, Tensor]
    codes: Tensor  # [..., n_tokens] long
    z_q: Tensor  # [..., n_tokens, code_dim], straight-through (gradients flow to the encoder)
    z_e: Tensor  # [..., n_tokens, code_dim]
    #: ``recon`` (state + weighted image reconstruction MSE, normalised units), ``state_recon``,
    #: ``image_recon``, ``commit``, ``loss`` (what to minimise), ``perplexity``, ``codes_used``,
    #: ``dead_restarts``. Only ``loss`` carries gradients.
    losses: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class DecodedObservation:
    observation: Tensor | None  # raw units [..., obs_dim]
    images: dict[str, Tensor]  # uint8 [..., H, W, C]


class VQVAE(nn.Module):
    """Observation tokenizer; see the module doc. Built from a :class:`HopeConfig`."""

    def __init__(self, config: HopeConfig):
        super().__init__()
        self.config = config
        c = config.vqvae
        self.obs_dim = config.obs_dim
        self.image_shapes = config.image_shape_tuples
        self.n_tokens, self.code_dim = c.n_tokens, c.code_dim
        self.normalizer = Normalizer(max(config.obs_dim, 1))
        feat = 0
        self.state_encoder: nn.Module | None = None
        if self.obs_dim:
            self.state_encoder, width = _mlp(self.obs_dim, c.hidden_dim, c.n_hidden)
            feat += width
        self.pools = {k: pool_factor(s, c.max_image_side) for k, s in self.image_shapes.items()}
        self.image_encoders = nn.ModuleDict(
            {
                k: ConvEncoder(s, list(c.conv_channels), c.image_feature_dim, self.pools[k])
                for k, s in self.image_shapes.items()
            }
        )
        feat += c.image_feature_dim * len(self.image_shapes)
        self.to_latent = nn.Linear(feat, c.n_tokens * c.code_dim)
        self.from_latent, width = _mlp(c.n_tokens * c.code_dim, c.hidden_dim, max(c.n_hidden, 1))
        self.state_decoder = nn.Linear(width, self.obs_dim) if self.obs_dim else None
        self.image_decoders = nn.ModuleDict(
            {
                k: ConvDecoder(width, pooled_size(s, c.max_image_side), list(c.conv_channels))
                for k, s in self.image_shapes.items()
            }
        )
        self.quantizer = EMAQuantizer(c.codebook_size, c.code_dim, c.decay, c.epsilon, c.dead_code_steps)

    # -- helpers -------------------------------------------------------------------------

    def _inputs(self, obs: Any, images: Mapping[str, Any] | None) -> tuple[Tensor | None, dict[str, Tensor], tuple]:
        """Check and flatten the inputs to ``[M, ...]``; returns (obs, images, leading dims)."""
        images = dict(images or {})
        lead: tuple | None = None
        x = None
        if self.obs_dim:
            if obs is None:
                raise ValueError(f"this VQVAE encodes a vector observation of {self.obs_dim} features; got None")
            x = as_float_tensor(obs, self.normalizer.mean.device)
            if x.shape[-1] != self.obs_dim:
                raise ValueError(f"observation has {x.shape[-1]} features, the VQVAE expects {self.obs_dim}")
            lead = tuple(x.shape[:-1])
            x = self.normalizer(x.reshape(-1, self.obs_dim))
        flat: dict[str, Tensor] = {}
        for key, shape in self.image_shapes.items():
            flat[key], lead = checked_images(
                images,
                key,
                shape,
                lead,
                self.normalizer.mean.device,
                expected=f"this VQVAE expects images {sorted(self.image_shapes)}",
                lead_of="the observation has",
            )
        assert lead is not None
        return x, flat, lead

    def _encode_flat(self, x: Tensor | None, images: dict[str, Tensor]) -> Tensor:
        feats = []
        if x is not None:
            assert self.state_encoder is not None
            feats.append(self.state_encoder(x))
        for key, img in images.items():
            feats.append(self.image_encoders[key](img.permute(0, 3, 1, 2)))
        z = self.to_latent(torch.cat(feats, dim=-1))
        return z.reshape(-1, self.code_dim)  # [M * n_tokens, d]

    def _decode_flat(self, z_q: Tensor) -> tuple[Tensor | None, dict[str, Tensor]]:
        """``z_q [M, n_tokens, code_dim]`` -> (normalised obs ``[M, D]``, pooled images ``[M, C, h, w]``)."""
        h = self.from_latent(z_q.reshape(-1, self.n_tokens * self.code_dim))
        obs = self.state_decoder(h) if self.state_decoder is not None else None
        return obs, {k: dec(h) for k, dec in self.image_decoders.items()}

    def _full_size(self, key: str, img: Tensor) -> Tensor:
        """Pooled ``[M, C, h, w]`` -> ``[M, H, W, C]`` at the frame's own size (nearest)."""
        h, w, _ = self.image_shapes[key]
        if self.pools[key] > 1:
            img = F.interpolate(img, size=(h, w), mode="nearest")
        return img.permute(0, 2, 3, 1)

    def decode_latent(self, z_q: Tensor) -> tuple[Tensor | None, dict[str, Tensor]]:
        """``z_q [..., n_tokens, code_dim]`` -> (normalised obs ``[..., D]``, images in ``[-1, 1]``
        at their full ``[H, W, C]``)."""
        lead = tuple(z_q.shape[:-2])
        obs, pooled = self._decode_flat(z_q)
        imgs = {k: self._full_size(k, v).reshape(*lead, *self.image_shapes[k]) for k, v in pooled.items()}
        return (obs.reshape(*lead, self.obs_dim) if obs is not None else None), imgs

    # -- verbs ---------------------------------------------------------------------------

    def forward(self, obs: Any = None, images: Mapping[str, Any] | None = None) -> VQVAEOutput:
        """Encode, quantise (updating the codebook in training mode), decode, and score."""
        x, flat, lead = self._inputs(obs, images)
        z_e = self._encode_flat(x, flat)
        z_q, codes, stats = self.quantizer(z_e)
        commit = F.mse_loss(z_e, z_q.detach())
        z_st = z_e + (z_q - z_e).detach()
        obs_hat, pooled_hat = self._decode_flat(z_st.reshape(-1, self.n_tokens, self.code_dim))
        zero = z_e.new_zeros(())
        state_recon = F.mse_loss(obs_hat, x) if x is not None and obs_hat is not None else zero
        image_recon = zero
        if flat:  # scored at the pooled size the encoder sees
            targets = {k: pool_frames(v.permute(0, 3, 1, 2), self.pools[k]) for k, v in flat.items()}
            image_recon = sum(F.mse_loss(pooled_hat[k], targets[k]) for k in flat) / len(flat)
        imgs_hat = {k: self._full_size(k, v) for k, v in pooled_hat.items()}
        recon = state_recon + self.config.vqvae.image_loss_weight * image_recon
        loss = recon + self.config.vqvae.commitment * commit
        losses = {
            "loss": loss,
            "recon": recon.detach(),
            "state_recon": state_recon.detach(),
            "image_recon": image_recon.detach(),
            "commit": commit.detach(),
            **stats,
        }
        return VQVAEOutput(
            recon=self.normalizer.inverse(obs_hat).reshape(*lead, self.obs_dim) if obs_hat is not None else None,
            recon_images={k: v.reshape(*lead, *self.image_shapes[k]) for k, v in imgs_hat.items()},
            codes=codes.reshape(*lead, self.n_tokens),
            z_q=z_st.reshape(*lead, self.n_tokens, self.code_dim),
            z_e=z_e.reshape(*lead, self.n_tokens, self.code_dim),
            losses=losses,
        )

    def loss(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Training verb on a window batch (``observation [B, L, D]``, optional ``images`` and
        ``mask [B, L]``): padded steps are dropped before encoding so they neither train the
        nets nor pull codes towards the zero padding. Returns ``forward(...).losses``."""
        obs = batch.get("observation") if self.obs_dim else None
        images = dict(batch.get("images") or {})
        mask = batch.get("mask")
        if mask is not None:
            m = torch.as_tensor(mask).bool()
            if obs is not None:
                obs = as_float_tensor(obs)[m]
            images = {k: torch.as_tensor(images[k])[m] for k in self.image_shapes if k in images}
        return self.forward(obs, images).losses

    @torch.no_grad()
    def encode(self, obs: Any = None, images: Mapping[str, Any] | None = None) -> tuple[Tensor, Tensor]:
        """``(codes [..., n_tokens] long, z_q [..., n_tokens, code_dim])``; never updates the codebook."""
        x, flat, lead = self._inputs(obs, images)
        z_e = self._encode_flat(x, flat)
        codes = self.quantizer.nearest(z_e)
        z_q = F.embedding(codes, self.quantizer.embed)
        return codes.reshape(*lead, self.n_tokens), z_q.reshape(*lead, self.n_tokens, self.code_dim)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> DecodedObservation:
        """Codes ``[..., n_tokens]`` -> observation in raw units and ``uint8`` images."""
        z_q = F.embedding(torch.as_tensor(codes).long(), self.quantizer.embed)
        obs, imgs = self.decode_latent(z_q)
        return DecodedObservation(
            observation=self.normalizer.inverse(obs) if obs is not None else None,
            images={k: unit_to_uint8(v) for k, v in imgs.items()},
        )

    def fit_normalizer(self, obs: Tensor | np.ndarray, mask: Tensor | np.ndarray | None = None) -> None:
        """Set the observation mean/std from data ``[..., obs_dim]`` (raw units)."""
        if self.obs_dim:
            self.normalizer.fit(obs, mask)
