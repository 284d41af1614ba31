"""The Fast loop's eyes: a small conv encoder of its own, read at every tick.

A camera-only robot (a Donkeycar: one 160x120 frame, ``[angle, throttle]``) gives the Fast
loop no state vector, and the Mid loop's context reaches it only every ``mid_every`` ticks,
through the bottleneck of a few quantised tokens. So the Fast loop reads the camera itself:
:class:`PixelEncoder` holds, per image key, a :class:`~continuonbrain.hope.vqvae.ConvEncoder`
of the VQ-VAE's architecture and gives its **continuous** ``image_feature_dim`` feature per
key, standardised by statistics fitted from the training frames at the start of training.

How it gets its weights is ``fast.pixel_encoder`` (decision, measured by
``bench/bench_pixel_ablation.py``, BENCHMARKS.md "Drive2d proof": trained on 15 drive2d tracks,
lap progress on 50 unseen ones):

* ``"trained"`` (default): random init, trained end to end with the SSM on the action loss,
  on frames standardised one by one (:func:`standardize_frames`, ``fast.standardize_frames``)
  and, in training, with the colour channels of half the windows shuffled
  (:func:`shuffle_channels`, ``fast.channel_shuffle``). The steering loss decides what the
  convs keep, and the road's colours cannot be what they key on. The Fast loop needs no
  VQ-VAE. 100% of the laps, 2.8 cm from the line (the expert 2.7 cm).
* ``"vqvae_finetuned"``: the trained VQ-VAE's encoder copied in (:meth:`load_from_vqvae`),
  then trained end to end, on raw frames as the VQ-VAE saw them. 98%, 4.5 cm.
* ``"vqvae_frozen"``: that copy, frozen; the features are then computed once per frame
  (:func:`~continuonbrain.trainer.hope_data.with_image_features`) and the SSM trains on
  64-float windows: the cheapest to train, and the worst driver (81%, 16 cm). The encoder was
  trained to reconstruct the frame and keeps what a reconstruction needs, not what steering
  needs.

Trained from scratch on raw frames with neither standardisation nor shuffle, the reflex left
the road on 6 of 50 tracks (91%): those whose ground had a colour no training track had.

Frames are first average-pooled to at most ``vqvae.max_image_side`` pixels a side and rounded
back to ``uint8`` (:meth:`PixelEncoder.prepare`). Training caches the pooled frames of every
episode once (14.4 kB a 160x120 frame, :func:`~continuonbrain.trainer.hope_data.with_pixel_frames`)
instead of decoding JPEGs at every step, and acting runs the same ``prepare`` on the live
frame, so the encoder sees identical inputs in both. Acting costs one conv pass per tick
(three stride-2 convs and a projection, ~5 M multiply-adds at 80x60): ``BrainService.act``
p99 about 1 ms with one torch thread (``bench/bench_camera.py``), so no numpy conv is needed.
The encoder lives in ``fast_loop.safetensors``: a Fast loop acts without any VQ-VAE.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from continuonbrain.hope.config import HopeConfig, pool_factor
from continuonbrain.hope.layers import Normalizer
from continuonbrain.hope.vqvae import ConvEncoder, checked_images, images_to_unit, pool_frames

__all__ = [
    "FEATURE_CHUNK",
    "FRAME_STD_FLOOR",
    "POOLED_PREFIX",
    "PixelEncoder",
    "shuffle_channels",
    "standardize_frames",
]

#: Name prefix of an episode's (and a window batch's) pooled frames of one image key, as the
#: trainer caches them for an end-to-end trained encoder: ``POOLED_PREFIX + key``.
POOLED_PREFIX = "pooled_frames:"

#: Frames encoded at once when featurising a whole episode: bounds the conv activations
#: (about 0.4 MB per 160x120 frame) whatever the episode's length.
FEATURE_CHUNK = 256


#: Floor of a frame's per-channel standard deviation (pixel values in ``[-1, 1]``) in
#: :func:`standardize_frames`, so a flat frame (a lens cap, a dark garage) is not blown up into noise.
FRAME_STD_FLOOR = 0.05


def standardize_frames(x: Tensor) -> Tensor:
    """``[M, C, h, w]`` -> each frame's channels shifted to mean 0 and scaled to std 1 (floored).

    The camera car's failures were colour failures: trained on 15 tracks, the reflex left the
    road on unseen ones whose ground had a colour no training track had (BENCHMARKS.md, "Pixel
    reflex"). A real camera changes exposure and white balance in the same way. Standardising
    each frame removes any per-channel gain and offset exactly, at training and when acting,
    for two reductions a frame."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True)
    return (x - mean) / (std + FRAME_STD_FLOOR)


def shuffle_channels(x: Tensor, p: float) -> Tensor:
    """``[B, ..., C]`` frames -> the same with, for each of the ``B`` samples with probability
    ``p``, the channels in a random order (all frames of a sample alike: a window stays one
    scene). Draws from torch's global RNG, which training checkpoints, so a resumed run draws
    what the uninterrupted one did."""
    b, c = x.shape[0], x.shape[-1]
    chosen = torch.rand(b, device=x.device) < p
    order = torch.argsort(torch.rand(b, c, device=x.device), dim=1)
    order = torch.where(chosen[:, None], order, torch.arange(c, device=x.device)[None])
    return x.gather(-1, order.reshape(b, *([1] * (x.dim() - 2)), c).expand_as(x))


class PixelEncoder(nn.Module):
    """Per image key a conv encoder; ``forward(images)`` -> raw features ``[..., F]``.

    ``F = len(image_keys) * vqvae.image_feature_dim``, keys in ``config.image_keys`` order.
    ``normalizer`` (fitted by :meth:`fit_normalizer`) standardises them; the Fast loop applies
    it (and its numpy export folds it into the input weights), so ``forward`` stays raw.
    Trainable unless ``fast.pixel_encoder`` is ``"vqvae_frozen"`` (see the module doc).
    """

    def __init__(self, config: HopeConfig):
        super().__init__()
        c = config.vqvae
        self.keys = list(config.image_keys)
        self.shapes = config.image_shape_tuples
        self.pools = {k: pool_factor(self.shapes[k], c.max_image_side) for k in self.keys}
        self.encoders = nn.ModuleDict(
            {
                k: ConvEncoder(self.shapes[k], list(c.conv_channels), c.image_feature_dim, self.pools[k])
                for k in self.keys
            }
        )
        self.dim = c.image_feature_dim * len(self.keys)
        self.normalizer = Normalizer(self.dim)
        self.frozen = config.fast.pixel_encoder == "vqvae_frozen"
        #: Only an encoder of its own sees standardised frames: the VQ-VAE's saw raw ones.
        self.standardize = config.fast.pixel_encoder == "trained" and config.fast.standardize_frames
        if self.frozen:
            self.requires_grad_(False)

    def load_from_vqvae(self, vqvae: nn.Module) -> None:
        """Copy the trained VQ-VAE's image encoders (the VQ-VAE is not changed)."""
        for key in self.keys:
            self.encoders[key].load_state_dict(vqvae.image_encoders[key].state_dict())  # type: ignore[index]

    def fit_normalizer(self, features: Tensor | np.ndarray) -> None:
        """Standardise from raw features ``[..., F]`` of the training frames."""
        self.normalizer.fit(features)

    def prepare(self, images: Mapping[str, Any]) -> dict[str, Tensor]:
        """``{key: uint8 [..., H, W, C]}`` -> ``{key: uint8 [..., h, w, C]}``, each frame
        average-pooled by its key's factor and rounded: what the convs read, whether the frame
        comes from the camera now or from the trainer's cache (:meth:`encode_prepared`)."""
        out, lead = {}, None
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
                to_unit=False,
            )
            pooled = pool_frames(x.permute(0, 3, 1, 2), self.pools[key]).clamp_(0, 255).round_()
            out[key] = pooled.to(torch.uint8).permute(0, 2, 3, 1).reshape(*lead, *pooled.shape[2:], pooled.shape[1])
        return out

    def encode_prepared(self, pooled: Mapping[str, Any], channel_shuffle: float = 0.0) -> Tensor:
        """``{key: uint8 [..., h, w, C]}`` (:meth:`prepare` output) -> raw features ``[..., F]``
        (float32; with gradients to the convs unless frozen). ``channel_shuffle`` (training):
        see :func:`shuffle_channels`."""
        feats, lead = [], None
        device = self.normalizer.mean.device
        for key in self.keys:
            if key not in pooled:
                raise ValueError(f"pooled frames of image {key!r} are missing (the Fast loop reads {self.keys})")
            x = torch.as_tensor(pooled[key], device=device)
            if channel_shuffle > 0:
                x = shuffle_channels(x, channel_shuffle)
            if lead is None:
                lead = tuple(x.shape[:-3])
            x = images_to_unit(x.reshape(-1, *x.shape[-3:])).permute(0, 3, 1, 2)
            if self.standardize:
                x = standardize_frames(x)
            feats.append(self.encoders[key].encode_pooled(x))
        assert lead is not None
        out = torch.cat(feats, dim=-1) if len(feats) > 1 else feats[0]
        return out.reshape(*lead, self.dim)

    def forward(self, images: Mapping[str, Any]) -> Tensor:
        """``{key: uint8 [..., H, W, C]}`` -> raw features ``[..., F]`` (float32)."""
        return self.encode_prepared(self.prepare(images))

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
