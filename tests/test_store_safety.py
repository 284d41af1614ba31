"""The model store never loses its good brain and never vouches for files it did not verify
(issue 11, items 1, 2 and 4): real files, the real ``continuonbrain models`` command in a child
process, a real BrainService holding a version, a real full tmpfs.

* A dangling ``current`` (``ln -sfn .slots/does-not-exist current``, a half-restored backup)
  makes neither ``models rollback`` nor ``models promote`` delete the version a server serves:
  it is kept in ``history/`` (audited) and can be rolled back to.
* History trimming never removes a version a running server holds.
* ``verify`` refuses a manifest without ``files``, files it does not cover, links and
  subdirectories in a slot, names that are paths; ``current`` out of the model root is refused.
* ``describe`` lists damaged slots instead of failing; a promotion on a full disk raises a
  ``StorageError`` and leaves no half-copied slot behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_store, fill_disk, make_variant

from continuonbrain.models.store import MANIFEST, PromotionStore, StorageError, StoreError, sha256_file
from continuonbrain.runtime.brain_service import BrainService

OBS = np.array([1, 0, 1, 0, 0, 0, 0.5, 0.2, 1.0, 0.0], np.float32)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "continuonbrain", *args], capture_output=True, text=True, timeout=300, check=False
    )


def break_current_link(root: Path) -> None:
    """``ln -sfn .slots/does-not-exist current``: atomically, as ``ln -sfn`` does."""
    tmp = root / ".broken-link"
    os.symlink(".slots/does-not-exist", tmp)
    os.replace(tmp, root / "current")


def versions_on_disk(root: Path) -> dict[str, str]:
    """Every complete version in the store and where it lives (``.slots`` or ``history``)."""
    out = {}
    for place in (".slots", "history"):
        for d in (root / place).glob("*") if (root / place).is_dir() else ():
            if (d / MANIFEST).is_file():
                out[json.loads((d / MANIFEST).read_text())["version"]] = place
    return out


@pytest.fixture
def two_versions(arm_seed, tmp_path: Path) -> tuple[Path, str, str]:
    """A store whose history holds v1 and whose current is v2 (a scaled variant of the seed)."""
    root = copy_store(arm_seed["models"], tmp_path / "models")
    store = PromotionStore(root)
    v1 = store.current_version()
    v2 = make_variant(store, tmp_path, 0.97)
    store.promote({"passed": True, "reason": "v2"})
    return root, v1, v2


def test_rollback_with_a_dangling_current_keeps_the_version_a_server_serves(two_versions) -> None:
    root, v1, v2 = two_versions
    with BrainService(root, watch_interval_s=3600) as service:  # serving v2, not watching the link
        assert service.version == v2
        break_current_link(root)
        r = cli("models", "rollback", "--model-root", str(root), "--json")
        assert r.returncode == 0, r.stderr
        on_disk = versions_on_disk(root)
        assert v2 in on_disk, f"the served version {v2} was deleted: {on_disk}"
        store = PromotionStore(root)
        store.verify(store.slot("current"))
        # Kept in history, so the rollback could restore the served (newest) version.
        assert store.current_version() == v2 and [m["version"] for m in store.history()] == [v1]
        kept = [a for a in store.audit() if a["decision"] == "kept"]
        assert kept and kept[0]["version"] == v2 and "does-not-exist" in kept[0]["reason"]
        assert service.act(OBS).model_version == v2


def test_promote_with_a_dangling_current_keeps_the_last_good_version(two_versions, arm_seed, tmp_path: Path) -> None:
    root, v1, v2 = two_versions
    store = PromotionStore(root)
    v3 = make_variant(store, tmp_path, 0.98, source=root / ".slots" / v2)
    break_current_link(root)
    r = cli("models", "promote", "--model-root", str(root), "--rlds-dir", str(arm_seed["episodes"]), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert store.current_version() == v3
    assert [m["version"] for m in store.history()] == [v2, v1]  # v2 kept, not deleted
    for m in store.history():
        store.verify(root / "history" / m["version"])
    assert not (root / ".slots" / "does-not-exist").exists()


def test_history_trimming_never_removes_a_version_a_server_holds(two_versions, tmp_path: Path) -> None:
    root, v1, v2 = two_versions
    store = PromotionStore(root, max_history=1)
    with BrainService(root, watch_interval_s=3600) as service:  # holds v2 while others are promoted
        assert service.version == v2
        for i in range(3):
            make_variant(store, tmp_path, 0.9 - 0.01 * i)
            store.promote({"passed": True})
        history = [m["version"] for m in store.history()]
        assert v2 in history, "the served version was trimmed"
        assert v1 not in history  # nobody serves v1: trimmed as usual
    make_variant(store, tmp_path, 0.8)
    store.promote({"passed": True})  # the server stopped: its lease is gone, v2 may go now
    assert v2 not in [m["version"] for m in store.history()]


def _slot_with(tmp_path: Path, damage: str) -> Path:
    """A real slot (weights, config, manifest with sha256) and then one kind of damage."""
    store = PromotionStore(tmp_path / "m")
    src = tmp_path / "src"
    src.mkdir()
    (src / "fast_loop.safetensors").write_bytes(b"\x00" * 64 + b"weights")
    (src / "config.json").write_text("{}")
    store.write_slot("candidate", sorted(src.iterdir()), components=["fast_loop"], kind="hope-seed")
    slot = store.slot("candidate")
    manifest = json.loads((slot / MANIFEST).read_text())
    if damage == "no files key, flipped byte":
        del manifest["files"]
        data = bytearray((slot / "fast_loop.safetensors").read_bytes())
        data[3] ^= 0xFF
        (slot / "fast_loop.safetensors").write_bytes(bytes(data))
    elif damage == "empty files":
        manifest["files"] = {}
    elif damage == "unlisted adapter":
        (slot / "adapter_config.json").write_text('{"r": 4}')
    elif damage == "subdirectory":
        (slot / "extra").mkdir()
    elif damage == "link inside":
        (slot / "adapter_model.safetensors").symlink_to("/etc/hostname")
        manifest["files"]["adapter_model.safetensors"] = sha256_file(Path("/etc/hostname"))
    elif damage == "path as name":
        manifest["files"]["../../outside"] = "0" * 64
    elif damage == "not a digest":
        manifest["files"]["config.json"] = "abc"
    elif damage == "not an object":
        manifest = ["version"]
    (slot / MANIFEST).write_text(json.dumps(manifest))
    return slot


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        ("no files key, flipped byte", "lists no files"),
        ("empty files", "lists no files"),
        ("unlisted adapter", "adapter_config.json not covered"),
        ("subdirectory", "not a regular file"),
        ("link inside", "is a link"),
        ("path as name", "not a file name"),
        ("not a digest", "not a sha256"),
        ("not an object", "not an object"),
    ],
)
def test_verify_refuses_anything_the_manifest_does_not_cover(tmp_path: Path, damage: str, why: str) -> None:
    slot = _slot_with(tmp_path, damage)
    with pytest.raises(StoreError, match=why):
        PromotionStore(tmp_path / "m").verify(slot)


def test_a_current_link_out_of_the_model_root_is_refused(two_versions, tmp_path: Path) -> None:
    root, _, v2 = two_versions
    outside = tmp_path / "elsewhere"
    shutil.copytree(root / ".slots" / v2, outside)  # a complete, matching slot, but not the store's
    tmp = root / ".out-link"
    os.symlink(str(outside), tmp)
    os.replace(tmp, root / "current")
    store = PromotionStore(root)
    with pytest.raises(StoreError, match="outside the model root"):
        store.slot_dir("current")
    assert store.current_version() is None
    with BrainService(root, fallback=False) as service:
        assert service.version is None
        assert "outside the model root" in service.status()["refused"][-1]["reason"]


def test_describe_lists_damaged_slots_instead_of_failing(two_versions, tmp_path: Path) -> None:
    root, v1, v2 = two_versions
    store = PromotionStore(root)
    make_variant(store, tmp_path, 0.9)
    for slot in (root / "candidate", root / "current", root / "history" / v1):
        (slot / MANIFEST).write_text("{ not json")
    info = store.describe()
    assert info["current"]["broken"] and info["candidate"]["broken"]
    assert {(b["slot"], b["version"]) for b in info["broken"]} == {
        ("current", v2),
        ("candidate", None),
        ("history", v1),
    }
    assert all("unreadable manifest" in b["reason"] for b in info["broken"])
    assert store.current_version() is None
    assert json.loads(json.dumps(info, default=str))  # JSON-safe, as the API returns it
    r = cli("models", "list", "--model-root", str(root))
    assert r.returncode == 0 and "BROKEN" in r.stdout, r.stdout + r.stderr


def test_promotion_on_a_full_disk_leaves_no_half_slot_and_current_untouched(arm_seed, small_tmpfs: Path) -> None:
    root = copy_store(arm_seed["models"], small_tmpfs / "models")
    store = PromotionStore(root)
    before = store.current_version()
    make_variant(store, small_tmpfs, 0.97)
    size = sum(f.stat().st_size for f in store.slot("candidate").iterdir())
    fill_disk(small_tmpfs, leave=size // 2)
    with pytest.raises(StorageError, match="disk is full") as err:
        store.promote({"passed": True})
    assert err.value.disk_full
    assert not [p.name for p in (root / ".slots").iterdir() if p.name.startswith(".")], "a half-copied slot is left"
    assert store.current_version() == before
    store.verify(store.slot("current"))
    (small_tmpfs / "filler").unlink()
    store.promote({"passed": True})  # with room again, the same candidate goes through
    assert store.current_version() != before
