"""Promotion, rejection and rollback in the model store; a real SIGKILL at every step of a
promotion leaves a loadable current, and the next writer completes or undoes it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from continuonbrain.models.store import CRASH_ENV, PROMOTION_STEPS, PromotionStore, StoreError


def make_candidate(store: PromotionStore, tmp: Path, payload: bytes) -> str:
    src = tmp / f"src-{payload.decode()}"
    src.mkdir()
    (src / "fast_loop.safetensors").write_bytes(payload)
    (src / "config.json").write_text("{}")
    return store.write_slot("candidate", sorted(src.iterdir()), components=["fast_loop"], kind="hope-seed")["version"]


def weights(store: PromotionStore) -> bytes:
    store.verify(store.slot("current"))  # complete and matching its manifest
    return (store.slot("current") / "fast_loop.safetensors").read_bytes()


def test_promote_reject_rollback(tmp_path: Path) -> None:
    store = PromotionStore(tmp_path / "models", max_history=2)
    v1 = make_candidate(store, tmp_path, b"v1")
    store.promote({"reason": "first seed", "passed": True})
    assert store.current_version() == v1 and weights(store) == b"v1"
    assert not store.slot("candidate").exists()

    v2 = make_candidate(store, tmp_path, b"v2")
    store.promote({"reason": "better", "passed": True})
    assert store.current_version() == v2 and [m["version"] for m in store.history()] == [v1]
    assert store.manifest("current")["gate"] == {"reason": "better", "passed": True}

    v3 = make_candidate(store, tmp_path, b"v3")
    before = (store.slot("current") / "fast_loop.safetensors").read_bytes()
    kept = store.reject({"reason": "action distance 0.9 over 0.25", "passed": False})
    assert store.current_version() == v2 and weights(store) == before  # byte-identical
    assert kept == tmp_path / "models" / "rejected" / v3 and (kept / "gate.json").is_file()

    store.rollback()
    assert store.current_version() == v1 and [m["version"] for m in store.history()] == [v2]
    store.rollback(v2)
    assert store.current_version() == v2
    with pytest.raises(StoreError, match="not in history"):
        store.rollback("nope")
    decisions = [(a["decision"], a["version"]) for a in store.audit()]
    assert decisions == [("promoted", v1), ("promoted", v2), ("rejected", v3), ("rolled_back", v1), ("rolled_back", v2)]
    assert store.audit()[1]["files"]["fast_loop.safetensors"]  # sha256 of each file
    # Current is a link swapped in one rename; the contract path works like a directory.
    assert store.slot("current").is_dir() and (store.slot("current") / "manifest.json").is_file()


def test_history_is_trimmed(tmp_path: Path) -> None:
    store = PromotionStore(tmp_path / "m", max_history=2)
    for i in range(5):
        make_candidate(store, tmp_path, f"w{i}".encode())
        store.promote({"passed": True})
    assert len(store.history()) == 2


def test_tampered_candidate_is_refused(tmp_path: Path) -> None:
    store = PromotionStore(tmp_path / "m")
    make_candidate(store, tmp_path, b"good")
    store.promote({"passed": True})
    make_candidate(store, tmp_path, b"next")
    (store.slot("candidate") / "fast_loop.safetensors").write_bytes(b"corrupted")
    with pytest.raises(StoreError, match="sha256"):
        store.promote({"passed": True})
    assert weights(store) == b"good"


PROMOTE = """
import sys
from continuonbrain.models.store import PromotionStore
PromotionStore(sys.argv[1]).promote({"passed": True, "reason": "crash test"})
"""


@pytest.mark.parametrize("step", PROMOTION_STEPS)
def test_sigkill_at_every_promotion_step_leaves_a_loadable_current(tmp_path: Path, step: str) -> None:
    root = tmp_path / "models"
    store = PromotionStore(root)
    v1 = make_candidate(store, tmp_path, b"old")
    store.promote({"passed": True})
    v2 = make_candidate(store, tmp_path, b"new")
    env = {CRASH_ENV: step}
    proc = subprocess.run([sys.executable, "-c", PROMOTE, str(root)], env={**_env(), **env}, timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the promotion was not killed"

    # Right after the kill, before any recovery: current is complete and loadable.
    store = PromotionStore(root)
    assert weights(store) in (b"old", b"new")
    # The next writer (here: recover) finishes or undoes the interrupted promotion.
    store.recover()
    now = store.current_version()
    assert now in (v1, v2)
    if now == v2:
        assert weights(store) == b"new" and [m["version"] for m in store.history()] == [v1]
        assert not store.slot("candidate").exists()
        assert [a["decision"] for a in store.audit()].count("promoted") == 2  # exactly once for v2
    else:
        assert weights(store) == b"old" and store.manifest("candidate")["version"] == v2
        store.promote({"passed": True})  # and it can be promoted again
        assert store.current_version() == v2
    assert not (root / ".journal.json").exists()
    assert sorted(p.name for p in (root / ".slots").iterdir()) == [store.current_version()]


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != CRASH_ENV}


def test_audit_survives_a_torn_line(tmp_path: Path) -> None:
    store = PromotionStore(tmp_path / "m")
    make_candidate(store, tmp_path, b"a")
    store.promote({"passed": True})
    with (tmp_path / "m" / "audit.jsonl").open("a") as f:
        f.write('{"decision": "prom')
    assert [a["decision"] for a in store.audit()] == ["promoted"]
    make_candidate(store, tmp_path, b"b")
    store.promote({"passed": True})
    assert [a["decision"] for a in store.audit()] == ["promoted", "promoted"]
    assert json.loads(json.dumps(store.describe()))["current"]["version"] == store.current_version()
