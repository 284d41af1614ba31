"""The Robot Editor for camera robots, gate checks and shadow mode, in a real headless Chromium
against a real uvicorn server (the browser, page and server fixtures of ``test_web``).

* A camera brain is served: the page shows the live car instead of the arm, the camera
  picture changes as the served brain drives, and the track map is drawn with the car on it.
* An image episode is scrubbed: different steps show different frames (the stored JPEG, byte
  for byte) with that step's action; bad keys and steps are 404s, never files.
* Gate records with ``checks`` show every check with its figures and a pass/fail mark.
* The shadow panel starts a window with the token, shows ticks accumulating while a client
  infers, and stops it.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import test_web
from conftest import TINY_CAMERA_MODEL, copy_store, make_variant, seed_config, tiny_components
from test_web import ARTIFACTS, PHONE, SCREENSHOTS, SLOW, enter_token, error_messages, layout_problems, within_screen

from continuonbrain.rlds import read_episodes
from continuonbrain.sim.drive2d import IMAGE_KEY
from continuonbrain.trainer.store import PromotionStore

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture skips (or fails on CI) with the reason
    expect = None

pytestmark = pytest.mark.browser

# test_web's fixtures: one Chromium per module, a fresh page per test, real servers.
browser, page, servers, seed_site = test_web.browser, test_web.page, test_web.servers, test_web.seed_site

CAR_EPISODES = 3
CAR_STEPS = 60

#: A digest of the pixels an <img> shows (drawn onto a canvas: same origin or a data URL).
IMG_PIXELS = """(id) => {
    const img = document.getElementById(id);
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    let h = 0;
    for (let i = 0; i < d.length; i++) h = (Math.imul(h, 31) + d[i]) >>> 0;
    return [c.width, c.height, h];
}"""
#: Pixels drawn on the track map (its background is cleared to transparent).
MAP_PIXELS = """() => {
    const c = document.getElementById('car-map');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
    return n;
}"""


@pytest.fixture(scope="module")
def car_seed(tmp_path_factory) -> dict[str, Path]:
    """A tiny camera brain (``cam/image_array`` only) trained a few steps on drive2d expert
    episodes and promoted: it drives badly (it learns the expert's throttle, and leaves the
    track within seconds), which is enough to watch it drive."""
    from continuonbrain.cli import main
    from continuonbrain.sim.collect import collect_to_dir

    tmp = tmp_path_factory.mktemp("car-seed")
    collect_to_dir("drive2d", CAR_EPISODES, tmp / "episodes", seed=0, dart_sigma=0.2, max_steps=CAR_STEPS)
    components = tiny_components(3, batch=(8, 2, 8), shuffle_buffer=64)
    components["fast_loop"]["max_steps"] = 100  # enough to learn the expert's throttle: the car moves
    path = seed_config(
        tmp,
        tmp / "episodes",
        name="car.json",
        model=TINY_CAMERA_MODEL,
        components=components,
        normalizer_episodes=CAR_EPISODES,
        image_keys=[IMAGE_KEY],
    )
    assert main(["train", "--config", str(path), "--json"]) == 0
    PromotionStore(tmp / "models").promote({"passed": True, "reason": "camera seed for the web tests"})
    return {"models": tmp / "models", "episodes": tmp / "episodes"}


@pytest.fixture
def car_site(car_seed, servers, tmp_path: Path) -> dict[str, Any]:
    models = copy_store(car_seed["models"], tmp_path / "models")
    episodes = tmp_path / "episodes"
    shutil.copytree(car_seed["episodes"], episodes)
    return servers(models, episodes)


def keep_screenshot(locator: Any, name: str) -> None:
    """``locator``'s screenshot in ``test-artifacts/test_web/``; with
    ``CONTINUONBRAIN_UPDATE_SCREENSHOTS=1`` also the README's copy in ``docs/screenshots/``."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / name
    locator.screenshot(path=str(shot))
    if os.environ.get("CONTINUONBRAIN_UPDATE_SCREENSHOTS") == "1":
        from PIL import Image

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        with Image.open(shot) as image:
            small = image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
            small.save(SCREENSHOTS / name, optimize=True)


