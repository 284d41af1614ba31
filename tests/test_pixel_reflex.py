"""A reflex that drives from pixels (issue 14): the Fast loop reads a learned encoding of the
camera frame at every tick, for any image size, trained by the shipped config without edits,
with the numpy path equal to the torch one and kill -9 resumes still exact."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import signal_when

from continuonbrain.hope import FastLoop, FastLoopNumpy, HopeBrain, HopeConfig
from continuonbrain.rlds import write_episodes
from continuonbrain.sim.collect import collect_episodes
from continuonbrain.trainer.sequential import SequentialTrainer
from continuonbrain.trainer.train_config import SequentialConfig

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "continuonbrain" / "configs" / "pi5-hope-v1.json"
CAM = "cam/image_array"
TINY = {
    "mid_every": 5,
    "vqvae": {"codebook_size": 16, "code_dim": 4, "n_tokens": 2, "hidden_dim": 16, "n_hidden": 1,
              "conv_channels": [4, 8], "image_feature_dim": 8},
    "mid": {"d_model": 16, "d_state": 16, "n_layers": 1, "token_embed_dim": 8, "context_dim": 8},
    "fast": {"d_model": 16, "d_state": 16, "n_layers": 1, "use_context": False},
}  # fmt: skip


def drive_episodes(out: Path, n: int, size: tuple[int, int], steps: int = 30, fmt: str = "continuon") -> Path:
    """``n`` expert drive2d episodes with a ``size`` = (H, W) camera, written as ``fmt``."""
    eps = collect_episodes(
        "drive2d",
        n,
        seed=3,
        dart_sigma=0.1,
        max_steps=steps,
        env_kwargs={"image_height": size[0], "image_width": size[1]},
    )
    write_episodes(eps, out, format=fmt)
    return out


def tiny_config(tmp: Path, episodes: Path, steps: int = 4, model: dict | None = None) -> SequentialConfig:
    comp = {"max_steps": steps, "checkpoint_every": 2, "shuffle_buffer": 32, "warmup_steps": 1}
    data = {
        "rlds_dir": str(episodes),
        "model_root": str(tmp / "models"),
        "run_dir": str(tmp / "run"),
        "torch_threads": 1,
        "model": model or TINY,  # no image_keys anywhere: the trainer finds the camera in the data
        "components": {
            "vqvae": {**comp, "batch_size": 16},
            "mid_loop": {**comp, "batch_size": 2, "window_s": 1.0},
            "fast_loop": {**comp, "batch_size": 16, "window_s": 0.1},
        },
        "thermal": {"sysfs_root": str(tmp / "no-sysfs")},
    }
    path = tmp / "config.json"
    path.write_text(json.dumps(data))
    return SequentialConfig.from_json(path)


def frames(size: tuple[int, int], n: int = 2) -> list[np.ndarray]:
    """``n`` distinct camera frames of drive2d at ``size`` (different tracks)."""
    return [
        next(iter(collect_episodes("drive2d", 1, seed=50 + i, max_steps=2, env_kwargs={"image_height": size[0],
             "image_width": size[1]}))).observation[CAM][0].decode()
        for i in range(n)
    ]  # fmt: skip


@pytest.mark.parametrize("size", [(64, 64), (96, 96), (120, 160), (75, 100), (160, 120), (45, 61)])
def test_a_camera_only_robot_trains_and_acts_from_pixels_at_any_image_size(tmp_path: Path, size: tuple) -> None:
    episodes = drive_episodes(tmp_path / "episodes", 2, size)
    summary = SequentialTrainer(tiny_config(tmp_path, episodes)).run()
    assert [c["steps"] for c in summary["components"].values()] == [4, 4, 4]

    candidate = tmp_path / "models" / "candidate"
    hope = HopeConfig.load(candidate / "config.json")
    assert hope.obs_dim == 0 and hope.image_keys == [CAM] and hope.image_shapes == {CAM: [*size, 3]}
    assert hope.fast_image_dim == 8 and hope.context_dim == 0  # pixels, not the Mid context, reach the Fast loop
    brain = HopeBrain.load(candidate)
    a, b = frames(size)
    act_a = brain.act({CAM: a})
    brain.reset()
    act_b = brain.act({CAM: b})
    assert act_a.shape == (2,) and np.isfinite(act_a).all()
    assert np.abs(act_a - act_b).max() > 1e-4, "the action does not depend on the camera frame"
    # What the brain does at the first tick is what the Fast loop was trained to do on that frame.
    with torch.no_grad():
        feats = brain.fast_loop.pixels({CAM: torch.from_numpy(np.array(a))[None, None]})
        trained = brain.fast_loop(torch.zeros(1, 1, 0), image_features=feats)[0, 0].numpy()
    np.testing.assert_allclose(act_a, trained, atol=1e-5)


def _brain(image_features: bool, size: tuple[int, int] = (24, 32)) -> HopeBrain:
    """A brain with the Mid loop's context on (refreshed every 5 ticks) and fitted normalisers."""
    cfg = HopeConfig(
        obs_dim=0,
        image_keys=[CAM],
        image_shapes={CAM: [*size, 3]},
        **{**TINY, "fast": {**TINY["fast"], "use_context": True, "image_features": image_features}},
    )
    torch.manual_seed(0)
    brain = HopeBrain.build(cfg)
    with torch.no_grad():  # a head that is not near zero, so small input changes show
        brain.fast_loop.head.weight.normal_()
    return brain


