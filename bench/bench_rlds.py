"""RLDS data-layer benchmark: read speed, window speed and streaming memory.

    python bench/bench_rlds.py [--episodes 2000] [--steps 200] [--tfds-python /path/to/python]

Generates realistic data once (cached under ``--data``): vector episodes with a 32-d state
and a 4-d action, written as Continuon JSONL and as a TFDS RLDS dataset, plus a share of
episodes that also carry a 64x64 RGB camera. Then measures

* JSONL read, steps/s (goal: at least 200,000 for vector episodes);
* TFDS TFRecord read with our reader, steps/s; with ``--tfds-python`` (an interpreter that
  has ``tensorflow_datasets``), TFDS's own reader on the same files in the same run, and
  the ratio (goal: at least as fast as TFDS);
* Fast (100 ms) and Mid (2 s) windows per second;
* peak RSS while streaming 1x and 10x the episodes, each in a fresh process, against the
  bare interpreter (goal: flat, 10x under 1.2x the memory, and under 300 MB above bare).

Prints a Markdown table and writes JSON to ``--out``. Not a test: numbers depend on load.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from continuonbrain.rlds import Episode, LazyImage, read_episodes, write_episodes  # noqa: E402
from continuonbrain.rlds.episode import ImageColumn  # noqa: E402


def make_episode(i: int, steps: int, image: bool, rng: np.random.Generator) -> Episode:
    t = np.arange(steps)
    state = np.cumsum(rng.normal(0, 0.05, (steps, 32)), axis=0).astype(np.float32)
    obs: object = state
    if image:
        frames = [LazyImage(data=_png(rng), format="png") for _ in range(steps)]
        obs = {"state": state, "camera": ImageColumn(frames)}
    return Episode(
        observation=obs,
        action=np.tanh(rng.normal(0, 1, (steps, 4))).astype(np.float32),
        reward=rng.normal(0, 1, steps).astype(np.float32),
        discount=np.ones(steps, np.float32),
        is_first=t == 0,
        is_last=t == steps - 1,
        is_terminal=t == steps - 1,
        timestamp=t * 0.02,
        metadata={
            "schema_version": "1.1",
            "episode_id": f"bench-{'img' if image else 'vec'}-{i:06d}",
            "robot_id": "bench",
            "control_hz": 50,
            "tags": ["bench"],
            "provenance": {"origin": "bench"},
        },
    )


_PNG_CACHE: list[bytes] = []


def _png(rng: np.random.Generator) -> bytes:
    """A pool of real 64x64 PNG frames (encoding 100k of them would dominate generation)."""
    from PIL import Image

    if not _PNG_CACHE:
        for _ in range(64):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
            _PNG_CACHE.append(buf.getvalue())
    return _PNG_CACHE[int(rng.integers(len(_PNG_CACHE)))]


def generate(data: Path, episodes: int, steps: int, image_fraction: float) -> dict[str, Path]:
    paths = {
        "jsonl": data / f"jsonl-{episodes}x{steps}",
        "jsonl10": data / f"jsonl-{episodes // 10}x{steps}",
        "tfds": data / f"tfds-{episodes}x{steps}",
        "tfds_img": data / f"tfds-img-{int(episodes * image_fraction)}x{steps}",
    }
    n_img = int(episodes * image_fraction)
    jobs = [
        ("jsonl", "continuon", episodes, False),
        ("jsonl10", "continuon", episodes // 10, False),
        ("tfds", "tfds", episodes, False),
        ("tfds_img", "tfds", n_img, True),
    ]
    for key, fmt, n, image in jobs:
        if (paths[key] / ".complete").exists():
            continue
        print(f"generating {n} episodes -> {paths[key]}", file=sys.stderr)
        rng = np.random.default_rng(0)
        opts = {"name": "bench"} if fmt == "tfds" else {}
        write_episodes((make_episode(i, steps, image, rng) for i in range(n)), paths[key], fmt, **opts)
        (paths[key] / ".complete").write_text("ok")
    return paths


def timed_read(path: Path) -> dict:
    t0 = time.perf_counter()
    episodes = steps = 0
    for ep in read_episodes(path, on_error="raise"):
        episodes += 1
        steps += len(ep)
    dt = time.perf_counter() - t0
    return {"episodes": episodes, "steps": steps, "seconds": round(dt, 3), "steps_per_s": round(steps / dt)}


TFDS_READER = textwrap.dedent(
    """
    import json, sys, time
    import tensorflow as tf
    import tensorflow_datasets as tfds
    builder = tfds.builder_from_directory(sys.argv[1])
    out = {}
    # 1) How RLDS users usually iterate: episodes, then steps one by one (slow: first 200 episodes).
    t0 = time.perf_counter()
    steps = 0
    for ep in tfds.as_numpy(builder.as_dataset(split="train").take(200)):
        for step in ep["steps"]:
            steps += 1
    dt = time.perf_counter() - t0
    out["per_step"] = {"steps": steps, "seconds": round(dt, 3), "steps_per_s": round(steps / dt)}
    # 2) TFDS at its best: each episode's steps batched inside TensorFlow, parallel map.
    t0 = time.perf_counter()
    ds = builder.as_dataset(split="train").map(
        lambda ep: ep["steps"].batch(1_000_000).get_single_element(), num_parallel_calls=tf.data.AUTOTUNE
    )
    steps = 0
    for batch in tfds.as_numpy(ds):
        steps += len(batch["reward"])
    dt = time.perf_counter() - t0
    out["batched"] = {"steps": steps, "seconds": round(dt, 3), "steps_per_s": round(steps / dt)}
    print(json.dumps(out))
    """
)


def tfds_version_dir(root: Path) -> Path:
    return next(p.parent for p in root.rglob("features.json"))


def tfds_own_read(python: str, root: Path) -> dict | None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [python, "-c", TFDS_READER, str(tfds_version_dir(root))], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        print(f"TFDS reader failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def window_rate(path: Path, fast: bool, in_memory: int = 300) -> dict:
    """Windows/s from disk (reading included) and from episodes already in memory (slicing only)."""
    from continuonbrain.rlds.windows import FastWindowDataset, MidTrajectoryDataset

    cls = FastWindowDataset if fast else MidTrajectoryDataset
    out = {}
    for label, source in (
        ("from_disk", str(path)),
        ("in_memory", [ep for _, ep in zip(range(in_memory), read_episodes(path), strict=False)]),
    ):
        t0 = time.perf_counter()
        n = sum(1 for _ in cls(source))
        dt = time.perf_counter() - t0
        out[label] = {"windows": n, "seconds": round(dt, 3), "windows_per_s": round(n / dt)}
    return out


STREAM = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[3])
    from continuonbrain.rlds.windows import FastWindowDataset
    n = 0
    for _ in range(int(sys.argv[2])):
        for w in FastWindowDataset(sys.argv[1], shuffle_buffer=1000, seed=0):
            n += 1
    hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(json.dumps({"windows": n, "max_rss_mb": int(hwm.split()[1]) / 1024}))
    """
)
# ru_maxrss of a child started by fork+exec keeps the parent's high-water mark; VmHWM does not.
BARE = (
    "import json; hwm = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'));"
    "print(json.dumps({'max_rss_mb': int(hwm.split()[1]) / 1024}))"
)


