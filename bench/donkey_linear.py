"""Donkeycar's default pilot, the ``linear`` model, ported to PyTorch: the baseline a Donkeycar user trains.

    python bench/donkey_linear.py train --data TUBS --steps N --out DIR [--batch-size 128] [--seed 0]
    python bench/donkey_linear.py latency --model DIR --data TUBS [--calls 2000]

What is ported, from ``donkeycar/parts/keras.py`` of donkeycar 5.1.0 (``KerasLinear`` ->
``default_n_linear`` -> ``core_cnn_layers``), layer for layer:

* input ``img_in`` uint8 ``[120, 160, 3]`` scaled by ``1/255`` (``normalize_image``; no crop:
  the template's ``TRANSFORMATIONS`` list is empty, so ``ROI_CROP_TOP`` is not applied);
* five ``valid``-padded convolutions with ReLU, each followed by ``Dropout(0.2)``:
  24 5x5 stride 2, 32 5x5 stride 2, 64 5x5 stride 2, 64 3x3 stride 1, 64 3x3 stride 1;
* ``Flatten``, ``Dense(100, relu)``, ``Dropout(0.2)``, ``Dense(50, relu)``, ``Dropout(0.2)``;
* two ``Dense(1, linear)`` heads, ``n_outputs0`` (angle) and ``n_outputs1`` (throttle),
  trained on ``user/angle`` and ``user/throttle`` with ``loss='mse'`` (Keras sums the two
  heads' losses, weight 1 each);
* Keras' default initialisers (``glorot_uniform`` kernels, zero biases) and ``optimizer =
  "adam"`` (``KerasPilot.__init__``; the template's ``OPTIMIZER = None`` keeps it), i.e.
  Keras' ``Adam()``: learning rate 0.001, betas 0.9/0.999, epsilon 1e-7;
* ``BATCH_SIZE = 128`` (the template's default), shuffled every epoch.

What is not ported, and why: Donkeycar's random 80/20 train/validation split with early
stopping (``MAX_EPOCHS`` 100, patience 5). The proof compares learners on the *same frames*
and the *same number of gradient steps*: the port trains on exactly the episodes HOPE's
trainer trained on (``--exclude`` its held-out set, the newest quarter of the episodes and
at most 8, which the gate judges on: close to Donkeycar's 20%) for ``--steps`` steps. Torch
computes in NCHW, Keras in NHWC: the image is transposed at the input, which changes no
arithmetic.

``act`` is the car's path (``KerasPilot.run``: one frame in, ``(angle, throttle)`` out), with
dropout off and one torch thread. Weights are saved as safetensors (no pickle).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: The image key of a Donkeycar tub (and drive2d's observation).
IMAGE_KEY = "cam/image_array"
DROPOUT = 0.2
#: (filters, kernel, stride) of ``core_cnn_layers`` (``l4_stride`` 1, the linear model's).
CONV_LAYERS = ((24, 5, 2), (32, 5, 2), (64, 5, 2), (64, 3, 1), (64, 3, 1))
DENSE_LAYERS = (100, 50)
BATCH_SIZE = 128
#: Keras ``Adam()`` defaults (``tf.keras.optimizers.Adam``).
ADAM = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-7}
WEIGHTS = "linear.safetensors"


def conv_output_hw(height: int, width: int) -> tuple[int, int]:
    """Spatial size after the five ``valid`` convolutions (6656 = 64·8·13 features at 120x160)."""
    for _, k, s in CONV_LAYERS:
        height, width = (height - k) // s + 1, (width - k) // s + 1
    if height < 1 or width < 1:
        raise ValueError("the image is too small for the linear model's five valid convolutions")
    return height, width


def build(input_shape: tuple[int, int, int] = (120, 160, 3)) -> Any:
    """The network of ``default_n_linear(2, input_shape)``, initialised as Keras does."""
    import torch
    from torch import nn

    class Linear(nn.Module):
        """conv stack -> dense 100/50 -> two linear heads (stacked as ``[angle, throttle]``)."""

        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            channels = input_shape[2]
            for filters, kernel, stride in CONV_LAYERS:
                layers += [nn.Conv2d(channels, filters, kernel, stride), nn.ReLU(), nn.Dropout(DROPOUT)]
                channels = filters
            self.features = nn.Sequential(*layers, nn.Flatten())
            h, w = conv_output_hw(input_shape[0], input_shape[1])
            width = channels * h * w
            dense: list[nn.Module] = []
            for units in DENSE_LAYERS:
                dense += [nn.Linear(width, units), nn.ReLU(), nn.Dropout(DROPOUT)]
                width = units
            self.dense = nn.Sequential(*dense)
            self.angle = nn.Linear(width, 1)
            self.throttle = nn.Linear(width, 1)

        def forward(self, img_uint8_nhwc: torch.Tensor) -> torch.Tensor:
            x = img_uint8_nhwc.permute(0, 3, 1, 2).float().mul_(1.0 / 255.0)
            x = self.dense(self.features(x))
            return torch.cat([self.angle(x), self.throttle(x)], dim=1)

    net = Linear()
    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.xavier_uniform_(module.weight)  # Keras glorot_uniform (fan in/out incl. receptive field)
            nn.init.zeros_(module.bias)
    return net


def keras_param_count(input_shape: tuple[int, int, int] = (120, 160, 3)) -> int:
    """Trainable parameters of Donkeycar's Keras model, from its layer list (what
    ``model.summary()`` prints), to check the port against without TensorFlow."""
    total, channels = 0, input_shape[2]
    for filters, kernel, _ in CONV_LAYERS:
        total += kernel * kernel * channels * filters + filters
        channels = filters
    h, w = conv_output_hw(input_shape[0], input_shape[1])
    width = channels * h * w
    for units in DENSE_LAYERS:
        total += width * units + units
        width = units
    return total + 2 * (width + 1)


# --------------------------------------------------------------------------- data


def load_frames(
    data: Path, image_key: str = IMAGE_KEY, exclude: frozenset[str] = frozenset()
) -> tuple[np.ndarray, np.ndarray]:
    """Every frame (uint8 ``[N, H, W, 3]``) and its recorded ``[angle, throttle]`` (float32
    ``[N, 2]``) of the episodes under ``data`` (a tub, a directory of tubs, any layout
    ``read_episodes`` takes) but those whose id is in ``exclude`` (the episodes HOPE's trainer
    held out for its gate): what Donkeycar's ``TubDataset`` feeds ``KerasLinear``."""
    from continuonbrain.rlds import read_episodes

    images, actions = [], []
    for ep in read_episodes(data):
        if ep.episode_id in exclude:
            continue
        obs = ep.observation
        if not isinstance(obs, dict) or image_key not in obs:
            raise ValueError(f"episode {ep.episode_id} in {data} has no {image_key!r} image observation")
        frames = obs[image_key]
        images.append(np.asarray(frames, dtype=np.uint8))
        actions.append(np.asarray(ep.action_vector(), dtype=np.float32)[:, :2])
    if not images:
        raise ValueError(f"no episodes under {data}")
    return np.concatenate(images), np.concatenate(actions)


