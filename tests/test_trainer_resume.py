"""kill -9 inside each HOPE component, resume, and get the uninterrupted run's files byte for byte.

A real ``continuonbrain train`` process is killed with SIGKILL inside the VQ-VAE, the Mid
loop or the Fast loop (after that component's first checkpoint, with steps after it lost),
on Continuon and on TFDS episodes, then resumed with ``--resume``; every file in the run's
``components/`` must have the sha256 of an uninterrupted run's. The config is small but
draws randomness in every component after the resume point: the VQ-VAE restarts dead codes
at every step (a large codebook, ``dead_code_steps`` 1), the Mid and Fast loops use dropout,
and the Fast loop reads the Mid loop's context, so it depends on both frozen components.
Shuffle buffers are smaller than an epoch and every component runs several epochs.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import signal_when

COMPONENTS = ("vqvae", "mid_loop", "fast_loop")
CHECKPOINT_EVERY = 4
#: The killed run is killed once its component has logged this step: past the first
#: checkpoint, so the resumed run restores one, and with logged steps that it must redo.
KILL_AFTER_STEP = CHECKPOINT_EVERY + 2
EPISODES = 8

MODEL = {
    "mid_every": 5,
    "vqvae": {"codebook_size": 64, "code_dim": 4, "n_tokens": 2, "hidden_dim": 32, "n_hidden": 1, "dead_code_steps": 1},
    "mid": {"d_model": 16, "d_state": 16, "n_layers": 1, "token_embed_dim": 8, "context_dim": 8, "dropout": 0.1},
    "fast": {"d_model": 16, "d_state": 16, "n_layers": 1, "dropout": 0.1, "use_context": True},
}
STEPS = {"max_steps": 24, "warmup_steps": 2, "checkpoint_every": CHECKPOINT_EVERY}
TRAINING = {
    "vqvae": {**STEPS, "batch_size": 32, "shuffle_buffer": 64},
    "mid_loop": {**STEPS, "batch_size": 4, "window_s": 1.0, "shuffle_buffer": 8},
    "fast_loop": {**STEPS, "batch_size": 32, "window_s": 0.1, "shuffle_buffer": 64},
}


def _write_config(path: Path) -> Path:
    config = {
        "seed": 0,
        "deterministic": True,
        "torch_threads": 1,
        "order": list(COMPONENTS),
        "normalizer_episodes": EPISODES,
        "model": MODEL,
        "components": TRAINING,
        "thermal": {"sysfs_root": str(path.parent / "no-sysfs")},
    }
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module", params=["continuon", "tfds"])
def source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Episodes in one layout, the config, and the sha256 of an uninterrupted run's components."""
    from continuonbrain.sim.collect import collect_to_dir

    tmp = tmp_path_factory.mktemp(f"resume-{request.param}")
    collect_to_dir("reach2d", EPISODES, tmp / "episodes", format=request.param, seed=0, dart_sigma=0.1)
    info = {"episodes": tmp / "episodes", "config": _write_config(tmp / "config.json")}
    run = tmp / "uninterrupted"
    subprocess.run(_train(info, run), check=True, capture_output=True, timeout=300)
    return {**info, "digests": _digests(run)}


def _train(source: dict, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "continuonbrain", "train", "--config", str(source["config"]),
            "--rlds-dir", str(source["episodes"]), "--run-dir", str(run),
            "--model-root", str(run.with_name(f"{run.name}-models")), *extra]  # fmt: skip


def _digests(run: Path) -> dict[str, str]:
    """sha256 of every file the run wrote into ``components/``."""
    files = sorted((run / "components").iterdir())
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _events(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if x.endswith("}")]  # a torn last line from the kill is skipped


def _logged_step(run: Path, component: str, step: int) -> Any:
    """``ready`` for :func:`signal_when`: ``component`` has logged ``step`` (or later)."""

    def ready() -> bool:
        if not (run / "metrics.jsonl").exists():
            return False
        steps = [e["step"] for e in _events(run) if e.get("component") == component and "loss" in e]
        return bool(steps) and steps[-1] >= step

    return ready


def _kill_inside(cmd: list[str], run: Path, component: str, log: Path) -> None:
    """Run ``cmd`` and SIGKILL it once ``component`` has logged :data:`KILL_AFTER_STEP`."""
    code = signal_when(cmd, log, _logged_step(run, component, KILL_AFTER_STEP), signal.SIGKILL)
    assert code == -signal.SIGKILL, f"the run ended before it was killed in {component}:\n{log.read_text()}"


@pytest.mark.parametrize("component", COMPONENTS)
def test_kill_9_inside_a_component_then_resume_gives_the_uninterrupted_files(
    tmp_path: Path, source: dict, component: str
) -> None:
    run = tmp_path / "run"
    _kill_inside(_train(source, run), run, component, tmp_path / "killed.log")
    # Killed inside the component: the earlier ones are done, this one is not.
    state = json.loads((run / "state.json").read_text())
    done = [n for n, c in state["components"].items() if c["status"] == "done"]
    assert done == list(COMPONENTS[: COMPONENTS.index(component)])
    assert not any(e.get("event") == "component_done" and e["component"] == component for e in _events(run))

    resumed = subprocess.run(_train(source, run, "--resume"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    # It resumed this component (and no other) from a checkpoint written before the kill ...
    starts = [(e["component"], e["step"]) for e in _events(run) if e.get("event") == "resumed"]
    assert len(starts) == 1 and starts[0][0] == component, starts
    assert starts[0][1] > 0 and starts[0][1] % CHECKPOINT_EVERY == 0, starts
    # ... and ended with the uninterrupted run's files, byte for byte.
    digests = _digests(run)
    assert set(digests) == {"config.json", *(f"{n}.safetensors" for n in COMPONENTS)}
    differ = sorted(name for name, digest in digests.items() if source["digests"][name] != digest)
    assert not differ, f"after kill -9 in {component} and --resume, {differ} differ from the uninterrupted run"


def test_a_graceful_stop_resumes_where_it_stopped_and_finishes_the_budget(tmp_path: Path, source: dict) -> None:
    """SIGTERM (what ``POST /api/training/stop`` sends) inside the Mid loop: the run checkpoints
    and exits 0 with the Mid loop *interrupted*, not done; ``--resume`` trains it on from that
    step to its budget and then the Fast loop, ending with the uninterrupted run's files."""
    run, log = tmp_path / "run", tmp_path / "stopped.log"
    code = signal_when(_train(source, run), log, _logged_step(run, "mid_loop", KILL_AFTER_STEP), signal.SIGTERM)
    assert code == 0, log.read_text()
    state = json.loads((run / "state.json").read_text())
    mid = state["components"]["mid_loop"]
    assert mid["status"] == "interrupted" and mid["stop_reason"] == "stopped" and mid["steps"] < STEPS["max_steps"]
    assert "fast_loop" not in state["components"] and "interrupted in mid_loop" in log.read_text()

    resumed = subprocess.run(_train(source, run, "--resume"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    starts = [(e["component"], e["step"]) for e in _events(run) if e.get("event") == "resumed"]
    assert starts == [("mid_loop", mid["steps"])]  # from the step it stopped at, not from scratch
    state = json.loads((run / "state.json").read_text())
    assert {n: (c["status"], c["steps"]) for n, c in state["components"].items()} == {
        n: ("done", STEPS["max_steps"]) for n in COMPONENTS
    }
    assert _digests(run) == source["digests"]
