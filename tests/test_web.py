"""The Robot Editor page (continuonbrain/runtime/web/) in a real headless Chromium against a
real uvicorn server: what a person sees and does, checked through the DOM.

Every test waits on DOM state (Playwright's auto-waiting assertions and ``wait_for_function``),
never on a fixed sleep, with generous timeouts because CI shares its CPUs. Each test leaves a
screenshot in ``test-artifacts/test_web/`` (``-FAILED`` in the name when it failed); the layout
test also leaves ``robot-editor-1400x900.png`` and ``robot-editor-390x844.png`` there, which
``CONTINUONBRAIN_UPDATE_SCREENSHOTS=1`` copies to ``docs/screenshots/`` (the README shows them).

What a user sees is checked at a desktop (1400 x 900) and a phone (390 x 844) size: nothing is
wider than the screen (no sideways scrolling), no button's label wraps or is cut, and the
token dialog, training start/stop, promote/rollback and the live arm are all reachable.

Without Playwright or ``/usr/bin/chromium`` the tests skip, except when ``CI=true``: there a
missing browser is an error, so the browser tests can never silently stop running.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import urllib.request
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
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
DESKTOP = {"width": 1400, "height": 900}
PHONE = {"width": 390, "height": 844}
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
    """A fresh page; its screenshot is saved at teardown and uncaught JS errors fail the test.

    Indirect parametrization (``request.param``) gives the viewport; under 600 px wide it is a
    phone (mobile viewport meta handling, touch)."""
    size = getattr(request, "param", None) or {"width": 1400, "height": 1600}
    phone = size["width"] < 600
    context = browser.new_context(viewport=size, is_mobile=phone, has_touch=phone, device_scale_factor=1)
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
    shown as "Reached earlier"). The session seed reaches ~86% of held-out reach2d targets, and
    the live sim never truncates, so the arm gets as many ticks as the timeout allows. Pushed off
    the target afterwards, the arm "holds now: no" with its distance in cm, while the past
    success stays on its own line."""
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
    # Parked on the target: it holds now, and it reached it earlier.
    page.wait_for_function("() => document.getElementById('sim-canvas').dataset.holds === 'true'", timeout=SLOW)
    page.get_by_test_id("sim-run").click()
    expect(page.get_by_test_id("sim-state")).to_have_attribute("data-state", "paused")
    holds, reached = page.get_by_test_id("sim-holds"), page.get_by_test_id("sim-success")
    expect(reached).to_have_attribute("data-reached", "true")
    expect(reached).to_contain_text("yes, after")

    # Push the tip away from the target behind the page's back (the target stays where it is),
    # then one tick from the page: the past success stays, "holds now" says no, with the distance.
    sim_id = canvas.get_attribute("data-sim-id")
    distance = page.evaluate(
        """async (simId) => {
            let d = 0;
            for (let i = 0; i < 300 && d < 0.4; i++) {
                const r = await fetch('api/sim/step', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                                       body: JSON.stringify({sim_id: simId, action: [1, -1]})});
                d = (await r.json()).distance;
            }
            return d;
        }""",
        sim_id,
    )
    assert distance >= 0.4
    ticks = int(canvas.get_attribute("data-ticks"))
    page.get_by_test_id("sim-step").click()
    page.wait_for_function(f"() => +document.getElementById('sim-canvas').dataset.ticks > {ticks}", timeout=SLOW)
    expect(holds).to_have_attribute("data-holds", "false")
    shown_cm = float(re.search(r"no: ([0-9.]+) cm from the target", holds.inner_text()).group(1))
    assert shown_cm == pytest.approx(100 * float(canvas.get_attribute("data-distance")), abs=0.06)
    assert shown_cm > 30
    expect(page.get_by_test_id("sim-distance")).to_contain_text(f"{shown_cm:.1f} cm now")
    expect(reached).to_have_attribute("data-reached", "true")
    expect(reached).to_contain_text("not holding now")
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


# --------------------------------------------------------------------------- what a user sees

