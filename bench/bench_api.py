"""``/api/infer`` on loopback: latency, throughput with 8 clients, and hot swaps under load.

    python bench/bench_api.py [--requests 3000] [--seconds 5] [--promotions 10]

The server is ``continuonbrain serve`` in its own process (as on the robot), serving a seed
trained with the shipped ``pi5-hope-v1`` config (cached under ``--data``, shared with
``bench_adapt.py``). Clients speak HTTP/1.1 with keep-alive through the standard library's
``http.client``: it adds the least client-side overhead of the Python clients, so the figures
are the server's plus one loopback round trip. Three measurements:

1. **One client**: ``--requests`` sequential calls (after a warm-up); p50/p99/max of the
   round trip as the client sees it, and of ``latency_us`` as the service reports it.
   Goal: p99 at most 3 ms.
2. **Eight clients**, one process each (a client thread pool would measure this process's
   GIL instead of the server), for ``--seconds``: requests per second in total.
3. **Swap test**: the eight clients call infer while another process promotes
   ``--promotions`` candidates straight through the model store, as a trainer would (the
   server learns of them only by watching the store). Goal: 0 errors. Switch time per
   promotion: from the moment the promoting process's ``promote()`` returned to the first
   answer, from any client, that names the new version.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench_adapt import ensure_seed  # noqa: E402  (bench/ is this script's directory)

OBS = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.5, 0.2, 1.0, 0.0]
GOAL_P99_MS = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models: Path, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "continuonbrain", "serve", "--model-root", str(models), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/status")
            if conn.getresponse().status == 200:
                conn.close()
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start; see {log}")


class Client:
    """One keep-alive connection posting observations."""

    def __init__(self, port: int, session: str):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.body = json.dumps({"observation": OBS, "session_id": session}).encode()
        self.headers = {"Content-Type": "application/json"}

    def infer(self) -> tuple[int, dict[str, Any]]:
        self.conn.request("POST", "/api/infer", self.body, self.headers)
        r = self.conn.getresponse()
        data = r.read()
        return r.status, json.loads(data) if r.status == 200 else {"error": data.decode(errors="replace")}


def one_client(port: int, n: int) -> dict[str, Any]:
    c = Client(port, "bench-single")
    for _ in range(300):
        c.infer()
    rtt, server = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        status, body = c.infer()
        rtt.append((time.perf_counter() - t0) * 1e3)
        assert status == 200, body
        server.append(body["latency_us"] / 1e3)
    return {"requests": n, "round_trip_ms": pct(rtt), "service_ms": pct(server)}


def pct(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {
        "p50": round(xs[len(xs) // 2], 3),
        "p99": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))], 3),
        "max": round(xs[-1], 3),
        "mean": round(statistics.fmean(xs), 3),
    }


def client_proc(port: int, idx: int, start_at: float, seconds: float, out: Any, rate_hz: float = 0.0) -> None:
    """A client process: infer in a loop until the deadline (at ``rate_hz`` per second, or as
    fast as it can when 0); reports counts and version times."""
    c = Client(port, f"bench-{idx}")
    c.infer()
    while time.time() < start_at:
        time.sleep(0.001)
    ok = errors = 0
    first_seen: dict[str, float] = {}
    messages: list[str] = []
    end = start_at + seconds
    period = 1.0 / rate_hz if rate_hz > 0 else 0.0
    next_at = time.time()
    while time.time() < end:
        if period:
            next_at += period
            delay = next_at - time.time()
            if delay > 0:
                time.sleep(delay)
        try:
            status, body = c.infer()
        except (OSError, http.client.HTTPException) as exc:
            errors += 1
            messages.append(repr(exc))
            c = Client(port, f"bench-{idx}")
            continue
        if status == 200:
            ok += 1
            first_seen.setdefault(body["model_version"], time.time())
        else:
            errors += 1
            messages.append(f"{status}: {body}")
    out.put({"ok": ok, "errors": errors, "first_seen": first_seen, "messages": messages[:5]})


def run_clients(port: int, clients: int, seconds: float, during: Any = None, rate_hz: float = 0.0) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    start_at = time.time() + 3.0  # spawned interpreters need a moment to import
    procs = [ctx.Process(target=client_proc, args=(port, i, start_at, seconds, queue, rate_hz)) for i in range(clients)]
    for p in procs:
        p.start()
    extra = during(start_at) if during else None
    results = [queue.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    first_seen: dict[str, float] = {}
    for r in results:
        for v, t in r["first_seen"].items():
            first_seen[v] = min(t, first_seen.get(v, t))
    ok = sum(r["ok"] for r in results)
    return {
        "clients": clients,
        "seconds": seconds,
        "ok": ok,
        "errors": sum(r["errors"] for r in results),
        "error_messages": [m for r in results for m in r["messages"]][:5],
        "requests_per_s": round(ok / seconds, 1),
        "first_seen": first_seen,
        "extra": extra,
    }


def promoter(models: Path, promotions: int, start_at: float, gap_s: float) -> list[dict[str, Any]]:
    """Promote ``promotions`` candidates in a child process (a trainer's view); returns
    ``[{version, promoted_at}]`` with the wall-clock time each ``promote()`` returned."""
    script = r"""
import json, sys, time
from pathlib import Path
from continuonbrain.trainer.store import PromotionStore
store = PromotionStore(sys.argv[1])
files = [Path(p) for p in json.loads(sys.argv[2])]
start_at, n, gap = float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
while time.time() < start_at + gap:
    time.sleep(0.005)
out = []
for _ in range(n):
    m = store.write_slot("candidate", files, components=["vqvae", "mid_loop", "fast_loop"], kind="hope-seed")
    store.promote({"passed": True, "reason": "bench_api swap test"})
    out.append({"version": m["version"], "promoted_at": time.time()})
    time.sleep(gap)
print(json.dumps(out))
"""
    store_files = sorted(p for p in (models / "current").resolve().iterdir() if p.name != "manifest.json")
    keep = models.parent / "swap-files"
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir()
    for f in store_files:
        shutil.copy2(f, keep / f.name)
    files = json.dumps([str(keep / f.name) for f in store_files])
    args = [sys.executable, "-c", script, str(models), files, str(start_at), str(promotions), str(gap_s)]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, text=True)


def swap_test(port: int, models: Path, clients: int, promotions: int, gap: float, rate_hz: float) -> dict[str, Any]:
    """``clients`` call infer (at ``rate_hz`` each, 0 = flat out) while another process promotes."""
    holder: dict[str, Any] = {}

    def during(start_at: float) -> None:
        holder["proc"] = promoter(models, promotions, start_at, gap)

    swap = run_clients(port, clients, gap * (promotions + 2) + 1.0, during, rate_hz)
    promoted = json.loads(holder["proc"].communicate(timeout=120)[0])
    switch_ms = [
        round((swap["first_seen"][p["version"]] - p["promoted_at"]) * 1e3, 1)
        for p in promoted
        if p["version"] in swap["first_seen"]
    ]
    return {
        "clients": clients,
        "rate_hz_per_client": rate_hz or "max",
        "promotions": len(promoted),
        "requests_ok": swap["ok"],
        "requests_per_s": swap["requests_per_s"],
        "errors": swap["errors"],
        "error_messages": swap["error_messages"],
        "versions_served": len(swap["first_seen"]),
        "switch_ms": switch_ms,
        "switch_ms_max": max(switch_ms) if switch_ms else None,
        "switch_ms_median": statistics.median(switch_ms) if switch_ms else None,
        "not_seen": len(promoted) - len(switch_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "continuonbrain-bench-adapt")
    parser.add_argument("--base-episodes", type=int, default=200)
    parser.add_argument("--seed-steps", type=int, default=100)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--promotions", type=int, default=10)
    parser.add_argument("--control-hz", type=float, default=100.0, help="per-client rate of the control-rate swap test")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bench_api.json")
    args = parser.parse_args()

    seed = ensure_seed(args.data, args.base_episodes, args.seed_steps)
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    models = work / "models"
    shutil.copytree(seed, models, symlinks=True, ignore=shutil.ignore_patterns("api_token"))
    port = free_port()
    server = start_server(models, port, work / "server.log")
    try:
        single = one_client(port, args.requests)
        print(f"1 client: {single}", file=sys.stderr)
        many = run_clients(port, args.clients, args.seconds)
        many.pop("first_seen")
        print(f"{args.clients} clients: {many['requests_per_s']} req/s, errors {many['errors']}", file=sys.stderr)

        gap = max(0.2, args.seconds / (args.promotions + 2))
        swap_results = {}
        for label, rate in (("control_rate", args.control_hz), ("saturated", 0.0)):
            swap_results[label] = swap_test(port, models, args.clients, args.promotions, gap, rate)
            print(f"swap test ({label}): {swap_results[label]}", file=sys.stderr)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    report = {
        "command": "python bench/bench_api.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "single_client": single,
        "goal_p99_ms": GOAL_P99_MS,
        "meets_goal": single["round_trip_ms"]["p99"] <= GOAL_P99_MS,
        "concurrent": {k: v for k, v in many.items() if k != "extra"},
        "swap": swap_results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
