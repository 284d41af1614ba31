"""The Robot Editor page (continuonbrain/runtime/web/) in a real headless Chromium against a
real uvicorn server: what a person sees and does, checked through the DOM.

Every test waits on DOM state (Playwright's auto-waiting assertions and ``wait_for_function``),
never on a fixed sleep, with generous timeouts because CI shares its CPUs. Each test leaves a
screenshot in ``test-artifacts/test_web/`` (``-FAILED`` in the name when it failed).

Without Playwright or ``/usr/bin/chromium`` the tests skip, except when ``CI=true``: there a
missing browser is an error, so the browser tests can never silently stop running.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ARM_SEED_EPISODES, copy_store, live_server, make_variant

from continuonbrain.runtime.api import DEFAULT_TRAIN_CONFIG, create_app
from continuonbrain.trainer.store import PromotionStore

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture skips (or fails on CI) with the reason
    expect = None

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "test_web"
#: Milliseconds: generous, the CPU is shared; a passing test never waits this long.
SLOW = 90_000
FAST = 20_000


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, so the browser tests must run")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module (each test gets a fresh context)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -e '.[dev]')")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    pw = sync_playwright().start()
    try:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
    except Exception as exc:  # a broken install is as missing as an absent one
        pw.stop()
        _unavailable(f"Chromium at {CHROMIUM} did not start: {exc}")
    yield chromium
    chromium.close()
    pw.stop()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Callable[..., dict[str, Any]]]:
    """Start servers during a test: ``servers(models, episodes, **create_app_kwargs)``.

    They stop after the page closes (``page`` depends on this fixture, so it is torn down
    first): the page's SSE stream would otherwise hold the server's shutdown open."""
    with contextlib.ExitStack() as stack:
        yield lambda models, episodes, **kw: stack.enter_context(site(tmp_path, models, episodes, **kw))


@pytest.fixture
def page(browser, servers, request) -> Iterator[Any]:
    """A fresh page; its screenshot is saved at teardown and uncaught JS errors fail the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 1600})
    context.set_default_timeout(FAST)
    pg = context.new_page()
    js_errors: list[str] = []
    pg.on("pageerror", lambda exc: js_errors.append(str(exc)))
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    (ARTIFACTS / f"{name}-FAILED.png").unlink(missing_ok=True)  # from an earlier run
    failed_before = request.session.testsfailed
    yield pg
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    suffix = "-FAILED" if request.session.testsfailed > failed_before else ""
    with contextlib.suppress(Exception):  # a crashed page must not hide the test's own error
        pg.screenshot(path=str(ARTIFACTS / f"{name}{suffix}.png"), full_page=True)
    context.close()
    assert not js_errors, f"uncaught JavaScript errors on the page: {js_errors}"


@contextlib.contextmanager
def site(tmp: Path, models: Path | None, episodes: Path | None, **app_kwargs: Any) -> Iterator[dict[str, Any]]:
    """A server over ``models`` (None: an empty store) with gates read from files under ``tmp``."""
    model_root = models or tmp / "empty-models"
    app = create_app(
        model_root,
        rlds_dir=episodes,
        run_root=tmp / "runs",
        robot_state_file=tmp / "robot_state.json",
        sysfs_root=app_kwargs.pop("sysfs_root", tmp / "no-sysfs"),
        **app_kwargs,
    )
    token = (Path(model_root) / "api_token").read_text().strip()
    with live_server(app) as url:
        yield {"url": url + "/", "token": token, "models": model_root, "episodes": episodes, "tmp": tmp}


@pytest.fixture
def seed_site(arm_seed, servers, tmp_path: Path) -> dict[str, Any]:
    """A server over private copies of the arm seed's store and episodes."""
    models = copy_store(arm_seed["models"], tmp_path / "models")
    episodes = tmp_path / "episodes"
    shutil.copytree(arm_seed["episodes"], episodes)
    return servers(models, episodes)


def enter_token(page: Any, token: str, *, closes: bool = True) -> None:
    """Type ``token`` into the page's token dialog; ``closes``: wait until it has closed."""
    dialog = page.get_by_test_id("token-dialog")
    dialog.wait_for(state="visible")
    page.get_by_test_id("token-input").fill(token)
    page.get_by_test_id("token-save").click()
    if closes:
        dialog.wait_for(state="hidden")


