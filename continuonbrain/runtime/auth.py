"""The API token: one secret in a 0600 file, required by every state-changing route.

Why a file and not a password in the config: the robot's owner (and only they) can read it
with ``cat`` over SSH, scripts on the robot can read it, and nothing secret ends up in a
config that gets copied around. It is created at first start with ``O_CREAT | O_EXCL`` and
mode 0600 in one system call, so there is no moment at which another user could read it,
and two servers starting at once agree on one token. A token file that others can read is
tightened to 0600 with a warning rather than refused: refusing would lock the owner out of
their own robot over a ``chmod``. The file's directory must exist: a typo in ``--token-file``
is an error (:class:`TokenError`), not a new directory tree with a secret in it.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

log = logging.getLogger(__name__)

#: 32 random bytes, URL-safe base64: 43 characters, 256 bits.
TOKEN_BYTES = 32
#: A token shorter than this in an existing file is refused (a typo, or an empty file).
MIN_TOKEN_LEN = 16


class TokenError(ValueError):
    """The token file cannot be used (too short, empty, unreadable, in a missing directory)."""


def load_or_create_token(path: str | os.PathLike) -> str:
    """The token in ``path``; creates the file (mode 0600, a fresh random token) if missing.

    Raises :class:`TokenError` (a one-line reason) when the file cannot be used."""
    path = Path(path)
    if not path.parent.is_dir():
        raise TokenError(f"token file {path}: directory {path.parent} does not exist")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_token(path)
    except OSError as exc:
        raise TokenError(f"token file {path}: cannot create it ({exc.strerror or exc})") from None
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    log.info("created API token file %s (mode 0600)", path)
    return token


def _read_token(path: Path) -> str:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("token file %s had mode %o (readable by others); set to 0600", path, mode)
            os.chmod(path, 0o600)
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"token file {path}: cannot read it ({exc})") from None
    if len(token) < MIN_TOKEN_LEN or not token.isprintable() or " " in token:
        raise TokenError(
            f"token file {path}: the token must be one line of at least {MIN_TOKEN_LEN} printable characters "
            "without spaces (delete the file to have a new one made)"
        )
    return token


def bearer_matches(header: str | None, token: str) -> bool:
    """True when an ``Authorization`` header carries exactly ``Bearer <token>`` (constant time)."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())
