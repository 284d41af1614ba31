"""Local LoRA trainer: the robot keeps learning after the seed, and only a gated adapter drives.

When the robot is idle, cool, charged and not teleoperated, and new episodes have arrived,
:func:`maybe_run_local_training` fine-tunes LoRA adapters on the newest episodes, runs the
result *in shadow* against what the robot actually did, and only then swaps it in::

    gates (robot.gates: idle, teleop, battery, thermal, new episodes)  -> "skipped" + the first failing gate
    episodes = the newest data.max_episodes; the newest safety.eval_tail_episodes are held out for the gate
        too few                                                        -> "no_data", nothing written
    replay set = episodes of the seed's task (trainer.replay): replay.holdout_episodes held out for the
        gate's forgetting check, up to replay.max_episodes rehearsed at replay.share of the windows
    hooks.start: base model (<model_root>/current, adapter not applied), LoRA on lora.layers
    train under budgets (steps, wall time, memory), pausing while the SoC is hot, checkpointing
        every training.checkpoint_every steps; a memory stop, the thermal give-up or a stop
        request checkpoints and ends the run "interrupted" (resumable, nothing written to the store)
    candidate slot = the base seed's files + adapter_config.json + adapter_model.safetensors (PEFT keys)
    shadow gate on the held-out tail: candidate vs logged actions, and vs the current model
        pass -> PromotionStore.promote (old current to history/)   fail -> PromotionStore.reject (rejected/)
    status.json in log_dir (after every run, skipped ones too), one JSONL log per run, rotated

Why held-out episodes and not the training ones: the gate must tell whether the adapter
generalises to what the robot will see next, and the newest episodes are the closest to that.
Why a replay set: an adapter trained on the new episodes alone forgets what the seed could do
(the demo's adapter, fitted to targets behind the robot, reached 26% of ordinary reach2d
targets against the seed's 100%); rehearsing a share of the seed's episodes keeps the old task,
and the gate checks it on replay episodes no run trained on (:mod:`~continuonbrain.trainer.replay`).
Why a fresh adapter on the seed each run (``HopeBrain.load(apply_adapter=False)``) rather than
stacking adapters: a chain of adapters, each trained on a few minutes of data, drifts; one
adapter on a fixed seed is small, gated against the same reference, and rolled back by the store.

**Resume after a kill.** A run keeps its state in ``<log_dir>/adapt-run/`` until its candidate is
in the store: ``job.json`` (the exact training and held-out episodes, the watermark snapshot,
the base version, its log), ``work/`` (the seed's files it adapts, copied at the start) and
``checkpoint.safetensors`` (the hooks' state: adapter weights, optimizer, data position, RNG;
the step, the losses so far). ``resume=True`` (``continuonbrain adapt --resume``) continues the
unfinished run from its checkpoint with the same episodes and the same base, and ends with the
adapter the uninterrupted run would have written, byte for byte; without ``--resume`` a new run
starts afresh. Stub dry runs keep theirs apart (``adapt-run-stub/``).

The loop shares the seed trainer's machinery: the guards and the thermal pause policy
(:mod:`~continuonbrain.trainer.budgets`), checkpoints (:mod:`~continuonbrain.trainer.checkpoint`),
the event format and the summary writer (:mod:`~continuonbrain.trainer.metrics`; steps are
``{"event": "step", "component": "lora", ...}``), the episode source and its rule for imagined
episodes (:mod:`~continuonbrain.trainer.episode_mix`), and, in the torch hooks, the batch loop.

The loop itself is framework-free: a :class:`ModelHooks` object does the model work.
:func:`~continuonbrain.trainer.hooks_torch.build_torch_hooks` gives torch hooks for the HOPE seed
(or any torch model); :func:`build_stub_hooks` runs the whole loop (episodes, budgets, gate,
rotation) without a model, for dry runs. A stub candidate is marked ``kind: "stub"`` and is
never promoted: it is set aside with the reason "stub", so a dry run can never replace a real
``current``.

The parts live beside this loop: :mod:`~continuonbrain.trainer.lora_config` (the job config),
:mod:`~continuonbrain.trainer.lora_hooks` (the hooks contract and the stub hooks),
:mod:`~continuonbrain.models.promotion` (the one gate, shadow evaluation included) and
:mod:`~continuonbrain.trainer.lora_result` (the result, run logs and ``status.json``). Their
public names are importable from here as well (re-exports, as before the split).

Command line (also ``continuonbrain adapt``)::

    python -m continuonbrain.trainer.local_lora_trainer --config continuonbrain/configs/sim-arm-lora.json \\
        [--rlds-dir DIR] [--model-root DIR] [--use-stub-hooks] [--gated] [--resume] [--set a.b=value ...] [--json]

Why one module of 767 lines: it is one run's state machine (:class:`_Run`: gates, episodes,
training, gate and rotation, status) plus its command line; config, hooks, gate and result
have already been moved out (see above), and :meth:`_Run._train` (~110 lines) is the loop.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from continuonbrain.models.promotion import (
    ClosedLoop,
    apply_gate,
    gate_candidate,
    gate_record,
    held_out_record,
    hold_out,
    load_gate_config,
)
from continuonbrain.models.safety import (
    SafetyGateConfig,
)
from continuonbrain.models.store import PromotionStore
from continuonbrain.rlds import Episode
from continuonbrain.robot.gates import evaluate_gates
from continuonbrain.robot.sensors import GatingSensors, read_sensors
from continuonbrain.robot.watermark import EpisodeSnapshot, EpisodeWatermark
from continuonbrain.trainer.budgets import (
    MemoryGuard,
    StepBudget,
    ThermalGuard,
    budget_spent,
    reason_code,
    rss_mb,
    stop_reason,
)
from continuonbrain.trainer.checkpoint import load_checkpoint, save_checkpoint
from continuonbrain.trainer.lora_config import PATH_FIELDS as PATH_FIELDS  # re-exported, as before the split
from continuonbrain.trainer.lora_config import LocalTrainerJobConfig, parse_set
from continuonbrain.trainer.lora_hooks import STUB_FILE as STUB_FILE  # re-exported, as before the split
from continuonbrain.trainer.lora_hooks import (
    AdaptationError,
    AdaptationJob,
    CandidateFiles,
    ModelHooks,
    Policy,
    StubHooks,
    build_stub_hooks,
)
from continuonbrain.trainer.lora_result import (
    LOG_PREFIX,
    STATUS_FILE,
    TrainerResult,
    json_default,
    rotate_logs,
    write_status,
)
from continuonbrain.trainer.metrics import EventFile, event_record, loss_summary, step_record, write_json
from continuonbrain.trainer.replay import ReplayError, ReplaySet, load_replay, reselect_replay
from continuonbrain.trainer.rlds_loader import EpisodeLoader, make_episode_loader

log = logging.getLogger(__name__)

__all__ = [
    "COMPONENT",
    "RUN_DIR",
    "AdaptationError",
    "AdaptationJob",
    "CandidateFiles",
    "LocalTrainerJobConfig",
    "ModelHooks",
    "Policy",
    "StubHooks",
    "TrainerResult",
    "build_stub_hooks",
    "main",
    "maybe_run_local_training",
]

#: Candidate kinds this trainer writes; a pending candidate of another kind (a seed waiting
#: for ``models promote``) is never overwritten.
OWN_KINDS = ("hope-lora", "torch-lora", "stub")
LOCK_FILE = ".adapt.lock"
#: The unfinished run's state in ``log_dir`` (``-stub`` appended for dry runs).
RUN_DIR = "adapt-run"
#: What the adapter's events call the component being trained.
COMPONENT = "lora"


# --------------------------------------------------------------------------- the loop


def maybe_run_local_training(
    cfg: LocalTrainerJobConfig,
    hooks: ModelHooks | None = None,
    safety_cfg: SafetyGateConfig | None = None,
    gating: GatingSensors | Callable[[], GatingSensors] | None = None,
    episode_loader: EpisodeLoader | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    *,
    resume: bool = False,
    stop_requested: Callable[[], bool] | None = None,
    closed_loop: ClosedLoop | None = None,
) -> TrainerResult:
    """Run one adaptation if the gates allow it; see the module doc for the steps.

    ``hooks``: None means torch hooks for the HOPE seed (``build_torch_hooks()``).
    ``safety_cfg``: None means the store's gate config (``<model_root>/gate_config.json``,
    as ``models promote`` and the API read it), else the config's ``safety`` block.
    ``closed_loop``: the gate's sim twin runner
    (:func:`continuonbrain.runtime.sim_twin.closed_loop_runner`, built by the caller: a gate
    config naming a ``sim_env`` refuses the candidate without one). ``gating``: a
    :class:`~continuonbrain.robot.sensors.GatingSensors` reading, a callable returning one,
    or None to skip the start gates (a manual run). ``episode_loader``: ``(rlds_dir,
    max_episodes) -> episodes, oldest first`` (default :func:`make_episode_loader`; a loader
    with a ``select(rlds_dir, ids)`` method lets a resumed run re-read its exact episodes).
    ``on_event``: called with every record of the run log as it is written (the API's job
    manager streams them to the Robot Editor). ``resume``: continue the unfinished run in
    ``log_dir`` from its checkpoint (a fresh run when there is none). ``stop_requested``: polled
    after every step; true checkpoints and ends the run "interrupted". Never raises for a failed
    run: the result says what happened, and ``status.json`` too (a ``gate_config.json`` that
    does not parse raises :class:`~continuonbrain.config_base.ConfigError` naming it, before
    anything runs).
    """
    if hooks is None:  # hooks_torch imports torch when the hooks are built: loaded only then
        from continuonbrain.trainer.hooks_torch import build_torch_hooks

        hooks = build_torch_hooks()
    loader = episode_loader or make_episode_loader(max_imagined_fraction=cfg.data.max_imagined_fraction)
    # the store's gate_config.json, as models promote and the API read it, else the safety section
    safety = safety_cfg or load_gate_config(cfg.model_root, cfg.safety_config())[0]
    run = _Run(cfg, hooks, safety, loader, on_event, resume, stop_requested, closed_loop)
    return run.execute(gating)


class RunState:
    """An unfinished run's files in ``<log_dir>/adapt-run/`` (see the module doc)."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.job_path = directory / "job.json"
        self.checkpoint_path = directory / "checkpoint.safetensors"
        self.workdir = directory / "work"

    def load(self) -> dict[str, Any] | None:
        """The unfinished run's ``job.json`` (None: nothing to resume)."""
        try:
            job = json.loads(self.job_path.read_text())
        except (OSError, ValueError):
            return None
        return job if isinstance(job, dict) and job.get("schema") == 1 else None

    def start(self, job: dict[str, Any]) -> None:
        """A fresh run: the previous run's state goes, this one's ``job.json`` is written."""
        self.clear()
        self.workdir.mkdir(parents=True)
        write_json(self.job_path, {"schema": 1, **job})

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class _Run:
    def __init__(
        self,
        cfg: LocalTrainerJobConfig,
        hooks: ModelHooks,
        safety: SafetyGateConfig,
        loader: EpisodeLoader,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        resume: bool = False,
        stop_requested: Callable[[], bool] | None = None,
        closed_loop: ClosedLoop | None = None,
    ) -> None:
        self.cfg, self.hooks, self.safety, self.loader = cfg, hooks, safety, loader
        self.closed_loop = closed_loop  # the gate's sim twin, injected: trainer/ does not import runtime/
        self.on_event = on_event
        self.resume = resume
        self.stop_requested = stop_requested or (lambda: False)
        self.started = time.monotonic()
        self.log_dir = Path(cfg.log_dir)
        self.state = RunState(self.log_dir / (RUN_DIR + ("-stub" if hooks.is_stub else "")))
        self.saved: dict[str, Any] | None = None  # the resumed run's job.json
        self.snapshot: EpisodeSnapshot | None = None
        self.result = TrainerResult(status="error", stub=hooks.is_stub)
        self.runlog: EventFile | None = None
        self.replay = ReplaySet()

    # -- driver

    def execute(self, gating: GatingSensors | Callable[[], GatingSensors] | None) -> TrainerResult:
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._execute(gating)
        except AdaptationError as exc:
            self.result.status, self.result.reason = exc.status, str(exc)
        except Exception as exc:  # a robot's trainer reports, it does not crash the scheduler
            log.exception("local LoRA training failed")
            self.result.status, self.result.reason = "error", f"{type(exc).__name__}: {exc}"
        finally:
            self.result.wall_time_s = round(time.monotonic() - self.started, 3)
            self.event(event_record("result", **self.result.to_dict()))
            if self.runlog is not None:
                self.runlog.close()
                rotate_logs(self.log_dir, self.cfg.store.keep_logs)
            self._write_status()
        return self.result

    def event(self, record: dict[str, Any]) -> None:
        if self.runlog is not None:
            record = self.runlog.log(record)
        if self.on_event is not None:
            self.on_event(record)

    def _open_log(self) -> None:
        """A log file per run that got past the gates (a resumed run continues its own). Skips
        only update ``status.json``: a robot that is busy all afternoon must not rotate the last
        real run's log away."""
        old = (self.saved or {}).get("log_path")
        if old and Path(old).parent == self.log_dir:
            path = Path(old)
        else:
            path = self.log_dir / f"{LOG_PREFIX}{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}.jsonl"
        self.runlog = EventFile(path)
        self.result.log_path = str(path)
        self.event(
            event_record("start", config=self.cfg.to_dict(), stub=self.hooks.is_stub, resume=self.saved is not None)
        )
        if self.result.gating is not None:
            self.event(event_record("gates", **self.result.gating))

    def _execute(self, gating: GatingSensors | Callable[[], GatingSensors] | None) -> None:
        cfg, res = self.cfg, self.result
        watermark = EpisodeWatermark(cfg.rlds_dir, cfg.log_dir)
        self.snapshot = watermark.snapshot()
        if gating is not None:
            sensors = gating() if callable(gating) else gating
            decision = evaluate_gates(sensors, cfg.gating_config(), new_episodes=watermark.new_since(self.snapshot))
            res.gating = decision.to_dict()
            if not decision.ok:
                res.status, res.reason, res.detail = "skipped", decision.reason, decision.detail
                return
        with _store_lock(Path(cfg.model_root)) as locked:
            if not locked:
                res.status, res.reason = "skipped", "busy"
                res.detail = f"another adaptation run holds {Path(cfg.model_root) / LOCK_FILE}"
                return
            if self.resume:
                self.saved = self.state.load()
                if self.saved is not None and self.saved.get("snapshot"):
                    # What the killed run saw: episodes that arrived since stay new for the next run.
                    self.snapshot = EpisodeSnapshot(**self.saved["snapshot"])
            self._open_log()
            self._locked_run()
        if res.status in ("promoted", "rejected"):
            # The data was trained on (whatever the gate said): wait for new episodes. Dry runs
            # consume nothing, so a real run still sees these episodes as new.
            watermark.mark_trained(self.snapshot)

    def _locked_run(self) -> None:
        cfg, res = self.cfg, self.result
        _remove_stale_workdirs(Path(cfg.model_root))
        store = PromotionStore(cfg.model_root, max_history=cfg.store.max_history)
        store.recover()
        pending = store.manifest("candidate") if store.slot("candidate").exists() else None
        if pending is not None and pending.get("kind") not in OWN_KINDS:
            res.status, res.reason = "skipped", "candidate_pending"
            res.detail = (
                f"candidate {pending.get('version')} ({pending.get('kind')}) awaits a decision: "
                "promote or reject it first (continuonbrain models promote)"
            )
            return
        res.current_version = store.current_version()
        res.previous_version = self.saved.get("base_version") if self.saved else res.current_version

        train, held_out = self._episodes()
        if train is None:
            return
        if not self._replay_set([*train, *held_out]):
            return
        if self.saved is None:
            self.state.start(
                {
                    "train": [ep.episode_id for ep in train],
                    "held_out": [ep.episode_id for ep in held_out],
                    "replay": self.replay.job(),
                    "episodes": res.episodes,
                    "snapshot": {"count": self.snapshot.count, "max_mtime_ns": self.snapshot.max_mtime_ns}
                    if self.snapshot is not None
                    else None,
                    "base_version": res.previous_version,
                    "base_dir": str(cfg.base_dir()),
                    "rlds_dir": cfg.rlds_dir,
                    "log_path": self.result.log_path,
                    "stub": self.hooks.is_stub,
                    "started": datetime.now(UTC).isoformat(),
                }
            )
        files = self._train(train, self.state.workdir)
        if files is None:
            return
        manifest = store.write_slot(
            "candidate",
            files.files,
            components=files.components,
            kind="stub" if self.hooks.is_stub else files.kind,
            metrics=self._training_metrics(),
            parent=res.previous_version,
            extra={
                "rlds_dir": cfg.rlds_dir,
                "trainer": "local_lora",
                "stub": self.hooks.is_stub,
                "adapter": files.info,
                "base_dir": str(cfg.base_dir()),
                "episodes": res.episodes,
                "held_out": held_out_record(cfg.rlds_dir, held_out),  # never trained on: the gate's
                # where the seed's task is and which of its episodes were held out: the next
                # adaptation of this brain rehearses and checks the same task
                "replay": self.replay.describe(),
            },
        )
        self.state.clear()  # the candidate is in the store: nothing left to resume
        res.candidate_version = manifest["version"]
        res.adapter = files.info
        self.event(event_record("candidate", version=manifest["version"], files=manifest["files"]))
        self._gate_and_rotate(store, held_out)

    # -- steps

    def _episodes(self) -> tuple[list[Episode] | None, list[Episode]]:
        cfg, res = self.cfg, self.result
        if self.saved is not None:
            return self._saved_episodes()
        episodes = list(self.loader(cfg.rlds_dir, cfg.data.max_episodes))
        tail = self.safety.eval_tail_episodes
        # The one gate's rule: the newest real episodes are held out (never imagined ones).
        train, held_out = hold_out(episodes, tail)
        res.episodes = {"found": len(episodes), "train": len(train), "eval": len(held_out)}
        self.event(event_record("episodes", **res.episodes))
        need = max(cfg.data.min_episodes, tail + 1)
        if len(episodes) < need or not train:
            res.status = "no_data"
            res.reason = (
                f"{len(episodes)} usable episode(s) in {cfg.rlds_dir}; need at least {need} "
                f"(min_episodes {cfg.data.min_episodes}, {tail} held out for the gate)"
            )
            return None, []
        return train, held_out

    def _replay_set(self, own: list[Episode]) -> bool:
        """Pick (or, resuming, re-read) the replay set; False when the run cannot go on."""
        cfg, res = self.cfg, self.result
        try:
            if self.saved is not None:
                self.replay = reselect_replay(self.saved.get("replay"), cfg.replay)
            else:
                self.replay = load_replay(cfg.replay, cfg.base_dir(), {ep.episode_id for ep in own})
        except ReplayError as exc:
            res.status, res.reason = "error", str(exc)
            return False
        except KeyError as exc:
            res.status = "error"
            res.reason = (
                f"cannot resume the run in {self.state.dir}: its replay episodes are no longer all in "
                f"{self.replay.rlds_dir or (self.saved or {}).get('replay', {}).get('rlds_dir')} "
                f"({exc.args[0] if exc.args else exc}); start a new run without --resume"
            )
            return False
        res.replay = self.replay.describe()
        self.event(event_record("replay", **res.replay))
        if self.replay.note:
            log.info("adapt: %s", self.replay.note)
        return True

    def _saved_episodes(self) -> tuple[list[Episode] | None, list[Episode]]:
        """A resumed run's exact training and held-out episodes, by id."""
        assert self.saved is not None
        cfg, res = self.cfg, self.result
        if self.saved.get("rlds_dir") not in (None, cfg.rlds_dir):
            res.status = "error"
            res.reason = (
                f"cannot resume the run in {self.state.dir}: it trained on {self.saved['rlds_dir']}, not "
                f"{cfg.rlds_dir}; start a new run without --resume"
            )
            return None, []
        ids = [*self.saved["train"], *self.saved["held_out"]]
        select = getattr(self.loader, "select", None)
        try:
            if select is not None:
                episodes = select(cfg.rlds_dir, ids)
            else:
                found = {ep.episode_id: ep for ep in self.loader(cfg.rlds_dir, cfg.data.max_episodes)}
                episodes = [found[i] for i in ids]
        except KeyError as exc:
            res.status = "error"
            res.reason = (
                f"cannot resume the run in {self.state.dir}: its episodes are no longer all in {cfg.rlds_dir} "
                f"({exc.args[0] if exc.args else exc}); start a new run without --resume"
            )
            return None, []
        n = len(self.saved["train"])
        res.episodes = dict(self.saved.get("episodes") or {"found": len(ids), "train": n, "eval": len(ids) - n})
        self.event(event_record("episodes", **res.episodes, resumed=True))
        return episodes[:n], episodes[n:]

    def _train(self, train: list[Episode], workdir: Path) -> CandidateFiles | None:
        cfg, res, hooks = self.cfg, self.result, self.hooks
        resuming = self.saved is not None and self.state.checkpoint_path.is_file()
        if resuming and not hooks.resumable:
            raise AdaptationError("error", f"{type(hooks).__name__} cannot resume a run (hooks are not resumable)")
        job = AdaptationJob(
            cfg,
            cfg.base_dir(),
            train,
            workdir,
            self.event,
            resuming=self.saved is not None,
            replay_episodes=self.replay.train if self.replay.rehearsal_share else [],
            replay_share=self.replay.rehearsal_share,
        )
        budget = StepBudget(cfg.budgets.max_steps, cfg.budgets.max_wall_time_s, started=self.started)
        memory = MemoryGuard(cfg.budgets.memory_budget_mb, cfg.budgets.min_available_mb, check_every=1)
        thermal = ThermalGuard.from_config(cfg.thermal)
        every = cfg.training.log_every_steps
        losses: list[float] = []
        window: list[float] = []
        step = 0
        try:
            hooks.start(job)
            if resuming:
                ckpt = load_checkpoint(self.state.checkpoint_path)
                hooks.load_state_dict(ckpt["hooks"])
                step, losses, window = int(ckpt["step"]), list(ckpt["losses"]), list(ckpt["window"])
                res.losses = list(ckpt["logged"])
                budget.started = time.monotonic() - float(ckpt["elapsed_s"])
                memory.peak_rss_mb = float(ckpt.get("peak_rss_mb", 0.0))
                res.resumed_from_step = step
                self.event(event_record("resumed", COMPONENT, step))
            t0 = time.monotonic()

            def checkpoint() -> None:
                if not hooks.resumable:
                    return
                state = {
                    "hooks": hooks.state_dict(),
                    "step": step,
                    "losses": losses,
                    "window": window,
                    "logged": res.losses,
                    "elapsed_s": time.monotonic() - budget.started,
                    "peak_rss_mb": memory.peak_rss_mb,
                }
                save_checkpoint(state, self.state.checkpoint_path)

            def emit_thermal(event: dict[str, Any]) -> None:
                fields = {k: v for k, v in event.items() if k != "event"}
                self.event(event_record(event["event"], COMPONENT, step, **fields))

            self.event(
                event_record("component_start", COMPONENT, step, steps=cfg.budgets.max_steps, rss_mb=round(rss_mb(), 1))
            )
            stop = budget.exhausted(step)
            while stop is None:
                stop = thermal.wait_if_hot(emit_thermal)
                if stop:
                    checkpoint()
                    break
                scalars = hooks.train_step()
                step += 1
                loss = float(scalars["loss"])
                losses.append(loss)
                window.append(loss)
                if not math.isfinite(loss):
                    stop = f"non_finite_loss: loss is {loss} at step {step}"
                    break
                if step % every == 0 or step == cfg.budgets.max_steps:
                    self._log_step(step, window, scalars, t0)
                    window = []
                stop = stop_reason(budget, memory, step, self.stop_requested())
                if stop or step % cfg.training.checkpoint_every == 0:
                    checkpoint()
            if window:
                self._log_step(step, window, {}, t0)
            code = reason_code(stop)
            detail = {
                "max_steps": f"{step} steps done",
                "max_wall_time_s": f"{cfg.budgets.max_wall_time_s} s of wall time used",
            }
            res.steps, res.stop_reason, res.stop_detail = step, code, detail.get(code or "", stop)
            res.train_time_s = round(time.monotonic() - t0, 3)
            res.peak_rss_mb = round(max(memory.peak_rss_mb, rss_mb()), 1)
            res.avg_loss = float(np.mean(losses)) if losses else None
            summary = loss_summary(losses)
            res.initial_loss, res.final_loss = summary.get("initial_loss"), summary.get("final_loss")
            done = budget_spent(stop) or code == "non_finite_loss"
            self.event(
                event_record(
                    "component_done",
                    COMPONENT,
                    status="done" if done else "interrupted",
                    steps=step,
                    stop_reason=code,
                    detail=res.stop_detail,
                    initial_loss=res.initial_loss,
                    final_loss=res.final_loss,
                    peak_rss_mb=res.peak_rss_mb,
                )
            )
            if step == 0:
                res.status = "error"
                res.reason = f"no training step before the budget ran out ({code}: {res.stop_detail})"
                return None
            if not done:
                res.status = "interrupted"
                res.reason = (
                    f"{res.stop_detail}; checkpointed at step {step}: `continuonbrain adapt --resume` "
                    f"(same log_dir) trains on from there"
                )
                return None
            return hooks.save_candidate(workdir)
        finally:
            hooks.close()
            gc.collect()

    def _log_step(self, step: int, window: list[float], scalars: Mapping[str, float], t0: float) -> None:
        mean = float(np.mean(window))
        self.result.losses.append({"step": step, "loss": mean})
        extra = {k: v for k, v in scalars.items() if k != "loss"}
        self.event(
            step_record(
                COMPONENT,
                step,
                {"loss": mean, **extra},
                rss_mb=round(rss_mb(), 1),
                train_time_s=round(time.monotonic() - t0, 3),
            )
        )

    def _training_metrics(self) -> dict[str, Any]:
        r = self.result
        return {
            "steps": r.steps,
            "stop_reason": r.stop_reason,
            "initial_loss": r.initial_loss,
            "final_loss": r.final_loss,
            "train_time_s": r.train_time_s,
            "peak_rss_mb": r.peak_rss_mb,
            "episodes": r.episodes,
            "resumed_from_step": r.resumed_from_step,
        }

    # -- gate

    def _gate_and_rotate(self, store: PromotionStore, held_out: list[Episode]) -> None:
        """The one gate (:mod:`continuonbrain.models.promotion`, as ``models promote`` and the
        API use it) on the held-out episodes; then promote or set the candidate aside."""
        res, hooks, data = self.result, self.hooks, self.cfg.data
        distance, violates = hooks.action_distance_fn, hooks.safety_fn
        if distance is None or violates is None:
            default_distance, default_violates = self.cfg.default_guards()
            distance, violates = distance or default_distance, violates or default_violates
        result = gate_candidate(
            store,
            held_out,
            self.safety,
            hooks.load_policy,
            (distance, violates),
            observation_keys=data.observation_keys,
            action_keys=data.action_keys,
            stub=hooks.is_stub,
            closed_loop=self.closed_loop,
            # what the brain could already do: the forgetting check (none without replay episodes)
            replay=self.replay.held_out or None,
        )
        res.after_avg_action_delta = result.candidate.get("avg_action_delta")
        res.before_avg_action_delta = result.current.get("avg_action_delta") if result.current else None
        record = gate_record(
            result,
            metrics={"training": self._training_metrics()},
            trainer="local_lora",
            stub=hooks.is_stub,
            rlds_dir=self.cfg.rlds_dir,
            replay=self.replay.describe(),
        )
        res.gate = {"passed": result.passed, "reason": result.reason, **record["metrics"], "config": result.config}
        self.event(event_record("gate", **res.gate))
        apply_gate(store, result, record)
        if result.passed:
            res.status, res.promoted = "promoted", True
        else:
            res.status = "dry_run" if hooks.is_stub else "rejected"
            _trim_dirs(Path(self.cfg.model_root) / "rejected", self.cfg.store.max_history)
        res.reason = result.reason
        res.current_version = store.current_version()

    # -- status

    def _write_status(self) -> None:
        try:
            self.result.status_path = str(write_status(self.result, self.log_dir, Path(self.cfg.model_root)))
        except OSError as exc:
            log.warning("cannot write %s: %s", self.log_dir / STATUS_FILE, exc)


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _store_lock(root: Path) -> Iterator[bool]:
    """An exclusive, non-blocking lock on the model store for one adaptation run (a timer and
    an API request must not train two candidates into the same slot). Released by the kernel
    when the process dies, so a crash never leaves it held."""
    import fcntl

    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK_FILE).open("a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _remove_stale_workdirs(root: Path) -> None:
    """Scratch dirs (``<model_root>/.adapt-*``) of runs killed before this trainer kept its
    state in ``log_dir``: under the store lock no other run can own one."""
    for stale in root.glob(".adapt-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def _trim_dirs(parent: Path, keep: int) -> None:
    """Keep the ``keep`` newest subdirectories (versions sort by creation time)."""
    if not parent.is_dir():
        return
    dirs = sorted((d for d in parent.iterdir() if d.is_dir()), key=lambda d: d.name, reverse=True)
    for stale in dirs[keep:]:
        shutil.rmtree(stale, ignore_errors=True)


# --------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``continuonbrain adapt`` and of ``python -m ...local_lora_trainer``."""
    p.add_argument("--config", required=True, help="job config JSON (e.g. continuonbrain/configs/pi5-donkey.json)")
    p.add_argument("--rlds-dir", help="episodes to adapt on (overrides the config)")
    p.add_argument("--model-root", help="model store: current/ is adapted, candidates go through candidate/")
    p.add_argument("--use-stub-hooks", action="store_true", help="dry run of the whole loop without torch")
    p.add_argument("--gated", action="store_true", help="check idle/teleop/battery/thermal/new-data gates first")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished run in the config's log_dir from its checkpoint (a killed or stopped run)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field by its dotted name (budgets.max_steps=50, lora.rank=8, "
        "safety.eval_tail_episodes=4; old flat names such as max_steps work too; repeatable; "
        "VALUE is JSON or a string)",
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--events", metavar="FILE", help="also append every progress event to FILE as JSON lines")


def config_from_args(args: argparse.Namespace) -> LocalTrainerJobConfig:
    """The config ``continuonbrain adapt`` runs with: the file, then ``--set``, then the path
    options (relative paths on the command line resolve against the working directory)."""
    overrides = parse_set(getattr(args, "set", None) or [])
    if getattr(args, "rlds_dir", None):
        overrides["rlds_dir"] = args.rlds_dir
    if getattr(args, "model_root", None):
        overrides["model_root"] = args.model_root
    return LocalTrainerJobConfig.load(args.config, overrides)


def run_command(
    args: argparse.Namespace, sim_twin: Callable[[SafetyGateConfig], ClosedLoop | None] | None = None
) -> int:
    """Exit 0: promoted, dry run, skipped, no data or interrupted (resumable); 1: the gate
    rejected; 2: could not run. SIGTERM (the API's stop) checkpoints and ends the run interrupted.
    ``sim_twin``: builds the gate's closed-loop runner from the gate config (``continuonbrain
    adapt`` passes :func:`continuonbrain.runtime.sim_twin.closed_loop_runner`)."""
    import signal

    try:
        cfg = config_from_args(args)
        safety, _ = load_gate_config(cfg.model_root, cfg.safety_config())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.use_stub_hooks:
        hooks: ModelHooks = build_stub_hooks()
    else:
        from continuonbrain.trainer.hooks_torch import build_torch_hooks

        hooks = build_torch_hooks()
    gating = None
    if args.gated:
        gating = lambda: read_sensors(cfg.thermal.sysfs_root, cfg.gates.robot_state_file)  # noqa: E731
    stopped: list[int] = []
    with contextlib.suppress(ValueError):  # not the main thread: no signal handler, no graceful stop
        signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
    with EventFile(getattr(args, "events", None)) as events:
        result = maybe_run_local_training(
            cfg,
            hooks,
            safety,
            gating=gating,
            on_event=events,
            resume=bool(getattr(args, "resume", False)),
            stop_requested=lambda: bool(stopped),
            closed_loop=sim_twin(safety) if sim_twin is not None else None,
        )
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict(), default=json_default) + "\n")
    else:
        _print_human(result)
    if result.status in ("error", "no_base"):
        if not args.json:
            print(f"error: {result.reason}", file=sys.stderr)
        return 2
    return 1 if result.status == "rejected" else 0


def _print_human(r: TrainerResult) -> None:
    head = f"adapt: {r.status.upper()}"
    if r.reason:
        head += f": {r.reason}"
    if r.detail:
        head += f" ({r.detail})"
    print(head)
    if r.steps:
        print(
            f"  steps {r.steps} (stop: {r.stop_reason}), loss {r.initial_loss:.4f} -> {r.final_loss:.4f}, "
            f"train {r.train_time_s:.1f} s, peak RSS {r.peak_rss_mb:.0f} MB"
        )
    if r.after_avg_action_delta is not None:
        before = "n/a" if r.before_avg_action_delta is None else f"{r.before_avg_action_delta:.4f}"
        print(f"  held-out avg action delta: current {before}, candidate {r.after_avg_action_delta:.4f}")
    if r.candidate_version:
        print(f"  candidate {r.candidate_version}; current {r.current_version}")
    if r.resumed_from_step is not None:
        print(f"  resumed from the checkpoint at step {r.resumed_from_step}")
    print(f"  status {r.status_path}" + (f"; log {r.log_path}" if r.log_path else ""))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m continuonbrain.trainer.local_lora_trainer", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