def http(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_camera_brain_drives_the_live_car_with_its_camera_and_track_map(page, car_site) -> None:
    """A served camera brain gets the live car instead of the arm. Running it, the page shows
    the served version, the camera picture (160x120, changing as the car moves) and the track
    map: the track drawn, the car on it, a trail growing behind it."""
    version = PromotionStore(car_site["models"]).current_version()
    page.goto(car_site["url"])
    expect(page.get_by_test_id("panel-car")).to_be_visible()
    expect(page.get_by_test_id("panel-sim")).to_be_hidden()
    page.get_by_test_id("car-seed").fill("4")
    page.get_by_test_id("car-run").click()
    expect(page.get_by_test_id("car-state")).to_have_attribute("data-state", "running")
    page.wait_for_function("() => +(document.getElementById('car-map').dataset.ticks || 0) >= 10", timeout=SLOW)
    expect(page.get_by_test_id("car-version")).to_have_text(version)
    expect(page.get_by_test_id("car-action")).to_contain_text("throttle")
    expect(page.get_by_test_id("car-latency")).to_contain_text("µs in the model")

    camera = page.get_by_test_id("car-camera")
    page.wait_for_function("() => document.getElementById('car-camera').naturalWidth > 0", timeout=SLOW)
    first = page.evaluate(IMG_PIXELS, "car-camera")
    assert first[:2] == [160, 120]
    frames = int(camera.get_attribute("data-frames"))
    page.wait_for_function(f"() => +document.getElementById('car-camera').dataset.frames >= {frames + 3}", timeout=SLOW)
    later = page.evaluate(IMG_PIXELS, "car-camera")
    assert later[:2] == [160, 120] and later[2] != first[2], "the camera picture must change as the car drives"

    car_map = page.get_by_test_id("car-map")
    assert int(car_map.get_attribute("data-track-points")) > 50
    page.wait_for_function("() => +document.getElementById('car-map').dataset.trail >= 20", timeout=SLOW)
    assert page.evaluate(MAP_PIXELS) > 5000  # the track surface alone covers thousands of pixels
    x0, y0 = float(car_map.get_attribute("data-car-x")), float(car_map.get_attribute("data-car-y"))
    page.wait_for_function(
        f"() => {{ const d = document.getElementById('car-map').dataset;"
        f" return Math.hypot(+d.carX - {x0}, +d.carY - {y0}) > 0.05; }}",
        timeout=SLOW,
    )

    page.get_by_test_id("car-run").click()
    expect(page.get_by_test_id("car-state")).to_have_attribute("data-state", "paused")
    keep_screenshot(page.get_by_test_id("panel-car"), "robot-editor-car.png")
    assert error_messages(page) == []


def test_the_car_route_refuses_a_vector_brain_and_unknown_sims(seed_site) -> None:
    """``/api/sim/drive`` with a vector (arm) brain served: 422 naming why; an arm sim or an
    unknown id cannot be driven as a car."""
    url = seed_site["url"]

    def post(path: str, body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(
            url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    code, car = post("api/sim/reset", {"env": "drive2d", "seed": 2})
    assert code == 200 and car["env"] == "drive2d" and car["frame"].startswith("data:image/jpeg;base64,")
    assert len(car["track"]["centreline"]) > 50 and car["track"]["half_width"] > 0
    code, answer = post("api/sim/drive", {"sim_id": car["sim_id"]})
    assert code == 422 and "cannot drive the car" in answer["message"]
    code, arm = post("api/sim/reset", {"env": "reach2d"})
    code, answer = post("api/sim/drive", {"sim_id": arm["sim_id"]})
    assert code == 422 and "not the camera car" in answer["message"]
    code, answer = post("api/sim/drive", {"sim_id": "0" * 16})
    assert code == 404
    code, moved = post("api/sim/step", {"sim_id": car["sim_id"], "action": [0.0, 1.0]})  # a manual tick
    assert code == 200 and moved["steps"] == 1 and moved["action"] == [0.0, 1.0] and moved["speed"] > 0


def test_scrubbing_an_image_episode_shows_its_frames_and_actions(page, car_site) -> None:
    """An episode with a camera opens in the frame viewer; moving the slider shows that step's
    frame (the stored JPEG as is) and that step's action; steps and keys that do not exist are
    404s (no path in a request is ever opened)."""
    episodes = sorted(read_episodes(car_site["episodes"]), key=lambda e: e.episode_id)
    ep = episodes[0]
    page.goto(car_site["url"])
    row = page.locator(f"#episodes-table tr[data-key='{ep.episode_id}']")
    row.get_by_test_id("episode-frames").click()
    viewer = page.get_by_test_id("viewer")
    expect(viewer).to_be_visible()
    expect(viewer).to_have_attribute("data-steps", str(CAR_STEPS))
    expect(page.get_by_test_id("viewer-slider")).to_have_attribute("max", str(CAR_STEPS - 1))
    expect(page.get_by_test_id("viewer-image")).to_have_value(IMAGE_KEY)

    shown: dict[int, list] = {}
    for t in (0, 37, CAR_STEPS - 1):
        page.get_by_test_id("viewer-slider").fill(str(t))
        page.wait_for_function(
            f"() => document.getElementById('viewer-frame').dataset.loadedT === '{t}'"
            f" && document.getElementById('viewer-action').dataset.t === '{t}'",
            timeout=SLOW,
        )
        expect(page.get_by_test_id("viewer-t")).to_contain_text(f"{t} of {CAR_STEPS - 1}")
        action = json.loads(page.get_by_test_id("viewer-action").get_attribute("data-action"))
        assert action == pytest.approx(ep.action_vector()[t].tolist(), abs=1e-6)
        shown[t] = page.evaluate(IMG_PIXELS, "viewer-frame")
        assert shown[t][:2] == [160, 120]
        if t == 37:
            keep_screenshot(viewer, "robot-editor-frames.png")
    assert len({digest for *_, digest in shown.values()}) == 3, "different steps must show different frames"

    key = urllib.parse.quote(ep.episode_id)
    image = urllib.parse.quote(IMAGE_KEY)
    code, body = http(f"{car_site['url']}api/episodes/frame?key={key}&t=37&image={image}")
    stored = ep.observation[IMAGE_KEY][37]
    assert code == 200 and body == stored.encoded()  # sent as stored: no re-encoding
    for bad, status in (
        (f"key={urllib.parse.quote('../../etc/passwd')}&t=0&image={image}", 404),
        (f"key={key}&t={CAR_STEPS}&image={image}", 404),
        (f"key={key}&t=-1&image={image}", 422),
        (f"key={key}&t=0&image={urllib.parse.quote('../steps')}", 404),
    ):
        code, body = http(f"{car_site['url']}api/episodes/frame?{bad}")
        assert code == status, (bad, body)
        assert "message" in json.loads(body)
    page.get_by_test_id("viewer-close").click()
    expect(viewer).to_be_hidden()
    assert error_messages(page) == []


CHECKS_REJECTED = {
    "held_out": {
        "candidate": 0.061,
        "current": 0.058,
        "paired_mean_diff": 0.003,
        "margin": 0.01,
        "episode_ids": [f"ep{i}" for i in range(10)],
        "passed": True,
    },
    "sim_twin": {"metric": "success_rate", "candidate": 0.42, "current": 0.86, "margin": 0.05, "passed": False},
    "forgetting": {"original_distance": 0.071, "limit": 0.08, "passed": True},
}
CHECKS_PROMOTED = {
    "held_out": {"candidate": 0.057, "current": 0.058, "paired_mean_diff": -0.001, "margin": 0.01, "passed": True},
    "bounds": {"violations": 0, "passed": True},
    "shadow": {"ticks": 500, "mean_action_distance": 0.012, "passed": True},
}


def test_gate_checks_show_each_check_with_its_figures_and_mark(page, servers, arm_seed, tmp_path: Path) -> None:
    """A rejected candidate's audit line and the promoted version's manifest carry ``checks``:
    each check is listed by name with its figures and ✓ or ✗, whatever keys it holds."""
    models = copy_store(arm_seed["models"], tmp_path / "models")
    store = PromotionStore(models)
    make_variant(store, tmp_path, 3.0)
    store.reject({"passed": False, "reason": "closed-loop success 0.42 < 0.86 - 0.05", "checks": CHECKS_REJECTED})
    good = make_variant(store, tmp_path, 0.98)
    store.promote({"passed": True, "reason": "every check passed", "checks": CHECKS_PROMOTED})
    s = servers(models, None)
    page.goto(s["url"])
    expect(page.get_by_test_id("current-version")).to_have_text(good)

    current = page.get_by_test_id("models-current")
    for name in CHECKS_PROMOTED:
        item = current.locator(f"li[data-check={name}]")
        expect(item).to_have_attribute("data-passed", "true")
        expect(item).to_contain_text("✓")
    expect(current.locator("li[data-check=shadow]")).to_contain_text("ticks 500")
    expect(current.locator("li[data-check=shadow]")).to_contain_text("shadow on live traffic")

    rejected = page.locator("#models-audit tr.decision-rejected")
    expect(rejected).to_have_count(1)
    twin = rejected.locator("li[data-check=sim_twin]")
    expect(twin).to_have_attribute("data-passed", "false")
    expect(twin).to_contain_text("✗")
    expect(twin).to_contain_text("closed loop in the sim twin")
    for figure in ("metric success_rate", "candidate 0.42", "current 0.86", "margin 0.05"):
        expect(twin).to_contain_text(figure)
    expect(rejected.locator("li[data-check=held_out]")).to_contain_text("paired mean diff 0.003")
    expect(rejected.locator("li[data-check=held_out]")).to_contain_text("episode_ids [ep0, ep1, ep2, ep3, … 6 more]")
    expect(rejected.locator("li[data-check=forgetting]")).to_have_attribute("data-passed", "true")
    assert error_messages(page) == []


def test_a_real_gate_decision_shows_its_checks(page, seed_site) -> None:
    """Promoting a candidate far from the current from the page: the gate's own record (whatever
    checks it ran) is listed in the answer and in the audit line, the failed check marked ✗."""
    store = PromotionStore(seed_site["models"])
    make_variant(store, seed_site["tmp"], 25.0)
    page.goto(seed_site["url"])
    page.get_by_test_id("token-set").click()
    enter_token(page, seed_site["token"])
    page.get_by_test_id("models-promote").click()
    result = page.get_by_test_id("promote-result")
    expect(result).to_have_attribute("data-promoted", "false", timeout=SLOW)
    (record,) = [a for a in store.audit() if a.get("decision") == "rejected"]
    assert record["checks"], "the gate writes its checks into the audit line"
    checks = record["checks"]
    failed = [name for name, check in checks.items() if isinstance(check, dict) and check.get("passed") is False]
    assert failed
    for where in (result, page.locator("#models-audit tr.decision-rejected")):
        expect(where.locator("li[data-check]")).to_have_count(len(record["checks"]))
        for name in failed:
            expect(where.locator(f"li[data-check={name}]")).to_have_attribute("data-passed", "false")
            expect(where.locator(f"li[data-check={name}]")).to_contain_text("✗")
    assert error_messages(page) == []


def test_shadow_panel_starts_shows_live_divergence_and_stops(page, seed_site) -> None:
    """With a candidate waiting, Start (with the token) runs a shadow window; while a client
    infers, the ticks and the action distance fill in; Stop ends it (not passed: cut short)."""
    store = PromotionStore(seed_site["models"])
    candidate = make_variant(store, seed_site["tmp"], 0.9)
    current = store.current_version()
    page.goto(seed_site["url"])
    expect(page.get_by_test_id("shadow-state")).to_have_attribute("data-state", "idle")
    expect(page.get_by_test_id("shadow-stop")).to_be_disabled()
    page.get_by_test_id("shadow-window").fill("100000")
    page.get_by_test_id("shadow-start").click()
    enter_token(page, seed_site["token"])
    stats = page.get_by_test_id("shadow-stats")
    expect(stats).to_have_attribute("data-active", "true", timeout=SLOW)
    expect(page.get_by_test_id("shadow-candidate")).to_have_text(candidate)
    expect(page.get_by_test_id("shadow-current")).to_have_text(current)

    stop = threading.Event()

    def client() -> None:  # a robot's control loop on /api/infer
        body = json.dumps({"observation": [0.5, 0.1, 0.0, 0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.1], "session_id": "robot"})
        while not stop.is_set():
            req = urllib.request.Request(
                seed_site["url"] + "api/infer", data=body.encode(), headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req) as resp:
                resp.read()

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        page.wait_for_function("() => +document.getElementById('shadow-stats').dataset.ticks >= 20", timeout=SLOW)
        expect(page.get_by_test_id("shadow-distance")).to_contain_text("mean")
        expect(page.get_by_test_id("shadow-ticks")).to_contain_text("of 100000")
    finally:
        stop.set()
        thread.join(timeout=30)
    page.get_by_test_id("shadow-stop").click()
    expect(stats).to_have_attribute("data-active", "false", timeout=SLOW)
    expect(page.get_by_test_id("shadow-result")).to_contain_text("Stopped after")
    expect(page.get_by_test_id("shadow-state")).to_have_attribute("data-state", "finished")
    expect(page.get_by_test_id("shadow-start")).to_be_enabled()
    assert error_messages(page) == []


@pytest.mark.parametrize("page", [PHONE], ids=["390x844"], indirect=True)
def test_the_car_and_the_frame_viewer_fit_a_phone(page, car_site) -> None:
    """On a phone the live car (camera and map), the frame viewer and the shadow panel fit the
    screen: nothing wider than it, no button cut or wrapped."""
    page.goto(car_site["url"])
    page.get_by_test_id("car-run").click()
    page.wait_for_function("() => +(document.getElementById('car-camera').dataset.frames || 0) >= 2", timeout=SLOW)
    page.get_by_test_id("car-run").click()
    for testid in ("car-camera", "car-map", "car-run", "car-reset", "shadow-start", "shadow-stop"):
        within_screen(page, page.get_by_test_id(testid))
    page.locator("#episodes-table [data-testid=episode-frames]").first.click()
    page.wait_for_function("() => document.getElementById('viewer-frame').dataset.loadedT === '0'", timeout=SLOW)
    for testid in ("viewer-frame", "viewer-slider", "viewer-action", "viewer-close"):
        within_screen(page, page.get_by_test_id(testid))
    page.evaluate("window.scrollTo(0, 0)")
    assert layout_problems(page) == []
    assert error_messages(page) == []
