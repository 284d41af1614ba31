"""``continuonbrain demo``: the whole product story in one command, on the built-in defaults.

1. record expert episodes in the ``reach2d`` simulator (once; a second run reuses them);
2. validate them (bad ones would be quarantined);
3. convert them to a TFDS RLDS dataset and read it back (no TensorFlow);
4. slice Fast (100 ms) and Mid (2 s) windows;
5. train the HOPE v1 seed with the shipped Pi 5 config, one component at a time;
6. gate the candidate (shadow evaluation on held-out episodes) and promote it;
7. adapt it with LoRA to a shifted task (the robot turned around: targets now appear behind
   it, a region none of its training episodes covered), gated and promoted by the on-robot
   trainer;
8. evaluate through the BrainService act path: the seed on ``reach2d`` against random and
   expert on the same 100 seeds, and the seed and the adapted brain on the shifted task;
9. the camera car (:mod:`continuonbrain.demo_car`, its own model store under ``car/``):
   expert laps on ``drive2d`` recorded as a Donkeycar tub, a pixel brain trained on it with the
   shipped config, gated, served and driven on unseen tracks;
10. print a summary table and serve the brain with the Robot Editor on 127.0.0.1 until
    Ctrl-C (``--no-serve`` stops after the table).

Everything lives under ``--workdir`` (default ``.demo/``). A second run reuses what exists:
the episodes, the trained seed and the adapted brain (recognised from the store's manifests)
and their evaluations (cached in ``demo_results.json`` by model version), so it goes
straight to the table and the server.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

DEMO_ENV = "reach2d"
DEMO_EPISODES = 200
DEMO_SEED = 0
#: The shifted task the seed is adapted to: targets rotated by 180 degrees, behind the robot.
#: (Half actuator gain was tried first: the seed's closed loop already absorbs it, 94% success,
#: so there was little to adapt; a new workspace region is what a seed cannot do.)
SHIFT = {"target_shift": math.pi}
SHIFT_EPISODES = 60
#: Evaluation episodes per policy; base seed 1000 so no evaluated episode was trained on.
EVAL_EPISODES = 100
EVAL_SEED = 1000
#: The gate's sim twin runs other episodes than the summary table (base seeds are mixed through
#: SeedSequence: 1000 and 2000 share none), so the table scores what the gate never saw.
TWIN_SEED = 2000
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
ADAPT_CONFIG = CONFIG_DIR / "sim-arm-lora.json"


def _record(
    out: Path,
    n: int,
    seed: int,
    env_kwargs: dict[str, Any] | None,
    what: str,
    *,
    env_id: str = DEMO_ENV,
    format: str = "continuon",
    dart_sigma: float = 0.1,
) -> dict[str, Any] | None:
    """Expert episodes into ``out`` unless a complete recording is there already (``env_id``,
    ``format`` and ``dart_sigma``: the car segment records drive2d tubs with them)."""
    from continuonbrain.sim.collect import collect_to_dir

    done = out / ".complete"
    if done.exists():
        print(f"  reusing {what} in {out}")
        return None
    if out.exists():
        shutil.rmtree(out)  # an interrupted recording: start it over
    summary = collect_to_dir(
        env_id, n, out, format, seed=seed, dart_sigma=dart_sigma, env_kwargs=env_kwargs, progress=f"recording {what}"
    )
    done.write_text("ok\n")
    return summary


def _count_windows(source: Path, dataset_cls: type) -> tuple[int, int]:
    ds = dataset_cls(str(source))
    n = 0
    episodes = set()
    for item in tqdm(ds, desc=f"slicing {dataset_cls.__name__}", unit="win", mininterval=0.5, leave=False):
        n += 1
        episodes.add(item["episode_index"])
    return n, len(episodes)


def _train(episodes_dir: Path, workdir: Path, overrides: dict[str, Any] | None = None) -> dict:
    """The shipped Pi 5 config (``overrides``: dotted keys, how the car segment scales it) into
    ``workdir/models``, with a progress bar per component."""
    from continuonbrain.trainer.sequential import SequentialTrainer
    from continuonbrain.trainer.train_config import SequentialConfig

    cfg = SequentialConfig.from_json(
        CONFIG_DIR / "pi5-hope-v1.json",
        overrides,
        rlds_dir=str(episodes_dir),
        model_root=str(workdir / "models"),
        run_dir=str(workdir / "runs" / "hope-v1"),
    )
    bars: dict[str, tqdm] = {}

    def progress(event: dict) -> None:
        name = event.get("component")
        if event.get("event") == "component_start":
            bars[name] = tqdm(
                total=event["steps"], initial=event["step"], desc=f"training {name}", unit="step", mininterval=0.5
            )
        elif "loss" in event and name in bars:
            bars[name].update(event["step"] - bars[name].n)
            bars[name].set_postfix(loss=f"{event['loss']:.4f}")
        elif event.get("event") == "component_done" and name in bars:
            bars.pop(name).close()

    return SequentialTrainer(cfg, on_event=progress).run()


def _adapt(shifted_dir: Path, workdir: Path) -> Any:
    """LoRA-adapt ``current`` on the shifted episodes with the shipped sim config (gated, promoted)."""
    from continuonbrain.trainer.local_lora_trainer import maybe_run_local_training
    from continuonbrain.trainer.lora_config import LocalTrainerJobConfig

    cfg = LocalTrainerJobConfig.from_json(ADAPT_CONFIG).with_overrides(
        {
            "rlds_dir": str(shifted_dir),
            "model_root": str(workdir / "models"),
            "log_dir": str(workdir / "runs" / "adapt-logs"),
        }
    )
    bar = tqdm(total=cfg.max_steps, desc="adapting (LoRA)", unit="step", mininterval=0.5)

    def progress(event: dict) -> None:
        if event.get("event") == "step":
            bar.update(event["step"] - bar.n)
            bar.set_postfix(loss=f"{event['loss']:.4f}")

    try:
        # the one gate with the store's gate config (the sim twin of the live task included)
        return maybe_run_local_training(cfg, on_event=progress, closed_loop=_sim_twin(workdir / "models", cfg.safety))
    finally:
        bar.close()


def _gate_config(models: Path, env_id: str = DEMO_ENV, sim_episodes: int | None = None) -> Any:
    """The store's gate config: written once with a sim twin of the live task (what the Robot
    Editor's arm runs: ``reach2d``, unseen seeds; the car's store: ``drive2d``), so the seed's
    gate, the adapter's and a later ``models promote`` or Robot Editor promotion all judge
    closed-loop on that task. ``sim_episodes`` None: the shipped default, which goes with the
    shipped ``sim_margin`` (fewer episodes would need a wider margin; ``bench/bench_gate.py``)."""
    from continuonbrain.models.promotion import GATE_CONFIG_FILE, load_gate_config, write_gate_config
    from continuonbrain.models.safety import SafetyGateConfig

    if not (models / GATE_CONFIG_FILE).is_file():
        episodes = {} if sim_episodes is None else {"sim_episodes": sim_episodes}
        write_gate_config(models, SafetyGateConfig(sim_env=env_id, sim_seed=TWIN_SEED, **episodes))
    return load_gate_config(models)


def _sim_twin(models: Path, fallback: Any = None) -> Any:
    from continuonbrain.models.promotion import load_gate_config
    from continuonbrain.runtime.sim_twin import closed_loop_runner

    return closed_loop_runner(load_gate_config(models, fallback)[0])


def _evaluate(
    models: Path,
    env_kwargs: dict[str, Any] | None,
    cache: dict[str, Any],
    key: str,
    *,
    env_id: str = DEMO_ENV,
    episodes: int = EVAL_EPISODES,
    slot: str = "current",
) -> dict[str, Any]:
    """Score ``slot`` through BrainService (cached by version, so a rerun is instant)."""
    from continuonbrain.models.store import PromotionStore
    from continuonbrain.runtime.served_policy import evaluate_served

    version = (PromotionStore(models).manifest(slot) or {}).get("version")
    cached = cache.get(key)
    if cached and cached.get("model_version") == version:
        return cached
    t0 = time.perf_counter()
    print(f"  evaluating {version} on {env_id}{' ' + json.dumps(env_kwargs) if env_kwargs else ''} "
          f"({episodes} episodes each: model, random, expert)")  # fmt: skip
    result = evaluate_served(models, env_id, slot=slot, episodes=episodes, seed=EVAL_SEED, env_kwargs=env_kwargs)
    result.pop("per_episode", None)
    for b in (result.get("baselines") or {}).values():
        if b:
            b.pop("per_episode", None)
    result["eval_s"] = round(time.perf_counter() - t0, 1)
    cache[key] = result
    return result


def _adapted_scores(
    models: Path, workdir: Path, served: dict[str, Any], cache: dict[str, Any]
) -> dict[str, Any] | None:
    """The LoRA-adapted brain on the shifted task and on the original one, promoted or not.

    A promoted adapter is scored as served; one the gate refused is scored from
    ``rejected/<version>`` (copied into a scratch store's candidate slot), so the table shows
    what adaptation did to both tasks whatever the gate decided (issue 13: no silent forgetting).
    None when no adaptation ran."""
    if served.get("kind") != "hope-seed":
        store, slot, verdict = models, "current", "promoted"
    else:
        rejected = sorted((models / "rejected").glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
        rejected = [p.parent for p in rejected if json.loads(p.read_text()).get("kind") != "hope-seed"]
        if not rejected:
            return None
        store, slot, verdict = workdir / "adapter-eval", "candidate", "refused"
        if store.exists():
            shutil.rmtree(store)
        # the slot as it was a candidate: the gate's own gate.json is not one of its files
        shutil.copytree(rejected[-1], store / "candidate", ignore=shutil.ignore_patterns("gate.json"))
    return {
        "verdict": verdict,
        "shifted": _evaluate(store, SHIFT, cache, "adapted_on_shifted", slot=slot),
        "original": _evaluate(store, None, cache, "adapted_on_reach2d", slot=slot),
    }


def _row(name: str, r: dict[str, Any] | None) -> str:
    from continuonbrain.sim.evaluate import percent

    if r is None:
        return f"    {name:<26} n/a"
    return f"    {name:<26} {percent(r['success_rate']):>8}  {r['mean_final_distance']:>8.3f}  {r['mean_return']:>9.2f}"


def run_demo(workdir: Path, serve: bool = True, port: int = 8080) -> int:
    from continuonbrain.models.promotion import promote_candidate
    from continuonbrain.models.store import PromotionStore
    from continuonbrain.rlds import read_episodes
    from continuonbrain.rlds.validate import validate_path
    from continuonbrain.rlds.windows import FastWindowDataset, MidTrajectoryDataset
    from continuonbrain.rlds.writer import convert

    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    episodes_dir, shifted_dir = workdir / "episodes", workdir / "episodes-behind"
    tfds_dir, models = workdir / "tfds", workdir / "models"
    results_path = workdir / "demo_results.json"
    cache: dict[str, Any] = json.loads(results_path.read_text()) if results_path.exists() else {}
    rows: list[tuple[str, str]] = []
    t0 = time.perf_counter()

    print(f"[1/9] expert episodes in {DEMO_ENV}")
    summary = _record(episodes_dir, DEMO_EPISODES, DEMO_SEED, None, f"{DEMO_EPISODES} expert episodes")
    if summary:
        rows.append(("expert success while recording", f"{summary['success_rate']:.0%}"))

    print("[2/9] validating")
    report = validate_path(episodes_dir, quarantine_dir=workdir / "quarantine")
    rows.append(("episodes ok / bad", f"{report.episodes_ok} / {report.episodes_bad} ({report.steps_ok} steps)"))

    print(f"[3/9] converting to a TFDS RLDS dataset -> {tfds_dir}")
    # the demo's own scratch copy, rebuilt on every run from the episodes (said, never silent)
    converted = convert(episodes_dir, tfds_dir, "tfds", name="continuon_demo", overwrite=tfds_dir.exists())
    back = sum(len(ep) for ep in tqdm(read_episodes(tfds_dir), desc="reading TFDS back", unit="ep", leave=False))
    rows.append(("TFDS round trip", f"{converted['written']} episodes, {back} steps read back"))

    print("[4/9] slicing Fast (100 ms) and Mid (2 s) windows")
    fast, n_eps = _count_windows(tfds_dir, FastWindowDataset)
    mid, _ = _count_windows(episodes_dir, MidTrajectoryDataset)
    rows.append(("Fast / Mid windows", f"{fast} / {mid} over {n_eps} episodes"))

    store = PromotionStore(models)
    current = store.manifest("current") if store.slot("current").exists() else None
    if current is None:
        print("[5/9] training the HOPE v1 seed, one component at a time")
        trained = _train(episodes_dir, workdir)
        for name, c in trained["components"].items():
            loss = f"loss {c['initial_loss']:.3f} -> {c['final_loss']:.3f}"
            rows.append((f"trained {name}", f"{c['steps']} steps, {loss}, {c['wall_time_s']:.0f} s"))
        print("[6/9] gating the candidate (shadow evaluation on held-out episodes) and promoting it")
        gate_cfg, source = _gate_config(models)
        gate, _ = promote_candidate(
            models, rlds_dir=episodes_dir, cfg=gate_cfg, closed_loop=_sim_twin(models), config_source=source
        )
        rows.append(("seed gate", ("promoted" if gate.passed else "REJECTED") + f": {gate.reason}"))
        if not gate.passed:
            print(f"the seed was rejected by the gate ({gate.reason}); see {models / 'audit.jsonl'}")
            return 1
    else:
        print(f"[5/9] [6/9] reusing the promoted brain {current['version']} ({current.get('kind')})")

    current = store.manifest("current") or {}
    if current.get("kind") == "hope-seed":
        cache["seed_version"] = current["version"]
        seed_base = _evaluate(models, None, cache, "seed_on_reach2d")
        seed_shift = _evaluate(models, SHIFT, cache, "seed_on_shifted")
        results_path.write_text(json.dumps(cache, indent=2) + "\n")
        print("[7/9] adapting with LoRA to a shifted task: targets behind the robot")
        _record(shifted_dir, SHIFT_EPISODES, DEMO_SEED + 1, SHIFT, f"{SHIFT_EPISODES} shifted-task episodes")
        result = _adapt(shifted_dir, workdir)
        before = "n/a" if result.before_avg_action_delta is None else f"{result.before_avg_action_delta:.3f}"
        after = "n/a" if result.after_avg_action_delta is None else f"{result.after_avg_action_delta:.3f}"
        rows.append(("LoRA adaptation", f"{result.status} ({result.reason or 'gate passed'}); "
                     f"held-out action error {before} -> {after}, {result.steps} steps"))  # fmt: skip
    else:
        print("[7/9] reusing the adapted brain")
        seed_base, seed_shift = cache.get("seed_on_reach2d"), cache.get("seed_on_shifted")

    print("[8/9] evaluating through BrainService.act")
    served = store.manifest("current") or {}
    adapted = _adapted_scores(models, workdir, served, cache)
    results_path.write_text(json.dumps(cache, indent=2) + "\n")
    live = "the Robot Editor's live arm runs ordinary reach2d with it"
    rows.append(("serving", f"{served.get('version')} ({served.get('kind')}); {live}"))

    # -- the camera car: its own segment and model store (continuonbrain/demo_car.py) --
    from continuonbrain.demo_car import run_car

    car = run_car(workdir, cache)
    results_path.write_text(json.dumps(cache, indent=2) + "\n")
    rows += car.rows
    # -- end of the camera car --
    rows.append(("wall time", f"{time.perf_counter() - t0:.1f} s"))

    print("\n[9/9] ContinuonBrain demo: the loop, closed")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print(f"\n  reflex on {DEMO_ENV}, {EVAL_EPISODES} held-out seeds     success  distance     return")
    if seed_base:
        print(_row("HOPE seed", seed_base))
        print(_row("expert (scripted IK)", seed_base["baselines"]["expert"]))
        print(_row("random", seed_base["baselines"]["random"]))
    if adapted:  # what adaptation did to the task the brain could already do
        print(_row(f"HOPE + LoRA ({adapted['verdict']})", adapted["original"]))
    print("  shifted task: targets behind the robot")
    if seed_shift:
        print(_row("HOPE seed (before)", seed_shift))
    if adapted:
        print(_row(f"HOPE + LoRA ({adapted['verdict']})", adapted["shifted"]))
    if seed_shift:
        print(_row("expert (scripted IK)", seed_shift["baselines"]["expert"]))
    print("\n".join(car.table))
    print(f"\n  results: {results_path}")

    if serve:
        _serve(models, episodes_dir, workdir, port)
    return 0 if report.episodes_bad == 0 and car.ok else 1


def _serve(models: Path, episodes_dir: Path, workdir: Path, port: int) -> None:
    from continuonbrain.runtime.api import serve

    port = port if _port_free(port) else _free_port()

    def ready(host: str, port: int, token_path: Path) -> None:
        print(f"\nRobot Editor: http://{host}:{port}/   token: {token_path}   (Ctrl-C stops)", flush=True)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how the demo ends
        serve(models, port=port, rlds_dir=episodes_dir, run_root=workdir / "runs", adapt_config=ADAPT_CONFIG,
              on_ready=ready, log_level="warning")  # fmt: skip


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
