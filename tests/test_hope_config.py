"""HopeConfig: JSON round trip and validation with errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from continuonbrain.hope import FastLoopConfig, HopeConfig, MidLoopConfig, VQVAEConfig


def test_defaults_and_json_round_trip(tmp_path: Path) -> None:
    cfg = HopeConfig()
    assert cfg.action_low == [-1.0, -1.0] and cfg.action_high == [1.0, 1.0]
    assert cfg.context_dim == cfg.mid.context_dim
    assert HopeConfig.from_dict(cfg.to_dict()) == cfg
    assert HopeConfig.from_json(cfg.to_json()) == cfg
    custom = HopeConfig(
        obs_dim=4,
        action_dim=3,
        action_low=[-2, -2, 0],
        action_high=[2, 2, 1],
        state_keys=["q", "dq"],
        image_keys=["cam"],
        image_shapes={"cam": (64, 48, 3)},
        mid_every=5,
        vqvae=VQVAEConfig(codebook_size=128, conv_channels=(8, 16)),
        mid={"d_model": 32},
        fast=FastLoopConfig(tau_cap=None, use_context=False),
    )
    assert custom.image_shapes == {"cam": [64, 48, 3]} and custom.vqvae.conv_channels == [8, 16]
    assert isinstance(custom.mid, MidLoopConfig) and custom.context_dim == 0
    path = custom.save(tmp_path / "config.json")
    assert HopeConfig.load(path) == custom
    assert HopeConfig.load(path).to_dict() == custom.to_dict()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bogus": 1}, "unknown field"),
        ({"fast": {"d_modle": 8}}, r"unknown field.*HopeConfig.fast"),
        ({"obs_dim": -1}, "obs_dim"),
        ({"obs_dim": 2.5}, "obs_dim"),
        ({"action_dim": True}, "action_dim"),
        ({"action_low": [0, 0], "action_high": [0, 1]}, "action_low"),
        ({"action_low": [0]}, "action_low"),
        ({"image_keys": ["cam"]}, "image_shapes"),
        ({"image_keys": ["cam"], "image_shapes": {"cam": [6, 32, 3]}}, "at least 8"),
        ({"image_shapes": {"cam": [32, 32, 3]}}, "not in image_keys"),
        ({"state_keys": ["a", "a"]}, "duplicates"),
        ({"mid_every": 0}, "mid_every"),
        ({"vqvae": {"decay": 1.0}}, "decay"),
        ({"vqvae": {"codebook_size": 1}}, "codebook_size"),
        ({"mid": {"tau_min": 5, "tau_max": 2}}, "tau_max"),
        ({"fast": {"tau_max": 8, "tau_cap": 8}}, "tau_cap"),
        ({"fast": {"dropout": 1.0}}, "dropout"),
        ({"mid": "big"}, "HopeConfig.mid"),
        ({"model_type": "gpt"}, "model_type"),
        ({"obs_dim": 0}, "empty"),
    ],
)
def test_validation_names_the_bad_field(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HopeConfig.from_dict(data)


def test_bad_json_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not parse"):
        HopeConfig.from_json("{not json")
    (tmp_path / "c.json").write_text('{"obs_dim": "ten"}')
    with pytest.raises(ValueError, match=r"c\.json.*obs_dim"):
        HopeConfig.load(tmp_path / "c.json")
