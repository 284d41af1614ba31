"""Every bad-input class gets one clear error naming file, episode, step and field;
quarantine moves (never deletes) bad episodes; upload readiness is checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_episode, only_error, png_bytes

from continuonbrain.rlds import RLDSError, read_episodes, write_episodes
from continuonbrain.rlds.validate import validate_path


def write_steps(path: Path, steps: list[dict], meta: dict | None = None) -> Path:
    (path / "steps").mkdir(parents=True)
    (path / "metadata.json").write_text(json.dumps(meta or {"episode_id": path.name}))
    (path / "steps" / "000000.jsonl").write_text("\n".join(json.dumps(s) for s in steps) + "\n")
    return path


GOOD = {"observation": [0.0, 1.0], "action": [0.5]}


@pytest.mark.parametrize(
    ("steps", "step", "field", "fragment"),
    [
        ([GOOD, {"action": [0.5]}], 1, "observation", "missing"),
        ([GOOD, {"observation": [0.0, 1.0]}], 1, "action", "missing"),
        ([GOOD, {**GOOD, "reward": "high"}], 1, "reward", "must be a number"),
        ([GOOD, {**GOOD, "is_last": "yes"}], 1, "is_last", "must be a boolean"),
        ([GOOD, {**GOOD, "observation": [0.0, 1.0, 2.0]}], 1, "observation", "shape"),
        ([GOOD, {**GOOD, "observation": ["a", "b"]}], 1, "observation", "numeric"),
        ([GOOD, {**GOOD, "action": {"steer": [1]}}], None, "action", "shape"),
        ([GOOD, GOOD, {**GOOD, "observation": [0.0, float("nan")]}], 2, "observation", "nan"),
        ([GOOD, {**GOOD, "action": [float("inf")]}], 1, "action", "inf"),
        ([{**GOOD, "timestamp": 1.0}, {**GOOD, "timestamp": 0.5}], 1, "timestamp", "backwards"),
        ([{**GOOD, "timestamp_ns": 10}, {**GOOD, "timestamp_ns": 5}], 1, "timestamp", "backwards"),
        ([GOOD, {**GOOD, "is_first": True}], 1, "is_first", "is_first"),
        ([{**GOOD, "step_metadata": [1]}, GOOD], 0, "step_metadata", "string map"),
        ([{**GOOD, "language_instruction": 3}], 0, "language_instruction", "string"),
    ],
)
def test_bad_step_fields_are_named(tmp_path: Path, steps, step, field, fragment) -> None:
    ep = write_steps(tmp_path / "bad_ep", steps)
    err = only_error(ep)
    assert fragment in err.message.lower() or fragment in str(err).lower()
    assert err.episode == "bad_ep"
    assert err.file is not None and "bad_ep" in err.file
    if step is not None:
        assert err.step == step
    assert err.field is not None and err.field.startswith(field)


def test_nan_and_inf_values_are_rejected_with_step_and_field(tmp_path: Path) -> None:
    # Python's json writes NaN as a bare token: the reader accepts the token and the NaN
    # check names the step and the field.
    steps = [GOOD] * 3 + [{**GOOD, "observation": [0.0, float("nan")]}]
    err = only_error(write_steps(tmp_path / "nan_ep", steps))
    assert err.step == 3 and err.field == "observation" and "nan" in err.message
    # orjson and JavaScript write NaN as null: read as NaN (or named as null), and rejected.
    lines = [json.dumps(GOOD), json.dumps({**GOOD, "action": [None]})]
    (tmp_path / "null.jsonl").write_text("\n".join(lines))
    err = only_error(tmp_path / "null.jsonl")
    assert err.step == 1 and err.field == "action" and ("null" in err.message or "nan" in err.message)
    with pytest.raises(RLDSError) as info:
        from continuonbrain.rlds.validate import check_episode

        ep2 = make_episode(n=6)
        ep2.action[4, 0] = float("inf")
        check_episode(ep2)
    assert info.value.step == 4 and info.value.field == "action" and "inf" in info.value.message


def test_malformed_json_names_the_line(tmp_path: Path) -> None:
    ep = tmp_path / "ep"
    (ep / "steps").mkdir(parents=True)
    (ep / "steps" / "000000.jsonl").write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n{oops\n")
    err = only_error(ep)
    assert err.line == 3 and err.file is not None and err.file.endswith("000000.jsonl")
    assert "line 3" in str(err)


def test_bad_metadata_is_named(tmp_path: Path) -> None:
    ep = write_steps(tmp_path / "m", [GOOD], meta={"episode_id": "m", "tags": "not-a-list"})
    err = only_error(ep)
    assert err.field == "metadata.tags"
    ep2 = write_steps(tmp_path / "m2", [GOOD], meta={"episode_id": "m2", "control_hz": -5})
    assert only_error(ep2).field == "metadata.control_hz"


def test_image_that_does_not_decode(tmp_path: Path) -> None:
    ep = tmp_path / "img"
    (ep / "blobs").mkdir(parents=True)
    (ep / "blobs" / "0.png").write_bytes(png_bytes())
    (ep / "blobs" / "1.png").write_bytes(png_bytes()[:30])  # a truncated PNG: right header, no pixels
    (ep / "blobs" / "2.png").write_bytes(b"GARBAGE!" * 4)
    write_steps(ep, [{"observation": {"cam": f"blobs/{i}.png"}, "action": [0.0]} for i in range(3)])
    # `rlds validate` decodes every frame and names the first that fails.
    report = validate_path(ep).to_json()
    assert report["episodes_bad"] == 1
    err = report["errors"][0]
    assert (err["step"], err["field"]) == (1, "observation.cam") and "does not decode" in err["message"]
    # The read path only checks that the bytes look like an image (cheap), and still names
    # the step and field of bytes that do not.
    err = only_error(ep)
    assert (err.step, err.field) == (2, "observation.cam") and "does not decode" in err.message


def test_missing_blob_file(tmp_path: Path) -> None:
    ep = write_steps(tmp_path / "img", [{"observation": {"cam": "blobs/missing.png"}, "action": [0.0]}])
    err = only_error(ep)
    assert err.field == "observation.cam" and "cannot be read" in err.message


def test_validate_report_and_quarantine_moves_with_reason(episodes_dir: Path, tmp_path: Path) -> None:
    (episodes_dir / "ep1" / "steps" / "000000.jsonl").write_text('{"observation": [1], "action": [1]}\n{"obs')
    (episodes_dir / "loose.jsonl").write_text('{"observation": [1], "action": "fast"}\n')
    qdir = tmp_path / "quarantine"
    report = validate_path(episodes_dir, quarantine_dir=qdir)
    data = report.to_json()
    assert data["episodes_ok"] == 2 and data["episodes_bad"] == 2
    assert data["steps_ok"] == 10 + 12
    assert {e["episode"] for e in data["errors"]} == {"ep1", "loose"}
    # Moved, not deleted, with the reason beside each.
    assert not (episodes_dir / "ep1").exists() and not (episodes_dir / "loose.jsonl").exists()
    assert (qdir / "ep1" / "steps" / "000000.jsonl").read_text().startswith('{"observation"')
    assert "malformed JSON" in (qdir / "ep1" / "reason.txt").read_text()
    assert "action" in (qdir / "loose.jsonl.reason.txt").read_text()
    # The data directory is clean now; the good episodes are untouched.
    assert [e.episode_id for e in read_episodes(episodes_dir, on_error="raise")] == ["ep0", "ep2"]


def test_upload_readiness(tmp_path: Path) -> None:
    write_episodes(
        [
            make_episode(episode_id="ready"),
            make_episode(episode_id="review", safety={"pii_cleared": True, "pending_review": True}),
            make_episode(episode_id="pii", safety={"pii_cleared": False, "pending_review": False}),
        ],
        tmp_path / "eps",
    )
    report = validate_path(tmp_path / "eps", upload=True).to_json(upload=True)
    problems = {item["episode"]: item["problems"] for item in report["not_upload_ready"]}
    assert set(problems) == {"review", "pii"}
    assert problems["review"] == ["safety.pending_review is true"]
    assert problems["pii"] == ["safety.pii_cleared is not true"]


def test_export_for_upload_strips_owner(tmp_path: Path) -> None:
    from continuonbrain.rlds.writer import convert

    write_episodes(
        [
            make_episode(episode_id="ready", owner={"name": "Ada", "contact": "ada@example.com"}),
            make_episode(episode_id="review", safety={"pii_cleared": True, "pending_review": True}),
        ],
        tmp_path / "eps",
    )
    report = convert(tmp_path / "eps", tmp_path / "out", "continuon", for_upload=True)
    assert report["written"] == 1 and report["not_upload_ready"][0]["episode"] == "review"
    meta = json.loads((tmp_path / "out" / "ready" / "metadata.json").read_text())
    assert "owner" not in meta and meta["episode_id"] == "ready"
