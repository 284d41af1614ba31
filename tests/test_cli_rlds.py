"""The `continuonbrain rlds ...` commands, run as real processes, as the command contract in the README specifies."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli


def test_validate_json_contract(episodes_dir: Path) -> None:
    proc = run_cli("rlds", "validate", str(episodes_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # one JSON object on stdout, nothing else
    assert {"episodes_ok", "episodes_bad", "steps_ok", "errors"} <= set(data)
    assert (data["episodes_ok"], data["episodes_bad"], data["steps_ok"]) == (3, 0, 10 + 11 + 12)


def test_validate_bad_data_never_prints_a_traceback(episodes_dir: Path, tmp_path: Path) -> None:
    (episodes_dir / "ep2" / "steps" / "000000.jsonl").write_text('{"observation": [1, 2], "action": [1]}\n[')
    proc = run_cli("rlds", "validate", str(episodes_dir), "--json", "--quarantine", str(tmp_path / "q"))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    data = json.loads(proc.stdout)
    assert data["episodes_bad"] == 1 and data["errors"][0]["episode"] == "ep2"
    assert "line 2" in data["errors"][0]["error"]
    assert (tmp_path / "q" / "ep2" / "reason.txt").is_file()
    # Human output names the file, episode and problem in one line.
    (episodes_dir / "ep0" / "metadata.json").write_text('{"episode_id": "ep0", "tags": 5}')
    proc = run_cli("rlds", "validate", str(episodes_dir))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "episode ep0" in proc.stdout and "field metadata.tags" in proc.stdout


def test_missing_path_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = run_cli("rlds", "validate", str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "path does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_info_json(episodes_dir: Path) -> None:
    proc = run_cli("rlds", "info", str(episodes_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["episodes"] == 3 and info["steps"] == 33
    assert info["control_hz"] == [50.0]
    assert info["observation"] == {"type": "tensor", "shape": [4], "dtype": "float32"}


def test_convert_round_trip_through_tfds(episodes_dir: Path, tmp_path: Path) -> None:
    proc = run_cli("rlds", "convert", str(episodes_dir), str(tmp_path / "tf"), "--format", "tfds")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("rlds", "convert", str(tmp_path / "tf"), str(tmp_path / "back"), "--format", "continuon")
    assert proc.returncode == 0, proc.stderr
    a = json.loads(run_cli("rlds", "info", str(episodes_dir), "--json").stdout)
    b = json.loads(run_cli("rlds", "info", str(tmp_path / "back"), "--json").stdout)
    assert (a["episodes"], a["steps"], a["observation"]) == (b["episodes"], b["steps"], b["observation"])
    # TFDS put them in its "train" split, and the split is kept: back/train/<episode>/.
    assert sorted(p.name for p in (tmp_path / "back" / "train").iterdir()) == ["ep0", "ep1", "ep2"]


def test_schema_prints_json_schema() -> None:
    proc = run_cli("rlds", "schema")
    assert proc.returncode == 0
    schema = json.loads(proc.stdout)
    assert {"EpisodeMetadata", "StepRecord"} <= set(schema["$defs"])


def test_sim_collect_then_validate(tmp_path: Path) -> None:
    for fmt in ("continuon", "tfds"):
        out = tmp_path / fmt
        proc = run_cli(
            "sim", "collect", "--env", "reach2d", "--episodes", "3", "--out", str(out), "--format", fmt, "--json"
        )
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        assert summary["episodes"] == 3 and summary["env"] == "reach2d"
        report = json.loads(run_cli("rlds", "validate", str(out), "--json", "--upload").stdout)
        assert (report["episodes_ok"], report["episodes_bad"]) == (3, 0)
        assert report["steps_ok"] == summary["steps"]
        assert report["not_upload_ready"] == []  # simulator episodes carry no PII
