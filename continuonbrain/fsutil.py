"""Durable file operations (no torch): what makes a rename survive a power cut.

``os.replace`` is atomic, but without an fsync of the file before and of the directory after,
a power cut can still leave an empty file or the old directory entry. Kept apart from the
checkpoint code so the model store (and the stub dry runs that use it) never import torch, and
shared by the RLDS writers and the trainer (a leaf module: it imports nothing of the project).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename durable: fsync the directory entry (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


# --- permissions ----------------------------------------------------------------------------
#
# One rule for everything the project writes: a file or directory gets the mode a plain
# ``open()`` / ``mkdir()`` would give it under the process umask (typically 0644 / 0755), so
# episodes, shards, weights and manifests are shared or private exactly as the robot's owner
# set the umask. ``tempfile.mkstemp``/``mkdtemp`` would make them 0600/0700 instead, and the
# rename into place would keep that, so temporary names are created here. Secrets are the one
# exception and ask for their mode explicitly (the API token file is 0600).


def temp_file(final: Path) -> Path:
    """Create an empty, uniquely named hidden file beside ``final`` (mode 0666 minus the umask)."""
    while True:
        tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def temp_dir(final: Path) -> Path:
    """Create an empty, uniquely named hidden directory beside ``final`` (0777 minus the umask)."""
    while True:
        tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.mkdir(tmp, 0o777)
        except FileExistsError:
            continue
        return tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a
    part, and the new one survives a power cut once this returns."""
    path = Path(path)
    tmp = temp_file(path)
    try:
        with naming(path), open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """Give an ``OSError`` raised inside (a full disk on ``write``, ``flush``, ``fsync``) the
    path it concerns when it has none, so the command can say which file failed in one line."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
