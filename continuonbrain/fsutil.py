"""Durable file operations (no torch): what makes a rename survive a power cut.

``os.replace`` is atomic, but without an fsync of the file before and of the directory after,
a power cut can still leave an empty file or the old directory entry. Kept apart from the
checkpoint code so the model store (and the stub dry runs that use it) never import torch, and
shared by the RLDS writers and the trainer (a leaf module: it imports nothing of the project).
"""

from __future__ import annotations

import contextlib
import os
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
