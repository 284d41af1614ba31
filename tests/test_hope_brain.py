"""HopeBrain: acting with carried state, safetensors persistence, per-component files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from continuonbrain.hope import (
    COMPONENTS,
    HopeBrain,
    HopeConfig,
    inject_lora,
    list_components,
    load_component,
    merge_lora,
    save_component,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def perturb(module: torch.nn.Module, scale: float = 0.2) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


SMALL = {
    "vqvae": {"codebook_size": 32, "hidden_dim": 32},
    "mid": {"d_model": 32, "d_state": 32},
    "fast": {"d_model": 32, "d_state": 32},
}


def trained_looking_brain(cfg: HopeConfig, components=COMPONENTS, backend="numpy") -> HopeBrain:
    """A brain whose weights, normalisers and codebook are all off their initial values."""
    brain = HopeBrain.build(cfg, components, backend=backend)
    obs = torch.randn(256, cfg.obs_dim) * 3 + 2
    brain.fit_normalizer(obs)
    if brain.vqvae is not None:
        brain.vqvae.train()
        brain.vqvae(obs)  # codebook from data
        brain.vqvae.eval()
    for name in brain.components():
        perturb(getattr(brain, name))
    return brain


def rollout(brain: HopeBrain, observations: np.ndarray) -> np.ndarray:
    brain.reset()
    return np.stack([brain.act(o) for o in observations])


def observations(n: int = 25, dim: int = 10) -> np.ndarray:
    return (np.random.default_rng(0).standard_normal((n, dim)) * 3 + 2).astype(np.float32)


def test_save_load_round_trip_gives_identical_actions(tmp_path: Path) -> None:
    cfg = HopeConfig(**SMALL)
    brain = trained_looking_brain(cfg)
    obs = observations()
    want = rollout(brain, obs)
    paths = brain.save(tmp_path)
    assert sorted(p.name for p in paths) == sorted(["config.json", *(f"{n}.safetensors" for n in COMPONENTS)])
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".pt", ".pth", ".bin", ".pkl", ".tmp")]
    assert list_components(tmp_path) == list(COMPONENTS)
    with safe_open(str(tmp_path / "fast_loop.safetensors"), framework="pt") as f:
        assert f.metadata()["component"] == "fast_loop"
        keys = set(f.keys())
    assert {"normalizer.mean", "normalizer.std", "actions.center", "actions.scale"} <= keys
    assert HopeConfig.load(tmp_path / "config.json") == cfg

    loaded = HopeBrain.load(tmp_path)
    assert loaded.components() == list(COMPONENTS)
    np.testing.assert_array_equal(rollout(loaded, obs), want)
    torch.testing.assert_close(loaded.fast_loop.normalizer.std, brain.fast_loop.normalizer.std)
    torch.testing.assert_close(loaded.vqvae.quantizer.embed, brain.vqvae.quantizer.embed)
    # the torch backend computes the same function
    np.testing.assert_allclose(rollout(HopeBrain.load(tmp_path, backend="torch"), obs), want, atol=1e-5)


def test_act_carries_state_and_reset_restores_it() -> None:
    brain = trained_looking_brain(HopeConfig(**SMALL), components=["fast_loop"])
    obs = observations(1)[0]
    brain.reset()
    first = brain.act(obs)
    second = brain.act(obs)
    assert not np.allclose(first, second)  # same observation, different state
    assert brain.tick == 2
    brain.reset()
    np.testing.assert_array_equal(brain.act(obs), first)
    # act() before any reset starts from a fresh state too
    fresh = brain.fork()
    np.testing.assert_array_equal(fresh.act(obs), first)


def test_fast_only_brain_acts_and_round_trips(tmp_path: Path) -> None:
    cfg = HopeConfig(**SMALL)
    brain = trained_looking_brain(cfg, components=["fast_loop"])
    assert brain.components() == ["fast_loop"]
    obs = observations()
    want = rollout(brain, obs)
    brain.save(tmp_path)
    assert list_components(tmp_path) == ["fast_loop"]
    np.testing.assert_array_equal(rollout(HopeBrain.load(tmp_path), obs), want)
    low, high = np.array(cfg.action_low), np.array(cfg.action_high)
    assert np.all(want >= low) and np.all(want <= high)


def test_mid_loop_context_is_refreshed_every_mid_every_calls() -> None:
    cfg = HopeConfig(mid_every=5, **SMALL)
    brain = trained_looking_brain(cfg)
    obs = observations(16)
    with_mid = rollout(brain, obs)
    fast_only = rollout(HopeBrain(cfg, fast_loop=brain.fast_loop), obs)
    assert not np.allclose(with_mid, fast_only)
    np.testing.assert_allclose(
        rollout(HopeBrain(cfg, **{n: getattr(brain, n) for n in COMPONENTS}, backend="torch"), obs), with_mid, atol=1e-5
    )

    # the same by hand: context from the Mid loop at ticks 0, 5, 10, 15, held in between
    fast, mid, vq = brain.fast_loop, brain.mid_loop, brain.vqvae
    state, mstate, ctx, acts, want = None, None, None, [], []
    with torch.no_grad():
        for t, o in enumerate(torch.from_numpy(obs)):
            if t % 5 == 0:
                prev = torch.stack(acts[-5:]).mean(0) if acts else None
                codes, _ = vq.encode(o[None])
                ctx, mstate = mid.step(codes, mstate, prev)
            a, state = fast.step(o[None], state, ctx)
            acts.append(a)
            want.append(a[0].numpy())
    np.testing.assert_allclose(with_mid, np.stack(want), atol=1e-5)


def test_dict_observations_with_state_keys_and_images() -> None:
    cfg = HopeConfig(
        obs_dim=5,
        action_dim=2,
        state_keys=["joints", "target"],
        image_keys=["cam"],
        image_shapes={"cam": [8, 8, 1]},
        mid_every=2,
        vqvae={"conv_channels": [4], "image_feature_dim": 8, "hidden_dim": 16, "codebook_size": 16},
        mid={"d_model": 16, "d_state": 16},
        fast={"d_model": 16, "d_state": 16},
    )
    brain = HopeBrain.build(cfg)
    perturb(brain)
    rng = np.random.default_rng(0)
    frames = [
        {"joints": rng.standard_normal(3), "target": rng.standard_normal((2,)), "cam": rng.integers(0, 255, (8, 8))}
        for _ in range(6)
    ]
    brain.reset()
    acts = [brain.act(f) for f in frames]
    assert all(a.shape == (2,) and a.dtype == np.float32 for a in acts)
    vec, images = brain.split_observation(frames[0])
    np.testing.assert_allclose(vec, np.concatenate([frames[0]["joints"], frames[0]["target"]]).astype(np.float32))
    assert images["cam"].shape == (8, 8, 1)
    with pytest.raises(ValueError, match="lacks key"):
        brain.act({"joints": [0.0, 0.0, 0.0]})
    with pytest.raises(ValueError, match="obs_dim=5"):
        HopeBrain(cfg, fast_loop=brain.fast_loop).act(np.zeros(4, np.float32))


def test_weight_changes_reach_the_numpy_path_at_reset() -> None:
    brain = trained_looking_brain(HopeConfig(**SMALL), components=["fast_loop"])
    obs = observations(3)
    before = rollout(brain, obs)
    opt = torch.optim.SGD(brain.fast_loop.parameters(), lr=0.5)
    loss = brain.fast_loop(torch.from_numpy(obs)[None]).sum()
    loss.backward()
    opt.step()
    after = rollout(brain, obs)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(
        after, rollout(HopeBrain(brain.config, fast_loop=brain.fast_loop, backend="torch"), obs), atol=1e-5
    )


def test_components_must_match_the_brain_config() -> None:
    fast = HopeBrain.build(HopeConfig(**SMALL), ["fast_loop"]).fast_loop
    with pytest.raises(ValueError, match="different HopeConfig"):
        HopeBrain(HopeConfig(mid_every=3, **SMALL), fast_loop=fast)
    with pytest.raises(TypeError, match="VQVAE"):
        HopeBrain(HopeConfig(**SMALL), vqvae=fast)  # type: ignore[arg-type]


def test_brain_without_fast_loop_cannot_act() -> None:
    brain = HopeBrain.build(HopeConfig(**SMALL), components=["vqvae", "mid_loop"])
    assert brain.components() == ["vqvae", "mid_loop"]
    with pytest.raises(RuntimeError, match="no fast_loop"):
        brain.act(np.zeros(10, np.float32))


def test_components_saved_one_at_a_time(tmp_path: Path) -> None:
    """The trainer's flow: train, save and free one component, later load them together."""
    cfg = HopeConfig(**SMALL)
    brain = trained_looking_brain(cfg)
    for name in COMPONENTS:
        save_component(tmp_path, name, getattr(brain, name))
    assert json.loads((tmp_path / "config.json").read_text()) == cfg.to_dict()
    vq = load_component(tmp_path, "vqvae")
    torch.testing.assert_close(vq.quantizer.embed, brain.vqvae.quantizer.embed)
    assert not vq.training
    obs = observations()
    np.testing.assert_array_equal(rollout(HopeBrain.load(tmp_path), obs), rollout(brain, obs))
    # a component built from another config does not go into the same directory
    other = HopeBrain.build(HopeConfig(mid_every=3, **SMALL), ["fast_loop"])
    with pytest.raises(ValueError, match="different HopeConfig"):
        save_component(tmp_path, "fast_loop", other.fast_loop)
    with pytest.raises(ValueError, match="does not fit"):
        load_component(tmp_path, "fast_loop", HopeConfig())  # default sizes differ from SMALL
    with pytest.raises(TypeError, match="FastLoop"):
        save_component(tmp_path, "fast_loop", brain.vqvae)
    with pytest.raises(ValueError, match="unknown HOPE component"):
        save_component(tmp_path, "slow_loop", brain.vqvae)
    # unmerged LoRA layers are refused; merged ones save as a plain component
    inject_lora(brain.fast_loop, ["in_proj"], rank=2)
    with pytest.raises(ValueError, match="LoRA"):
        save_component(tmp_path, "fast_loop", brain.fast_loop)
    merge_lora(brain.fast_loop)
    save_component(tmp_path, "fast_loop", brain.fast_loop)


def test_a_component_file_depends_only_on_its_weights(tmp_path: Path) -> None:
    """Equal weights give equal bytes (so a sha256 tells a reproduced model from another):
    safetensors itself writes the header metadata in a random order per save
    (safetensors/safetensors#584), and a component file carries four metadata keys."""
    brain = trained_looking_brain(HopeConfig(**SMALL))
    digests = set()
    for i in range(8):
        path = save_component(tmp_path / str(i), "fast_loop", brain.fast_loop)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["component"] == "fast_loop" and f.metadata()["format"] == "pt"
    loaded = load_component(tmp_path / "0", "fast_loop")
    for key, value in brain.fast_loop.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_load_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        HopeBrain.load(tmp_path)
    HopeConfig().save(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="no component files"):
        HopeBrain.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="fast_loop"):
        load_component(tmp_path, "fast_loop")
