"""HOPE v1 sequential training: one component at a time (load, train, save, free).

A Pi 5 has 8 GB shared by the OS, the robot's own services and the trainer, so the trainer
never holds more than one component with optimizer state. The loop, top to bottom:

    for component in order (vqvae -> mid_loop -> fast_loop):
        check its dependencies are trained (frozen, inference only)
        build its windows from the RLDS episodes (Fast 50-100 ms, Mid 1-10 s, single steps)
        resume from its checkpoint if there is one
        train under budgets (steps, wall time, memory), pausing when the SoC is hot,
            logging every step and checkpointing every N steps (atomically)
        save it (safetensors) into the run and publish the run's components to candidate/
        free it (drop references, gc, malloc_trim)

Resumable: ``run_dir/state.json`` records which components are done, and each component's
checkpoint holds weights, optimizer, scheduler, RNG states, data position and step. With
``deterministic`` on, a run killed at any point and resumed ends with the same weights as an
uninterrupted run.

Data parallel ("past one board"): under ``torchrun --nproc_per_node=N`` (or N boards with
``--nnodes``) the same loop runs on every rank with DistributedDataParallel over gloo (CPU):

* Data: each rank reads its own share of the episodes (:class:`WindowDataset` shards the
  episode stream by rank, episode ``i`` to rank ``i % N``). ``batch_size`` and
  ``torch_threads`` are *per rank*: a step averages the gradients of ``N * batch_size``
  windows. ``max_steps`` counts optimizer steps, the same on every rank, so N ranks see N
  times the windows in the same steps (the learning rate is not rescaled).
* Same start: every rank seeds torch identically before building a component and fits the
  normaliser on the same (unsharded) first ``normalizer_episodes`` episodes; the trainer
  checks that the replicas are bit-identical before DDP's initial broadcast (which would
  hide a difference) and records it as ``init_identical``.
* Same steps, same stop: every stop decision (step and wall-time budgets, the memory guard,
  stop requests, the thermal give-up) is agreed by an all-reduce after each step, so every
  rank runs the same number of optimizer steps; the stop reason of the rank that stopped
  is reported (``"rank 1: memory: ..."``).
* Thermal pauses are agreed too: if any rank's SoC is over ``max_temp_c`` every rank pauses,
  polling together, until every rank is under ``resume_temp_c`` (or, after
  ``max_pause_s``, all stop). A rank pausing alone would leave the others blocked in the
  gradient all-reduce, neither logging nor counting the pause, and a pause longer than the
  process group timeout (30 min) would crash the run.
* Buffers updated outside autograd (the VQ-VAE's EMA codebook) are kept identical by
  :func:`share_codebook_updates`; DDP's per-forward buffer broadcast is off, so nothing
  masks a divergence, and after each component the trainer compares a digest of every
  parameter and buffer across ranks and records ``replicas_identical`` (with
  ``world_size``, ``windows_per_rank``, ``episodes_per_rank`` and
  ``episodes_shared_between_ranks``) in the component's result and ``summary.json``.
* Files: rank 0 alone writes (checkpoints, components, ``state.json``, metrics, summary,
  the candidate slot); a checkpoint carries every rank's data position and RNG state, so a
  run resumes exactly with the same number of ranks. Ranks wait at a barrier wherever one
  reads what rank 0 wrote (stale files removed at the start, a finished component that the
  next one loads as a frozen dependency), rank 0's ``state.json`` is broadcast on resume so
  every rank skips the same components, and the summary is rank 0's, broadcast. So
  ``run_dir`` (and ``rlds_dir``) must be one filesystem that every rank sees: on one board
  trivially; across boards, a shared mount.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from continuonbrain.hope import HopeConfig, build_component, load_component, save_component
from continuonbrain.hope.vqvae import EMAQuantizer
from continuonbrain.rlds import Episode, read_episodes
from continuonbrain.rlds.windows import FastWindowDataset, MidTrajectoryDataset, MixedSource, WindowDataset
from continuonbrain.trainer.budgets import (
    MemoryGuard,
    StepBudget,
    ThermalGuard,
    read_temperature_c,
    release_memory,
    rss_mb,
)
from continuonbrain.trainer.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from continuonbrain.trainer.metrics import MetricsLogger, component_summary, read_metrics, write_summary
from continuonbrain.trainer.store import ModelStore
from continuonbrain.trainer.train_config import ComponentTrainConfig, SequentialConfig

log = logging.getLogger(__name__)

DEPENDENCIES = {"vqvae": (), "mid_loop": ("vqvae",), "fast_loop": ()}


class TrainingError(RuntimeError):
    """Training cannot start or go on (no data, a missing dependency, a bad config)."""


# --- data ------------------------------------------------------------------------------------


def episode_source(cfg: SequentialConfig) -> Callable[[], Iterator[Episode]]:
    """A re-iterable stream of the good episodes (bad ones are skipped with a warning),
    with imagined episodes capped at ``max_imagined_fraction``."""
    path = cfg.rlds_dir

    def episodes() -> Iterator[Episode]:
        yield from read_episodes(path, on_error="warn")

    if cfg.max_imagined_fraction is None:
        return episodes
    mixed = MixedSource([(episodes, 1.0)], seed=cfg.seed, max_imagined_fraction=cfg.max_imagined_fraction)
    return lambda: iter(mixed)


def infer_model_config(cfg: SequentialConfig, source: Callable[[], Iterator[Episode]]) -> HopeConfig:
    """HopeConfig from the config's ``model`` block, with shapes and rate taken from the data."""
    first = next(iter(source()), None)
    if first is None:
        raise TrainingError(f"no readable episodes in {cfg.rlds_dir}")
    model = dict(cfg.model)
    model.setdefault("obs_dim", int(first.observation_vector(cfg.observation_keys).shape[1]))
    model.setdefault("action_dim", int(first.action_vector(cfg.action_keys).shape[1]))
    model.setdefault("control_hz", float(first.control_hz))
    if isinstance(first.observation, dict) and cfg.observation_keys:
        model.setdefault("state_keys", list(cfg.observation_keys))
    return HopeConfig.from_dict(model)


