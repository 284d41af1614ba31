"""The one error type the RLDS layer raises for bad data.

Every reader turns whatever goes wrong with a file (bad JSON, a CRC mismatch, a NaN, an
image that does not decode, ...) into an :class:`RLDSError` that names *where* it happened:
the file, the episode, the step and the field. Callers (the CLI, the trainer, the API) can
then report it in one line, quarantine that one episode and keep reading the others, and
never show a traceback for bad data.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RLDSError(Exception):
    """A problem with RLDS data, located as precisely as the reader knows.

    ``file`` is the path that was being read, ``episode`` the episode id (or index), ``step``
    the step index inside the episode and ``field`` the dotted field name
    (``observation.state``, ``steps/action``). Any of them may be ``None`` when not known.
    """

    message: str
    file: str | None = None
    episode: str | None = None
    step: int | None = None
    field: str | None = None
    line: int | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def at(self, **where: object) -> RLDSError:
        """Fill in location parts that are still unknown (inner code knows the field,
        outer code knows the file and episode) and return ``self`` for re-raising."""
        for key, value in where.items():
            if value is not None and getattr(self, key) is None:
                setattr(self, key, value if key in ("step", "line") else str(value))
        return self

    def location(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(f"file {self.file}" + (f" line {self.line}" if self.line is not None else ""))
        if self.episode is not None:
            parts.append(f"episode {self.episode}")
        if self.step is not None:
            parts.append(f"step {self.step}")
        if self.field is not None:
            parts.append(f"field {self.field}")
        return ", ".join(parts)

    def __str__(self) -> str:
        where = self.location()
        return f"{where}: {self.message}" if where else self.message

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "episode": self.episode,
            "step": self.step,
            "field": self.field,
            "line": self.line,
            "message": self.message,
        }
