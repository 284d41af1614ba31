"""``/api/training``: start and stop training in a child process, its status, its events (SSE)."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import Header, HTTPException, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from continuonbrain.runtime.api.context import AUTH, CONFIG_DIR, ApiContext, Ctx
from continuonbrain.runtime.api.errors import area_router, error_responses
from continuonbrain.runtime.api_models import TrainingRequest
from continuonbrain.runtime.jobs import Budgets, JobError

#: How often the SSE stream looks for new events (the trainer logs every few steps anyway).
SSE_POLL_S = 0.1

router = area_router()


def start(ctx: ApiContext, kind: str, req: TrainingRequest) -> dict[str, Any]:
    """Start a ``kind`` job unless a blocking gate refuses (``force`` overrides)."""
    config = config_by_name(req.config, kind) if req.config else None
    decision = ctx.gates()
    if decision["blocking"] and not req.force:
        first = decision["blocking"][0]
        gate = decision["gates"][first]
        message = f"training refused: {gate.get('reason')} ({gate.get('detail')}); send force=true to override"
        raise HTTPException(
            409,
            {
                "message": message,
                "reason": gate.get("reason"),
                "gates": decision,
            },
        )
    if req.resume and kind != "sequential":
        raise HTTPException(422, "resume: only sequential training can be resumed")
    budgets = Budgets(req.max_steps, req.max_wall_time_s, req.memory_budget_mb)
    try:
        job = ctx.jobs.start(
            kind,
            budgets,
            resume=req.resume,
            forced=req.force and bool(decision["blocking"]),
            gates=decision,
            config=config,
        )
    except JobError as exc:
        raise HTTPException(exc.status, {"message": str(exc), **exc.detail}) from None
    return {"job_id": job.job_id, "kind": kind, "state": job.state, "gates": decision}


@router.post("/api/training/sequential", dependencies=AUTH, responses=error_responses(401, 409, 422))
def train_sequential(ctx: Ctx, req: TrainingRequest | None = None) -> dict[str, Any]:
    """Start HOPE sequential training (VQ-VAE, Mid loop, Fast loop) in a child process."""
    return start(ctx, "sequential", req or TrainingRequest())


@router.post("/api/training/adapt", dependencies=AUTH, responses=error_responses(401, 409, 422))
def train_adapt(ctx: Ctx, req: TrainingRequest | None = None) -> dict[str, Any]:
    """Start LoRA adaptation of the current model in a child process (it gates and promotes itself)."""
    return start(ctx, "adapt", req or TrainingRequest())


@router.post("/api/training/stop", dependencies=AUTH, responses=error_responses(401))
def train_stop(ctx: Ctx) -> dict[str, Any]:
    """Stop the running job (SIGTERM: sequential training checkpoints first; SIGKILL after a grace period)."""
    job = ctx.jobs.stop()
    if job is None:
        return {"stopping": False, "message": "no job is running"}
    return {"stopping": True, "job_id": job.job_id, "state": job.state}


@router.get("/api/training/status")
def train_status(ctx: Ctx) -> dict[str, Any]:
    """The current or last job: state, component, step, loss, budgets and loss curves."""
    out = ctx.jobs.status(curves=True)
    out["gates"] = ctx.gates()
    out["configs"] = shipped_configs()
    out["defaults"] = {"sequential": ctx.train_config.name, "adapt": ctx.adapt_config.name}
    return out


@router.get("/api/training/events", response_class=EventSourceResponse, responses=error_responses(422, 503))
async def train_events(
    request: Request,
    ctx: Ctx,
    since: int | None = Query(default=None, ge=0, description="the last event id seen"),
    last_event_id: str | None = Header(default=None),
) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events: ``job`` (state changes), ``metrics`` (records with a loss) and
    ``progress`` (the trainer's other records). A new subscriber first gets the current
    job's events so far; ``Last-Event-ID`` (or ``since``) resumes after that id."""
    jobs = ctx.jobs
    seq = since
    if seq is None and last_event_id and last_event_id.isdigit():
        seq = int(last_event_id)
    if seq is None:
        seq = jobs.first_seq_of_current_job()
    yield ServerSentEvent(event="hello", data=jobs.status(curves=False), retry=2000)
    while not await request.is_disconnected():
        batch = jobs.events_after(seq)
        for n, kind, record in batch:
            seq = n
            yield ServerSentEvent(event=kind, id=str(n), data=record)
        if not batch:
            await asyncio.sleep(SSE_POLL_S)


@functools.cache
def shipped_configs() -> dict[str, list[str]]:
    """The configs in ``continuonbrain/configs/`` by kind (sequential: has ``components``);
    read once, since the package's files do not change while it runs."""
    out: dict[str, list[str]] = {"sequential": [], "adapt": []}
    for path in sorted(CONFIG_DIR.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        out["sequential" if "components" in doc else "adapt"].append(path.stem)
    return out


def config_by_name(name: str, kind: str) -> Path:
    """A shipped config by name: never a client-supplied path (no traversal)."""
    if name.endswith(".json"):
        name = name[:-5]
    shipped = shipped_configs()[kind]
    if name not in shipped:
        raise HTTPException(422, f"config: {name!r} is not a shipped {kind} config; one of {shipped}")
    return CONFIG_DIR / f"{name}.json"