def sample_observations(cfg: SequentialConfig, source: Callable[[], Iterator[Episode]]) -> np.ndarray:
    """Observations of the first ``normalizer_episodes`` episodes, to fit the normalisers."""
    rows = []
    for i, ep in enumerate(source()):
        if i >= cfg.normalizer_episodes:
            break
        rows.append(ep.observation_vector(cfg.observation_keys))
    return np.concatenate(rows)


def with_mid_context(
    source: Callable[[], Iterator[Episode]],
    vqvae: nn.Module,
    mid: nn.Module,
    keys: list[str] | None,
    keep: Callable[[int], bool] | None = None,
) -> Callable[[], Iterator[Episode]]:
    """Episodes carrying the frozen Mid loop's context per control step (``extras["context"]``):
    what the Fast loop will see from the Mid loop at each tick when it runs on the robot.

    ``keep(i)`` false: episode ``i`` of the stream is passed on without a context (for data
    parallel training, the episodes of the other ranks' shards, which this rank's dataset
    skips anyway: each rank runs the Mid loop over its own share only)."""

    @torch.no_grad()
    def episodes() -> Iterator[Episode]:
        for i, ep in enumerate(source()):
            if keep is not None and not keep(i):
                yield ep
                continue
            batch = {
                "observation": torch.from_numpy(ep.observation_vector(keys))[None],
                "action": torch.from_numpy(ep.action_vector())[None],
            }
            out = mid(batch, vqvae)
            ep.extras["context"] = out["context_steps"][0].numpy()
            yield ep

    return episodes


