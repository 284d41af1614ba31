"""What a writer put on disk: the paths, and the episodes per split, counted as written.

The writers return this instead of a bare list (it *is* the list of paths, so older callers
keep working) so that a command can print counts that are the counts on disk and say what it
did about names that were taken, rather than trusting how many episodes it was handed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path


class WrittenEpisodes(list[Path]):
    """The paths written, plus ``episodes`` (split -> episodes now on disk from this write;
    ``""`` for episodes without a split), ``kept_both`` ((existing path, new path) pairs where
    a name was taken and the new episode went beside it) and ``replaced`` (paths or splits
    that an explicit ``overwrite`` replaced)."""

    def __init__(self) -> None:
        super().__init__()
        self.episodes: Counter[str] = Counter()
        self.kept_both: list[tuple[Path, Path]] = []
        self.replaced: list[str] = []

    @property
    def total(self) -> int:
        return sum(self.episodes.values())

    def describe(self) -> str:
        """``"220 episodes (test 20, train 200)"``."""
        text = f"{self.total} episode{'s' if self.total != 1 else ''}"
        named = {k: v for k, v in sorted(self.episodes.items()) if k}
        if named:
            text += " (" + ", ".join(f"{k} {v}" for k, v in named.items())
            text += f", no split {self.episodes['']})" if self.episodes.get("") else ")"
        return text
