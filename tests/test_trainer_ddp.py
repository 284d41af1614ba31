"""Data-parallel HOPE training: the component trainer under ``torchrun --nproc_per_node=2``
(DDP, gloo, CPU) on loopback, as real processes.

Checks that the replicas end bit-identical (the trainer compares digests of every parameter
and buffer across ranks and records ``replicas_identical``), that this check does catch a
divergence (the VQ-VAE EMA codebook without its cross-rank update), that each rank trained
on its own share of the episodes, that one rank's thermal pause and memory stop act on every
rank, and that a two-rank run killed with ``kill -9`` and resumed ends with the same weights
as an uninterrupted two-rank run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch.distributed as dist
from safetensors.torch import load_file
from test_trainer_sequential import small_config

from continuonbrain.hope import HopeBrain
from continuonbrain.trainer.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = ("vqvae", "mid_loop", "fast_loop")


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> Path:
    from continuonbrain.sim.collect import collect_to_dir

    out = tmp_path_factory.mktemp("reach") / "episodes"
    collect_to_dir("reach2d", 60, out, seed=0, dart_sigma=0.1)
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(entry: str | Path, config: Path, run_dir: Path, models: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        str(entry), "--config", str(config), "--run-dir", str(run_dir), "--model-root", str(models), *extra,
    ]  # fmt: skip


# Loopback only: gloo picks its interface from the hostname unless told.
ENV = {**os.environ, "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONHASHSEED": "0"}


def run_ddp(cmd: list[str], timeout: float = 240) -> None:
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def read_events(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.endswith("}")]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, episodes: Path) -> Path:
    """One uninterrupted two-rank run of all three components, 15 steps each (shared by the
    tests below: the kill -9 test compares against it)."""
    tmp = tmp_path_factory.mktemp("ddp")
    small_config(tmp, episodes, steps=15)  # writes tmp/config.json
    data = json.loads((tmp / "config.json").read_text())
    data["components"]["mid_loop"]["checkpoint_every"] = 5
    (tmp / "config.json").write_text(json.dumps(data))
    run_ddp(torchrun("run_trainer.py", tmp / "config.json", tmp / "run", tmp / "models"))
    return tmp


def test_two_ranks_train_every_component_to_identical_replicas(ddp_run: Path) -> None:
    run_dir, models = ddp_run / "run", ddp_run / "models"

    summary = json.loads((run_dir / "summary.json").read_text())
    assert list(summary["components"]) == list(COMPONENTS)
    for name, c in summary["components"].items():
        assert c["world_size"] == 2, (name, c)
        assert c["init_identical"] is True and c["replicas_identical"] is True, (name, c)
        assert c["steps"] == 15 and c["stop_reason"] == "max_steps", (name, c)
        # Both ranks trained, each on its own episodes (WindowDataset shards by rank).
        assert len(c["windows_per_rank"]) == 2 and min(c["windows_per_rank"]) > 0, (name, c)
        assert len(c["episodes_per_rank"]) == 2 and min(c["episodes_per_rank"]) > 0, (name, c)
        assert c["episodes_shared_between_ranks"] == 0, (name, c)
        assert sum(c["episodes_per_rank"]) <= 60
    # The Mid loop cycles through its shards many times in 15 steps: all 52 training episodes
    # (the newest 8 of the 60 are held out for the gate), 26 per rank.
    assert summary["components"]["mid_loop"]["episodes_per_rank"] == [26, 26]
    assert len(json.loads((models / "candidate" / "manifest.json").read_text())["held_out"]["episode_ids"]) == 8

    # Only rank 0 writes: one metrics line per step, not one per rank.
    fast = [r for r in read_events(run_dir) if r.get("component") == "fast_loop" and "loss" in r]
    assert [r["step"] for r in fast] == list(range(1, 16))

    # The checkpoint carries each rank's own data position: rank r consumed shard r only.
    ckpt = load_checkpoint(run_dir / "checkpoints" / "vqvae.safetensors")
    assert ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2
    for rank, block in enumerate(ckpt["ranks"]):
        assert block["data"]["num_shards"] == 2 and set(block["data"]["consumed"]) <= {rank}

    brain = HopeBrain.load(models / "candidate")
    assert brain.components() == list(COMPONENTS)


# Behaviour is changed through the trainer's parameters (``sequential.main`` hands them on),
# never by patching module names.
NO_SHARED_CODEBOOK = """\
import sys

from continuonbrain.trainer.sequential import main

sys.exit(main(sys.argv[1:], share_codebooks=lambda module, seed: 0))  # each rank's EMA codebook on its own
"""


def test_replica_check_catches_a_codebook_updated_per_rank(tmp_path: Path, episodes: Path) -> None:
    """Negative control: without the cross-rank EMA update the codebook buffers diverge (DDP
    averages gradients, not buffers), and the trainer must say so."""
    small_config(tmp_path, episodes, steps=15, order=["vqvae"])
    entry = tmp_path / "train_no_shared_codebook.py"
    entry.write_text(NO_SHARED_CODEBOOK)
    run_ddp(torchrun(entry, tmp_path / "config.json", tmp_path / "run", tmp_path / "models"))
    vq = json.loads((tmp_path / "run" / "summary.json").read_text())["components"]["vqvae"]
    assert vq["world_size"] == 2 and vq["init_identical"] is True
    assert vq["replicas_identical"] is False
    assert set(vq["replica_mismatch"]) <= {f"quantizer.{b}" for b in ("embed", "embed_sum", "cluster_size", "code_age")}
    assert "quantizer.embed" in vq["replica_mismatch"]


ONE_RANK_GUARDS = """\
import os
import sys

