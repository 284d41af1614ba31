"""The data side of HOPE training (the seed trainer and the LoRA adapter trainer): episodes in,
model shapes, Mid context and training batches out.

Observations are vectors, or dicts whose state keys are concatenated (in ``state_keys``
order) into the state vector and whose image keys (``uint8 [H, W, C]`` frames) go to the
VQ-VAE's conv encoder. Which component sees what follows what the brain does when it acts
(:meth:`~continuonbrain.hope.brain.HopeBrain.act`), so that training matches inference:

* the VQ-VAE learns to tokenize the state vector *and* the images (single-step windows),
* the Mid loop learns over the tokens of both (its windows carry the images, tokenized by
  the frozen VQ-VAE),
* the Fast loop sees the state vector, every tick each frame's continuous conv feature
  (``fast.image_features``, see :mod:`~continuonbrain.hope.pixels`): from its own encoder,
  trained with it on the action loss, reading pooled frames cached once per episode
  (:func:`with_pixel_frames`), or, from a frozen encoder, features computed once per frame
  (:func:`with_image_features`); and, with ``fast.use_context``, the Mid loop's context, which
  :func:`with_mid_context` computes from the state *and* the images, as the brain does every
  ``mid_every`` ticks.

Shapes (``obs_dim``, ``action_dim``, ``image_shapes``), the control rate, the key lists and
the action bounds an episode declares (``capabilities.action_space``) are taken from the first
readable episode (:func:`infer_model_config`) unless the
config's ``model`` block gives them, so a config need not repeat what the data already says.

Shared by both trainers: :func:`with_mid_context` (the frozen Mid loop's context, what an
adapter of a seed with a Mid loop trains on too), :func:`batches` (the one endless batch loop,
resumable), and the state-vector rule, which is :meth:`HopeConfig.vector_keys
<continuonbrain.hope.config.HopeConfig.vector_keys>`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from continuonbrain.hope import HopeConfig
from continuonbrain.hope.pixels import POOLED_PREFIX
from continuonbrain.rlds import Episode
from continuonbrain.rlds.episode import ImageColumn
from continuonbrain.rlds.windows import FastWindowDataset, MidTrajectoryDataset, WindowDataset, open_source
from continuonbrain.trainer.episode_mix import EpochSource, ImaginedMix, read_source, training_stream
from continuonbrain.trainer.train_config import ComponentTrainConfig, SequentialConfig

__all__ = [
    "TrainingError",
    "batches",
    "detect_image_keys",
    "episode_source",
    "held_out_ids",
    "infer_model_config",
    "make_dataset",
    "observation_keys",
    "sample_image_features",
    "sample_observations",
    "with_codes",
    "with_image_features",
    "with_mid_context",
    "with_pixel_frames",
]

#: Frames tokenized at once when computing an episode's Mid context: bounds the conv
#: encoder's activations (and the decoded frames) whatever the episode's length.
TOKENIZE_CHUNK = 256


class TrainingError(RuntimeError):
    """Training cannot start or go on (no data, a missing dependency, a bad config)."""


def held_out_ids(cfg: SequentialConfig) -> list[str]:
    """The ids of the episodes the seed trainer holds out for the promotion gate, oldest first:
    the newest ``holdout_episodes`` real episodes of ``rlds_dir`` (read order: names grow with
    time; imagined episodes never count), but never more than a quarter of the real episodes,
    so a small data set still trains on most of it (a set of 3 holds out none). One pass over
    the directory with frames left encoded; only ids are kept."""
    if cfg.holdout_episodes <= 0:
        return []
    ids: list[str] = []
    for ep in read_source(cfg.rlds_dir, on_error="skip")():  # the training stream warns about bad ones
        if not ep.is_imagined:
            ids.append(ep.episode_id)
    n = min(cfg.holdout_episodes, len(ids) // 4)
    return ids[len(ids) - n :] if n else []


def episode_source(cfg: SequentialConfig, held_out: Collection[str] = ()) -> EpochSource:
    """A re-iterable stream of the good episodes (bad ones are skipped with a warning): those
    of ``rlds_dir`` with the imagined ones of ``imagined_rlds_dirs`` mixed in, imagined
    episodes (from either) capped at ``max_imagined_fraction`` (see
    :mod:`~continuonbrain.trainer.episode_mix`). Episodes of ``rlds_dir`` whose id is in
    ``held_out`` (:func:`held_out_ids`) are never in it: they are the gate's."""
    try:
        if not held_out:
            return training_stream(cfg.rlds_dir, cfg.imagined_rlds_dirs, cfg.max_imagined_fraction, cfg.seed)
        exclude, real = frozenset(held_out), read_source(cfg.rlds_dir)

        def trained_on() -> Iterator[Episode]:
            return (ep for ep in real() if ep.episode_id not in exclude)

        imagined = [read_source(p) for p in cfg.imagined_rlds_dirs]
        return ImaginedMix(trained_on, imagined, cfg.max_imagined_fraction, seed=cfg.seed)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None


