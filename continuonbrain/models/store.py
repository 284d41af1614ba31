"""The model store: ``candidate/``, ``current/``, ``history/<version>/`` and ``audit.jsonl``.

The one place that knows the store's layout; the runtime, the simulators and the trainers all
go through it. It imports the standard library and :mod:`continuonbrain.fsutil` only (no torch,
no numpy), so a server or a dry run can read, verify and rotate slots without a model
framework. Layout (README "The model store and the
promotion gate")::

    <model_root>/candidate/            newest trained weights, not yet trusted
    <model_root>/current/              what BrainService serves (a link to .slots/<version>/)
    <model_root>/history/<version>/    earlier currents
    <model_root>/rejected/<version>/   candidates the gate refused (with gate.json)
    <model_root>/audit.jsonl           one line per promotion decision
    <model_root>/evaluations.jsonl     one line per closed-loop evaluation of a version
    <model_root>/.serving/             one lease per running server

Each slot holds ``manifest.json`` (version id, parent version, created time, component list,
file -> sha256, training metrics, gate result), weights as ``.safetensors``, the model config
as JSON, and adapters as ``adapter_config.json`` + ``adapter_model.safetensors``. No pickle.

Crash safety. A slot is always built complete under a hidden temporary name first.
``current`` is a symbolic link to ``.slots/<version>/``: promotion and rollback replace the
link with one ``rename(2)``, which is atomic, so at every instant ``current/`` is a complete,
loadable model (the old one or the new one), whatever kills the process. The steps around the
swap (moving the old current to ``history/``, removing the candidate, the audit line) are
recorded in a journal (``.journal.json``) before they start; the next writer finishes or undoes
an interrupted operation (:meth:`PromotionStore.recover`). Readers never need recovery.

What is never lost. The store deletes a version's files in exactly three cases: a half-copied
stage (``.slots/.<version>.tmp``), a second copy of a version that another slot holds intact,
and history beyond ``max_history`` (oldest first). Nothing is deleted because a link is broken:
a complete version in ``.slots/`` that ``current`` does not name (a dangling link after a
half-restored backup, a hand-edited store) is moved to ``history/``, where it can be rolled
back to. A version that a running BrainService has loaded is never deleted at all: servers
leave a lease in ``.serving/`` (:meth:`ModelStore.write_lease`).

What is trusted. :meth:`ModelStore.verify` accepts a slot only if its manifest lists every file
in it with a sha256 that matches: a manifest without ``files``, a file it does not cover, a
subdirectory or a symbolic link inside the slot, or a ``current`` link that leads outside the
model root all mean refusal, because each would let bytes nobody checked reach the loader.

Why one module of 839 lines: it is, by design, the one place that knows the store's layout;
:class:`ModelStore` (reading, verifying, leases) and :class:`PromotionStore` (promotion,
rollback, the journal and its recovery) must agree on every path and on the crash-safety
rules above.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from continuonbrain.fsutil import fsync_dir, fsync_file

log = logging.getLogger(__name__)

__all__ = [
    "CRASH_ENV",
    "JOURNAL",
    "MANIFEST",
    "PROMOTION_STEPS",
    "SERVING_DIR",
    "SLOTS",
    "ModelStore",
    "PromotionStore",
    "StorageError",
    "StoreError",
    "crash_point",
    "is_disk_full",
    "new_version",
    "sha256_file",
]

SLOTS = ("candidate", "current")
MANIFEST = "manifest.json"
JOURNAL = ".journal.json"
#: Where running servers record the version they have loaded (one small JSON file each).
SERVING_DIR = ".serving"
#: Test hook: the name of a promotion step at which the process SIGKILLs itself.
CRASH_ENV = "CONTINUONBRAIN_CRASH_AT"
PROMOTION_STEPS = ("staged", "journaled", "swapped", "history_moved", "candidate_removed", "audited")


def crash_point(step: str) -> None:
    """Die here, for real, when the crash-injection test asks for it."""
    if os.environ.get(CRASH_ENV) == step:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def new_version() -> str:
    """Sortable by creation time, unique across processes: ``20261122T001500Z-1a2b3c``."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:6]


class StoreError(RuntimeError):
    """A slot is missing, incomplete or does not match its manifest."""


