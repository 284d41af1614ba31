"""Checkpoints, guards, logs and the store's slot writing: the trainer's infrastructure."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from continuonbrain.trainer.budgets import MemoryGuard, StepBudget, ThermalGuard, read_temperature_c
from continuonbrain.trainer.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from continuonbrain.trainer.metrics import MetricsLogger, component_summary, read_metrics
from continuonbrain.trainer.store import ModelStore, StoreError


def test_checkpoint_round_trip_resumes_training_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)

    def make():
        m = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 20)
        return m, opt, sched

    def train(m, opt, sched, n):
        for _ in range(n):
            x = torch.randn(16, 3)
            loss = (m(x) - x[:, :2]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()

    m, opt, sched = make()
    train(m, opt, sched, 5)
    state = {
        "model": m.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": rng_state(),
        "data": {"epoch": 1, "consumed": {0: 7, 1: 3}},
        "shape": (2, 3),
        "step": 5,
    }
    path = save_checkpoint(state, tmp_path / "ck.safetensors")
    train(m, opt, sched, 5)  # the uninterrupted run
    expected = [p.detach().clone() for p in m.parameters()]

    torch.manual_seed(123)  # a fresh process would start elsewhere
    loaded = load_checkpoint(path)
    assert loaded["data"] == {"epoch": 1, "consumed": {0: 7, 1: 3}} and loaded["shape"] == (2, 3)
    m2, opt2, sched2 = make()
    m2.load_state_dict(loaded["model"])
    opt2.load_state_dict(loaded["optimizer"])
    sched2.load_state_dict(loaded["scheduler"])
    set_rng_state(loaded["rng"])
    train(m2, opt2, sched2, 5)
    for a, b in zip(expected, m2.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_checkpoint_write_is_atomic(tmp_path: Path) -> None:
    path = save_checkpoint({"w": torch.ones(2)}, tmp_path / "ck.safetensors")
    with pytest.raises(TypeError):
        save_checkpoint({"w": torch.zeros(2), "bad": object()}, path)
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(2))  # the old one survives
    assert [p.name for p in tmp_path.iterdir()] == ["ck.safetensors"]  # no temp left behind
    # And the file is a plain safetensors file: no pickle anywhere.
    assert path.read_bytes()[8:9] == b"{"


def test_rng_state_restores_python_numpy_torch() -> None:
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(json.loads(json.dumps(state, default=lambda t: t.tolist())) | {"torch": state["torch"]})
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_thermal_guard_pauses_until_cool(tmp_path: Path) -> None:
    zone = tmp_path / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("85500\n")
    assert read_temperature_c(tmp_path) == 85.5
    temps = iter(["78000", "71000", "69000"])
    slept: list[float] = []

    def fake_sleep(s: float) -> None:  # the SoC cools a little each poll
        slept.append(s)
        (zone / "temp").write_text(next(temps))

    events: list[dict] = []
    guard = ThermalGuard(max_temp_c=80, resume_temp_c=70, sysfs_root=tmp_path, poll_s=0.5, sleep=fake_sleep)
    assert guard.wait_if_hot(events.append) is None
    assert slept == [0.5, 0.5, 0.5]
    assert [e["event"] for e in events] == ["thermal_pause", "thermal_resume"]
    assert events[0]["temp_c"] == 85.5 and events[1]["temp_c"] == 69.0
    assert guard.wait_if_hot() is None and len(guard.pauses) == 1  # cool now: no pause


def test_thermal_guard_gives_up_after_max_pause(tmp_path: Path) -> None:
    zone = tmp_path / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("90000")
    guard = ThermalGuard(sysfs_root=tmp_path, poll_s=0.0, max_pause_s=0.0, sleep=lambda s: None)
    reason = guard.wait_if_hot()
    assert reason is not None and reason.startswith("thermal:")


def test_no_thermal_zone_means_no_pause(tmp_path: Path) -> None:
    assert ThermalGuard(sysfs_root=tmp_path).wait_if_hot() is None


def test_memory_guard_trips_on_rss_and_available() -> None:
    assert MemoryGuard(budget_mb=1e9, check_every=1).check() is None
    reason = MemoryGuard(budget_mb=1.0, check_every=1).check()
    assert reason is not None and "over the budget" in reason
    reason = MemoryGuard(min_available_mb=1e12, check_every=1).check()
    assert reason is not None and "available" in reason
    guard = MemoryGuard(budget_mb=1.0, check_every=5)
    assert [guard.check() is None for _ in range(5)] == [True] * 4 + [False]


def test_step_budget() -> None:
    assert StepBudget(max_steps=3).exhausted(2) is None
    assert StepBudget(max_steps=3).exhausted(3) == "max_steps"
    assert StepBudget(max_steps=10, max_wall_time_s=0.0).exhausted(0) == "max_wall_time_s"


def test_metrics_summary_uses_first_and_last_ten_and_last_record_per_step(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        for step in range(30):
            log.log({"component": "fast", "step": step, "loss": 100.0 - step})
        log.log({"component": "fast", "step": 29, "loss": 50.0})  # re-logged after a resume
        log.log({"event": "thermal_pause", "temp_c": 81.0})
    (tmp_path / "metrics.jsonl").open("a").write('{"component": "fast", "step": 30, "lo')  # torn by a kill
    records = read_metrics(tmp_path)
    s = component_summary(records, "fast")
    assert s["logged_steps"] == 30
    assert s["initial_loss"] == pytest.approx(np.mean([100.0 - i for i in range(10)]))
    assert s["final_loss"] == pytest.approx((sum(100.0 - i for i in range(20, 29)) + 50.0) / 10)
    assert s["halved"] is False


def test_store_writes_slots_atomically_and_verifies(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "fast_loop.safetensors").write_bytes(b"weights-1")
    (src / "config.json").write_text("{}")
    store = ModelStore(tmp_path / "models")
    m1 = store.write_slot("candidate", src.iterdir(), components=["fast_loop"], kind="hope-seed")
    assert store.verify(store.slot("candidate"))["version"] == m1["version"]
    (src / "fast_loop.safetensors").write_bytes(b"weights-2")
    m2 = store.write_slot("candidate", src.iterdir(), components=["fast_loop"], kind="hope-seed", parent="x")
    assert m2["version"] > m1["version"] and store.manifest("candidate")["parent"] == "x"
    assert (store.slot("candidate") / "fast_loop.safetensors").read_bytes() == b"weights-2"
    assert sorted(p.name for p in store.root.iterdir()) == ["candidate"]  # no staging or old dirs left
    (store.slot("candidate") / "fast_loop.safetensors").write_bytes(b"tampered")
    with pytest.raises(StoreError, match="sha256"):
        store.verify(store.slot("candidate"))
