"""No silent forgetting: the adapter trainer's replay set (episodes of the seed's task), rehearsal
(a share of replay windows in the adaptation's batches) and the gate's forgetting check on the
replay episodes it holds out.

The end-to-end pair is the issue's case: an adapter trained hard on a shifted task with no
rehearsal is rejected and the reason names forgetting with both values; the same adaptation with
rehearsal passes. The rest pins down the parts: the share of windows the mixer gives, which
episodes become replay episodes (never the run's own, never imagined ones, the seed's held-out
ones held out), where the replay set comes from, and what the run records."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_episode

from continuonbrain.models.store import PromotionStore
from continuonbrain.rlds import write_episodes
from continuonbrain.trainer import LocalTrainerJobConfig, build_stub_hooks, maybe_run_local_training
from continuonbrain.trainer.episode_mix import rehearsal_mix
from continuonbrain.trainer.lora_config import ReplaySection
from continuonbrain.trainer.replay import ReplayError, load_replay, reselect_replay

ACTION_KEYS = ["dq1_cmd", "dq2_cmd"]
BEHIND = {"target_shift": float(np.pi)}  # the demo's shifted task: targets behind the robot


def episodes(prefix: str, n: int, length: int = 10, **meta):
    return [make_episode(n=length, episode_id=f"{prefix}{i:02d}", **meta) for i in range(n)]


def write_manifest(slot: Path, **fields) -> Path:
    slot.mkdir(parents=True, exist_ok=True)
    (slot / "manifest.json").write_text(json.dumps({"version": "v1", **fields}))
    return slot


# --------------------------------------------------------------------------- the mixer


@pytest.mark.parametrize("share", [0.1, 0.25, 0.5])
def test_rehearsal_mix_gives_the_share_of_windows_even_with_longer_replay_episodes(share: float) -> None:
    """Replay episodes three times as long as the new ones must not bring three times the share:
    the share counts windows (steps), and an epoch holds every new episode about once. The
    mixer draws episodes at random (seeded), so the share holds in expectation: over 20
    epochs its spread is ~0.016, and the tolerance is 3 of that."""
    new, replay = episodes("new", 60, length=10), episodes("old", 20, length=30)
    source = rehearsal_mix(new, replay, share, seed=0)
    steps = {"new": 0, "old": 0}
    seen_new: set[str] = set()
    for epoch in range(20):
        for ep in source.iter_episodes(epoch):
            kind = ep.episode_id[:3]
            steps[kind] += len(ep)
            if kind == "new" and epoch == 0:
                seen_new.add(ep.episode_id)
    assert steps["old"] / (steps["old"] + steps["new"]) == pytest.approx(share, abs=0.05)
    assert len(seen_new) > 0.5 * len(new)  # one epoch is about one pass over the new episodes
    first = [ep.episode_id for ep in source.iter_episodes(3)]
    assert first == [ep.episode_id for ep in source.iter_episodes(3)]  # same epoch, same stream: resumable


def test_rehearsal_mix_without_a_share_or_replay_is_the_run_s_episodes() -> None:
    new = episodes("new", 3)
    assert [ep.episode_id for ep in rehearsal_mix(new, episodes("old", 2), 0.0)] == ["new00", "new01", "new02"]
    assert [ep.episode_id for ep in rehearsal_mix(new, [], 0.5)] == ["new00", "new01", "new02"]
    with pytest.raises(ValueError, match="replay share"):
        rehearsal_mix(new, episodes("old", 2), 1.0)


# --------------------------------------------------------------------------- the replay set


def test_replay_set_excludes_the_run_s_episodes_and_imagined_ones_and_holds_out_the_seed_s(tmp_path: Path) -> None:
    """One episode directory for everything (a real robot): the run's own episodes are never
    replay episodes, imagined ones never either, and the seed's held-out episodes are the
    replay set's held-out episodes."""
    data = tmp_path / "episodes"
    imagined = make_episode(episode_id="ep98", tags=["imagined"], provenance={"origin": "imagined:test"})
    write_episodes([*episodes("ep", 30), imagined], data)
    base = write_manifest(
        tmp_path / "current", rlds_dir=str(data), held_out={"rlds_dir": str(data), "episode_ids": ["ep10", "ep11"]}
    )
    own = {f"ep{i:02d}" for i in range(20, 30)}  # the run adapts on the newest ten
    section = ReplaySection(share=0.25, holdout_episodes=4, max_episodes=8)
    replay = load_replay(section, base, own)

    assert replay.rlds_dir == str(data) and replay.source == "base manifest"
    held, train = [ep.episode_id for ep in replay.held_out], [ep.episode_id for ep in replay.train]
    assert held[:2] == ["ep10", "ep11"] and len(held) == 4  # the seed's own, then the newest others
    assert set(held[2:]) == {"ep18", "ep19"}
    assert train == [f"ep{i:02d}" for i in (6, 7, 8, 9, 12, 13, 14, 15, 16, 17)][-8:]
    assert not (set(held) | set(train)) & own and "ep98" not in held + train
    assert replay.describe()["held_out"] == held and replay.describe()["train"] == 8


