"""HOPE sequential training on dict observations with a camera: the state key becomes the state
vector, the image key goes to the VQ-VAE's conv encoder, to the Fast loop every tick (a frozen
copy of that encoder) and through the Mid loop's context, and the trained candidate acts on the
same dict observations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import png_bytes

from continuonbrain.hope import HopeBrain
from continuonbrain.rlds import Episode, LazyImage, read_episodes, write_episodes
from continuonbrain.trainer import hope_data
from continuonbrain.trainer.sequential import SequentialTrainer, TrainingError
from continuonbrain.trainer.train_config import SequentialConfig

SIDE = 16


def camera_episode(i: int, n: int = 60, with_state: bool = True) -> Episode:
    """A car whose camera brightness follows its position: the image carries the state too."""
    rows = []
    for t in range(n):
        x = np.sin(0.1 * t + i)
        obs: dict = {"camera": LazyImage(data=png_bytes(SIDE, SIDE, value=int(120 + 100 * x)), format="png")}
        if with_state:
            obs["state"] = [float(x), float(np.cos(0.1 * t + i))]
        rows.append({"observation": obs, "action": {"steering": [0.5 * float(x)], "throttle": [0.3]}})
    return Episode.from_steps(rows, {"episode_id": f"cam{i}"})


def image_config(tmp: Path, episodes: Path, steps: int = 8, **overrides) -> SequentialConfig:
    comp = {"max_steps": steps, "checkpoint_every": 4, "shuffle_buffer": 64, "warmup_steps": 2}
    data = {
        "rlds_dir": str(episodes),
        "model_root": str(tmp / "models"),
        "run_dir": str(tmp / "run"),
        "torch_threads": 1,
        "normalizer_episodes": 8,
        "image_keys": ["camera"],
        "model": {"vqvae": {"codebook_size": 16, "conv_channels": [8, 8]}},
        "components": {
            "vqvae": {**comp, "batch_size": 32},
            "mid_loop": {**comp, "batch_size": 4, "window_s": 1.0},
            "fast_loop": {**comp, "batch_size": 32, "window_s": 0.1},
        },
        "thermal": {"sysfs_root": str(tmp / "no-sysfs")},
        **overrides,
    }
    path = tmp / "config.json"
    path.write_text(json.dumps(data))
    return SequentialConfig.from_json(path)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_state_and_camera_observations_train_every_component_and_act(tmp_path: Path) -> None:
    episodes = tmp_path / "episodes"
    write_episodes([camera_episode(i) for i in range(8)], episodes)
    cfg = image_config(tmp_path, episodes, observation_keys=["state"])

    summary = SequentialTrainer(cfg).run()

    for name in ("vqvae", "mid_loop", "fast_loop"):
        c = summary["components"][name]
        assert c["steps"] == 8 and c["stop_reason"] == "max_steps", (name, c)
    vq = [r for r in read_metrics(tmp_path / "run") if r.get("component") == "vqvae" and "loss" in r]
    assert len(vq) == 8 and all(r["image_recon"] > 0 for r in vq) and all(r["state_recon"] > 0 for r in vq)

    candidate = tmp_path / "models" / "candidate"
    hope = json.loads((candidate / "config.json").read_text())
    assert hope["image_keys"] == ["camera"] and hope["image_shapes"] == {"camera": [SIDE, SIDE, 3]}
    assert hope["state_keys"] == ["state"] and hope["obs_dim"] == 2 and hope["action_dim"] == 2

    brain = HopeBrain.load(candidate)
    assert brain.components() == ["vqvae", "mid_loop", "fast_loop"] and brain.uses_mid
    frame = np.full((SIDE, SIDE, 3), 200, np.uint8)
    for _ in range(12):  # past a Mid refresh (every 10 ticks), which tokenizes the camera
        action = brain.act({"state": np.array([0.5, -0.2], np.float32), "camera": frame})
    assert action.shape == (2,) and np.isfinite(action).all()

    # Training saw what the brain sees: the Fast loop's context, tokenized in chunks, is the Mid
    # loop's over the whole episode's state and frames, and at the first tick (no previous
    # action on either side) the brain acts exactly as the Fast loop did in training.
    ep = next(iter(read_episodes(episodes)))
    source = hope_data.with_mid_context(  # several chunks per episode
        lambda: iter([ep]), brain.vqvae, brain.mid_loop, ["state"], None, ["camera"], chunk=7
    )
    context = next(iter(source())).extras["context"]
    state = ep.observation_vector(["state"])
    frames = ep.observation["camera"].decode()
    whole = {"observation": torch.from_numpy(state)[None], "action": torch.from_numpy(ep.action_vector())[None]}
    with torch.no_grad():
        expected = brain.mid_loop({**whole, "images": {"camera": torch.from_numpy(frames)[None]}}, brain.vqvae)
    np.testing.assert_allclose(context, expected["context_steps"][0].numpy(), atol=1e-6)
    with torch.no_grad():
        feats = brain.fast_loop.pixels({"camera": torch.from_numpy(frames[:1])[None]})
        trained = brain.fast_loop(
            torch.from_numpy(state[:1])[None], torch.from_numpy(context[:1])[None], image_features=feats
        )[0, 0]
    first = HopeBrain.load(candidate, backend="torch").act({"state": state[0], "camera": frames[0]})
    np.testing.assert_allclose(first, trained.numpy(), atol=1e-5)


def test_camera_only_observations_reach_the_fast_loop(tmp_path: Path) -> None:
    """No numeric key at all: obs_dim is 0, the VQ-VAE encodes the image alone and the Fast loop
    acts on the image features and the Mid loop's context."""
    episodes = tmp_path / "episodes"
    write_episodes([camera_episode(i, n=40, with_state=False) for i in range(4)], episodes)
    cfg = image_config(tmp_path, episodes, steps=4)

    summary = SequentialTrainer(cfg).run()

    assert [c["steps"] for c in summary["components"].values()] == [4, 4, 4]
    hope = json.loads((tmp_path / "models" / "candidate" / "config.json").read_text())
    assert hope["obs_dim"] == 0 and hope["state_keys"] == [] and hope["image_keys"] == ["camera"]
    brain = HopeBrain.load(tmp_path / "models" / "candidate")
    action = brain.act({"camera": np.zeros((SIDE, SIDE, 3), np.uint8)})
    assert action.shape == (2,) and np.isfinite(action).all()

    # Without image features and the Mid context, a Fast loop on such observations would see
    # nothing: a clear error.
    fast = {"use_context": False, "image_features": False}
    cfg = image_config(tmp_path, episodes, steps=4, order=["fast_loop"], model={"fast": fast})
    with pytest.raises(TrainingError, match="no state vector"):
        SequentialTrainer(cfg).run()


def test_image_key_missing_from_the_observations_is_a_clear_error(tmp_path: Path) -> None:
    episodes = tmp_path / "episodes"
    write_episodes([camera_episode(0, n=20)], episodes)
    cfg = image_config(tmp_path, episodes, image_keys=["front"])
    with pytest.raises(TrainingError, match="image key 'front' is not in the observation"):
        SequentialTrainer(cfg).run()


def test_the_promotion_gate_runs_an_image_brain_in_shadow(tmp_path: Path) -> None:
    from continuonbrain.trainer.promotion import evaluate_candidate
    from continuonbrain.trainer.store import PromotionStore

    episodes = tmp_path / "episodes"
    write_episodes([camera_episode(i) for i in range(4)], episodes)
    cfg = image_config(tmp_path, episodes, observation_keys=["state"])
    SequentialTrainer(cfg).run()
    result = evaluate_candidate(PromotionStore(tmp_path / "models"), rlds_dir=episodes)
    assert result.candidate["error"] is None, result.candidate["error"]
    assert result.candidate["steps"] > 0 and result.candidate["violations"] == 0
