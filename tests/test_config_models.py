"""The gate, training-gate, server-limit and imagine-search configs are strict
:class:`~continuonbrain.config_base.ConfigModel` s like every other config: a bad value or an
unknown key raises :class:`~continuonbrain.config_base.ConfigError` naming the field, the
defaults are the documented ones, and copies are made with ``model_copy(update=...)``."""

from __future__ import annotations

import pytest

from continuonbrain.config_base import ConfigError, ConfigModel
from continuonbrain.models.safety import SafetyGateConfig
from continuonbrain.robot.gates import GatingConfig
from continuonbrain.runtime.limits import ServerLimits
from continuonbrain.sim.imagine import SearchConfig

CLASSES = (SafetyGateConfig, GatingConfig, ServerLimits, SearchConfig)


@pytest.mark.parametrize("cls", CLASSES)
def test_each_is_a_config_model_with_its_defaults(cls: type[ConfigModel]) -> None:
    cfg = cls()
    assert isinstance(cfg, ConfigModel)
    assert cls.from_dict(cfg.to_dict()) == cfg  # round-trips through plain JSON values
    with pytest.raises(ConfigError, match=rf"unknown field 'bogus' in {cls.__name__} \(known: \["):
        cls(bogus=1)
    with pytest.raises(ConfigError, match=rf"unknown field 'bogus' in {cls.__name__}"):
        cls.from_dict({"bogus": 1})


def test_defaults_unchanged() -> None:
    assert SafetyGateConfig().to_dict() == {
        # 0.40 since issue 13: the ceiling measured on held-out episodes (BENCHMARKS "Promotion gate")
        "avg_action_delta_threshold": 0.4,
        "max_eval_steps": 1024,
        "eval_tail_episodes": 8,
        "allow_promotion_without_eval": False,
        "regression_margin": 0.02,
        "margin_se_k": 3.0,
        "sim_env": None,
        "sim_env_kwargs": None,
        # 100 episodes and margin 0.05 since issue 13's bench (BENCHMARKS "Gate: does it predict behaviour?")
        "sim_episodes": 100,
        "sim_seed": 1000,
        "sim_margin": 0.05,
        "sim_distance_margin": 0.05,
        "sim_return_margin": 0.1,
        "require_shadow": False,
    }
    assert GatingConfig().to_dict() == {
        "min_battery": 0.4,
        "max_temp_c": 75.0,
        "require_idle": True,
        "require_new_episodes": True,
        "min_new_episodes": 1,
    }
    limits = ServerLimits()
    assert (limits.max_body_bytes, limits.max_header_bytes, limits.max_connections) == (1 << 20, 64 << 10, 256)
    assert (limits.header_timeout_s, limits.body_timeout_s, limits.sweep_interval_s) == (10.0, 30.0, 0.5)
    assert (limits.max_sse_subscribers, limits.keep_alive_s) == (16, 5)
    search = SearchConfig()
    assert (search.method, search.horizon, search.history, search.population, search.elites) == ("cem", 8, 2, 64, 8)
    assert (search.iterations, search.init_std, search.min_std, search.final_weight) == (5, 0.6, 0.05, 1.0)
    assert (search.oversample, search.max_final_cost, search.batch_starts, search.seed) == (2.0, None, 16, 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"avg_action_delta_threshold": -0.1},
            r"SafetyGateConfig\.avg_action_delta_threshold: .*greater than or equal to 0",
        ),
        ({"max_eval_steps": 0}, r"SafetyGateConfig\.max_eval_steps: .*greater than or equal to 1, got 0"),
        ({"eval_tail_episodes": -1}, r"SafetyGateConfig\.eval_tail_episodes: .*greater than or equal to 0"),
        ({"regression_margin": -1.0}, r"SafetyGateConfig\.regression_margin: .*greater than or equal to 0"),
        ({"max_eval_steps": "10"}, r"SafetyGateConfig\.max_eval_steps: .*integer, got '10'"),
        ({"regression_margin": float("nan")}, r"SafetyGateConfig\.regression_margin: .*finite"),
    ],
)
def test_safety_gate_config_bad_values_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SafetyGateConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_battery": 40}, r"GatingConfig\.min_battery: min_battery is a fraction in 0\.\.1"),
        ({"min_battery": -0.1}, r"GatingConfig\.min_battery: min_battery is a fraction"),
        ({"min_new_episodes": 0}, r"GatingConfig\.min_new_episodes: .*greater than or equal to 1, got 0"),
        ({"require_idle": 1}, r"GatingConfig\.require_idle: .*boolean, got 1"),
    ],
)
def test_gating_config_bad_values_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GatingConfig(**kwargs)
    cfg = GatingConfig()
    with pytest.raises(ConfigError, match=message):  # assignment is checked too
        setattr(cfg, *next(iter(kwargs.items())))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_body_bytes": 0}, r"ServerLimits\.max_body_bytes: .*greater than or equal to 1, got 0"),
        ({"max_connections": -5}, r"ServerLimits\.max_connections: .*greater than or equal to 1"),
        ({"keep_alive_s": 0}, r"ServerLimits\.keep_alive_s: .*greater than or equal to 1"),
        ({"header_timeout_s": 0}, r"ServerLimits\.header_timeout_s: .*greater than 0, got 0"),
        ({"sweep_interval_s": -1.0}, r"ServerLimits\.sweep_interval_s: .*greater than 0"),
    ],
)
def test_server_limits_bad_values_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ServerLimits(**kwargs)


def test_server_limits_are_frozen_and_copied_with_updates() -> None:
    limits = ServerLimits()
    with pytest.raises(ConfigError, match="frozen"):
        limits.max_connections = 3  # type: ignore[misc]
    fewer = limits.model_copy(update={"max_connections": 3})
    assert fewer.max_connections == 3 and limits.max_connections == 256
    assert hash(limits) == hash(ServerLimits())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "mppi"}, r"SearchConfig\.method: unknown search method 'mppi' \(known: cem\)"),
        ({"horizon": 0}, r"SearchConfig\.horizon: .*greater than or equal to 1, got 0"),
        ({"history": -1}, r"SearchConfig\.history: .*greater than or equal to 0"),
        ({"population": 4}, r"SearchConfig: elites \(8\) must be <= population \(4\)"),
        ({"iterations": 2.5}, r"SearchConfig\.iterations: .*integer, got 2\.5"),
        ({"batch_starts": True}, r"SearchConfig\.batch_starts: .*integer, got True"),
        ({"init_std": 0.0}, r"SearchConfig\.init_std: .*greater than 0"),
        ({"min_std": float("inf")}, r"SearchConfig\.min_std: .*finite"),
        ({"oversample": 0.5}, r"SearchConfig\.oversample: .*greater than or equal to 1"),
        ({"final_weight": -1}, r"SearchConfig\.final_weight: .*greater than or equal to 0"),
        ({"max_final_cost": 0.0}, r"SearchConfig\.max_final_cost: .*greater than 0"),
    ],
)
def test_search_config_bad_values_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SearchConfig(**kwargs)


def test_search_config_copies_and_records_as_json() -> None:
    cfg = SearchConfig(horizon=4, population=32, elites=6, max_final_cost=10)
    one = cfg.model_copy(update={"iterations": 1})
    assert one.iterations == 1 and one.horizon == 4 and cfg.iterations == 5
    assert cfg.to_dict()["max_final_cost"] == 10.0 and cfg.with_overrides({"seed": 3}).seed == 3
    with pytest.raises(ConfigError, match=r"SearchConfig: elites \(6\) must be <= population \(2\)"):
        cfg.population = 2
