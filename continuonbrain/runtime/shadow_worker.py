"""The shadow worker process: the candidate brain acting on the served brain's ticks.

    python -m continuonbrain.runtime.shadow_worker --candidate DIR --model-root ROOT \\
        --manifest-sha256 SHA --ticks-fd N --control-fd M --config JSON [--window-ticks N] [--window-s S]

Started by :class:`~continuonbrain.runtime.shadow.ShadowRunner`, never by hand. Why a process
and not a thread of the server: a thread running the candidate holds the server's GIL while it
computes, and on a loaded 2-core board the scheduler preempts it *while it holds the GIL*; the
request thread then waits until it runs again (measured with a thread: p99 of the time inside
``BrainService.act`` went from 0.15 ms to 5.2 ms). A process has its own interpreter: the
served answer never waits for it.

**The wire** (no pickle anywhere): ticks arrive on a ``SOCK_SEQPACKET`` Unix socket, one tick
per message (the kernel keeps message boundaries, and a non-blocking send either queues the
whole message or fails, so the server drops a tick instead of waiting). A message is a fixed
header (:data:`HEADER`: kind, fresh-state flag, lengths), the session id (UTF-8), the served
action (float32) and the observation: a float32 vector as raw bytes, or a dict whose arrays
go as raw bytes described by a JSON list (key, dtype, shape) and whose lists (a JSON body's
images) go as JSON. The control socket carries JSON both ways: ``{"cmd": "stop", "reason"}``
to the worker; ``{"event": "ready" | "stats" | "done" | "error", ...}`` back, stats pushed
every :data:`PUSH_S` seconds while ticks come.

The worker re-verifies the candidate's files (sha256 against its manifest, and the manifest's
own sha256 against the one the server verified and loaded), runs numpy and torch on one
thread at nice 10 (the shadow is best effort: when the CPU is short it falls behind, its
ticks are dropped and counted, never the robot's), and exits when the window is over, when
told to stop, or when the server's end of a socket closes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import socket
import struct
import sys
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["HEADER", "decode_tick", "encode_tick", "main"]

#: kind (0: vector, 1: dict), fresh (0/1), session id bytes, action floats, observation bytes.
HEADER = struct.Struct("<BBHII")
#: Largest tick message: a 64k-number observation as float64 JSON fits; beyond it a tick is dropped.
MAX_MESSAGE = 4 << 20
#: How often the worker pushes its figures to the server while ticks come.
PUSH_S = 0.2
_KIND_VECTOR, _KIND_DICT = 0, 1


def encode_tick(session_id: str, observation: Any, action: np.ndarray, fresh: bool) -> bytes:
    """One tick as a message (see the module doc). ``observation``: what
    :meth:`BrainService.act` passes to the brain (a float32 vector or a mapping)."""
    sid = session_id.encode()
    act = np.ascontiguousarray(action, np.float32).tobytes()
    if isinstance(observation, np.ndarray):
        kind, payload = _KIND_VECTOR, np.ascontiguousarray(observation, np.float32).tobytes()
    elif isinstance(observation, Mapping):
        kind, payload = _KIND_DICT, _encode_dict(observation)
    else:
        kind, payload = _KIND_VECTOR, np.asarray(observation, np.float32).reshape(-1).tobytes()
    return HEADER.pack(kind, int(fresh), len(sid), len(act) // 4, len(payload)) + sid + act + payload


def _encode_dict(observation: Mapping[str, Any]) -> bytes:
    meta: list[dict[str, Any]] = []
    raw: list[bytes] = []
    for key, value in observation.items():
        if isinstance(value, np.ndarray):
            data = np.ascontiguousarray(value).tobytes()
            meta.append({"k": str(key), "dtype": value.dtype.str, "shape": list(value.shape), "n": len(data)})
            raw.append(data)
        else:
            meta.append({"k": str(key), "json": _plain(value)})
    head = json.dumps(meta, separators=(",", ":")).encode()
    return struct.pack("<I", len(head)) + head + b"".join(raw)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def decode_tick(message: bytes | memoryview) -> tuple[str, Any, np.ndarray, bool]:
    """``(session id, observation, served action, fresh)`` of one message."""
    view = memoryview(message)
    kind, fresh, n_sid, n_act, n_obs = HEADER.unpack_from(view, 0)
    at = HEADER.size
    sid = bytes(view[at : at + n_sid]).decode()
    at += n_sid
    action = np.frombuffer(view[at : at + 4 * n_act], np.float32).copy()
    at += 4 * n_act
    body = view[at : at + n_obs]
    if len(body) != n_obs:
        raise ValueError(f"a tick message is truncated ({len(body)} of {n_obs} observation bytes)")
    if kind == _KIND_VECTOR:
        return sid, np.frombuffer(body, np.float32).copy(), action, bool(fresh)
    (n_head,) = struct.unpack_from("<I", body, 0)
    meta = json.loads(bytes(body[4 : 4 + n_head]))
    at = 4 + n_head
    obs: dict[str, Any] = {}
    for item in meta:
        if "json" in item:
            obs[item["k"]] = item["json"]
            continue
        n = int(item["n"])
        obs[item["k"]] = np.frombuffer(body[at : at + n], np.dtype(item["dtype"])).reshape(item["shape"]).copy()
        at += n
    return sid, obs, action, bool(fresh)


# --------------------------------------------------------------------------- the process


def _send(control: socket.socket, message: dict[str, Any]) -> None:
    control.send(json.dumps(message, allow_nan=False, default=str).encode())


def _json_summary(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in summary.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m continuonbrain.runtime.shadow_worker")
    parser.add_argument("--candidate", required=True)
    parser.add_argument("--model-root", required=True)
    parser.add_argument("--manifest-sha256", required=True)
    parser.add_argument("--backend", default="numpy", choices=["numpy", "torch"])
    parser.add_argument("--ticks-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--config", required=True, help="the ShadowConfig as JSON")
    parser.add_argument("--window-ticks", type=int, default=None)
    parser.add_argument("--window-s", type=float, default=None)
    args = parser.parse_args(argv)
    ticks = socket.socket(fileno=args.ticks_fd)
    control = socket.socket(fileno=args.control_fd)
    with contextlib.suppress(OSError):  # best effort: the shadow yields the CPU to the server
        os.nice(10)
    try:
        brain, cfg = _load(args)
    except Exception as exc:  # the server reports it as the window's end
        _send(control, {"event": "error", "message": f"{type(exc).__name__}: {exc}"})
        return 2
    from continuonbrain.models.shadow_stats import ShadowStats

    stats = ShadowStats(brain.config.action_low, brain.config.action_high, reservoir_size=cfg.reservoir_size)
    _send(control, {"event": "ready", "pid": os.getpid()})
    reason, complete, sessions = _loop(ticks, control, brain, stats, cfg, args.window_ticks, args.window_s)
    _drain(ticks, control)  # a socket closed with unread messages would reset the server's end
    _send(
        control,
        {
            "event": "done",
            "summary": _json_summary(stats.summary()),
            "sessions": sessions,
            "reason": reason,
            "complete": complete,
        },
    )
    return 0


def _drain(*socks: socket.socket) -> None:
    """Read and discard whatever waits on ``socks`` (ticks past the window, a late stop)."""
    for sock in socks:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            while sock.recv(MAX_MESSAGE):
                pass
        sock.setblocking(True)


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    """The candidate, verified again here: the server checked these very files, and a file
    swapped in between must not be what the shadow runs."""
    import hashlib

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    import torch

    from continuonbrain.hope import HopeBrain
    from continuonbrain.models.shadow_stats import ShadowConfig
    from continuonbrain.models.store import ModelStore

    torch.set_num_threads(1)
    directory = Path(args.candidate)
    sha = hashlib.sha256((directory / "manifest.json").read_bytes()).hexdigest()
    if sha != args.manifest_sha256:
        raise RuntimeError(f"{directory}: the candidate was replaced since the server loaded it")
    ModelStore(args.model_root).verify(directory)
    brain = HopeBrain.load(directory, backend=args.backend)
    brain.reset()  # exports the numpy Fast loop once; every session forks it
    return brain, ShadowConfig.model_validate(json.loads(args.config))


def _loop(
    ticks: socket.socket,
    control: socket.socket,
    brain: Any,
    stats: Any,
    cfg: Any,
    window_ticks: int | None,
    window_s: float | None,
) -> tuple[str, bool, int]:
    """Compare ticks until the window is complete, a stop comes or the server goes away."""
    sel = selectors.DefaultSelector()
    sel.register(ticks, selectors.EVENT_READ, "ticks")
    sel.register(control, selectors.EVENT_READ, "control")
    ticks.setblocking(False)
    sessions: OrderedDict[str, Any] = OrderedDict()
    buf = bytearray(MAX_MESSAGE)
    deadline = None if window_s is None else time.monotonic() + window_s
    last_push, pushed_ticks = time.monotonic(), -1
    while True:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return f"window of {window_s:g} s complete", True, len(sessions)
        timeout = PUSH_S if deadline is None else max(0.0, min(PUSH_S, deadline - now))
        for key, _ in sel.select(timeout):
            if key.data == "control":
                data = control.recv(65536)
                if not data:
                    return "the server went away", False, len(sessions)
                message = json.loads(data)
                if message.get("cmd") == "stop":
                    return str(message.get("reason") or "stopped"), False, len(sessions)
                continue
            while True:  # every tick waiting, in order
                try:
                    n = ticks.recv_into(buf)
                except BlockingIOError:
                    break
                if n == 0:
                    return "the server went away", False, len(sessions)
                _compare(memoryview(buf)[:n], brain, stats, sessions, cfg.max_sessions)
                if window_ticks is not None and stats.ticks >= window_ticks:
                    return f"window of {window_ticks} ticks complete", True, len(sessions)
        now = time.monotonic()
        if now - last_push >= PUSH_S and stats.ticks != pushed_ticks:
            _send(control, {"event": "stats", "summary": _json_summary(stats.summary()), "sessions": len(sessions)})
            last_push, pushed_ticks = now, stats.ticks


def _compare(message: memoryview, brain: Any, stats: Any, sessions: OrderedDict[str, Any], max_sessions: int) -> None:
    try:
        session_id, observation, action, fresh = decode_tick(message)
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        stats.add_error(f"a tick could not be decoded: {exc}")
        return
    fork = sessions.get(session_id)
    if fork is None:
        fork = brain.fork()
        fork.reset()
        sessions[session_id] = fork
        while len(sessions) > max_sessions:
            sessions.popitem(last=False)
    else:
        sessions.move_to_end(session_id)
        if fresh:  # the served session started over: so does the candidate's
            fork.reset()
    t0 = time.perf_counter()
    try:
        out = fork.act(observation)
    except Exception as exc:  # any failure of the candidate is a finding, not a crash
        stats.add_error(f"{type(exc).__name__}: {exc}")
        return
    stats.add(action, out, (time.perf_counter() - t0) * 1e6)


if __name__ == "__main__":
    sys.exit(main())