#: Everything on the page that does not fit: boxes past the screen's edges, buttons whose label
#: wraps or is cut, selects whose chosen text is cut, text too small to read. [] when all fits.
LAYOUT_PROBLEMS = """() => {
    const W = window.innerWidth;
    const problems = [];
    const name = (el) => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') +
        (el.dataset.testid ? `[${el.dataset.testid}]` : '') + (el.className && typeof el.className === 'string'
        ? '.' + el.className.trim().split(/\\s+/).join('.') : '');
    const shown = (el) => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
    if (document.documentElement.scrollWidth > W)
        problems.push(`the page scrolls sideways: ${document.documentElement.scrollWidth} > ${W} px`);
    for (const el of document.body.querySelectorAll('*')) {
        if (!shown(el)) continue;
        const r = el.getBoundingClientRect();
        if (r.right > W + 0.5 || r.left < -0.5)
            problems.push(`${name(el)} spans x ${r.left.toFixed(1)}..${r.right.toFixed(1)} of ${W} px`);
        const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
        if (own && parseFloat(getComputedStyle(el).fontSize) < 11)
            problems.push(`${name(el)} text is ${getComputedStyle(el).fontSize}`);
    }
    for (const b of document.querySelectorAll('button')) {
        if (!shown(b)) continue;
        const label = b.textContent.trim();
        if (b.scrollWidth > b.clientWidth + 1)
            problems.push(`button "${label}" is cut: ${b.scrollWidth} > ${b.clientWidth} px`);
        const range = document.createRange();
        range.selectNodeContents(b);
        const lines = new Set([...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top)));
        if (lines.size > 1) problems.push(`button "${label}" wraps onto ${lines.size} lines`);
    }
    const ctx = document.createElement('canvas').getContext('2d');
    for (const s of document.querySelectorAll('select')) {
        if (!shown(s) || s.selectedIndex < 0) continue;
        const cs = getComputedStyle(s);
        ctx.font = `${cs.fontWeight} ${cs.fontSize} ${cs.fontFamily}`;
        const text = s.options[s.selectedIndex].text;
        const room = s.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight) - 22;  // the arrow
        if (ctx.measureText(text).width > room) problems.push(`select ${name(s)} cuts "${text}"`);
    }
    return problems;
}"""


def layout_problems(page: Any) -> list[str]:
    return page.evaluate(LAYOUT_PROBLEMS)


def within_screen(page: Any, locator: Any) -> dict[str, float]:
    """Scroll ``locator`` into view; assert it is visible and wholly inside the screen's width."""
    locator.scroll_into_view_if_needed()
    expect(locator).to_be_visible()
    box = locator.bounding_box()
    assert box is not None
    width = page.viewport_size["width"]
    assert box["x"] >= -0.5 and box["x"] + box["width"] <= width + 0.5, (locator, box, width)
    return box


def cli_eval(model_root: Path, slot: str, episodes: int, seed: int) -> dict[str, Any]:
    """``continuonbrain eval --json`` in this process (its stdout parsed)."""
    from continuonbrain.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        args = ["--model-root", str(model_root), "--slot", slot, "--episodes", str(episodes), "--seed", str(seed)]
        code = main(["eval", "--env", "reach2d", *args, "--json"])
    assert code == 0, out.getvalue()
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def evaluated(arm_seed, tmp_path_factory) -> dict[str, Any]:
    """The arm seed's store with three versions, each evaluated by ``continuonbrain eval``:
    the seed (now in history), a close variant promoted over it (current) and a farther one
    waiting as the candidate. Tests copy it (:func:`copy_store`)."""
    tmp = tmp_path_factory.mktemp("evaluated")
    models = copy_store(arm_seed["models"], tmp / "models")
    store = PromotionStore(models)
    seed_version = store.current_version()
    results = {seed_version: cli_eval(models, "current", 12, 1000)}
    current = make_variant(store, tmp, 0.97)
    store.promote({"passed": True, "reason": "test: promoted without a gate"})
    results[current] = cli_eval(models, "current", 12, 1000)
    candidate = make_variant(store, tmp, 0.8)
    results[candidate] = cli_eval(models, "candidate", 12, 1000)
    return {"models": models, "versions": [seed_version, current, candidate], "results": results}


@pytest.fixture
def evaluated_site(evaluated, arm_seed, servers, tmp_path: Path) -> dict[str, Any]:
    models = copy_store(evaluated["models"], tmp_path / "models")
    episodes = tmp_path / "episodes"
    shutil.copytree(arm_seed["episodes"], episodes)
    return {**servers(models, episodes), **{k: evaluated[k] for k in ("versions", "results")}}