from continuonbrain.trainer.budgets import MemoryGuard, ThermalGuard
from continuonbrain.trainer.sequential import main

RANK = os.environ["RANK"]


def thermal(cfg):  # each rank reads its own SoC sensor
    return ThermalGuard.from_config(cfg, sysfs_root=os.path.join(cfg.sysfs_root, "rank" + RANK))


def memory(budget_mb, min_available_mb, check_every):  # rank 1 runs out of memory at its third check
    if RANK == "1":
        budget_mb, check_every = 1.0, 3
    return MemoryGuard(budget_mb, min_available_mb, check_every)


sys.exit(main(sys.argv[1:], thermal_guard=thermal, memory_guard=memory))
"""


def test_one_ranks_thermal_pause_and_memory_stop_act_on_every_rank(tmp_path: Path, episodes: Path) -> None:
    """Rank 1's SoC is hot: rank 0 (cool) pauses with it and logs the pause, and both resume
    once rank 1 has cooled. Then rank 1 trips its memory guard: both stop after the same step."""
    small_config(tmp_path, episodes, steps=10, order=["vqvae"])
    data = json.loads((tmp_path / "config.json").read_text())
    data["thermal"] = {"sysfs_root": str(tmp_path / "sysfs"), "poll_s": 0.05}
    (tmp_path / "config.json").write_text(json.dumps(data))
    temps = {}
    for rank, milli in (("0", "50000"), ("1", "86000")):
        zone = tmp_path / "sysfs" / f"rank{rank}" / "class" / "thermal" / "thermal_zone0"
        zone.mkdir(parents=True)
        temps[rank] = zone / "temp"
        temps[rank].write_text(milli)
    entry = tmp_path / "train_one_rank_guards.py"
    entry.write_text(ONE_RANK_GUARDS)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        torchrun(entry, tmp_path / "config.json", run_dir, tmp_path / "models"),
        cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if (run_dir / "metrics.jsonl").exists() and any(
                e.get("event") == "thermal_pause" for e in read_events(run_dir)
            ):
                break
            time.sleep(0.02)
        temps["1"].write_text("65000")  # rank 1 cools down
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            _kill_tree(proc.pid)
            proc.wait(timeout=30)
    assert proc.returncode == 0, out[-6000:]
    events = read_events(run_dir)
    pauses = [e for e in events if e.get("event") in ("thermal_pause", "thermal_resume")]
    assert [e["event"] for e in pauses] == ["thermal_pause", "thermal_resume"]  # logged once, by rank 0
    assert pauses[0]["temp_c"] == 86.0 and pauses[0]["step"] == 0  # the hottest rank's temperature
    assert pauses[1]["temp_c"] == 65.0 and pauses[1]["paused_s"] > 0
    vq = json.loads((run_dir / "summary.json").read_text())["components"]["vqvae"]
    assert vq["thermal_pauses"] == 1 and vq["world_size"] == 2
    assert vq["steps"] == 3 and vq["stop_reason"].startswith("rank 1: memory: process RSS")
    assert vq["replicas_identical"] is True
    assert [r["step"] for r in events if r.get("component") == "vqvae" and "loss" in r] == [1, 2, 3]


def _weights(run_dir: Path) -> dict:
    return {p.name: load_file(str(p)) for p in sorted((run_dir / "components").glob("*.safetensors"))}


def _kill_tree(pid: int) -> None:
    """SIGKILL torchrun and its workers (they do not share its process group)."""
    root = psutil.Process(pid)
    for p in [*root.children(recursive=True), root]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)


def test_two_ranks_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path: Path, ddp_run: Path) -> None:
    config, run_b = ddp_run / "config.json", tmp_path / "b"
    proc = subprocess.Popen(
        torchrun("run_trainer.py", config, run_b, tmp_path / "mb"),
        cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    killed_at = None
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (run_b / "metrics.jsonl").exists():
                mid = [r["step"] for r in read_events(run_b) if r.get("component") == "mid_loop" and "loss" in r]
                if mid and mid[-1] >= 7:  # past the step-5 checkpoint
                    _kill_tree(proc.pid)
                    killed_at = mid[-1]
                    break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and killed_at is None:
            _kill_tree(proc.pid)
        proc.wait(timeout=30)
    assert killed_at is not None, "the run finished before it could be killed"
    state = json.loads((run_b / "state.json").read_text())
    assert state["components"]["vqvae"]["status"] == "done" and "mid_loop" not in state["components"]

    run_ddp(torchrun("run_trainer.py", config, run_b, tmp_path / "mb", "--resume"))
    a, b = _weights(ddp_run / "run"), _weights(run_b)
    assert set(a) == set(b) == {f"{n}.safetensors" for n in COMPONENTS}
    for name in a:
        for key in a[name]:
            assert (a[name][key] == b[name][key]).all(), f"{name}:{key} differs after kill -9 + resume"
    resumed = [e for e in read_events(run_b) if e.get("event") == "resumed"]
    assert [e["component"] for e in resumed] == ["mid_loop"] and resumed[0]["step"] in (5, 10)
    summary_a = json.loads((ddp_run / "run" / "summary.json").read_text())["components"]
    summary_b = json.loads((run_b / "summary.json").read_text())["components"]
    for name in COMPONENTS:
        assert summary_b[name]["replicas_identical"] is True and summary_b[name]["world_size"] == 2
        # Each rank resumed its own shard where it stopped: the same windows as without the kill.
        assert summary_b[name]["windows_per_rank"] == summary_a[name]["windows_per_rank"], name