@pytest.mark.parametrize("image_features", [True, False])
def test_the_frame_reaches_the_fast_loop_every_tick_not_only_at_mid_refreshes(image_features: bool) -> None:
    a, b = frames((24, 32))
    steady, changed = _brain(image_features), None
    changed = steady.fork()
    for tick in range(4):  # tick 3 is no Mid refresh (those are 0, 5, 10, ...)
        x = steady.act({CAM: a})
        y = changed.act({CAM: b if tick == 3 else a})
    if image_features:
        assert np.abs(x - y).max() > 1e-4, "a new frame between Mid refreshes did not change the action"
    else:  # the negative control: through the Mid context alone, the frame waits for the next refresh
        np.testing.assert_array_equal(x, y)


def test_numpy_path_equals_the_torch_path_with_images_state_and_context() -> None:
    cfg = HopeConfig(
        obs_dim=3,
        state_keys=["s"],
        image_keys=[CAM],
        image_shapes={CAM: [24, 32, 3]},
        **{**TINY, "fast": {**TINY["fast"], "use_context": True, "n_layers": 2}},
    )
    torch.manual_seed(1)
    fast = FastLoop(cfg).eval()
    rng = np.random.default_rng(0)
    fast.fit_normalizer(rng.normal(2.0, 3.0, (200, 3)).astype(np.float32))
    imgs = rng.integers(0, 255, (40, 24, 32, 3), dtype=np.uint8)
    fast.pixels.fit_normalizer(fast.pixels.encode_frames({CAM: imgs}))
    numpy_fast = FastLoopNumpy.from_torch(fast)
    np_state, t_state = numpy_fast.init_state(), None
    ctx = rng.normal(size=8).astype(np.float32)
    for t in range(12):
        obs = rng.normal(2.0, 3.0, 3).astype(np.float32)
        if t % 5 == 0:
            ctx = rng.normal(size=8).astype(np.float32)
        feats = fast.pixels.features({CAM: imgs[t]})
        a_np, _ = numpy_fast.step(obs, np_state, context=ctx if t % 5 == 0 else None, image_features=feats)
        with torch.inference_mode():
            a_t, t_state = fast.step(torch.from_numpy(obs), t_state, torch.from_numpy(ctx), image_features=feats)
        np.testing.assert_allclose(a_np, a_t.numpy(), atol=2e-5, err_msg=f"tick {t}")
    with pytest.raises(ValueError, match="image_features"):
        numpy_fast.step(obs, np_state)

    # The whole brain: numpy and torch backends act alike on dict observations over Mid refreshes.
    brains = [HopeBrain.build(cfg, backend=b) for b in ("numpy", "torch")]
    brains[1].load_state_dict(brains[0].state_dict())
    for t in range(12):
        obs = {"s": rng.normal(size=3).astype(np.float32), CAM: imgs[t]}
        np.testing.assert_allclose(brains[0].act(obs), brains[1].act(obs), atol=2e-5, err_msg=f"tick {t}")


