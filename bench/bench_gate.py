"""Does the promotion gate predict behaviour? Candidates of known quality, judged three ways.

    python bench/bench_gate.py [--eval-episodes 100] [--eval-seed 5000] [--twin-max 300] [--data DIR]
    python bench/bench_gate.py --train-only seed-1000 adapter-rehearsal   # cache some in a second process

The demo's task (:mod:`continuonbrain.demo`, its constants): ``DEMO_EPISODES`` expert episodes
of ``reach2d`` (seed ``DEMO_SEED``, DART noise 0.1) and ``SHIFT_EPISODES`` of the shifted task
(``SHIFT``: targets behind the robot). The **current** model is a seed trained on them with the
shipped ``pi5-hope-v1`` config (training seed 0) and promoted. Candidates, each judged against
that current in a fresh copy of its store:

* ``seed-N``: seeds trained on the same episodes with another training seed (1), the shipped
  config with ``components.fast_loop.max_steps`` N in 10, 30, 100, 150, 200, 300, 1000 (1000
  is the shipped default: a candidate as good as the current). The VQ-VAE and Mid loop are the
  current's (:func:`make_seed_candidate` says why that does not change what they do);
* ``adapter-no-rehearsal`` / ``adapter-rehearsal``: LoRA adapters of the current on the shifted
  task with the shipped ``sim-arm-lora`` config, ``replay.share`` 0 and the config's. They are
  judged for the **original** task, since that is what the current does (and what the demo's
  live arm runs): an adapter that forgets it must be refused;
* ``broken-mirrored`` (the Fast loop's output head negated: every command points the wrong way),
  ``broken-offset`` / ``broken-nudge`` (a constant 0.3 / 0.1 added to the head's pre-tanh
  output: a bias that parks the arm off target), all inside the action bounds, written as
  ordinary seed slots.

Each candidate is judged by

* (a) the **offline gate**: the held-out paired check, the ceiling and the bounds, no sim twin
  (``SafetyGateConfig()`` as shipped, ``sim_env`` unset); for an adapter the held-out episodes
  are its own (the shifted task's), as the adapter trainer gates them;
* (b) the **full gate**: the same plus the sim twin ``reach2d`` at the shipped defaults of
  ``sim_episodes`` / ``sim_margin`` / ``sim_seed`` (or ``--sim-episodes`` / ``--sim-margin``),
  and for adapters the forgetting check on the seed's held-out episodes (the replay set);
  run through :func:`~continuonbrain.models.promotion.gate_candidate` and
  :func:`~continuonbrain.runtime.sim_twin.closed_loop_runner`, exactly the path ``models
  promote`` takes, and timed;
* (c) its **true closed-loop success** on ``--eval-episodes`` episodes of base seed
  ``--eval-seed`` (5000: disjoint from the sim twin's 1000 and the training data's 0) through
  ``BrainService.act`` (:func:`~continuonbrain.runtime.served_policy.evaluate_served`).

A candidate is **bad** when its true success is more than 5 points below the current's.
Summary per gate: bad candidates let through, good ones refused.

To choose the sim twin's defaults without re-running the gate per setting, every model is also
run once on ``--twin-max`` (300) twin episodes. Per (``N`` episodes, margin ``m``) setting: the
one-draw verdict, :func:`~continuonbrain.models.safety.sim_check` on the first ``N`` of them
(the gate with ``sim_episodes=N`` runs exactly those seeds: episode ``i`` uses
``episode_seed(1000, i)``; the bench checks that this agrees with the real gate's at the
defaults), and the probability of passing from a paired bootstrap (:func:`pass_probabilities`),
since one draw of a candidate near the line is luck.

Trained models are cached under ``--data`` (a rerun only judges). Results:
``bench/results/bench_gate.json`` and ``bench/results/bench_gate.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from continuonbrain import demo  # noqa: E402  (after the path insert: runs from a checkout)

#: The issue's 10, 30, 100, 300, 1000 plus 150 and 200: the region where success climbs from
#: ~60% to ~98%, so that some candidates fall near the 5-point line.
SEED_STEPS = (10, 30, 100, 150, 200, 300, 1000)
#: Pre-tanh offsets added to the Fast loop head's bias: a broken candidate per entry.
BROKEN_OFFSETS = {"offset": 0.3, "nudge": 0.1}
CANDIDATE_TRAINING_SEED = 1
#: A candidate whose true success is more than this many points below the current's is bad.
BAD_POINTS = 5.0
#: (sim_episodes, sim_margin) settings of the sensitivity table.
TWIN_GRID_EPISODES = (20, 50, 100, 200)
TWIN_GRID_MARGINS = (0.0, 0.02, 0.03, 0.05, 0.10)
#: Paired bootstrap resamples per (candidate, setting) for the probability of passing.
BOOTSTRAP = 1000
#: The settings whose per-candidate pass probabilities the Markdown table shows.
REPORT_SETTINGS = ("N=20 m=0.1", "N=50 m=0.05", "N=100 m=0.03", "N=100 m=0.05", "N=200 m=0.03")
TWIN_FIELDS = ("sim_env", "sim_episodes", "sim_margin", "sim_seed", "sim_distance_margin")
NO_WALL_TIME = {f"components.{c}.max_wall_time_s": None for c in ("vqvae", "mid_loop", "fast_loop")}


# --------------------------------------------------------------------------- data and models


def record_data(data: Path) -> tuple[Path, Path]:
    """(reach2d expert episodes, shifted-task episodes), recorded once as the demo records them."""
    from continuonbrain.sim.collect import collect_to_dir

    base, shifted = data / "episodes", data / "episodes-behind"
    for out, n, seed, kwargs in (
        (base, demo.DEMO_EPISODES, demo.DEMO_SEED, None),
        (shifted, demo.SHIFT_EPISODES, demo.DEMO_SEED + 1, demo.SHIFT),
    ):
        if not (out / ".complete").exists():
            shutil.rmtree(out, ignore_errors=True)
            collect_to_dir(demo.DEMO_ENV, n, out, seed=seed, dart_sigma=0.1, env_kwargs=kwargs)
            (out / ".complete").write_text("ok\n")
    return base, shifted


def train_seed(
    episodes: Path,
    models: Path,
    run_dir: Path,
    *,
    seed: int,
    fast_steps: int | None,
    resume: bool = False,
    threads: int | None = None,
) -> None:
    """The shipped seed config into ``models/candidate`` (steps, not seconds: a busy machine
    must not stop a component early and change the table). ``resume``: train on from what
    ``run_dir`` holds (components marked done there are kept, as ``train --resume`` does)."""
    from continuonbrain.trainer.sequential import SequentialTrainer
    from continuonbrain.trainer.train_config import SequentialConfig

    overrides: dict[str, Any] = {**NO_WALL_TIME, "seed": seed}
    if fast_steps is not None:
        overrides["components.fast_loop.max_steps"] = fast_steps
    if threads is not None:
        overrides["torch_threads"] = threads
    cfg = SequentialConfig.from_json(
        demo.CONFIG_DIR / "pi5-hope-v1.json",
        overrides,
        rlds_dir=str(episodes),
        model_root=str(models),
        run_dir=str(run_dir),
    )
    SequentialTrainer(cfg).run(resume=resume)


def ensure_current(data: Path, episodes: Path) -> Path:
    """The current model's store: the shipped seed (training seed 0), promoted by the offline gate."""
    from continuonbrain.models.promotion import promote_candidate
    from continuonbrain.models.store import PromotionStore

    models = data / "current-store"
    if PromotionStore(models).current_version() is None:
        run_dir = data / "runs" / "current"
        shutil.rmtree(models, ignore_errors=True)
        # an interrupted bench trains on from the run's checkpoints
        resume = (run_dir / "state.json").is_file()
        # one torch thread: on a machine other jobs share, two threads spin-wait for each other
        train_seed(episodes, models, run_dir, seed=0, fast_steps=None, resume=resume, threads=1)
        gate, _ = promote_candidate(models, rlds_dir=episodes)
        if not gate.passed:
            raise SystemExit(f"the current seed was rejected by the gate: {gate.reason}")
    return models


