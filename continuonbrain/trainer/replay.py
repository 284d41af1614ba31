"""The adapter trainer's replay set: episodes of what the brain could already do.

An adaptation run trains a fresh adapter on the seed with the robot's newest episodes. Trained
on those alone, the adapter forgets the seed's task (the demo's adapter, fitted to targets
behind the robot, reached 26% of ordinary reach2d targets against the seed's 100%). The replay
set is the remedy and the check (config section ``replay``,
:class:`~continuonbrain.trainer.lora_config.ReplaySection`):

* **where**: ``replay.rlds_dir``, or what the base model's manifest says: ``replay.rlds_dir``
  recorded by an earlier adaptation (so a chain of adaptations keeps rehearsing the seed's
  task, not the previous adaptation's), else the seed's own ``rlds_dir``;
* **held out** (``replay.holdout_episodes``, never trained on): the episodes the base was
  itself gated on when its manifest lists them (``replay.held_out`` of an earlier adaptation,
  else the seed's ``held_out`` ids), newest first, then the newest others. The gate runs
  candidate and current on them (``gate_candidate(..., replay=...)``): the forgetting check;
* **rehearsed** (``replay.max_episodes`` at most, the newest of the rest): mixed into the
  adaptation's batches at ``replay.share`` of the windows
  (:func:`~continuonbrain.trainer.episode_mix.rehearsal_mix`).

Episodes the run adapts on (by id) are never replay episodes, so the replay directory may be
the robot's one episode directory; imagined episodes are never replay episodes (the seed's
task is what the robot did). Reading streams the directory through bounded deques: memory
stays flat whatever the seed's data on the SD card, and frames stay encoded.
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from continuonbrain.rlds import Episode
from continuonbrain.trainer.episode_mix import read_source, select
from continuonbrain.trainer.lora_config import ReplaySection

log = logging.getLogger(__name__)

__all__ = ["ReplayError", "ReplaySet", "base_held_out_ids", "load_replay", "replay_dir", "reselect_replay"]


class ReplayError(ValueError):
    """An explicitly configured replay set cannot be used (the message names the directory)."""


@dataclass
class ReplaySet:
    """The run's replay episodes and where they came from (``note`` says why there are none)."""

    rlds_dir: str | None = None
    train: list[Episode] = field(default_factory=list)
    held_out: list[Episode] = field(default_factory=list)
    share: float = 0.0
    #: Where ``rlds_dir`` came from: "config", "base manifest", or None (no replay).
    source: str | None = None
    note: str | None = None

    @property
    def rehearsal_share(self) -> float:
        """The share actually rehearsed: 0 without replay episodes to train on."""
        return self.share if self.train else 0.0

    def describe(self) -> dict[str, Any]:
        """The run log's, result's and manifest's view (ids of the held-out episodes: the next
        adaptation of this brain checks forgetting on the same ones)."""
        return {
            "rlds_dir": self.rlds_dir,
            "source": self.source,
            "share": self.rehearsal_share,
            "train": len(self.train),
            "held_out": [ep.episode_id for ep in self.held_out],
            "note": self.note,
        }

    def job(self) -> dict[str, Any]:
        """What ``job.json`` keeps, so a resumed run re-reads exactly these episodes."""
        return {
            "rlds_dir": self.rlds_dir,
            "source": self.source,
            "share": self.share,
            "train": [ep.episode_id for ep in self.train],
            "held_out": [ep.episode_id for ep in self.held_out],
            "note": self.note,
        }


