"""Shared fixtures: small, real episodes written to real files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from continuonbrain.rlds import Episode, LazyImage


def make_episode(
    n: int = 12, obs_dim: int = 4, act_dim: int = 2, episode_id: str = "ep0", hz: float = 50.0, **meta
) -> Episode:
    """An episode whose observation at step t is ``t + arange(obs_dim) / 10``: easy to check."""
    rows = [
        {
            "observation": (t + np.arange(obs_dim) / 10.0).tolist(),
            "action": [float(t) / n] * act_dim,
            "reward": float(t),
            "timestamp": t / hz,
            "language_instruction": "reach the target",
            "step_metadata": {"k": str(t)},
        }
        for t in range(n)
    ]
    metadata = {
        "schema_version": "1.1",
        "episode_id": episode_id,
        "robot_id": "test-bot",
        "tags": ["test"],
        "safety": {"pii_cleared": True, "pending_review": False},
        "provenance": {"origin": "test"},
        **meta,
    }
    return Episode.from_steps(rows, metadata)


def png_bytes(h: int = 8, w: int = 6, value: int = 0, fmt: str = "PNG") -> bytes:
    from PIL import Image

    arr = np.full((h, w, 3), value, np.uint8)
    arr[0, 0] = [255, 0, 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def make_image_episode(n: int = 5, episode_id: str = "img0") -> Episode:
    rows = [
        {
            "observation": {"state": [float(t), 1.0], "camera": LazyImage(data=png_bytes(value=t * 10), format="png")},
            "action": {"steering": [0.1 * t], "throttle": [0.5]},
        }
        for t in range(n)
    ]
    return Episode.from_steps(rows, {"episode_id": episode_id})


@pytest.fixture
def episodes_dir(tmp_path: Path) -> Path:
    """Three good Continuon episode directories."""
    from continuonbrain.rlds import write_episodes

    out = tmp_path / "episodes"
    write_episodes([make_episode(episode_id=f"ep{i}", n=10 + i) for i in range(3)], out)
    return out
