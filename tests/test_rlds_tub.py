"""Donkeycar tub v2 as an RLDS layout: tubs that the real ``donkeycar`` package writes read
exactly (one episode per run of undeleted records of one session), the tubs we write load in
Donkeycar's own ``Tub`` with the same records and images, a bad tub is one error naming the
file, line, record and field while the other episodes still read, quarantine marks records
deleted (reversibly), and the command line takes a tub or a directory of tubs.

The real ``donkeycar`` (5.1.0, the ``donkey-test`` extra that ``make venv`` installs) writes
the tubs here. Without it these tests are skipped, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TINY_CAMERA_MODEL, make_episode, run_cli, seed_config, tiny_components
from PIL import Image

from continuonbrain.rlds import Episode, LazyImage, read_episodes, scan_episodes, write_episodes
from continuonbrain.rlds.reader import dir_layout
from continuonbrain.rlds.tub import TubRun, restore_records
from continuonbrain.rlds.validate import validate_path

INPUTS = [
    "cam/image_array",
    "user/angle",
    "user/throttle",
    "user/mode",
    "enc/speed",
    "imu/acl",
    "pilot/angle",
    "recording",
]
TYPES = ["image_array", "float", "float", "str", "float", "list", "float", "boolean"]
H, W = 24, 32
T0 = 1_700_000_000.0  # seconds: the fake clock Donkeycar's Tub stamps records with
#: Three drives (sessions) of records [start, end); Donkeycar's cleaner deletes some of them.
SESSIONS = [(0, 8), (8, 14), (14, 17)]
DELETED = {0: [3, 4], 1: [11]}
#: The runs of consecutive undeleted records of one session: the episodes.
RUNS = [(0, 2), (5, 7), (8, 10), (12, 13), (14, 16)]


def require_donkeycar() -> Any:
    """The real ``donkeycar.parts.tub_v2.Tub``; skipped without it, a failure under CI=true.

    ``import donkeycar`` sets the recursion limit to 100,000 for the whole process, where deep
    recursion then crashes the interpreter instead of raising RecursionError (the hostile-input
    tests after these rely on that): the limit is put back."""
    limit = sys.getrecursionlimit()
    try:
        from donkeycar.parts.tub_v2 import Tub
    except ImportError as err:
        problem = err
    else:
        return Tub
    finally:
        sys.setrecursionlimit(limit)
    why = (
        f"donkeycar is not importable ({problem}); it is the donkey-test extra, which `make venv` installs "
        '(pip install -c constraints.txt -e ".[dev,donkey-test]")'
    )
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"CI=true: {why}", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module")
def Tub() -> Any:
    return require_donkeycar()


def frame(i: int) -> np.ndarray:
    """A smooth picture (JPEG keeps it close), different for every record."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([x * 4 + i * 4, y * 6 + i * 3, np.full_like(x, 40 + i * 11)], -1).astype(np.uint8)


def record(i: int, session: int) -> dict[str, Any]:
    local = session == 2  # the third drive is the autopilot's
    return {
        "cam/image_array": frame(i),
        "user/angle": round(-0.8 + 0.1 * i, 3),
        "user/throttle": round(0.2 + 0.03 * i, 3),
        "user/mode": "local" if local else "user",
        "enc/speed": 1.5 + i / 4,
        "imu/acl": [0.1 * i, -0.2, 9.81],
        "pilot/angle": 0.05 * i if local else None,  # Donkeycar leaves None out of the record
        "recording": True,
    }


def stamp_ms(i: int, session: int) -> int:
    return round((T0 + i * 0.05 + session * 60) * 1000)  # 20 Hz, a minute between drives