# --- shapes and keys -------------------------------------------------------------------------


def _state_keys(cfg: SequentialConfig, model: dict[str, Any], obs: Any, image_keys: list[str]) -> list[str] | None:
    """The dict keys of the state vector (None for vector observations): the config's
    ``observation_keys``, else the model block's ``state_keys``, else every numeric key that is
    not an image, sorted. Set explicitly in the HopeConfig so the brain builds, at inference,
    the same vector the trainer built."""
    if not isinstance(obs, dict):
        return None
    if cfg.observation_keys is not None:
        keys = list(cfg.observation_keys)
    elif model.get("state_keys"):
        keys = list(model["state_keys"])
    else:
        keys = sorted(k for k, v in obs.items() if isinstance(v, np.ndarray) and k not in image_keys)
    given = model.get("state_keys")
    if given and list(given) != keys:
        raise TrainingError(
            f"model.state_keys {list(given)} differ from observation_keys {keys}: the brain would build another "
            "state vector at inference than the one it was trained on"
        )
    return keys


def _image_shapes(first: Episode, image_keys: list[str], given: dict[str, Any]) -> dict[str, list[int]]:
    """``[H, W, C]`` per image key: the model block's, else the first episode's first frame."""
    obs = first.observation
    shapes = {k: list(v) for k, v in given.items()}
    for key in image_keys:
        if not isinstance(obs, dict):
            raise TrainingError(f"image_keys {image_keys} need dict observations; the episodes' are vectors")
        if key not in obs:
            raise TrainingError(f"image key {key!r} is not in the observation (has {sorted(obs)})")
        if key in shapes:
            continue
        col = obs[key]
        frame = col[0].decode() if isinstance(col, ImageColumn) else np.asarray(col[0])
        if frame.ndim != 3:
            raise TrainingError(f"image {key!r} has frames of shape {list(frame.shape)}; expected [H, W, C]")
        shapes[key] = [int(s) for s in frame.shape]
    return shapes


