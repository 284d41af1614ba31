"""The robot keeps its good brain and keeps answering (issue 11, items 2-6 and 9), against real
servers on loopback: the production uvicorn configuration (``api.server_config``) in a thread,
or ``continuonbrain serve`` in a child process under ``ulimit -n 1024``; real sockets left
half-open, real 100 MiB bodies, real corrupted files, a real full tmpfs.

No assertion here is about speed: deadlines are set short where a test needs one to pass,
and the waits are generous bounds so that a loaded CI box cannot fail them. Latency under
the same attacks is measured by ``bench/bench_api.py`` (BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from conftest import copy_store, fill_disk, make_variant, wait_for

from continuonbrain.runtime.api import create_app, server_config
from continuonbrain.runtime.brain_service import BrainService
from continuonbrain.runtime.limits import HostPolicy, ServerLimits
from continuonbrain.trainer.store import MANIFEST, PromotionStore

OBS = [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.5, 0.2, 1.0, 0.0]
MiB = 1 << 20


@contextlib.contextmanager
def guarded_server(app) -> Iterator[str]:
    """``app`` under the configuration ``continuonbrain serve`` uses, on a free loopback port."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(server_config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started or not thread.is_alive(), what="the server to start")
    assert server.started, "the test server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()


def make_app(models: Path, tmp: Path, **kw: Any):
    return create_app(
        models, run_root=tmp / "runs", sysfs_root=tmp / "no-sysfs", robot_state_file=tmp / "rs.json", **kw
    )


@pytest.fixture
def models(arm_seed, tmp_path: Path) -> Path:
    return copy_store(arm_seed["models"], tmp_path / "models")


