"""A full disk ends every writing command with one line naming the path, exit 2, nothing
half-written left behind and everything written before it intact (a real, tiny tmpfs)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import fill_disk, run_cli

from continuonbrain.rlds import read_episodes
from continuonbrain.sim.collect import collect_to_dir


@pytest.fixture
def full_disk(small_tmpfs: Path) -> Path:
    """A real tmpfs with ~150 KiB left: room for a few episodes, not for a dataset."""
    fill_disk(small_tmpfs, leave=150 * 1024)
    return small_tmpfs


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("src")
    collect_to_dir("reach2d", 40, out / "tf", seed=0, format="tfds")  # more than fits
    return out / "tf"


def leftovers(root: Path) -> list[Path]:
    """Temporary or partial files a writer should have removed."""
    return [p for p in root.rglob("*") if p.name.startswith(".") or p.name.endswith((".tmp", ".partial"))]


def assert_one_line_error(proc: subprocess.CompletedProcess, under: Path) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "no space left" in lines[0] and str(under) in lines[0]


@pytest.mark.parametrize("fmt", ["continuon", "tfds"])
def test_sim_collect_on_a_full_disk(full_disk: Path, fmt: str) -> None:
    out = full_disk / "episodes"
    args = ["sim", "collect", "--env", "reach2d", "--episodes", "80", "--out", str(out), "--format", fmt]
    proc = run_cli(*args, timeout=300)
    assert_one_line_error(proc, out)
    assert leftovers(full_disk) == []
    # Continuon: the episodes written before the disk filled are complete and read back.
    assert len(list(read_episodes(out, on_error="raise"))) == (len(list(out.iterdir())) if fmt == "continuon" else 0)


@pytest.mark.parametrize("fmt", ["continuon", "tfds"])
def test_rlds_convert_on_a_full_disk(full_disk: Path, source: Path, fmt: str) -> None:
    out = full_disk / "converted"
    proc = run_cli("rlds", "convert", str(source), str(out), "--format", fmt, timeout=300)
    assert_one_line_error(proc, out)
    assert leftovers(full_disk) == []
    assert not list(out.rglob("dataset_info.json"))  # never a dataset that looks complete


def test_train_on_a_full_disk(full_disk: Path, tmp_path: Path) -> None:
    episodes = tmp_path / "episodes"
    collect_to_dir("reach2d", 6, episodes, seed=0)
    run = full_disk / "run"
    proc = run_cli(
        "train", "--rlds-dir", str(episodes), "--run-dir", str(run), "--model-root", str(full_disk / "models"),
        "--max-steps", "30", timeout=300,
    )  # fmt: skip
    assert_one_line_error(proc, full_disk)
    assert leftovers(full_disk) == []
    assert not (full_disk / "models" / "candidate").exists()  # no candidate that looks complete
