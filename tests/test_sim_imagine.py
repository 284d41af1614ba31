"""Imagined rollouts: CEM in a tiny trained world model, RLDS output, the trainer's imagined cap, the CLI."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import seed_components, seed_config

from continuonbrain.cli import main
from continuonbrain.rlds import read_episodes, write_episodes
from continuonbrain.rlds.validate import validate_path
from continuonbrain.sim.imagine import (
    ImagineError,
    SearchConfig,
    cem_search,
    goal_for,
    imagine_to_dir,
    load_world_model,
    open_slot,
    select_starts,
)
from continuonbrain.trainer.hope_data import episode_source
from continuonbrain.trainer.sequential import SequentialTrainer
from continuonbrain.trainer.train_config import SequentialConfig

#: A small search: enough to exercise every part, quick on one core.
SMALL = {"horizon": 3, "history": 2, "population": 24, "elites": 6, "iterations": 3, "batch_starts": 4}


def tiny_config(tmp: Path, episodes: Path, steps: int = 40, **overrides) -> SequentialConfig:
    """A small seed (the shipped model's shapes, a narrower VQ-VAE and Mid/Fast loops), written to
    ``tmp/config.json``; ``overrides`` replace top-level keys (``model`` too)."""
    model = overrides.pop(
        "model",
        {
            "vqvae": {"codebook_size": 64, "hidden_dim": 64},
            "mid": {"d_model": 32, "d_state": 32},
            "fast": {"d_model": 16, "d_state": 16},
        },
    )
    components = seed_components(steps, fast_steps=min(steps, 10), mid_batch=16, shuffle_buffer=512)
    return SequentialConfig.from_json(seed_config(tmp, episodes, model=model, components=components, **overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(model_root, rlds_dir): a tiny seed trained for a few steps on 8 noisy expert episodes."""
    from continuonbrain.sim.collect import collect_to_dir

    tmp = tmp_path_factory.mktemp("imagine")
    episodes = tmp / "episodes"
    collect_to_dir("reach2d", 8, episodes, seed=0, dart_sigma=0.3)
    SequentialTrainer(tiny_config(tmp, episodes)).run()
    return tmp / "models", episodes


@pytest.fixture(scope="module")
def imagined(trained, tmp_path_factory) -> tuple[Path, dict]:
    """Four imagined episodes of the tiny model, and the summary of the run."""
    model_root, _ = trained
    out = tmp_path_factory.mktemp("imagined") / "out"
    summary = imagine_to_dir(model_root, out, 4, search=SearchConfig(**SMALL, max_final_cost=10.0, seed=3))
    return out, summary


def test_imagine_writes_valid_rlds_episodes_tagged_imagined(trained, imagined) -> None:
    model_root, rlds_dir = trained
    out, summary = imagined
    version = json.loads((model_root / "candidate" / "manifest.json").read_text())["version"]
    report = validate_path(out)
    assert report.episodes_ok == 4 and report.episodes_bad == 0
    assert summary["episodes"] == 4 and summary["requested"] == 4 and summary["model_version"] == version
    assert summary["rlds_dir"] == str(rlds_dir) and summary["slot"] == "candidate"
    real = {ep.episode_id: ep for ep in read_episodes(rlds_dir)}
    eps = list(read_episodes(out))
    assert len(eps) == 4
    for ep in eps:
        meta = ep.metadata
        assert ep.is_imagined and "imagined" in meta["tags"]
        assert meta["provenance"]["origin"] == f"imagined:cem:{version}"
        assert meta["environment_id"] == "reach2d" and meta["control_hz"] == 50
        info = meta["imagination"]
        assert info["search"]["population"] == 24 and info["search"]["horizon"] == 3 and info["search"]["seed"] == 3
        assert info["model_version"] == version and info["method"] == "cem"
        assert len(info["predicted_tick_costs"]) == 3
        assert info["predicted_final_cost"] == pytest.approx(info["predicted_tick_costs"][-1], abs=1e-5)
        # 3 Mid steps of 10 control steps; is_first/is_last exactly once, never terminal.
        assert len(ep) == 30
        assert ep.is_first.tolist() == [True] + [False] * 29 and ep.is_last.tolist() == [False] * 29 + [True]
        assert not ep.is_terminal.any()
        sources = [s.step_metadata["obs_source"] for s in ep.steps]
        assert sources[0] == "real" and sources[10] == sources[20] == "decoded" and sources[5] == "interpolated"
        # Step 0 is the real state it started from; the (static) target stays pinned to it.
        src = real[meta["provenance"]["source_episode"]]
        start = src.observation_vector()[meta["provenance"]["source_step"]]
        obs = ep.observation_vector()
        np.testing.assert_allclose(obs[0], start, atol=1e-6)
        np.testing.assert_allclose(obs[:, 6:8], np.broadcast_to(start[6:8], (30, 2)), atol=1e-6)
        # Actions are held for a Mid step and within the bounds.
        act = ep.action_vector()
        assert np.all(np.abs(act) <= 1.0) and np.all(act[:10] == act[0]) and np.all(act[10:20] == act[10])


def test_search_lowers_the_predicted_cost_against_random_sequences(trained) -> None:
    model_root, rlds_dir = trained
    world, _ = load_world_model(model_root, "reach2d")
    cfg = SearchConfig(horizon=4, population=32, elites=6, iterations=4)
    starts = select_starts(rlds_dir, 8, history=cfg.history, mid_every=world.mid_every, seed=0)
    best = cem_search(world, starts, cfg, torch.Generator().manual_seed(0))
    one = cem_search(world, starts, cfg.model_copy(update={"iterations": 1}), torch.Generator().manual_seed(0))
    codes0, state, start_obs = world.prepare(starts)
    uniform = torch.rand(8, 128, 4, 2, generator=torch.Generator().manual_seed(1)) * 2 - 1
    random_cost, _, _ = world.evaluate(codes0, state, start_obs, uniform)
    # Better than random action sequences in the same model, start by start, and never worse with iterations.
    assert best.cost.mean() < random_cost.mean(1).mean()
    assert torch.all(best.cost <= random_cost.median(1).values + 1e-6)
    assert torch.all(best.cost <= one.cost + 1e-6) and best.cost.sum() < one.cost.sum()
    # The reported cost is what the world model predicts for the returned actions.
    again, ticks, _ = world.evaluate(codes0, state, start_obs, world.mid.actions.normalize(best.actions)[:, None])
    torch.testing.assert_close(again[:, 0], best.cost, atol=1e-5, rtol=0)
    torch.testing.assert_close(ticks[:, 0, -1], best.final_cost, atol=1e-5, rtol=0)


def test_imagine_is_deterministic_given_a_seed(trained, imagined, tmp_path: Path) -> None:
    model_root, _ = trained
    first, _ = imagined

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    imagine_to_dir(model_root, tmp_path / "again", 4, search=SearchConfig(**SMALL, max_final_cost=10.0, seed=3))
    assert files(tmp_path / "again") == files(first)
    imagine_to_dir(model_root, tmp_path / "other", 4, search=SearchConfig(**SMALL, max_final_cost=10.0, seed=4))
    assert files(tmp_path / "other") != files(first)


def test_poor_plans_are_dropped_by_their_predicted_final_cost(trained, tmp_path: Path) -> None:
    model_root, _ = trained
    summary = imagine_to_dir(model_root, tmp_path / "out", 3, search=SearchConfig(**SMALL, max_final_cost=1e-6))
    assert summary["episodes"] == 0 and summary["dropped"] == summary["start_states"] == 6
    assert not list((tmp_path / "out").glob("*/metadata.json"))


def _stream(cfg: SequentialConfig, epoch: int) -> list[tuple[str, bool]]:
    return [(ep.episode_id, ep.is_imagined) for ep in episode_source(cfg).iter_episodes(epoch)]


def test_the_trainer_mixes_imagined_episodes_under_the_cap(trained, imagined, tmp_path: Path, caplog) -> None:
    _, rlds_dir = trained
    out, _ = imagined
    # An imagined dir with more episodes than one epoch admits, and one stray real episode.
    more = tmp_path / "imagined"
    write_episodes(read_episodes(out), more)
    for i, ep in enumerate(read_episodes(out)):
        ep.metadata["episode_id"] = f"copy-{i}"
        write_episodes([ep], more)
    stray = next(iter(read_episodes(rlds_dir)))
    stray.metadata["episode_id"] = "stray-real"
    write_episodes([stray], more)
    cfg = tiny_config(tmp_path, rlds_dir, imagined_rlds_dirs=[str(more)], max_imagined_fraction=0.2)
    seen: set[str] = set()
    with caplog.at_level(logging.WARNING):
        for epoch in range(3):
            stream = _stream(cfg, epoch)
            n_imag = 0
            for n, (_, imag) in enumerate(stream, start=1):
                n_imag += imag
                assert n_imag <= 0.2 * n + 1e-9  # the cap holds at every point of the stream
            assert sum(not imag for _, imag in stream) == 8  # every real episode, once
            assert n_imag == 2  # the cap is filled: 2 of 10
            seen |= {eid for eid, imag in stream if imag}
    assert len(seen) > 2  # successive epochs draw different imagined episodes
    assert "stray-real" not in seen and "episode stray-real" in caplog.text and "not marked imagined" in caplog.text
    # Imagined episodes inside rlds_dir itself are capped by the same rule, in directory order
    # (here after the 8 real ones: 2 of the 4 fit under 25%).
    both = tmp_path / "both"
    write_episodes(read_episodes(rlds_dir), both)
    for i, ep in enumerate(read_episodes(out)):
        ep.metadata["episode_id"] = f"zz-imagined-{i}"
        write_episodes([ep], both)
    stream = _stream(tiny_config(tmp_path, both, max_imagined_fraction=0.25), 0)
    assert sum(imag for _, imag in stream) == 2 and sum(not imag for _, imag in stream) == 8
    # A short training run over the mixed stream, recorded in the candidate's manifest.
    cfg = tiny_config(
        tmp_path,
        rlds_dir,
        steps=3,
        imagined_rlds_dirs=[str(more)],
        max_imagined_fraction=0.2,
        order=["fast_loop"],
        model={"fast": {"use_context": False, "d_model": 16, "d_state": 16}},
    )
    summary = SequentialTrainer(cfg).run()
    assert summary["components"]["fast_loop"]["steps"] == 3
    manifest = json.loads((tmp_path / "models" / "candidate" / "manifest.json").read_text())
    assert manifest["imagined_rlds_dirs"] == [str(more)]


def test_imagined_dirs_need_a_cap(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="imagined_rlds_dirs needs max_imagined_fraction"):
        SequentialConfig(imagined_rlds_dirs=[str(tmp_path)], max_imagined_fraction=None)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"rlds_dir": "real", "imagined_rlds_dirs": ["imagined"]}))
    assert SequentialConfig.from_json(path).imagined_rlds_dirs == [str((tmp_path / "imagined").resolve())]


