"""Our LoRA adapters are PEFT format, checked with the real ``peft``, both directions.

Runs in the side environment ``.venv-peft`` (``make interop-venvs test-interop``: the
project with its own dependencies, torch pinned, plus ``peft``). Without ``peft`` it is
skipped, and under ``CI=true`` it fails:

* an adapter written by :func:`continuonbrain.hope.lora.save_adapter` loads with
  ``peft.PeftModel.from_pretrained`` and gives the same outputs;
* the adapter the LoRA trainer puts into the model store (a real adaptation run) loads with
  PEFT and gives the outputs of the merged brain that ``HopeBrain.load`` serves;
* an adapter saved by ``peft`` (``get_peft_model`` + ``save_pretrained``) loads with our
  :func:`~continuonbrain.hope.lora.load_adapter` and gives PEFT's outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import require_interop, train_promoted_seed

peft = require_interop("peft", ".venv-peft")
import torch  # noqa: E402

from continuonbrain.hope import HopeBrain  # noqa: E402
from continuonbrain.hope.lora import find_lora_layers, inject_lora, load_adapter, save_adapter  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DONKEY = REPO / "continuonbrain" / "configs" / "pi5-donkey.json"
ACTION_KEYS = ["dq1_cmd", "dq2_cmd"]  # reach2d's action names


@pytest.fixture(scope="module")
def seed(tmp_path_factory) -> dict[str, Path]:
    """A small HOPE seed trained on reach2d and promoted to current, and episodes of a
    shifted task (gain 0.5) to adapt it to."""
    from continuonbrain.sim.collect import collect_to_dir

    tmp = tmp_path_factory.mktemp("peft")
    collect_to_dir("reach2d", 16, tmp / "base", seed=3)
    collect_to_dir("reach2d", 16, tmp / "gain05", seed=21, env_kwargs={"gain": 0.5})
    train_promoted_seed(tmp / "base", tmp, steps=30, reason="seed for the PEFT interop tests")
    return {"models": tmp / "models", "gain05": tmp / "gain05"}


def load_base(seed: dict[str, Path]) -> HopeBrain:
    return HopeBrain.load(seed["models"] / "current", apply_adapter=False, backend="torch")


def fast_outputs(fast_loop: torch.nn.Module, obs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return fast_loop(obs)


def test_a_saved_adapter_loads_with_peft_and_gives_the_same_outputs(seed, tmp_path: Path) -> None:
    torch.manual_seed(0)
    ours = load_base(seed)
    inject_lora(ours, ["fast_loop.*"], rank=4, alpha=8.0)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)  # a trained-looking adapter, not the zero init
    save_adapter(tmp_path / "adapter", ours)
    obs = torch.randn(3, 5, ours.config.obs_dim)
    expected = fast_outputs(ours.fast_loop, obs)

    model = peft.PeftModel.from_pretrained(load_base(seed), str(tmp_path / "adapter"))
    model.eval()
    got = fast_outputs(model.base_model.model.fast_loop, obs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, fast_outputs(load_base(seed).fast_loop, obs))  # the adapter does something


def test_the_trainers_adapter_in_the_store_loads_with_peft(seed, tmp_path: Path) -> None:
    import shutil

    from continuonbrain.trainer import (
        LocalTrainerJobConfig,
        SafetyGateConfig,
        build_torch_hooks,
        make_episode_loader,
        maybe_run_local_training,
    )
    from continuonbrain.trainer.hooks_torch import hope_bc_loss, load_hope_base, make_lora_injector

    root = tmp_path / "models"
    shutil.copytree(seed["models"], root, symlinks=True)
    over = {
        "rlds_dir": str(seed["gain05"]),
        "model_root": str(root),
        "log_dir": str(tmp_path / "logs"),
        "action_keys": ACTION_KEYS,
        "per_key_bounds": {k: [-1.0, 1.0] for k in ACTION_KEYS},
        "sysfs_root": str(tmp_path / "no-sysfs"),
        "max_steps": 40,
    }
    cfg = LocalTrainerJobConfig.from_json(DONKEY).with_overrides(over)
    hooks = build_torch_hooks(
        base_model_loader=load_hope_base,
        lora_injector=make_lora_injector(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout),
        loss_fn=hope_bc_loss,
    )
    result = maybe_run_local_training(cfg, hooks, SafetyGateConfig(), gating=None, episode_loader=make_episode_loader())
    assert result.status in ("promoted", "rejected"), result.reason
    # Promoted: the adapter is current; rejected: it was set aside with its files, just as written.
    slot = root / "current" if result.status == "promoted" else root / "rejected" / result.candidate_version
    assert json.loads((slot / "manifest.json").read_text())["kind"] == "hope-lora"
    assert json.loads((slot / "adapter_config.json").read_text())["r"] == cfg.lora_rank

    served = HopeBrain.load(slot, backend="torch")  # the adapter merged, as BrainService serves it
    model = peft.PeftModel.from_pretrained(HopeBrain.load(slot, apply_adapter=False, backend="torch"), str(slot))
    model.eval()
    obs = torch.randn(2, 6, served.config.obs_dim)
    expected = fast_outputs(served.fast_loop, obs)
    got = fast_outputs(model.base_model.model.fast_loop, obs)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    plain = fast_outputs(HopeBrain.load(slot, apply_adapter=False, backend="torch").fast_loop, obs)
    assert not torch.allclose(got, plain)  # trained: the adapter changes the reflex


def test_an_adapter_saved_by_peft_loads_with_ours(seed, tmp_path: Path) -> None:
    torch.manual_seed(1)
    probe = load_base(seed)
    inject_lora(probe, ["fast_loop.*"], rank=2, alpha=2.0)
    targets = sorted(find_lora_layers(probe))  # the Linear layers of the Fast loop, by path
    assert targets

    model = peft.get_peft_model(load_base(seed), peft.LoraConfig(r=3, lora_alpha=6, target_modules=targets))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    model.eval()
    model.save_pretrained(str(tmp_path / "theirs"))
    obs = torch.randn(3, 4, probe.config.obs_dim)
    expected = fast_outputs(model.base_model.model.fast_loop, obs)

    ours = load_base(seed)
    loaded = load_adapter(tmp_path / "theirs", ours, merge=True)
    assert sorted(loaded) == targets
    torch.testing.assert_close(fast_outputs(ours.fast_loop, obs), expected, rtol=1e-5, atol=1e-6)
