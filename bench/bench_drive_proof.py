"""Drive2d proof: HOPE trained from pixels on expert tubs against Donkeycar's ``linear`` model and the expert.

    nice -n 10 python bench/bench_drive_proof.py [--tracks 20] [--dart-sigma 0.3]
        [--eval-episodes 20] [--eval-seed 1000] [--lift-wall-caps] [--reuse-hope] [--set KEY=JSON ...]
        [--work /tmp/continuonbrain-bench-drive-proof] [--out bench/results/drive_proof.json]

What a Donkeycar user would do, on the built-in camera car (``drive2d``):

1. record one expert lap on each of ``--tracks`` tracks as Donkeycar tubs, one tub per seed
   (``continuonbrain sim collect --env drive2d --format tub --seed S --episodes 1``, seeds
   0..tracks-1, DART noise ``--dart-sigma`` on the executed action; every seed is a new
   random track), into one directory of tubs (cached under ``--work``);
2. train HOPE with the shipped default config, unedited (``continuonbrain train --config
   continuonbrain/configs/pi5-hope-v1.json``; ``--set`` only for ablations, and the thermal
   sensors pointed away: this is a shared build box, not a Pi) and gate it (``continuonbrain
   models promote``): wall time and the child's peak RSS;
3. train the PyTorch port of Donkeycar's ``linear`` model (``bench/donkey_linear.py``) on the
   same frames, for as many gradient steps as the HOPE run took in all (VQ-VAE + Mid + Fast),
   at Donkeycar's default batch of 128: wall time and peak RSS;
4. drive both, and the scripted expert, closed loop on ``--eval-episodes`` unseen tracks
   (``episode_seed(--eval-seed, i)``; training seeds mix differently, so no track repeats):
   HOPE through ``BrainService.act`` (the path that serves the car), the port through its
   ``act``. Per policy: mean lap progress (the lap fraction driven, clipped to [0, 1]), laps
   completed, off-track rate (episodes that ended by leaving the track; and the fraction of
   steps driven off it), mean |cross-track error|;
5. act latency of each, one frame at a time on recorded 160x120 frames, one thread.

HOPE's progress as a fraction of the expert's is the proof's figure (goal >= 90%); it should
match or beat the port. Prints a Markdown table and writes JSON (and the table) to ``--out``.
The parent process imports no torch: every training and evaluation is a child process, so
each peak RSS (``os.wait4``) is that child's own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIG = REPO / "continuonbrain" / "configs" / "pi5-hope-v1.json"
LINEAR = REPO / "bench" / "donkey_linear.py"
CLI = [sys.executable, "-m", "continuonbrain"]
#: DART noise of the recorded laps: what bench_drive2d.py checks the expert at (100% laps).
DART_SIGMA = 0.3
GOAL_FRACTION = 0.9


# --------------------------------------------------------------------------- child processes


def measured(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd`` (stdout to ``log``, stderr to ``log``.err); return its wall time, CPU time
    (user + system: what load from other processes on a shared machine does not inflate) and
    peak RSS (that child's own ``ru_maxrss``, from ``os.wait4``). Raises on a non-zero exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    err = log.with_suffix(log.suffix + ".err")
    with log.open("w") as out, err.open("w") as errf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=errf, cwd=REPO, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = err.read_text()[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}; stderr ({err}):\n{tail}")
    cpu = usage.ru_utime + usage.ru_stime
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def last_json(path: Path) -> Any:
    """The last line of ``path`` that is a JSON object (the CLIs print one with ``--json``)."""
    for line in reversed(path.read_text().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError(f"no JSON object in {path}")


def record_tubs(work: Path, tracks: int, dart_sigma: float) -> tuple[Path, dict[str, Any]]:
    """One expert lap per seed 0..tracks-1 as a tub, all in one directory (cached)."""
    tubs = work / f"tubs-{tracks}-dart{dart_sigma}"
    done = tubs.with_name(tubs.name + ".complete")
    if done.exists():
        return tubs, json.loads(done.read_text())
    shutil.rmtree(tubs, ignore_errors=True)
    steps, laps, t0 = 0, 0, time.perf_counter()
    for seed in range(tracks):
        out = tubs / f"tub_{seed:03d}"
        log = work / "logs" / f"collect-{seed}.json"
        measured([*CLI, "sim", "collect", "--env", "drive2d", "--episodes", "1", "--seed", str(seed), "--format",
                  "tub", "--out", str(out), "--dart-sigma", str(dart_sigma), "--json"], log)  # fmt: skip
        summary = last_json(log)
        steps += summary["steps"]
        laps += round(summary["success_rate"] * summary["episodes"])
    info = {"tracks": tracks, "frames": steps, "expert_laps_while_recording": laps, "dart_sigma": dart_sigma,
            "record_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
    done.write_text(json.dumps(info) + "\n")
    return tubs, info


def train_hope(tubs: Path, work: Path, overrides: list[str], reuse: bool = False) -> dict[str, Any]:
    """The shipped config (plus ``--set`` ablations) into ``work/hope/models``, then the gate.
    ``reuse``: the previous run's result when it had the same data and overrides."""
    hope = work / "hope"
    cached = hope / "result.json"
    if reuse and cached.exists():
        prev = json.loads(cached.read_text())
        if prev.get("overrides") == overrides and prev.get("data") == str(tubs):
            return {**prev, "reused": True}
    shutil.rmtree(hope, ignore_errors=True)
    models = hope / "models"
    sets = [f"thermal.sysfs_root={json.dumps(str(hope / 'no-sysfs'))}", *overrides]
    cmd = [*CLI, "train", "--config", str(CONFIG), "--rlds-dir", str(tubs), "--model-root", str(models),
           "--run-dir", str(hope / "run"), "--json"]  # fmt: skip
    for s in sets:
        cmd += ["--set", s]
    run = measured(cmd, hope / "train.json")
    summary = last_json(hope / "train.json")
    gate_log = hope / "promote.json"
    proc = subprocess.run([*CLI, "models", "promote", "--model-root", str(models), "--json"], cwd=REPO,
                          capture_output=True, text=True)  # fmt: skip
    gate_log.write_text(proc.stdout + proc.stderr)
    try:
        gate = last_json(gate_log)
    except ValueError:
        gate = {"error": (proc.stdout + proc.stderr).strip()[-500:]}
    comps = summary["components"]
    promoted = proc.returncode == 0
    store, slot = models, "current"
    if not promoted:
        # The gate moved the candidate to rejected/: score it anyway (that is what the proof
        # is about), as the candidate of a scratch store, so nothing in the real one moves.
        rejected = sorted((models / "rejected").iterdir()) if (models / "rejected").is_dir() else []
        if rejected:
            store, slot = hope / "rejected-store", "candidate"
            shutil.copytree(rejected[-1], store / "candidate")
    result = {
        "data": str(tubs),
        "models": str(store),
        "slot": slot,
        "promoted": promoted,
        "gate": gate,
        "train_s": run["wall_s"],
        "train_cpu_s": run["cpu_s"],
        "peak_rss_mb": run["peak_rss_mb"],
        "gradient_steps": sum(int(c["steps"]) for c in comps.values()),
        # the episodes the trainer kept out of training for the gate (the port skips them too)
        "held_out": json.loads((hope / "run" / "state.json").read_text()).get("held_out", []),
        "components": {
            name: {
                "steps": c["steps"],
                "stop_reason": c["stop_reason"],
                "wall_time_s": c["wall_time_s"],
                "final_loss": round(c["final_loss"], 5),
            }
            for name, c in comps.items()
        },
        "overrides": overrides,
    }
    cached.write_text(json.dumps(result, indent=2) + "\n")
    return result


