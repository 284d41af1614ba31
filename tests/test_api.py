"""The HTTP API against a real uvicorn server on loopback: every route, auth, bad input,
conflicts, training jobs in real child processes, and a promotion picked up while requests run."""

from __future__ import annotations

import json
import shutil
import stat
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ARM_SEED_EPISODES, copy_store, live_server, make_variant, wait_for

from continuonbrain.runtime.api import create_app
from continuonbrain.trainer.store import PromotionStore

OBS = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.5, 0.2, 1.0, 0.0]


@pytest.fixture
def site(arm_seed, tmp_path: Path):
    """A server over a private copy of the seed store; yields (client, token, paths)."""
    models = copy_store(arm_seed["models"], tmp_path / "models")
    episodes = tmp_path / "episodes"
    shutil.copytree(arm_seed["episodes"], episodes)
    state_file = tmp_path / "robot_state.json"
    app = create_app(
        models,
        rlds_dir=episodes,
        run_root=tmp_path / "runs",
        robot_state_file=state_file,
        sysfs_root=tmp_path / "no-sysfs",
    )
    token = (models / "api_token").read_text().strip()
    with live_server(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield (
            client,
            {"Authorization": f"Bearer {token}"},
            {
                "models": models,
                "episodes": episodes,
                "state_file": state_file,
                "tmp": tmp_path,
            },
        )


def test_status_and_infer(site) -> None:
    client, _, paths = site
    version = PromotionStore(paths["models"]).current_version()
    status = client.get("/api/status").json()
    assert status["model_version"] == version and status["slots"]["current"]["version"] == version
    assert set(status["gates"]["gates"]) == {"idle", "teleop", "battery", "thermal", "new_episodes"}
    assert status["system"]["mem_available_mb"] > 0 and status["training"]["state"] == "idle"

    r = client.post("/api/infer", json={"observation": OBS, "session_id": "robot-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["action"]) == 2 and all(-1.0 <= a <= 1.0 for a in body["action"])
    assert body["model_version"] == version and body["latency_us"] > 0 and body["fresh_state"]
    assert not client.post("/api/infer", json={"observation": OBS, "session_id": "robot-1"}).json()["fresh_state"]
    assert client.get("/openapi.json").json()["paths"]["/api/infer"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"observation": [1.0, 2.0]}, "observation"),  # the wrong size for this brain
        ({"observation": [1.0] * 70_000}, "observation"),  # over the size bound
        ({"observation": ["a"] * 10}, "observation"),
        ({"observation": OBS, "session_id": "x" * 200}, "session_id"),
        ({"observation": OBS, "session_id": "a b"}, "session_id"),
        ({"observation": OBS, "extra": 1}, "extra"),
        ({}, "observation"),
    ],
)
def test_bad_infer_input_is_a_422_naming_the_field(site, body, field) -> None:
    client, _, _ = site
    r = client.post("/api/infer", json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["message"]


def test_a_body_that_is_not_json_is_named_as_such(site) -> None:
    client, _, _ = site
    body = b'{"observation": [1, 2'  # cut off at byte 21
    r = client.post("/api/infer", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["message"].startswith("request body is not valid JSON (at byte 21"), r.text


def test_no_model_is_a_503(tmp_path: Path) -> None:
    app = create_app(tmp_path / "empty", run_root=tmp_path / "runs")
    with live_server(app) as url:
        r = httpx.post(f"{url}/api/infer", json={"observation": OBS})
        assert r.status_code == 503 and "no model loaded" in r.json()["message"]
        assert httpx.get(f"{url}/api/status").json()["model_version"] is None


def test_token_file_is_0600_and_state_changing_routes_need_it(site) -> None:
    client, auth, paths = site
    token_file = paths["models"] / "api_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    routes = [
        "/api/models/promote",
        "/api/models/rollback",
        "/api/training/sequential",
        "/api/training/adapt",
        "/api/training/stop",
        "/api/episodes/quarantine",
    ]
    for route in routes:
        for headers in ({}, {"Authorization": "Bearer wrong-token-of-some-length"}, {"Authorization": "Basic abc"}):
            r = client.post(route, headers=headers)
            assert r.status_code == 401, (route, headers, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
    # A restart reads the same token.
    app = create_app(paths["models"], run_root=paths["tmp"] / "runs2")
    assert app is not None and token_file.read_text().strip() == auth["Authorization"].split()[1]


def test_promote_and_rollback_change_what_is_served_at_once(site) -> None:
    client, auth, paths = site
    store = PromotionStore(paths["models"])
    first = store.current_version()
    r = client.post("/api/models/promote", headers=auth)
    assert r.status_code == 409 and "no candidate" in r.json()["message"]

    candidate = make_variant(store, paths["tmp"], 0.97)  # close to current: passes the action-distance guard
    r = client.post("/api/models/promote", headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["promoted"], body["reason"]
    assert body["model_version"] == candidate  # served before the answer came back
    assert client.post("/api/infer", json={"observation": OBS}).json()["model_version"] == candidate
    models = client.get("/api/models").json()
    assert models["current"]["version"] == candidate and models["serving"] == candidate
    assert [m["version"] for m in models["history"]] == [first]
    assert models["audit"][-1]["decision"] == "promoted" and models["audit"][-1]["version"] == candidate

    assert client.post("/api/models/rollback", headers=auth, json={"version": "nope"}).status_code == 404
    assert client.post("/api/models/rollback", headers=auth, json={"version": "../../etc"}).status_code == 422
    r = client.post("/api/models/rollback", headers=auth, json={"version": first})
    assert r.status_code == 200, r.text
    assert r.json()["model_version"] == first
    assert client.get("/api/status").json()["model_version"] == first


def test_a_candidate_that_fails_the_gate_is_rejected_and_current_keeps_serving(site) -> None:
    client, auth, paths = site
    store = PromotionStore(paths["models"])
    first = store.current_version()
    make_variant(store, paths["tmp"], 25.0)  # actions far from current's: the distance guard must refuse
    body = client.post("/api/models/promote", headers=auth).json()
    assert body["promoted"] is False and body["reason"]
    assert body["model_version"] == first
    assert client.get("/api/models").json()["audit"][-1]["decision"] == "rejected"


def _events(client: httpx.Client, want: int, since: int | None = None, timeout: float = 180.0) -> list[dict]:
    """Read SSE events until ``want`` metrics events arrived (or a job ended)."""
    out: list[dict] = []
    params = {} if since is None else {"since": since}
    with client.stream("GET", "/api/training/events", params=params, timeout=timeout) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        event: dict = {}
        for line in r.iter_lines():
            if line.startswith("event: "):
                event["event"] = line[7:]
            elif line.startswith("id: "):
                event["id"] = int(line[4:])
            elif line.startswith("data: "):
                event["data"] = json.loads(line[6:])
            elif line == "" and event:
                out.append(event)
                event = {}
                metrics = [e for e in out if e["event"] == "metrics"]
                ended = any(e["event"] == "job" and e["data"].get("state") in ("succeeded", "failed") for e in out)
                if len(metrics) >= want or ended:
                    return out
    return out


def test_sequential_training_job_streams_metrics_and_lands_a_candidate(site) -> None:
    client, auth, _ = site
    r = client.post("/api/training/sequential", headers=auth, json={"max_steps": 6})
    assert r.status_code == 200, r.text
    job_id = r.json()["job_id"]
    again = client.post("/api/training/sequential", headers=auth, json={"max_steps": 6})
    assert again.status_code == 409 and "stop it first" in again.json()["message"]
    assert client.post("/api/training/adapt", headers=auth).status_code == 409

    events = _events(client, want=3)
    assert events[0]["event"] == "hello"
    metrics = [e["data"] for e in events if e["event"] == "metrics"]
    assert len(metrics) >= 3 and all(m["job_id"] == job_id and np.isfinite(m["loss"]) for m in metrics)
    assert [e["id"] for e in events if "id" in e] == sorted(e["id"] for e in events if "id" in e)

    done = wait_for(
        lambda: (s := client.get("/api/training/status").json())["job"]["state"] in ("succeeded", "failed") and s,
        what="the job to finish",
    )
    job = done["job"]
    assert job["state"] == "succeeded", job.get("error")
    assert set(job["curves"]) == {"vqvae", "mid_loop", "fast_loop"} and job["returncode"] == 0
    assert job["result"]["components"]["fast_loop"]["steps"] == 6
    candidate = client.get("/api/models").json()["candidate"]
    assert candidate is not None and candidate["components"] == ["vqvae", "mid_loop", "fast_loop"]
    # A late subscriber replays the finished job's events from the start.
    replay = _events(client, want=10_000, since=0, timeout=30)
    assert any(e["event"] == "job" and e["data"].get("state") == "succeeded" for e in replay)


def test_stop_then_resume_a_sequential_job(site) -> None:
    client, auth, _ = site
    first = client.post("/api/training/sequential", headers=auth, json={"max_steps": 100_000}).json()["job_id"]
    _events(client, want=1)
    r = client.post("/api/training/stop", headers=auth)
    assert r.status_code == 200 and r.json()["stopping"] and r.json()["job_id"] == first
    job = wait_for(
        lambda: (j := client.get("/api/training/status").json()["job"])["state"] == "stopped" and j,
        what="the job to stop",
    )
    assert job["job_id"] == first
    assert client.post("/api/training/stop", headers=auth).json()["stopping"] is False

    r = client.post("/api/training/sequential", headers=auth, json={"max_steps": 100_000, "resume": True})
    assert r.status_code == 200, r.text
    status = client.get("/api/training/status").json()
    assert status["job"]["resumed_from"] == first and "--resume" in status["job"]["command"]
    client.post("/api/training/stop", headers=auth)
    wait_for(lambda: client.get("/api/training/status").json()["job"]["state"] == "stopped", what="second stop")


def test_teleoperation_refuses_a_start_unless_forced(site) -> None:
    client, auth, paths = site
    paths["state_file"].write_text(json.dumps({"mode": "teleop", "teleop_active": True}))
    r = client.post("/api/training/sequential", headers=auth, json={"max_steps": 3})
    assert r.status_code == 409
    body = r.json()
    assert body["detail"]["reason"] == "teleop_active" and "force" in body["message"]
    assert client.get("/api/status").json()["gates"]["blocking"] == ["teleop"]
    r = client.post("/api/training/sequential", headers=auth, json={"max_steps": 3, "force": True})
    assert r.status_code == 200, r.text
    assert client.get("/api/training/status").json()["job"]["forced"] is True
    client.post("/api/training/stop", headers=auth)
    wait_for(lambda: client.get("/api/training/status").json()["state"] == "idle", what="the forced job to end")


def test_adaptation_job_runs_the_gate_and_reports(site) -> None:
    client, auth, paths = site
    before = PromotionStore(paths["models"]).current_version()
    r = client.post("/api/training/adapt", headers=auth, json={"max_steps": 20})
    assert r.status_code == 200, r.text
    job = wait_for(
        lambda: (j := client.get("/api/training/status").json()["job"])["state"] in ("succeeded", "failed") and j,
        what="the adaptation to finish",
    )
    assert job["state"] == "succeeded", job.get("error")
    result = job["result"]
    assert result["status"] in ("promoted", "rejected"), result
    assert "lora" in job["curves"] and len(job["curves"]["lora"]) >= 1
    served = client.get("/api/status").json()["model_version"]
    if result["status"] == "promoted":
        wait_for(lambda: client.get("/api/status").json()["model_version"] == result["candidate_version"])
    else:
        assert served == before


def test_episodes_validation_state_and_quarantine(site) -> None:
    client, auth, paths = site
    listing = client.get("/api/episodes").json()
    assert listing["total"] == ARM_SEED_EPISODES and listing["bad"] == 0 and listing["steps"] > 0
    assert all(e["valid"] for e in listing["episodes"])
    first = sorted(p for p in paths["episodes"].iterdir() if p.is_dir())[0]
    step_file = next((first / "steps").glob("*.jsonl"))
    lines = step_file.read_text().splitlines()
    row = json.loads(lines[1])
    row["reward"] = "lots"
    lines[1] = json.dumps(row)
    step_file.write_text("\n".join(lines) + "\n")

    listing = client.get("/api/episodes").json()
    bad = [e for e in listing["episodes"] if not e["valid"]]
    assert listing["bad"] == 1 and len(bad) == 1 and listing["ok"] == ARM_SEED_EPISODES - 1
    assert first.name in bad[0]["error"] and "reward" in bad[0]["error"]

    r = client.post("/api/episodes/quarantine", headers=auth)
    assert r.status_code == 200 and len(r.json()["quarantined"]) == 1
    listing = client.get("/api/episodes").json()
    assert listing["total"] == ARM_SEED_EPISODES - 1 and listing["bad"] == 0
    assert listing["quarantine"][0]["name"] == first.name and "reward" in listing["quarantine"][0]["reason"]
    assert client.get("/api/episodes", params={"limit": 5, "offset": 50}).json()["episodes"][-1]["valid"]


def test_live_sim_routes(site) -> None:
    client, _, _ = site
    state = client.post("/api/sim/reset", json={"seed": 1}).json()
    assert len(state["observation"]) == 10 and state["steps"] == 0
    action = client.post("/api/infer", json={"observation": state["observation"], "reset": True}).json()["action"]
    state = client.post("/api/sim/step", json={"sim_id": state["sim_id"], "action": action}).json()
    assert state["steps"] == 1
    moved = client.post("/api/sim/step", json={"sim_id": state["sim_id"], "action": [0, 0], "target": [0.0, 0.6]})
    assert moved.json()["target"] == pytest.approx([0.0, 0.6])
    assert client.post("/api/sim/step", json={"sim_id": "0" * 16, "action": [0, 0]}).status_code == 404
    assert client.post("/api/sim/step", json={"sim_id": "../x", "action": [0, 0]}).status_code == 422


def test_promotions_are_picked_up_while_clients_keep_calling_infer(site) -> None:
    """Four keep-alive clients call /api/infer while three promotions land through the API:
    no request fails, every answer names a promoted version, and the last one is served."""
    client, auth, paths = site
    store = PromotionStore(paths["models"])
    versions = {store.current_version()}
    url = str(client.base_url)
    stop = threading.Event()
    seen: list[str] = []
    failures: list[str] = []

    def worker(n: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while not stop.is_set():
                r = c.post("/api/infer", json={"observation": OBS, "session_id": f"w{n}"})
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    seen.append(r.json()["model_version"])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(3):
            versions.add(make_variant(store, paths["tmp"], 0.99 - 0.01 * i))
            body = client.post("/api/models/promote", headers=auth).json()
            assert body["promoted"], body
            n = len(seen)
            wait_for(lambda n=n: len(seen) > n + 8, what="answers after the promotion")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    assert set(seen) <= versions and seen[-1] == store.current_version()
    assert len(set(seen)) >= 3


def test_serve_command_binds_loopback_and_stops_on_ctrl_c(arm_seed, tmp_path: Path) -> None:
    import signal
    import socket
    import subprocess
    import sys

    import psutil

    models = copy_store(arm_seed["models"], tmp_path / "models")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "continuonbrain", "serve", "--model-root", str(models), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = ""
        while "Robot Editor:" not in line:
            line = proc.stdout.readline()
            assert line, "the server exited before printing its URL"
        assert f"http://127.0.0.1:{port}/" in line and str(models / "api_token") in line
        wait_for(lambda: _up(port), timeout=60, what="the server to answer")
        listening = [c.laddr for c in psutil.Process(proc.pid).net_connections() if c.status == "LISTEN"]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening)
        assert stat.S_IMODE((models / "api_token").stat().st_mode) == 0o600
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


#: Every route of the API, as (path, method): the OpenAPI document lists exactly these.
ROUTES = {
    ("/api/status", "get"),
    ("/api/infer", "post"),
    ("/api/models", "get"),
    ("/api/models/promote", "post"),
    ("/api/models/rollback", "post"),
    ("/api/training/sequential", "post"),
    ("/api/training/adapt", "post"),
    ("/api/training/stop", "post"),
    ("/api/training/status", "get"),
    ("/api/training/events", "get"),
    ("/api/episodes", "get"),
    ("/api/episodes/quarantine", "post"),
    ("/api/sim/reset", "post"),
    ("/api/sim/step", "post"),
    # added for the Robot Editor's camera car and frame scrubber (issue 14)
    ("/api/sim/drive", "post"),
    ("/api/episodes/view", "get"),
    ("/api/episodes/step", "get"),
    ("/api/episodes/frame", "get"),
    # live shadow mode (issue 13)
    ("/api/models/shadow", "post"),
    ("/api/models/shadow", "get"),
    ("/api/models/shadow", "delete"),
}
#: The routes that need the token.
AUTH_ROUTES = {
    ("/api/models/promote", "post"),
    ("/api/models/rollback", "post"),
    ("/api/training/sequential", "post"),
    ("/api/training/adapt", "post"),
    ("/api/training/stop", "post"),
    ("/api/episodes/quarantine", "post"),
    ("/api/models/shadow", "post"),
    ("/api/models/shadow", "delete"),
}


def test_openapi_lists_every_route_and_the_token_routes_document_401(tmp_path: Path) -> None:
    """One router per area, one document: the same paths and methods as ever, each with the
    400 and 500 every route can answer, and a 401 exactly where the token is needed."""
    spec = create_app(tmp_path / "models", token="t").openapi()
    ops = {(path, method): op for path, item in spec["paths"].items() for method, op in item.items()}
    assert set(ops) == ROUTES
    for key, op in ops.items():
        assert {"400", "500"} <= set(op["responses"]), key
        assert ("401" in op["responses"]) == (key in AUTH_ROUTES), key


class _FixedService:
    """A BrainService stand-in: ``act`` answers one fixed action (the app takes any service)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def act(self, obs, session_id, reset):
        from types import SimpleNamespace

        self.calls.append((obs, session_id, reset))
        return SimpleNamespace(
            action=np.array([0.25, -0.5]), model_version="fixed", latency_us=1, session_id=session_id, fresh_state=True
        )


def test_the_routes_use_the_service_the_app_was_given(tmp_path: Path) -> None:
    """Behaviour comes in through create_app's parameters: no module global to patch."""
    service = _FixedService()
    app = create_app(tmp_path / "models", token="t", service=service)
    with live_server(app) as url:
        r = httpx.post(f"{url}/api/infer", json={"observation": OBS, "session_id": "s1"}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "action": [0.25, -0.5],
            "model_version": "fixed",
            "latency_us": 1,
            "session_id": "s1",
            "fresh_state": True,
        }
        assert service.calls == [(OBS, "s1", False)]
        assert httpx.post(f"{url}/api/training/stop", timeout=30).status_code == 401
        stop = httpx.post(f"{url}/api/training/stop", headers={"Authorization": "Bearer t"}, timeout=30)
        assert stop.status_code == 200 and stop.json() == {"stopping": False, "message": "no job is running"}


def test_the_package_keeps_the_names_of_the_module() -> None:
    """runtime/api.py became a package: every public name of the module is still there."""
    import continuonbrain.runtime.api as api

    for name in ("PACKAGE_DIR", "WEB_DIR", "CONFIG_DIR", "DEFAULT_TRAIN_CONFIG", "DEFAULT_ADAPT_CONFIG"):
        assert isinstance(getattr(api, name), Path), name
    assert api.WEB_DIR.is_dir() and api.DEFAULT_TRAIN_CONFIG.is_file() and api.DEFAULT_ADAPT_CONFIG.is_file()
    assert api.BLOCKING_GATES == ("teleop", "battery", "thermal") and api.SSE_POLL_S > 0
    assert set(api.ERROR_TEXT) == {400, 401, 404, 409, 413, 422, 429, 500, 503, 507}
    assert callable(api.create_app) and callable(api.server_config) and callable(api.serve)