def write_donkey_tub(Tub: Any, path: Path, max_catalog_len: int = 1000) -> dict[int, dict[str, Any]]:
    """Record SESSIONS with the real Tub (reopened for each drive, as ``manage.py drive`` does),
    deleting DELETED as its cleaner does; returns what was put in, by record index."""
    import donkeycar.parts.tub_v2 as tub_v2

    clock = {"now": T0}
    put: dict[int, dict[str, Any]] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tub_v2, "time", types.SimpleNamespace(time=lambda: clock["now"]))
        for s, (a, b) in enumerate(SESSIONS):
            # Inputs and types again on every reopening: Tub(path) alone would write empty records.
            tub = Tub(str(path), INPUTS, TYPES, metadata=["location:garage"], max_catalog_len=max_catalog_len)
            for i in range(a, b):
                clock["now"] = stamp_ms(i, s) / 1000
                rec = record(i, s)
                tub.write_record(rec)
                put[i] = {**rec, "_session": s}
            if s in DELETED:
                tub.delete_records(DELETED[s])
            tub.close()
    return put


@pytest.fixture(scope="module")
def donkey_tub(Tub: Any, tmp_path_factory) -> tuple[Path, dict[int, dict[str, Any]]]:
    path = tmp_path_factory.mktemp("donkey") / "tub"
    return path, write_donkey_tub(Tub, path)


def donkey_records(Tub: Any, tub: Path) -> list[dict[str, Any]]:
    """The records Donkeycar's own iterator yields (it skips the deleted ones)."""
    opened = Tub(str(tub), read_only=True)
    try:
        return list(opened)
    finally:
        opened.close()


def copy_tub(tub: Path, dest: Path) -> Path:
    shutil.copytree(tub, dest)
    return dest


def manifest_lines(tub: Path) -> list[Any]:
    return [json.loads(line) for line in (tub / "manifest.json").read_text().splitlines() if line.strip()]


def session_ids(tub: Path) -> list[str]:
    return manifest_lines(tub)[3]["sessions"]["all_full_ids"]


def runs(episodes: list[Episode]) -> list[tuple[int, int]]:
    return [(e.metadata["tub"]["first_index"], e.metadata["tub"]["last_index"]) for e in episodes]


def donkey_image(tub: Path, rec: dict[str, Any]) -> np.ndarray:
    """A record's image as Donkeycar's training pipeline loads it (TubRecord.image)."""
    from donkeycar.config import Config
    from donkeycar.pipeline.types import TubRecord

    cfg = Config()
    cfg.IMAGE_W, cfg.IMAGE_H, cfg.IMAGE_DEPTH = W, H, 3
    return TubRecord(cfg, str(tub), rec).image()


# --- 1. what Donkeycar writes reads exactly ------------------------------------------------


