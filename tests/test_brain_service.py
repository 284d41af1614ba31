"""BrainService: serving ``current`` with per-session state, verification, refusal and hot swap.

The swap tests check the property the robot relies on, not timings: every answer names the
version that computed it, and its action is exactly what that version computes (so two
versions were never mixed inside one answer), while promotions happen underneath.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_store, make_variant, wait_for

from continuonbrain.hope import HopeBrain
from continuonbrain.runtime.brain_service import BrainService, NoModelError
from continuonbrain.sim.envs import Reach2DEnv
from continuonbrain.trainer.store import PromotionStore

OBS = np.array([1, 0, 1, 0, 0, 0, 0.5, 0.2, 1.0, 0.0], np.float32)


def promote(store: PromotionStore) -> None:
    store.promote({"passed": True, "reason": "test"})


def expected_first_action(directory: Path, obs: np.ndarray = OBS) -> np.ndarray:
    brain = HopeBrain.load(directory)
    brain.reset()
    return brain.act(obs)


@pytest.fixture
def store_root(arm_seed, tmp_path: Path) -> Path:
    return copy_store(arm_seed["models"], tmp_path / "models")


def test_serves_current_with_its_version_and_per_session_state(store_root: Path) -> None:
    store = PromotionStore(store_root)
    version = store.current_version()
    with BrainService(store_root) as service:
        first = service.act(OBS.tolist())
        assert first.model_version == version and first.session_id == "default" and first.fresh_state
        assert first.action.shape == (2,) and first.action.dtype == np.float32
        np.testing.assert_allclose(first.action, expected_first_action(store_root / "current"), atol=1e-5)

        # Two sessions fed the same stream give the same actions whether interleaved or not,
        # and the recurrent state matters (a reset session differs from a continued one).
        env = Reach2DEnv()
        obs_seq = [env.reset(seed=3)[0]] + [env.step([0.3, -0.2])[0] for _ in range(15)]
        alone = [service.act(o, "solo").action for o in obs_seq]
        a, b = [], []
        for o in obs_seq:
            a.append(service.act(o, "a").action)
            b.append(service.act(o, "b").action)
            service.act(np.zeros(10, np.float32), "noise")  # another client in between
        np.testing.assert_allclose(np.stack(a), np.stack(alone), atol=1e-6)
        np.testing.assert_allclose(np.stack(b), np.stack(alone), atol=1e-6)
        again = service.act(obs_seq[-1], "a", reset=True)
        assert again.fresh_state
        assert not np.allclose(again.action, alone[-1], atol=1e-6) or not np.allclose(alone[0], alone[-1])
        assert service.status()["sessions"]["active"] >= 4


def test_bad_observations_are_refused_without_touching_the_session(store_root: Path) -> None:
    with BrainService(store_root) as service:
        service.act(OBS, "s")
        ref = BrainService(store_root)
        ref.start()
        ref.act(OBS, "s")
        for bad in ([1.0, 2.0], [float("nan")] * 10, "not numbers", {"state": [1.0]}):
            with pytest.raises(ValueError):
                service.act(bad, "s")
        for bad_sid in ("", "x" * 200, "tab\there", 7):
            with pytest.raises(ValueError):
                service.act(OBS, bad_sid)
        # The session continued exactly as if the bad calls never happened.
        np.testing.assert_allclose(service.act(OBS * 0.5, "s").action, ref.act(OBS * 0.5, "s").action, atol=1e-6)
        ref.stop()


def test_sessions_expire_and_are_capped(store_root: Path) -> None:
    # session_active_s=0: no session counts as in active use, so the cap evicts by least-recent use.
    with BrainService(store_root, session_ttl_s=0.2, max_sessions=2, session_active_s=0) as service:
        assert service.act(OBS, "a").fresh_state
        assert not service.act(OBS, "a").fresh_state
        time.sleep(0.3)
        assert service.act(OBS, "a").fresh_state, "an expired session starts over"
        service.act(OBS, "b")
        service.act(OBS, "c")  # over the cap: 'a' (least recently used) is dropped
        status = service.status()["sessions"]
        assert status["active"] == 2 and status["evicted"] >= 1 and set(status["ids"]) == {"b", "c"}
        assert service.act(OBS, "a").fresh_state
        assert service.end_session("a") and not service.end_session("a")


def test_no_model_then_a_promotion_appears(tmp_path: Path, arm_seed) -> None:
    root = tmp_path / "models"
    root.mkdir()
    with BrainService(root) as service:
        with pytest.raises(NoModelError, match="does not exist"):
            service.act(OBS)
        src = copy_store(arm_seed["models"], tmp_path / "src")
        store = PromotionStore(root)
        store.write_slot(
            "candidate",
            [p for p in (src / "current").resolve().iterdir() if p.name != "manifest.json"],
            components=["vqvae", "mid_loop", "fast_loop"],
            kind="hope-seed",
        )
        promote(store)
        wait_for(lambda: service.version == store.current_version(), what="the first promotion to be served")
        assert service.act(OBS).model_version == store.current_version()


def test_a_tampered_or_broken_version_is_refused_and_the_last_good_one_keeps_serving(
    store_root: Path, tmp_path: Path
) -> None:
    store = PromotionStore(store_root)
    good = store.current_version()
    source = tmp_path / "good"
    source.mkdir()
    for f in store.slot("current").resolve().iterdir():
        (source / f.name).write_bytes(f.read_bytes())
    # The watcher is slowed to a crawl so that the files can be damaged after the promotion
    # and before anything loads them; reload() is the explicit check.
    with BrainService(store_root, watch_interval_s=3600) as service:
        assert service.version == good
        # 1. A file that does not match its manifest's sha256 (bit rot, a half-copied file).
        bad = make_variant(store, tmp_path, 0.5)
        promote(store)
        tampered = store.slot("current").resolve() / "fast_loop.safetensors"
        data = bytearray(tampered.read_bytes())
        data[-1] ^= 0xFF
        tampered.write_bytes(bytes(data))
        assert service.reload() == good
        refused = service.status()["refused"]
        assert refused[-1]["version"] == bad and "sha256" in refused[-1]["reason"]
        assert refused[-1]["kept_serving"] == good
        assert service.act(OBS).model_version == good

        # 2. Weights that match their manifest but hold a NaN: the smoke act refuses them.
        poisoned = make_variant(store, tmp_path, 1.0, nan=True)
        promote(store)
        assert service.reload() == good
        assert service.status()["refused"][-1]["version"] == poisoned
        assert "not finite" in service.status()["refused"][-1]["reason"]

        # 3. A good version after the bad ones is served again.
        fine = make_variant(store, tmp_path, 0.9, source=source)
        promote(store)
        assert service.reload() == fine and service.act(OBS).model_version == fine


def test_a_swap_resets_each_sessions_state(store_root: Path, tmp_path: Path) -> None:
    store = PromotionStore(store_root)
    with BrainService(store_root) as service:
        service.act(OBS, "s")
        assert not service.act(OBS, "s").fresh_state
        new = make_variant(store, tmp_path, 0.7)
        promote(store)
        assert service.reload() == new
        after = service.act(OBS, "s")
        assert after.fresh_state and after.model_version == new
        np.testing.assert_allclose(after.action, expected_first_action(store.slot("current").resolve()), atol=1e-5)


def test_candidate_slot_is_served_through_the_same_path(store_root: Path, tmp_path: Path) -> None:
    store = PromotionStore(store_root)
    version = make_variant(store, tmp_path, 0.6)
    with BrainService(store_root, slot="candidate") as service:
        result = service.act(OBS)
        assert result.model_version == version
        np.testing.assert_allclose(result.action, expected_first_action(store.slot("candidate")), atol=1e-5)


def test_promotions_by_another_process_during_concurrent_requests_never_mix_versions(
    store_root: Path, tmp_path: Path
) -> None:
    """8 threads act with reset=True (so each answer is a pure function of the version) while
    another process promotes 6 variants. Every answer must equal its named version's action."""
    store = PromotionStore(store_root)
    versions = {store.current_version(): expected_first_action(store.slot("current").resolve())}
    staged = []
    for i in range(6):
        v = make_variant(store, tmp_path, 0.95 - 0.1 * i)
        cand = store.slot("candidate")
        versions[v] = expected_first_action(cand)
        keep = tmp_path / f"staged-{i}"
        keep.mkdir()
        for f in cand.iterdir():
            (keep / f.name).write_bytes(f.read_bytes())
        staged.append(keep)
    store.slot("candidate").rename(tmp_path / "unused-candidate")

    answers: list[tuple[str, np.ndarray]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    with BrainService(store_root, watch_interval_s=0.005) as service:

        def client(n: int) -> None:
            try:
                while not stop.is_set():
                    r = service.act(OBS, f"client-{n}", reset=True)
                    answers.append((r.model_version, r.action.copy()))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        script = (
            "import shutil, sys, time\n"
            "from pathlib import Path\n"
            "from continuonbrain.trainer.store import PromotionStore\n"
            "store = PromotionStore(sys.argv[1])\n"
            "for d in sys.argv[2:]:\n"
            "    shutil.copytree(d, store.slot('candidate'))\n"
            "    store.promote({'passed': True, 'reason': 'swap test'})\n"
            "    time.sleep(0.05)\n"
        )
        subprocess.run([sys.executable, "-c", script, str(store_root), *map(str, staged)], check=True, timeout=120)
        final = store.current_version()
        wait_for(lambda: service.version == final, what="the last promotion to be served")
        wait_for(lambda: any(v == final for v, _ in answers[-50:]), what="answers from the last version")
        stop.set()
        for t in threads:
            t.join()

    assert not errors, errors
    seen = {v for v, _ in answers}
    assert final in seen and len(seen) >= 2
    for version, action in answers:
        np.testing.assert_allclose(action, versions[version], atol=1e-5, err_msg=f"answer named {version}")