def train_linear(tubs: Path, work: Path, steps: int, held_out: list[str]) -> dict[str, Any]:
    """The Donkeycar ``linear`` port on the episodes HOPE trained on (not its ``held_out``
    ones), for as many steps (cached by data, held-out set and step count: it depends on
    nothing else)."""
    out = work / f"linear-{tubs.name}-{len(held_out)}out-{steps}"
    result = out / "result.json"
    if result.exists():
        prev = json.loads(result.read_text())
        if prev.get("episodes_excluded") == sorted(held_out):
            return {**prev, "reused": True}
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "exclude.json").write_text(json.dumps(sorted(held_out)) + "\n")
    snaps = ",".join(str(n) for n in (250, 500, 1000) if n < steps)
    run = measured([sys.executable, str(LINEAR), "train", "--data", str(tubs), "--steps", str(steps),
                    "--out", str(out), "--snapshots", snaps, "--exclude", str(out / "exclude.json")],
                   work / "logs" / "linear-train.json")  # fmt: skip
    info = {**last_json(work / "logs" / "linear-train.json"), "model": str(out), "train_s": run["wall_s"],
            "train_cpu_s": run["cpu_s"], "peak_rss_mb": run["peak_rss_mb"]}  # fmt: skip
    result.write_text(json.dumps(info) + "\n")
    return info