def test_replay_dir_comes_from_the_config_or_the_base_manifest_chain(tmp_path: Path) -> None:
    seed_data, other = tmp_path / "seed-data", tmp_path / "other"
    write_episodes(episodes("s", 6), seed_data)
    write_episodes(episodes("o", 6), other)
    section = ReplaySection(share=0.5, holdout_episodes=2)
    # An earlier adaptation recorded the seed's data under "replay": the chain keeps the seed's task.
    adapted = write_manifest(tmp_path / "adapted", rlds_dir=str(other), replay={"rlds_dir": str(seed_data)})
    replay = load_replay(section, adapted)
    assert replay.rlds_dir == str(seed_data) and {ep.episode_id[0] for ep in replay.train} == {"s"}
    explicit = load_replay(ReplaySection(rlds_dir=str(other), share=0.5, holdout_episodes=2), adapted)
    assert explicit.source == "config" and {ep.episode_id[0] for ep in explicit.train} == {"o"}


def test_a_missing_replay_dir_is_an_error_when_configured_and_a_note_when_defaulted(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    base = write_manifest(tmp_path / "current", rlds_dir=str(gone))
    with pytest.raises(ReplayError, match=str(gone)):
        load_replay(ReplaySection(rlds_dir=str(gone)), base)
    defaulted = load_replay(ReplaySection(), base)
    assert not defaulted.train and not defaulted.held_out and str(gone) in defaulted.note
    bare = load_replay(ReplaySection(), write_manifest(tmp_path / "bare"))
    assert "records no rlds_dir" in bare.note and bare.rehearsal_share == 0.0


def test_a_resumed_run_re_reads_its_exact_replay_set(tmp_path: Path) -> None:
    data = tmp_path / "episodes"
    write_episodes(episodes("ep", 12), data)
    first = load_replay(
        ReplaySection(share=0.25, holdout_episodes=3), write_manifest(tmp_path / "c", rlds_dir=str(data))
    )
    again = reselect_replay(first.job(), ReplaySection())
    assert [ep.episode_id for ep in again.train] == [ep.episode_id for ep in first.train]
    assert [ep.episode_id for ep in again.held_out] == [ep.episode_id for ep in first.held_out]
    assert again.share == 0.25
    shutil.rmtree(data / "ep03")
    with pytest.raises(KeyError, match="ep03"):
        reselect_replay(first.job(), ReplaySection())


def test_config_section_is_strict_and_documented() -> None:
    cfg = LocalTrainerJobConfig().with_overrides({"replay.share": 0.5, "replay.holdout_episodes": 2})
    assert cfg.replay.share == 0.5 and cfg.replay.holdout_episodes == 2
    with pytest.raises(ValueError, match=r"replay\.share"):
        LocalTrainerJobConfig().with_overrides({"replay.share": 1.0})
    for name in ReplaySection.model_fields:
        assert ReplaySection.model_fields[name].description or name in (ReplaySection.__doc__ or ""), name


# --------------------------------------------------------------------------- the run


def test_a_dry_run_records_its_replay_set_in_the_result_the_log_and_the_manifest(tmp_path: Path) -> None:
    seed_data, new = tmp_path / "seed-data", tmp_path / "new"
    write_episodes(episodes("s", 10), seed_data)
    write_episodes(episodes("n", 6), new)
    root = tmp_path / "models"
    store = PromotionStore(root)
    files = tmp_path / "seedfiles"
    files.mkdir()
    (files / "weights.bin").write_bytes(b"seed")
    store.write_slot(
        "candidate", [files / "weights.bin"], components=[], kind="hope-seed", extra={"rlds_dir": str(seed_data)}
    )
    store.promote({"passed": True, "reason": "test seed"})
    cfg = LocalTrainerJobConfig(
        rlds_dir=str(new),
        model_root=str(root),
        log_dir=str(tmp_path / "logs"),
        data={"min_episodes": 2},
        budgets={"max_steps": 4},
        safety={"eval_tail_episodes": 1},
        replay={"share": 0.5, "holdout_episodes": 2, "max_episodes": 5},
        thermal={"sysfs_root": str(tmp_path)},
    )
    result = maybe_run_local_training(cfg, build_stub_hooks())
    assert result.status == "dry_run", result.reason
    assert result.replay["rlds_dir"] == str(seed_data) and result.replay["share"] == 0.5
    assert result.replay["held_out"] == ["s08", "s09"] and result.replay["train"] == 5
    events = [json.loads(line) for line in Path(result.log_path).read_text().splitlines()]
    assert any(e["event"] == "replay" and e["held_out"] == ["s08", "s09"] for e in events)
    rejected = next((root / "rejected").iterdir())
    assert json.loads((rejected / "manifest.json").read_text())["replay"]["rlds_dir"] == str(seed_data)
    status = json.loads((tmp_path / "logs" / "status.json").read_text())
    assert status["replay"]["train"] == 5


# --------------------------------------------------------------------------- the gate, end to end


SIM_ARM = Path(__file__).resolve().parents[1] / "continuonbrain" / "configs" / "sim-arm-lora.json"
#: The seed's own held-out episodes (never trained on): the replay set's held-out ones.
SEED_HOLDOUT = 16


@pytest.fixture(scope="module")
def arm(tmp_path_factory) -> dict[str, Path]:
    """A small HOPE seed trained on reach2d (its newest 16 episodes held out, recorded in its
    manifest), and episodes of the shifted task (targets behind the robot)."""
    from conftest import seed_components

    from continuonbrain.models.promotion import promote_candidate
    from continuonbrain.sim.collect import collect_to_dir
    from continuonbrain.trainer.sequential import SequentialTrainer
    from continuonbrain.trainer.train_config import SequentialConfig

    tmp = tmp_path_factory.mktemp("rehearsal")
    collect_to_dir("reach2d", 64, tmp / "base", seed=3, dart_sigma=0.1)
    collect_to_dir("reach2d", 30, tmp / "behind", seed=21, dart_sigma=0.1, env_kwargs=BEHIND)
    cfg = SequentialConfig(
        model={"fast": {"use_context": False}},
        rlds_dir=str(tmp / "base"),
        model_root=str(tmp / "models"),
        run_dir=str(tmp / "run"),
        torch_threads=1,
        holdout_episodes=SEED_HOLDOUT,
        components=seed_components(40, fast_steps=800),
    )
    cfg.thermal.sysfs_root = str(tmp / "no-sysfs")
    SequentialTrainer(cfg).run()
    gate, _ = promote_candidate(tmp / "models")
    assert gate.passed, gate.reason
    return {"models": tmp / "models", "base": tmp / "base", "behind": tmp / "behind"}


def adapt(arm: dict[str, Path], tmp: Path, **overrides):
    """The demo's adaptation (the shipped sim-arm config) of a copy of the seed's store."""
    root = tmp / "models"
    shutil.copytree(arm["models"], root, symlinks=True)
    cfg = LocalTrainerJobConfig.load(
        SIM_ARM,
        {
            "rlds_dir": str(arm["behind"]),
            "model_root": str(root),
            "log_dir": str(tmp / "logs"),
            "thermal.sysfs_root": str(tmp / "no-sysfs"),
            "budgets.max_wall_time_s": None,
            "replay.holdout_episodes": SEED_HOLDOUT,
            # the offline ceiling is not what this test is about: the shifted task is far from the seed
            "safety.avg_action_delta_threshold": 1.0,
            **overrides,
        },
    )
    return maybe_run_local_training(cfg), root


def test_an_adapter_that_forgets_is_rejected_and_one_that_rehearses_passes(arm, tmp_path: Path) -> None:
    # Trained hard on the new task alone (no replay, twice the old demo's learning rate): it forgets.
    forgot, root = adapt(arm, tmp_path / "no-rehearsal", **{"replay.share": 0.0, "training.learning_rate": 0.02})
    assert forgot.status == "rejected", forgot.reason
    assert forgot.reason.startswith("forgetting"), forgot.reason
    gate = json.loads(next((root / "rejected").iterdir()).joinpath("gate.json").read_text())
    check = gate["checks"]["forgetting"]
    assert check["passed"] is False
    # judged on the seed's own held-out episodes, which neither the seed nor the adapter trained on
    seed_held_out = PromotionStore(arm["models"]).manifest("current")["held_out"]["episode_ids"]
    assert check["episode_ids"] == forgot.replay["held_out"] == seed_held_out
    cand, cur = check["candidate"], check["current"]
    assert cand > cur + check["margin"]  # the adapter is further from what the robot did on the old task
    assert f"{cand:.4f}" in forgot.reason and f"{cur:.4f}" in forgot.reason  # both values, in words too

    # The shipped config: half the windows rehearse the seed's episodes.
    kept, root = adapt(arm, tmp_path / "rehearsal")
    assert kept.replay["share"] == 0.5 and kept.replay["train"] > 0
    assert kept.status == "promoted", kept.reason
    record = PromotionStore(root).manifest("current")["gate"]
    assert record["checks"]["forgetting"]["passed"] is True
    assert record["checks"]["held_out"]["episode_ids"]  # judged on the new task's held-out episodes too
    assert record["checks"]["forgetting"]["candidate"] < cand  # rehearsal kept the old task