def test_a_tub_donkeycar_wrote_reads_as_its_runs_of_undeleted_records(Tub: Any, donkey_tub) -> None:
    tub, put = donkey_tub
    episodes = list(read_episodes(tub, on_error="raise"))
    assert runs(episodes) == RUNS
    sessions = session_ids(tub)
    # Donkeycar's own iterator skips the same deleted records.
    theirs = donkey_records(Tub, tub)
    assert [r["_index"] for r in theirs] == [i for a, b in RUNS for i in range(a, b + 1)]
    by_index = {r["_index"]: r for r in theirs}
    for ep in episodes:
        first, last = ep.metadata["tub"]["first_index"], ep.metadata["tub"]["last_index"]
        s = put[first]["_session"]
        assert ep.episode_id == f"tub:{sessions[s]}:{first:06d}"
        assert set(ep.observation) == {"cam/image_array", "enc/speed", "imu/acl"}  # no user/*, pilot/*, text, bools
        assert ep.action.dtype == np.float32 and ep.action.shape == (last - first + 1, 2)
        assert ep.is_first.tolist() == [True] + [False] * (len(ep) - 1)
        assert ep.is_last.tolist() == [False] * (len(ep) - 1) + [True]
        assert not ep.is_terminal.any() and not ep.reward.any()
        for t, i in enumerate(range(first, last + 1)):
            want = put[i]
            np.testing.assert_array_equal(ep.action[t], np.float32([want["user/angle"], want["user/throttle"]]))
            assert ep.observation["enc/speed"][t] == np.float32(want["enc/speed"])
            np.testing.assert_array_equal(ep.observation["imu/acl"][t], np.float32(want["imu/acl"]))
            meta = {
                "_index": i,
                "_session_id": sessions[s],
                "_timestamp_ms": stamp_ms(i, s),
                "user/mode": want["user/mode"],
                "recording": True,
            }
            if want["pilot/angle"] is not None:
                meta["pilot/angle"] = want["pilot/angle"]
            assert ep.step_metadata[t] == meta
            assert ep.timestamp[t] == stamp_ms(i, s) / 1000
            pixels = np.asarray(ep.observation["cam/image_array"][t])
            assert pixels.dtype == np.uint8 and pixels.shape == (H, W, 3)
            np.testing.assert_array_equal(pixels, donkey_image(tub, by_index[i]))  # what Donkeycar trains on
            assert np.abs(pixels.astype(int) - frame(i)).mean() < 4  # and what the camera saw, up to JPEG
        assert ep.control_hz == pytest.approx(20.0, rel=0.02)  # from the timestamps
        assert ep.metadata["control_hz"] == pytest.approx(20.0, rel=0.02)
        assert ep.metadata["control_role"] == ("policy" if s == 2 else "teleop")
        assert ep.metadata["capabilities"]["action_space"]["low"] == -1.0
        assert ep.metadata["tub"]["metadata"] == {"location": "garage"}
        assert ep.metadata["provenance"]["origin"] == "donkeycar:tub"


def test_several_catalogs_read_the_same_episodes(Tub: Any, donkey_tub, tmp_path: Path) -> None:
    tub, _ = donkey_tub
    small = tmp_path / "small"
    write_donkey_tub(Tub, small, max_catalog_len=5)
    assert manifest_lines(small)[4]["paths"] == [f"catalog_{k}.catalog" for k in range(4)]
    one, four = list(read_episodes(tub, on_error="raise")), list(read_episodes(small, on_error="raise"))
    assert runs(four) == RUNS
    for a, b in zip(one, four, strict=True):
        np.testing.assert_array_equal(a.action, b.action)
        assert [m["_timestamp_ms"] for m in a.step_metadata] == [m["_timestamp_ms"] for m in b.step_metadata]


def test_other_action_keys_can_be_chosen(donkey_tub) -> None:
    tub, put = donkey_tub
    (ep, *_) = read_episodes(tub, on_error="raise", action_keys=["user/throttle"], action_bounds=None)
    np.testing.assert_array_equal(ep.action[:, 0], np.float32([put[i]["user/throttle"] for i in range(3)]))
    (bad,) = list(scan_episodes(tub, action_keys=["user/steering"]))
    assert (bad.error.line, bad.error.field) == (1, "inputs") and "no input 'user/steering'" in bad.error.message


# --- 2. what we write, Donkeycar reads ----------------------------------------------------


def jpeg(pixels: np.ndarray, fmt: str = "JPEG") -> LazyImage:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return LazyImage(data=buf.getvalue(), format=fmt.lower())


def car_episode(n: int, eid: str, t0: float, fmt: str = "JPEG", **meta: Any) -> Episode:
    rows = [
        {
            "observation": {"cam/image_array": jpeg(frame(t + 3), fmt), "enc/speed": 0.5 + t},
            "action": [0.1 * t - 0.3, 0.4],
            "timestamp": t0 + t * 0.05,
        }
        for t in range(n)
    ]
    return Episode.from_steps(
        rows, {"episode_id": eid, "robot_id": "car-7", "provenance": {"origin": "xr_app"}, **meta}
    )