def copy_current(current_store: Path, dest: Path) -> Path:
    """A fresh store holding the current model only (no candidate, no audit of earlier runs)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    shutil.copytree(current_store / "current", dest / "current")
    return dest


def cached_slot(data: Path, name: str) -> Path:
    return data / "candidates" / name


def make_seed_candidate(data: Path, episodes: Path, steps: int) -> Path:
    """A seed whose Fast loop is trained ``steps`` steps with another training seed.

    The VQ-VAE and the Mid loop are the current's (its run directory is copied with those
    components marked done, and the run resumed: only the Fast loop is trained). With the
    shipped ``model.fast.use_context: false`` the Fast loop acts on the observation alone, so
    they do not change what the candidate does; sharing them saves two components per
    candidate on a machine other jobs share. One torch thread for the same reason."""
    name = f"seed-{steps}"
    slot = cached_slot(data, name)
    if (slot / "manifest.json").is_file():
        return slot
    base_run, run_dir = data / "runs" / "current", data / "runs" / name
    state = json.loads((base_run / "state.json").read_text())
    done = {k: v for k, v in state["components"].items() if k != "fast_loop" and v.get("status") == "done"}
    if set(done) != {"vqvae", "mid_loop"}:
        raise SystemExit(f"{name}: the current's run in {base_run} has not finished its VQ-VAE and Mid loop")
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "components").mkdir(parents=True)
    for comp in done:
        shutil.copy2(base_run / "components" / f"{comp}.safetensors", run_dir / "components")
    shutil.copy2(base_run / "components" / "config.json", run_dir / "components")
    (run_dir / "state.json").write_text(json.dumps({**state, "components": done}))
    work = data / "work" / name
    shutil.rmtree(work, ignore_errors=True)
    train_seed(episodes, work, run_dir, seed=CANDIDATE_TRAINING_SEED, fast_steps=steps, resume=True, threads=1)
    shutil.rmtree(slot, ignore_errors=True)
    shutil.copytree(work / "candidate", slot)
    return slot


def make_adapter_candidate(data: Path, current_store: Path, shifted: Path, share: float | None) -> Path:
    """A LoRA adapter of the current on the shifted task (``share`` None: the config's default
    replay share). The trainer's own gate decides where it lands; the adapter is taken from
    there (current or rejected/) whatever it decided: this bench judges it itself."""
    from continuonbrain.trainer.local_lora_trainer import maybe_run_local_training
    from continuonbrain.trainer.lora_config import LocalTrainerJobConfig

    name = "adapter-rehearsal" if share is None else "adapter-no-rehearsal"
    slot = cached_slot(data, name)
    if (slot / "manifest.json").is_file():
        return slot
    work = copy_current(current_store, data / "work" / name)
    overrides: dict[str, Any] = {
        "rlds_dir": str(shifted),
        "model_root": str(work),
        "log_dir": str(data / "runs" / name),
        "budgets.max_wall_time_s": None,
    }
    if share is not None:
        overrides["replay.share"] = share
    cfg = LocalTrainerJobConfig.load(demo.ADAPT_CONFIG, overrides)
    result = maybe_run_local_training(cfg)
    version = result.candidate_version
    for where in (work / "current", work / "rejected" / str(version), work / "candidate"):
        manifest = where / "manifest.json"
        if manifest.is_file() and json.loads(manifest.read_text()).get("version") == version:
            shutil.rmtree(slot, ignore_errors=True)
            shutil.copytree(where, slot)
            # the trainer's gate record (rejected/<v>/gate.json) is not this bench's verdict, and a
            # candidate slot holds only the files its manifest lists
            (slot / "gate.json").unlink(missing_ok=True)
            return slot
    raise SystemExit(f"{name}: the adapter trainer produced no adapter ({result.status}: {result.reason})")


def make_broken_candidate(data: Path, current_store: Path, how: str) -> Path:
    """The current's weights with the Fast loop's output head broken (``mirrored``: negated;
    ``offset`` / ``nudge``: +0.3 / +0.1 on its pre-tanh bias, :data:`BROKEN_OFFSETS`), saved as
    an ordinary seed slot with the current's held-out record. Actions stay inside the bounds
    (the head ends in tanh)."""
    import torch

    from continuonbrain.hope import HopeBrain
    from continuonbrain.models.store import PromotionStore

    name = f"broken-{how}"
    slot = cached_slot(data, name)
    if (slot / "manifest.json").is_file():
        return slot
    src = current_store / "current"
    brain = HopeBrain.load(src, backend="torch")
    head = brain.fast_loop.head
    with torch.no_grad():
        if how == "mirrored":
            head.weight.neg_()
            head.bias.neg_()
        elif how in BROKEN_OFFSETS:
            head.bias.add_(BROKEN_OFFSETS[how])
        else:
            raise ValueError(f"unknown breakage {how!r}")
    files_dir = data / "work" / f"{name}-files"
    shutil.rmtree(files_dir, ignore_errors=True)
    files = brain.save(files_dir)
    current = json.loads((src / "manifest.json").read_text())
    work = copy_current(current_store, data / "work" / name)
    PromotionStore(work).write_slot(
        "candidate",
        files,
        components=list(current["components"]),
        kind=current.get("kind", "hope-seed"),
        parent=current["version"],
        extra={"rlds_dir": current.get("rlds_dir"), "held_out": current.get("held_out"), "broken": how},
    )
    shutil.rmtree(slot, ignore_errors=True)
    shutil.copytree(work / "candidate", slot)
    return slot


# --------------------------------------------------------------------------- judging


def judge_store(data: Path, current_store: Path, slot: Path, name: str) -> Path:
    """A scratch store: the current model and ``slot`` as its candidate."""
    root = copy_current(current_store, data / "judge" / name)
    shutil.copytree(slot, root / "candidate")
    return root


def closed_loop(root: Path, slot: str, episodes: int, seed: int) -> dict[str, Any]:
    """``evaluate_served`` figures of ``root/slot`` on reach2d (not recorded in the store)."""
    from continuonbrain.runtime.served_policy import evaluate_served

    return evaluate_served(root, demo.DEMO_ENV, slot=slot, episodes=episodes, seed=seed, baselines=False, record=False)


def prefix_figures(run: dict[str, Any], n: int) -> dict[str, Any]:
    """The figures a run of the first ``n`` of ``run``'s episodes would report."""
    rows = run["per_episode"][:n]
    if len(rows) < n:
        raise ValueError(f"the twin run has {len(rows)} episodes, {n} asked for")
    return {
        "success_rate": sum(bool(r["success"]) for r in rows) / n,
        "mean_final_distance": sum(float(r["final_distance"]) for r in rows) / n,
        "mean_return": sum(float(r["return"]) for r in rows) / n,
        "distance_metric": run.get("distance_metric"),
    }