def error_messages(page: Any) -> list[str]:
    return page.locator("#messages [data-kind=error]").all_inner_texts()


def test_page_shows_status_of_the_served_model(page, seed_site) -> None:
    """The status panel shows the version the server serves, the gates with their values,
    memory and temperature; the other panels load without an error."""
    expected = PromotionStore(seed_site["models"]).current_version()
    page.goto(seed_site["url"])
    version = page.get_by_test_id("model-version")
    version.wait_for()
    expect(version).to_have_text(expected)
    expect(page.locator("#status-gates tbody tr[data-gate]")).to_have_count(5)
    for gate in ("idle", "teleop", "battery", "thermal", "new_episodes"):
        expect(page.locator(f"#status-gates tr[data-gate={gate}]")).to_have_attribute("data-ok", "true")
    expect(page.get_by_test_id("status-memory")).to_contain_text("available")
    expect(page.get_by_test_id("status-temp")).to_contain_text("unknown")
    expect(page.get_by_test_id("current-version")).to_have_text(expected)
    expect(page.get_by_test_id("episodes-totals")).to_have_attribute("data-total", str(ARM_SEED_EPISODES))
    expect(page.get_by_test_id("train-stream")).to_have_text("connected")
    assert error_messages(page) == []


def test_training_started_from_the_page_draws_live_loss(page, servers, arm_seed, tmp_path: Path) -> None:
    """A hot (fake) SoC makes the thermal gate refuse the start with its reason; the token is
    entered through the page (a wrong one is refused with 401 and asked for again); forcing
    starts a short job whose per-component loss charts fill from the SSE stream as it runs,
    and a page opened afterwards gets the whole curve replayed."""
    models = copy_store(arm_seed["models"], tmp_path / "models")
    sysfs = tmp_path / "hot-sysfs"
    (sysfs / "class/thermal/thermal_zone0").mkdir(parents=True)
    (sysfs / "class/thermal/thermal_zone0/temp").write_text("91000\n")
    config = json.loads(DEFAULT_TRAIN_CONFIG.read_text())
    config.update(torch_threads=1, normalizer_episodes=ARM_SEED_EPISODES)
    config["thermal"]["sysfs_root"] = str(tmp_path / "no-sysfs")  # the trainer itself must not pause
    for name, batch in (("vqvae", 128), ("mid_loop", 8), ("fast_loop", 64)):
        config["components"][name].update(batch_size=batch, checkpoint_every=1000, shuffle_buffer=512)
    config_path = tmp_path / "tiny-train.json"
    config_path.write_text(json.dumps(config))
    steps = 15

    s = servers(models, arm_seed["episodes"], sysfs_root=sysfs, train_config=config_path)
    page.goto(s["url"])
    thermal = page.locator("#status-gates tr[data-gate=thermal]")
    expect(thermal).to_have_attribute("data-ok", "false")
    expect(thermal).to_contain_text("91 °C")
    expect(page.get_by_test_id("status-temp")).to_contain_text("91 °C")

    page.get_by_test_id("train-max-steps").fill(str(steps))
    page.get_by_test_id("train-start").click()
    enter_token(page, "not-the-token-at-all", closes=False)  # refused: the dialog comes back at once
    expect(page.get_by_test_id("token-why")).to_contain_text("refused the token")
    enter_token(page, s["token"])
    result = page.get_by_test_id("train-result")
    expect(result).to_have_attribute("data-kind", "error")
    expect(result).to_contain_text("Refused")
    expect(result).to_contain_text("force=true")
    expect(page.get_by_test_id("token-state")).to_have_attribute("data-has-token", "true")

    page.get_by_test_id("train-force").check()
    page.get_by_test_id("train-start").click()
    expect(result).to_contain_text("Started sequential job", timeout=SLOW)
    charts = {c: page.get_by_test_id(f"chart-{c}") for c in ("vqvae", "mid_loop", "fast_loop")}
    # Points appear one event at a time: the first component's chart has some while the
    # last component's has none yet (the page drew before the job ended).
    page.wait_for_function(
        """() => {
            const points = (c) => +(document.querySelector(`[data-testid=chart-${c}]`)?.dataset.points || 0);
            return points('vqvae') >= 3 && points('fast_loop') === 0;
        }""",
        timeout=SLOW,
    )
    for chart in charts.values():
        expect(chart).to_have_attribute("data-points", str(steps), timeout=SLOW)
        expect(chart.locator("canvas").first).to_be_visible()
    expect(result).to_contain_text("succeeded", timeout=SLOW)
    expect(page.get_by_test_id("train-state")).to_have_attribute("data-state", "succeeded")
    assert math.isfinite(float(charts["fast_loop"].get_attribute("data-last")))

    replay = page.context.new_page()
    replay.goto(s["url"])
    for name in charts:
        expect(replay.get_by_test_id(f"chart-{name}")).to_have_attribute("data-points", str(steps))
    replay.close()
    assert error_messages(page) == []