def stream_rss(small: Path, big: Path) -> dict:
    """Peak RSS of a fresh process streaming shuffled Fast windows over 1x and 10x data."""

    def run(code: str, *args: str) -> dict:
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    bare = run(BARE)["max_rss_mb"]
    one = run(STREAM, str(small), "1", str(REPO))
    ten = run(STREAM, str(big), "1", str(REPO))
    return {
        "bare_interpreter_mb": round(bare, 1),
        "1x": {"windows": one["windows"], "max_rss_mb": round(one["max_rss_mb"], 1)},
        "10x": {"windows": ten["windows"], "max_rss_mb": round(ten["max_rss_mb"], 1)},
        "ratio_10x_over_1x": round(ten["max_rss_mb"] / one["max_rss_mb"], 3),
        "10x_above_bare_mb": round(ten["max_rss_mb"] - bare, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--image-fraction", type=float, default=0.1)
    parser.add_argument("--data", type=Path, default=Path("/tmp/continuonbrain-bench"))
    parser.add_argument("--tfds-python", help="a python with tensorflow_datasets, for the TFDS comparison")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bench_rlds.json")
    args = parser.parse_args()

    paths = generate(args.data, args.episodes, args.steps, args.image_fraction)
    results: dict = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "episodes": args.episodes,
        "steps_per_episode": args.steps,
    }
    results["jsonl_read"] = timed_read(paths["jsonl"])
    results["tfds_read"] = timed_read(paths["tfds"])
    results["tfds_image_read"] = timed_read(paths["tfds_img"])
    if args.tfds_python:
        own = tfds_own_read(args.tfds_python, paths["tfds"])
        results["tfds_own_reader"] = own
        if own:
            ours = results["tfds_read"]["steps_per_s"]
            results["ours_over_tfds_per_step"] = round(ours / own["per_step"]["steps_per_s"], 2)
            results["ours_over_tfds_batched"] = round(ours / own["batched"]["steps_per_s"], 2)
    results["fast_windows"] = window_rate(paths["jsonl"], fast=True)
    results["mid_windows"] = window_rate(paths["jsonl"], fast=False)
    results["stream_rss"] = stream_rss(paths["jsonl10"], paths["jsonl"])

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