# --------------------------------------------------------------------------- train / act


def train(
    data: Path,
    steps: int,
    out: Path,
    *,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    threads: int = 2,
    snapshots: tuple[int, ...] = (),
    exclude: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Fit the port for ``steps`` Adam steps of ``batch_size`` frames (epoch-wise shuffles,
    the last partial batch of an epoch included, as ``model.fit`` does) and save it to ``out``.

    ``snapshots``: also save the weights after these step counts, to ``out/step_NNNNNN``
    (a learning curve, and something to evaluate if a long run on a busy machine is cut short)."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    t_load = time.perf_counter()
    images, actions = load_frames(data, exclude=exclude)
    load_s = time.perf_counter() - t_load
    x, y = torch.from_numpy(images), torch.from_numpy(actions)
    net = build(tuple(images.shape[1:]))
    opt = torch.optim.Adam(net.parameters(), lr=ADAM["lr"], betas=ADAM["betas"], eps=ADAM["eps"])
    gen = torch.Generator().manual_seed(seed)
    net.train()
    losses: list[float] = []
    order = torch.randperm(len(x), generator=gen)
    pos = 0
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        if pos >= len(order):
            order, pos = torch.randperm(len(x), generator=gen), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        pred = net(x[idx])
        # Keras: one MSE per head, summed.
        loss = torch.nn.functional.mse_loss(pred[:, 0], y[idx, 0]) + torch.nn.functional.mse_loss(pred[:, 1], y[idx, 1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step in snapshots and step < steps:
            _save(net, out / f"step_{step:06d}", images.shape[1:], step, batch_size)
    train_s = time.perf_counter() - t0
    _save(net, out, images.shape[1:], steps, batch_size)
    head = losses[: min(10, len(losses))]
    tail = losses[-min(50, len(losses)) :]
    return {
        "frames": len(x),
        "episodes_excluded": sorted(exclude),
        "steps": steps,
        "batch_size": batch_size,
        "epochs": round(steps * batch_size / len(x), 2),
        "parameters": sum(p.numel() for p in net.parameters()),
        "load_s": round(load_s, 1),
        "train_s": round(train_s, 1),
        "initial_loss": round(float(np.mean(head)), 5),
        "final_loss": round(float(np.mean(tail)), 5),
    }


def _save(net: Any, out: Path, input_shape: tuple[int, ...], steps: int, batch_size: int) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    meta = {"input_shape": json.dumps(list(input_shape)), "steps": str(steps), "batch_size": str(batch_size)}
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out / WEIGHTS), metadata=meta)


class LinearPilot:
    """The trained port as a policy: ``act(obs)`` -> ``[angle, throttle]``, memoryless like
    ``KerasLinear.run`` (``reset`` does nothing). One torch thread, dropout off."""

    def __init__(self, model_dir: Path, threads: int = 1):
        import torch
        from safetensors import safe_open
        from safetensors.torch import load_file

        torch.set_num_threads(threads)
        path = model_dir / WEIGHTS
        with safe_open(str(path), "pt") as f:
            shape = tuple(json.loads((f.metadata() or {})["input_shape"]))
        self.net = build(shape)  # type: ignore[arg-type]
        self.net.load_state_dict(load_file(str(path)))
        self.net.eval()
        self._torch = torch

    def reset(self) -> None:
        pass

    def act(self, obs: Any) -> np.ndarray:
        frame = obs[IMAGE_KEY] if isinstance(obs, dict) else obs
        x = self._torch.from_numpy(np.ascontiguousarray(frame, dtype=np.uint8))[None]
        with self._torch.inference_mode():
            return self.net(x)[0].numpy()


def latency(act: Any, frames: np.ndarray, calls: int, warmup: int = 100) -> dict[str, float]:
    """p50/p99/mean milliseconds of ``act`` on one frame at a time (frames cycled)."""
    wrap = [{IMAGE_KEY: f} for f in frames[: max(1, min(len(frames), 256))]]
    for i in range(warmup):
        act(wrap[i % len(wrap)])
    times = np.empty(calls)
    clock = time.perf_counter_ns
    for i in range(calls):
        obs = wrap[i % len(wrap)]
        t0 = clock()
        act(obs)
        times[i] = clock() - t0
    ms = times / 1e6
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "calls": calls,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("train", help="fit the port on the frames under --data; prints JSON")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads for training (the HOPE config's)")
    p.add_argument("--snapshots", default="", help="comma-separated step counts to save the weights after too")
    p.add_argument("--exclude", type=Path, help="a JSON list of episode ids not to train on (HOPE's held-out set)")
    p = sub.add_parser("latency", help="act latency on recorded frames, one thread; prints JSON")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.cmd == "train":
        if args.steps < 1 or args.batch_size < 1:
            parser.error("--steps and --batch-size must be >= 1")
        snaps = tuple(int(x) for x in args.snapshots.split(",") if x.strip())
        exclude = frozenset(json.loads(args.exclude.read_text())) if args.exclude else frozenset()
        print(json.dumps(train(args.data, args.steps, args.out, batch_size=args.batch_size, seed=args.seed,
                               threads=args.threads, snapshots=snaps, exclude=exclude)))  # fmt: skip
    else:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        images, _ = load_frames(args.data)
        pilot = LinearPilot(args.model)
        print(json.dumps(latency(pilot.act, images, args.calls)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