def test_promotion_from_the_page_shows_the_gate_and_changes_the_version(page, seed_site) -> None:
    """A candidate far from the current policy is rejected with the gate's reason (the version
    stays); one close to it is promoted and the status panel shows the new version."""
    store = PromotionStore(seed_site["models"])
    before = store.current_version()
    bad = make_variant(store, seed_site["tmp"], 25.0)
    page.goto(seed_site["url"])
    expect(page.get_by_test_id("candidate-version")).to_have_text(bad)
    page.get_by_test_id("token-set").click()
    enter_token(page, seed_site["token"])

    page.get_by_test_id("models-promote").click()
    result = page.get_by_test_id("promote-result")
    expect(result).to_have_attribute("data-promoted", "false", timeout=SLOW)
    expect(result).to_contain_text("Rejected")
    expect(result).to_contain_text("avg action delta")
    expect(page.locator("#models-audit tbody tr").first).to_contain_text("rejected")
    expect(page.get_by_test_id("model-version")).to_have_text(before)

    good = make_variant(store, seed_site["tmp"], 0.97)
    expect(page.get_by_test_id("candidate-version")).to_have_text(good)  # the page noticed the new slot
    page.get_by_test_id("models-promote").click()
    expect(result).to_have_attribute("data-promoted", "true", timeout=SLOW)
    expect(result).to_contain_text(good)
    expect(page.get_by_test_id("model-version")).to_have_text(good)
    expect(page.get_by_test_id("current-version")).to_have_text(good)
    expect(page.locator(f"#models-history tr[data-version='{before}']")).to_have_count(1)
    assert error_messages(page) == []


def test_live_sim_reaches_a_clicked_target(page, seed_site) -> None:
    """The page's loop (sim reset -> /api/infer -> sim step) runs the served policy, shows the
    version and latency; a click on the canvas moves the target to that point, and the arm
    reaches it: the tip holds within 5 cm of the new target for 5 ticks (the env's success,
    shown as "Reached"). The session seed reaches ~86% of held-out reach2d targets, and the
    live sim never truncates, so the arm gets as many ticks as the timeout allows."""
    version = PromotionStore(seed_site["models"]).current_version()
    page.goto(seed_site["url"])
    page.get_by_test_id("sim-seed").fill("9")  # its own target is far from the clicked one
    page.get_by_test_id("sim-run").click()
    canvas = page.get_by_test_id("sim-canvas")
    page.wait_for_function("() => +(document.getElementById('sim-canvas').dataset.ticks || 0) >= 5", timeout=SLOW)
    expect(page.get_by_test_id("sim-version")).to_have_text(version)
    expect(page.get_by_test_id("sim-latency")).to_contain_text("µs")

    target = (0.8 * math.cos(math.radians(-30)), 0.8 * math.sin(math.radians(-30)))
    box = canvas.bounding_box()
    assert box is not None
    canvas.click(position={"x": (0.5 + target[0] / 2.2) * box["width"], "y": (0.5 - target[1] / 2.2) * box["height"]})
    page.wait_for_function(
        f"""() => {{
            const d = document.getElementById('sim-canvas').dataset;
            return Math.abs(+d.targetX - {target[0]}) < 0.01 && Math.abs(+d.targetY - {target[1]}) < 0.01;
        }}""",
        timeout=SLOW,
    )
    page.wait_for_function(
        "() => { const d = document.getElementById('sim-canvas').dataset;"
        " return d.success === 'true' && +d.startDistance > 0.1 && +d.bestDistance <= 0.05; }",
        timeout=SLOW,
    )
    page.get_by_test_id("sim-run").click()
    expect(page.get_by_test_id("sim-state")).to_have_attribute("data-state", "paused")
    assert error_messages(page) == []


