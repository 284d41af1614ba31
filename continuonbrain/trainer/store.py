"""The model store: ``candidate/``, ``current/``, ``history/<version>/`` and ``audit.jsonl``.

Layout (DESIGN.md contract)::

    <model_root>/candidate/            newest trained weights, not yet trusted
    <model_root>/current/              what BrainService serves
    <model_root>/history/<version>/    earlier currents
    <model_root>/audit.jsonl           one line per promotion decision

Each slot holds ``manifest.json`` (version id, parent version, created time, component list,
file -> sha256, training metrics, gate result), weights as ``.safetensors``, the model config
as JSON, and adapters as ``adapter_config.json`` + ``adapter_model.safetensors``. No pickle.

Crash safety. A slot is always built complete under a hidden temporary name first.
``current`` is a symbolic link to ``.slots/<version>/``: promotion and rollback replace the
link with one ``rename(2)``, which is atomic, so at every instant ``current/`` is a complete,
loadable model (the old one or the new one), whatever kills the process. The steps around the
swap (moving the old current to ``history/``, removing the candidate, the audit line) are
recorded in a journal (``.journal.json``) before they start; the next writer finishes or undoes
an interrupted operation (:meth:`ModelStore.recover`). Readers never need recovery.
"""

from __future__ import annotations

import hashlib
import json
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

SLOTS = ("candidate", "current")
MANIFEST = "manifest.json"
JOURNAL = ".journal.json"
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


class ModelStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def slot(self, name: str) -> Path:
        if name not in SLOTS:
            raise ValueError(f"unknown slot {name!r} (expected one of {SLOTS})")
        return self.root / name

    def history_dir(self) -> Path:
        return self.root / "history"

    def manifest(self, slot: str | Path) -> dict[str, Any] | None:
        path = (self.slot(slot) if isinstance(slot, str) else slot) / MANIFEST
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            raise StoreError(f"{path}: unreadable manifest ({exc})") from None

    def verify(self, directory: Path) -> dict[str, Any]:
        """Check every file of a slot against the sha256 in its manifest; return the manifest."""
        manifest = self.manifest(directory)
        if manifest is None:
            raise StoreError(f"{directory}: no {MANIFEST}")
        for name, digest in manifest.get("files", {}).items():
            path = directory / name
            if not path.is_file():
                raise StoreError(f"{directory}: {name} is listed in the manifest but missing")
            actual = sha256_file(path)
            if actual != digest:
                raise StoreError(f"{directory}: {name} has sha256 {actual[:12]}…, the manifest says {digest[:12]}…")
        return manifest

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
        manifest = self.manifest("current") if self.slot("current").exists() else None
        return manifest["version"] if manifest else None

    def history(self) -> list[dict[str, Any]]:
        """Earlier currents, newest first."""
        out = []
        if self.history_dir().exists():
            for d in self.history_dir().iterdir():
                m = self.manifest(d)
                if m is not None:
                    out.append(m)
        return sorted(out, key=lambda m: m.get("created_unix", 0), reverse=True)

    def audit(self, last: int | None = None) -> list[dict[str, Any]]:
        path = self.root / "audit.jsonl"
        if not path.exists():
            return []
        lines = []
        for line in path.read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a power cut
        return lines[-last:] if last else lines

    def describe(self, audit: int = 50) -> dict[str, Any]:
        """Slots, history and the newest ``audit`` decisions (0: none, without reading the log)."""
        return {
            "model_root": str(self.root),
            "candidate": self.manifest("candidate"),
            "current": self.manifest("current") if self.slot("current").exists() else None,
            "history": self.history(),
            "audit": self.audit(last=audit) if audit else [],
        }

    # -- writing

    def append_audit(self, record: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"time": datetime.now(UTC).isoformat(), **record}, default=str) + "\n"
        path = self.root / "audit.jsonl"
        torn = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
        with path.open("a") as f:
            f.write(("\n" if torn else "") + line)  # never glue a line onto one a power cut tore
            f.flush()
            os.fsync(f.fileno())

    def promote(self, gate: dict[str, Any]) -> dict[str, Any]:
        """Install the candidate as current (the gate passed): the old current goes to history."""
        self.recover()
        candidate = self.slot("candidate")
        manifest = self.verify(candidate)
        version = manifest["version"]
        slots = self.root / ".slots"
        slots.mkdir(parents=True, exist_ok=True)
        staged = slots / version
        tmp = slots / f".{version}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(candidate, tmp)
        manifest = {**manifest, "gate": gate, "promoted": datetime.now(UTC).isoformat()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        for f in tmp.iterdir():
            fsync_file(f)
        if staged.exists():
            shutil.rmtree(staged)
        os.replace(tmp, staged)
        fsync_dir(slots)
        crash_point("staged")
        old = self._current_target()
        self._write_journal({"op": "promote", "new": version, "old": old.name if old else None, "gate": gate})
        crash_point("journaled")
        self._point_current_at(staged)
        crash_point("swapped")
        self._finish(self._read_journal())
        return manifest

    def reject(self, gate: dict[str, Any]) -> Path:
        """Keep a failed candidate aside for inspection (``rejected/<version>``); current untouched."""
        self.recover()
        candidate = self.slot("candidate")
        manifest = self.manifest(candidate) or {"version": new_version()}
        dest = self.root / "rejected" / manifest["version"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        if candidate.exists():
            os.replace(candidate, dest)
            (dest / "gate.json").write_text(json.dumps(gate, indent=2, default=str) + "\n")
        self.append_audit(
            {
                "decision": "rejected",
                "version": manifest["version"],
                "current": self.current_version(),
                "files": manifest.get("files", {}),  # sha256 of what was rejected, as for promotions
                **gate,
            }
        )
        return dest

    def rollback(self, version: str | None = None) -> dict[str, Any]:
        """Make ``history/<version>`` (default: the newest) current again."""
        self.recover()
        hist = self.history()
        if not hist:
            raise StoreError("no earlier version in history to roll back to")
        version = version or hist[0]["version"]
        src = self.history_dir() / version
        if not src.is_dir():
            raise StoreError(f"version {version} is not in history (have {[m['version'] for m in hist]})")
        self.verify(src)
        slots = self.root / ".slots"
        slots.mkdir(parents=True, exist_ok=True)
        old = self._current_target()
        self._write_journal({"op": "rollback", "new": version, "old": old.name if old else None})
        os.replace(src, slots / version)
        fsync_dir(slots)
        self._point_current_at(slots / version)
        self._finish(self._read_journal())
        return self.manifest("current") or {}

    def recover(self) -> None:
        """Finish or undo an operation a crash interrupted (idempotent)."""
        journal = self._read_journal()
        if journal is not None:
            target = self._current_target()
            if target is not None and target.name == journal["new"]:
                self._finish(journal)  # the swap happened: complete the bookkeeping
            else:
                if journal["op"] == "rollback" and (self.root / ".slots" / journal["new"]).exists():
                    os.replace(self.root / ".slots" / journal["new"], self.history_dir() / journal["new"])
                self.append_audit({"decision": "interrupted", "op": journal["op"], "version": journal["new"]})
                (self.root / JOURNAL).unlink(missing_ok=True)
        slots = self.root / ".slots"
        if slots.exists():
            target = self._current_target()
            for d in slots.iterdir():
                # A half-copied stage, or a staged version that never became current (its
                # candidate is still in place): nothing is lost by removing it.
                if target is None or d.resolve() != target.resolve():
                    shutil.rmtree(d, ignore_errors=True)
        for leftover in self.root.glob(".current.tmp-*"):
            leftover.unlink(missing_ok=True)

    # -- internals

    def _current_target(self) -> Path | None:
        link = self.slot("current")
        if link.is_symlink():
            return (link.parent / os.readlink(link)).resolve()
        return link if link.is_dir() else None

    def _point_current_at(self, target: Path) -> None:
        link = self.slot("current")
        if link.is_dir() and not link.is_symlink():  # a store from before links: adopt it
            manifest = self.manifest(link) or {"version": new_version()}
            adopted = self.root / ".slots" / manifest["version"]
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
        """After the swap: old current to history, candidate removed, audit line, history trimmed."""
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
            cand = self.manifest("candidate") if self.slot("candidate").exists() else None
            if cand is not None and cand.get("version") == journal["new"]:
                trash = self.root / f".candidate.old-{uuid.uuid4().hex[:8]}"
                os.replace(self.slot("candidate"), trash)
                shutil.rmtree(trash, ignore_errors=True)
        crash_point("candidate_removed")
        decision = "promoted" if journal["op"] == "promote" else "rolled_back"
        last = self.audit(last=1)
        if not (last and last[0].get("decision") == decision and last[0].get("version") == journal["new"]):
            self.append_audit(
                {
                    "decision": decision,
                    "version": journal["new"],
                    "previous": old,
                    "files": (self.manifest("current") or {}).get("files", {}),
                    **(journal.get("gate") or {}),
                }
            )
        crash_point("audited")
        (self.root / JOURNAL).unlink(missing_ok=True)
        self._trim_history()

    def _trim_history(self) -> None:
        for m in self.history()[self.max_history :]:
            shutil.rmtree(self.history_dir() / m["version"], ignore_errors=True)
