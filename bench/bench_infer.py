"""Inference latency of the HOPE brain: one observation at a time, one thread.

    python bench/bench_infer.py [--calls 10000] [--model-dir DIR]

Measures, over ``--calls`` calls each, p50/p99/mean latency of

* ``FastLoopNumpy.step``: the Fast-loop tick itself (goal: p50 <= 30 µs, p99 <= 100 µs);
* ``HopeBrain.act``: the full per-tick path (observation split + Fast tick, Mid refresh
  every ``mid_every`` calls);
* ``FastLoop.step`` in eager PyTorch (why the numpy path exists);
* a plain numpy MLP with about as many parameters as the Fast loop: the floor for "a
  small network evaluated from Python".

Untrained weights unless ``--model-dir`` points at a trained slot: latency does not depend
on the values. Prints a Markdown table and writes JSON next to this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from continuonbrain.hope import HopeBrain, HopeConfig  # noqa: E402


def latency(fn, calls: int, warmup: int = 500) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = np.empty(calls)
    clock = time.perf_counter_ns
    for i in range(calls):
        t0 = clock()
        fn()
        times[i] = clock() - t0
    us = times / 1000.0
    return {"p50_us": round(float(np.percentile(us, 50)), 2), "p99_us": round(float(np.percentile(us, 99)), 2),
            "mean_us": round(float(us.mean()), 2)}  # fmt: skip


def numpy_mlp(n_params_target: int, d_in: int, d_out: int) -> tuple[callable, int]:
    """Two hidden tanh layers of equal width, sized to about ``n_params_target`` parameters."""
    h = 8
    while (d_in * (h + 1) + h * (h + 1) + (h + 1) * d_out) < n_params_target:
        h += 1
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((d_in, h)).astype(np.float32), np.zeros(h, np.float32)
    w2, b2 = rng.standard_normal((h, h)).astype(np.float32), np.zeros(h, np.float32)
    w3, b3 = rng.standard_normal((h, d_out)).astype(np.float32), np.zeros(d_out, np.float32)
    x = rng.standard_normal(d_in).astype(np.float32)

    def fn():
        return np.tanh(np.tanh(np.tanh(x @ w1 + b1) @ w2 + b2) @ w3 + b3)

    return fn, w1.size + b1.size + w2.size + b2.size + w3.size + b3.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bench_infer.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    brain = HopeBrain.load(args.model_dir) if args.model_dir else HopeBrain.build(HopeConfig())
    cfg = brain.config
    fast = brain.fast_loop
    n_fast = sum(p.numel() for p in fast.parameters())
    obs = np.random.default_rng(0).standard_normal(cfg.obs_dim).astype(np.float32)

    numpy_fast = fast.export_numpy()
    state = numpy_fast.init_state()
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, 1 thread",
        "fast_loop_params": n_fast,
        "components": brain.components(),
    }
    results["fast_loop_numpy_step"] = latency(lambda: numpy_fast.step(obs, state), args.calls)
    brain.reset()
    results["brain_act"] = latency(lambda: brain.act(obs), args.calls)

    fast_only = HopeBrain(cfg, fast_loop=fast)
    fast_only.reset()
    results["brain_act_fast_only"] = latency(lambda: fast_only.act(obs), args.calls)

    tstate = fast.init_state(1)
    tobs = torch.from_numpy(obs)[None]

    def torch_step():
        nonlocal tstate
        with torch.inference_mode():
            _, tstate = fast.step(tobs, tstate)

    results["fast_loop_torch_step"] = latency(torch_step, min(args.calls, 3000))
    mlp, n_mlp = numpy_mlp(n_fast, cfg.obs_dim, cfg.action_dim)
    results["numpy_mlp_floor"] = {"params": n_mlp, **latency(mlp, args.calls)}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
