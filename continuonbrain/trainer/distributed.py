"""Data-parallel plumbing of the HOPE sequential trainer: who this process is, and the few
collectives the training loop needs so that every rank takes the same decisions.

Kept apart from :mod:`continuonbrain.trainer.sequential` so the training loop reads as the
single-board algorithm it is, with the cross-rank agreement behind one object
(:class:`Ranks`) whose methods are no-ops in a single process. Why each collective exists
(one rank stopping, pausing or reading a file alone would hang or desynchronise the
others) is told in the sequential module's doc; the reasons specific to one helper are in
its own doc below.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from continuonbrain.hope.vqvae import EMAQuantizer
from continuonbrain.trainer.budgets import ThermalGuard

log = logging.getLogger(__name__)

__all__ = ["Ranks", "is_hot", "share_codebook_updates", "state_digests"]


class Ranks:
    """This process's rank and the run's world size, with the collectives the trainer uses.

    Read from ``RANK``/``WORLD_SIZE`` (what torchrun sets) until :meth:`setup`, which joins
    the gloo process group when there is more than one rank and then trusts the group. With
    one rank every method answers locally, so the trainer has a single code path.
    """

    def __init__(self, rank: int | None = None, world_size: int | None = None):
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else int(rank)
        self.world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else int(world_size)
        self._owns_process_group = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def setup(self) -> None:
        """Join (or adopt) the process group; a group we created is destroyed by :meth:`teardown`."""
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("gloo")
            self._owns_process_group = True
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def teardown(self) -> None:
        if self._owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
            self._owns_process_group = False

    def owns(self, episode_index: int) -> bool:
        """Is episode ``episode_index`` of the stream in this rank's shard? (WindowDataset with
        ``num_workers=0`` gives episode ``i`` to rank ``i % world_size``.)"""
        return episode_index % self.world_size == self.rank

    # -- collectives

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on some rank."""
        if self.world_size == 1:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def agree(self, reason: str | None) -> str | None:
        """All ranks stop together (one rank alone stopping would hang the others in DDP)."""
        return self.sync_step(reason, False, {})[0]

    def sync_step(
        self, reason: str | None, hot: bool, scalars: dict[str, float]
    ) -> tuple[str | None, bool, dict[str, float]]:
        """One all-reduce after each step: does any rank stop, is any rank hot, and the
        step's losses averaged over the ranks (what gets logged; the plain mean of the ranks'
        batch losses). Every rank gets the same answer; the stop reason is the stopping
        rank's own, prefixed with its rank when it is another's (``"rank 1: memory: ..."``)."""
        if self.world_size == 1:
            return reason, hot, scalars
        t = torch.tensor([1.0 if reason else 0.0, 1.0 if hot else 0.0, *scalars.values()], dtype=torch.float64)
        dist.all_reduce(t)
        means = dict(zip(scalars, (t[2:] / self.world_size).tolist(), strict=True))
        if t[0] > 0:  # rare (once per component): find out why
            reasons = self.gather(reason)
            reason = reason or next(f"rank {r}: {why}" for r, why in enumerate(reasons) if why)
        return reason, bool(t[1] > 0), means

    def pause_together(self, thermal: ThermalGuard, emit: Callable[[dict], None]) -> str | None:
        """Some rank is too hot: every rank pauses, polling in lockstep (one all-reduce per poll),
        until every rank is at or under ``resume_temp_c``; after ``max_pause_s`` all give up.
        Returns a stop reason only on giving up. Events carry the hottest rank's temperature."""

        def poll(start: float) -> tuple[bool, bool, float | None]:
            temp = thermal.temperature()
            still = temp is not None and temp > thermal.resume_temp_c
            gave_up = thermal.max_pause_s is not None and time.monotonic() - start > thermal.max_pause_s
            t = torch.tensor([float(still), float(gave_up), -math.inf if temp is None else temp], dtype=torch.float64)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            return bool(t[0] > 0), bool(t[1] > 0), None if math.isinf(t[2].item()) else t[2].item()

        start = time.monotonic()
        still, gave_up, temp = poll(start)
        event = {"event": "thermal_pause", "temp_c": temp, "max_temp_c": thermal.max_temp_c}
        log.warning("SoC at %s °C on some rank (limit %.1f): every rank pauses", temp, thermal.max_temp_c)
        emit(event)
        while still:
            if gave_up:
                return f"thermal: still {temp:.1f} °C after {thermal.max_pause_s:.0f} s of pause"
            thermal.sleep(thermal.poll_s)
            still, gave_up, temp = poll(start)
        paused = time.monotonic() - start
        done = {"event": "thermal_resume", "temp_c": temp, "paused_s": round(paused, 3)}
        thermal.pauses.append({**event, **done})
        log.warning("SoC at %s °C on the hottest rank: resuming after %.1f s", temp, paused)
        emit(done)
        return None


