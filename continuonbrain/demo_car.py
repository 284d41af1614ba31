"""The camera car in ``continuonbrain demo``: Donkeycar tubs in, a pixel brain that drives out.

After the arm, :func:`run_car` tells the flagship story (README "Donkeycar") on the built-in
camera car, ``drive2d``:

1. record ``CAR_TRACKS`` expert laps (pure pursuit with DART noise), one random track each,
   as a **Donkeycar tub** (what a Donkeycar user's car records);
2. train the HOPE brain on the tub from pixels only, with the shipped ``pi5-hope-v1`` config
   (``CAR_OVERRIDES`` scales its steps and wall-time caps to the demo's time budget);
3. gate the candidate and promote it: the same gate as the arm's seed, its sim twin the car's
   task (``drive2d`` closed loop on unseen tracks, in the car store's ``gate_config.json``);
4. serve it through ``BrainService`` and drive it closed loop on ``CAR_EVAL_EPISODES`` unseen
   tracks, next to the random and expert drivers on the same tracks;
5. hand the demo its rows for the summary table (printed after the arm's).

Everything lives under ``<workdir>/car`` with its own model store, so the arm's store and the
car's never mix; a second run reuses the tub, the promoted brain and its evaluation (cached by
model version). The machinery (recording, training with progress bars, cached evaluation) is
the arm's, from :mod:`continuonbrain.demo`, parametrised rather than copied.

Why these sizes: the whole ``make demo`` must stay within 10 minutes on a 2-core machine and
the car segment within about 5. Twelve laps are ~2,600 frames (a Donkeycar user records a
few thousand in ten minutes of driving). ``bench/bench_drive_proof.py`` is the full-size
proof (20 tracks, the default config unscaled, the Donkeycar ``linear`` model beside it);
BENCHMARKS.md "Drive2d proof: pixels to laps" has its figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CAR_ENV = "drive2d"
#: Expert laps recorded, one new track each (base seed ``CAR_SEED``).
CAR_TRACKS = 12
CAR_SEED = 0
#: DART noise on the executed action: the expert still laps every track (bench_drive2d.py),
#: and the tub shows how it steers back from where a learner's errors take the car.
CAR_DART_SIGMA = 0.3
#: Unseen tracks driven in the evaluation (base seed 1000, as the arm's).
CAR_EVAL_EPISODES = 10
#: Dotted overrides of the shipped config for the demo's time budget: fewer VQ-VAE and Mid
#: loop steps (the world model; the Fast loop keeps its 1,000: the reflex is what drives, and
#: it trains its own conv encoder, ~0.12 s a step on two cores) and tighter wall-time caps (the
#: config's own budget mechanism), so training takes at most ~3.5 minutes of the segment's 5
#: however busy the machine; on a busy one fewer steps are trained, as on a hot Pi.
CAR_OVERRIDES: dict[str, Any] = {
    "components.vqvae.max_steps": 150,
    "components.vqvae.max_wall_time_s": 60,
    "components.mid_loop.max_steps": 50,
    "components.mid_loop.max_wall_time_s": 30,
    "components.fast_loop.max_wall_time_s": 120,
}
CACHE_KEY = "car_on_drive2d"


@dataclass
class CarResult:
    """What the car segment gives the demo: whether it succeeded, rows for the key/value
    part of the summary, and lines for the policy table."""

    ok: bool
    rows: list[tuple[str, str]] = field(default_factory=list)
    table: list[str] = field(default_factory=list)


def run_car(
    workdir: Path,
    cache: dict[str, Any],
    *,
    tracks: int = CAR_TRACKS,
    eval_episodes: int = CAR_EVAL_EPISODES,
    overrides: dict[str, Any] | None = None,
) -> CarResult:
    """Record, train, gate, serve and evaluate the camera car under ``workdir/car``.

    ``cache`` is the demo's results cache (``demo_results.json``); the car's evaluation is
    kept in it under ``car_on_drive2d``. ``tracks``, ``eval_episodes`` and ``overrides``
    exist so a test can run the segment at a tiny scale.
    """
    from continuonbrain.demo import _evaluate, _gate_config, _record, _row, _sim_twin, _train
    from continuonbrain.models.promotion import promote_candidate
    from continuonbrain.models.store import PromotionStore

    car = workdir / "car"
    tubs, models = car / "tub", car / "models"
    result = CarResult(ok=True)

    print(f"[car 1/4] expert laps on {tracks} {CAR_ENV} tracks, recorded as a Donkeycar tub")
    summary = _record(tubs, tracks, CAR_SEED, None, f"{tracks} expert laps", env_id=CAR_ENV, format="tub",
                      dart_sigma=CAR_DART_SIGMA)  # fmt: skip
    if summary:
        result.rows.append(
            ("car: tub recorded", f"{summary['steps']} frames, expert laps {summary['success_rate']:.0%}")
        )

    store = PromotionStore(models)
    current = store.manifest("current") if store.slot("current").exists() else None
    if current is None:
        scaled = {**CAR_OVERRIDES, **(overrides or {})}
        print(
            f"[car 2/4] training the HOPE brain from pixels, shipped config{f' scaled by {scaled}' if scaled else ''}"
        )
        trained = _train(tubs, car, scaled)
        total = sum(c["wall_time_s"] for c in trained["components"].values())
        fast = trained["components"].get("fast_loop", {})
        result.rows.append(("car: trained", f"{sum(c['steps'] for c in trained['components'].values())} steps, "
                            f"{total:.0f} s; fast loop loss {fast.get('initial_loss', float('nan')):.3f} -> "
                            f"{fast.get('final_loss', float('nan')):.3f}"))  # fmt: skip
        print("[car 3/4] gating the car's brain and promoting it")
        gate_cfg, source = _gate_config(models, env_id=CAR_ENV, sim_episodes=eval_episodes)
        gate, _ = promote_candidate(
            models, rlds_dir=tubs, cfg=gate_cfg, closed_loop=_sim_twin(models), config_source=source
        )
        result.rows.append(("car: gate", ("promoted" if gate.passed else "REJECTED") + f": {gate.reason}"))
        if not gate.passed:
            print(f"the car's brain was rejected by the gate ({gate.reason}); see {models / 'audit.jsonl'}")
            result.ok = False
            return result
    else:
        print(f"[car 2/4] [car 3/4] reusing the car's promoted brain {current['version']}")

    print(f"[car 4/4] serving it through BrainService.act and driving {eval_episodes} unseen tracks")
    scores = _evaluate(models, None, cache, CACHE_KEY, env_id=CAR_ENV, episodes=eval_episodes)
    served = store.manifest("current") or {}
    result.rows.append(("car: serving", f"{served.get('version')} ({served.get('kind')})"))
    result.table = [
        f"\n  camera car on {CAR_ENV}, {eval_episodes} unseen tracks     laps  |cte| m     return",
        _row("HOPE from pixels", scores),
        _row("expert (pure pursuit)", scores["baselines"]["expert"]),
        _row("random", scores["baselines"]["random"]),
    ]
    return result
