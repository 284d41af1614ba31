"""Local LoRA trainer: the robot keeps learning after the seed, and only a gated adapter drives.

When the robot is idle, cool, charged and not teleoperated, and new episodes have arrived,
:func:`maybe_run_local_training` fine-tunes LoRA adapters on the newest episodes, runs the
result *in shadow* against what the robot actually did, and only then swaps it in::

    gates (scheduler: idle, teleop, battery, thermal, new episodes)  -> "skipped" + the first failing gate
    episodes = the newest max_episodes; the newest eval_tail_episodes are held out for the gate
        too few                                                        -> "no_data", nothing written
    hooks.start: base model (<model_root>/current, adapter not applied), LoRA on lora_layers
    train under budgets: max_steps, max_wall_time_s, memory, SoC temperature (the result says which ended it)
    candidate slot = the base seed's files + adapter_config.json + adapter_model.safetensors (PEFT keys)
    shadow gate on the held-out tail: candidate vs logged actions, and vs the current model
        pass -> PromotionStore.promote (old current to history/)   fail -> PromotionStore.reject (rejected/)
    status.json in log_dir (after every run, skipped ones too), one JSONL log per run, rotated

Why held-out episodes and not the training ones: the gate must tell whether the adapter
generalises to what the robot will see next, and the newest episodes are the closest to that.
Why a fresh adapter on the seed each run (``HopeBrain.load(apply_adapter=False)``) rather than
stacking adapters: a chain of adapters, each trained on a few minutes of data, drifts; one
adapter on a fixed seed is small, gated against the same reference, and rolled back by the store.

The loop itself is framework-free: a :class:`ModelHooks` object does the model work.
:func:`~continuonbrain.trainer.hooks_torch.build_torch_hooks` gives torch hooks for the HOPE seed
(or any torch model); :func:`build_stub_hooks` runs the whole loop (episodes, budgets, gate,
rotation) without a model, for dry runs. A stub candidate is marked ``kind: "stub"`` and is
never promoted: it is set aside with the reason "stub", so a dry run can never replace a real
``current``.


The parts live beside this loop: :mod:`~continuonbrain.trainer.lora_config` (the job config),
:mod:`~continuonbrain.trainer.lora_hooks` (the hooks contract and the stub hooks),
:mod:`~continuonbrain.trainer.lora_shadow` (shadow evaluation for the gate) and
:mod:`~continuonbrain.trainer.lora_result` (the result, run logs and ``status.json``). Their
public names are importable from here as well.

Command line (also ``continuonbrain adapt``)::

    python -m continuonbrain.trainer.local_lora_trainer --config continuonbrain/configs/pi5-donkey.json \\
        [--rlds-dir DIR] [--model-root DIR] [--use-stub-hooks] [--gated] [--set key=value ...] [--json]
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
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from continuonbrain.rlds import Episode
from continuonbrain.trainer.budgets import MemoryGuard, StepBudget, read_temperature_c, rss_mb
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
from continuonbrain.trainer.lora_shadow import shadow_policy
from continuonbrain.trainer.metrics import EventFile
from continuonbrain.trainer.rlds_loader import EpisodeLoader, make_episode_loader
from continuonbrain.trainer.safety import (
    ActionDistance,
    GateResult,
    SafetyGateConfig,
    ShadowResult,
    Violates,
    gate,
)

if TYPE_CHECKING:  # the scheduler (and the TFDS reader it pulls in) loads on first use: the CLI parser stays light
    from continuonbrain.trainer.scheduler import GatingSensors

log = logging.getLogger(__name__)

__all__ = [
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


# --------------------------------------------------------------------------- the loop


def maybe_run_local_training(
    cfg: LocalTrainerJobConfig,
    hooks: ModelHooks | None = None,
    safety_cfg: SafetyGateConfig | None = None,
    gating: GatingSensors | Callable[[], GatingSensors] | None = None,
    episode_loader: EpisodeLoader | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> TrainerResult:
    """Run one adaptation if the gates allow it; see the module doc for the steps.

    ``hooks``: None means torch hooks for the HOPE seed (``build_torch_hooks()``).
    ``safety_cfg``: None means the config's ``safety`` block. ``gating``: a
    :class:`~continuonbrain.trainer.scheduler.GatingSensors` reading, a callable returning one,
    or None to skip the start gates (a manual run). ``episode_loader``: ``(rlds_dir,
    max_episodes) -> episodes, oldest first`` (default :func:`make_episode_loader`).
    ``on_event``: called with every record of the run log as it is written (the API's job
    manager streams them to the Robot Editor). Never raises for a failed run: the result says
    what happened, and ``status.json`` too.
    """
    if hooks is None:
        from continuonbrain.trainer.hooks_torch import build_torch_hooks

        hooks = build_torch_hooks()
    run = _Run(
        cfg,
        hooks,
        safety_cfg or cfg.safety_config(),
        episode_loader or make_episode_loader(include_imagined=cfg.include_imagined),
        on_event,
    )
    return run.execute(gating)


class _Run:
    def __init__(
        self,
        cfg: LocalTrainerJobConfig,
        hooks: ModelHooks,
        safety: SafetyGateConfig,
        loader: EpisodeLoader,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.cfg, self.hooks, self.safety, self.loader = cfg, hooks, safety, loader
        self.on_event = on_event
        self.started = time.monotonic()
        self.log_dir = Path(cfg.log_dir)
        self.result = TrainerResult(status="error", stub=hooks.is_stub)
        self.runlog: EventFile | None = None

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
            self.event({"event": "result", **self.result.to_dict()})
            if self.runlog is not None:
                self.runlog.close()
                rotate_logs(self.log_dir, self.cfg.keep_logs)
            self._write_status()
        return self.result

    def event(self, record: dict[str, Any]) -> None:
        if self.runlog is not None:
            self.runlog(record)
        if self.on_event is not None:
            self.on_event(record)

    def _open_log(self) -> None:
        """A log file per run that got past the gates. Skips only update ``status.json``: a
        robot that is busy all afternoon must not rotate the last real run's log away."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self.runlog = EventFile(self.log_dir / f"{LOG_PREFIX}{stamp}.jsonl")
        self.result.log_path = str(self.runlog.path)
        self.event({"event": "start", "config": self.cfg.to_dict(), "stub": self.hooks.is_stub})
        if self.result.gating is not None:
            self.event({"event": "gates", **self.result.gating})

    def _execute(self, gating: GatingSensors | Callable[[], GatingSensors] | None) -> None:
        from continuonbrain.trainer.scheduler import EpisodeWatermark, evaluate_gates

        cfg, res = self.cfg, self.result
        watermark = EpisodeWatermark(cfg.rlds_dir, cfg.log_dir)
        snapshot = watermark.snapshot()
        if gating is not None:
            sensors = gating() if callable(gating) else gating
            decision = evaluate_gates(sensors, cfg.gating_config(), new_episodes=watermark.new_since(snapshot))
            res.gating = decision.to_dict()
            if not decision.ok:
                res.status, res.reason, res.detail = "skipped", decision.reason, decision.detail
                return
        with _store_lock(Path(cfg.model_root)) as locked:
            if not locked:
                res.status, res.reason = "skipped", "busy"
                res.detail = f"another adaptation run holds {Path(cfg.model_root) / LOCK_FILE}"
                return
            self._open_log()
            self._locked_run()
        if res.status in ("promoted", "rejected"):
            # The data was trained on (whatever the gate said): wait for new episodes. Dry runs
            # consume nothing, so a real run still sees these episodes as new.
            watermark.mark_trained(snapshot)

    def _locked_run(self) -> None:
        from continuonbrain.trainer.store import PromotionStore

        cfg, res = self.cfg, self.result
        store = PromotionStore(cfg.model_root, max_history=cfg.max_history)
        store.recover()
        pending = store.manifest("candidate") if store.slot("candidate").exists() else None
        if pending is not None and pending.get("kind") not in OWN_KINDS:
            res.status, res.reason = "skipped", "candidate_pending"
            res.detail = (
                f"candidate {pending.get('version')} ({pending.get('kind')}) awaits a decision: "
                "promote or reject it first (continuonbrain models promote)"
            )
            return
        res.previous_version = res.current_version = store.current_version()

        train, held_out = self._episodes()
        if train is None:
            return
        with tempfile.TemporaryDirectory(prefix=".adapt-", dir=cfg.model_root) as tmp:
            workdir = Path(tmp)
            files = self._train(train, workdir)
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
                },
            )
        res.candidate_version = manifest["version"]
        res.adapter = files.info
        self.event({"event": "candidate", "version": manifest["version"], "files": manifest["files"]})
        self._gate_and_rotate(store, held_out)

    # -- steps

    def _episodes(self) -> tuple[list[Episode] | None, list[Episode]]:
        cfg, res = self.cfg, self.result
        episodes = list(self.loader(cfg.rlds_dir, cfg.max_episodes))
        tail = self.safety.eval_tail_episodes
        # The gate compares with what the robot did: never hold out imagined episodes.
        real = [i for i, ep in enumerate(episodes) if not ep.is_imagined]
        held_idx = set(real[-tail:]) if tail > 0 else set()
        held_out = [ep for i, ep in enumerate(episodes) if i in held_idx]
        train = [ep for i, ep in enumerate(episodes) if i not in held_idx]
        res.episodes = {"found": len(episodes), "train": len(train), "eval": len(held_out)}
        self.event({"event": "episodes", **res.episodes})
        need = max(cfg.min_episodes, tail + 1)
        if len(episodes) < need or not train:
            res.status = "no_data"
            res.reason = (
                f"{len(episodes)} usable episode(s) in {cfg.rlds_dir}; need at least {need} "
                f"(min_episodes {cfg.min_episodes}, {tail} held out for the gate)"
            )
            return None, []
        return train, held_out

    def _train(self, train: list[Episode], workdir: Path) -> CandidateFiles | None:
        cfg, res, hooks = self.cfg, self.result, self.hooks
        job = AdaptationJob(cfg, cfg.base_dir(), train, workdir, self.event)
        budget = StepBudget(cfg.max_steps, cfg.max_wall_time_s, started=self.started)
        memory = MemoryGuard(cfg.memory_budget_mb, cfg.min_available_mb, check_every=1)
        losses: list[float] = []
        window: list[float] = []
        step, stop, detail = 0, None, None
        try:
            hooks.start(job)
            self.event({"event": "started", "rss_mb": round(rss_mb(), 1)})
            t0 = time.monotonic()
            while True:
                stop, detail = self._stop_reason(budget, memory, step)
                if stop:
                    break
                scalars = hooks.train_step()
                step += 1
                loss = float(scalars["loss"])
                losses.append(loss)
                window.append(loss)
                if not math.isfinite(loss):
                    stop, detail = "non_finite_loss", f"loss is {loss} at step {step}"
                    break
                if step % cfg.log_every_steps == 0 or step == cfg.max_steps:
                    self._log_step(step, window, scalars, t0)
                    window = []
            if window:
                self._log_step(step, window, {}, t0)
            res.steps, res.stop_reason, res.stop_detail = step, stop, detail
            res.train_time_s = round(time.monotonic() - t0, 3)
            res.peak_rss_mb = round(max(memory.peak_rss_mb, rss_mb()), 1)
            if losses:
                k = min(10, len(losses))
                res.initial_loss = float(np.mean(losses[:k]))
                res.final_loss = float(np.mean(losses[-k:]))
                res.avg_loss = float(np.mean(losses))
            self.event({"event": "stopped", "steps": step, "stop_reason": stop, "detail": detail})
            if step == 0:
                res.status = "error"
                res.reason = f"no training step before the budget ran out ({stop}: {detail})"
                return None
            return hooks.save_candidate(workdir)
        finally:
            hooks.close()
            gc.collect()

    def _stop_reason(self, budget: StepBudget, memory: MemoryGuard, step: int) -> tuple[str | None, str | None]:
        cfg = self.cfg
        exhausted = budget.exhausted(step)
        if exhausted == "max_steps":
            return exhausted, f"{step} steps done"
        if exhausted:
            return exhausted, f"{cfg.max_wall_time_s} s of wall time used"
        why = memory.check()
        if why:
            return "memory", why
        if cfg.thermal_stop_c is not None and step % cfg.log_every_steps == 0:
            temp = read_temperature_c(cfg.sysfs_root)
            if temp is not None and temp > cfg.thermal_stop_c:
                return "thermal", f"SoC at {temp:.1f} °C, over {cfg.thermal_stop_c} °C"
        return None, None

    def _log_step(self, step: int, window: list[float], scalars: Mapping[str, float], t0: float) -> None:
        mean = float(np.mean(window))
        self.result.losses.append({"step": step, "loss": mean})
        extra = {k: v for k, v in scalars.items() if k != "loss"}
        self.event(
            {
                "event": "step",
                "step": step,
                "loss": mean,
                **extra,
                "rss_mb": round(rss_mb(), 1),
                "train_time_s": round(time.monotonic() - t0, 3),
            }
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
        }

    # -- gate

    def _gate_and_rotate(self, store: Any, held_out: list[Episode]) -> None:
        from continuonbrain.trainer.store import StoreError

        res, hooks = self.result, self.hooks
        distance, violates = hooks.action_distance_fn, hooks.safety_fn
        if distance is None or violates is None:
            default_distance, default_violates = self.cfg.default_guards()
            distance, violates = distance or default_distance, violates or default_violates
        candidate_slot = store.slot("candidate")
        try:
            store.verify(candidate_slot)
            candidate = self._shadow(lambda: hooks.load_policy(candidate_slot), held_out, distance, violates)
        except StoreError as exc:
            candidate = ShadowResult(error=f"candidate files do not match its manifest: {exc}")
        current = None
        if not hooks.is_stub and store.current_version() is not None:
            current = self._shadow(lambda: hooks.load_policy(store.slot("current")), held_out, distance, violates)
        if hooks.is_stub:
            result = GateResult(
                False,
                "stub: a dry run of the trainer loop (no weights); never promoted",
                candidate.to_dict(),
                None,
                self.safety.to_dict(),
            )
        else:
            result = gate(candidate, current, self.safety)
        res.after_avg_action_delta = candidate.avg_action_delta
        res.before_avg_action_delta = current.avg_action_delta if current is not None else None
        pick = ("steps", "episodes", "avg_action_delta", "violations", "first_violation", "error")
        metrics = {
            "candidate": {k: result.candidate.get(k) for k in pick},
            "current": {k: result.current.get(k) for k in pick} if result.current else None,
            "training": self._training_metrics(),
        }
        record = {
            "passed": result.passed,
            "reason": result.reason,
            "metrics": metrics,
            "trainer": "local_lora",
            "stub": hooks.is_stub,
            "rlds_dir": self.cfg.rlds_dir,
        }
        res.gate = {"passed": result.passed, "reason": result.reason, **metrics, "config": result.config}
        self.event({"event": "gate", **res.gate})
        if result.passed:
            store.promote(record)
            res.status, res.promoted = "promoted", True
        else:
            store.reject(record)
            res.status = "dry_run" if hooks.is_stub else "rejected"
            _trim_dirs(Path(self.cfg.model_root) / "rejected", self.cfg.max_history)
        res.reason = result.reason
        res.current_version = store.current_version()

    def _shadow(
        self,
        load: Callable[[], Policy | None],
        episodes: list[Episode],
        distance: ActionDistance,
        violates: Violates,
    ) -> ShadowResult:
        cfg = self.cfg
        return shadow_policy(
            load, episodes, distance, violates, cfg.observation_keys, cfg.action_keys, self.safety.max_eval_steps
        )

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
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--events", metavar="FILE", help="also append every progress event to FILE as JSON lines")


def run_command(args: argparse.Namespace) -> int:
    """Exit 0: promoted, dry run, skipped or no data; 1: the gate rejected; 2: could not run."""
    try:
        overrides = parse_set(args.set)
        if args.rlds_dir:
            overrides["rlds_dir"] = args.rlds_dir
        if args.model_root:
            overrides["model_root"] = args.model_root
        cfg = LocalTrainerJobConfig.from_json(args.config).with_overrides(overrides)
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
        from continuonbrain.trainer.scheduler import read_sensors

        gating = lambda: read_sensors(cfg.sysfs_root, cfg.robot_state_file)  # noqa: E731
    with EventFile(args.events) as events:
        result = maybe_run_local_training(cfg, hooks, cfg.safety_config(), gating=gating, on_event=events)
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