def make_dataset(
    name: str, comp: ComponentTrainConfig, source: Callable[[], Iterator[Episode]], cfg: SequentialConfig
) -> WindowDataset:
    common = {"shuffle_buffer": comp.shuffle_buffer, "seed": cfg.seed, "observation_keys": cfg.observation_keys}
    common["action_keys"] = cfg.action_keys
    if name == "vqvae":  # single steps
        return FastWindowDataset(source, steps=1, stride_steps=1, pad_start=False, **common)
    if name == "mid_loop":
        return MidTrajectoryDataset(source, length_s=comp.window_s or 2.0, **common)
    return FastWindowDataset(source, length_s=comp.window_s or 0.1, **common)


def batches(dataset: WindowDataset, batch_size: int, start_epoch: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """Endless (epoch, batch) stream: epochs repeat until the step budget ends training.

    A resumed epoch may have nothing left (the checkpoint came right after its last batch):
    the stream then goes on with the next epoch, as the uninterrupted run did."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=0)
    epoch = start_epoch
    resumed = epoch == dataset.epoch and dataset.state_dict()["consumed_total"] > 0
    while True:
        if epoch != dataset.epoch:  # set_epoch rewinds: never on the epoch a resume restored
            dataset.set_epoch(epoch)
        produced = False
        for batch in loader:
            produced = True
            yield epoch, batch
        if not produced and not resumed:
            raise TrainingError("the episodes yield no training windows (are they shorter than a window?)")
        resumed = False
        epoch += 1


class _LossModule(nn.Module):
    """``forward`` = the component's ``loss``, so DistributedDataParallel sees the call and
    synchronises gradients. Frozen helpers (the VQ-VAE for the Mid loop) are kept out of
    the parameter list."""

    def __init__(self, module: nn.Module, helper: nn.Module | None = None):
        super().__init__()
        self.module = module
        object.__setattr__(self, "_helper", helper)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self._helper is not None:
            return self.module.loss(batch, self._helper)
        return self.module.loss(batch)


# --- data parallel ---------------------------------------------------------------------------


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


def _lr_lambda(comp: ComponentTrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < comp.warmup_steps:
            return (step + 1) / comp.warmup_steps
        span = max(1, comp.max_steps - comp.warmup_steps)
        progress = min(1.0, (step - comp.warmup_steps) / span)
        return comp.min_lr_fraction + (1 - comp.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _is_hot(thermal: ThermalGuard) -> bool:
    """Would ``thermal.wait_if_hot`` pause now?"""
    temp = thermal.temperature()
    return temp is not None and temp >= thermal.max_temp_c


# --- the trainer --------------------------------------------------------------------------------


class SequentialTrainer:
    def __init__(self, cfg: SequentialConfig, *, on_event: Callable[[dict], None] | None = None):
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.components_dir = self.run_dir / "components"
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.state_path = self.run_dir / "state.json"
        self.store = ModelStore(cfg.model_root)
        self.on_event = on_event
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.stop_requested = False
        self._owns_process_group = False

    # -- run state

    def _load_state(self) -> dict[str, Any]:
        if self.state_path.exists():
            return json.loads(self.state_path.read_text())
        return {"components": {}}

    def _save_state(self, state: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        tmp = self.state_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(state, indent=2, default=str) + "\n")
        os.replace(tmp, self.state_path)

    def _emit(self, logger: MetricsLogger | None, record: dict[str, Any]) -> None:
        """Log and report an event: rank 0 only (the other ranks have no logger)."""
        if self.rank != 0:
            return
        if logger is not None:
            logger.log(record)
        if self.on_event is not None:
            self.on_event(record)

    # -- entry point

    def run(self, resume: bool = False) -> dict[str, Any]:
        self._setup_torch()
        try:
            return self._run(resume)
        finally:
            if self._owns_process_group and dist.is_initialized():
                dist.destroy_process_group()
                self._owns_process_group = False

    def _run(self, resume: bool) -> dict[str, Any]:
        cfg = self.cfg
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        # Every rank decides from rank 0's view of the run (which components are done).
        state = self._broadcast(self._load_state() if resume and self.rank == 0 else {"components": {}})
        if not resume and self.rank == 0:
            for stale in (self.checkpoint_dir, self.components_dir):
                for f in stale.glob("*") if stale.exists() else []:
                    f.unlink()
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        self._barrier()  # the others look at components/ only once stale files are gone
        source = episode_source(cfg)
        hope_cfg = infer_model_config(cfg, source)
        self._check_order(hope_cfg)
        state["hope_config"] = hope_cfg.to_dict()
        state["train_config"] = cfg.to_dict()
        self._save_state(state)
        logger = MetricsLogger(self.run_dir) if self.rank == 0 else None
        try:
            for name in cfg.order:
                if state["components"].get(name, {}).get("status") == "done" and resume:
                    log.info("%s already trained in this run: skipping", name)
                    continue
                if self._any_rank(self.stop_requested):
                    break
                result = self.train_component(name, hope_cfg, source, logger, resume)
                state["components"][name] = result
                self._save_state(state)
                if self.rank == 0:
                    self._publish(state)
                release_memory()
        finally:
            if logger is not None:
                logger.close()
        summary = None
        if self.rank == 0:
            summary = self._summary(state)
            write_summary(self.run_dir, summary)
        return self._broadcast(summary)

    def _setup_torch(self) -> None:
        torch.set_num_threads(self.cfg.torch_threads)
        torch.manual_seed(self.cfg.seed)
        np.random.seed(self.cfg.seed)
        if self.cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("gloo")
            self._owns_process_group = True
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    # -- collectives (no-ops in a single process)

    def _barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def _broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def _any_rank(self, flag: bool) -> bool:
        if self.world_size == 1:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def _check_order(self, hope_cfg: HopeConfig) -> None:
        deps = dict(DEPENDENCIES)
        if hope_cfg.fast.use_context:
            deps["fast_loop"] = ("vqvae", "mid_loop")
        available = (
            {p.stem for p in self.components_dir.glob("*.safetensors")} if self.components_dir.exists() else set()
        )
        for i, name in enumerate(self.cfg.order):
            for dep in deps[name]:
                if dep not in self.cfg.order[:i] and dep not in available:
                    raise TrainingError(
                        f"{name} needs a trained {dep}: put {dep} before {name} in 'order' "
                        f"(or set model.fast.use_context=false for a Fast loop without Mid context)"
                    )

    # -- one component

    def train_component(
        self,
        name: str,
        hope_cfg: HopeConfig,
        source: Callable[[], Iterator[Episode]],
        logger: MetricsLogger | None,
        resume: bool,
    ) -> dict[str, Any]:
        cfg, comp = self.cfg, self.cfg.components[name]
        rank, world = self.rank, self.world_size
        torch.manual_seed(cfg.seed)
        module = build_component(name, hope_cfg)
        helper = None
        if name in ("vqvae", "fast_loop"):
            # The unsharded stream: every rank fits on the same first episodes.
            module.fit_normalizer(sample_observations(cfg, source))
        if name == "mid_loop":
            helper = load_component(self.components_dir, "vqvae", hope_cfg)
        if name == "fast_loop" and hope_cfg.fast.use_context:
            vqvae = load_component(self.components_dir, "vqvae", hope_cfg)
            mid = load_component(self.components_dir, "mid_loop", hope_cfg)
            # WindowDataset (num_workers=0) gives episode i to rank i % world: only those need a context.
            keep = None if world == 1 else (lambda i: i % world == rank)
            source = with_mid_context(source, vqvae, mid, cfg.observation_keys, keep)
        dataset = make_dataset(name, comp, source, cfg)
        module.train()
        optimizer = torch.optim.AdamW(module.parameters(), lr=comp.learning_rate, weight_decay=comp.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(comp))
        step, epoch, elapsed_before = 0, 0, 0.0
        seen_windows, seen_episodes = 0, set()
        ckpt_path = self.checkpoint_dir / f"{name}.safetensors"
        if resume and ckpt_path.exists():
            ckpt = load_checkpoint(ckpt_path)
            saved_world = int(ckpt.get("world_size", 1))
            if saved_world != world:
                raise TrainingError(
                    f"{ckpt_path} was saved by a run with {saved_world} rank(s); resume it with as many "
                    f"(this run has {world}): each rank's data position is its own shard's"
                )
            mine = ckpt["ranks"][rank] if world > 1 else ckpt
            module.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            dataset.load_state_dict(mine["data"])
            set_rng_state(mine["rng"])
            seen = mine.get("seen") or {}
            seen_windows, seen_episodes = int(seen.get("windows", 0)), set(seen.get("episodes", []))
            step, epoch, elapsed_before = ckpt["step"], mine["data"]["epoch"], ckpt["elapsed_s"]
            self._emit(logger, {"event": "resumed", "component": name, "step": step})
        init_identical = True
        trainable: nn.Module = _LossModule(module, helper)
        if world > 1:
            # Checked before DDP's constructor broadcasts rank 0's weights, which would hide a difference.
            digests = self._gather(state_digests(module))
            init_identical = all(d == digests[0] for d in digests)
            if not init_identical:
                log.error("%s: the replicas differ before training (seed or normaliser data differ?)", name)
            share_codebook_updates(module, lambda: [abs(cfg.seed), step])
            # forward_sync_buffers=False (the old broadcast_buffers=False): no broadcast of rank 0's
            # buffers before each forward. The only buffers trained in forward (EMA codebooks) are
            # kept identical by share_codebook_updates, and the check after training sees any slip.
            # find_unused_parameters: the Mid loop's context projection (ctx_proj, what the Fast
            # loop reads) is not used by the Mid loop's own loss.
            trainable = nn.parallel.DistributedDataParallel(
                trainable, forward_sync_buffers=False, find_unused_parameters=True
            )
        self._barrier()  # every rank has read the checkpoint before rank 0 may overwrite it

        budget = StepBudget(comp.max_steps, comp.max_wall_time_s)
        budget.started -= elapsed_before
        memory = MemoryGuard(comp.memory_budget_mb, cfg.min_available_mb, comp.memory_check_every)
        thermal = ThermalGuard(**vars(cfg.thermal))
        started = time.monotonic() - elapsed_before
        last_log, last_log_step = time.monotonic(), step
        stop_reason = self._agree(budget.exhausted(step))
        hot = world > 1 and self._any_rank(_is_hot(thermal))  # one process: thermal.wait_if_hot looks itself

        def checkpoint() -> None:
            mine = {
                "data": dataset.state_dict(),
                "rng": rng_state(),
                "seen": {"windows": seen_windows, "episodes": sorted(seen_episodes)},
            }
            ranks = self._gather(mine)  # a collective: every rank checkpoints at the same steps
            if self.rank == 0:
                save_checkpoint(
                    {
                        "model": module.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        **mine,
                        "world_size": world,
                        **({"ranks": ranks} if world > 1 else {}),
                        "step": step,
                        "elapsed_s": time.monotonic() - started,
                    },
                    ckpt_path,
                )

        def emit_thermal(event: dict[str, Any]) -> None:
            self._emit(logger, {**event, "component": name, "step": step})

        self._emit(logger, {"event": "component_start", "component": name, "step": step, "steps": comp.max_steps})
        stream = batches(dataset, comp.batch_size, epoch)
        while stop_reason is None:
            if world == 1:
                stop_reason = thermal.wait_if_hot(emit_thermal)
            elif hot:
                stop_reason = self._pause_together(thermal, emit_thermal)
            if stop_reason:
                checkpoint()
                break
            _, batch = next(stream)
            losses = trainable(batch)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(module.parameters(), comp.grad_clip))
            optimizer.step()
            scheduler.step()
            dataset.mark_consumed(batch)
            seen_windows += int(batch["position"].numel())
            seen_episodes.update(batch["episode_index"].reshape(-1).tolist())
            step += 1
            scalars = {k: float(v.detach()) for k, v in losses.items() if torch.is_tensor(v) and v.dim() == 0}
            reason = memory.check() or budget.exhausted(step) or ("stopped" if self.stop_requested else None)
            stop_reason, hot, scalars = self._sync_step(reason, world > 1 and _is_hot(thermal), scalars)
            if step % comp.log_every == 0 or step == comp.max_steps:
                now = time.monotonic()
                record = {
                    "component": name,
                    "step": step,
                    "epoch": dataset.epoch,
                    **scalars,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": grad_norm,
                    "steps_per_s": (step - last_log_step) / max(now - last_log, 1e-9),
                    "rss_mb": round(rss_mb(), 1),
                    "temp_c": read_temperature_c(cfg.thermal.sysfs_root),
                    "wall_time_s": round(now - started, 3),
                }
                last_log, last_log_step = now, step
                self._emit(logger, record)
            if stop_reason or step % comp.checkpoint_every == 0:
                checkpoint()

        wall = time.monotonic() - started
        module.eval()
        ranks = self._gather(
            {
                "digests": state_digests(module),
                "windows": seen_windows,
                "episodes": sorted(seen_episodes),
                "peak_rss_mb": max(memory.peak_rss_mb, rss_mb()),
            }
        )
        mismatch = sorted({k for r in ranks for k, d in r["digests"].items() if ranks[0]["digests"].get(k) != d})
        if mismatch:
            log.error("%s: the replicas differ after training in %s", name, mismatch)
        episode_sets = [set(r["episodes"]) for r in ranks]
        shared = set().union(*(a & b for i, a in enumerate(episode_sets) for b in episode_sets[i + 1 :]))
        if self.rank == 0:
            save_component(self.components_dir, name, module, overwrite_config=True)
        self._barrier()  # the next component may load this one from components/
        result = {
            "status": "done",
            "steps": step,
            "wall_time_s": round(wall, 3),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in ranks), 1),
            "stop_reason": stop_reason,
            "thermal_pauses": len(thermal.pauses),
            "world_size": world,
            "batch_size_per_rank": comp.batch_size,
            "init_identical": init_identical,
            "replicas_identical": not mismatch,
            **({"replica_mismatch": mismatch} if mismatch else {}),
            "windows_per_rank": [r["windows"] for r in ranks],
            "episodes_per_rank": [len(e) for e in episode_sets],
            "episodes_shared_between_ranks": len(shared),
        }
        self._emit(logger, {"event": "component_done", "component": name, **result})
        # Returning drops the module, its optimizer state and the data stream: the caller frees memory.
        return result

    def _agree(self, reason: str | None) -> str | None:
        """All ranks stop together (one rank alone stopping would hang the others in DDP)."""
        return self._sync_step(reason, False, {})[0]

    def _sync_step(
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
            reasons = self._gather(reason)
            reason = reason or next(f"rank {r}: {why}" for r, why in enumerate(reasons) if why)
        return reason, bool(t[1] > 0), means

    def _pause_together(self, thermal: ThermalGuard, emit: Callable[[dict], None]) -> str | None:
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

    # -- outputs

    def _publish(self, state: dict[str, Any]) -> None:
        """The run's finished components (+ config) become ``<model_root>/candidate``."""
        files = sorted(self.components_dir.glob("*"))
        done = [n for n in self.cfg.order if state["components"].get(n, {}).get("status") == "done"]
        current = self.store.manifest("current")
        self.store.write_slot(
            "candidate",
            files,
            components=done,
            kind="hope-seed",
            parent=current["version"] if current else None,
            metrics={n: state["components"][n] for n in done},
        )

    def _summary(self, state: dict[str, Any]) -> dict[str, Any]:
        records = read_metrics(self.run_dir)
        comps = {}
        for name in self.cfg.order:
            result = state["components"].get(name)
            if result is None:
                continue
            comps[name] = {**component_summary(records, name), **result}
        return {
            "run_dir": str(self.run_dir),
            "rlds_dir": self.cfg.rlds_dir,
            "model_root": self.cfg.model_root,
            "components": comps,
            "all_halved": all(c.get("halved", False) for c in comps.values()) if comps else False,
        }
