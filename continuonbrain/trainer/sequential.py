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

Data parallel: under ``torchrun --nproc_per_node=N`` (gloo, CPU) each component trains with
DistributedDataParallel, each rank reading its own share of the episodes; rank 0 writes.
"""

from __future__ import annotations

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
from torch import nn

from continuonbrain.hope import HopeConfig, build_component, load_component, save_component
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
    source: Callable[[], Iterator[Episode]], vqvae: nn.Module, mid: nn.Module, keys: list[str] | None
) -> Callable[[], Iterator[Episode]]:
    """Episodes carrying the frozen Mid loop's context per control step (``extras["context"]``):
    what the Fast loop will see from the Mid loop at each tick when it runs on the robot."""

    @torch.no_grad()
    def episodes() -> Iterator[Episode]:
        for ep in source():
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
    """Endless (epoch, batch) stream: epochs repeat until the step budget ends training."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=0)
    epoch = start_epoch
    while True:
        if epoch != dataset.epoch:  # set_epoch rewinds: never on the epoch a resume restored
            dataset.set_epoch(epoch)
        produced = False
        for batch in loader:
            produced = True
            yield epoch, batch
        if not produced:
            raise TrainingError("the episodes yield no training windows (are they shorter than a window?)")
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
        if logger is not None:
            logger.log(record)
        if self.on_event is not None:
            self.on_event(record)

    # -- entry point

    def run(self, resume: bool = False) -> dict[str, Any]:
        cfg = self.cfg
        self._setup_torch()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = self._load_state() if resume else {"components": {}}
        if not resume and self.rank == 0:
            for stale in (self.checkpoint_dir, self.components_dir):
                for f in stale.glob("*") if stale.exists() else []:
                    f.unlink()
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
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
                if self.stop_requested:
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
        summary = self._summary(state)
        if self.rank == 0:
            write_summary(self.run_dir, summary)
        return summary

    def _setup_torch(self) -> None:
        torch.set_num_threads(self.cfg.torch_threads)
        torch.manual_seed(self.cfg.seed)
        np.random.seed(self.cfg.seed)
        if self.cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.world_size > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("gloo")

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
        torch.manual_seed(cfg.seed)
        module = build_component(name, hope_cfg)
        helper = None
        if name in ("vqvae", "fast_loop"):
            module.fit_normalizer(sample_observations(cfg, source))
        if name == "mid_loop":
            helper = load_component(self.components_dir, "vqvae", hope_cfg)
        if name == "fast_loop" and hope_cfg.fast.use_context:
            vqvae = load_component(self.components_dir, "vqvae", hope_cfg)
            mid = load_component(self.components_dir, "mid_loop", hope_cfg)
            source = with_mid_context(source, vqvae, mid, cfg.observation_keys)
        dataset = make_dataset(name, comp, source, cfg)
        module.train()
        optimizer = torch.optim.AdamW(module.parameters(), lr=comp.learning_rate, weight_decay=comp.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(comp))
        step, epoch, elapsed_before = 0, 0, 0.0
        ckpt_path = self.checkpoint_dir / f"{name}.safetensors"
        if resume and ckpt_path.exists():
            ckpt = load_checkpoint(ckpt_path)
            module.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            dataset.load_state_dict(ckpt["data"])
            set_rng_state(ckpt["rng"])
            step, epoch, elapsed_before = ckpt["step"], ckpt["data"]["epoch"], ckpt["elapsed_s"]
            self._emit(logger, {"event": "resumed", "component": name, "step": step})
        trainable: nn.Module = _LossModule(module, helper)
        if self.world_size > 1:
            trainable = nn.parallel.DistributedDataParallel(trainable, find_unused_parameters=True)

        budget = StepBudget(comp.max_steps, comp.max_wall_time_s)
        budget.started -= elapsed_before
        memory = MemoryGuard(comp.memory_budget_mb, cfg.min_available_mb, comp.memory_check_every)
        thermal = ThermalGuard(**vars(cfg.thermal))
        started = time.monotonic() - elapsed_before
        last_log, last_log_step = time.monotonic(), step
        stop_reason = budget.exhausted(step)

        def checkpoint() -> None:
            if self.rank == 0:
                save_checkpoint(
                    {
                        "model": module.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "data": dataset.state_dict(),
                        "rng": rng_state(),
                        "step": step,
                        "elapsed_s": time.monotonic() - started,
                    },
                    ckpt_path,
                )

        self._emit(logger, {"event": "component_start", "component": name, "step": step, "steps": comp.max_steps})
        stream = batches(dataset, comp.batch_size, epoch)
        while stop_reason is None:
            stop_reason = thermal.wait_if_hot(lambda e, s=step: self._emit(logger, {**e, "component": name, "step": s}))
            if stop_reason:
                break
            _, batch = next(stream)
            losses = trainable(batch)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(module.parameters(), comp.grad_clip))
            optimizer.step()
            scheduler.step()
            dataset.mark_consumed(batch)
            step += 1
            if step % comp.log_every == 0 or step == comp.max_steps:
                now = time.monotonic()
                record = {
                    "component": name,
                    "step": step,
                    "epoch": dataset.epoch,
                    **{k: float(v.detach()) for k, v in losses.items() if torch.is_tensor(v) and v.dim() == 0},
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": grad_norm,
                    "steps_per_s": (step - last_log_step) / max(now - last_log, 1e-9),
                    "rss_mb": round(rss_mb(), 1),
                    "temp_c": read_temperature_c(cfg.thermal.sysfs_root),
                    "wall_time_s": round(now - started, 3),
                }
                last_log, last_log_step = now, step
                self._emit(logger, record)
            stop_reason = memory.check() or budget.exhausted(step) or ("stopped" if self.stop_requested else None)
            stop_reason = self._agree(stop_reason)
            if stop_reason or step % comp.checkpoint_every == 0:
                checkpoint()

        wall = time.monotonic() - started
        module.eval()
        if self.rank == 0:
            save_component(self.components_dir, name, module, overwrite_config=True)
        result = {
            "status": "done",
            "steps": step,
            "wall_time_s": round(wall, 3),
            "peak_rss_mb": round(max(memory.peak_rss_mb, rss_mb()), 1),
            "stop_reason": stop_reason,
            "thermal_pauses": len(thermal.pauses),
        }
        self._emit(logger, {"event": "component_done", "component": name, **result})
        # Returning drops the module, its optimizer state and the data stream: the caller frees memory.
        return result

    def _agree(self, reason: str | None) -> str | None:
        """All ranks stop together (one rank alone stopping would hang the others in DDP)."""
        if self.world_size == 1:
            return reason
        flag = torch.tensor([1.0 if reason else 0.0])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return reason or ("another rank stopped" if flag.item() > 0 else None)

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
