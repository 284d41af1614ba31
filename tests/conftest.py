"""Shared fixtures: small, real episodes written to real files; a small trained seed and a real
loopback server for the serving tests."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from continuonbrain.rlds import Episode, LazyImage

#: tests/interop/ runs in its own side environments (`make test-interop`), not in the main run.
collect_ignore = ["interop"]


def require_interop(module: str, venv: str) -> ModuleType:
    """Import ``module`` for a test in tests/interop/, which runs in the side environment
    ``venv`` (``.venv-tfds``, ``.venv-peft``). Without it the test is skipped, telling how to
    create that environment; under ``CI=true`` it fails instead, so CI can never pass these
    interop claims by skipping them."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        problem = err  # reported below, outside the except block (no chained traceback)
    why = f"{module} is not importable ({problem}); these tests run in {venv}/: `make interop-venvs test-interop`"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI=true: {why}", pytrace=False)
    pytest.skip(why, allow_module_level=True)


def make_episode(
    n: int = 12, obs_dim: int = 4, act_dim: int = 2, episode_id: str = "ep0", hz: float = 50.0, **meta
) -> Episode:
    """An episode whose observation at step t is ``t + arange(obs_dim) / 10``: easy to check."""
    rows = [
        {
            "observation": (t + np.arange(obs_dim) / 10.0).tolist(),
            "action": [float(t) / n] * act_dim,
            "reward": float(t),
            "timestamp": t / hz,
            "language_instruction": "reach the target",
            "step_metadata": {"k": str(t)},
        }
        for t in range(n)
    ]
    metadata = {
        "schema_version": "1.1",
        "episode_id": episode_id,
        "robot_id": "test-bot",
        "tags": ["test"],
        "safety": {"pii_cleared": True, "pending_review": False},
        "provenance": {"origin": "test"},
        **meta,
    }
    return Episode.from_steps(rows, metadata)