def is_hot(thermal: ThermalGuard) -> bool:
    """Would ``thermal.wait_if_hot`` pause now? (Asked of every rank, then agreed, so that the
    ranks pause together instead of one rank pausing alone inside a gradient all-reduce.)"""
    return thermal.is_hot()


def _all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """The rows of ``t [M, ...]`` from every rank, concatenated in rank order (M may differ)."""
    world = dist.get_world_size()
    n = torch.tensor([t.shape[0]], dtype=torch.int64)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(c) for c in sizes]
    padded = t.new_zeros((max(counts), *t.shape[1:]))
    padded[: t.shape[0]] = t
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return torch.cat([o[:c] for o, c in zip(out, counts, strict=True)])


def share_codebook_updates(module: nn.Module, seed: Callable[[], list[int]]) -> int:
    """Make every :class:`EMAQuantizer` in ``module`` update its codebook from the *global*
    batch, so the codebooks of all DDP ranks stay bit-identical. Returns how many were patched.

    The codebook (``embed``, ``embed_sum``, ``cluster_size``, ``code_age``) is a set of buffers
    updated in the train-mode forward, outside autograd, so DDP's gradient all-reduce does not
    touch it. With DDP's default ``broadcast_buffers=True`` rank 0's buffers overwrite the
    others' before every forward: the codebook then learns from rank 0's share of the data
    only, and after the last step every rank keeps its own last local update, so the replicas
    end different (``embed``, ``embed_sum``, ``cluster_size`` and ``code_age`` all diverge;
    checked with two ranks). Averaging the buffers after each step would not fix it either:
    ``embed = embed_sum / cluster_size`` is not linear, ``code_age`` resets where *any* rank
    used a code, and dead-code restarts draw random rows from each rank's batch.

    Instead, the quantizer's two update hooks (``_init_from``: the codebook taken from the
    first batch; ``_ema_update``: one EMA step) are replaced, on this instance, by versions
    that first all-gather the batch's encoder outputs and codes from every rank (in rank
    order), then run the original update on that global batch: exactly the update a single
    process would make with the ``N * batch_size`` batch. The random rows of the init and of
    dead-code restarts are drawn under a forked RNG seeded with ``seed()`` (the run seed and
    the step), identical on every rank and reproduced on resume. Codes are exact in float32
    (codebooks are far smaller than 2**24), so ``z`` and the codes travel in one tensor.
    The trainer turns DDP's per-forward buffer broadcast off (``forward_sync_buffers=False``),
    so a divergence is not papered over, and checks the replicas after training.
    """
    patched = 0
    for q in module.modules():
        if not isinstance(q, EMAQuantizer):
            continue
        init_from, ema_update = q._init_from, q._ema_update

        def global_init(z: torch.Tensor, _init: Callable = init_from) -> None:
            zg = _all_gather_rows(z)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(np.random.SeedSequence(seed()).generate_state(1)[0]))
                _init(zg)

        def global_update(
            z: torch.Tensor, codes: torch.Tensor, counts: torch.Tensor, _q: EMAQuantizer = q, _up: Callable = ema_update
        ) -> int:
            packed = _all_gather_rows(torch.cat([z, codes[:, None].to(z.dtype)], 1))
            zg, codes_g = packed[:, :-1].contiguous(), packed[:, -1].long()
            counts_g = torch.bincount(codes_g, minlength=_q.codebook_size).to(counts.dtype)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(np.random.SeedSequence([*seed(), 1]).generate_state(1)[0]))
                return _up(zg, codes_g, counts_g)

        q._init_from = global_init  # type: ignore[method-assign]
        q._ema_update = global_update  # type: ignore[method-assign]
        patched += 1
    return patched


def state_digests(module: nn.Module) -> dict[str, str]:
    """sha256 of every parameter and buffer (exact bytes): equal digests, identical replicas."""
    return {
        k: hashlib.sha256(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()
        for k, v in module.state_dict().items()
    }
