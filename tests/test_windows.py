"""Multi-scale windows: exact slicing, seconds -> steps, sharding, shuffling, mixing, resume."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_episode, make_image_episode
from torch.utils.data import DataLoader

from continuonbrain.rlds import Episode, LazyImage, RLDSError, write_episodes
from continuonbrain.rlds.windows import (
    FastWindowDataset,
    MidTrajectoryDataset,
    MixedSource,
    SlowDataset,
    WindowDataset,
    count_windows,
    iter_windows,
    limit_imagined,
    open_source,
    shuffle_stream,
    window_ends,
    window_steps,
)


def ramp(
    n: int, offset: float = 0.0, *, dim: int = 3, hz: float | None = None, imagined: bool = False, ts_hz=None
) -> Episode:
    """An episode whose observation at step t is ``offset + t`` in every column."""
    t = np.arange(n)
    meta: dict = {"episode_id": f"ramp{offset:g}-{n}"}
    if hz is not None:
        meta["control_hz"] = hz
    if imagined:
        meta["provenance"] = {"origin": "imagined:test"}
        meta["tags"] = ["imagined"]
    return Episode(
        observation=np.repeat((offset + t).astype(np.float32)[:, None], dim, axis=1),
        action=np.stack([t, -t], axis=1).astype(np.float32),
        reward=t.astype(np.float32),
        discount=np.ones(n, np.float32),
        is_first=t == 0,
        is_last=t == n - 1,
        is_terminal=t == n - 1,
        metadata=meta,
        timestamp=t / ts_hz if ts_hz else None,
    )


def keys_of(items) -> list[tuple[int, int]]:
    return [(int(w["episode_index"]), int(w["start"])) for w in items]


def batch_keys(batch) -> list[tuple[int, int]]:
    return list(zip(batch["episode_index"].tolist(), batch["start"].tolist(), strict=True))


def expected_keys(ds: WindowDataset, episodes: list[Episode]) -> set[tuple[int, int]]:
    out = set()
    for i, ep in enumerate(episodes):
        ends = window_ends(len(ep), ds.window_length(ep), ds.window_stride(ep), pad_start=ds.pad_start)
        out |= {(i, int(e) - ds.window_length(ep) + 1) for e in ends}
    return out


# ---------------------------------------------------------------- seconds -> steps


@pytest.mark.parametrize(
    ("seconds", "hz", "steps"),
    [
        (0.1, 50, 5),
        (0.05, 50, 3),  # 2.5 steps: halves round up
        (2.0, 50, 100),
        (120.0, 50, 6000),
        (0.1, 10, 1),
        (2.0, 10, 20),
        (0.01, 10, 1),  # never empty
        (0.3, 10, 3),  # 0.3 * 10 = 3.0000000000000004 in floats
        (0.07, 100, 7),
    ],
)
def test_window_steps(seconds: float, hz: float, steps: int) -> None:
    assert window_steps(seconds, hz) == steps


@pytest.mark.parametrize(("seconds", "hz"), [(0, 50), (-1, 50), (float("nan"), 50), (0.1, 0), (0.1, float("inf"))])
def test_window_steps_rejects_bad_values(seconds: float, hz: float) -> None:
    with pytest.raises(ValueError):
        window_steps(seconds, hz)


def test_lengths_follow_each_episodes_control_rate() -> None:
    default = ramp(300)  # no timestamps, no metadata: 50 Hz
    meta10 = ramp(300, hz=10)
    stamped = ramp(300, hz=10, ts_hz=20)  # timestamps win over metadata
    fast, mid, slow = FastWindowDataset([]), MidTrajectoryDataset([]), SlowDataset([])
    assert [fast.window_length(e) for e in (default, meta10, stamped)] == [5, 1, 2]
    assert [mid.window_length(e) for e in (default, meta10, stamped)] == [100, 20, 40]
    assert [slow.window_length(e) for e in (default, meta10, stamped)] == [6000, 1200, 2400]
    # Default strides: one step for Fast, half a window for Mid and Slow.
    assert [fast.window_stride(e) for e in (default, meta10)] == [1, 1]
    assert [mid.window_stride(e) for e in (default, meta10, stamped)] == [50, 10, 20]
    # Explicit seconds and steps; control_hz overrides the episode's rate.
    assert MidTrajectoryDataset([], stride_s=0.5).window_stride(default) == 25
    assert MidTrajectoryDataset([], stride_s=0.5, control_hz=10).window_stride(default) == 5
    assert MidTrajectoryDataset([], steps=7, stride_steps=3).window_length(meta10) == 7
    assert FastWindowDataset([], length_s=0.06, control_hz=100).window_length(default) == 6
    # The conftest episode logs timestamps at 10 Hz.
    assert FastWindowDataset([]).window_length(make_episode(n=10, hz=10.0)) == 1


def test_length_outside_intended_range_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="continuonbrain.rlds.windows"):
        FastWindowDataset([], length_s=0.08)
        assert not caplog.records
        FastWindowDataset([], length_s=100)  # meant 100 ms
    assert "outside its intended range" in caplog.text


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        MidTrajectoryDataset([], length_s=2.0, steps=10)
    with pytest.raises(ValueError):
        MidTrajectoryDataset([], stride_s=1.0, stride_steps=10)
    with pytest.raises(ValueError):
        MidTrajectoryDataset([], length_s=-1)
    with pytest.raises(ValueError):
        MidTrajectoryDataset([], rank=2, world_size=2)
    with pytest.raises(TypeError):
        MidTrajectoryDataset(iter([ramp(5)]))  # one-shot iterators cannot be replayed


# ---------------------------------------------------------------- exact slicing


@pytest.mark.parametrize(
    ("n", "length", "stride", "pad_start", "cover_end", "ends"),
    [
        (12, 5, 1, True, True, list(range(12))),
        (12, 5, 1, False, True, list(range(4, 12))),
        (12, 5, 3, False, False, [4, 7, 10]),
        (12, 5, 3, False, True, [4, 7, 10, 11]),
        (12, 5, 3, True, True, [0, 3, 6, 9, 11]),
        (12, 5, 3, True, False, [0, 3, 6, 9]),
        (3, 5, 1, False, True, [2]),  # shorter than a window: the episode itself, padded
        (3, 5, 2, False, False, [2]),
        (5, 5, 2, False, True, [4]),
        (1, 1, 1, False, True, [0]),
        (100, 100, 50, False, True, [99]),
        (250, 100, 50, False, True, [99, 149, 199, 249]),
        (260, 100, 50, False, True, [99, 149, 199, 249, 259]),
        (0, 5, 1, True, True, []),
    ],
)
def test_window_ends_and_counts(
    n: int, length: int, stride: int, pad_start: bool, cover_end: bool, ends: list[int]
) -> None:
    got = window_ends(n, length, stride, pad_start=pad_start, cover_end=cover_end)
    assert got.tolist() == ends
    assert count_windows(n, length, stride, pad_start=pad_start, cover_end=cover_end) == len(ends)
    if n:
        windows = list(iter_windows(ramp(n), length, stride, pad_start=pad_start, cover_end=cover_end))
        assert [w["start"] for w in windows] == [e - length + 1 for e in ends]


def test_count_windows_matches_iter_windows_on_a_grid() -> None:
    for n in range(1, 30):
        ep = ramp(n)
        for length in (1, 2, 5, 8):
            for stride in (1, 2, 3, 7):
                for pad_start in (False, True):
                    for cover_end in (False, True):
                        kw = {"pad_start": pad_start, "cover_end": cover_end}
                        got = sum(1 for _ in iter_windows(ep, length, stride, **kw))
                        assert got == count_windows(n, length, stride, **kw), (n, length, stride, kw)


def test_window_values_are_exact() -> None:
    n, length = 12, 5
    for pad_start in (False, True):
        for w in iter_windows(ramp(n), length, 1, pad_start=pad_start, episode_index=7):
            start = w["start"]
            steps = np.arange(start, start + length)
            real = steps >= 0
            assert w["episode_index"] == 7
            assert w["observation"].shape == (length, 3) and w["observation"].dtype == np.float32
            assert w["action"].shape == (length, 2) and w["action"].dtype == np.float32
            np.testing.assert_array_equal(w["mask"], real)
            np.testing.assert_array_equal(w["observation"][:, 0], np.where(real, steps, 0))
            np.testing.assert_array_equal(w["observation"][:, 2], np.where(real, steps, 0))
            np.testing.assert_array_equal(w["action"][:, 1], np.where(real, -steps, 0))
            np.testing.assert_array_equal(w["reward"], np.where(real, steps, 0))
            np.testing.assert_array_equal(w["discount"], real.astype(np.float32))
            np.testing.assert_array_equal(w["is_first"], steps == 0)
            np.testing.assert_array_equal(w["is_last"], steps == n - 1)
            np.testing.assert_array_equal(w["is_terminal"], steps == n - 1)
            for key in ("reward", "discount", "is_first", "is_last", "is_terminal", "mask"):
                assert w[key].shape == (length,)
            assert steps[-1] <= n - 1  # never past the end


def test_padding_and_mask_at_episode_start() -> None:
    windows = list(iter_windows(ramp(7, offset=100), 5, 1, pad_start=True))
    assert len(windows) == 7
    first = windows[0]
    assert first["start"] == -4
    np.testing.assert_array_equal(first["mask"], [False, False, False, False, True])
    np.testing.assert_array_equal(first["observation"][:, 0], [0, 0, 0, 0, 100])
    np.testing.assert_array_equal(first["is_first"], [False, False, False, False, True])
    second = windows[1]
    np.testing.assert_array_equal(second["mask"], [False, False, False, True, True])
    np.testing.assert_array_equal(second["observation"][:, 0], [0, 0, 0, 100, 101])
    assert all(w["mask"].all() for w in windows[4:])
    # Without pad_start only full windows, except for an episode shorter than a window.
    assert all(w["mask"].all() for w in iter_windows(ramp(7), 5, 1))
    (short,) = iter_windows(ramp(3, offset=100), 5, 1)
    np.testing.assert_array_equal(short["mask"], [False, False, True, True, True])
    np.testing.assert_array_equal(short["observation"][:, 0], [0, 0, 100, 101, 102])


def test_dict_observations_and_images(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = make_image_episode(n=5)  # state = [t, 1], camera = PNG filled with 10 * t
    calls = []
    original = LazyImage.decode

    def counting_decode(self: LazyImage) -> np.ndarray:
        calls.append(self)
        return original(self)

    windows = list(iter_windows(ep, 3, 1, pad_start=True))
    assert "images" not in windows[0]  # no decoding unless asked
    assert windows[0]["observation"].shape == (3, 2)  # camera skipped, state flattened
    monkeypatch.setattr(LazyImage, "decode", counting_decode)
    windows = list(iter_windows(ep, 3, 1, pad_start=True, image_keys=["camera"], action_keys=["throttle"]))
    assert len(calls) == 5  # each frame decoded once although windows overlap
    for w in windows:
        cam = w["images"]["camera"]
        assert cam.shape == (3, 8, 6, 3) and cam.dtype == np.uint8
        steps = np.arange(w["start"], w["start"] + 3)
        np.testing.assert_array_equal(cam[:, 4, 4, 0], np.where(steps >= 0, steps * 10, 0))
        np.testing.assert_array_equal(w["observation"][:, 0], np.where(steps >= 0, steps, 0))
        np.testing.assert_array_equal(w["action"][:, 0], np.where(steps >= 0, 0.5, 0))
    # A numeric (already decoded) image column works the same way and stays out of `observation`.
    rows = [
        {"observation": {"pix": np.full((2, 2, 1), t, np.uint8), "x": [float(t)]}, "action": [0.0]} for t in range(4)
    ]
    numeric = Episode.from_steps(rows)
    (w,) = iter_windows(numeric, 6, 1, image_keys=["pix"])
    assert w["observation"].shape == (6, 1)
    np.testing.assert_array_equal(w["images"]["pix"][:, 0, 0, 0], [0, 0, 0, 1, 2, 3])
    with pytest.raises(RLDSError, match="image key"):
        next(iter_windows(ramp(4), 2, image_keys=["camera"]))


def test_full_windows_are_views_not_copies() -> None:
    ep = ramp(50)
    w = next(iter_windows(ep, 10, 5))
    assert np.shares_memory(w["observation"], ep.observation)
    assert np.shares_memory(w["reward"], ep.reward)


# ---------------------------------------------------------------- datasets


def test_windows_never_cross_episode_boundaries() -> None:
    episodes = [ramp(23, offset=0), ramp(17, offset=1000), ramp(9, offset=2000)]
    ds = MidTrajectoryDataset(episodes, steps=10, stride_steps=4)
    items = list(ds)
    # Window ends: 9, 13, 17, 21, 22 | 9, 13, 16 | 8.
    assert len(items) == sum(count_windows(len(e), 10, 4) for e in episodes) == 5 + 3 + 1
    for w in items:
        ep_index, start = w["episode_index"], w["start"]
        real = w["observation"][w["mask"], 0]
        steps = np.arange(start, start + 10)[w["mask"]]
        np.testing.assert_array_equal(real, 1000 * ep_index + steps)  # all from one episode, in order
    assert set(keys_of(items)) == expected_keys(ds, episodes)


def test_fast_dataset_defaults_give_a_window_ending_at_every_step() -> None:
    episodes = [ramp(12), ramp(8, hz=10)]
    items = list(FastWindowDataset(episodes))
    # 50 Hz: 5-step windows ending at each of 12 steps; 10 Hz: 1-step windows at each of 8.
    assert [(w["episode_index"], w["start"], len(w["mask"])) for w in items] == [
        *((0, t - 4, 5) for t in range(12)),
        *((1, t, 1) for t in range(8)),
    ]


def test_slow_dataset_short_episode_is_one_padded_window() -> None:
    (w,) = list(SlowDataset([ramp(30)], length_s=1.0))  # 50 steps at 50 Hz
    assert w["start"] == -20 and w["mask"].sum() == 30


def test_sources_path_callable_list_and_tensors(tmp_path: Path) -> None:
    episodes = [make_episode(n=6 + i, episode_id=f"ep{i}") for i in range(3)]
    write_episodes(episodes, tmp_path / "eps")
    from_path = list(FastWindowDataset(tmp_path / "eps"))
    from_str = list(FastWindowDataset(str(tmp_path / "eps")))
    from_list = list(FastWindowDataset(episodes))
    from_callable = list(FastWindowDataset(lambda: iter(episodes)))
    assert keys_of(from_path) == keys_of(from_list) == keys_of(from_callable) == keys_of(from_str)
    assert len(from_list) == 6 + 7 + 8
    for a, b in zip(from_path, from_list, strict=True):
        np.testing.assert_allclose(a["observation"], b["observation"])
    tensors = next(iter(FastWindowDataset(episodes, as_tensors=True)))
    assert isinstance(tensors["observation"], torch.Tensor) and tensors["observation"].dtype == torch.float32
    assert tensors["mask"].dtype == torch.bool
    with pytest.raises(TypeError):
        open_source(iter(episodes))


def test_dataloader_with_two_workers_yields_each_window_exactly_once() -> None:
    episodes = [ramp(6 + i, offset=1000 * i) for i in range(7)]
    for shuffle_buffer in (0, 16):
        ds = FastWindowDataset(episodes, shuffle_buffer=shuffle_buffer, seed=3)
        loader = DataLoader(ds, batch_size=4, num_workers=2)
        seen = []
        for batch in loader:
            assert batch["observation"].shape[1:] == (5, 3)
            seen += batch_keys(batch)
            # Values still match their (episode, start) after collation across workers.
            obs, mask = batch["observation"][:, :, 0].numpy(), batch["mask"].numpy()
            for row, (i, start) in enumerate(batch_keys(batch)):
                np.testing.assert_array_equal(obs[row][mask[row]], 1000 * i + np.arange(start, start + 5)[mask[row]])
        assert len(seen) == len(set(seen)) == sum(len(e) for e in episodes)
        assert set(seen) == expected_keys(ds, episodes)


def test_ranks_split_episodes() -> None:
    episodes = [ramp(5 + i) for i in range(9)]
    per_rank = [keys_of(FastWindowDataset(episodes, rank=r, world_size=3)) for r in range(3)]
    assert {i for i, _ in per_rank[1]} == {1, 4, 7}
    flat = [k for keys in per_rank for k in keys]
    assert len(flat) == len(set(flat)) and set(flat) == expected_keys(FastWindowDataset(episodes), episodes)


# ---------------------------------------------------------------- shuffling


def test_shuffle_is_deterministic_bounded_and_a_permutation() -> None:
    episodes = [ramp(20 + i) for i in range(6)]
    plain = keys_of(FastWindowDataset(episodes))
    a = keys_of(FastWindowDataset(episodes, shuffle_buffer=32, seed=1))
    b = keys_of(FastWindowDataset(episodes, shuffle_buffer=32, seed=1))
    c = keys_of(FastWindowDataset(episodes, shuffle_buffer=32, seed=2))
    ds = FastWindowDataset(episodes, shuffle_buffer=32, seed=1)
    ds.set_epoch(1)
    d = keys_of(ds)
    assert a == b
    assert a != plain and a != c and a != d
    assert sorted(a) == sorted(plain) == sorted(c) == sorted(d)


def test_shuffle_stream_holds_at_most_buffer_size_items() -> None:
    pulled = 0

    def source():
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield i

    out = []
    for item in shuffle_stream(source(), 10, np.random.default_rng(0)):
        out.append(item)
        assert pulled - len(out) <= 10
    assert sorted(out) == list(range(1000)) and out != list(range(1000))
    # Items cannot move earlier than (their index - buffer size).
    assert all(pos >= item - 10 for pos, item in enumerate(out))


def test_buffered_windows_do_not_keep_episodes_alive() -> None:
    ep = ramp(40)
    w = next(iter(FastWindowDataset([ep], shuffle_buffer=8)))
    assert not np.shares_memory(w["observation"], ep.observation)


# ---------------------------------------------------------------- mixing and the imagined cap


def tagged(n_episodes: int, length: int, tag: float, imagined: bool = False) -> list[Episode]:
    return [ramp(length, offset=tag, dim=1, imagined=imagined) for _ in range(n_episodes)]


def test_weighted_mixing_ratio_and_determinism() -> None:
    a, b = tagged(50, 2, 0.0), tagged(30, 2, 1.0)
    mix = MixedSource([(a, 0.7), (b, 0.3)], seed=5, episodes_per_epoch=4000)
    tags = [float(ep.observation[0, 0]) for ep in mix.iter_episodes(0)]
    assert len(tags) == 4000  # sources cycled to fill the epoch
    assert abs(tags.count(0.0) / 4000 - 0.7) < 0.03
    assert tags == [float(ep.observation[0, 0]) for ep in mix.iter_episodes(0)]
    assert tags != [float(ep.observation[0, 0]) for ep in mix.iter_episodes(1)]
    # Without episodes_per_epoch, the epoch ends when the first source runs out.
    once = [float(ep.observation[0, 0]) for ep in MixedSource([(a, 0.7), (b, 0.3)], seed=5)]
    assert once.count(0.0) == 50 or once.count(1.0) == 30
    assert once.count(0.0) <= 50 and once.count(1.0) <= 30
    # A zero weight is never drawn.
    assert all(ep.observation[0, 0] == 0 for ep in MixedSource([(a, 1.0), (b, 0.0)], episodes_per_epoch=100))


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5])
def test_imagined_cap_is_exact_in_episodes(fraction: float) -> None:
    real, dream = tagged(40, 3, 0.0), tagged(40, 3, 1.0, imagined=True)
    mix = MixedSource([(real, 0.3), (dream, 0.7)], seed=1, max_imagined_fraction=fraction, episodes_per_epoch=2000)
    episodes = list(mix)
    assert len(episodes) == 2000
    flags = np.array([ep.is_imagined for ep in episodes])
    total = np.arange(1, len(flags) + 1)
    assert np.all(np.cumsum(flags) <= fraction * total + 1e-9)  # at every prefix
    # Imagined data is offered 70% of the time, so the cap binds: reached within one episode.
    assert flags.sum() >= np.floor(fraction * len(flags)) - 1


def test_imagined_cap_in_steps_counts_episode_lengths() -> None:
    real = [ramp(n, dim=1) for n in (5, 9, 2, 14)]
    dream = [ramp(n, dim=1, imagined=True) for n in (3, 20, 1, 6)]
    mix = MixedSource(
        [(real, 1.0), (dream, 1.0)], seed=2, max_imagined_fraction=0.25, imagined_unit="steps", episodes_per_epoch=500
    )
    imagined_steps = total_steps = 0
    n_imagined = 0
    for ep in mix:
        total_steps += len(ep)
        imagined_steps += len(ep) if ep.is_imagined else 0
        n_imagined += ep.is_imagined
        assert imagined_steps <= 0.25 * total_steps + 1e-9
    assert n_imagined > 0
    # Stride-1 Fast windows are steps, so the cap is then also the imagined share of windows.
    episodes = list(mix)
    windows = list(FastWindowDataset(mix))
    assert len(windows) == total_steps
    imagined_windows = sum(episodes[w["episode_index"]].is_imagined for w in windows)
    assert imagined_windows == imagined_steps <= 0.25 * len(windows)


def test_limit_imagined_on_a_plain_stream() -> None:
    stream = [ramp(2, imagined=True)] * 3 + [ramp(2)] * 6 + [ramp(2, imagined=True)] * 5
    kept = [ep.is_imagined for ep in limit_imagined(stream, 1 / 3)]
    # Leading imagined episodes are dropped (nothing real yet), then one in three is allowed.
    assert kept == [False] * 6 + [True] * 3
    assert [ep.is_imagined for ep in limit_imagined(stream, None)] == [ep.is_imagined for ep in stream]


def test_mix_of_only_refused_imagined_data_ends() -> None:
    dream = tagged(5, 2, 1.0, imagined=True)
    assert list(MixedSource([(dream, 1.0)], max_imagined_fraction=0.5, episodes_per_epoch=100)) == []
    assert list(MixedSource([([], 1.0), (tagged(2, 2, 0.0), 1.0)], episodes_per_epoch=10)) != []


def test_mixed_source_feeds_sharded_workers_consistently() -> None:
    real, dream = tagged(20, 6, 0.0), tagged(20, 6, 1.0, imagined=True)
    mix = MixedSource([(real, 0.6), (dream, 0.4)], seed=9, max_imagined_fraction=0.3, episodes_per_epoch=30)
    ds = FastWindowDataset(mix, shuffle_buffer=10)
    in_process = sorted(keys_of(ds))
    via_workers = sorted(k for batch in DataLoader(ds, batch_size=8, num_workers=2) for k in batch_keys(batch))
    assert in_process == via_workers
    assert len(in_process) == 30 * 6


# ---------------------------------------------------------------- resume


def test_state_dict_resume_in_process() -> None:
    episodes = [ramp(10 + i, offset=100 * i) for i in range(5)]
    full = keys_of(FastWindowDataset(episodes, shuffle_buffer=20, seed=4))
    ds = FastWindowDataset(episodes, shuffle_buffer=20, seed=4)
    head = []
    for w in ds:
        ds.mark_consumed(w)
        head.append(w)
        if len(head) == 23:
            break
    state = json.loads(json.dumps(ds.state_dict()))
    assert state["epoch"] == 0 and state["consumed"] == {"0": 23} and state["consumed_total"] == 23
    resumed = FastWindowDataset(episodes, shuffle_buffer=20, seed=4)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert keys_of(head) + keys_of(rest) == full
    np.testing.assert_array_equal(rest[0]["observation"], next(iter(resumed))["observation"])
    assert rest[0]["position"] == 23
    # set_epoch starts the next epoch from its beginning.
    resumed.set_epoch(1)
    assert sorted(keys_of(resumed)) == sorted(full) and resumed.state_dict()["consumed_total"] == 0
    with pytest.raises(ValueError, match="seed"):
        FastWindowDataset(episodes, seed=5).load_state_dict(state)


def test_state_dict_resume_with_dataloader_workers() -> None:
    episodes = [ramp(8 + i) for i in range(6)]

    def make() -> FastWindowDataset:
        ds = FastWindowDataset(episodes, shuffle_buffer=12, seed=8)
        ds.set_epoch(2)
        return ds

    ds = make()
    full = [b for b in DataLoader(ds, batch_size=5, num_workers=2)]
    per_shard: dict[int, list] = {0: [], 1: []}
    for batch in full:
        for s, k in zip(batch["shard"].tolist(), batch_keys(batch), strict=True):
            per_shard[s].append(k)

    ds = make()
    consumed = []
    for i, batch in enumerate(DataLoader(ds, batch_size=5, num_workers=2)):
        ds.mark_consumed(batch)
        consumed += batch_keys(batch)
        if i == 4:
            break  # the workers have prefetched more than this
    state = ds.state_dict()
    assert state["num_shards"] == 2 and state["epoch"] == 2 and state["consumed_total"] == 25

    resumed = FastWindowDataset(episodes, shuffle_buffer=12, seed=8)
    resumed.load_state_dict(state)
    rest = []
    rest_per_shard: dict[int, list] = {0: [], 1: []}
    for batch in DataLoader(resumed, batch_size=5, num_workers=2):
        rest += batch_keys(batch)
        for s, k in zip(batch["shard"].tolist(), batch_keys(batch), strict=True):
            rest_per_shard[s].append(k)
    assert len(consumed) + len(rest) == sum(len(e) for e in episodes)
    assert set(consumed) | set(rest) == expected_keys(resumed, episodes)
    assert not set(consumed) & set(rest)
    for s in (0, 1):  # each shard continues exactly where it stopped
        assert rest_per_shard[s] == per_shard[s][state["consumed"][s] :]
    # A different worker count cannot continue that position.
    other = FastWindowDataset(episodes, shuffle_buffer=12, seed=8)
    other.load_state_dict(state)
    with pytest.raises(RuntimeError, match="shards"):
        list(other)


def test_extra_columns_are_sliced_and_padded_like_the_others() -> None:
    from conftest import make_episode

    ep = make_episode(n=8)
    ep.extras["context"] = np.arange(8, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    windows = list(iter_windows(ep, 3, 1, pad_start=True))
    assert len(windows) == 8
    np.testing.assert_array_equal(windows[0]["context"][:, 0], [0, 0, 0])
    np.testing.assert_array_equal(windows[0]["mask"], [False, False, True])
    np.testing.assert_array_equal(windows[5]["context"][:, 0], [3, 4, 5])
