"""Hostile or odd input (issue 10, items 5-7): real files, symlinks, FIFOs, sparse files and gzip
shards that must each become one clean error, never a hang, a blown memory or a crash of the
whole scan, while the good episodes beside them are still counted and the report still prints.
Declared counts, sizes and bounds that the data contradicts are errors, and so are duplicate
episode ids and a path with no episodes at all."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_episode, only_error
from hypothesis import given, settings
from hypothesis import strategies as st

from continuonbrain.rlds import read_episodes, scan_episodes, tfds, write_episodes
from continuonbrain.rlds.limits import Limits, json_depth
from continuonbrain.rlds.tfrecord import frame_record, iter_records, scan_records, write_records
from continuonbrain.rlds.validate import validate_path

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs, /dev/zero and rlimits are POSIX")

EPISODES = 30


def jsonl_dataset(root: Path, n: int = EPISODES, **meta: Any) -> Path:
    """``n`` good Continuon episode directories ``ep00``, ``ep01``, ... of 5 steps."""
    write_episodes([make_episode(episode_id=f"ep{i:02d}", n=5, **meta) for i in range(n)], root)
    return root


def tfds_dataset(root: Path, n: int = 20, per_shard: int = 256) -> Path:
    """A TFDS version directory of ``n`` episodes; returns the version directory."""
    tfds.write_tfds([make_episode(episode_id=f"ep{i:02d}", n=5) for i in range(n)], root, episodes_per_shard=per_shard)
    return root / "continuon_rlds" / "1.0.0"


def cli(*args: str, memory: int = 1 << 30, timeout: float = 60) -> subprocess.CompletedProcess:
    """``continuonbrain ARGS`` in a child whose address space is capped at ``memory``, so a
    regression that reads gigabytes fails this test instead of taking the machine down."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "continuonbrain", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=cap, env=env)


def validate_json(path: Path, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """``rlds validate PATH --json``: its exit code and its one JSON object (the contract)."""
    proc = cli("rlds", "validate", str(path), "--json", **kwargs)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def errors_of(report: Any) -> list[str]:
    return [e["error"] for e in report.errors]


def peak_bytes(fn: Any) -> tuple[int, Any]:
    """The peak of Python allocations while ``fn()`` runs, and what it returned (measured on a
    second run, so that lazy imports and caches do not count)."""
    fn()
    tracemalloc.start()
    try:
        out = fn()
        return tracemalloc.get_traced_memory()[1], out
    finally:
        tracemalloc.stop()


# --- JSON nested 10^5 - 10^6 deep -----------------------------------------------------------


def test_deep_json_in_a_step_line_is_one_bad_episode_and_the_report_still_prints(tmp_path: Path) -> None:
    data = jsonl_dataset(tmp_path / "E")
    with (data / "ep07" / "steps" / "000000.jsonl").open("a") as f:
        f.write('{"observation": ' + "[" * 100_000 + "]" * 100_000 + ', "action": [0.0, 0.0]}\n')
    code, report = validate_json(data)
    assert code == 1 and (report["episodes_ok"], report["episodes_bad"]) == (EPISODES - 1, 1)
    (err,) = report["errors"]
    assert err["episode"] == "ep07" and err["line"] == 6 and "nested 100001 deep" in err["message"]
    assert err["file"].endswith("000000.jsonl")


def test_deep_json_in_metadata_or_a_single_json_file_names_the_file(tmp_path: Path) -> None:
    data = jsonl_dataset(tmp_path / "E")
    (data / "ep03" / "metadata.json").write_text("[" * 1_000_000)
    (data / "single.json").write_text('{"steps": ' + "[" * 1_000_000)
    report = validate_path(data)
    assert (report.episodes_ok, report.episodes_bad) == (EPISODES - 1, 2)
    files = sorted(Path(e["file"]).name for e in report.errors)
    assert files == ["metadata.json", "single.json"] and all("Limits.max_json_depth" in e for e in errors_of(report))


def test_depth_is_checked_before_parsing_and_the_limit_is_configurable(tmp_path: Path) -> None:
    """129 deep is within orjson's own limit (1024) but above ours, which ``Limits`` can raise;
    the NaN fallback (stdlib json) is bounded by the same check."""
    ep = jsonl_dataset(tmp_path / "E", n=1) / "ep00"
    meta = json.loads((ep / "metadata.json").read_text())
    (ep / "metadata.json").write_text(
        json.dumps({**meta, "deep": json.loads("[" * 129 + "]" * 129), "x": float("nan")})
    )
    (result,) = scan_episodes(ep)
    assert "nested 130 deep" in result.error.message and result.error.file == str(ep / "metadata.json")
    (result,) = scan_episodes(ep, limits=Limits(max_json_depth=200))
    assert result.ok and np.isnan(result.episode.metadata["x"])


json_leaves = st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab\n', max_size=6)
json_docs = st.recursive(
    json_leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text('[]{}"\\x', max_size=3), inner)
)