def test_our_tub_loads_in_donkeycars_tub_with_the_same_records_and_images(Tub: Any, tmp_path: Path) -> None:
    episodes = [car_episode(4, "a", T0), car_episode(3, "b", T0 + 30, fmt="PNG"), car_episode(5, "c", T0 + 60)]
    written = write_episodes(episodes, tmp_path / "tub", format="tub")
    assert written.total == 3 and list(written) == [tmp_path / "tub"]
    tub = tmp_path / "tub"
    records = donkey_records(Tub, tub)
    assert len(records) == 12
    sessions = session_ids(tub)
    assert len(sessions) == 3 and len({r["_session_id"] for r in records}) == 3  # one session per episode
    k = 0
    for s, ep in enumerate(episodes):
        for t in range(len(ep)):
            rec = records[k]
            assert rec["_index"] == k and rec["_session_id"] == sessions[s]
            assert rec["_timestamp_ms"] == round(ep.timestamp[t] * 1000)
            assert np.float32([rec["user/angle"], rec["user/throttle"]]).tolist() == ep.action[t].tolist()
            assert np.float32(rec["enc/speed"]) == ep.observation["enc/speed"][t]
            assert rec["user/mode"] == "user"
            ext = "png" if s == 1 else "jpg"
            assert rec["cam/image_array"] == f"{k}_cam_image_array_.{ext}"  # Donkeycar's naming
            np.testing.assert_array_equal(donkey_image(tub, rec), np.asarray(ep.observation["cam/image_array"][t]))
            k += 1
    # Donkeycar can record another drive into it, and we read that one too.
    manifest = manifest_lines(tub)
    more = Tub(str(tub), manifest[0], manifest[1])
    more.write_record({"cam/image_array": frame(0), "user/angle": 0.0, "user/throttle": 0.1, "user/mode": "user"})
    more.close()
    back = list(read_episodes(tub, on_error="raise"))
    assert [len(e) for e in back] == [4, 3, 5, 1]
    for ep, got in zip(episodes, back, strict=False):
        np.testing.assert_array_equal(got.action, ep.action)
        np.testing.assert_array_equal(got.timestamp, ep.timestamp)
        np.testing.assert_array_equal(
            np.asarray(got.observation["cam/image_array"]), np.asarray(ep.observation["cam/image_array"])
        )
        assert got.metadata["robot_id"] == "car-7" and got.metadata["provenance"]["origin"] == "xr_app"
    assert "enc/speed" not in back[3].observation  # that drive did not record it


def test_tub_to_continuon_to_tub_keeps_every_record(donkey_tub, tmp_path: Path) -> None:
    tub, _ = donkey_tub
    for args in (
        (str(tub), str(tmp_path / "cont"), "--format", "continuon"),
        (str(tmp_path / "cont"), str(tmp_path / "again"), "--format", "tub"),
    ):
        out = run_cli("rlds", "convert", *args)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "wrote 5 episodes" in out.stdout
    first, again = list(read_episodes(tub, on_error="raise")), list(read_episodes(tmp_path / "again", on_error="raise"))
    assert manifest_lines(tmp_path / "again")[:3] == manifest_lines(tub)[:3]  # inputs, types, user metadata
    assert [len(e) for e in again] == [len(e) for e in first]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.action, b.action)
        np.testing.assert_array_equal(a.timestamp, b.timestamp)
        for key in a.observation:
            np.testing.assert_array_equal(np.asarray(a.observation[key]), np.asarray(b.observation[key]))
        strip = ("_index", "_session_id")
        assert [{k: v for k, v in m.items() if k not in strip} for m in a.step_metadata] == [
            {k: v for k, v in m.items() if k not in strip} for m in b.step_metadata
        ]
        assert b.metadata["control_role"] == a.metadata["control_role"]


def test_splits_become_tubs_of_their_own_and_come_back(tmp_path: Path) -> None:
    episodes = [car_episode(3, f"e{i}", T0 + i * 10, split="test" if i == 2 else "train") for i in range(3)]
    written = write_episodes(episodes, tmp_path / "out", format="tub")
    assert dict(written.episodes) == {"train": 2, "test": 1}
    assert sorted(p.name for p in written) == ["test", "train"]
    back = list(read_episodes(tmp_path / "out", split="test", on_error="raise"))
    assert len(back) == 1 and back[0].metadata["split"] == "test"
    with pytest.raises(Exception, match="with and without a split"):
        write_episodes([car_episode(2, "x", T0), *episodes[:1]], tmp_path / "mixed", format="tub")
    assert not (tmp_path / "mixed").exists() or not any((tmp_path / "mixed").iterdir())


