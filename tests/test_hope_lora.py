"""LoRA: zero-init identity, merge equivalence, PEFT-format files, brain integration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from continuonbrain.hope import (
    FastLoop,
    HopeBrain,
    HopeConfig,
    LoRALinear,
    adapter_config,
    inject_lora,
    load_adapter,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    save_adapter,
)
from continuonbrain.hope.lora import match_target


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


CFG = HopeConfig(fast={"d_model": 32, "d_state": 32})
ALL_LINEAR = ["in_proj", "glu", "B", "C", "head"]


def randomize_lora(module: nn.Module) -> None:
    with torch.no_grad():
        for p in lora_parameters(module):
            p.normal_(0, 0.3)


def test_fresh_adapter_leaves_the_function_unchanged() -> None:
    fast = FastLoop(CFG).eval()
    x = torch.randn(2, 6, 10)
    with torch.no_grad():
        before = fast(x)
    names = inject_lora(fast, ALL_LINEAR, rank=4, alpha=8)
    assert "in_proj" in names and "ssm.blocks.0.ssm.B" in names and "ssm.blocks.1.glu" in names
    assert all(isinstance(fast.get_submodule(n), LoRALinear) for n in names)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), before)
    trainable = {n for n, p in fast.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


def test_merged_output_equals_unmerged_output() -> None:
    fast = FastLoop(CFG).eval()
    inject_lora(fast, ALL_LINEAR, rank=4, alpha=8)
    randomize_lora(fast)
    x = torch.randn(2, 6, 10)
    with torch.no_grad():
        unmerged = fast(x)
        fnp_unmerged = fast.export_numpy()
    merged_names = merge_lora(fast)
    assert len(merged_names) == 1 + 2 * 3 + 1
    assert not any(isinstance(m, LoRALinear) for m in fast.modules())
    with torch.no_grad():
        merged = fast(x)
    assert not torch.allclose(merged, FastLoop(CFG).eval()(x))  # the adapter did something
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    # the numpy export folds an unmerged adapter exactly like a merged one
    s1, s2 = fnp_unmerged.init_state(), fast.export_numpy()
    s2_state = s2.init_state()
    for t in range(6):
        a1, s1 = fnp_unmerged.step(x[0, t].numpy(), s1)
        a2, s2_state = s2.step(x[0, t].numpy(), s2_state)
        np.testing.assert_allclose(a1, a2, atol=1e-5)


def test_adapter_files_use_peft_names_and_round_trip(tmp_path: Path) -> None:
    fast = FastLoop(CFG).eval()
    base_state = {k: v.clone() for k, v in fast.state_dict().items()}
    names = inject_lora(fast, "ssm\\.blocks\\.\\d+\\.glu", rank=2, alpha=4, dropout=0.1)
    assert names == ["ssm.blocks.0.glu", "ssm.blocks.1.glu"]
    randomize_lora(fast)
    sd = lora_state_dict(fast)
    assert set(sd) == {f"base_model.model.ssm.blocks.{i}.glu.lora_{ab}.weight" for i in (0, 1) for ab in ("A", "B")}
    assert sd["base_model.model.ssm.blocks.0.glu.lora_A.weight"].shape == (2, 32)
    assert sd["base_model.model.ssm.blocks.0.glu.lora_B.weight"].shape == (64, 2)

    files = save_adapter(tmp_path, fast, base_model_name_or_path="hope-v1")
    assert {p.name for p in files} == {"adapter_model.safetensors", "adapter_config.json"}
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 2 and cfg["lora_alpha"] == 4
    assert cfg["lora_dropout"] == pytest.approx(0.1) and cfg["bias"] == "none" and cfg["task_type"] is None
    assert cfg["target_modules"] == names and cfg["base_model_name_or_path"] == "hope-v1"
    assert set(load_file(str(tmp_path / "adapter_model.safetensors"))) == set(sd)

    x = torch.randn(3, 5, 10)
    with torch.no_grad():
        want = fast(x)
    fresh = FastLoop(CFG).eval()
    fresh.load_state_dict(base_state)
    assert load_adapter(tmp_path, fresh, merge=True) == names
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), want, atol=1e-5, rtol=1e-5)
    unmerged = FastLoop(CFG).eval()
    unmerged.load_state_dict(base_state)
    load_adapter(tmp_path, unmerged, merge=False)
    assert isinstance(unmerged.get_submodule("ssm.blocks.1.glu"), LoRALinear)


def test_brain_load_merges_an_adapter_found_beside_the_weights(tmp_path: Path) -> None:
    brain = HopeBrain.build(CFG, ["fast_loop"])
    obs = np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32)
    brain.save(tmp_path)
    inject_lora(brain, ["fast_loop.*.glu", "fast_loop.head"], rank=2)
    randomize_lora(brain)
    brain.reset()
    want = np.stack([brain.act(o) for o in obs])
    save_adapter(tmp_path, brain)
    assert "base_model.model.fast_loop.head.lora_A.weight" in load_file(str(tmp_path / "adapter_model.safetensors"))
    loaded = HopeBrain.load(tmp_path)
    assert not any(isinstance(m, LoRALinear) for m in loaded.modules())
    loaded.reset()
    np.testing.assert_allclose(np.stack([loaded.act(o) for o in obs]), want, atol=1e-5)
    plain = HopeBrain.load(tmp_path, apply_adapter=False)
    plain.reset()
    assert not np.allclose(np.stack([plain.act(o) for o in obs]), want)


def test_target_matching_rules() -> None:
    assert match_target("fast_loop.ssm.blocks.0.glu", ["glu"])
    assert not match_target("fast_loop.ssm.blocks.0.glu", ["lu"])
    assert match_target("fast_loop.in_proj", ["fast_loop.*"])
    assert match_target("fast_loop.in_proj", "fast_loop\\..*")
    assert not match_target("mid_loop.in_proj", "fast_loop\\..*")
    with pytest.raises(ValueError, match=r"no nn\.Linear matches"):
        inject_lora(FastLoop(CFG), ["nonexistent"])


def test_adapter_config_has_the_peft_fields() -> None:
    cfg = adapter_config(["a.b", "c"], r=4, lora_alpha=8, lora_dropout=0.05)
    for key in (
        "peft_type",
        "r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "bias",
        "task_type",
        "fan_in_fan_out",
    ):
        assert key in cfg
    assert cfg["target_modules"] == ["a.b", "c"] and cfg["inference_mode"] is True
    assert adapter_config("x.*", task_type="CAUSAL_LM")["task_type"] == "CAUSAL_LM"
    json.dumps(cfg)
