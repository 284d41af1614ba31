"""``continuonbrain demo``: the product story in one command, on the built-in defaults.

Today it runs the data path end to end: record expert episodes in the ``reach2d``
simulator (once; a second run reuses them), validate them, convert them to a TFDS RLDS
dataset and read that back, and slice both into Fast and Mid windows. Training, promotion
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
        print(f"[1/4] recording {DEMO_EPISODES} expert episodes in {DEMO_ENV} -> {episodes_dir}")
        summary = collect_to_dir(DEMO_ENV, DEMO_EPISODES, episodes_dir, seed=DEMO_SEED, dart_sigma=0.1)
        rows.append(("expert success rate", f"{summary['success_rate']:.0%}"))
    else:
        print(f"[1/4] reusing the episodes in {episodes_dir}")

    print("[2/4] validating")
    report = validate_path(episodes_dir, quarantine_dir=workdir / "quarantine")
    rows.append(("episodes ok / bad", f"{report.episodes_ok} / {report.episodes_bad}"))
    rows.append(("steps", str(report.steps_ok)))

    print(f"[3/4] converting to a TFDS RLDS dataset -> {tfds_dir}")
    converted = convert(episodes_dir, tfds_dir, "tfds", name="continuon_demo")
    back = sum(len(ep) for ep in tqdm(read_episodes(tfds_dir), desc="reading TFDS back", unit="ep"))
    rows.append(("TFDS round trip", f"{converted['written']} episodes, {back} steps read back"))

    print("[4/4] slicing Fast (100 ms) and Mid (2 s) windows")
    fast, n_eps = _count_windows(tfds_dir, FastWindowDataset)
    mid, _ = _count_windows(episodes_dir, MidTrajectoryDataset)
    rows.append(("Fast windows", f"{fast} over {n_eps} episodes"))
    rows.append(("Mid windows", str(mid)))
    rows.append(("wall time", f"{time.perf_counter() - t0:.1f} s"))

    width = max(len(k) for k, _ in rows)
    print("\nContinuonBrain demo: the data path")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    if serve:
        print("\nServing (BrainService + Robot Editor) is not part of this build yet; nothing to serve.")
    return 0 if report.episodes_bad == 0 else 1