def raw(url: str, data: bytes, read_timeout: float = 60.0) -> tuple[socket.socket, bytes]:
    """Send ``data`` on a new connection; return the socket and what the server answered
    before closing (or within ``read_timeout``)."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=read_timeout)
    s.sendall(data)
    return s, _read_all(s)


def _read_all(s: socket.socket) -> bytes:
    out = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := s.recv(65536):
            out += chunk
            if b"\r\n\r\n" in out and _complete(out):
                break
    return out


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def status_and_json(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------ item 2: nothing unverified is served


def test_a_manifest_without_files_and_a_flipped_weight_byte_is_never_served(models: Path, tmp_path: Path) -> None:
    store = PromotionStore(models)
    good = store.current_version()
    bad = make_variant(store, tmp_path, 0.97)
    store.promote({"passed": True})
    served = store.slot("current").resolve()
    manifest = json.loads((served / MANIFEST).read_text())
    del manifest["files"]
    (served / MANIFEST).write_text(json.dumps(manifest))
    flip_byte(served / "fast_loop.safetensors", 100)
    with guarded_server(make_app(models, tmp_path)) as url:  # a restart on the damaged store
        status = httpx.get(f"{url}/api/status").json()
        assert status["model_version"] == good, "unverified weights were served"
        refused = status["service"]["refused"][-1]
        assert refused["version"] == bad and "lists no files" in refused["reason"]
        assert httpx.post(f"{url}/api/infer", json={"observation": OBS}).json()["model_version"] == good


# ------------------------------------------------------------------ item 3: fallback and integrity


@pytest.mark.parametrize("offset", [10, 1000, -1])
def test_a_restart_with_a_corrupted_current_serves_the_newest_good_history_version(
    models: Path, tmp_path: Path, offset: int, caplog
) -> None:
    store = PromotionStore(models)
    good = store.current_version()
    bad = make_variant(store, tmp_path, 0.97)
    store.promote({"passed": True})
    flip_byte(store.slot("current").resolve() / "fast_loop.safetensors", offset)
    with guarded_server(make_app(models, tmp_path)) as url:
        r = httpx.post(f"{url}/api/infer", json={"observation": OBS})
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == good
        status = httpx.get(f"{url}/api/status").json()
        fallback = status["fallback"]
        assert fallback and fallback["version"] == good and bad in fallback["reason"] and "sha256" in fallback["reason"]
        assert status["service"]["fallback"] == fallback and status["slots"]["current"]["version"] == bad
    audit = [a for a in store.audit() if a["decision"] == "fallback"]
    assert audit and audit[-1]["version"] == good and bad in audit[-1]["reason"]
    assert any("FALLBACK" in r.message and r.levelname == "ERROR" for r in caplog.records)
    assert store.current_version() == bad  # the store is not changed behind the operator's back


def test_a_fallback_ends_when_a_good_version_is_promoted(models: Path, tmp_path: Path) -> None:
    store = PromotionStore(models)
    good = store.current_version()
    make_variant(store, tmp_path, 0.97)
    store.promote({"passed": True})
    (models / "current").unlink()
    (models / "current").symlink_to(".slots/does-not-exist")  # nothing to serve at start but history
    with BrainService(models) as service:
        assert service.version == good and service.status()["fallback"]["version"] == good
        newer = make_variant(store, tmp_path, 0.95, source=models / "history" / good)
        store.promote({"passed": True})
        wait_for(lambda: service.version == newer, what="the promotion to be served")
        assert service.status()["fallback"] is None


def test_corruption_of_the_served_files_in_place_is_detected_and_reported(models: Path, tmp_path: Path) -> None:
    service = BrainService(models, reverify_interval_s=0.05)
    with guarded_server(make_app(models, tmp_path, service=service)) as url:
        first = httpx.post(f"{url}/api/infer", json={"observation": OBS, "reset": True}).json()
        assert httpx.get(f"{url}/api/status").json()["integrity"]["ok"] is True
        flip_byte(models / "current" / "fast_loop.safetensors", 500)
        integrity = wait_for(
            lambda: (i := httpx.get(f"{url}/api/status").json()["integrity"])["ok"] is False and i,
            what="the corruption to be reported",
        )
        assert integrity["version"] == first["model_version"] and "sha256" in integrity["reason"]
        # The brain verified at load time keeps serving from memory, unchanged.
        again = httpx.post(f"{url}/api/infer", json={"observation": OBS, "reset": True}).json()
        assert again["model_version"] == first["model_version"] and again["action"] == first["action"]
    corrupted = [a for a in PromotionStore(models).audit() if a["decision"] == "corrupted"]
    assert len(corrupted) == 1 and corrupted[0]["version"] == first["model_version"]


# ------------------------------------------------------------------ item 4: status pages and a full disk


def test_status_pages_answer_with_garbage_manifests_in_every_slot(models: Path, tmp_path: Path) -> None:
    store = PromotionStore(models)
    v1 = store.current_version()
    make_variant(store, tmp_path, 0.97)
    store.promote({"passed": True})
    make_variant(store, tmp_path, 0.96)
    with guarded_server(make_app(models, tmp_path)) as url:
        for slot in (models / "candidate", models / "current", models / "history" / v1):
            (slot / MANIFEST).write_bytes(b"\x00garbage{")
        for route in ("/api/status", "/api/models"):
            r = httpx.get(url + route)
            assert r.status_code == 200, (route, r.text)
        status = httpx.get(f"{url}/api/status").json()
        assert {b["slot"] for b in status["slots"]["broken"]} == {"current", "candidate", "history"}
        models_info = httpx.get(f"{url}/api/models").json()
        assert models_info["current"]["broken"] and "unreadable manifest" in models_info["current"]["reason"]
        assert [m["version"] for m in models_info["history"] if m.get("broken")] == [v1]
        assert httpx.post(f"{url}/api/infer", json={"observation": OBS}).status_code == 200  # still serving


def test_promote_on_a_full_disk_is_a_json_error_and_leaves_no_temporary_slot(
    arm_seed, small_tmpfs: Path, tmp_path: Path
) -> None:
    models = copy_store(arm_seed["models"], small_tmpfs / "models")
    store = PromotionStore(models)
    before = store.current_version()
    make_variant(store, small_tmpfs, 0.97)
    size = sum(f.stat().st_size for f in store.slot("candidate").iterdir())
    app = make_app(models, tmp_path, rlds_dir=arm_seed["episodes"])
    token = (models / "api_token").read_text().strip()
    with guarded_server(app) as url:
        fill_disk(small_tmpfs, leave=size // 2)
        r = httpx.post(f"{url}/api/models/promote", headers={"Authorization": f"Bearer {token}"}, timeout=120)
        assert r.status_code == 507, r.text
        assert r.headers["content-type"] == "application/json"
        assert "disk is full" in r.json()["message"]
        assert not [p.name for p in (models / ".slots").iterdir() if p.name.startswith(".")]
        assert httpx.get(f"{url}/api/status").json()["model_version"] == before
        store.verify(store.slot("current"))


# ------------------------------------------------------------------ item 5: one request cannot stall the robot


def post_huge(url: str, head: bytes, chunk: bytes, count: int) -> tuple[bytes, int]:
    """Send ``head`` and then ``chunk`` up to ``count`` times from a thread while this thread
    reads the answer (so that the server closing early cannot make the answer unreadable).
    Returns the answer and how many chunks went out before the server stopped reading."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=60)
    sent = [0]

    def pump() -> None:
        with contextlib.suppress(OSError):
            s.sendall(head)
            while sent[0] < count:
                s.sendall(chunk)
                sent[0] += 1

    sender = threading.Thread(target=pump, daemon=True)
    sender.start()
    answer = _read_all(s)
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()
    sender.join(timeout=60)
    return answer, sent[0]