def png_bytes(h: int = 8, w: int = 6, value: int = 0, fmt: str = "PNG") -> bytes:
    from PIL import Image

    arr = np.full((h, w, 3), value, np.uint8)
    arr[0, 0] = [255, 0, 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def make_image_episode(n: int = 5, episode_id: str = "img0") -> Episode:
    rows = [
        {
            "observation": {"state": [float(t), 1.0], "camera": LazyImage(data=png_bytes(value=t * 10), format="png")},
            "action": {"steering": [0.1 * t], "throttle": [0.5]},
        }
        for t in range(n)
    ]
    return Episode.from_steps(rows, {"episode_id": episode_id})


@pytest.fixture
def episodes_dir(tmp_path: Path) -> Path:
    """Three good Continuon episode directories."""
    from continuonbrain.rlds import write_episodes

    out = tmp_path / "episodes"
    write_episodes([make_episode(episode_id=f"ep{i}", n=10 + i) for i in range(3)], out)
    return out


def train_promoted_seed(
    rlds_dir: Path, tmp: Path, steps: int, reason: str, fast_steps: int | None = None, model: dict | None = None
) -> Path:
    """Train a small HOPE seed (VQ-VAE, Mid loop, Fast loop; ``steps`` each, ``fast_steps`` for
    the Fast loop if given) on ``rlds_dir`` and promote it to ``current`` of ``tmp/models``;
    returns the model root."""
    from continuonbrain.trainer.sequential import SequentialTrainer
    from continuonbrain.trainer.store import PromotionStore
    from continuonbrain.trainer.train_config import SequentialConfig

    cfg = SequentialConfig(
        model=model or {},
        rlds_dir=str(rlds_dir),
        model_root=str(tmp / "models"),
        run_dir=str(tmp / "run"),
        torch_threads=1,
        components=seed_components(steps, fast_steps=fast_steps),
    )
    cfg.thermal.sysfs_root = str(tmp / "no-sysfs")
    SequentialTrainer(cfg).run()
    PromotionStore(tmp / "models").promote({"passed": True, "reason": reason})
    return tmp / "models"


#: Expert episodes behind ``arm_seed``.
ARM_SEED_EPISODES = 60


@pytest.fixture(scope="session")
def arm_seed(tmp_path_factory) -> dict[str, Path]:
    """A small HOPE seed trained on reach2d expert episodes and promoted to ``current``, for
    the serving tests (BrainService, API, Robot Editor). Its Fast loop is trained as the shipped
    config trains it (no Mid context, 1000 steps), so it really reaches targets (~86% of
    held-out reach2d episodes) and the Robot Editor's live sim can show a reach. Tests that
    change the store copy it first with :func:`copy_store`."""
    from continuonbrain.sim.collect import collect_to_dir

    tmp = tmp_path_factory.mktemp("arm-seed")
    collect_to_dir("reach2d", ARM_SEED_EPISODES, tmp / "episodes", seed=5, dart_sigma=0.1)
    models = train_promoted_seed(
        tmp / "episodes",
        tmp,
        steps=40,
        fast_steps=1000,
        model={"fast": {"use_context": False}},
        reason="seed for the serving tests",
    )
    return {"models": models, "episodes": tmp / "episodes"}


def copy_store(models: Path, dest: Path) -> Path:
    """A private copy of a model store (the ``current`` link stays relative, so it still works)."""
    import shutil

    shutil.copytree(models, dest, symlinks=True)
    return dest


@contextlib.contextmanager
def live_server(app) -> Iterator[str]:
    """Run ``app`` in a real uvicorn server on a free loopback port; yields its base URL."""
    import socket
    import threading

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


def make_variant(store: Any, tmp: Path, scale: float, *, nan: bool = False, source: Path | None = None) -> str:
    """Write a candidate whose Fast-loop weights are those of ``source`` (default: current)
    scaled (a different model with the same shapes), or poisoned with a NaN; returns its version."""
    from safetensors.numpy import load_file, save_file

    current = source or store.slot("current").resolve()
    work = tmp / f"variant-{scale}-{nan}"
    work.mkdir()
    files = []
    for src in sorted(current.iterdir()):
        if src.name == "manifest.json":
            continue
        dst = work / src.name
        if src.name == "fast_loop.safetensors":
            tensors = load_file(str(src))
            for key, value in tensors.items():
                if value.dtype.kind == "f" and value.ndim == 2:
                    tensors[key] = (value * scale).astype(value.dtype)
            if nan:
                key = next(k for k, v in tensors.items() if v.dtype.kind == "f" and v.ndim == 2)
                tensors[key] = tensors[key].copy()
                tensors[key].flat[0] = np.nan
            save_file(tensors, str(dst))
        else:
            dst.write_bytes(src.read_bytes())
        files.append(dst)
    manifest = store.write_slot(
        "candidate", files, components=["vqvae", "mid_loop", "fast_loop"], kind="hope-seed", parent=None
    )
    return manifest["version"]


# --------------------------------------------------------------------------- fuzzing helpers


def fuzz_settings(max_examples: int) -> Any:
    """Hypothesis settings of the fuzz tests: no deadline (CI shares its CPUs), function-scoped
    fixtures allowed (each example makes its own directory with ``tmp_path_factory``)."""
    from hypothesis import HealthCheck, settings

    allow = [HealthCheck.function_scoped_fixture]
    return settings(max_examples=max_examples, deadline=None, suppress_health_check=allow)


def consume_scan(path: Path, **options: Any) -> None:
    """Scan everything under ``path``: only :class:`RLDSError` may escape, and bad episodes are
    carried as errors, not raised; a good episode has steps."""
    from continuonbrain.rlds import RLDSError, scan_episodes

    try:
        for result in scan_episodes(path, **options):
            if result.error is not None:
                assert isinstance(result.error, RLDSError)
                str(result.error)
            else:
                assert result.episode is not None and len(result.episode) > 0
    except RLDSError:
        pass


def only_error(path: Path) -> Any:
    """The error of the one (bad) episode under ``path``."""
    from continuonbrain.rlds import scan_episodes

    results = list(scan_episodes(path))
    assert len(results) == 1, f"expected one episode, found {len(results)}"
    assert results[0].error is not None, "expected this episode to be rejected"
    return results[0].error


def consume_records(path: Path) -> None:
    """Read every record of a TFRecord file: a fatal error ends the file, each record has data
    or an error naming the file, and parsing a payload raises nothing but :class:`RLDSError`."""
    from continuonbrain.rlds import RLDSError
    from continuonbrain.rlds.example_proto import parse_example
    from continuonbrain.rlds.tfrecord import iter_records, scan_records

    records = list(scan_records(path))
    assert not any(r.fatal for r in records[:-1]), "a fatal error must end the file"
    for record in records:
        assert (record.data is None) != (record.error is None)
        if record.error is not None:
            assert isinstance(record.error, RLDSError) and record.error.file == str(path)
    with contextlib.suppress(RLDSError):
        for _offset, payload in iter_records(path, on_data_error=lambda err: None):
            with contextlib.suppress(RLDSError):
                parse_example(payload)


# --------------------------------------------------------------------------- small seed configs

#: The HOPE model of a seed that trains in seconds, for vector observations.
TINY_MODEL: dict[str, Any] = {
    "mid_every": 4,
    "vqvae": {"codebook_size": 16, "code_dim": 4, "n_tokens": 2, "hidden_dim": 16, "n_hidden": 1},
    "mid": {"d_model": 16, "d_state": 8, "n_layers": 1, "token_embed_dim": 4, "context_dim": 4},
    "fast": {"d_model": 16, "d_state": 8, "n_layers": 1},
}
#: :data:`TINY_MODEL` for camera observations: the VQ-VAE gets a two-layer conv encoder.
TINY_CAMERA_MODEL: dict[str, Any] = {**TINY_MODEL, "vqvae": {**TINY_MODEL["vqvae"], "conv_channels": [4, 4]}}


def tiny_components(
    steps: int, *, batch: tuple[int, int, int] = (32, 4, 16), shuffle_buffer: int = 256, mid_window_s: float = 1.0
) -> dict[str, Any]:
    """Budgets of a tiny seed: ``steps`` per component, ``batch`` = (VQ-VAE, Mid, Fast) sizes."""
    comp = {"max_steps": steps, "checkpoint_every": 100, "shuffle_buffer": shuffle_buffer, "warmup_steps": 1}
    return {
        "vqvae": {**comp, "batch_size": batch[0]},
        "mid_loop": {**comp, "batch_size": batch[1], "window_s": mid_window_s},
        "fast_loop": {**comp, "batch_size": batch[2], "window_s": 0.1},
    }


def seed_components(
    steps: int, *, fast_steps: int | None = None, mid_batch: int = 8, shuffle_buffer: int = 1024
) -> dict[str, Any]:
    """Budgets of a small seed (the shipped model's shapes): ``steps`` per component,
    ``fast_steps`` for the Fast loop if given."""
    return {
        "vqvae": {"max_steps": steps, "batch_size": 128, "shuffle_buffer": shuffle_buffer, "checkpoint_every": 1000},
        "mid_loop": {"max_steps": steps, "batch_size": mid_batch, "window_s": 2.0, "checkpoint_every": 1000},
        "fast_loop": {"max_steps": fast_steps or steps, "batch_size": 64, "window_s": 0.1, "checkpoint_every": 1000},
    }


def seed_config(
    tmp: Path, episodes: Path, *, model: dict[str, Any], components: dict[str, Any], name: str = "config.json", **extra
) -> Path:
    """A seed training config for ``episodes``, written to ``tmp/name``: model store and run dir
    under ``tmp``, one torch thread, no thermal sensors (``extra``: more top-level keys)."""
    data = {
        "rlds_dir": str(episodes),
        "model_root": str(tmp / "models"),
        "run_dir": str(tmp / "run"),
        "torch_threads": 1,
        "thermal": {"sysfs_root": str(tmp / "no-sysfs")},
        "model": model,
        "components": components,
        **extra,
    }
    path = tmp / name
    path.write_text(json.dumps(data))
    return path


# --------------------------------------------------------------------------- commands and polling


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``continuonbrain ARGS`` in a child process, output captured as text (never raises on exit codes)."""
    cmd = [sys.executable, "-m", "continuonbrain", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)


def main_cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    """``continuonbrain ARGV`` in this process: (exit code, stdout, stderr)."""
    from continuonbrain.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def wait_for(predicate: Any, timeout: float = 120.0, what: str = "condition", interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy and return its value; a generous bound for a loaded
    CI box (not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def signal_when(
    cmd: list[str], log: Path, ready: Any, sig: int, env: dict[str, str] | None = None, timeout: float = 240.0
) -> int:
    """Run ``cmd`` (output to ``log``), send it ``sig`` as soon as ``ready()`` is true, and
    return its exit code (``-sig`` when a SIGKILL landed). The kill and crash tests use it to
    hit a real process at a chosen step; ``timeout`` is a hang guard, not a speed assertion."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                proc.send_signal(sig)
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
    return proc.wait(timeout=120)


# --- a real full disk ----------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real tmpfs of 32 MiB, unmounted afterwards; skipped with the reason where it cannot
    be mounted (mounting needs root, which CI has)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill_disk(mnt: Path, leave: int) -> None:
    """Fill the file system at ``mnt`` until ``leave`` bytes are free."""
    free = shutil.disk_usage(mnt).free
    with (mnt / "filler").open("wb") as f:
        chunk = b"\0" * (1 << 20)
        remaining = free - leave
        while remaining > 0:
            f.write(chunk[: min(len(chunk), remaining)])
            remaining -= len(chunk)