def figures(run: dict[str, Any]) -> dict[str, Any]:
    return {k: run.get(k) for k in ("success_rate", "mean_final_distance", "mean_return", "model_version")}


def judge(
    root: Path,
    kind: str,
    current_held_out: Sequence[Any],
    gate_cfg: Any,
    twin_max: int,
    current_twin: dict[str, Any],
) -> dict[str, Any]:
    """The offline and the full gate on ``root``'s candidate, plus its 100-episode twin run."""
    from continuonbrain.models.promotion import gate_candidate, hope_policy, manifest_held_out
    from continuonbrain.models.safety import SafetyGateConfig
    from continuonbrain.models.store import PromotionStore
    from continuonbrain.runtime.sim_twin import closed_loop_runner

    store = PromotionStore(root)
    manifest = store.manifest("candidate") or {}
    offline_cfg = SafetyGateConfig()
    held_out, info = manifest_held_out(manifest, offline_cfg)
    replay = list(current_held_out) if kind == "adapter" else None

    offline = gate_candidate(store, held_out, offline_cfg, hope_policy, held_out_info=info)
    t0 = time.perf_counter()
    full = gate_candidate(
        store,
        held_out,
        gate_cfg,
        hope_policy,
        replay=replay,
        closed_loop=closed_loop_runner(gate_cfg),
        held_out_info=info,
    )
    full_s = time.perf_counter() - t0
    # the offline part of the full gate (held-out, forgetting) without the twin, for the grid
    offline_full = gate_candidate(store, held_out, offline_cfg, hope_policy, replay=replay, held_out_info=info)
    twin = closed_loop(root, "candidate", twin_max, gate_cfg.sim_seed)

    def check_summary(result: Any) -> dict[str, Any]:
        checks = result.checks
        out: dict[str, Any] = {"passed": result.passed, "reason": result.reason}
        held = checks.get("held_out", {})
        out["held_out"] = {k: held.get(k) for k in ("candidate", "current", "paired_mean_diff", "margin", "passed")}
        if "forgetting" in checks:
            f = checks["forgetting"]
            out["forgetting"] = {k: f.get(k) for k in ("candidate", "current", "paired_mean_diff", "margin", "passed")}
        if "sim_twin" in checks:
            s = checks["sim_twin"]
            out["sim_twin"] = {k: s.get(k) for k in ("candidate", "current", "margin", "passed", "skipped")}
            if "distance" in s:
                out["sim_twin"]["distance"] = s["distance"]
        return out

    return {
        "held_out_source": info.get("source"),
        "held_out_episodes": len(held_out),
        "offline": check_summary(offline),
        "full": {**check_summary(full), "wall_s": round(full_s, 1)},
        "offline_with_forgetting": check_summary(offline_full),
        "twin": {**figures(twin), "per_episode": twin["per_episode"]},
        "twin_current": figures(current_twin),
    }