def nesting(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(nesting, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(nesting, value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(doc=json_docs, indent=st.sampled_from([None, 1]))
def test_json_depth_is_the_parsed_nesting(doc: Any, indent: int | None) -> None:
    """Brackets, quotes and backslashes inside strings do not fool the byte scan."""
    assert json_depth(json.dumps(doc, indent=indent).encode()) == nesting(doc)


# --- files that are not what they claim ---------------------------------------------------


def test_a_steps_file_that_is_a_symlink_to_dev_zero_is_refused_unread(tmp_path: Path) -> None:
    """With the default limits: the mode is checked before a byte is read."""
    data = jsonl_dataset(tmp_path / "E")
    chunk = data / "ep05" / "steps" / "000000.jsonl"
    chunk.unlink()
    chunk.symlink_to("/dev/zero")
    code, report = validate_json(data)
    assert code == 1 and (report["episodes_ok"], report["episodes_bad"]) == (EPISODES - 1, 1)
    assert "is a character device, not a regular file" in report["errors"][0]["error"]
    peak, (result,) = peak_bytes(lambda: list(scan_episodes(chunk)))
    assert peak < 1 << 20 and "is a character device, not a regular file" in result.error.message


def test_a_sparse_file_above_the_file_limit_is_refused_by_its_size(tmp_path: Path) -> None:
    data = jsonl_dataset(tmp_path / "E")
    chunk = data / "ep09" / "steps" / "000000.jsonl"
    os.truncate(chunk, 2 << 30)  # 2 GiB of holes: no disk used, 2 GiB if read
    code, report = validate_json(data)
    assert code == 1 and (report["episodes_ok"], report["episodes_bad"]) == (EPISODES - 1, 1)
    assert (
        "2,147,483,648 bytes, above the limit of 1,073,741,824 (Limits.max_file_bytes)" in report["errors"][0]["error"]
    )


def test_a_fifo_as_a_steps_file_or_metadata_is_refused_without_blocking(tmp_path: Path) -> None:
    data = jsonl_dataset(tmp_path / "E")
    (data / "ep01" / "steps" / "000000.jsonl").unlink()
    os.mkfifo(data / "ep01" / "steps" / "000000.jsonl")
    (data / "ep02" / "metadata.json").unlink()
    os.mkfifo(data / "ep02" / "metadata.json")  # not silently taken for "no metadata" either
    os.mkfifo(data / "lonely.jsonl")
    code, report = validate_json(data, timeout=60)  # opening a FIFO for reading would block forever
    assert code == 1 and (report["episodes_ok"], report["episodes_bad"]) == (EPISODES - 2, 3)
    assert all("is a FIFO, not a regular file" in e["error"] for e in report["errors"])


def test_a_line_above_the_line_limit_is_refused_and_named(tmp_path: Path) -> None:
    data = jsonl_dataset(tmp_path / "E", n=3)
    chunk = data / "ep01" / "steps" / "000000.jsonl"
    lines = chunk.read_text().splitlines()
    lines[2] = lines[2][:-1] + ', "pad": "' + "x" * 20_000 + '"}'
    chunk.write_text("\n".join(lines) + "\n")
    report = validate_path(data, limits=Limits(max_line_bytes=10_000))
    (err,) = report.errors
    assert (err["episode"], err["line"]) == ("ep01", 3) and "(Limits.max_line_bytes)" in err["message"]
    assert report.episodes_ok == 2


def test_a_file_above_the_file_limit_costs_nothing_to_refuse(tmp_path: Path) -> None:
    data = jsonl_dataset(tmp_path / "E", n=2)
    os.truncate(data / "ep00" / "steps" / "000000.jsonl", 64 << 20)
    limits = Limits(max_file_bytes=1 << 20)
    peak, results = peak_bytes(lambda: list(scan_episodes(data, limits=limits)))
    assert peak < 4 << 20, peak
    assert [r.ok for r in results] == [False, True] and "(Limits.max_file_bytes)" in results[0].error.message


def test_a_gzip_record_above_the_record_limit_is_refused_from_its_header(tmp_path: Path) -> None:
    """Memory stays flat: the record's 32 MiB are never inflated."""
    path = tmp_path / "big.tfrecord.gz"
    write_records(path, [b"small", os.urandom(32 << 20), b"never reached"], gzip=True)
    peak, records = peak_bytes(lambda: list(scan_records(path, Limits(max_record_bytes=1 << 20))))
    assert peak < 4 << 20, peak
    assert records[0].data == b"small" and len(records) == 2
    assert records[1].fatal and "33,554,432 bytes, above the limit of 1,048,576" in records[1].error.message


def test_a_plain_record_above_the_record_limit_is_skipped_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.tfrecord"
    path.write_bytes(frame_record(b"a") + frame_record(bytes(32 << 20)) + frame_record(b"c"))
    peak, records = peak_bytes(lambda: list(scan_records(path, Limits(max_record_bytes=1 << 20))))
    assert peak < 4 << 20, peak
    assert [r.data for r in records] == [b"a", None, b"c"] and not records[1].fatal
    assert "skipped unread" in records[1].error.message
    assert [len(p) for _, p in iter_records(path)] == [1, 32 << 20, 1]  # the default admits it


# --- symlinks -------------------------------------------------------------------------------


def test_a_symlink_loop_is_not_followed(tmp_path: Path) -> None:
    data = jsonl_dataset(tmp_path / "E")
    (data / "sub").mkdir()
    (data / "sub" / "up").symlink_to("..")  # back to E, an ancestor inside the tree: skipped
    (data / "zz-loop").symlink_to("..")  # E's parent, which holds E: outside the tree, and said so
    report = validate_path(data)
    assert (report.episodes_ok, report.episodes_bad) == (EPISODES, 1)
    assert report.errors[0]["file"] == str(data / "zz-loop") and "outside the tree" in report.errors[0]["error"]


def test_a_symlink_out_of_the_tree_is_reported_not_followed(tmp_path: Path) -> None:
    data = jsonl_dataset(tmp_path / "E", n=3)
    elsewhere = jsonl_dataset(tmp_path / "elsewhere", n=2)
    (tmp_path / "outside.jsonl").write_text('{"observation": [1.0], "action": [0.0]}\n')
    (data / "linked-dir").symlink_to(elsewhere)
    (data / "linked.jsonl").symlink_to(tmp_path / "outside.jsonl")
    (data / "ep00" / "steps" / "000000.jsonl").unlink()
    (data / "ep00" / "steps" / "000000.jsonl").symlink_to(elsewhere / "ep00" / "steps" / "000000.jsonl")
    report = validate_path(data)
    assert (report.episodes_ok, report.episodes_bad) == (2, 3)
    assert {Path(e["file"]).name for e in report.errors} == {"linked-dir", "linked.jsonl", "000000.jsonl"}
    assert all("outside the tree being scanned" in e for e in errors_of(report))


def test_symlinks_inside_the_tree_are_read_once(tmp_path: Path) -> None:
    data = jsonl_dataset(tmp_path / "E", n=3)
    (data / "a-latest").symlink_to(data / "ep02")  # sorts first: ep02 is read through it, once
    (data / "ep01" / "steps" / "000000.jsonl").rename(data / "chunk.bin")
    (data / "ep01" / "steps" / "000000.jsonl").symlink_to(data / "chunk.bin")
    report = validate_path(data)
    assert (report.episodes_ok, report.episodes_bad) == (3, 0)


# --- duplicates -----------------------------------------------------------------------------


def test_a_duplicate_episode_id_is_an_error_naming_both_places(tmp_path: Path) -> None:
    data = jsonl_dataset(tmp_path / "E")
    shutil.copytree(data / "ep12", data / "ep12-copy")
    report = validate_path(data)
    assert (report.episodes_ok, report.episodes_bad) == (EPISODES, 1)
    (err,) = report.errors
    assert err["episode"] == "ep12" and err["file"] == str(data / "ep12-copy")
    assert str(data / "ep12") in err["message"] and str(data / "ep12-copy") in err["message"]
    assert sorted(ep.episode_id for ep in read_episodes(data, on_error="skip")) == [f"ep{i:02d}" for i in range(30)]


def test_the_same_id_in_two_tfds_splits_is_not_a_duplicate(tmp_path: Path) -> None:
    episodes = [make_episode(episode_id="0", n=4, split=split) for split in ("train", "test")]
    tfds.write_tfds(episodes, tmp_path)
    assert len(list(read_episodes(tmp_path, on_error="raise"))) == 2


def test_a_duplicate_record_in_a_shard_names_both_records(tmp_path: Path) -> None:
    root = tfds_dataset(tmp_path, n=3)
    (shard,) = root.glob("*.tfrecord-*")
    payloads = [p for _, p in iter_records(shard)]
    write_records(shard, [*payloads, payloads[1]])
    info = json.loads((root / "dataset_info.json").read_text())
    info["splits"][0]["shardLengths"] = ["4"]
    (root / "dataset_info.json").write_text(json.dumps(info))
    report = validate_path(root)
    (err,) = report.errors
    assert f"{shard}#3" in err["message"] and f"{shard}#1" in err["message"] and err["episode"] == "ep01"


# --- declared counts (TFDS shardLengths) ------------------------------------------------------


def test_a_truncated_shard_reports_the_records_it_lost(tmp_path: Path) -> None:
    root = tfds_dataset(tmp_path, n=20)
    (shard,) = root.glob("*.tfrecord-*")
    offsets = [offset for offset, _ in iter_records(shard)]
    shard.write_bytes(shard.read_bytes()[: offsets[10] + 30])  # 10 whole records, the 11th cut
    code, report = validate_json(root)
    assert code == 1 and (report["episodes_ok"], report["episodes_bad"]) == (10, 2)
    truncated, missing = report["errors"]
    assert "truncated" in truncated["error"]
    assert (
        "declares 20 records in this shard (shardLengths) and 11 were found (good or bad): 9 missing"
        in missing["error"]
    )


@pytest.mark.parametrize(("declared", "fragment"), [(99, "69 missing"), (12, "18 more than declared")])
def test_shard_lengths_that_disagree_with_the_shard_are_errors(tmp_path: Path, declared: int, fragment: str) -> None:
    root = tfds_dataset(tmp_path, n=30)
    info = json.loads((root / "dataset_info.json").read_text())
    info["splits"][0]["shardLengths"] = [str(declared)]
    (root / "dataset_info.json").write_text(json.dumps(info))
    report = validate_path(root)
    assert (report.episodes_ok, report.episodes_bad) == (30, 1) and fragment in report.errors[0]["error"]


def test_a_missing_or_empty_shard_is_an_error(tmp_path: Path) -> None:
    root = tfds_dataset(tmp_path / "a", n=4, per_shard=2)
    first, second = sorted(root.glob("*.tfrecord-*"))
    first.write_bytes(b"")
    second.unlink()
    report = validate_path(root)
    assert (report.episodes_ok, report.episodes_bad) == (0, 2)
    assert "2 missing" in report.errors[0]["error"] and "is missing" in report.errors[1]["error"]
    only = tfds_dataset(tmp_path / "b", n=3)
    next(only.glob("*.tfrecord-*")).unlink()  # the dataset's only shard
    code, report = validate_json(only)
    assert code == 1 and report["episodes_bad"] == 1 and "is missing" in report["errors"][0]["error"]


# --- declared sizes and bounds ----------------------------------------------------------------


def box(**fields: Any) -> dict[str, Any]:
    return {
        "action_space": {
            "type": "box",
            "shape": [2],
            "dtype": "float32",
            "low": [-1.0, -1.0],
            "high": [1.0, 1.0],
            **fields,
        }
    }


def patch_metadata(ep: Path, **fields: Any) -> None:
    """Change an episode's metadata.json on disk (the writers refuse bad metadata)."""
    meta = json.loads((ep / "metadata.json").read_text())
    (ep / "metadata.json").write_text(json.dumps({**meta, **fields}))  # the stdlib writes NaN/Infinity tokens


@pytest.mark.parametrize(
    ("space", "fragment"),
    [(box(shape=[3]), "declares shape [3], the actions have shape [2]"), (box(shape="two"), "valid list")],
)
def test_a_declared_action_shape_must_match_the_data(tmp_path: Path, space: dict, fragment: str) -> None:
    ep = jsonl_dataset(tmp_path / "E", n=1) / "ep00"
    patch_metadata(ep, capabilities=space)
    err = only_error(ep)
    assert err.field == "metadata.capabilities.action_space.shape" and fragment in err.message


@pytest.mark.parametrize("hz", [float("nan"), float("inf"), 1e308, 0.0, -50.0])
@pytest.mark.parametrize("where", ["top", "capabilities"])
def test_control_hz_must_be_finite_and_plausible(tmp_path: Path, hz: float, where: str) -> None:
    ep = jsonl_dataset(tmp_path / "E", n=1) / "ep00"
    patch_metadata(ep, **({"control_hz": hz} if where == "top" else {"capabilities": {"control_hz": hz}}))
    err = only_error(ep)
    assert err.field == ("metadata.control_hz" if where == "top" else "metadata.capabilities.control_hz")


def test_actions_outside_the_declared_bounds_name_the_step_and_field(tmp_path: Path) -> None:
    ep = jsonl_dataset(tmp_path / "E", n=1, capabilities=box()) / "ep00"
    chunk = ep / "steps" / "000000.jsonl"
    rows = [json.loads(line) for line in chunk.read_text().splitlines()]
    rows[3]["action"] = [5.0, 5.0]
    chunk.write_text("".join(json.dumps(r) + "\n" for r in rows))
    err = only_error(ep)
    assert (err.step, err.field) == (3, "action")
    assert "value 5.0 at index 0 is above the declared high 1.0" in err.message


def test_bounds_compare_in_the_actions_dtype_and_null_is_unbounded(tmp_path: Path) -> None:
    """float32(0.1) > 0.1 in float64: an action clipped to its bound is not outside it."""
    space = box(low=[None, -0.1], high=[0.1, None])
    ep = make_episode(episode_id="e", n=4, capabilities=space)
    ep.action = np.tile(np.array([0.1, -0.1], np.float32), (4, 1))
    write_episodes([ep], tmp_path)
    assert len(list(read_episodes(tmp_path, on_error="raise"))) == 1


# --- nothing found, and `rlds info`'s exit code ------------------------------------------------


def test_no_episodes_found_is_an_error_and_the_report_still_prints(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, report = validate_json(tmp_path / "empty")
    assert code == 1 and (report["episodes_ok"], report["episodes_bad"]) == (0, 1)
    assert "no episodes found" in report["errors"][0]["error"]
    proc = cli("rlds", "info", str(tmp_path / "empty"), "--json")
    assert proc.returncode == 1 and "no episodes found" in json.loads(proc.stdout)["errors"][0]


def test_info_exits_1_when_it_lists_bad_episodes(tmp_path: Path) -> None:
    data = jsonl_dataset(tmp_path / "E", n=3)
    (data / "ep01" / "steps" / "000000.jsonl").write_text("{not json\n")
    proc = cli("rlds", "info", str(data), "--json")
    info = json.loads(proc.stdout)
    assert proc.returncode == 1 and (info["episodes"], info["episodes_bad"]) == (2, 1)
    proc = cli("rlds", "info", str(data))
    assert proc.returncode == 1 and "BAD" in proc.stdout
    assert cli("rlds", "info", str(data / "ep00")).returncode == 0


def test_a_line_broken_inside_a_string_is_not_glued_to_the_next(tmp_path: Path) -> None:
    """The one-call JSONL parse must not read two broken halves as one step."""
    path = tmp_path / "glued.jsonl"
    path.write_text('{"observation": [1.0], "action": [0.0], "language_instruction": "pick\nup"}\n')
    (result,) = scan_episodes(path)
    assert result.error.line == 1 and "malformed JSON" in result.error.message