def test_no_model_is_shown_clearly(page, servers) -> None:
    """With an empty store the status says so and the live sim shows the 503 as 'no model loaded'."""
    s = servers(None, None)
    page.goto(s["url"])
    expect(page.get_by_test_id("model-version")).to_have_text("no model loaded")
    page.get_by_test_id("sim-run").click()
    expect(page.get_by_test_id("sim-nomodel")).to_be_visible(timeout=SLOW)
    expect(page.get_by_test_id("sim-nomodel")).to_contain_text("No model loaded")
    expect(page.get_by_test_id("models-promote")).to_be_disabled()
    expect(page.get_by_test_id("episodes-totals")).to_contain_text("no episode directory")


def test_a_fallback_and_a_damaged_slot_are_shown_loudly(page, servers, arm_seed, tmp_path: Path) -> None:
    """A corrupted current at start: the page says in a banner that a history version is served
    and why; a history slot with a garbage manifest is listed as damaged, with its reason."""
    models = copy_store(arm_seed["models"], tmp_path / "models")
    store = PromotionStore(models)
    v1 = store.current_version()
    v2 = make_variant(store, tmp_path, 0.97)
    store.promote({"passed": True})
    v3 = make_variant(store, tmp_path, 0.96)
    store.promote({"passed": True})
    weights = store.slot("current").resolve() / "fast_loop.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))  # v3, current, no longer matches its sha256
    (models / "history" / v1 / "manifest.json").write_text("{ garbage")
    s = servers(models, None)
    page.goto(s["url"])
    banner = page.get_by_test_id("status-fallback")
    expect(banner).to_be_visible(timeout=SLOW)
    expect(banner).to_contain_text("FALLBACK")
    expect(banner).to_contain_text(v3)
    expect(page.get_by_test_id("model-version")).to_have_text(v2)
    expect(page.get_by_test_id("status-broken")).to_contain_text(v1)
    expect(page.locator(f"#models-history tr[data-version='{v1}']")).to_contain_text("damaged")


def test_bad_episode_is_shown_as_text_and_quarantined(page, seed_site) -> None:
    """An episode whose name is HTML shows its validation error as text (never markup), and the
    quarantine button (with the token) moves it aside with its reason."""
    evil = "<img src=x onerror=window.__xss=1>"
    episodes = seed_site["episodes"]
    good = sorted(p for p in episodes.iterdir() if p.is_dir())[0]
    bad = episodes / evil
    shutil.copytree(good, bad)
    step_file = sorted((bad / "steps").iterdir())[0]
    step_file.write_text('{"observation": [1, 2\n')

    page.goto(seed_site["url"])
    totals = page.get_by_test_id("episodes-totals")
    expect(totals).to_have_attribute("data-bad", "1")
    row = page.locator("#episodes-table tr[data-valid=false]")
    expect(row).to_have_count(1)
    expect(row).to_contain_text(evil)
    assert page.locator("#panel-episodes img").count() == 0
    assert page.evaluate("window.__xss") is None

    page.get_by_test_id("episodes-quarantine").click()
    enter_token(page, seed_site["token"])
    expect(page.get_by_test_id("episodes-result")).to_contain_text("Moved 1 bad episode")
    expect(totals).to_have_attribute("data-bad", "0")
    quarantined = page.locator("#episodes-quarantined tr[data-name]")
    expect(quarantined).to_have_count(1)
    expect(quarantined).to_contain_text(evil)
    assert page.locator("#panel-episodes img").count() == 0
    assert page.evaluate("window.__xss") is None
    assert not bad.exists()


def test_server_with_an_open_page_stops_on_ctrl_c(page, arm_seed, tmp_path: Path) -> None:
    """``continuonbrain serve`` stops on Ctrl-C even while a Robot Editor tab holds its event
    stream open (the stream never ends by itself; the server bounds its graceful shutdown)."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    models = copy_store(arm_seed["models"], tmp_path / "models")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "continuonbrain", "serve", "--model-root", str(models), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + SLOW / 1000
        while True:  # wait until it answers (starting imports torch: seconds on a shared CPU)
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                with urllib.request.urlopen(url + "api/status", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not answer"
            time.sleep(0.1)
        page.goto(url)
        expect(page.get_by_test_id("train-stream")).to_have_text("connected")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