def test_writer_never_replaces_a_tub_silently_and_says_what_it_cannot_write(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_episodes([car_episode(3, "a", T0), car_episode(2, "b", T0 + 9)], src)
    dst = tmp_path / "dst"
    assert run_cli("rlds", "convert", str(src), str(dst), "--format", "tub").returncode == 0
    before = (dst / "manifest.json").read_bytes()
    again = run_cli("rlds", "convert", str(src), str(dst), "--format", "tub")
    assert again.returncode == 2 and "already holds a Donkeycar tub" in again.stderr and "--overwrite" in again.stderr
    assert (dst / "manifest.json").read_bytes() == before
    replaced = run_cli("rlds", "convert", str(src), str(dst), "--format", "tub", "--overwrite")
    assert replaced.returncode == 0 and f"replaced (--overwrite): {dst}" in replaced.stderr
    assert len(list(read_episodes(dst, on_error="raise"))) == 2
    # No image, or an action that is not two numbers: one clear line, and nothing written.
    write_episodes([make_episode(episode_id="vec")], tmp_path / "vec")
    no_image = run_cli("rlds", "convert", str(tmp_path / "vec"), str(tmp_path / "t1"), "--format", "tub")
    assert no_image.returncode == 2 and "needs an image observation" in no_image.stderr
    assert not (tmp_path / "t1").exists()
    rows = [{"observation": {"cam/image_array": jpeg(frame(0))}, "action": [0.1, 0.2, 0.3]}] * 2
    with pytest.raises(Exception, match=r"2 action numbers a step \(user/angle, user/throttle\)"):
        write_episodes([Episode.from_steps(rows, {"episode_id": "three"})], tmp_path / "t2", format="tub")
    assert not (tmp_path / "t2").exists() or not any((tmp_path / "t2").iterdir())


def test_sim_collect_writes_a_tub_donkeycar_reads(Tub: Any, tmp_path: Path) -> None:
    out = run_cli(
        "sim",
        "collect",
        "--env",
        "drive2d",
        "--episodes",
        "1",
        "--out",
        str(tmp_path / "sim"),
        "--format",
        "tub",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["format"] == "tub" and summary["episodes"] == 1
    assert len(donkey_records(Tub, tmp_path / "sim")) == summary["steps"]
    (ep,) = read_episodes(tmp_path / "sim", on_error="raise")
    assert len(ep) == summary["steps"] and ep.control_hz == pytest.approx(20.0, rel=0.05)
    assert ep.metadata["provenance"]["origin"] == "sim:drive2d"  # the episode's metadata came back
    assert np.asarray(ep.observation["cam/image_array"][0]).shape == (120, 160, 3)


# --- 3. bad tubs: one error naming file, line, record and field; the rest still reads ------


def edit_record(tub: Path, index: int, change: Any) -> None:
    catalog = tub / "catalog_0.catalog"
    lines = catalog.read_text().splitlines()
    rec = json.loads(lines[index])
    lines[index] = change(rec) if callable(change) else change
    catalog.write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n")


def set_manifest(tub: Path, line: int, value: Any) -> None:
    path = tub / "manifest.json"
    lines = path.read_text().splitlines()
    lines[line - 1] = value if isinstance(value, str) else json.dumps(value)
    path.write_text("\n".join(lines) + "\n")


def without(key: str) -> Any:
    return lambda rec: {k: v for k, v in rec.items() if k != key}


def with_(key: str, value: Any) -> Any:
    return lambda rec: {**rec, key: value}


BAD_TUBS = {
    # name: (corrupt(tub, put), record index, field, the run that goes bad)
    "missing image": (
        lambda tub, put: (tub / "images" / "6_cam_image_array_.jpg").unlink(),
        6,
        "cam/image_array",
        (5, 7),
    ),
    "not an image": (
        lambda tub, put: (tub / "images" / "9_cam_image_array_.jpg").write_bytes(b"not a jpeg"),
        9,
        "cam/image_array",
        (8, 10),
    ),
    "malformed catalog line": (
        lambda tub, put: edit_record(tub, 12, lambda rec: json.dumps(rec)[:40]),
        12,
        None,
        (12, 13),
    ),
    "_index disagrees": (lambda tub, put: edit_record(tub, 15, with_("_index", 99)), 15, "_index", (14, 16)),
    "action missing": (lambda tub, put: edit_record(tub, 1, without("user/throttle")), 1, "user/throttle", (0, 2)),
    "throttle out of [-1, 1]": (
        lambda tub, put: edit_record(tub, 13, with_("user/throttle", 1.5)),
        13,
        "user/throttle",
        (12, 13),
    ),
    "timestamp backwards": (
        lambda tub, put: edit_record(tub, 2, with_("_timestamp_ms", stamp_ms(0, 0) - 5)),
        2,
        "_timestamp_ms",
        (0, 2),
    ),
    "observation missing in one record": (
        lambda tub, put: edit_record(tub, 6, without("enc/speed")),
        6,
        "enc/speed",
        (5, 7),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TUBS))
def test_a_bad_record_is_one_error_naming_file_line_record_and_field(case: str, donkey_tub, tmp_path: Path) -> None:
    corrupt, index, field, bad_run = BAD_TUBS[case]
    tub = copy_tub(donkey_tub[0], tmp_path / "tub")
    corrupt(tub, donkey_tub[1])
    results = list(scan_episodes(tub))
    bad = [r for r in results if not r.ok]
    assert len(bad) == 1, [str(r.error) for r in bad]
    err = bad[0].error
    assert err.file == str(tub / "catalog_0.catalog") and err.line == index + 1, str(err)
    assert f"record {index}" in err.message and err.field == field, str(err)
    assert isinstance(bad[0], TubRun) and (bad[0].first, bad[0].last) == bad_run
    assert err.episode == bad[0].key and str(tub) in str(err)
    assert [(r.first, r.last) for r in results if r.ok] == [r for r in RUNS if r != bad_run]  # type: ignore[attr-defined]


def test_an_image_that_does_not_decode_is_named_by_validate(donkey_tub, tmp_path: Path) -> None:
    tub = copy_tub(donkey_tub[0], tmp_path / "tub")
    image = tub / "images" / "7_cam_image_array_.jpg"
    image.write_bytes(image.read_bytes()[:120])  # a JPEG header, then nothing
    report = validate_path(tub).to_json()
    assert report["episodes_ok"] == 4 and report["episodes_bad"] == 1
    (err,) = report["errors"]
    assert err["file"] == str(tub / "catalog_0.catalog") and err["line"] == 8 and err["field"] == "cam/image_array"
    assert "record 7" in err["message"] and "7_cam_image_array_.jpg" in err["message"]


def test_a_manifest_that_disagrees_with_the_catalogs(donkey_tub, tmp_path: Path) -> None:
    # current_index behind the catalogs (a drive cut before Donkeycar updated its manifest):
    # the uncounted record is one error, the run before it still reads.
    tub = copy_tub(donkey_tub[0], tmp_path / "short")
    set_manifest(tub, 5, {**manifest_lines(tub)[4], "current_index": 16})
    results = list(scan_episodes(tub))
    (bad,) = [r for r in results if not r.ok]
    assert bad.error.file == str(tub / "catalog_0.catalog") and bad.error.line == 17
    assert bad.error.field == "current_index" and "records 16..16" in bad.error.message
    assert [(r.first, r.last) for r in results if r.ok] == [*RUNS[:-1], (14, 15)]
    # current_index ahead of them: records are missing.
    tub = copy_tub(donkey_tub[0], tmp_path / "long")
    set_manifest(tub, 5, {**manifest_lines(tub)[4], "current_index": 20})
    results = list(scan_episodes(tub))
    (bad,) = [r for r in results if not r.ok]
    assert (bad.error.file, bad.error.line, bad.error.field) == (str(tub / "manifest.json"), 5, "current_index")
    assert "says 20 records" in bad.error.message and "hold 17" in bad.error.message
    assert len([r for r in results if r.ok]) == 5


def test_a_missing_catalog_is_named_and_the_records_before_it_read(Tub: Any, tmp_path: Path) -> None:
    tub = tmp_path / "tub"
    write_donkey_tub(Tub, tub, max_catalog_len=5)
    (tub / "catalog_2.catalog").unlink()  # records 10..14
    results = list(scan_episodes(tub))
    assert [(r.first, r.last) for r in results if r.ok] == [(0, 2), (5, 7), (8, 9)]
    errors = [r.error for r in results if not r.ok]
    assert errors[0].file == str(tub / "catalog_2.catalog") and errors[0].field == "paths"
    assert "does not exist" in errors[0].message


def test_an_unreadable_manifest_names_its_line_and_the_tub_beside_it_reads(donkey_tub, tmp_path: Path) -> None:
    root = tmp_path / "tubs"
    good = copy_tub(donkey_tub[0], root / "car1")
    broken = copy_tub(donkey_tub[0], root / "car2")
    set_manifest(broken, 2, json.dumps(TYPES[:-1]))
    results = list(scan_episodes(root))
    (bad,) = [r for r in results if not r.ok]
    assert (bad.error.file, bad.error.line, bad.error.field) == (str(broken / "manifest.json"), 2, "types")
    assert "7 types for 8 inputs" in bad.error.message
    assert [e.episode_id.split(":")[0] for e in read_episodes(root, on_error="skip")] == ["car1"] * 5
    assert good.exists()


def test_layout_detection(tmp_path: Path, donkey_tub) -> None:
    store = tmp_path / "slot"
    store.mkdir()
    (store / "manifest.json").write_text(json.dumps({"version": "v1", "components": []}, indent=2))
    assert dir_layout(store) is None  # the model store's manifest.json is not a tub's
    tub = copy_tub(donkey_tub[0], tmp_path / "tub")
    assert dir_layout(tub) == "tub"
    (tub / "metadata.json").write_text("{}")
    (bad,) = list(scan_episodes(tmp_path / "tub"))
    assert (
        "matches two layouts" in str(bad.error) and "Donkeycar tub" in str(bad.error) and "Continuon" in str(bad.error)
    )


# --- 4. quarantine marks deleted, reversibly -------------------------------------------------


def test_quarantine_marks_the_episode_deleted_and_it_can_be_restored(Tub: Any, donkey_tub, tmp_path: Path) -> None:
    tub = copy_tub(donkey_tub[0], tmp_path / "tub")
    (tub / "images" / "6_cam_image_array_.jpg").unlink()
    before = (tub / "manifest.json").read_text().splitlines()
    out = run_cli("rlds", "validate", str(tub), "--json", "--quarantine", str(tmp_path / "q"))
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert report["episodes_bad"] == 1 and report["errors"][0]["line"] == 7
    (reason,) = [Path(p) for p in report["quarantined"]]
    assert (
        reason.parent == tmp_path / "q" and "record 6" in reason.read_text() and "restore_records" in reason.read_text()
    )
    after = (tub / "manifest.json").read_text().splitlines()
    assert after[:4] == before[:4]  # inputs, types, metadata, sessions: byte for byte
    assert json.loads(after[4])["deleted_indexes"] == [3, 4, 5, 6, 7, 11]
    assert len(os.listdir(tub / "images")) == 16 and (tub / "catalog_0.catalog").exists()  # nothing moved
    # Donkeycar sees the records deleted; we read the rest cleanly.
    assert [r["_index"] for r in donkey_records(Tub, tub)] == [0, 1, 2, 8, 9, 10, 12, 13, 14, 15, 16]
    clean = run_cli("rlds", "validate", str(tub), "--json")
    assert clean.returncode == 0 and json.loads(clean.stdout)["episodes_ok"] == 4
    # Donkeycar's own restore undoes it (and the episode is bad again: the image is still gone).
    donkey = Tub(str(tub), INPUTS, TYPES)
    donkey.restore_records([5, 6, 7])
    donkey.close()
    assert manifest_lines(tub)[4]["deleted_indexes"] == [3, 4, 11]
    assert validate_path(tub).episodes_bad == 1
    # ... and so does ours.
    validate_path(tub, quarantine_dir=tmp_path / "q2")
    restore_records(tub, range(5, 8))
    assert manifest_lines(tub)[4]["deleted_indexes"] == [3, 4, 11]


# --- 5. the command line on a tub and a directory of tubs ------------------------------------


def test_info_and_validate_on_a_tub_and_on_a_directory_of_tubs(donkey_tub, tmp_path: Path) -> None:
    tub = donkey_tub[0]
    info = run_cli("rlds", "info", str(tub), "--json")
    assert info.returncode == 0, info.stderr
    got = json.loads(info.stdout)
    assert got["episodes"] == 5 and got["steps"] == 14 and got["episodes_bad"] == 0
    assert got["control_hz"] == [pytest.approx(20.0, rel=0.02)] * len(got["control_hz"])
    assert got["observation"]["cam/image_array"] == {"type": "image", "shape": [H, W, 3], "dtype": "uint8"}
    assert got["action"] == {"type": "tensor", "shape": [2], "dtype": "float32"}
    assert got["origins"] == {"donkeycar:tub": 5}
    # Two cars, each with Donkeycar's default tub name: the episode ids stay apart.
    root = tmp_path / "cars"
    copy_tub(tub, root / "car1" / "data")
    copy_tub(tub, root / "car2" / "data")
    validate = run_cli("rlds", "validate", str(root), "--json")
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert json.loads(validate.stdout) == {
        "episodes_ok": 10,
        "episodes_bad": 0,
        "steps_ok": 28,
        "errors": [],
        "quarantined": [],
    }
    ids = [e.episode_id for e in read_episodes(root, on_error="raise")]
    assert len(set(ids)) == 10 and ids[0].startswith("car1/data:") and ids[-1].startswith("car2/data:")


def test_train_and_the_adaptation_loader_take_a_tub(donkey_tub, tmp_path: Path) -> None:
    from continuonbrain.cli import main
    from continuonbrain.trainer.rlds_loader import make_episode_loader

    tub = donkey_tub[0]
    newest = make_episode_loader()(tub, 2)  # what `adapt` reads: the newest episodes, oldest first
    assert [e.metadata["tub"]["first_index"] for e in newest] == [12, 14]
    components = tiny_components(3, batch=(8, 2, 8), shuffle_buffer=64, mid_window_s=0.1)  # drives of 0.1-0.15 s
    seed_config(
        tmp_path,
        tub,
        name="car.json",
        model=TINY_CAMERA_MODEL,
        components=components,
        normalizer_episodes=3,
        image_keys=["cam/image_array"],
    )
    assert main(["train", "--config", str(tmp_path / "car.json"), "--json"]) == 0
    hope = json.loads((tmp_path / "models" / "candidate" / "config.json").read_text())
    assert hope["image_keys"] == ["cam/image_array"] and hope["image_shapes"] == {"cam/image_array": [H, W, 3]}
    assert hope["state_keys"] == ["enc/speed", "imu/acl"] and hope["action_dim"] == 2
    assert hope["action_low"] == [-1.0, -1.0] and hope["control_hz"] == pytest.approx(20.0, rel=0.02)
