"""The Fast loop's eyes: a frozen copy of the VQ-VAE's conv encoder, read at every tick.

A camera-only robot (a Donkeycar: one 160x120 frame, ``[angle, throttle]``) gives the Fast
loop no state vector, and the Mid loop's context reaches it only every ``mid_every`` ticks,
through the bottleneck of a few quantised tokens. So the Fast loop reads the camera itself:
:class:`PixelEncoder` holds, per image key, the same :class:`~continuonbrain.hope.vqvae.ConvEncoder`
as the VQ-VAE, with the trained VQ-VAE's weights copied in (:meth:`PixelEncoder.load_from_vqvae`)
and frozen, and gives its **continuous, unquantised** ``image_feature_dim`` feature per key,
standardised by statistics fitted from the training frames.

Why a frozen copy of the VQ-VAE's encoder (decision, measured in BENCHMARKS.md "Pixel reflex"):

* Cheap to train: the encoder is frozen, so the Fast loop's training encodes every frame of
  the data **once** (:func:`~continuonbrain.trainer.hope_data.with_image_features`, cached
  per episode) and the SSM then trains on windows of 64-float features, as fast as on a
  state vector. End-to-end fine-tuning would run the conv net forwards and backwards on every
  frame of every window of every step, about 100x the Fast loop's training cost on a Pi.
* Cheap to act: one conv pass per tick on the pooled frame (three stride-2 convs and a
  projection, ~5 M multiply-adds at 80x60 from 160x120): ``BrainService.act`` p50 0.62 ms,
  p99 1.06 ms with one torch thread (``bench/bench_camera.py``), so a numpy conv was not
  needed.
* Self-contained: the copy lives in ``fast_loop.safetensors``, so a Fast loop acts without
  the VQ-VAE and never silently reads features from a VQ-VAE retrained after it.
* The VQ-VAE is trained first anyway (the Mid loop's tokenizer), to reconstruct the whole
  frame: its features keep what a steering policy needs (where the lane lines are), because a
  reconstruction that lost them would be far off.

Measured on drive2d (21k expert frames, 20 unseen tracks, BENCHMARKS.md "Pixel reflex"):
the shipped config reaches 88.8% of the expert's lap progress (71-80% when a loaded machine
cut the VQ-VAE to 65-74 of its 300 steps); the Mid context on top changed nothing (79.4%
against 79.6%),
so the shipped config keeps ``fast.use_context`` off and the Mid loop is the world model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from continuonbrain.hope.config import HopeConfig, pool_factor
from continuonbrain.hope.layers import Normalizer
from continuonbrain.hope.vqvae import ConvEncoder, checked_images

__all__ = ["FEATURE_CHUNK", "PixelEncoder"]

#: Frames encoded at once when featurising a whole episode: bounds the conv activations
#: (about 0.4 MB per 160x120 frame) whatever the episode's length.
FEATURE_CHUNK = 256


class PixelEncoder(nn.Module):
    """Per image key a frozen conv encoder; ``forward(images)`` -> raw features ``[..., F]``.

    ``F = len(image_keys) * vqvae.image_feature_dim``, keys in ``config.image_keys`` order.
    ``normalizer`` (fitted by :meth:`fit_normalizer`) standardises them; the Fast loop applies
    it (and its numpy export folds it into the input weights), so ``forward`` stays raw.
    """

    def __init__(self, config: HopeConfig):
        super().__init__()
        c = config.vqvae
        self.keys = list(config.image_keys)
        self.shapes = config.image_shape_tuples
        self.encoders = nn.ModuleDict(
            {
                k: ConvEncoder(
                    self.shapes[k],
                    list(c.conv_channels),
                    c.image_feature_dim,
                    pool_factor(self.shapes[k], c.max_image_side),
                )
                for k in self.keys
            }
        )
        self.dim = c.image_feature_dim * len(self.keys)
        self.normalizer = Normalizer(self.dim)
        self.requires_grad_(False)

    def load_from_vqvae(self, vqvae: nn.Module) -> None:
        """Copy the trained VQ-VAE's image encoders (frozen here; the VQ-VAE is not changed)."""
        for key in self.keys:
            self.encoders[key].load_state_dict(vqvae.image_encoders[key].state_dict())  # type: ignore[index]

    def fit_normalizer(self, features: Tensor | np.ndarray) -> None:
        """Standardise from raw features ``[..., F]`` of the training frames."""
        self.normalizer.fit(features)

    def forward(self, images: Mapping[str, Any]) -> Tensor:
        """``{key: uint8 [..., H, W, C]}`` -> raw features ``[..., F]`` (float32)."""
        feats, lead = [], None
        device = self.normalizer.mean.device
        for key in self.keys:
            x, lead = checked_images(
                images,
                key,
                self.shapes[key],
                lead,
                device,
                expected=f"the Fast loop reads images {self.keys}",
                lead_of="the other images",
            )
            feats.append(self.encoders[key](x.permute(0, 3, 1, 2)))
        assert lead is not None
        out = torch.cat(feats, dim=-1) if len(feats) > 1 else feats[0]
        return out.reshape(*lead, self.dim)

    @torch.inference_mode()
    def features(self, images: Mapping[str, np.ndarray]) -> np.ndarray:
        """One tick: ``{key: uint8 [H, W, C]}`` -> raw features ``float32 [F]`` (what the brain
        feeds its numpy Fast loop every tick)."""
        frames = {}
        for k, v in images.items():
            a = np.asarray(v)
            frames[k] = torch.from_numpy(a if a.flags.writeable else a.copy())[None]  # read-only: copy (57 kB)
        return self.forward(frames)[0].numpy()

    @torch.inference_mode()
    def encode_frames(self, frames: Mapping[str, np.ndarray], chunk: int = FEATURE_CHUNK) -> np.ndarray:
        """A whole episode: ``{key: uint8 [T, H, W, C]}`` -> raw features ``float32 [T, F]``,
        ``chunk`` frames at a time (bounded activations)."""
        n = len(next(iter(frames.values())))
        out = np.empty((n, self.dim), np.float32)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            part = {k: torch.from_numpy(np.ascontiguousarray(v[start:stop])) for k, v in frames.items()}
            out[start:stop] = self.forward(part).numpy()
        return out