def grid_verdicts(row: dict[str, Any], current_twin: dict[str, Any], base_cfg: Any) -> dict[str, dict[str, bool]]:
    """Verdicts per (sim_episodes, sim_margin) from the prefix of the twin runs: ``full`` (the
    offline checks, forgetting included, and the twin) and ``twin_only`` (the twin's check
    alone, what it would decide on a candidate the offline checks let through)."""
    from continuonbrain.models.safety import sim_check

    full, twin_only = {}, {}
    offline_ok = row["offline_with_forgetting"]["passed"]
    for n in TWIN_GRID_EPISODES:
        for m in TWIN_GRID_MARGINS:
            cfg = base_cfg.with_overrides({"sim_episodes": n, "sim_margin": m})
            check = sim_check(prefix_figures(row["twin"], n), prefix_figures(current_twin, n), cfg)
            twin_only[f"N={n} m={m}"] = bool(check["passed"])
            full[f"N={n} m={m}"] = bool(offline_ok and check["passed"])
    return {"full": full, "twin_only": twin_only}


def pass_probabilities(
    row: dict[str, Any], current_twin: dict[str, Any], base_cfg: Any, rng: Any
) -> dict[str, dict[str, float]]:
    """How often each (sim_episodes N, sim_margin) setting would let the candidate through.

    One gate run is one draw: whether a candidate 8 points worse shows it on 20 episodes is
    luck. So the twin's episodes (``--twin-max``, both models on the same seeds) are resampled
    in pairs, N at a time with replacement (the paired bootstrap: episode i of the candidate
    goes with episode i of the current, as in the gate), and each resample is judged by
    :func:`~continuonbrain.models.safety.sim_check`. ``full``: also needs the offline checks
    (forgetting included) to have passed; ``twin_only``: the twin's check alone."""
    import numpy as np

    from continuonbrain.models.safety import sim_check

    def arrays(run: dict[str, Any]) -> tuple[Any, Any, Any]:
        rows = run["per_episode"]
        return (
            np.array([bool(r["success"]) for r in rows], np.float64),
            np.array([float(r["final_distance"]) for r in rows]),
            np.array([float(r["return"]) for r in rows]),
        )

    cand, cur = arrays(row["twin"]), arrays(current_twin)
    total = min(len(cand[0]), len(cur[0]))
    offline_ok = row["offline_with_forgetting"]["passed"]
    full: dict[str, float] = {}
    twin_only: dict[str, float] = {}
    for n in TWIN_GRID_EPISODES:
        picks = rng.integers(0, total, size=(BOOTSTRAP, n))

        def figs(a: tuple[Any, Any, Any], idx: Any) -> dict[str, Any]:
            return {
                "success_rate": float(a[0][idx].mean()),
                "mean_final_distance": float(a[1][idx].mean()),
                "mean_return": float(a[2][idx].mean()),
            }

        draws = [(figs(cand, idx), figs(cur, idx)) for idx in picks]
        for m in TWIN_GRID_MARGINS:
            cfg = base_cfg.with_overrides({"sim_episodes": n, "sim_margin": m})
            p = sum(sim_check(c, r, cfg)["passed"] for c, r in draws) / BOOTSTRAP
            twin_only[f"N={n} m={m}"] = round(p, 3)
            full[f"N={n} m={m}"] = round(p if offline_ok else 0.0, 3)
    return {"full": full, "twin_only": twin_only}