def test_models_panel_compares_versions_by_closed_loop_figures(page, evaluated_site) -> None:
    """Every ``continuonbrain eval`` run is recorded in the store under its version and shown in
    the Models panel: the figures (success, distance, return, on which env, episodes and seed)
    per version, the current and candidate slots' own line, and a chart across the versions,
    oldest to newest, so that a user sees whether the robot got better."""
    s = evaluated_site
    seed_version, current, candidate = s["versions"]
    with urllib.request.urlopen(s["url"] + "api/models") as resp:
        evaluations = json.load(resp)["evaluations"]
    assert set(evaluations) == set(s["versions"])
    for version, result in s["results"].items():
        (record,) = evaluations[version]
        assert record["slot"] == ("candidate" if version == candidate else "current")
        assert (record["env"], record["episodes"], record["seed"]) == ("reach2d", 12, 1000)
        for key in ("success_rate", "mean_return", "mean_final_distance"):
            assert record[key] == result[key]
        assert record["baselines"]["expert"]["success_rate"] == result["baselines"]["expert"]["success_rate"]

    page.goto(s["url"])
    rows = page.locator("#models-evals tbody tr[data-version]")
    expect(rows).to_have_count(3)
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.version)") == [candidate, current, seed_version]
    for version, result in s["results"].items():
        row = page.locator(f"#models-evals tr[data-version='{version}']")
        assert float(row.get_attribute("data-success")) == result["success_rate"]
        assert float(row.get_attribute("data-distance")) == result["mean_final_distance"]
        expect(row).to_contain_text("reach2d · 12 ep · seed 1000")
        expect(row).to_contain_text(f"{100 * result['success_rate']:.3g}%")
    expect(page.locator(f"#models-evals tr[data-version='{current}']")).to_contain_text("current")
    expect(page.locator(f"#models-evals tr[data-version='{candidate}']")).to_contain_text("candidate")

    expect(page.get_by_test_id("models-current")).to_contain_text("closed loop: reach2d")
    expect(page.get_by_test_id("models-candidate")).to_contain_text("12 episodes, seed 1000")
    expect(page.locator(f"#models-history tr[data-version='{seed_version}']")).to_contain_text("closed loop: reach2d")

    chart = page.get_by_test_id("eval-chart-reach2d")
    expect(chart).to_have_attribute("data-points", "3")
    assert chart.get_attribute("data-versions").split(",") == s["versions"]  # oldest to newest
    left = [float(v) for v in chart.get_attribute("data-left").split(",")]
    assert left == pytest.approx([100 * s["results"][v]["success_rate"] for v in s["versions"]])
    expect(chart.locator("canvas").first).to_be_visible()
    assert error_messages(page) == []


@pytest.mark.parametrize("page", [DESKTOP, PHONE], ids=["1400x900", "390x844"], indirect=True)
def test_the_page_fits_the_screen_on_a_desktop_and_a_phone(page, evaluated_site) -> None:
    """At 1400 x 900 and on a phone (390 x 844): nothing is wider than the screen, no button's
    label wraps or is cut, no select cuts its text, nothing is set under 11 px; the token dialog,
    training start/stop, promote, rollback and the live arm (running) are all reachable. The
    screenshot of each size is kept (``robot-editor-WxH.png``)."""
    s = evaluated_site
    seed_version = s["versions"][0]
    size = page.viewport_size
    page.goto(s["url"])
    expect(page.get_by_test_id("candidate-version")).to_have_text(s["versions"][2])
    expect(page.locator("#models-evals tbody tr[data-version]")).to_have_count(3)
    expect(page.get_by_test_id("train-stream")).to_have_text("connected")
    expect(page.locator("#status-gates tr[data-state]")).to_have_count(5)
    expect(page.get_by_test_id("episodes-totals")).to_have_attribute("data-total", str(ARM_SEED_EPISODES))
    assert page.locator("#train-config option").count() >= 1
    if size["width"] < 600:
        assert page.evaluate("getComputedStyle(document.querySelector('main')).gridTemplateColumns").count(" ") == 0

    # The live arm, run to a clicked target until it holds there (what the screenshot shows).
    canvas = page.get_by_test_id("sim-canvas")
    box = within_screen(page, canvas)
    page.get_by_test_id("sim-seed").fill("9")
    page.get_by_test_id("sim-run").click()
    page.wait_for_function("() => +(document.getElementById('sim-canvas').dataset.ticks || 0) >= 5", timeout=SLOW)
    target = (0.8 * math.cos(math.radians(-30)), 0.8 * math.sin(math.radians(-30)))
    canvas.click(position={"x": (0.5 + target[0] / 2.2) * box["width"], "y": (0.5 - target[1] / 2.2) * box["height"]})
    page.wait_for_function(
        "() => { const d = document.getElementById('sim-canvas').dataset; return d.success === 'true' &&"
        f" d.holds === 'true' && Math.abs(+d.targetX - {target[0]}) < 0.01; }}",
        timeout=SLOW,
    )
    page.get_by_test_id("sim-run").click()
    expect(page.get_by_test_id("sim-state")).to_have_attribute("data-state", "paused")
    expect(page.get_by_test_id("sim-holds")).to_contain_text("cm from the target")

    for testid in ("token-set", "train-start", "train-stop", "models-promote", f"rollback-{seed_version}"):
        within_screen(page, page.get_by_test_id(testid))
    for testid in ("sim-run", "sim-step", "sim-holds", "sim-success"):
        within_screen(page, page.get_by_test_id(testid))
    page.evaluate("window.scrollTo(0, 0)")
    assert layout_problems(page) == []

    shot = ARTIFACTS / f"robot-editor-{size['width']}x{size['height']}.png"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("CONTINUONBRAIN_UPDATE_SCREENSHOTS") == "1":  # the README's copies, kept small
        from PIL import Image

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        with Image.open(shot) as image:
            small = image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
            small.save(SCREENSHOTS / shot.name, optimize=True)

    page.get_by_test_id("token-set").click()
    dialog = page.get_by_test_id("token-dialog")
    expect(dialog).to_be_visible()
    box = within_screen(page, dialog)
    assert box["y"] >= 0 and box["y"] + box["height"] <= size["height"]
    for testid in ("token-input", "token-save", "token-cancel"):
        within_screen(page, page.get_by_test_id(testid))
    assert layout_problems(page) == []
    page.get_by_test_id("token-cancel").click()
    expect(dialog).to_be_hidden()
    assert error_messages(page) == []


