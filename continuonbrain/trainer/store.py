"""The model store: ``candidate/``, ``current/``, ``history/<version>/`` and ``audit.jsonl``.

Layout (DESIGN.md contract)::

    <model_root>/candidate/            newest trained weights, not yet trusted
    <model_root>/current/              what BrainService serves
    <model_root>/history/<version>/    earlier currents
    <model_root>/audit.jsonl           one line per promotion decision

Each slot holds ``manifest.json`` (version id, parent version, created time, component list,
file -> sha256, training metrics, gate result), weights as ``.safetensors``, the model config
as JSON, and adapters as ``adapter_config.json`` + ``adapter_model.safetensors``. No pickle.

A slot is filled by building the complete directory under a hidden temporary name and then
renaming it into place, so a reader never sees half a slot: it sees the old one or the new one.
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

from continuonbrain.trainer.checkpoint import fsync_dir, fsync_file

SLOTS = ("candidate", "current")
MANIFEST = "manifest.json"


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