def evaluate_child(policy: str, model: str | None, slot: str, tubs: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Closed-loop figures and act latency of one policy, in a one-thread child process."""
    log = args.work / "logs" / f"eval-{policy}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "_evaluate", "--policy", policy, "--data", str(tubs),
           "--episodes", str(args.eval_episodes), "--seed", str(args.eval_seed), "--slot", slot]  # fmt: skip
    if model:
        cmd += ["--model", model]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    measured(cmd, log, env=env)
    return last_json(log)


# --------------------------------------------------------------------------- the evaluation child


def _evaluate_main(args: argparse.Namespace) -> int:
    """``_evaluate``: drive ``--policy`` on the unseen tracks, then time its act path."""
    import gymnasium as gym
    import numpy as np

    from continuonbrain.sim.collect import episode_seed, make_env, rollout

    class Odometer(gym.Wrapper):
        """Keeps the last ``info`` and counts the steps driven off the track."""

        def reset(self, **kw: Any) -> Any:
            obs, info = self.env.reset(**kw)
            self.last, self.off_steps = dict(info), 0
            return obs, info

        def step(self, action: Any) -> Any:
            obs, reward, terminated, truncated, info = self.env.step(action)
            self.last = dict(info)
            self.off_steps += bool(info["off_track"])
            return obs, reward, terminated, truncated, info

    service = None
    act_fn = None
    if args.policy == "hope":
        from continuonbrain.runtime.brain_service import BrainService
        from continuonbrain.runtime.served_policy import ServedPolicy

        service = BrainService(Path(args.model), slot=args.slot, fallback=False)
        service.start()
        status = service.status()
        if not status["loaded"]:
            raise SystemExit(f"no brain loaded from {args.model}/{args.slot}: {status.get('refused')}")
        policy: Any = ServedPolicy(service)

        def act_fn(obs: Any) -> Any:
            return service.act(obs, session_id="latency").action

    elif args.policy == "linear":
        sys.path.insert(0, str(LINEAR.parent))
        from donkey_linear import LinearPilot

        policy = LinearPilot(Path(args.model), threads=1)
        act_fn = policy.act
    else:
        policy = "expert"
    try:
        env = Odometer(make_env("drive2d"))
        rows = []
        for i in range(args.episodes):
            stats = rollout(env, policy, episode_seed(args.seed, i))
            info = env.last
            rows.append(
                {
                    "index": i,
                    "progress": float(min(1.0, max(0.0, info["progress"]))),
                    "lap": bool(stats["success"]),
                    "left_track": bool(stats["terminated"] and not stats["success"]),
                    "off_track_steps": int(env.off_steps),
                    "length": int(stats["length"]),
                    "mean_abs_cte": float(info["tracking_error"]),
                }
            )
        env.close()
        steps = sum(r["length"] for r in rows)
        result: dict[str, Any] = {
            "policy": args.policy,
            "episodes": args.episodes,
            "seed": args.seed,
            "mean_progress": float(np.mean([r["progress"] for r in rows])),
            "lap_rate": float(np.mean([r["lap"] for r in rows])),
            "off_track_rate": float(np.mean([r["left_track"] for r in rows])),
            "off_track_step_fraction": sum(r["off_track_steps"] for r in rows) / max(1, steps),
            "mean_abs_cte": float(np.mean([r["mean_abs_cte"] for r in rows])),
            "mean_length": steps / len(rows),
            "per_episode": rows,
        }
        if args.policy == "hope":
            result["model_version"] = policy.versions[-1] if policy.versions else None
        if act_fn is not None:
            sys.path.insert(0, str(LINEAR.parent))
            from donkey_linear import latency, load_frames

            frames, _ = load_frames(args.data)
            result["act_latency"] = latency(act_fn, frames[:256], args.calls)
    finally:
        if service is not None:
            service.stop()
    print(json.dumps(result))
    return 0


# --------------------------------------------------------------------------- report


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def table(res: dict[str, Any]) -> str:
    """The side-by-side Markdown table."""
    ev, hope, lin = res["evaluation"], res["hope"], res["linear"]
    expert = ev["expert"]["mean_progress"] or 1.0
    lines = [
        f"| drive2d, {res['eval_episodes']} unseen tracks | lap progress | vs expert | laps | off-track "
        "(episodes / steps) | mean \\|cte\\| m | train s wall / CPU | peak RSS MB | act p50 / p99 ms (1 thread) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [
        (f"HOPE (pi5-hope-v1, {hope['gradient_steps']} steps{', gated' if hope['promoted'] else ', NOT promoted'})",
         ev["hope"], hope),
        (f"Donkeycar linear (PyTorch port, {lin['steps']} steps x {lin['batch_size']})", ev["linear"], lin),
        ("expert (pure pursuit)", ev["expert"], None),
    ]  # fmt: skip
    for name, e, t in rows:
        lat = e.get("act_latency")
        lat_s = f"{lat['p50_ms']:.2f} / {lat['p99_ms']:.2f}" if lat else "n/a"
        train_s = f"{t['train_s']:.0f} / {_num(t.get('train_cpu_s'))}" if t else "n/a"
        rss = _num(t.get("peak_rss_mb")) if t else "n/a"
        lines.append(
            f"| {name} | {_pct(e['mean_progress'])} | {_pct(e['mean_progress'] / expert)} | {_pct(e['lap_rate'])} "
            f"| {_pct(e['off_track_rate'])} / {_pct(e['off_track_step_fraction'])} | {e['mean_abs_cte']:.3f} "
            f"| {train_s} | {rss} | {lat_s} |"
        )
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_evaluate":
        p = argparse.ArgumentParser(prog="bench_drive_proof.py _evaluate")
        p.add_argument("_evaluate")
        p.add_argument("--policy", choices=("hope", "linear", "expert"), required=True)
        p.add_argument("--model")
        p.add_argument("--slot", default="current")
        p.add_argument("--data", type=Path, required=True)
        p.add_argument("--episodes", type=int, default=20)
        p.add_argument("--seed", type=int, default=1000)
        p.add_argument("--calls", type=int, default=2000)
        return _evaluate_main(p.parse_args())

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=20, help="expert laps recorded, one per track (seeds 0..N-1)")
    parser.add_argument("--dart-sigma", type=float, default=DART_SIGMA)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--eval-seed", type=int, default=1000)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override a field of the shipped config (ablations only)")  # fmt: skip
    parser.add_argument(
        "--lift-wall-caps",
        action="store_true",
        help="components.*.max_wall_time_s=86400: train the config's step counts whatever the "
        "load on a shared machine (its wall-time caps would otherwise cut them short)",
    )
    parser.add_argument(
        "--linear-steps",
        type=int,
        default=None,
        help="gradient steps of the linear port (default: as many as the HOPE run took)",
    )
    parser.add_argument("--reuse-hope", action="store_true",
                        help="reuse the last HOPE run under --work if its data and overrides match")  # fmt: skip
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "continuonbrain-bench-drive-proof")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "drive_proof.json")
    args = parser.parse_args()
    args.work = args.work.resolve()

    t0, load_start = time.perf_counter(), list(os.getloadavg())
    print(f"recording {args.tracks} expert laps as tubs ...", flush=True)
    tubs, data = record_tubs(args.work, args.tracks, args.dart_sigma)
    print(f"  {data['frames']} frames; training HOPE with the shipped config ...", flush=True)
    overrides = (["components.*.max_wall_time_s=86400"] if args.lift_wall_caps else []) + args.set
    hope = train_hope(tubs, args.work, overrides, reuse=args.reuse_hope)
    print(f"  {hope['gradient_steps']} steps in {hope['train_s']} s, promoted: {hope['promoted']}; "
          f"training the Donkeycar linear port for as many steps ...", flush=True)  # fmt: skip
    linear = train_linear(tubs, args.work, args.linear_steps or hope["gradient_steps"], hope["held_out"])
    evaluation = {}
    for name, model, slot in (("expert", None, "current"), ("hope", hope["models"], hope["slot"]),
                              ("linear", linear["model"], "current")):  # fmt: skip
        print(f"  driving {name} on {args.eval_episodes} unseen tracks ...", flush=True)
        evaluation[name] = evaluate_child(name, model, slot, tubs, args)
    expert_progress = evaluation["expert"]["mean_progress"]
    hope_fraction = evaluation["hope"]["mean_progress"] / expert_progress if expert_progress else None
    res: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": "nice -n 10 python bench/bench_drive_proof.py " + " ".join(sys.argv[1:]),
        "config": str(CONFIG.relative_to(REPO)),
        "data": data,
        "eval_episodes": args.eval_episodes,
        "eval_seed": args.eval_seed,
        "hope": hope,
        "linear": linear,
        "evaluation": evaluation,
        "hope_progress_vs_expert": hope_fraction,
        "goal_met": hope_fraction is not None and hope_fraction >= GOAL_FRACTION,
        "equal_steps": linear["steps"] == hope["gradient_steps"],
        "hope_matches_or_beats_linear": evaluation["hope"]["mean_progress"] >= evaluation["linear"]["mean_progress"],
        "wall_s": round(time.perf_counter() - t0, 1),
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
    }
    res["table"] = table(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(res["table"] + "\n")
    print()
    print(res["table"])
    print(f"\nHOPE progress / expert: {_pct(hope_fraction)} (goal >= {GOAL_FRACTION:.0%}); "
          f"matches or beats linear: {res['hope_matches_or_beats_linear']}; results: {args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