def _manifest(base_dir: Path) -> dict[str, Any]:
    try:
        doc = json.loads((base_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _ids(value: Any) -> list[str]:
    """Episode ids from a manifest field: a list of ids, or a dict holding one under
    ``episodes``/``ids``/``held_out`` (tolerant: trainers record them in slightly different shapes)."""
    if isinstance(value, Mapping):
        for key in ("episodes", "ids", "held_out", "episode_ids"):
            if key in value:
                return _ids(value[key])
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value if isinstance(v, str | int)]
    return []


def replay_dir(section: ReplaySection, base_manifest: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(rlds_dir, source)`` of the replay set (see the module doc); ``(None, None)``: none."""
    if section.rlds_dir:
        return section.rlds_dir, "config"
    earlier = base_manifest.get("replay")
    if isinstance(earlier, Mapping) and earlier.get("rlds_dir"):
        return str(earlier["rlds_dir"]), "base manifest"
    if base_manifest.get("rlds_dir"):
        return str(base_manifest["rlds_dir"]), "base manifest"
    return None, None


def base_held_out_ids(base_manifest: Mapping[str, Any]) -> list[str]:
    """The replay episodes the base model was gated on, if its manifest lists them: an earlier
    adaptation's ``replay.held_out``, else the seed trainer's ``held_out``."""
    earlier = base_manifest.get("replay")
    if isinstance(earlier, Mapping) and _ids(earlier.get("held_out")):
        return _ids(earlier.get("held_out"))
    return _ids(base_manifest.get("held_out"))


def load_replay(section: ReplaySection, base_dir: str | os.PathLike, exclude: Collection[str] = ()) -> ReplaySet:
    """Pick the replay set for a new run (see the module doc). ``exclude``: the run's own
    episode ids. Raises :class:`ReplayError` only for an explicit ``replay.rlds_dir`` that
    gives no usable episode; a default that does not work gives a set with a ``note``."""
    manifest = _manifest(Path(base_dir))
    where, source = replay_dir(section, manifest)
    out = ReplaySet(rlds_dir=where, share=section.share, source=source)
    if section.holdout_episodes == 0 and section.share == 0:
        out.note = "replay off (replay.share 0 and replay.holdout_episodes 0)"
        return out
    if where is None:
        out.note = f"no replay set: the base model's manifest ({base_dir}) records no rlds_dir; set replay.rlds_dir"
        return out
    if not Path(where).exists():
        if source == "config":
            raise ReplayError(f"replay.rlds_dir {where} does not exist")
        out.note = f"no replay set: {where} (the seed's data, from the base manifest) is gone"
        return out
    wanted = set(base_held_out_ids(manifest))
    excluded = set(exclude)
    n_hold, n_train = section.holdout_episodes, section.max_episodes
    gated: deque[Episode] = deque(maxlen=max(1, n_hold))  # the base's own held-out episodes found
    others: deque[Episode] = deque(maxlen=n_train + n_hold)
    for ep in read_source(where, missing_ok=True)():
        if ep.is_imagined or ep.episode_id in excluded:
            continue
        (gated if ep.episode_id in wanted and n_hold else others).append(ep)
    rest = list(others)
    held = list(gated)[-n_hold:] if n_hold else []
    if len(held) < n_hold:  # topped up with the newest others
        take = min(len(rest), n_hold - len(held))
        held, rest = held + rest[len(rest) - take :], rest[: len(rest) - take]
    out.held_out = held
    out.train = rest[-n_train:] if section.share > 0 else []
    if not out.held_out and not out.train:
        if source == "config":
            raise ReplayError(
                f"replay.rlds_dir {where} holds no usable replay episode (none, or only imagined ones "
                "or ones this run adapts on)"
            )
        out.note = f"no replay set: {where} holds no episode besides the ones this run adapts on"
    elif section.share > 0 and not out.train:
        out.note = f"nothing left to rehearse in {where} after {len(out.held_out)} held out"
    return out


def reselect_replay(saved: Mapping[str, Any] | None, section: ReplaySection) -> ReplaySet:
    """A resumed run's exact replay set, by the ids its ``job.json`` kept (``KeyError`` naming
    an episode that is gone). A run started before replay sets existed resumes without one."""
    if not saved:
        return ReplaySet(share=section.share, note="resumed a run that kept no replay set")
    where = saved.get("rlds_dir")
    train_ids, held_ids = _ids(saved.get("train")), _ids(saved.get("held_out"))
    out = ReplaySet(where, share=float(saved.get("share", 0.0)), source=saved.get("source"), note=saved.get("note"))
    if where and (train_ids or held_ids):
        episodes = select(read_source(where)(), [*train_ids, *held_ids])
        out.train, out.held_out = episodes[: len(train_ids)], episodes[len(train_ids) :]
    return out