def test_gates_show_passes_blocks_and_unknown_and_what_binds(page, servers, arm_seed, tmp_path: Path) -> None:
    """Each gate is in one of three states, told apart: passes (a reading that allows training),
    blocks (one that stops it) or unknown (no reading), and one line says what binds now. A
    teleoperated robot blocks training (force overrides); a 50 °C SoC passes; no battery reading
    is unknown (and passes: mains power). The robot going idle ends the block; without a robot
    state file the robot's gates are unknown, never shown as a tick beside "no"."""
    models = copy_store(arm_seed["models"], tmp_path / "models")
    sysfs = tmp_path / "warm-sysfs"
    (sysfs / "class/thermal/thermal_zone0").mkdir(parents=True)
    (sysfs / "class/thermal/thermal_zone0/temp").write_text("50000\n")
    state_file = tmp_path / "robot_state.json"  # the file site() points the server at
    state_file.write_text(json.dumps({"mode": "teleop"}))
    s = servers(models, None, sysfs_root=sysfs)
    page.goto(s["url"])
    gate = lambda name: page.locator(f"#status-gates tr[data-gate={name}]")  # noqa: E731
    binds = page.get_by_test_id("gates-binds")

    expect(gate("teleop")).to_have_attribute("data-state", "block")
    expect(gate("teleop")).to_contain_text("✗ blocks")
    expect(gate("teleop")).to_contain_text("blocks training (force overrides)")
    expect(gate("thermal")).to_have_attribute("data-state", "pass")
    expect(gate("thermal")).to_contain_text("✓ passes")
    expect(gate("thermal")).to_contain_text("50 °C")
    expect(gate("battery")).to_have_attribute("data-state", "unknown")
    expect(gate("battery")).to_contain_text("? unknown")
    expect(gate("battery")).to_contain_text("passes (mains power?)")
    expect(gate("new_episodes")).to_have_attribute("data-state", "unknown")
    expect(gate("idle")).to_have_attribute("data-state", "pass")  # busy, but this config does not require idle
    expect(gate("idle")).to_contain_text("not required here")
    expect(binds).to_have_attribute("data-blocked", "true")
    expect(binds).to_contain_text("teleop active: training blocked")

    state_file.write_text(json.dumps({"mode": "idle"}))  # the page polls the status every second
    expect(gate("teleop")).to_have_attribute("data-state", "pass")
    expect(binds).to_have_attribute("data-blocked", "false")
    expect(binds).to_contain_text("Nothing blocks: training may start")

    state_file.unlink()
    expect(gate("idle")).to_have_attribute("data-state", "unknown")
    expect(gate("teleop")).to_have_attribute("data-state", "unknown")
    expect(gate("idle")).to_contain_text("? unknown")
    expect(gate("idle")).not_to_contain_text("✓")
    expect(binds).to_contain_text("unknown: idle, teleop, battery, new_episodes")
    assert layout_problems(page) == []
    assert error_messages(page) == []