def test_cli_imagine_writes_what_rlds_validate_accepts(trained, tmp_path: Path, capsys) -> None:
    model_root, rlds_dir = trained
    out = tmp_path / "cli"
    argv = ["imagine", "--model-root", str(model_root), "--episodes", "2", "--out", str(out), "--json"]
    argv += ["--horizon", "2", "--population", "16", "--iterations", "2", "--max-final-cost", "10"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["episodes"] == 2 and summary["method"] == "cem" and summary["env"] == "reach2d"
    assert main(["rlds", "validate", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["episodes_ok"] == 2 and report["episodes_bad"] == 0
    # `train --imagined-dir` mixes them in; the candidate records where they came from.
    cfg = tiny_config(tmp_path, rlds_dir, steps=2, order=["fast_loop"], model={"fast": {"use_context": False}})
    assert main(["train", "--config", str(tmp_path / "config.json"), "--imagined-dir", str(out), "--json"]) == 0
    capsys.readouterr()
    manifest = json.loads((Path(cfg.model_root) / "candidate" / "manifest.json").read_text())
    assert manifest["imagined_rlds_dirs"] == [str(out.resolve())]


def test_cli_imagine_errors(trained, tmp_path: Path, capsys) -> None:
    model_root, _ = trained
    base = ["imagine", "--episodes", "2", "--out", str(tmp_path / "out")]
    assert main([*base, "--model-root", str(tmp_path / "nothing")]) == 2
    assert "no model store" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([*base, "--model-root", str(tmp_path / "empty")]) == 2
    assert "no model in" in capsys.readouterr().err
    assert main([*base, "--model-root", str(model_root), "--env", "Pendulum-v1"]) == 2
    err = capsys.readouterr().err
    assert "no known goal for env 'Pendulum-v1'" in err and "reach2d" in err
    assert main([*base, "--model-root", str(model_root), "--env", "track2d"]) == 2
    assert "recorded in 'reach2d', not 'track2d'" in capsys.readouterr().err
    assert main([*base, "--model-root", str(model_root), "--rlds-dir", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ImagineError, match="no known goal"):
        goal_for("donkey")


def test_imagine_reads_the_store_through_its_verification(trained, tmp_path: Path) -> None:
    """The slot is opened through the model store: a weight file that no longer matches its
    sha256 in the manifest is refused before anything is loaded."""
    model_root, _ = trained
    copy = tmp_path / "models"
    shutil.copytree(model_root, copy, symlinks=True)
    slot = open_slot(copy)
    version = json.loads((copy / "candidate" / "manifest.json").read_text())["version"]
    assert slot.name == "candidate" and slot.version == version
    weights = slot.directory / "mid_loop.safetensors"
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(ImagineError, match="sha256"):
        load_world_model(copy, "reach2d")
    with pytest.raises(ImagineError, match="holds no model"):
        open_slot(copy, "current")
    with pytest.raises(ImagineError, match="unknown slot"):
        open_slot(copy, "history")


#: Every public name of continuonbrain.sim.imagine when it was one module.
PUBLIC_NAMES = [
    "GOALS", "METHODS", "Goal", "ImagineError", "ModelInfo", "SearchConfig", "SearchResult", "StartState",
    "WorldModel", "cem_search", "detect_env", "goal_for", "imagine_to_dir", "imagined_episode",
    "load_world_model", "select_starts",
]  # fmt: skip


def test_the_package_keeps_every_public_name() -> None:
    import continuonbrain.sim.imagine as imagine

    assert [n for n in PUBLIC_NAMES if not hasattr(imagine, n)] == []
    assert set(imagine.__all__) >= set(PUBLIC_NAMES) - {"ModelInfo", "detect_env"}
