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
``deterministic`` on, a run killed at any point and resumed ends with the same component
files as an uninterrupted run, byte for byte (``tests/test_trainer_resume.py`` kills one
inside each component). That needs every RNG draw after the resume point to be the
uninterrupted run's: each component starts from the seed, and nothing but training draws
from the global RNGs (the data loader has a generator of its own).

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

The data side (episodes, shapes, windows, the Fast loop's Mid context, the batch loop) is in
:mod:`continuonbrain.trainer.hope_data`, the cross-rank plumbing (:class:`Ranks`, the EMA
codebook sharing, replica digests) in :mod:`continuonbrain.trainer.distributed`, and what is
shared with the LoRA adapter trainer in its own modules: the guards and the thermal policy
(:mod:`~continuonbrain.trainer.budgets`), checkpoints (:mod:`~continuonbrain.trainer.checkpoint`),
the event format and summaries (:mod:`~continuonbrain.trainer.metrics`). This module is the loop
itself, and ``continuonbrain train`` (:func:`run_command`, :func:`main`).

What a test (or a board with other sensors) changes is passed in, never patched in:
:class:`SequentialTrainer` takes the thermal and memory guard factories and the EMA codebook
sharing as parameters, and :func:`main` hands them on.

Why one module of 600 lines: it is the training loop itself (most of it is
:meth:`SequentialTrainer.train_component`, whose budget, resume, checkpoint and cross-rank
stop decisions interleave step by step); the data, distributed, budget, checkpoint and
metrics parts have already been moved out (see above).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from continuonbrain.hope import HopeConfig, build_component, load_component, save_component
from continuonbrain.models.store import ModelStore
from continuonbrain.rlds import Episode
from continuonbrain.trainer.budgets import (
    BUDGET_REASONS,
    MemoryGuard,
    StepBudget,
    ThermalGuard,
    budget_spent,
    read_temperature_c,
    release_memory,
    rss_mb,
    stop_reason,
)
from continuonbrain.trainer.checkpoint import load_checkpoint, rng_state, save_checkpoint, seed_rngs, set_rng_state
from continuonbrain.trainer.distributed import Ranks, is_hot, share_codebook_updates, state_digests
from continuonbrain.trainer.hope_data import (
    TrainingError,
    batches,
    episode_source,
    held_out_ids,
    infer_model_config,
    make_dataset,
    observation_keys,
    sample_image_features,
    sample_observations,
    with_codes,
    with_image_features,
    with_mid_context,
    with_pixel_frames,
)
from continuonbrain.trainer.metrics import (
    EventFile,
    MetricsLogger,
    component_summary,
    event_record,
    read_metrics,
    step_record,
    write_json,
    write_summary,
)
from continuonbrain.trainer.train_config import (
    ComponentTrainConfig,
    SequentialConfig,
    ThermalConfig,
    add_train_arguments,
    train_config_from_args,
)

__all__ = [
    "BUDGET_REASONS",
    "DEPENDENCIES",
    "SequentialTrainer",
    "TrainingError",
    "add_arguments",
    "main",
    "run_command",
]

log = logging.getLogger(__name__)

DEPENDENCIES = {"vqvae": (), "mid_loop": ("vqvae",), "fast_loop": ()}


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


#: Makes a component's memory guard: ``(budget_mb, min_available_mb, check_every)``.
MemoryGuardFactory = Callable[[float | None, float | None, int], MemoryGuard]
#: Makes a component's thermal guard from the run's ``thermal`` config.
ThermalGuardFactory = Callable[[ThermalConfig], ThermalGuard]
#: Keeps the EMA codebooks of DDP replicas identical (see ``distributed.share_codebook_updates``).
CodebookSharing = Callable[[nn.Module, Callable[[], list[int]]], int]


def _lr_lambda(comp: ComponentTrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < comp.warmup_steps:
            return (step + 1) / comp.warmup_steps
        span = max(1, comp.max_steps - comp.warmup_steps)
        progress = min(1.0, (step - comp.warmup_steps) / span)
        return comp.min_lr_fraction + (1 - comp.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# --- the trainer --------------------------------------------------------------------------------


class SequentialTrainer:
    """Trains ``cfg.order`` one component at a time (see the module doc); ``run`` returns the
    summary. ``stop_requested = True`` (from a signal handler or another thread) stops the
    running component at its next step, after a checkpoint, and skips the rest.

    ``on_event`` gets every record of ``metrics.jsonl`` as it is written (the one event format,
    :mod:`~continuonbrain.trainer.metrics`). ``thermal_guard``, ``memory_guard`` and
    ``share_codebooks`` replace the guards and the cross-rank codebook sharing (per-rank sensors,
    a negative control); the defaults are the real ones."""

    def __init__(
        self,
        cfg: SequentialConfig,
        *,
        on_event: Callable[[dict], None] | None = None,
        thermal_guard: ThermalGuardFactory = ThermalGuard.from_config,
        memory_guard: MemoryGuardFactory = MemoryGuard,
        share_codebooks: CodebookSharing = share_codebook_updates,
    ):
        self.cfg = cfg
        self.thermal_guard = thermal_guard
        self.memory_guard = memory_guard
        self.share_codebooks = share_codebooks
        self.run_dir = Path(cfg.run_dir)
        self.components_dir = self.run_dir / "components"
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.state_path = self.run_dir / "state.json"
        self.store = ModelStore(cfg.model_root)
        self.on_event = on_event
        self.ranks = Ranks()
        self.stop_requested = False

    @property
    def rank(self) -> int:
        return self.ranks.rank

    @property
    def world_size(self) -> int:
        return self.ranks.world_size

    # -- run state

    def _load_state(self) -> dict[str, Any]:
        if self.state_path.exists():
            return json.loads(self.state_path.read_text())
        return {"components": {}}

    def _save_state(self, state: dict[str, Any]) -> None:
        """Replace ``state.json`` durably: after a power cut it is the old one or the new one,
        never empty (an unreadable ``state.json`` would leave the run unresumable)."""
        if self.rank != 0:
            return
        write_json(self.state_path, state)

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
            self.ranks.teardown()

    def _run(self, resume: bool) -> dict[str, Any]:
        cfg, ranks = self.cfg, self.ranks
        if ranks.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        # Every rank decides from rank 0's view of the run (which components are done).
        state = ranks.broadcast(self._load_state() if resume and ranks.is_main else {"components": {}})
        if not resume and ranks.is_main:
            for stale in (self.checkpoint_dir, self.components_dir):
                for f in stale.glob("*") if stale.exists() else []:
                    f.unlink()
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        ranks.barrier()  # the others look at components/ only once stale files are gone
        if "held_out" not in state:  # a resumed run keeps its split, whatever was recorded since
            state["held_out"] = held_out_ids(cfg) if ranks.is_main else []
        state["held_out"] = ranks.broadcast(state["held_out"])
        source = episode_source(cfg, state["held_out"])
        hope_cfg = infer_model_config(cfg, source)
        self._check_order(hope_cfg)
        state["hope_config"] = hope_cfg.to_dict()
        state["train_config"] = cfg.to_dict()
        self._save_state(state)
        logger = MetricsLogger(self.run_dir) if ranks.is_main else None
        try:
            for name in cfg.order:
                if state["components"].get(name, {}).get("status") == "done" and resume:
                    log.info("%s already trained in this run: skipping", name)
                    continue
                if ranks.any(self.stop_requested):
                    break
                result = self.train_component(name, hope_cfg, source, logger, resume)
                state["components"][name] = result
                self._save_state(state)
                if ranks.is_main:
                    self._publish(state)
                release_memory()
        finally:
            if logger is not None:
                logger.close()
        summary = None
        if ranks.is_main:
            summary = self._summary(state)
            write_summary(self.run_dir, summary)
        return ranks.broadcast(summary)

    def _setup_torch(self) -> None:
        torch.set_num_threads(self.cfg.torch_threads)
        seed_rngs(self.cfg.seed)
        if self.cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.ranks.setup()

    def _check_order(self, hope_cfg: HopeConfig) -> None:
        deps = dict(DEPENDENCIES)
        if hope_cfg.fast.use_context:
            deps["fast_loop"] = ("vqvae", "mid_loop")
        elif hope_cfg.fast_image_dim and hope_cfg.fast.pixel_encoder != "trained":
            deps["fast_loop"] = ("vqvae",)  # the Fast loop's eyes start as a copy of the VQ-VAE's encoder
        available = (
            {p.stem for p in self.components_dir.glob("*.safetensors")} if self.components_dir.exists() else set()
        )
        for i, name in enumerate(self.cfg.order):
            for dep in deps[name]:
                if dep not in self.cfg.order[:i] and dep not in available:
                    raise TrainingError(
                        f"{name} needs a trained {dep}: put {dep} before {name} in 'order' "
                        f"(or set model.fast.use_context=false for a Fast loop without Mid context, and "
                        f'model.fast.pixel_encoder="trained" for camera features learned from scratch)'
                    )

    def _pixel_source(
        self, pixels: nn.Module, hope_cfg: HopeConfig, source: Callable[[], Iterator[Episode]]
    ) -> Callable[[], Iterator[Episode]]:
        """The Fast loop reads the camera every tick through its own conv encoder
        (``fast.pixel_encoder``): copied from the trained VQ-VAE unless ``"trained"`` (from
        scratch); frozen, every frame is featurised once (cached), else the pooled frames are
        cached and the encoder trains with the SSM. Either way the feature normaliser is fitted
        on the first episodes, with the encoder as training starts."""
        mode = hope_cfg.fast.pixel_encoder
        if mode != "trained":
            vqvae = load_component(self.components_dir, "vqvae", hope_cfg)
            pixels.load_from_vqvae(vqvae)  # type: ignore[operator]
            del vqvae
        if mode == "vqvae_frozen":
            source = with_image_features(source, pixels, hope_cfg.image_keys)
            pixels.fit_normalizer(sample_image_features(self.cfg, source))  # type: ignore[operator]
        else:
            source = with_pixel_frames(source, pixels, hope_cfg.image_keys)
            pixels.fit_normalizer(sample_image_features(self.cfg, source, pixels))  # type: ignore[operator]
        return source

    # -- one component

    def train_component(
        self,
        name: str,
        hope_cfg: HopeConfig,
        source: Callable[[], Iterator[Episode]],
        logger: MetricsLogger | None,
        resume: bool,
    ) -> dict[str, Any]:
        cfg, comp, ranks = self.cfg, self.cfg.components[name], self.ranks
        rank, world = ranks.rank, ranks.world_size
        keys = observation_keys(cfg, hope_cfg)
        seed_rngs(cfg.seed)
        module = build_component(name, hope_cfg)
        helper = None
        if name in ("vqvae", "fast_loop"):
            # The unsharded stream: every rank fits on the same first episodes.
            module.fit_normalizer(sample_observations(cfg, source, keys))
        if name == "mid_loop":
            helper = load_component(self.components_dir, "vqvae", hope_cfg)
            if hope_cfg.image_keys:  # tokenize every frame once, not every window at every step
                source = with_codes(source, helper, keys, hope_cfg.image_keys)
        if name == "fast_loop" and hope_cfg.fast_image_dim:
            source = self._pixel_source(module.pixels, hope_cfg, source)
        if name == "fast_loop" and hope_cfg.fast.use_context:
            vqvae = load_component(self.components_dir, "vqvae", hope_cfg)
            mid = load_component(self.components_dir, "mid_loop", hope_cfg)
            # Only this rank's episodes need a context (the dataset skips the others').
            keep = None if world == 1 else ranks.owns
            if hope_cfg.image_keys:  # frames tokenized once for all epochs, not once per epoch
                source = with_codes(source, vqvae, keys, hope_cfg.image_keys)
            source = with_mid_context(source, vqvae, mid, keys, keep, hope_cfg.image_keys, cfg.action_keys)
        dataset = make_dataset(name, comp, source, cfg, hope_cfg, tokenized=bool(hope_cfg.image_keys))
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
            self._emit(logger, event_record("resumed", name, step))
        init_identical = True
        trainable: nn.Module = _LossModule(module, helper)
        if world > 1:
            # Checked before DDP's constructor broadcasts rank 0's weights, which would hide a difference.
            digests = ranks.gather(state_digests(module))
            init_identical = all(d == digests[0] for d in digests)
            if not init_identical:
                log.error("%s: the replicas differ before training (seed or normaliser data differ?)", name)
            self.share_codebooks(module, lambda: [abs(cfg.seed), step])
            # forward_sync_buffers=False (the old broadcast_buffers=False): no broadcast of rank 0's
            # buffers before each forward. The only buffers trained in forward (EMA codebooks) are
            # kept identical by share_codebook_updates, and the check after training sees any slip.
            # find_unused_parameters: the Mid loop's context projection (ctx_proj, what the Fast
            # loop reads) is not used by the Mid loop's own loss.
            trainable = nn.parallel.DistributedDataParallel(
                trainable, forward_sync_buffers=False, find_unused_parameters=True
            )
        ranks.barrier()  # every rank has read the checkpoint before rank 0 may overwrite it

        budget = StepBudget(comp.max_steps, comp.max_wall_time_s)
        budget.started -= elapsed_before
        memory = self.memory_guard(comp.memory_budget_mb, cfg.min_available_mb, comp.memory_check_every)
        thermal = self.thermal_guard(cfg.thermal)
        started = time.monotonic() - elapsed_before
        last_log, last_log_step = time.monotonic(), step
        stop = ranks.agree(budget.exhausted(step))
        hot = world > 1 and ranks.any(is_hot(thermal))  # one process: thermal.wait_if_hot looks itself

        def checkpoint() -> None:
            mine = {
                "data": dataset.state_dict(),
                "rng": rng_state(),
                "seen": {"windows": seen_windows, "episodes": sorted(seen_episodes)},
            }
            per_rank = ranks.gather(mine)  # a collective: every rank checkpoints at the same steps
            if ranks.is_main:
                save_checkpoint(
                    {
                        "model": module.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        **mine,
                        "world_size": world,
                        **({"ranks": per_rank} if world > 1 else {}),
                        "step": step,
                        "elapsed_s": time.monotonic() - started,
                    },
                    ckpt_path,
                )

        def emit_thermal(event: dict[str, Any]) -> None:
            self._emit(
                logger, event_record(event["event"], name, step, **{k: v for k, v in event.items() if k != "event"})
            )

        self._emit(logger, event_record("component_start", name, step, steps=comp.max_steps))
        stream = batches(dataset, comp.batch_size, epoch)
        while stop is None:
            if world == 1:
                stop = thermal.wait_if_hot(emit_thermal)
            elif hot:
                stop = ranks.pause_together(thermal, emit_thermal)
            if stop:
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
            reason = stop_reason(budget, memory, step, self.stop_requested)
            stop, hot, scalars = ranks.sync_step(reason, world > 1 and is_hot(thermal), scalars)
            if step % comp.log_every == 0 or step == comp.max_steps:
                now = time.monotonic()
                record = step_record(
                    name,
                    step,
                    scalars,
                    epoch=dataset.epoch,
                    lr=scheduler.get_last_lr()[0],
                    grad_norm=grad_norm,
                    steps_per_s=(step - last_log_step) / max(now - last_log, 1e-9),
                    rss_mb=round(rss_mb(), 1),
                    temp_c=read_temperature_c(cfg.thermal.sysfs_root),
                    wall_time_s=round(now - started, 3),
                )
                last_log, last_log_step = now, step
                self._emit(logger, record)
            if stop or step % comp.checkpoint_every == 0:
                checkpoint()

        wall = time.monotonic() - started
        module.eval()
        per_rank = ranks.gather(
            {
                "digests": state_digests(module),
                "windows": seen_windows,
                "episodes": sorted(seen_episodes),
                "peak_rss_mb": max(memory.peak_rss_mb, rss_mb()),
            }
        )
        mismatch = sorted({k for r in per_rank for k, d in r["digests"].items() if per_rank[0]["digests"].get(k) != d})
        if mismatch:
            log.error("%s: the replicas differ after training in %s", name, mismatch)
        episode_sets = [set(r["episodes"]) for r in per_rank]
        shared = set().union(*(a & b for i, a in enumerate(episode_sets) for b in episode_sets[i + 1 :]))
        if ranks.is_main:
            save_component(self.components_dir, name, module, overwrite_config=True)
        ranks.barrier()  # the next component may load this one from components/
        result = {
            # A spent budget finishes a component; a stop request, the memory guard or the thermal
            # give-up only interrupt it: its checkpoint is kept and --resume trains it on to its budget.
            "status": "done" if budget_spent(stop) else "interrupted",
            "steps": step,
            "wall_time_s": round(wall, 3),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in per_rank), 1),
            "stop_reason": stop,
            "thermal_pauses": len(thermal.pauses),
            "world_size": world,
            "batch_size_per_rank": comp.batch_size,
            "init_identical": init_identical,
            "replicas_identical": not mismatch,
            **({"replica_mismatch": mismatch} if mismatch else {}),
            "windows_per_rank": [r["windows"] for r in per_rank],
            "episodes_per_rank": [len(e) for e in episode_sets],
            "episodes_shared_between_ranks": len(shared),
        }
        self._emit(logger, event_record("component_done", name, **result))
        # Returning drops the module, its optimizer state and the data stream: the caller frees memory.
        return result

    # -- outputs

    def _publish(self, state: dict[str, Any]) -> None:
        """The run's finished components (+ config) become ``<model_root>/candidate``."""
        files = sorted(self.components_dir.glob("*"))
        done = [n for n in self.cfg.order if n in state["components"]]  # done or interrupted: saved either way
        current = self.store.manifest("current")
        self.store.write_slot(
            "candidate",
            files,
            components=done,
            kind="hope-seed",
            parent=current["version"] if current else None,
            metrics={n: state["components"][n] for n in done},
            # rlds_dir: what the promotion gate holds its tail out of (and `imagine` starts from)
            extra={
                "rlds_dir": self.cfg.rlds_dir,
                "imagined_rlds_dirs": list(self.cfg.imagined_rlds_dirs),
                # the episodes never trained on: the gate compares candidate and current on these
                "held_out": {"rlds_dir": self.cfg.rlds_dir, "split": None, "episode_ids": state.get("held_out", [])},
            },
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


# --- command line ---------------------------------------------------------------------------

#: The options of ``continuonbrain train`` (torch-free: defined with the config).
add_arguments = add_train_arguments


def run_command(args: argparse.Namespace, **trainer_options: Any) -> int:
    """``continuonbrain train``: exit 0 when the run ended (finished or interrupted, then
    resumable), 2 when it could not run. ``trainer_options`` go to :class:`SequentialTrainer`."""
    import signal

    try:
        cfg = train_config_from_args(args)
        with EventFile(getattr(args, "events", None)) as events:
            trainer = SequentialTrainer(cfg, on_event=events, **trainer_options)

            def stop(signum: int, frame: object) -> None:  # SIGTERM (the API's stop): checkpoint, then stop
                trainer.stop_requested = True

            with contextlib.suppress(ValueError):  # not the main thread: no signal handler
                signal.signal(signal.SIGTERM, stop)
            summary = trainer.run(resume=args.resume)
    except (TrainingError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun every rank has the summary: print it once
        return 0
    if args.json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
        return 0
    print(f"run: {summary['run_dir']}  (metrics.jsonl, summary.json)")
    for name, c in summary["components"].items():
        print(
            f"  {name:<10} steps {c['steps']:>5}  loss {c.get('initial_loss', float('nan')):.4f} -> "
            f"{c.get('final_loss', float('nan')):.4f}  {c['wall_time_s']:.1f} s  peak RSS {c['peak_rss_mb']:.0f} MB  "
            f"stop: {c['stop_reason']}"
        )
    print(f"candidate: {Path(summary['model_root']) / 'candidate'}")
    unfinished = [name for name, c in summary["components"].items() if c.get("status") != "done"]
    if unfinished:
        print(f"interrupted in {unfinished[0]}: `--resume` with the same run dir trains on from its checkpoint")
    return 0


def main(argv: Sequence[str] | None = None, **trainer_options: Any) -> int:
    """``continuonbrain train`` as a function: ``main(["--config", ...], share_codebooks=...)``
    runs it with :class:`SequentialTrainer` options (what tests and custom entry points pass)."""
    parser = argparse.ArgumentParser(prog="continuonbrain train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run_command(parser.parse_args(argv), **trainer_options)