def _declared_action_bounds(first: Episode, action_dim: int) -> dict[str, list[float]]:
    """``action_low``/``action_high`` from the episode's ``capabilities.action_space`` (what
    ``sim collect`` records from a gymnasium Box), when it declares finite bounds of the right
    size; else nothing (the model's default ``[-1, 1]``). The policy's output is squashed into
    its bounds, so a model of Pendulum's ``[-2, 2]`` torque left at ``[-1, 1]`` could never
    give the torques it was shown."""
    space = (first.metadata.get("capabilities") or {}).get("action_space")
    if not isinstance(space, dict):
        return {}
    low, high = space.get("low"), space.get("high")
    try:
        lo, hi = np.asarray(low, dtype=np.float64).reshape(-1), np.asarray(high, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return {}
    if lo.shape != (action_dim,) or hi.shape != (action_dim,) or not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        return {}
    if not (lo < hi).all():
        return {}
    return {"action_low": lo.tolist(), "action_high": hi.tolist()}


def detect_image_keys(first: Episode) -> list[str]:
    """The camera keys of a dict observation, sorted: encoded frames (an
    :class:`~continuonbrain.rlds.episode.ImageColumn`) or ``uint8 [T, H, W, C]`` arrays. So the
    shipped config trains a camera robot (a Donkeycar tub's ``cam/image_array``) with no
    ``image_keys`` set; ``model.image_keys: []`` turns this off."""
    obs = first.observation
    if not isinstance(obs, dict):
        return []
    found = []
    for key, col in obs.items():
        if isinstance(col, ImageColumn) or (
            isinstance(col, np.ndarray) and col.dtype == np.uint8 and col.ndim == 4 and col.shape[-1] in (1, 3, 4)
        ):
            found.append(key)
    return sorted(found)


def infer_model_config(cfg: SequentialConfig, source: Callable[[], Iterator[Episode]]) -> HopeConfig:
    """HopeConfig from the config's ``model`` block, with shapes, keys, rate and action bounds taken from the data."""
    first = next(iter(source()), None)
    if first is None:
        raise TrainingError(f"no readable episodes in {cfg.rlds_dir}")
    model = dict(cfg.model)
    given_images = list(model.get("image_keys") or [])
    if cfg.image_keys and given_images and given_images != list(cfg.image_keys):
        raise TrainingError(f"model.image_keys {given_images} differ from image_keys {list(cfg.image_keys)}")
    image_keys = list(cfg.image_keys) or given_images
    if not image_keys and "image_keys" not in model:  # the data's cameras, unless model.image_keys says []
        image_keys = detect_image_keys(first)
    keys = _state_keys(cfg, model, first.observation, image_keys)
    model.setdefault("obs_dim", int(first.observation_vector(keys).shape[1]))
    model.setdefault("action_dim", int(first.action_vector(cfg.action_keys).shape[1]))
    if cfg.action_keys is None and "action_low" not in model and "action_high" not in model:
        model.update(_declared_action_bounds(first, model["action_dim"]))
    model.setdefault("control_hz", float(first.control_hz))
    if keys is not None and (keys or image_keys):
        model.setdefault("state_keys", keys)
    if image_keys:
        model["image_keys"] = image_keys
        model["image_shapes"] = _image_shapes(first, image_keys, model.get("image_shapes") or {})
    try:
        hope_cfg = HopeConfig.from_dict(model)
    except ValueError as exc:
        raise TrainingError(f"the model config (the 'model' block plus what the data says) is invalid: {exc}") from None
    if (
        hope_cfg.obs_dim == 0
        and hope_cfg.context_dim == 0
        and hope_cfg.fast_image_dim == 0
        and "fast_loop" in cfg.order
    ):
        raise TrainingError(
            "the observations have no state vector (only images), the Fast loop reads no image features "
            "(model.fast.image_features=false) and does not use the Mid loop's context "
            "(model.fast.use_context=false): it would see nothing. Turn image_features or use_context on, "
            "or add numeric state keys to the observations"
        )
    return hope_cfg


def observation_keys(cfg: SequentialConfig, hope_cfg: HopeConfig) -> list[str] | None:
    """The keys the data pipeline concatenates into the state vector (:meth:`HopeConfig.vector_keys`)."""
    return hope_cfg.vector_keys(cfg.observation_keys)


def sample_observations(
    cfg: SequentialConfig, source: Callable[[], Iterator[Episode]], keys: Sequence[str] | None = None
) -> np.ndarray:
    """State vectors of the first ``normalizer_episodes`` episodes, to fit the normalisers."""
    rows = []
    for i, ep in enumerate(source()):
        if i >= cfg.normalizer_episodes:
            break
        rows.append(ep.observation_vector(keys))
    return np.concatenate(rows)


# --- Mid context for the Fast loop -----------------------------------------------------------


def _frames(col: Any, start: int, stop: int) -> np.ndarray:
    """Frames ``[start, stop)`` of an image column as ``uint8 [n, H, W, C]``."""
    if isinstance(col, ImageColumn):
        return np.stack([np.asarray(col[i].decode(), np.uint8) for i in range(start, stop)])
    return np.asarray(col[start:stop], np.uint8)


def _episode_codes(
    ep: Episode, vqvae: nn.Module, obs: np.ndarray, image_keys: Sequence[str], chunk: int = TOKENIZE_CHUNK
) -> torch.Tensor:
    """The VQ-VAE codes of every step, ``[1, T, n_tokens]``, tokenized ``chunk`` frames at a
    time: decoding a whole episode's frames and running the conv encoder over all of them at
    once would hold ``T`` frames of activations, far more than a Pi can spare."""
    codes = []
    for start in range(0, len(ep), chunk):
        stop = min(start + chunk, len(ep))
        images = {k: torch.from_numpy(_frames(ep.observation[k], start, stop))[None] for k in image_keys}
        c, _ = vqvae.encode(torch.from_numpy(obs[start:stop])[None], images)  # type: ignore[operator]
        codes.append(c)
    return torch.cat(codes, dim=1)


def with_mid_context(
    source: Callable[[], Iterator[Episode]],
    vqvae: nn.Module,
    mid: nn.Module,
    keys: list[str] | None,
    keep: Callable[[int], bool] | None = None,
    image_keys: Sequence[str] = (),
    action_keys: Sequence[str] | None = None,
    chunk: int = TOKENIZE_CHUNK,
) -> EpochSource:
    """Episodes carrying the frozen Mid loop's context per control step (``extras["context"]``):
    what the Fast loop will see from the Mid loop at each tick when it runs on the robot,
    where the Mid loop reads the tokens of the state vector (``keys``) and of the images
    (``image_keys``).

    ``keep(i)`` false: episode ``i`` of the stream is passed on without a context (for data
    parallel training, the episodes of the other ranks' shards, which this rank's dataset
    skips anyway: each rank runs the Mid loop over its own share only). ``chunk``: camera frames
    tokenized at once (:data:`TOKENIZE_CHUNK`); episodes that carry their codes already
    (:func:`with_codes`, cached) are not tokenized again. The result passes the epoch on to
    ``source`` (the mixed stream depends on it)."""

    @torch.no_grad()
    def episodes(epoch: int) -> Iterator[Episode]:
        for i, ep in enumerate(open_source(source, epoch)):
            if keep is not None and not keep(i):
                yield ep
                continue
            obs = ep.observation_vector(keys)
            batch = {
                "observation": torch.from_numpy(obs)[None],
                "action": torch.from_numpy(ep.action_vector(action_keys))[None],
            }
            if "codes" in ep.extras:  # tokenized once already (with_codes)
                batch["codes"] = torch.from_numpy(np.asarray(ep.extras["codes"]))[None]
            elif image_keys:  # the Mid loop takes codes as well as observations: tokenize in chunks
                batch["codes"] = _episode_codes(ep, vqvae, obs, image_keys, chunk)
            out = mid(batch, vqvae)
            ep.extras["context"] = out["context_steps"][0].numpy()
            yield ep

    return EpochSource(episodes)


# --- image features for the Fast loop -------------------------------------------------------


def _episode_key(ep: Episode) -> tuple[str | None, str, int]:
    return (ep.source, ep.episode_id, len(ep))


def _cached_extras(
    source: Callable[[], Iterator[Episode]], compute: Callable[[Episode], dict[str, np.ndarray]]
) -> EpochSource:
    """Episodes of ``source`` carrying ``compute(ep)`` in their ``extras``, computed once per
    episode (keyed by source, id and length) and kept for every later epoch: ``compute`` must
    not change between epochs (a frozen network's output, or the pooled frames). Passes the
    epoch on."""
    cache: dict[tuple[str | None, str, int], dict[str, np.ndarray]] = {}

    def episodes(epoch: int) -> Iterator[Episode]:
        for ep in open_source(source, epoch):
            key = _episode_key(ep)
            extras = cache.get(key)
            if extras is None:
                with torch.no_grad():
                    extras = cache[key] = compute(ep)
            ep.extras.update(extras)
            yield ep

    return EpochSource(episodes)


def _chunks(ep: Episode, image_keys: Sequence[str], chunk: int) -> Iterator[tuple[int, int, dict[str, torch.Tensor]]]:
    """``(start, stop, {key: uint8 [n, H, W, C]})`` over an episode, ``chunk`` frames at a time
    (decoded only then: a whole episode's frames would not fit a Pi's memory)."""
    for start in range(0, len(ep), chunk):
        stop = min(start + chunk, len(ep))
        yield start, stop, {k: torch.from_numpy(_frames(ep.observation[k], start, stop)) for k in image_keys}


def with_image_features(
    source: Callable[[], Iterator[Episode]],
    pixels: nn.Module,
    image_keys: Sequence[str],
    chunk: int = TOKENIZE_CHUNK,
) -> EpochSource:
    """Episodes carrying the raw camera features of every step (``extras["image_features"]``,
    ``float32 [T, F]``): what a **frozen** :class:`~continuonbrain.hope.pixels.PixelEncoder`
    (``fast.pixel_encoder="vqvae_frozen"``, or a seed's encoder under an adapter) makes of
    each frame, as the brain computes it every tick. Cached per episode (``F * 4`` bytes a
    frame, 5 MB for 20,000 frames of one 64-feature camera): later epochs skip decoding and
    the conv net."""

    def compute(ep: Episode) -> dict[str, np.ndarray]:
        feats = np.empty((len(ep), pixels.dim), np.float32)  # type: ignore[arg-type]
        for start, stop, frames in _chunks(ep, image_keys, chunk):
            feats[start:stop] = pixels(frames).numpy()
        return {"image_features": feats}

    return _cached_extras(source, compute)


def with_pixel_frames(
    source: Callable[[], Iterator[Episode]],
    pixels: nn.Module,
    image_keys: Sequence[str],
    chunk: int = TOKENIZE_CHUNK,
) -> EpochSource:
    """Episodes carrying every frame pooled for the Fast loop's encoder
    (``extras[POOLED_PREFIX + key]``, ``uint8 [T, h, w, C]``, :meth:`PixelEncoder.prepare
    <continuonbrain.hope.pixels.PixelEncoder.prepare>`): what an encoder trained end to end
    reads at every step. Decoding a JPEG per frame per window at every step would cost more
    than the convs; pooled frames are cached instead (14.4 kB a 160x120 frame pooled to
    80x60: 290 MB for 20,000 frames), so each is decoded once per run."""

    def compute(ep: Episode) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for start, stop, frames in _chunks(ep, image_keys, chunk):
            for key, pooled in pixels.prepare(frames).items():  # type: ignore[operator]
                if key not in out:
                    out[key] = np.empty((len(ep), *pooled.shape[1:]), np.uint8)
                out[key][start:stop] = pooled.numpy()
        return {POOLED_PREFIX + k: v for k, v in out.items()}

    return _cached_extras(source, compute)


def with_codes(
    source: Callable[[], Iterator[Episode]],
    vqvae: nn.Module,
    keys: list[str] | None,
    image_keys: Sequence[str],
    chunk: int = TOKENIZE_CHUNK,
) -> EpochSource:
    """Episodes carrying the frozen VQ-VAE's codes of every step (``extras["codes"]``, int64
    ``[T, n_tokens]``), computed once per episode and cached (``n_tokens * 8`` bytes a frame).

    What the Mid loop trains on when observations hold images: its windows are seconds long,
    so tokenizing their frames at every step would decode and encode ``batch_size * L``
    frames per step (1,280 for 32 two-second windows at 20 Hz: minutes per hundred steps on a
    Pi) where the frozen tokenizer gives the same codes every epoch."""

    def compute(ep: Episode) -> dict[str, np.ndarray]:
        obs = ep.observation_vector(keys)
        return {"codes": _episode_codes(ep, vqvae, obs, image_keys, chunk)[0].numpy()}

    return _cached_extras(source, compute)


#: Frames per episode that fit the image feature normaliser of an encoder trained end to end
#: (evenly spaced): encoding every frame of 200 episodes would cost more than it tells.
NORMALIZER_FRAMES_PER_EPISODE = 64


def sample_image_features(
    cfg: SequentialConfig, source: Callable[[], Iterator[Episode]], pixels: nn.Module | None = None
) -> np.ndarray:
    """Raw image features of the first ``normalizer_episodes`` episodes of ``source``, to fit
    the Fast loop's feature normaliser: a :func:`with_image_features` source's features, or,
    with ``pixels``, what that (untrained) encoder makes of up to
    :data:`NORMALIZER_FRAMES_PER_EPISODE` pooled frames of each episode of a
    :func:`with_pixel_frames` source."""
    rows = []
    for i, ep in enumerate(source()):
        if i >= cfg.normalizer_episodes:
            break
        if pixels is None:
            rows.append(ep.extras["image_features"])
            continue
        n = len(ep)
        idx = np.unique(np.linspace(0, n - 1, min(n, NORMALIZER_FRAMES_PER_EPISODE)).round().astype(int))
        pooled = {k: torch.from_numpy(ep.extras[POOLED_PREFIX + k][idx]) for k in pixels.keys}  # type: ignore[union-attr]
        with torch.no_grad():
            rows.append(pixels.encode_prepared(pooled).numpy())  # type: ignore[operator]
    return np.concatenate(rows)


# --- windows ---------------------------------------------------------------------------------


def make_dataset(
    name: str,
    comp: ComponentTrainConfig,
    source: Callable[[], Iterator[Episode]],
    cfg: SequentialConfig,
    hope_cfg: HopeConfig | None = None,
    tokenized: bool = False,
) -> WindowDataset:
    """The component's windows: single steps for the VQ-VAE, Mid trajectories (1-10 s) for the
    Mid loop, short Fast windows (50-100 ms) for the Fast loop. Images are decoded only for
    the two components that tokenize them (not for the Mid loop when ``tokenized``: its source
    carries the codes, :func:`with_codes`); the Fast loop reads the state vector, the precomputed
    image features and the context (both ``extras`` columns of the episodes)."""
    keys = observation_keys(cfg, hope_cfg) if hope_cfg is not None else cfg.observation_keys
    common: dict[str, Any] = {"shuffle_buffer": comp.shuffle_buffer, "seed": cfg.seed, "observation_keys": keys}
    common["action_keys"] = cfg.action_keys
    image_keys = list(hope_cfg.image_keys) if hope_cfg is not None else []
    if name == "vqvae":  # single steps
        return FastWindowDataset(source, steps=1, stride_steps=1, pad_start=False, image_keys=image_keys, **common)
    if name == "mid_loop":  # tokenized: the episodes carry their codes (with_codes), frames are not needed
        mid_images = [] if tokenized else image_keys
        return MidTrajectoryDataset(source, length_s=comp.window_s or 2.0, image_keys=mid_images, **common)
    return FastWindowDataset(source, length_s=comp.window_s or 0.1, **common)


def batches(dataset: WindowDataset, batch_size: int, start_epoch: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """Endless (epoch, batch) stream: epochs repeat until the step budget ends training. The one
    batch loop of both trainers; resumable: after ``dataset.load_state_dict`` it continues the
    saved epoch at the saved position (pass that epoch as ``start_epoch``), given that the loop
    calls ``dataset.mark_consumed(batch)`` for every batch it trains on.

    A resumed epoch may have nothing left (the checkpoint came right after its last batch):
    the stream then goes on with the next epoch, as the uninterrupted run did.

    The loader draws from a generator of its own: every ``iter(loader)`` takes a worker base
    seed from its generator (even with ``num_workers=0``, where the seed is unused), and
    from the global torch RNG that would be one draw per epoch plus one more where a resumed
    run reopens its epoch, shifting every later dead-code restart (and dropout mask) of the
    resumed run away from the uninterrupted one's."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=0, generator=torch.Generator().manual_seed(dataset.seed)
    )
    epoch = start_epoch
    resumed = epoch == dataset.epoch and dataset.state_dict()["consumed_total"] > 0
    while True:
        if epoch != dataset.epoch:  # set_epoch rewinds: never on the epoch a resume restored
            dataset.set_epoch(epoch)
        produced = False
        for batch in loader:
            produced = True
            yield epoch, batch
        if not produced and not resumed:
            raise TrainingError("the episodes yield no training windows (are they shorter than a window?)")
        resumed = False
        epoch += 1
