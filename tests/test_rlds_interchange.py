"""Data that moves between layouts and tools loses nothing and says what it did: layout
detection where two layouts match, splits through convert round trips, writers that never
overwrite an episode silently, printed counts equal to what is on disk, lazy images that are
arrays, one permission rule for written files."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_episode, make_image_episode

from continuonbrain.rlds import RLDSError, read_episodes, scan_episodes, tfds, write_episodes


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "continuonbrain", *args], capture_output=True, text=True, check=False, timeout=120
    )


# --- 1. layout detection ------------------------------------------------------------------


def test_tfds_version_dir_with_tfds_own_metadata_json_is_read_as_tfds(tmp_path: Path) -> None:
    # A GeneratorBasedBuilder with `metadata = tfds.core.MetadataDict(...)` writes the builder's
    # metadata as metadata.json beside dataset_info.json and features.json.
    tfds.write_tfds([make_episode(episode_id=f"e{i}") for i in range(3)], tmp_path, name="ds")
    version = tmp_path / "ds" / "1.0.0"
    (version / "metadata.json").write_text(json.dumps({"robot": "franka", "fps": 10}))
    for path in (version, tmp_path / "ds", tmp_path):
        assert [e.episode_id for e in read_episodes(path, on_error="raise")] == ["e0", "e1", "e2"]
    info = run_cli("rlds", "info", str(version), "--json")
    assert info.returncode == 0, info.stdout + info.stderr
    assert json.loads(info.stdout)["episodes"] == 3


def test_a_directory_matching_two_layouts_is_an_error_naming_both(tmp_path: Path) -> None:
    tfds.write_tfds([make_episode(episode_id="e0")], tmp_path / "data", name="ds")
    version = tmp_path / "data" / "ds" / "1.0.0"
    (version / "features.json").unlink()  # one TFDS marker left, plus shards ...
    (version / "metadata.json").write_text(json.dumps({"episode_id": "x"}))  # ... and a Continuon one
    write_episodes([make_episode(episode_id="good")], tmp_path / "data" / "episodes")
    results = list(scan_episodes(tmp_path / "data"))
    bad = [r for r in results if not r.ok]
    assert len(bad) == 1 and "matches two layouts" in str(bad[0].error)
    assert "TFDS" in str(bad[0].error) and "Continuon" in str(bad[0].error) and str(version) in str(bad[0].error)
    assert [r.episode.episode_id for r in results if r.ok] == ["good"]  # the episode beside it is still read