class StorageError(StoreError):
    """The disk refused a write (full, read-only, I/O error); nothing half-written was left behind."""

    def __init__(self, message: str, *, disk_full: bool = False):
        super().__init__(message)
        self.disk_full = disk_full


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT, also inside the error list of a ``shutil.Error``."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, shutil.Error) and "No space left on device" in str(exc)


def _inside(path: Path, root: Path) -> bool:
    """True when the resolved ``path`` is ``root`` or below it (both resolved)."""
    return path == root or root in path.parents


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _check_file_name(directory: Path, name: Any) -> None:
    """A manifest names files *in* its slot: a plain name, never a path that leads elsewhere."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..", MANIFEST)
        or "/" in name
        or "\\" in name
        or "\0" in name
    ):
        raise StoreError(f"{directory}: the manifest lists {name!r}, which is not a file name in the slot")


class ModelStore:
    """Reading, verifying and writing slots; the audit log; the servers' leases."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # -- paths

    def slot(self, name: str) -> Path:
        if name not in SLOTS:
            raise ValueError(f"unknown slot {name!r} (expected one of {SLOTS})")
        return self.root / name

    def history_dir(self) -> Path:
        return self.root / "history"

    def slot_dir(self, name: str) -> Path | None:
        """The directory slot ``name`` holds (links resolved), or None when the slot is absent.

        Raises :class:`StoreError` for a link that leads nowhere (a half-restored backup) or out
        of the model root: a store only ever links inside itself, so a link elsewhere would
        serve files this store never wrote or verified.
        """
        path = self.slot(name)
        if not path.is_symlink():
            return path if path.is_dir() else None
        return self.check_inside(path.parent / os.readlink(path), what=f"{name} -> {os.readlink(path)}")

    def check_inside(self, directory: str | os.PathLike, what: str | None = None) -> Path:
        """``directory`` resolved, if it exists and lies inside the model root; else StoreError."""
        target = Path(directory).resolve()
        what = what or str(directory)
        if not target.is_dir():
            raise StoreError(f"{self.root}: {what} is a dangling link (no such directory)")
        if not _inside(target, self.root.resolve()):
            raise StoreError(f"{self.root}: {what} leads outside the model root ({target}): refused")
        return target

    # -- manifests and verification

    def manifest(self, slot: str | Path) -> dict[str, Any] | None:
        """The parsed ``manifest.json`` of a slot name or directory (None when there is none).

        Raises :class:`StoreError` when it cannot be read or is not a JSON object."""
        path = (self.slot(slot) if isinstance(slot, str) else Path(slot)) / MANIFEST
        try:
            doc = json.loads(path.read_text())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreError(f"{path}: unreadable manifest ({exc})") from None
        if not isinstance(doc, dict):
            raise StoreError(f"{path}: unreadable manifest (a JSON {type(doc).__name__}, not an object)")
        return doc

    def verify(self, directory: str | os.PathLike) -> dict[str, Any]:
        """Check every file of a slot against the sha256 in its manifest; return the manifest.

        Refused (:class:`StoreError`): no manifest; one without a non-empty ``files`` map (it
        would verify nothing); a listed name that is not a plain file name; a file in the slot
        that the manifest does not list (the loader reads ``config.json`` and adapters by name,
        so an unlisted file would be used unverified); a subdirectory or a link inside the
        slot; a listed file that is missing or whose sha256 differs.
        """
        directory = Path(directory)
        manifest = self.manifest(directory)
        if manifest is None:
            raise StoreError(f"{directory}: no {MANIFEST}")
        listed = self._listed_files(directory, manifest)
        present = self._slot_files(directory)
        unlisted = sorted(set(present) - set(listed))
        if unlisted:
            raise StoreError(
                f"{directory}: {', '.join(unlisted)} not covered by the manifest (every file of a slot must be listed)"
            )
        for name, digest in listed.items():
            if name not in present:
                raise StoreError(f"{directory}: {name} is listed in the manifest but missing")
            actual = sha256_file(directory / name)
            if actual != digest:
                raise StoreError(f"{directory}: {name} has sha256 {actual[:12]}…, the manifest says {digest[:12]}…")
        return manifest

    @staticmethod
    def _listed_files(directory: Path, manifest: dict[str, Any]) -> dict[str, str]:
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            raise StoreError(f"{directory}: the manifest lists no files (no 'files' map): nothing could be verified")
        for name, digest in files.items():
            _check_file_name(directory, name)
            if not _is_digest(digest):
                raise StoreError(f"{directory}: the manifest's sha256 for {name} is not a sha256 ({digest!r})")
        return files

    @staticmethod
    def _slot_files(directory: Path) -> set[str]:
        """Names of the regular files in a slot (the manifest aside); StoreError for anything else."""
        names = set()
        for entry in directory.iterdir():
            if entry.name == MANIFEST:
                continue
            if entry.is_symlink():
                raise StoreError(f"{directory}: {entry.name} is a link (a slot holds its own files only)")
            if not entry.is_file():
                raise StoreError(f"{directory}: {entry.name} is not a regular file (a slot holds files only)")
            names.add(entry.name)
        return names

    def file_signature(self, directory: str | os.PathLike) -> dict[str, tuple[int, int]]:
        """``{name: (size, mtime_ns)}`` of every entry of a slot: a cheap change detector, so that
        a server can re-check the files it serves every second and hash them only on a change."""
        out = {}
        for entry in os.scandir(directory):
            st = entry.stat(follow_symlinks=False)
            out[entry.name] = (st.st_size, st.st_mtime_ns)
        return out

    def read_slot(self, directory: Path, *, version_hint: str | None = None) -> dict[str, Any]:
        """A slot's manifest for display, never raising: a slot whose manifest cannot be read is
        shown as ``{"version": <hint>, "broken": true, "reason": ...}`` (status pages must answer
        even when a slot is damaged; that is when they matter most)."""
        try:
            manifest = self.manifest(directory)
        except StoreError as exc:
            return {"version": version_hint, "broken": True, "reason": str(exc), "directory": str(directory)}
        if manifest is None:
            return {"version": version_hint, "broken": True, "reason": f"{directory}: no {MANIFEST}"}
        return manifest

    # -- history and audit

    def history(self, include_broken: bool = False) -> list[dict[str, Any]]:
        """Earlier currents, newest first. ``include_broken``: also the entries whose manifest
        cannot be read (as :meth:`read_slot` shows them), after the readable ones."""
        good, broken = [], []
        if self.history_dir().is_dir():
            for d in self.history_dir().iterdir():
                if d.name.startswith(".") or not d.is_dir():
                    continue
                entry = self.read_slot(d, version_hint=d.name)
                (broken if entry.get("broken") else good).append(entry)
        good.sort(key=lambda m: _created(m), reverse=True)
        return good + sorted(broken, key=lambda m: str(m["version"])) if include_broken else good

    def audit(self, last: int | None = None) -> list[dict[str, Any]]:
        return self._read_lines("audit.jsonl", last)

    def append_audit(self, record: dict[str, Any]) -> None:
        """One durable line in ``audit.jsonl``; OSError (a full disk) is the caller's to handle."""
        self._append_line("audit.jsonl", record)

    # -- closed-loop evaluations

    def record_evaluation(self, record: dict[str, Any]) -> None:
        """One durable line in ``evaluations.jsonl``: how a version did in a simulator
        (``continuonbrain eval``, the demo), keyed by its ``version``. OSError is the caller's."""
        self._append_line("evaluations.jsonl", record)

    def evaluations(self, per_version: int | None = 20) -> dict[str, list[dict[str, Any]]]:
        """The recorded evaluations by version, oldest first (the newest ``per_version`` of each)."""
        by_version: dict[str, list[dict[str, Any]]] = {}
        for record in self._read_lines("evaluations.jsonl"):
            if isinstance(record.get("version"), str):
                by_version.setdefault(record["version"], []).append(record)
        if per_version:
            by_version = {v: records[-per_version:] for v, records in by_version.items()}
        return by_version

    def _read_lines(self, name: str, last: int | None = None) -> list[dict[str, Any]]:
        path = self.root / name
        if not path.exists():
            return []
        lines = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a power cut
            if isinstance(record, dict):
                lines.append(record)
        return lines[-last:] if last else lines

    def _append_line(self, name: str, record: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"time": datetime.now(UTC).isoformat(), **record}, default=str) + "\n"
        path = self.root / name
        torn = path.exists() and path.stat().st_size > 0 and not _ends_with_newline(path)
        with path.open("a") as f:
            f.write(("\n" if torn else "") + line)  # never glue a line onto one a power cut tore
            f.flush()
            os.fsync(f.fileno())

    # -- servers' leases

    def write_lease(self, lease_id: str, version: str, directory: str | os.PathLike) -> None:
        """Record that this process serves ``version`` from ``directory``, so that no writer
        deletes it (history trimming, duplicate removal) while it is loaded. Best effort: a
        read-only store simply has no leases."""
        lease_dir = self.root / SERVING_DIR
        record = {
            "version": version,
            "directory": str(directory),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(UTC).isoformat(),
        }
        try:
            lease_dir.mkdir(exist_ok=True)
            tmp = lease_dir / f".{lease_id}.tmp"
            tmp.write_text(json.dumps(record))
            os.replace(tmp, lease_dir / f"{lease_id}.json")
        except OSError as exc:
            log.debug("cannot write serving lease in %s: %s", lease_dir, exc)

    def drop_lease(self, lease_id: str) -> None:
        with contextlib.suppress(OSError):
            (self.root / SERVING_DIR / f"{lease_id}.json").unlink()

    def served_versions(self) -> set[str]:
        """Versions that live servers hold (leases of processes that died are removed)."""
        lease_dir = self.root / SERVING_DIR
        if not lease_dir.is_dir():
            return set()
        host, out = socket.gethostname(), set()
        for path in lease_dir.glob("*.json"):
            try:
                lease = json.loads(path.read_text())
                version, pid = str(lease["version"]), int(lease["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if lease.get("host") == host and not _pid_alive(pid):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            out.add(version)  # alive here, or on another host sharing the store: keep it
        return out

    # -- writing a slot

    def write_slot(
        self,
        slot: str,
        files: Iterable[Path],
        *,
        components: list[str],
        kind: str,
        metrics: dict[str, Any] | None = None,
        version: str | None = None,
        parent: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Copy ``files`` into a fresh ``slot`` directory with a manifest, atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.slot(slot)
        staging = self.root / f".{slot}.staging-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            digests = {}
            for src in files:
                dst = staging / src.name
                shutil.copy2(src, dst)
                digests[src.name] = sha256_file(dst)
            manifest = {
                "version": version or new_version(),
                "parent": parent,
                "kind": kind,
                "created": datetime.now(UTC).isoformat(),
                "created_unix": time.time(),
                "host": socket.gethostname(),
                "components": components,
                "files": digests,
                "metrics": metrics or {},
                "gate": None,
                **(extra or {}),
            }
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
            for p in staging.iterdir():
                fsync_file(p)
            fsync_dir(staging)
            self._swap_in(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return manifest

    def _swap_in(self, staging: Path, target: Path) -> None:
        """Replace ``target`` by ``staging``: the old one is renamed aside first, then deleted."""
        old = None
        if target.exists():
            old = self.root / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(staging, target)
        fsync_dir(self.root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


class PromotionStore(ModelStore):
    """Promotion, rejection, rollback and history on top of the slots (see the module doc)."""

    def __init__(self, root: str | os.PathLike, max_history: int = 10):
        super().__init__(root)
        self.max_history = max_history

    # -- reading

    def current_version(self) -> str | None:
        """The version ``current`` names, or None when there is no readable current (absent,
        a dangling link, a link out of the store, an unreadable manifest)."""
        try:
            directory = self.slot_dir("current")
            manifest = self.manifest(directory) if directory is not None else None
        except StoreError:
            return None
        version = manifest.get("version") if manifest else None
        return str(version) if version is not None else None

    def describe(self, audit: int = 50) -> dict[str, Any]:
        """Slots, history and the newest ``audit`` decisions (0: none, without reading the log).

        Never raises for a damaged store: a slot that cannot be read is listed with
        ``"broken": true`` and its reason, and every such slot is also under ``"broken"``."""
        current = self._current_view()
        candidate = self._candidate_view()
        history = self.history(include_broken=True)
        broken = [
            {"slot": name, "version": entry.get("version"), "reason": entry["reason"]}
            for name, entry in (("current", current), ("candidate", candidate))
            if entry and entry.get("broken")
        ] + [
            {"slot": "history", "version": m.get("version"), "reason": m["reason"]} for m in history if m.get("broken")
        ]
        return {
            "model_root": str(self.root),
            "candidate": candidate,
            "current": current,
            "history": history,
            "broken": broken,
            "audit": self.audit(last=audit) if audit else [],
        }

    def _current_view(self) -> dict[str, Any] | None:
        link = self.slot("current")
        if not link.is_symlink() and not link.exists():
            return None
        hint = os.path.basename(os.readlink(link)) if link.is_symlink() else None
        try:
            directory = self.slot_dir("current")
        except StoreError as exc:
            return {"version": hint, "broken": True, "reason": str(exc)}
        if directory is None:
            return None
        return self.read_slot(directory, version_hint=hint or directory.name)

    def _candidate_view(self) -> dict[str, Any] | None:
        directory = self.slot("candidate")
        return self.read_slot(directory) if directory.is_dir() else None

    # -- writing

    def promote(self, gate: dict[str, Any]) -> dict[str, Any]:
        """Install the candidate as current (the gate passed): the old current goes to history.

        The candidate is verified, then copied to ``.slots/<version>`` under a temporary name;
        a write that fails there (a full disk) removes the copy and raises
        :class:`StorageError` with the current untouched."""
        self.recover()
        candidate = self.slot("candidate")
        manifest = self.verify(candidate)
        version = str(manifest["version"])
        slots = self.root / ".slots"
        staged = slots / version
        old = self._current_name()
        if old == version:
            raise StoreError(f"the candidate is version {version}, which is already current")
        if staged.exists():
            if version in self.served_versions():
                raise StoreError(f"version {version} is being served from {staged}: it cannot be staged again")
            shutil.rmtree(staged)  # a leftover copy of this very version (recover() kept it)
        manifest = {**manifest, "gate": gate, "promoted": datetime.now(UTC).isoformat()}
        self._stage(candidate, slots, version, manifest)
        crash_point("staged")
        self._write_journal({"op": "promote", "new": version, "old": old, "gate": gate})
        crash_point("journaled")
        self._point_current_at(staged)
        crash_point("swapped")
        self._finish(self._read_journal())
        return manifest

    def _stage(self, candidate: Path, slots: Path, version: str, manifest: dict[str, Any]) -> None:
        """Copy the candidate's files to ``.slots/<version>`` (via a temporary name) with the
        promoted manifest, durably; on any failure the temporary copy is removed."""
        tmp = slots / f".{version}.tmp"
        try:
            slots.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for name in manifest["files"]:
                shutil.copy2(candidate / name, tmp / name)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
            for f in tmp.iterdir():
                fsync_file(f)
            os.replace(tmp, slots / version)
            fsync_dir(slots)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            full = is_disk_full(exc)
            why = "the disk is full" if full else f"{type(exc).__name__}: {exc}"
            raise StorageError(
                f"cannot stage candidate {version} in {slots}: {why}; current is unchanged", disk_full=full
            ) from exc

    def reject(self, gate: dict[str, Any]) -> Path:
        """Keep a failed candidate aside for inspection (``rejected/<version>``); current untouched."""
        self.recover()
        candidate = self.slot("candidate")
        try:
            manifest = self.manifest(candidate) or {"version": new_version()}
        except StoreError:
            manifest = {"version": new_version(), "unreadable_manifest": True}
        dest = self.root / "rejected" / str(manifest.get("version") or new_version())
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        if candidate.exists():
            os.replace(candidate, dest)
            try:
                (dest / "gate.json").write_text(json.dumps(gate, indent=2, default=str) + "\n")
            except OSError as exc:  # the verdict is in the audit line too
                log.warning("cannot write %s: %s", dest / "gate.json", exc)
        record = {
            "decision": "rejected",
            "version": manifest.get("version"),
            "current": self.current_version(),
            "files": manifest.get("files", {}),  # sha256 of what was rejected, as for promotions
            **gate,
        }
        try:
            self.append_audit(record)
        except OSError as exc:
            raise StorageError(
                f"candidate {record['version']} was rejected and moved to {dest}, but the audit line "
                f"could not be written: {exc}",
                disk_full=is_disk_full(exc),
            ) from exc
        return dest

    def rollback(self, version: str | None = None) -> dict[str, Any]:
        """Make ``history/<version>`` (default: the newest one that verifies) current again."""
        self.recover()
        hist = self.history()
        if not hist:
            raise StoreError("no earlier version in history to roll back to")
        if version is None:
            version = self._newest_good_history(hist)
        src = self.history_dir() / version
        if not src.is_dir():
            raise StoreError(f"version {version} is not in history (have {[m['version'] for m in hist]})")
        self.verify(src)
        slots = self.root / ".slots"
        slots.mkdir(parents=True, exist_ok=True)
        self._write_journal({"op": "rollback", "new": version, "old": self._current_name()})
        os.replace(src, slots / version)
        fsync_dir(slots)
        self._point_current_at(slots / version)
        self._finish(self._read_journal())
        return self.manifest("current") or {}

    def _newest_good_history(self, hist: list[dict[str, Any]]) -> str:
        errors = []
        for m in hist:
            try:
                self.verify(self.history_dir() / str(m["version"]))
            except StoreError as exc:
                errors.append(str(exc))
                continue
            return str(m["version"])
        raise StoreError(f"no history version verifies: {'; '.join(errors)}")

    def recover(self) -> None:
        """Finish or undo an operation a crash interrupted, then tidy ``.slots/`` (idempotent)."""
        journal = self._read_journal()
        if journal is not None:
            target = self._current_target()
            if target is not None and target.name == journal["new"]:
                self._finish(journal)  # the swap happened: complete the bookkeeping
            else:
                if journal["op"] == "rollback" and (self.root / ".slots" / journal["new"]).exists():
                    self.history_dir().mkdir(parents=True, exist_ok=True)
                    os.replace(self.root / ".slots" / journal["new"], self.history_dir() / journal["new"])
                self.append_audit({"decision": "interrupted", "op": journal["op"], "version": journal["new"]})
                (self.root / JOURNAL).unlink(missing_ok=True)
        self._collect_slots()
        for leftover in self.root.glob(".current.tmp-*"):
            leftover.unlink(missing_ok=True)

    # -- internals

    def _collect_slots(self) -> None:
        """Tidy ``.slots/``: delete only what is provably garbage, keep everything else.

        Per entry that ``current`` does not name: a half-copied stage (``.<v>.tmp``) is
        deleted; a second copy of a version that the candidate slot or history holds intact is
        deleted unless a server has it loaded; any other complete version is moved to
        ``history/`` (audited), never deleted, whatever state the ``current`` link is in."""
        slots = self.root / ".slots"
        if not slots.is_dir():
            return
        target = self._current_target()
        served = self.served_versions()
        for d in sorted(slots.iterdir()):
            if target is not None and d.resolve() == target:
                continue
            if d.name.startswith("."):
                shutil.rmtree(d, ignore_errors=True)  # a stage that never completed
                continue
            if d.name not in served and self._held_elsewhere(d.name):
                shutil.rmtree(d, ignore_errors=True)
                continue
            if not (self.history_dir() / d.name).exists():
                self._keep_in_history(d, target)

    def _held_elsewhere(self, version: str) -> bool:
        """True when the candidate slot or ``history/`` holds ``version`` complete and verified."""
        places = [self.history_dir() / version]
        try:
            cand = self.manifest("candidate") if self.slot("candidate").is_dir() else None
        except StoreError:
            cand = None
        if cand is not None and cand.get("version") == version:
            places.append(self.slot("candidate"))
        for place in places:
            if place.is_dir():
                try:
                    self.verify(place)
                except StoreError:
                    continue
                return True
        return False

    def _keep_in_history(self, directory: Path, target: Path | None) -> None:
        """Move a complete version nothing names from ``.slots/`` to ``history/`` (and say so)."""
        self.history_dir().mkdir(parents=True, exist_ok=True)
        os.replace(directory, self.history_dir() / directory.name)
        fsync_dir(self.history_dir())
        link = self.slot("current")
        named = os.readlink(link) if link.is_symlink() else ("a directory" if link.exists() else "nothing")
        reason = f"in .slots/ but not named by current (current -> {named}): kept in history/, not deleted"
        log.warning("model store %s: version %s %s", self.root, directory.name, reason)
        with contextlib.suppress(OSError):
            self.append_audit({"decision": "kept", "version": directory.name, "reason": reason})

    def _current_target(self) -> Path | None:
        """The directory ``current`` names (resolved), or None when it names no usable one."""
        try:
            return self.slot_dir("current")
        except StoreError:
            return None

    def _current_name(self) -> str | None:
        """The ``.slots/`` name of what ``current`` holds now (for the journal's ``old``): the
        link's target, or the version of a plain-directory current (adopted into ``.slots/``
        under that name by :meth:`_point_current_at`); None when current is absent or broken."""
        target = self._current_target()
        if target is None:
            return None
        if target.parent.resolve() == (self.root / ".slots").resolve():
            return target.name
        try:
            manifest = self.manifest(target)
        except StoreError:
            return None
        return str(manifest["version"]) if manifest and manifest.get("version") else None

    def _point_current_at(self, target: Path) -> None:
        link = self.slot("current")
        if link.is_dir() and not link.is_symlink():  # a store from before links: adopt it
            try:
                manifest = self.manifest(link) or {"version": new_version()}
            except StoreError:
                manifest = {"version": new_version()}
            adopted = self.root / ".slots" / str(manifest["version"])
            os.replace(link, adopted)
        tmp = self.root / f".current.tmp-{uuid.uuid4().hex[:8]}"
        os.symlink(os.path.relpath(target, self.root), tmp)
        os.replace(tmp, link)
        fsync_dir(self.root)

    def _write_journal(self, record: dict[str, Any]) -> None:
        tmp = self.root / (JOURNAL + ".tmp")
        tmp.write_text(json.dumps(record, default=str))
        fsync_file(tmp)
        os.replace(tmp, self.root / JOURNAL)
        fsync_dir(self.root)

    def _read_journal(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.root / JOURNAL).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _finish(self, journal: dict[str, Any] | None) -> None:
        """After the swap: old current to history, candidate removed, audit line, history trimmed.

        An audit line the disk refuses leaves the journal in place, so that the next writer
        writes it (the swap itself is done and is not undone)."""
        if journal is None:
            return
        slots = self.root / ".slots"
        old = journal.get("old")
        if old and old != journal["new"] and (slots / old).exists():
            self.history_dir().mkdir(parents=True, exist_ok=True)
            dest = self.history_dir() / old
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(slots / old, dest)
            fsync_dir(self.history_dir())
        crash_point("history_moved")
        if journal["op"] == "promote":
            try:
                cand = self.manifest("candidate") if self.slot("candidate").exists() else None
            except StoreError:
                cand = None
            if cand is not None and cand.get("version") == journal["new"]:
                trash = self.root / f".candidate.old-{uuid.uuid4().hex[:8]}"
                os.replace(self.slot("candidate"), trash)
                shutil.rmtree(trash, ignore_errors=True)
        crash_point("candidate_removed")
        decision = "promoted" if journal["op"] == "promote" else "rolled_back"
        last = self.audit(last=1)
        if not (last and last[0].get("decision") == decision and last[0].get("version") == journal["new"]):
            record = {
                "decision": decision,
                "version": journal["new"],
                "previous": old,
                "files": (self.manifest("current") or {}).get("files", {}),
                **(journal.get("gate") or {}),
            }
            try:
                self.append_audit(record)
            except OSError as exc:
                log.error(
                    "%s of %s done, but its audit line could not be written (%s); kept in %s",
                    decision,
                    journal["new"],
                    exc,
                    JOURNAL,
                )
                return
        crash_point("audited")
        (self.root / JOURNAL).unlink(missing_ok=True)
        self._trim_history()

    def _trim_history(self) -> None:
        """Drop history beyond ``max_history`` (oldest first), except versions a server holds.
        Only called right after a promotion or rollback installed a verified current, so the
        last good version is never among what is dropped."""
        served = self.served_versions()
        for m in self.history()[self.max_history :]:
            if str(m["version"]) not in served:
                shutil.rmtree(self.history_dir() / str(m["version"]), ignore_errors=True)


def _created(manifest: dict[str, Any]) -> float:
    value = manifest.get("created_unix", 0)
    return float(value) if isinstance(value, int | float) else 0.0


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
