"""Which episodes judge a candidate: real ones, held out of training, recorded in its manifest.

A gate that scores a candidate on the episodes it was trained on measures memory, not
behaviour, so both trainers hold out the newest real episodes of their data and never train
on them: the adapter trainer with :func:`hold_out`, the seed trainer by id (its
``holdout_episodes``). Each records what it held out in the candidate's manifest
(:func:`held_out_record`: ``rlds_dir``, ``split``, ``episode_ids``), and the gate re-reads
exactly those (:func:`manifest_held_out`), so candidate and current are compared on the same
unseen episodes. A manifest written before held-out sets were recorded falls back to the
newest episodes of its data (:func:`tail_episodes`), and the gate's record says so.

Imagined episodes (``provenance.origin`` ``imagined:*``) are never evaluation data: they say
what a model expected, not what the robot did (:func:`real_episodes`). Frames stay encoded:
the held-out episodes are read lazily and decoded one step at a time by the gate.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from continuonbrain.models.safety import SafetyGateConfig
from continuonbrain.rlds import Episode, read_episodes

log = logging.getLogger(__name__)

__all__ = [
    "held_out_record",
    "hold_out",
    "manifest_held_out",
    "real_episodes",
    "select_episodes",
    "tail_episodes",
]


def real_episodes(episodes: Iterable[Episode]) -> list[Episode]:
    """The episodes a gate may judge on: recorded ones, never imagined ones."""
    return [ep for ep in episodes if not ep.is_imagined]


def tail_episodes(rlds_dir: str | os.PathLike, n: int) -> list[Episode]:
    """The newest ``n`` good real episodes under ``rlds_dir``, oldest first.

    Read order is sorted by name (episode ids and logger file names grow with time); imagined
    episodes are skipped (a gate judges on real data). At most ``n`` episodes are kept while
    the directory streams by, frames still encoded: a gate's worth is small.
    """
    if n <= 0:
        return []
    tail: deque[Episode] = deque(maxlen=n)
    for ep in read_episodes(rlds_dir, on_error="skip"):
        if not ep.is_imagined:
            tail.append(ep)
    return list(tail)


def hold_out(episodes: Sequence[Episode], n: int) -> tuple[list[Episode], list[Episode]]:
    """``(train, held_out)`` for a trainer that gates what it trains: the newest ``n`` real
    episodes of ``episodes`` (oldest first) are held out for the gate; everything else,
    imagined episodes included, is training data. Order is kept in both lists."""
    real = [i for i, ep in enumerate(episodes) if not ep.is_imagined]
    held = set(real[-n:]) if n > 0 else set()
    train = [ep for i, ep in enumerate(episodes) if i not in held]
    return train, [ep for i, ep in enumerate(episodes) if i in held]


def held_out_record(
    rlds_dir: str | os.PathLike | None, episodes: Sequence[Episode], split: str | None = None
) -> dict[str, Any]:
    """What a trainer writes in its candidate's manifest (``held_out``) about the episodes it
    held out and never trained on: enough to re-read exactly those (``rlds_dir``, ``split``,
    ``episode_ids``, oldest first)."""
    return {
        "rlds_dir": None if rlds_dir is None else str(rlds_dir),
        "split": split,
        "episode_ids": [ep.episode_id for ep in episodes],
    }


def select_episodes(rlds_dir: str | os.PathLike, ids: Sequence[str], split: str | None = None) -> list[Episode]:
    """The episodes of ``rlds_dir`` whose ids are ``ids``, in that order; missing ones are left
    out (the caller compares the counts). Bad episodes are skipped, frames stay encoded."""
    wanted = set(ids)
    found: dict[str, Episode] = {}
    for ep in read_episodes(rlds_dir, split, on_error="skip"):
        if ep.episode_id in wanted and ep.episode_id not in found:
            found[ep.episode_id] = ep
    return [found[i] for i in ids if i in found]


def _same_dir(a: str | os.PathLike | None, b: str | os.PathLike | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return Path(a).resolve() == Path(b).resolve()


def manifest_held_out(
    manifest: Mapping[str, Any], cfg: SafetyGateConfig, rlds_dir: str | os.PathLike | None = None
) -> tuple[list[Episode], dict[str, Any]]:
    """The held-out episodes of a candidate, and where they came from (for ``checks["held_out"]``).

    The manifest's ``held_out`` set (episodes the trainer never trained on), looked up by id in
    ``rlds_dir`` when given (a moved or copied data directory), else in the directory the
    trainer recorded (``source: "manifest"``; ids no longer there are listed as ``missing``).
    Otherwise the newest ``eval_tail_episodes`` real episodes of ``rlds_dir`` (default: the
    manifest's): for a candidate that records no held-out set and whose data is not
    ``rlds_dir``, those are episodes of another directory (``source: "given"``); for one
    trained on that directory (a manifest written before held-out sets were recorded), the
    training data's tail (``source: "tail"``, with a ``note`` saying it may have been trained on).
    """
    record = manifest.get("held_out") if isinstance(manifest.get("held_out"), Mapping) else None
    trained_on = manifest.get("rlds_dir")
    ids = list((record or {}).get("episode_ids") or [])
    where = rlds_dir if rlds_dir is not None else ((record or {}).get("rlds_dir") or trained_on)
    if ids and where:
        # the recorded ids, looked up where the caller says the data is now (a moved or copied
        # directory holds the same episodes) or where the trainer read them
        found = select_episodes(where, ids, (record or {}).get("split"))
        info: dict[str, Any] = {"source": "manifest", "rlds_dir": str(where), "recorded": len(ids)}
        if len(found) < len(ids):
            missing = [i for i in ids if i not in {ep.episode_id for ep in found}]
            info["missing"] = missing
            info["note"] = f"{len(missing)} of the {len(ids)} held-out episodes are not in {where}"
        if found:
            return found, info
    if not where:
        return [], {"source": "none", "note": "the candidate's manifest names no rlds_dir and none was given"}
    episodes = tail_episodes(where, cfg.eval_tail_episodes)
    if rlds_dir is not None and not _same_dir(rlds_dir, trained_on) and not ids:
        return episodes, {"source": "given", "rlds_dir": str(where)}
    why = "records no held-out episodes" if not ids else f"lists held-out episodes that are not in {where}"
    note = (
        f"the candidate's manifest {why}: judged on the newest {len(episodes)} episodes of {where}, "
        "which it may have been trained on"
    )
    log.warning("gate: %s", note)
    return episodes, {"source": "tail", "rlds_dir": str(where), "note": note}