# --------------------------------------------------------------------------- report


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def verdict(passed: bool) -> str:
    return "pass" if passed else "REFUSE"


def summarise(rows: list[dict[str, Any]], key: Any) -> dict[str, Any]:
    """Bad candidates a gate lets through and good ones it refuses (``key(row) -> passed``)."""
    bad_through = [r["name"] for r in rows if r["bad"] and key(r)]
    good_refused = [r["name"] for r in rows if not r["bad"] and not key(r)]
    return {
        "bad": sum(r["bad"] for r in rows),
        "good": sum(not r["bad"] for r in rows),
        "bad_let_through": bad_through,
        "good_refused": good_refused,
    }


def markdown(results: dict[str, Any]) -> str:
    rows, cur = results["candidates"], results["current"]
    cfg = results["full_gate_config"]
    lines = [
        f"Current: {pct(cur['true']['success_rate'])} true success ({results['eval_episodes']} episodes, "
        f"base seed {results['eval_seed']}); sim twin {cfg['sim_env']}, {cfg['sim_episodes']} episodes, "
        f"margin {cfg['sim_margin']}, seed {cfg['sim_seed']}.",
        "",
        "| candidate | true success | vs current | bad | offline gate | full gate | full gate's deciding check | "
        f"twin in the gate, cand vs cur | twin, {results['twin_max']} episodes | full gate wall time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        full = r["judged"]["full"]
        twin = full.get("sim_twin") or {}
        twin_txt = (
            f"{pct(twin['candidate'])} vs {pct(twin['current'])}" if twin.get("candidate") is not None else "not run"
        )
        lines.append(
            f"| {r['name']} | {pct(r['true']['success_rate'])} | {r['points_vs_current']:+.0f} | "
            f"{'bad' if r['bad'] else 'good'} | {verdict(r['judged']['offline']['passed'])} | "
            f"{verdict(full['passed'])} | {full['reason'][:90]} | {twin_txt} | "
            f"{pct(r['judged']['twin']['success_rate'])} vs {pct(cur['twin']['success_rate'])} | {full['wall_s']} s |"
        )
    lines += ["", "| gate | bad let through | good refused |", "|---|---|---|"]
    for name, s in results["summary"].items():
        through = ", ".join(s["bad_let_through"]) or "none"
        refused = ", ".join(s["good_refused"]) or "none"
        lines.append(
            f"| {name} | {len(s['bad_let_through'])} of {s['bad']} ({through}) | "
            f"{len(s['good_refused'])} of {s['good']} ({refused}) |"
        )
    lines += [
        "",
        "Per sim twin setting: one draw (the first N twin episodes, what the gate runs) and, from the",
        f"paired bootstrap over the {results['twin_max']} twin episodes, the expected number of bad candidates",
        "let through (sum of their pass probabilities), the worst bad one's pass probability and the",
        "expected number of good ones refused. 'Twin alone': the twin's check on every candidate, as if",
        "the offline checks had let it through.",
        "",
        "| N | margin | full, one draw: bad through / good refused | full, expected: bad through / "
        "good refused | twin alone, expected: bad through (worst) / good refused |",
        "|---|---|---|---|---|",
    ]
    for setting, g in results["grid_summary"].items():
        n, m = setting.split()
        e = results["expected"][setting]
        worst_p, worst = e["twin_only"]["worst_bad"]
        lines.append(
            f"| {n[2:]} | {m[2:]} | {len(g['full']['bad_let_through'])} / {len(g['full']['good_refused'])} | "
            f"{e['full']['bad_let_through']:.2f} / {e['full']['good_refused']:.2f} | "
            f"{e['twin_only']['bad_let_through']:.2f} ({worst} {worst_p:.2f}) / {e['twin_only']['good_refused']:.2f} |"
        )
    shown = [s for s in REPORT_SETTINGS if s in results["expected"]]
    lines += [
        "",
        "Twin alone, probability of passing per candidate:",
        "",
        "| candidate | true success | "
        + " | ".join(f"N={n[2:]}, m={m[2:]}" for n, m in (x.split() for x in shown))
        + " |",
        "|---|---|" + "---|" * len(shown),
    ]
    for r in rows:
        probs = " | ".join(f"{r['pass_probability']['twin_only'][x]:.2f}" for x in shown)
        lines.append(f"| {r['name']} ({'bad' if r['bad'] else 'good'}) | {pct(r['true']['success_rate'])} | {probs} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from continuonbrain.models.promotion import manifest_held_out
    from continuonbrain.models.safety import SafetyGateConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-episodes", type=int, default=100, help="true closed-loop success episodes")
    parser.add_argument("--eval-seed", type=int, default=5000, help="their base seed (not the twin's)")
    parser.add_argument("--twin-max", type=int, default=300, help="twin episodes run once per model for the grid")
    parser.add_argument("--sim-episodes", type=int, default=None, help="the full gate's (default: shipped)")
    parser.add_argument("--sim-margin", type=float, default=None, help="the full gate's (default: shipped)")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "continuonbrain-bench-gate")
    parser.add_argument(
        "--train-only",
        nargs="+",
        metavar="NAME",
        help="only make (and cache) these candidates, e.g. seed-1000 adapter-rehearsal, then exit: "
        "a second process can train some while the first trains others",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bench_gate.json")
    args = parser.parse_args()

    t_start = time.perf_counter()
    args.data.mkdir(parents=True, exist_ok=True)
    episodes, shifted = record_data(args.data)
    # seeds need only the current's run directory (its VQ-VAE and Mid loop), not its store
    seeds_only = bool(args.train_only) and all(n.startswith("seed-") for n in args.train_only)
    current_store = args.data / "current-store" if seeds_only else ensure_current(args.data, episodes)
    twin_overrides: dict[str, Any] = {"sim_env": demo.DEMO_ENV}
    if args.sim_episodes is not None:
        twin_overrides["sim_episodes"] = args.sim_episodes
    if args.sim_margin is not None:
        twin_overrides["sim_margin"] = args.sim_margin
    gate_cfg = SafetyGateConfig(**twin_overrides)
    needed = max(args.twin_max, gate_cfg.sim_episodes, *TWIN_GRID_EPISODES)

    makers: dict[str, tuple[str, Any]] = {}
    for steps in SEED_STEPS:
        makers[f"seed-{steps}"] = ("seed", lambda steps=steps: make_seed_candidate(args.data, episodes, steps))
    for name, share in (("adapter-no-rehearsal", 0.0), ("adapter-rehearsal", None)):
        makers[name] = ("adapter", lambda share=share: make_adapter_candidate(args.data, current_store, shifted, share))
    for how in ("mirrored", *BROKEN_OFFSETS):
        makers[f"broken-{how}"] = ("broken", lambda how=how: make_broken_candidate(args.data, current_store, how))
    if args.train_only:
        unknown = sorted(set(args.train_only) - set(makers))
        if unknown:
            raise SystemExit(f"--train-only: unknown candidate(s) {unknown}; known: {sorted(makers)}")
        for name in args.train_only:
            makers[name][1]()
            print(f"{name} ready", file=sys.stderr)
        return
    t0 = time.perf_counter()
    candidates = [(name, kind, make()) for name, (kind, make) in makers.items()]
    train_s = time.perf_counter() - t0
    print(f"candidates ready in {train_s:.0f} s", file=sys.stderr)

    current_manifest = json.loads((current_store / "current" / "manifest.json").read_text())
    current_held_out, _ = manifest_held_out(current_manifest, SafetyGateConfig())
    current_true = closed_loop(current_store, "current", args.eval_episodes, args.eval_seed)
    current_twin = closed_loop(current_store, "current", needed, gate_cfg.sim_seed)
    print(f"current: true {current_true['success_rate']:.2f}, twin {current_twin['success_rate']:.2f}", file=sys.stderr)

    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for name, kind, slot in candidates:
        root = judge_store(args.data, current_store, slot, name)
        true = closed_loop(root, "candidate", args.eval_episodes, args.eval_seed)
        judged = judge(root, kind, current_held_out, gate_cfg, needed, current_twin)
        points = 100 * (true["success_rate"] - current_true["success_rate"])
        row = {
            "name": name,
            "kind": kind,
            "version": json.loads((slot / "manifest.json").read_text())["version"],
            "true": figures(true),
            "points_vs_current": round(points, 1),
            "bad": points < -BAD_POINTS,
            "judged": judged,
        }
        row["grid"] = grid_verdicts(judged, current_twin, gate_cfg)
        row["pass_probability"] = pass_probabilities(judged, current_twin, gate_cfg, rng)
        derived = row["grid"]["full"].get(f"N={gate_cfg.sim_episodes} m={gate_cfg.sim_margin}")
        row["derived_matches_gate"] = None if derived is None else derived == judged["full"]["passed"]
        rows.append(row)
        print(
            f"{name}: true {true['success_rate']:.2f} offline {judged['offline']['passed']} "
            f"full {judged['full']['passed']} ({judged['full']['reason'][:120]})",
            file=sys.stderr,
        )

    summary = {
        "offline gate": summarise(rows, lambda r: r["judged"]["offline"]["passed"]),
        "full gate": summarise(rows, lambda r: r["judged"]["full"]["passed"]),
    }
    grid_summary = {
        setting: {
            which: summarise(rows, lambda r, s=setting, w=which: r["grid"][w][s]) for which in ("full", "twin_only")
        }
        for setting in rows[0]["grid"]["full"]
    }
    expected = {
        setting: {
            which: {
                "bad_let_through": round(sum(r["pass_probability"][which][setting] for r in rows if r["bad"]), 2),
                "good_refused": round(sum(1 - r["pass_probability"][which][setting] for r in rows if not r["bad"]), 2),
                "worst_bad": max(
                    ((r["pass_probability"][which][setting], r["name"]) for r in rows if r["bad"]), default=(0.0, None)
                ),
            }
            for which in ("full", "twin_only")
        }
        for setting in rows[0]["pass_probability"]["full"]
    }
    for r in rows:  # the JSON keeps the figures, not the rows of every twin episode
        r["judged"]["twin"].pop("per_episode", None)
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_note": "other jobs ran concurrently on the same 2 cores: wall times are upper bounds",
        "command": "python bench/bench_gate.py " + " ".join(sys.argv[1:]),
        "eval_episodes": args.eval_episodes,
        "eval_seed": args.eval_seed,
        "twin_max": args.twin_max,
        "bad_points": BAD_POINTS,
        "full_gate_config": {k: gate_cfg.to_dict()[k] for k in TWIN_FIELDS},
        "current": {
            "version": current_manifest["version"],
            "true": figures(current_true),
            "twin": figures(current_twin),
        },
        "candidates": rows,
        "summary": summary,
        "grid_summary": grid_summary,
        "expected": expected,
        "train_s": round(train_s, 1),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
