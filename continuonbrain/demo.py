"""``continuonbrain demo``: the product story in one command, on the built-in defaults.

It records expert episodes in the ``reach2d`` simulator (once; a second run reuses them),
validates them, converts them to a TFDS RLDS dataset and reads that back, slices Fast and
Mid windows, and trains the HOPE v1 seed sequentially with the shipped Pi 5 config (VQ-VAE,
then Mid loop, then Fast loop), which lands in the model store's candidate slot. Promotion
and serving join this story as those parts land.
"""

from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

DEMO_ENV = "reach2d"
DEMO_EPISODES = 200
DEMO_SEED = 0


def _count_windows(source: Path, dataset_cls: type) -> tuple[int, int]:
    ds = dataset_cls(str(source))
    n = 0
    episodes = set()
    for item in ds:
        n += 1
        episodes.add(item["episode_index"])
    return n, len(episodes)


def _train(episodes_dir: Path, workdir: Path) -> dict:
    from continuonbrain.cli import DEFAULT_HOPE_CONFIG
    from continuonbrain.trainer.sequential import SequentialTrainer
    from continuonbrain.trainer.train_config import SequentialConfig

    cfg = SequentialConfig.from_json(
        DEFAULT_HOPE_CONFIG,
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


def run_demo(workdir: Path, serve: bool = True) -> int:
    from continuonbrain.rlds import read_episodes
    from continuonbrain.rlds.validate import validate_path
    from continuonbrain.rlds.windows import FastWindowDataset, MidTrajectoryDataset
    from continuonbrain.rlds.writer import convert
    from continuonbrain.sim.collect import collect_to_dir

    workdir.mkdir(parents=True, exist_ok=True)
    episodes_dir = workdir / "episodes"
    tfds_dir = workdir / "tfds"
    rows: list[tuple[str, str]] = []
    t0 = time.perf_counter()

    if not episodes_dir.exists() or not any(episodes_dir.iterdir()):
        print(f"[1/5] recording {DEMO_EPISODES} expert episodes in {DEMO_ENV} -> {episodes_dir}")
        summary = collect_to_dir(DEMO_ENV, DEMO_EPISODES, episodes_dir, seed=DEMO_SEED, dart_sigma=0.1)
        rows.append(("expert success rate", f"{summary['success_rate']:.0%}"))
    else:
        print(f"[1/5] reusing the episodes in {episodes_dir}")

    print("[2/5] validating")
    report = validate_path(episodes_dir, quarantine_dir=workdir / "quarantine")
    rows.append(("episodes ok / bad", f"{report.episodes_ok} / {report.episodes_bad}"))
    rows.append(("steps", str(report.steps_ok)))

    print(f"[3/5] converting to a TFDS RLDS dataset -> {tfds_dir}")
    converted = convert(episodes_dir, tfds_dir, "tfds", name="continuon_demo")
    back = sum(len(ep) for ep in tqdm(read_episodes(tfds_dir), desc="reading TFDS back", unit="ep"))
    rows.append(("TFDS round trip", f"{converted['written']} episodes, {back} steps read back"))

    print("[4/5] slicing Fast (100 ms) and Mid (2 s) windows")
    fast, n_eps = _count_windows(tfds_dir, FastWindowDataset)
    mid, _ = _count_windows(episodes_dir, MidTrajectoryDataset)
    rows.append(("Fast windows", f"{fast} over {n_eps} episodes"))
    rows.append(("Mid windows", str(mid)))

    print("[5/5] training the HOPE v1 seed, one component at a time")
    summary = _train(episodes_dir, workdir)
    for name, c in summary["components"].items():
        loss = f"loss {c['initial_loss']:.3f} -> {c['final_loss']:.3f}"
        rows.append((f"trained {name}", f"{c['steps']} steps, {loss}, {c['wall_time_s']:.0f} s"))
    rows.append(("wall time", f"{time.perf_counter() - t0:.1f} s"))

    width = max(len(k) for k, _ in rows)
    print("\nContinuonBrain demo: the loop so far")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    if serve:
        print("\nServing (BrainService + Robot Editor) is not part of this build yet; nothing to serve.")
    return 0 if report.episodes_bad == 0 else 1
