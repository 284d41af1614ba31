"""One config system (continuonbrain/config_base.py) for the HOPE model, seed training and
adaptation: strict keys and types, range checks naming the field, paths relative to the file,
one dotted override syntax, and the adapter config's old flat layout still loading."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from continuonbrain.config_base import ConfigError, ConfigModel, apply_overrides, parse_set
from continuonbrain.hope import HopeConfig
from continuonbrain.trainer.lora_config import LEGACY_KEYS, LocalTrainerJobConfig
from continuonbrain.trainer.train_config import SequentialConfig, add_train_arguments, train_config_from_args

CONFIGS = Path(__file__).resolve().parents[1] / "continuonbrain" / "configs"
DONKEY = CONFIGS / "pi5-donkey.json"


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path: Path) -> None:
    kind = SequentialConfig if "components" in json.loads(path.read_text()) else LocalTrainerJobConfig
    cfg = kind.load(path)
    assert isinstance(cfg, ConfigModel)
    assert kind.from_dict(cfg.to_dict()) == cfg
    json.dumps(cfg.to_dict())  # plain JSON: the API and job.json store it as is


def test_the_flat_adapter_layout_loads_into_the_sections(tmp_path: Path) -> None:
    flat = json.loads(DONKEY.read_text())
    assert "budgets" not in flat and "max_steps" in flat  # the shipped Donkeycar config is the old layout
    cfg = LocalTrainerJobConfig.load(DONKEY)
    assert cfg.budgets.max_steps == flat["max_steps"] and cfg.lora.rank == flat["lora_rank"]
    assert cfg.data.action_keys == ["steering", "throttle"] and cfg.gates.max_temp_c == flat["max_temp_c"]
    assert cfg.thermal.max_temp_c == flat["thermal_stop_c"] and cfg.thermal.sysfs_root == flat["sysfs_root"]
    assert cfg.data.max_imagined_fraction == 0.0 and cfg.guards.per_key_bounds == flat["per_key_bounds"]
    # Every one of the 40 flat keys has a place, and the sectioned dump loads to the same config.
    assert set(flat) - {"_comment"} <= set(LEGACY_KEYS) | set(LocalTrainerJobConfig.model_fields)
    assert LocalTrainerJobConfig.load(write(tmp_path / "sectioned.json", cfg.to_dict())) == cfg
    # The old names still read (code written against the flat config) ...
    assert (cfg.max_steps, cfg.lora_rank, cfg.action_keys, cfg.sysfs_root) == (
        cfg.budgets.max_steps,
        cfg.lora.rank,
        cfg.data.action_keys,
        cfg.thermal.sysfs_root,
    )
    assert cfg.include_imagined is False and cfg.thermal_stop_c == cfg.thermal.max_temp_c
    # ... and override, as --set max_steps=5 always did.
    assert cfg.with_overrides({"max_steps": 5, "include_imagined": True}).data.max_imagined_fraction == 1.0
    assert cfg.with_overrides({"max_steps": 5}).budgets.max_steps == 5
    # A key given under both names is refused (which would win is not obvious).
    with pytest.raises(ConfigError, match=r"budgets\.max_steps is given twice"):
        LocalTrainerJobConfig.from_dict({**flat, "budgets": {"max_steps": 7}})


def test_the_robot_state_file_default_is_the_sensors_one() -> None:
    from continuonbrain.robot.sensors import DEFAULT_STATE_FILE

    assert LocalTrainerJobConfig().gates.robot_state_file == DEFAULT_STATE_FILE


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lora.rnak": 8}, r"unknown field 'rnak' in LocalTrainerJobConfig\.lora \(known: \['alpha'"),
        ({"lora_rnak": 8}, r"unknown field 'lora_rnak' in LocalTrainerJobConfig "),
        ({"lora.rank": 0}, r"LocalTrainerJobConfig\.lora\.rank: .*greater than or equal to 1, got 0"),
        ({"lora.rank": True}, r"LocalTrainerJobConfig\.lora\.rank: .*integer, got True"),
        ({"training.learning_rate": "fast"}, r"training\.learning_rate: .*number, got 'fast'"),
        ({"budgets.max_wall_time_s": float("inf")}, r"budgets\.max_wall_time_s: .*finite"),
        ({"gates.min_battery": 40}, r"gates\.min_battery: .*less than or equal to 1, got 40"),
        ({"data.min_episodes": 300}, r"max_episodes \(256\) must be >= min_episodes \(300\)"),
        ({"guards.per_key_bounds": {"steering": [1, -1]}}, r"per_key_bounds\['steering'\]"),
        ({"safety.eval_tail": 2}, r"unknown field 'eval_tail' in LocalTrainerJobConfig\.safety \(known: \['allow"),
        ({"safety.max_eval_steps": 0}, r"LocalTrainerJobConfig\.safety\.max_eval_steps: .*equal to 1, got 0"),
        ({"thermal.resume_temp_c": 90}, r"thermal: resume_temp_c \(90.0\) must be <= max_temp_c \(80.0\)"),
        ({"lora.rank.x": 1}, r"cannot set lora\.rank\.x: lora\.rank is not an object"),
    ],
)
def test_adapter_config_errors_name_the_field(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LocalTrainerJobConfig.load(DONKEY, overrides)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"seed": -1}, r"SequentialConfig\.seed: .*greater than or equal to 0"),
        ({"order": ["vqvae", "vqvae"]}, "order lists a component twice"),
        ({"order": ["tokenizer"]}, r"SequentialConfig\.order\.0: Input should be 'vqvae'"),
        ({"components": {"fast": {}}}, r"SequentialConfig\.components: key 'fast': Input should be 'vqvae'"),
        ({"components": {"fast_loop": {"max_steps": 0}}}, r"components\.fast_loop\.max_steps: .*>= 1|greater"),
        (
            {"components": {"mid_loop": {"window": 2}}},
            r"unknown field 'window' in SequentialConfig\.components\.mid_loop",
        ),
        ({"thermal": {"poll": 1}}, r"unknown field 'poll' in SequentialConfig\.thermal \(known"),
        ({"model": {"fast": {"d_modle": 8}}}, r"model\.fast: unknown field 'd_modle' in HopeConfig\.fast"),
        ({"model": {"obs_dims": 8}}, r"model: unknown HopeConfig field\(s\) \['obs_dims'\]"),
        ({"imagined_rlds_dirs": ["x"], "max_imagined_fraction": None}, "needs max_imagined_fraction"),
        ({"max_imagined_fraction": 1.5}, r"max_imagined_fraction: .*less than or equal to 1"),
    ],
)
def test_seed_config_errors_name_the_field(tmp_path: Path, data: dict, message: str) -> None:
    path = write(tmp_path / "c.json", data)
    with pytest.raises(ValueError, match=message) as info:
        SequentialConfig.load(path)
    assert str(info.value).startswith(str(path))  # and the file


def test_relative_paths_resolve_against_the_file_and_overrides_against_the_working_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path / "cfg" / "train.json",
        {
            "rlds_dir": "episodes",
            "run_dir": "../runs/a",
            "imagined_rlds_dirs": ["imagined"],
            "thermal": {"sysfs_root": "sys"},
        },
    )
    cfg = SequentialConfig.load(path)
    assert cfg.rlds_dir == str(tmp_path / "cfg" / "episodes") and cfg.run_dir == str(tmp_path / "runs" / "a")
    assert cfg.imagined_rlds_dirs == [str(tmp_path / "cfg" / "imagined")]
    assert cfg.thermal.sysfs_root == str(tmp_path / "cfg" / "sys")
    assert cfg.model_root == "/opt/continuonos/brain/models"  # absolute: untouched
    monkeypatch.chdir(tmp_path)
    moved = cfg.with_overrides({"model_root": "models", "thermal.sysfs_root": "/sys"})
    assert moved.model_root == str(tmp_path / "models") and moved.rlds_dir == cfg.rlds_dir
    adapt = LocalTrainerJobConfig.load(write(tmp_path / "cfg" / "adapt.json", {"log_dir": "logs"}), {"rlds_dir": "eps"})
    assert adapt.log_dir == str(tmp_path / "cfg" / "logs") and adapt.rlds_dir == str(tmp_path / "eps")


def test_one_dotted_override_syntax() -> None:
    sets = parse_set(["a.b=50", 'lora.layers=["fast_loop.head"]', "log_dir=/tmp/x y", "flag=true", "s=01x"])
    assert sets == {"a.b": 50, "lora.layers": ["fast_loop.head"], "log_dir": "/tmp/x y", "flag": True, "s": "01x"}
    for bad in ("novalue", "=3", "a..b=1", ".a=1"):
        with pytest.raises(ConfigError, match="KEY=VALUE"):
            parse_set([bad])
    data = {"components": {"vqvae": {"max_steps": 1}, "fast_loop": {"max_steps": 2}}, "x": 1}
    out = apply_overrides(data, {"components.*.max_steps": 9, "thermal.max_temp_c": 85})
    assert out == {
        "components": {"vqvae": {"max_steps": 9}, "fast_loop": {"max_steps": 9}},
        "x": 1,
        "thermal": {"max_temp_c": 85},
    }
    assert data["components"]["vqvae"]["max_steps"] == 1  # a copy

    seed = SequentialConfig().with_overrides({"components.*.max_steps": 7, "model.fast.use_context": False})
    assert {c.max_steps for c in seed.components.values()} == {7} and seed.model == {"fast": {"use_context": False}}
    hope = HopeConfig().with_overrides({"vqvae.codebook_size": 32, "fast.tau_cap": None})
    assert hope.vqvae.codebook_size == 32 and hope.fast.tau_cap is None


def test_train_takes_set_on_the_command_line(tmp_path: Path) -> None:
    """``continuonbrain train --set a.b=v`` (``adapt``'s: tests/test_local_lora_trainer.py)."""
    p = argparse.ArgumentParser()
    add_train_arguments(p)
    args = p.parse_args(
        ["--config", str(CONFIGS / "pi5-hope-v1.json"), "--set", "components.fast_loop.max_steps=12",
         "--set", "thermal.max_temp_c=85", "--run-dir", str(tmp_path / "run"), "--max-steps", "10"]
    )  # fmt: skip
    cfg = train_config_from_args(args)
    assert cfg.components["fast_loop"].max_steps == 10 and cfg.components["vqvae"].max_steps == 10
    assert cfg.thermal.max_temp_c == 85 and cfg.run_dir == str(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"unknown field 'max_step' in SequentialConfig\.components\.fast_loop"):
        train_config_from_args(p.parse_args(["--set", "components.fast_loop.max_step=1"]))


def test_direct_construction_and_assignment_are_checked_too() -> None:
    with pytest.raises(ConfigError, match=r"^HopeConfig\.vqvae\.decay: Input should be less than 1, got 1\.5$"):
        HopeConfig(vqvae={"decay": 1.5})
    cfg = SequentialConfig()
    with pytest.raises(ConfigError, match=r"ComponentTrainConfig\.batch_size"):
        cfg.components["vqvae"].batch_size = 0
    cfg.components["vqvae"].batch_size = 3
    assert cfg.components["vqvae"].batch_size == 3


def test_every_field_is_documented_in_the_json_schema() -> None:
    for kind in (SequentialConfig, LocalTrainerJobConfig, HopeConfig):
        schema = kind.json_schema()
        assert schema["additionalProperties"] is False
        assert "description" in schema["properties"]["rlds_dir" if kind is not HopeConfig else "mid_every"]
    lora = LocalTrainerJobConfig.json_schema()["$defs"]["LoraSection"]["properties"]
    assert "PEFT" in lora["layers"]["description"]