def test_the_shipped_config_trains_a_donkeycar_tub_without_edits(tmp_path: Path) -> None:
    """``continuonbrain train --config pi5-hope-v1.json`` on a camera-only 160x120 tub (only the
    paths and the step budget on the command line): every component trains, the Fast loop reads
    the camera."""
    tub = drive_episodes(tmp_path / "tub", 2, (120, 160), steps=45, fmt="tub")
    run = subprocess.run(
        [sys.executable, "-m", "continuonbrain", "train", "--config", str(SHIPPED),
         "--rlds-dir", str(tub), "--run-dir", str(tmp_path / "run"), "--model-root", str(tmp_path / "models"),
         "--max-steps", "2", "--set", "torch_threads=1", "--set", f"thermal.sysfs_root={tmp_path / 'no-sysfs'}",
         "--json"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert [c["steps"] for c in summary["components"].values()] == [2, 2, 2]
    brain = HopeBrain.load(tmp_path / "models" / "candidate")
    assert brain.config.image_keys == [CAM] and brain.config.fast_image_dim > 0
    action = brain.act({CAM: frames((120, 160), 1)[0]})
    assert action.shape == (2,) and np.isfinite(action).all()


@pytest.mark.parametrize("mode", ["trained", "vqvae_finetuned", "vqvae_frozen"])
def test_how_the_fast_loop_gets_its_eyes(tmp_path: Path, mode: str) -> None:
    """``fast.pixel_encoder``: trained from scratch needs no VQ-VAE at all; fine-tuned starts from
    the VQ-VAE's encoder and moves away from it; frozen stays the VQ-VAE's encoder exactly."""
    episodes = drive_episodes(tmp_path / "episodes", 2, (24, 32))
    model = {**TINY, "fast": {**TINY["fast"], "pixel_encoder": mode}}
    cfg = tiny_config(tmp_path, episodes, steps=4, model=model)
    if mode == "trained":
        cfg = cfg.model_copy(update={"order": ["fast_loop"]})
    summary = SequentialTrainer(cfg).run()
    assert list(summary["components"]) == cfg.order
    brain = HopeBrain.load(tmp_path / "models" / "candidate")
    assert brain.config.fast.pixel_encoder == mode
    action = brain.act({CAM: frames((24, 32), 1)[0]})
    assert action.shape == (2,) and np.isfinite(action).all()
    if mode == "trained":
        assert brain.vqvae is None
        return
    mine = brain.fast_loop.pixels.encoders[CAM].state_dict()
    theirs = brain.vqvae.image_encoders[CAM].state_dict()
    same = [torch.equal(mine[k], theirs[k]) for k in theirs]
    assert all(same) if mode == "vqvae_frozen" else not any(same)


def test_training_reads_the_pooled_frames_the_brain_reads_when_it_acts(tmp_path: Path) -> None:
    """The trainer caches each frame pooled once (``with_pixel_frames``): bit for bit what the
    brain pools from the camera frame at that tick, so it trains on the features it acts on."""
    from continuonbrain.hope.pixels import POOLED_PREFIX
    from continuonbrain.rlds import read_episodes
    from continuonbrain.trainer.hope_data import with_pixel_frames

    episodes = drive_episodes(tmp_path / "episodes", 1, (120, 160), steps=6, fmt="tub")
    cfg = HopeConfig(obs_dim=0, image_keys=[CAM], image_shapes={CAM: [120, 160, 3]}, **TINY)
    torch.manual_seed(0)
    pixels = FastLoop(cfg).pixels.eval()
    (ep,) = list(with_pixel_frames(lambda: read_episodes(episodes), pixels, [CAM])())
    pooled = ep.extras[POOLED_PREFIX + CAM]
    assert pooled.dtype == np.uint8 and pooled.shape == (6, 60, 80, 3)  # 160x120 pooled to 80x60
    with torch.no_grad():
        trained_on = pixels.encode_prepared({CAM: torch.from_numpy(pooled)}).numpy()
    for t in range(len(ep)):
        frame = ep.observation[CAM][t].decode()
        np.testing.assert_array_equal(
            pixels.prepare({CAM: torch.from_numpy(frame.copy())[None]})[CAM][0].numpy(), pooled[t]
        )
        # the same input; only the conv's batch size differs (1 here, 6 above): float rounding
        np.testing.assert_allclose(pixels.features({CAM: frame}), trained_on[t], rtol=0, atol=1e-6)


def test_exposure_and_white_balance_do_not_change_what_a_trained_encoder_sees() -> None:
    """``"trained"`` standardises each frame per channel (``fast.standardize_frames``): a frame
    under other light (a gain and an offset per channel) gives the same features, up to the
    uint8 rounding of the frame; without it, the same weights see a different frame."""
    cfg = HopeConfig(obs_dim=0, image_keys=[CAM], image_shapes={CAM: [48, 64, 3]}, **TINY)
    torch.manual_seed(0)
    pixels = FastLoop(cfg).pixels.eval()
    frame = frames((48, 64), 1)[0].astype(np.float64)
    relit = np.clip(frame * np.array([0.7, 0.9, 1.2]) + np.array([20.0, -5.0, 3.0]), 0, 255)
    assert np.abs(relit - frame).mean() > 10
    a, b = (pixels.features({CAM: f.round().astype(np.uint8)}) for f in (frame, relit))
    np.testing.assert_allclose(a, b, atol=0.02 * np.abs(a).max())
    raw_cfg = cfg.model_copy(update={"fast": cfg.fast.model_copy(update={"standardize_frames": False})})
    torch.manual_seed(0)
    raw = FastLoop(raw_cfg).pixels.eval()  # the same weights, raw frames
    assert not raw.standardize and pixels.standardize
    c, d = (raw.features({CAM: f.round().astype(np.uint8)}) for f in (frame, relit))
    assert np.abs(c - d).max() > 3 * np.abs(a - b).max()  # the negative control: raw frames differ more


def test_colour_channels_are_shuffled_in_training_windows_only() -> None:
    from continuonbrain.hope.pixels import POOLED_PREFIX

    cfg = HopeConfig(
        obs_dim=0,
        image_keys=[CAM],
        image_shapes={CAM: [24, 32, 3]},
        **{**TINY, "fast": {**TINY["fast"], "channel_shuffle": 1.0}},
    )
    torch.manual_seed(0)
    fast = FastLoop(cfg)
    rng = np.random.default_rng(0)
    batch = {POOLED_PREFIX + CAM: torch.from_numpy(rng.integers(0, 255, (8, 2, 24, 32, 3), dtype=np.uint8))}
    with torch.no_grad():
        fast.eval()
        plain = fast.batch_image_features(batch)
        np.testing.assert_array_equal(plain, fast.batch_image_features(batch))
        fast.train()
        shuffled = fast.batch_image_features(batch)
    assert shuffled.shape == plain.shape == (8, 2, 8)
    changed = (shuffled - plain).abs().amax(dim=(1, 2)) > 1e-6
    assert changed.sum() >= 4, "with channel_shuffle 1, most windows get another channel order"


# --- kill -9 and resume with images ---------------------------------------------------------------


def _digests(run: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((run / "components").iterdir())}


def _train_cmd(config: Path, episodes: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "continuonbrain", "train", "--config", str(config), "--rlds-dir", str(episodes),
            "--run-dir", str(run), "--model-root", str(run.with_name(f"{run.name}-models")), *extra]  # fmt: skip


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Camera episodes, a config whose Fast loop reads pixels *and* the Mid context (with
    dropout), and an uninterrupted run's component digests."""
    tmp = tmp_path_factory.mktemp("pixel-resume")
    episodes = drive_episodes(tmp / "episodes", 4, (24, 32), steps=30)
    steps = {"max_steps": 12, "warmup_steps": 2, "checkpoint_every": 4}
    model = {**TINY, "fast": {**TINY["fast"], "use_context": True, "dropout": 0.1}}
    config = {
        "seed": 0, "deterministic": True, "torch_threads": 1, "model": model,
        "components": {"vqvae": {**steps, "batch_size": 16, "shuffle_buffer": 32},
                       "mid_loop": {**steps, "batch_size": 2, "window_s": 1.0, "shuffle_buffer": 4},
                       "fast_loop": {**steps, "batch_size": 16, "window_s": 0.1, "shuffle_buffer": 32}},
        "thermal": {"sysfs_root": str(tmp / "no-sysfs")},
    }  # fmt: skip
    path = tmp / "config.json"
    path.write_text(json.dumps(config))
    run = tmp / "uninterrupted"
    subprocess.run(_train_cmd(path, episodes, run), check=True, capture_output=True, timeout=300)
    return {"config": path, "episodes": episodes, "digests": _digests(run)}


@pytest.mark.parametrize("component", ["mid_loop", "fast_loop"])
def test_kill_9_with_images_then_resume_gives_the_uninterrupted_files(
    tmp_path: Path, image_run: dict, component: str
) -> None:
    """Killed inside the Mid loop (cached codes) or the Fast loop (its conv encoder training on
    cached pooled frames), a resumed run ends with the uninterrupted run's files, byte for byte."""
    run = tmp_path / "run"
    cmd = _train_cmd(image_run["config"], image_run["episodes"], run)

    def past_first_checkpoint() -> bool:
        path = run / "metrics.jsonl"
        if not path.exists():
            return False
        events = [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]
        return any(e.get("component") == component and e.get("step", 0) >= 6 and "loss" in e for e in events)

    code = signal_when(cmd, tmp_path / "killed.log", past_first_checkpoint, signal.SIGKILL)
    assert code == -signal.SIGKILL, (tmp_path / "killed.log").read_text()
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert _digests(run) == image_run["digests"]
