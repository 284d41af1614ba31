"""What the Robot Editor's camera views cost the server: the live car's tick and the frame scrubber.

    python bench/bench_live_car.py [--ticks 400] [--frames 300]

``continuonbrain serve`` runs in its own process on loopback, serving the shipped config's
camera-only model (untrained, as in ``bench_frames.py``: latency does not depend on the
weights' values) over two drive2d episodes. One keep-alive client (``http.client``) measures

* ``POST /api/sim/drive`` (the served brain acts on the car's 160x120 frame, the car moves):
  without the camera picture, and with it (a JPEG data URL, what the page asks for every
  200 ms), interleaved tick by tick: answer size, round trip p50/p99, the act's share;
* ``GET /api/episodes/frame`` (one stored JPEG, sent as is) and ``GET /api/episodes/step``
  (one step's action and values) at random steps, what one slider position costs.

Writes ``bench/results/bench_live_car.json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_frames import KEY, camera_store, serving  # noqa: E402

from continuonbrain.sim.collect import collect_to_dir  # noqa: E402


def call(conn: http.client.HTTPConnection, method: str, path: str, body: dict | None = None) -> tuple[float, bytes]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    t0 = time.perf_counter()
    conn.request(method, path, json.dumps(body).encode() if body is not None else None, headers)
    resp = conn.getresponse()
    data = resp.read()
    dt = (time.perf_counter() - t0) * 1e3
    if resp.status != 200:
        raise SystemExit(f"{method} {path}: {resp.status} {data[:300]!r}")
    return dt, data


def summary(ms: list[float], sizes: list[int]) -> dict[str, float]:
    return {
        "round_trip_p50_ms": round(float(np.percentile(ms, 50)), 2),
        "round_trip_p99_ms": round(float(np.percentile(ms, 99)), 2),
        "answer_bytes": int(np.mean(sizes)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ticks", type=int, default=400)
    ap.add_argument("--frames", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        camera_store(root)
        collect_to_dir("drive2d", 2, root / "episodes", seed=0, dart_sigma=0.2, max_steps=200)
        with serving(root, "--rlds-dir", str(root / "episodes")) as port:
            conn = http.client.HTTPConnection("127.0.0.1", port)
            _, data = call(conn, "POST", "/api/sim/reset", {"env": "drive2d", "seed": 1})
            sim_id = json.loads(data)["sim_id"]
            drive: dict[str, dict[str, list]] = {k: {"ms": [], "bytes": [], "act": []} for k in ("no_frame", "frame")}
            for i in range(args.ticks + 20):  # the first 20 ticks warm up
                for name in drive:
                    dt, data = call(conn, "POST", "/api/sim/drive", {"sim_id": sim_id, "frame": name == "frame"})
                    if i >= 20:
                        drive[name]["ms"].append(dt)
                        drive[name]["bytes"].append(len(data))
                        drive[name]["act"].append(json.loads(data)["latency_us"] / 1e3)
            _, data = call(conn, "GET", "/api/episodes")
            episode = json.loads(data)["episodes"][0]
            key = urllib.parse.quote(episode["key"])
            rng = random.Random(0)
            scrub: dict[str, dict[str, list]] = {k: {"ms": [], "bytes": []} for k in ("frame", "step")}
            for i in range(args.frames + 20):
                t = rng.randrange(episode["steps"])
                for name, path in (
                    ("frame", f"/api/episodes/frame?key={key}&t={t}&image={urllib.parse.quote(KEY)}"),
                    ("step", f"/api/episodes/step?key={key}&t={t}"),
                ):
                    dt, data = call(conn, "GET", path)
                    if i >= 20:
                        scrub[name]["ms"].append(dt)
                        scrub[name]["bytes"].append(len(data))
            conn.close()
    load = os.getloadavg()[0]
    result = {
        "command": " ".join(["python", *sys.argv]),
        "ticks": args.ticks,
        "frames": args.frames,
        "load_1m": round(load, 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "drive": {
            name: {
                **summary(d["ms"], d["bytes"]),
                "act_p50_ms": round(float(np.percentile(d["act"], 50)), 2),
                "act_p99_ms": round(float(np.percentile(d["act"], 99)), 2),
            }
            for name, d in drive.items()
        },
        "scrub": {name: summary(d["ms"], d["bytes"]) for name, d in scrub.items()},
    }
    print("| request | answer | round trip p50 / p99 ms | act p50 / p99 ms |\n|---|---|---|---|")
    for name, r in result["drive"].items():
        print(
            f"| POST /api/sim/drive ({name}) | {r['answer_bytes'] / 1000:.1f} KB | {r['round_trip_p50_ms']} / "
            f"{r['round_trip_p99_ms']} | {r['act_p50_ms']} / {r['act_p99_ms']} |"
        )
    for name, r in result["scrub"].items():
        print(
            f"| GET /api/episodes/{name} | {r['answer_bytes'] / 1000:.1f} KB | {r['round_trip_p50_ms']} / "
            f"{r['round_trip_p99_ms']} | – |"
        )
    print(f"\nload average {load:.1f} on {os.cpu_count()} cores")
    out = REPO / "bench" / "results" / "bench_live_car.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