def test_a_100_mib_body_is_refused_before_it_is_read(models: Path, tmp_path: Path) -> None:
    with guarded_server(make_app(models, tmp_path)) as url:
        rss = psutil.Process().memory_info().rss
        head = (
            "POST /api/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {100 * MiB}\r\n\r\n"
        ).encode()
        answer, _ = post_huge(url, head, b"[1.0," * (MiB // 5), 100)
        status, body = status_and_json(answer)
        assert status == 413 and "over the" in body["message"]
        # The same size without a length (chunked): refused once past the limit, while it streams in.
        head = b"POST /api/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        answer, sent = post_huge(url, head, b"%x\r\n%s\r\n" % (MiB, b"1" * MiB), 100)
        status, body = status_and_json(answer)
        assert status == 413 and "larger than" in body["message"]
        assert sent < 100, "the server read all of the chunked 100 MiB"
        grew_mb = (psutil.Process().memory_info().rss - rss) / MiB
        assert grew_mb < 50, f"the server grew by {grew_mb:.0f} MiB"
        assert httpx.post(f"{url}/api/infer", json={"observation": OBS}).status_code == 200


def test_slow_headers_slow_bodies_and_silent_connections_are_closed(models: Path, tmp_path: Path) -> None:
    limits = ServerLimits(header_timeout_s=0.5, body_timeout_s=0.5, sweep_interval_s=0.1)
    with guarded_server(make_app(models, tmp_path, limits=limits)) as url:
        host, port = url.removeprefix("http://").split(":")
        silent = socket.create_connection((host, int(port)), timeout=30)
        s, answer = raw(url, b"POST /api/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")  # and nothing more
        assert status_and_json(answer)[0] == 408 and s.recv(1) == b""
        s, answer = raw(url, b"POST /api/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
        assert answer == b"" and s.recv(1) == b"", answer  # closed: the body never came
        status, body = status_and_json(_read_all(silent))  # a connection that never spoke is closed too
        assert status == 408 and "headers not complete" in body["message"]
        huge = b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * (100 << 10)
        answer, _ = post_huge(url, huge, b"a" * 4096, 1000)  # a header that never ends
        status, body = status_and_json(answer)
        assert status == 431 and "headers over" in body["message"]
        assert httpx.post(f"{url}/api/infer", json={"observation": OBS}).status_code == 200
        seen = httpx.get(f"{url}/api/status").json()["limits"]["connections"]
        assert seen["header_timeouts"] >= 2 and seen["body_timeouts"] >= 1 and seen["oversized_headers"] >= 1, seen


def test_sse_subscribers_are_capped(models: Path, tmp_path: Path) -> None:
    limits = ServerLimits(max_sse_subscribers=4)
    with guarded_server(make_app(models, tmp_path, limits=limits)) as url, contextlib.ExitStack() as stack:
        client = stack.enter_context(httpx.Client(base_url=url, timeout=30))
        streams = [stack.enter_context(client.stream("GET", "/api/training/events")) for _ in range(4)]
        assert all(r.status_code == 200 for r in streams)
        with client.stream("GET", "/api/training/events") as r:  # never an endless read, capped or not
            assert r.status_code == 503, "a fifth subscriber got a stream"
            assert "subscribers" in json.loads(r.read())["message"] and r.headers["retry-after"]
        assert client.post("/api/infer", json={"observation": OBS}).status_code == 200
        assert client.get("/api/status").json()["limits"]["sse_subscribers"] == 4


def test_the_host_header_must_name_this_server(models: Path, tmp_path: Path) -> None:
    with guarded_server(make_app(models, tmp_path)) as url:
        port = url.rsplit(":", 1)[1]
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "192.168.1.20"):
            r = httpx.get(f"{url}/api/status", headers={"Host": host})
            assert r.status_code == 400, host
            assert "not this server's" in r.json()["message"]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost:9999", f"[::1]:{port}", "LOCALHOST."):
            assert httpx.get(f"{url}/api/status", headers={"Host": host}).status_code == 200, host
    wildcard = HostPolicy("0.0.0.0")
    assert wildcard.any_host and wildcard.allows(b"robot.local:8080")
    listed = HostPolicy("0.0.0.0", ["robot.local"])
    assert listed.allows(b"robot.local:8080") and listed.allows(b"localhost") and not listed.allows(b"evil.example")
    assert HostPolicy("192.168.1.20").allows(b"192.168.1.20:8080")


def test_every_error_answer_is_json_with_a_message(models: Path, tmp_path: Path) -> None:
    with guarded_server(make_app(models, tmp_path)) as url:
        _, answer = raw(url, b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n")
        status, body = status_and_json(answer)
        assert status == 400 and body["message"]
        for r in (
            httpx.get(f"{url}/no-such-page"),
            httpx.put(f"{url}/api/infer"),
            httpx.post(f"{url}/api/infer", content=b"{not json", headers={"Content-Type": "application/json"}),
        ):
            assert r.status_code >= 400 and r.json()["message"], r.text
        _, answer = raw(url, b"POST /api/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: nope\r\n\r\n")
        status, body = status_and_json(answer)
        assert status == 400 and body["message"]


def _serve_under_ulimit(models: Path, port: int, nofile: int) -> subprocess.Popen:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return subprocess.Popen(
        [sys.executable, "-m", "continuonbrain", "serve", "--model-root", str(models), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=limit,
    )


@contextlib.contextmanager
def open_file_limit(n: int) -> Iterator[None]:
    """This process may hold ``n`` files for a while (restored afterwards)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < n:
        pytest.skip(f"the hard open-file limit {hard} is below the {n} this test holds")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, n), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_infer_answers_while_1100_half_open_connections_are_held_under_ulimit_1024(models: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _serve_under_ulimit(models, port, 1024)
    held: list[socket.socket] = []
    try:
        line = ""
        while "Robot Editor:" not in line:
            line = proc.stdout.readline()
            assert line, "the server exited before printing its URL"
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(url), what="the server to answer")
        with open_file_limit(4096):
            for i in range(1100):
                c = socket.create_connection(("127.0.0.1", port), timeout=30)
                c.sendall(b"POST /api/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n" if i % 2 else b"")
                held.append(c)
            codes = []
            with httpx.Client(base_url=url, timeout=30) as client:  # new connections, as a restarted control loop
                for _ in range(20):
                    codes.append(
                        client.post(
                            "/api/infer", json={"observation": OBS}, headers={"Connection": "close"}
                        ).status_code
                    )
            assert codes == [200] * 20, codes
            assert len(psutil.Process(proc.pid).net_connections()) < 1024
            seen = httpx.get(f"{url}/api/status", timeout=30).json()["limits"]["connections"]
            assert seen["evicted"] >= 1100 - seen["cap"] and seen["open"] <= seen["cap"], seen
            for c in held:
                c.close()
            held.clear()
    finally:
        for c in held:
            c.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/api/status", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


# ------------------------------------------------------------------ item 6: the robot's session is kept


def test_a_control_loop_keeps_its_state_while_100_other_clients_come_and_go(models: Path, tmp_path: Path) -> None:
    """Between every two ticks of the robot's session, 100 other session ids each call once:
    more ids than the 64 session slots. The robot's state must never be reset."""
    with guarded_server(make_app(models, tmp_path)) as url, httpx.Client(base_url=url, timeout=30) as client:
        fresh = []
        others: dict[int, int] = {}
        for tick in range(15):
            fresh.append(
                client.post("/api/infer", json={"observation": OBS, "session_id": "robot"}).json()["fresh_state"]
            )
            for n in range(100):
                r = client.post("/api/infer", json={"observation": OBS, "session_id": f"client-{n}"})
                others[r.status_code] = others.get(r.status_code, 0) + 1
                if r.status_code == 429:
                    assert "active use" in r.json()["message"] and r.headers["retry-after"]
            assert tick or fresh == [True]
        assert fresh == [True] + [False] * 14, "the robot's recurrent state was reset"
        assert set(others) <= {200, 429} and others.get(429)
        sessions = client.get("/api/status").json()["service"]["sessions"]
        assert sessions["refused_new"] == others[429] and sessions["active"] <= sessions["max"]
        # Idle sessions do make room: once the other clients have been quiet for longer than
        # session_active_s, a new id evicts the least recently used of them (never the robot).
        time.sleep(sessions["active_s"] + 0.2)
        client.post("/api/infer", json={"observation": OBS, "session_id": "robot"})
        assert client.post("/api/infer", json={"observation": OBS, "session_id": "newcomer"}).status_code == 200
        sessions = client.get("/api/status").json()["service"]["sessions"]
        assert sessions["evicted"] >= 1 and "robot" not in [e["session_id"] for e in sessions["recent_evictions"]]
        assert not client.post("/api/infer", json={"observation": OBS, "session_id": "robot"}).json()["fresh_state"]


# ------------------------------------------------------------------ item 9: the smaller ones


def _serve_once(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "continuonbrain", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("content", ["short", ""])
def test_serve_refuses_a_short_or_empty_token_file_without_a_traceback(tmp_path: Path, content: str) -> None:
    token = tmp_path / "token"
    token.write_text(content)
    r = _serve_once("--model-root", str(tmp_path / "m"), "--token-file", str(token))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: token file") and "at least 16" in last


def test_serve_does_not_create_a_missing_token_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent" / "dir" / "x"
    r = _serve_once("--model-root", str(tmp_path / "m"), "--token-file", str(missing))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "nonexistent").exists()


def test_openapi_documents_the_error_answers_and_refuses_an_empty_observation(models: Path, tmp_path: Path) -> None:
    import jsonschema

    with guarded_server(make_app(models, tmp_path)) as url:
        spec = httpx.get(f"{url}/openapi.json").json()
        empty = httpx.post(f"{url}/api/infer", json={"observation": {}})
        assert empty.status_code == 422 and "observation" in empty.json()["message"]
    paths = spec["paths"]
    expect = {
        ("/api/infer", "post"): {"400", "413", "422", "429", "503"},
        ("/api/models/promote", "post"): {"401", "409", "507"},
        ("/api/models/rollback", "post"): {"401", "404", "409"},
        ("/api/training/sequential", "post"): {"401", "409"},
        ("/api/training/events", "get"): {"503"},
        ("/api/status", "get"): {"400", "500"},
    }
    for (path, method), codes in expect.items():
        responses = paths[path][method]["responses"]
        assert codes <= set(responses), (path, sorted(responses))
        for code in codes:
            ref = responses[code]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorResponse"), (path, code, ref)
    schema = spec["components"]["schemas"]["InferRequest"]
    validator = jsonschema.Draft202012Validator(schema)
    assert not validator.is_valid({"observation": {}}), "the schema accepts what the server refuses"
    assert validator.is_valid({"observation": OBS}) and validator.is_valid({"observation": {"state": [1.0]}})


def test_an_evaluation_never_falls_back(models: Path, tmp_path: Path) -> None:
    """``eval`` scores the slot it names: with a broken current it fails instead of scoring history."""
    from continuonbrain.runtime.brain_service import NoModelError
    from continuonbrain.runtime.served_policy import evaluate_served

    store = PromotionStore(models)
    make_variant(store, tmp_path, 0.97)
    store.promote({"passed": True})  # history now holds a good version a fallback could pick
    flip_byte(models / "current" / "fast_loop.safetensors", 10)
    with pytest.raises(NoModelError, match="refused"):
        evaluate_served(models, "reach2d", episodes=1)
