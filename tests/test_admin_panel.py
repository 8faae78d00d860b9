"""The admin panel in a real browser: Debian's Chromium driven by Playwright, against the session's graph.

One browser for the module (each test its own context, so its own cookies). A failing test leaves a
screenshot in out/test-screenshots/; with MIKU_DOCS_SCREENSHOTS=1 the run also refreshes the screenshots
docs/admin-panel.md shows (docs/admin-*.png).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
from websockets.sync.client import connect as ws_connect

from bot_client.features import BotFeatures, FeatureConfigs
from bot_client.graph_api import GraphClient
from bot_client.panel_link import PanelLink
from graph.features.figurines import parse_figurines
from graph.features.schedule import parse_schedule
from tests.conftest import ADMIN_LOCKOUT_USER, ADMIN_MAX_FAILURES, ADMIN_PASSWORD, ADMIN_USER
from tests.support.image_servers import png_for

CHROMIUM = os.environ.get("MIKU_CHROMIUM", "/usr/bin/chromium")
REPO = Path(__file__).resolve().parent.parent
FAILURE_SHOTS = REPO / "out" / "test-screenshots"
DOCS = REPO / "docs"
WAIT_MS = 60_000  # generous: the machine is shared; every wait is on a condition, never a fixed sleep

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        # as root (CI containers) Chromium's sandbox cannot start
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        yield browser
        browser.close()


@contextlib.contextmanager
def screenshot_on_failure(page: Page, name: str):
    try:
        yield
    except BaseException:
        FAILURE_SHOTS.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):
            page.screenshot(path=str(FAILURE_SHOTS / f"{name}.png"), full_page=True)
            print(f"screenshot of the failure: {FAILURE_SHOTS / f'{name}.png'}")
        raise


def docs_screenshot(page: Page, name: str) -> None:
    if os.environ.get("MIKU_DOCS_SCREENSHOTS") == "1":
        page.screenshot(path=str(DOCS / f"admin-{name}.png"), full_page=True)


def log_in(browser: Browser, base: str, user: str = ADMIN_USER) -> tuple[BrowserContext, Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    # anything the CSP refused (an inline script or style somewhere) shows up here
    page.csp_violations = []
    page.on("console", lambda message: "Content Security Policy" in message.text and page.csp_violations.append(message.text))
    page.goto(base + "/admin/")
    expect(page).to_have_url(base + "/admin/login", timeout=WAIT_MS)
    page.fill("#user", user)
    page.fill("#password", ADMIN_PASSWORD)
    page.click("#login-button")
    expect(page).to_have_url(base + "/admin/", timeout=WAIT_MS)
    expect(page.locator("#whoami")).to_have_text(user, timeout=WAIT_MS)
    return context, page


def api(graph_server, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, graph_server.base_url + path, headers=graph_server.auth_headers, timeout=60, **kwargs)


def test_login_and_a_voice_session_appears_live(graph_server, browser):
    base = graph_server.base_url
    context, page = log_in(browser, base)
    with screenshot_on_failure(page, "live-session"):
        cookie = next(c for c in context.cookies() if c["name"] == "miku_admin")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/admin"
        assert "miku_admin" not in page.evaluate("document.cookie")  # HttpOnly: no script can read it
        headers = page.request.get(base + "/admin/").headers
        assert "script-src 'self'" in headers["content-security-policy"]
        assert "unsafe-inline" not in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        expect(page.locator("#live-status")).to_contain_text("live", timeout=WAIT_MS)
        expect(page.locator("#stages-table")).to_contain_text("espeak", timeout=WAIT_MS)

        # a few utterances (spoken as given, and answered by the LLM), so the overview and the latency
        # plots have times to first audio
        with ws_connect(graph_server.ws_url + "/v1/voice", additional_headers=graph_server.auth_headers) as ws:
            for index, kind in enumerate(("say", "prompt", "say", "prompt")):
                ws.send(json.dumps({"type": kind, "id": f"admin-{index}", "text": "Hello from the admin test."}))
                while True:
                    message = ws.recv(timeout=60)
                    if isinstance(message, str) and json.loads(message)["type"] in ("utterance.end", "error"):
                        assert json.loads(message)["type"] == "utterance.end", message
                        break
        expect(page.locator("#ttfa")).to_contain_text("prompt", timeout=WAIT_MS)

        body = {"guild_id": "424242", "voice_channel_id": "424243", "text_channel_id": "424244", "user_id": "424245"}
        started = api(graph_server, "POST", "/v1/sessions", json=body)
        assert started.status_code == 201, started.text
        session_id = started.json()["session_id"]
        try:
            # no reload: the overview stream shows it
            expect(page.locator("#sessions-table")).to_contain_text(session_id, timeout=WAIT_MS)
            expect(page.locator("#sessions-table")).to_contain_text("424245")
            expect(page.locator("#features")).to_contain_text("blacked out", timeout=WAIT_MS)
            docs_screenshot(page, "overview")
        finally:
            assert api(graph_server, "DELETE", f"/v1/sessions/{session_id}").status_code == 200
        expect(page.locator("#sessions")).to_contain_text("No voice session", timeout=WAIT_MS)

        page.click("#nav a[data-section=latency]")
        expect(page.locator("#latency-count")).to_contain_text("utterance(s) in the last hour", timeout=WAIT_MS)
        assert int(page.locator("#section-latency").get_attribute("data-points")) >= 4
        expect(page.locator("#latency-ttfa canvas")).to_have_count(1)
        docs_screenshot(page, "latency")
        for section in ("conversations", "personas", "autonomous", "audit", "settings"):
            page.click(f"#nav a[data-section={section}]")
            expect(page.locator(f"#section-{section}")).to_be_visible(timeout=WAIT_MS)
        assert page.csp_violations == []
    context.close()


def test_switching_the_persona_in_the_panel_changes_what_the_brain_uses(graph_server, browser):
    base = graph_server.base_url
    guild = "515151"
    context, page = log_in(browser, base)
    with screenshot_on_failure(page, "persona-switch"):
        page.click("#nav a[data-section=personas]")
        expect(page.locator("#persona-list")).to_contain_text("evil_miku", timeout=WAIT_MS)
        page.fill("#persona-guild", guild)
        page.select_option("#persona-select", "evil_miku")
        page.click("#persona-switch")
        expect(page.locator("#persona-result")).to_contain_text(f"Server {guild} now uses", timeout=WAIT_MS)
        expect(page.locator("#persona-servers")).to_contain_text("evil_miku", timeout=WAIT_MS)

        page.fill("#modelfile", "NAME broken\nPARAMETER temperature 9")
        page.click("#modelfile-validate")
        expect(page.locator("#modelfile-result")).to_contain_text("temperature", timeout=WAIT_MS)
        docs_screenshot(page, "personas")

        event = {"type": "message", "event_id": uuid.uuid4().hex, "guild_id": guild, "channel_id": "515152",
                 "message_id": uuid.uuid4().hex, "author_id": "515153", "author_name": "tester",
                 "content": "!modfile info", "timestamp": time.time()}
        answer = api(graph_server, "POST", "/v1/events", json=event)
        assert answer.status_code == 200, answer.text
        reply = next(a for a in answer.json()["actions"] if a["type"] == "reply")
        assert "`evil_miku`" in reply["text"]
        # and her voice: a spoken prompt in a session on that server reaches the LLM as Evil Miku
        body = {"guild_id": guild, "voice_channel_id": "515154", "text_channel_id": "515152", "user_id": "515153"}
        started = api(graph_server, "POST", "/v1/sessions", json=body)
        assert started.status_code == 201, started.text
        marker = f"persona-check-{uuid.uuid4().hex[:8]}"
        try:
            with ws_connect(graph_server.ws_url + "/v1/voice", additional_headers=graph_server.auth_headers) as ws:
                ws.send(json.dumps({"type": "prompt", "id": marker, "text": f"Who are you? {marker}",
                                    "session_id": started.json()["session_id"]}))
                while (message := ws.recv(timeout=60)) and not (
                        isinstance(message, str) and json.loads(message)["type"] in ("utterance.end", "error")):
                    pass
                assert json.loads(message)["type"] == "utterance.end", message
        finally:
            api(graph_server, "DELETE", f"/v1/sessions/{started.json()['session_id']}")
        assert "You are Evil Miku" in graph_server.llm_server.last(marker).system

        # what the brain stored of that message: found by search, then deleted with its author's others
        page.click("#nav a[data-section=conversations]")
        page.fill("#conv-search", "modfile info")
        page.click("#conv-search-button")
        expect(page.locator("#conv-messages")).to_contain_text("515153", timeout=WAIT_MS)
        docs_screenshot(page, "conversations")
        page.fill("#conv-delete-user", "515153")
        page.click("#conv-delete-button")
        expect(page.locator("#conv-result")).to_contain_text("by 515153", timeout=WAIT_MS)
        assert not page.locator("#conv-result").text_content().startswith("Deleted 0 ")
        page.click("#conv-search-button")
        expect(page.locator("#conv-messages")).to_contain_text("No messages.", timeout=WAIT_MS)

        page.click("#nav a[data-section=audit]")
        row = page.locator("#audit-table tr", has_text="persona.switch").first
        expect(row).to_contain_text(ADMIN_USER, timeout=WAIT_MS)
        expect(row).to_contain_text(guild)
        docs_screenshot(page, "audit")

        # put the server back, so other tests of the shared graph meet the default persona
        page.click("#nav a[data-section=personas]")
        page.fill("#persona-guild", guild)
        page.select_option("#persona-select", "miku")
        page.click("#persona-switch")
        expect(page.locator("#persona-result")).to_contain_text("(miku)", timeout=WAIT_MS)
    context.close()


def test_wrong_password_is_refused_and_repeated_failures_lock_the_name(graph_server, browser):
    base = graph_server.base_url
    context = browser.new_context()
    page = context.new_page()
    with screenshot_on_failure(page, "lockout"):
        page.goto(base + "/admin/login")
        error = page.locator("#login-error")
        for attempt in range(ADMIN_MAX_FAILURES):
            page.fill("#user", ADMIN_LOCKOUT_USER)
            page.fill("#password", f"wrong-password-{attempt}")
            page.click("#login-button")
            expected = "429" if attempt == ADMIN_MAX_FAILURES - 1 else "401"
            expect(error).to_have_attribute("data-status", expected, timeout=WAIT_MS)
            if expected == "401":
                expect(error).to_have_text("wrong user name or password")
            # the next attempt must not read the previous answer: clear the mark
            page.evaluate("document.getElementById('login-error').removeAttribute('data-status')")
        page.fill("#user", ADMIN_LOCKOUT_USER)
        page.fill("#password", ADMIN_PASSWORD)  # the right password no longer helps
        page.click("#login-button")
        expect(error).to_have_attribute("data-status", "429", timeout=WAIT_MS)
        expect(error).to_contain_text("locked")
        assert page.url == base + "/admin/login"
        assert not [c for c in context.cookies() if c["name"] == "miku_admin"]
        docs_screenshot(page, "lockout")
    context.close()
    # another name is not locked with it
    other, page = log_in(browser, base)
    other.close()


def test_a_change_without_the_csrf_token_is_refused(graph_server, browser):
    base = graph_server.base_url
    context, page = log_in(browser, base)
    with screenshot_on_failure(page, "csrf"):
        body = {"guild_id": "616161", "mood": "sleepy"}
        script = """async ([body, token]) => {
            const headers = {"Content-Type": "application/json"};
            if (token !== null) headers["X-CSRF-Token"] = token;
            const r = await fetch("/admin/api/moods/set", {method: "POST", headers, body: JSON.stringify(body)});
            return [r.status, await r.text()];
        }"""
        status, text = page.evaluate(script, [body, None])
        assert status == 403 and "CSRF" in text
        status, _ = page.evaluate(script, [body, "not-the-token"])
        assert status == 403
        token = page.evaluate("fetch('/admin/api/session').then(r => r.json()).then(j => j.csrf_token)")
        status, text = page.evaluate(script, [body, token])
        assert status == 200, text
        assert json.loads(text)["mood"] == "sleepy"
        # the same request with the token but sent by another site's page, and a login sent as a form
        cookie = next(c for c in context.cookies() if c["name"] == "miku_admin")["value"]
        forged = requests.post(base + "/admin/api/moods/set", json=body, cookies={"miku_admin": cookie}, timeout=60,
                               headers={"X-CSRF-Token": token, "Origin": "http://evil.example"})
        assert forged.status_code == 403 and "cross-site" in forged.text
        form = requests.post(base + "/admin/api/login", data={"user": ADMIN_USER, "password": ADMIN_PASSWORD}, timeout=60)
        assert form.status_code == 415 and "miku_admin" not in form.cookies
        static = requests.get(base + "/admin/static/app.js", timeout=60)
        assert static.status_code == 200 and "script-src 'self'" in static.headers["content-security-policy"]
        assert requests.get(base + "/admin/static/%2e%2e/routes.py", timeout=60).status_code == 404
        # the graph's bearer token opens the API, not the panel; the panel never shows it
        assert api(graph_server, "GET", "/admin/api/overview").status_code == 401
        assert api(graph_server, "GET", "/v1/sessions").status_code == 200
        page.click("#nav a[data-section=settings]")
        expect(page.locator("#settings-voice")).to_contain_text("stage_transport", timeout=WAIT_MS)
        assert graph_server.token not in page.content()
        docs_screenshot(page, "settings")
    context.close()


def test_logout_kills_the_cookie(graph_server, browser):
    base = graph_server.base_url
    context, page = log_in(browser, base)
    with screenshot_on_failure(page, "logout"):
        cookie = next(c for c in context.cookies() if c["name"] == "miku_admin")["value"]
        assert requests.get(base + "/admin/api/session", cookies={"miku_admin": cookie}, timeout=60).status_code == 200
        page.click("#logout")
        expect(page).to_have_url(base + "/admin/login", timeout=WAIT_MS)
        assert not [c for c in context.cookies() if c["name"] == "miku_admin"]
        # the old value is dead on the server too, not only gone from the browser
        assert requests.get(base + "/admin/api/session", cookies={"miku_admin": cookie}, timeout=60).status_code == 401
        page.goto(base + "/admin/")
        expect(page).to_have_url(base + "/admin/login", timeout=WAIT_MS)
    context.close()


def test_server_settings_are_validated_and_the_engine_pauses_per_server(graph_server, browser):
    base = graph_server.base_url
    guild = "717171"
    context, page = log_in(browser, base)
    with screenshot_on_failure(page, "autonomous"):
        page.click("#nav a[data-section=settings]")
        page.fill("#set-guild", guild)
        page.fill("#set-channels", "717172, 717173")
        page.fill("#set-home", "999999")  # not one of the allowed channels
        page.click("#set-save")
        expect(page.locator("#set-result")).to_contain_text("home channel must be one of", timeout=WAIT_MS)
        page.fill("#set-home", "717173")
        page.fill("#set-tz", "Mars/Olympus_Mons")
        page.click("#set-save")
        expect(page.locator("#set-result")).to_have_class("result error", timeout=WAIT_MS)
        expect(page.locator("#set-result")).to_contain_text("Mars/Olympus_Mons")
        page.fill("#set-tz", "Asia/Tokyo")
        page.click("#set-save")
        expect(page.locator("#set-result")).to_contain_text(f"Saved for server {guild}", timeout=WAIT_MS)
        try:
            page.click("#nav a[data-section=autonomous]")
            card = page.locator(f".autonomous-server[data-guild='{guild}']")
            expect(card).to_contain_text("running", timeout=WAIT_MS)
            expect(card).to_contain_text("join_conversation")
            card.locator("button").click()
            expect(card).to_contain_text("paused", timeout=WAIT_MS)
            explained = api(graph_server, "GET", "/v1/autonomous/explain", params={"guild_id": guild}).json()
            assert explained["settings"]["enabled"] is False and explained["settings"]["timezone"] == "Asia/Tokyo"
            docs_screenshot(page, "autonomous")
            card.locator("button").click()
            expect(card).to_contain_text("running", timeout=WAIT_MS)
            page.click("#nav a[data-section=audit]")
            expect(page.locator("#audit-table")).to_contain_text("autonomous.pause", timeout=WAIT_MS)
            expect(page.locator("#audit-table")).to_contain_text("autonomous.resume")
        finally:
            # stop tracking the server again: the shared graph's engine should not keep it
            page.click("#nav a[data-section=settings]")
            page.fill("#set-guild", guild)
            page.fill("#set-channels", "")
            page.fill("#set-home", "")
            page.click("#set-save")
            expect(page.locator("#set-result")).to_contain_text("no longer tracked", timeout=WAIT_MS)
    context.close()


class BotStandIn:
    """The bot's own feature code (scheduled events, the panel link to the graph) on its own event loop
    in a thread, talking to the session's graph over HTTP as the bot does; Discord is a recorder."""

    JOB = "panel-hello"
    CHANNEL = 818182

    def __init__(self, graph_server, state_dir: Path, feed_url: str):
        self.graph_server = graph_server
        self.feed_url = feed_url
        self.state_dir = state_dir
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bot-stand-in", daemon=True)
        self.sent: list[tuple[int, str]] = []
        self.posted = threading.Event()

    def call(self, coroutine, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> "BotStandIn":
        self.thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        schedule = parse_schedule({"state_dir": str(self.state_dir), "jobs": [
            {"id": self.JOB, "guild_id": 818181, "channel_id": self.CHANNEL, "interval": "every 1d",
             "text": "Hello from the schedule!"}]})
        self.graph = GraphClient(self.graph_server.base_url, self.graph_server.token)
        # the real controller check: GET /v1/features on the graph, as the bot asks it
        figurines = parse_figurines({"state_dir": str(self.state_dir), "feeds": [self.feed_url],
                                     "channels": [self.CHANNEL], "tick_s": 3600})
        self.features = BotFeatures(FeatureConfigs(schedule, figurines), self.graph, self)
        await self.features.scheduler.start(watch=False)  # the notifier's loop is not started: polled from the panel
        self.link = PanelLink(self.graph, self.features, bot_id="bot-stand-in", poll_s=0.3)
        self.link.start()

    async def send_text(self, channel_id: int, text: str) -> None:
        self.sent.append((channel_id, text))
        self.posted.set()

    async def _stop(self) -> None:
        await self.link.stop()
        await self.features.close()
        await self.graph.close()

    def stop(self) -> None:
        try:
            self.call(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)


def test_the_bot_jobs_run_from_the_panel_and_a_paused_image_stage_refuses(graph_server, media_servers, browser, tmp_path):
    base = graph_server.base_url
    feed = (REPO / "tests" / "data" / "feeds" / "shop_rss_1.xml").read_bytes()
    media_servers.media_host.files["panel-feed.xml"] = ("application/rss+xml", feed)
    feed_url = media_servers.media_host.url + "/files/panel-feed.xml"
    # the bot's channel takes the API token (never a panel cookie) and a bounded, checked body
    assert requests.post(base + "/v1/bot/sync", json={"bot_id": "intruder"}, timeout=60).status_code == 401
    bad = api(graph_server, "POST", "/v1/bot/sync", json={"jobs": [{"id": ""}], "unknown": 1})
    assert bad.status_code == 422, bad.text
    bot = BotStandIn(graph_server, tmp_path / "bot-state", feed_url).start()
    context, page = log_in(browser, base)
    try:
        with screenshot_on_failure(page, "schedule-media"):
            page.click("#nav a[data-section=schedule]")
            expect(page.locator("#bot-status")).to_contain_text("bot connected", timeout=WAIT_MS)
            jobs = page.locator("#bot-jobs-table")
            expect(jobs).to_contain_text(BotStandIn.JOB, timeout=WAIT_MS)
            expect(jobs).to_contain_text("scheduled")
            jobs.locator(f"button[data-kind='job.run'][data-target='{BotStandIn.JOB}']").click()
            assert bot.posted.wait(60), "the bot never carried out the panel's run-now"
            assert bot.sent == [(BotStandIn.CHANNEL, "Hello from the schedule!")]
            expect(page.locator("#bot-commands-table")).to_contain_text("done", timeout=WAIT_MS)
            expect(jobs).to_contain_text("posted at", timeout=WAIT_MS)
            assert [c["kind"] for c in bot.link.handled] == ["job.run"]
            feeds = page.locator("#bot-feeds-table")
            expect(feeds).to_contain_text(feed_url, timeout=WAIT_MS)
            seen = feeds.locator("tbody td").nth(3)  # "items seen (matched)"
            expect(seen).to_have_text("0 (0)")  # never read yet
            feeds.locator("button[data-kind='feed.poll']").click()
            expect(page.locator("#bot-commands-table")).to_contain_text("new item(s)", timeout=WAIT_MS)
            expect(seen).to_have_text(re.compile(r"^[1-9][0-9]* \(0\)$"), timeout=WAIT_MS)  # seen, none posted (first read)
            docs_screenshot(page, "schedule")

            page.click("#nav a[data-section=media]")
            stages = page.locator("#media-table")
            expect(stages).to_contain_text("a1111", timeout=WAIT_MS)
            expect(stages).to_contain_text("healthy", timeout=WAIT_MS)
            try:
                page.click("#media-pause-image")
                expect(stages).to_contain_text(f"paused by {ADMIN_USER}", timeout=WAIT_MS)
                drawings = lambda: media_servers.a1111.paths("POST").count("/sdapi/v1/txt2img")  # noqa: E731
                before = drawings()
                drawn = api(graph_server, "POST", "/v1/images", json={"prompt": "a leek"})
                events = [json.loads(line) for line in drawn.text.splitlines() if line.strip()]
                assert [(e["type"], e["kind"]) for e in events] == [("error", "paused")]
                assert "paused by the owner" in events[0]["message"]
                assert drawings() == before  # refused before the backend
                page.click("#media-test-image-button")  # the owner's test drawing still reaches it
                expect(page.locator("#media-test-outcome")).to_contain_text("Drawn by", timeout=WAIT_MS)
                expect(page.locator("#media-test-image")).to_be_visible()
                assert drawings() == before + 1
                docs_screenshot(page, "media")
                media_servers.media_host.files["panel-look.png"] = ("image/png", png_for(7, 64, 64))
                page.fill("#media-url", media_servers.media_host.url + "/files/panel-look.png")
                page.click("#media-test-vision-button")
                expect(page.locator("#media-test-outcome")).to_contain_text("Vision (1 frame(s))", timeout=WAIT_MS)
                page.click("#media-pause-image")
                expect(stages).not_to_contain_text("paused by", timeout=WAIT_MS)
                # a voice session unloads both models; the panel says so, and shows them loaded again after
                body = {"guild_id": "828281", "voice_channel_id": "828282", "text_channel_id": "828283", "user_id": "828284"}
                started = api(graph_server, "POST", "/v1/sessions", json=body)
                assert started.status_code == 201, started.text
                try:
                    expect(stages.locator("tr", has_text="Drawing")).to_contain_text("unloaded for a voice session", timeout=WAIT_MS)
                    expect(stages.locator("tr", has_text="Vision")).to_contain_text("released", timeout=WAIT_MS)
                finally:
                    assert api(graph_server, "DELETE", f"/v1/sessions/{started.json()['session_id']}").status_code == 200
                expect(stages).not_to_contain_text("unloaded for a voice session", timeout=WAIT_MS)
                expect(stages.locator("tr", has_text="Drawing")).to_contain_text("loaded", timeout=WAIT_MS)
            finally:  # the shared graph's other tests draw: never leave it paused
                page.evaluate("""() => fetch('/admin/api/session').then(r => r.json()).then(s => fetch(
                    '/admin/api/media/pause', {method: 'POST', headers: {'Content-Type': 'application/json',
                    'X-CSRF-Token': s.csrf_token}, body: JSON.stringify({stage: 'image', paused: false})}))""")
            page.click("#nav a[data-section=audit]")
            audit = page.locator("#audit-table")
            expect(audit).to_contain_text("bot.job.run", timeout=WAIT_MS)
            expect(audit).to_contain_text("media.pause")
            expect(audit).to_contain_text("media.test")
            assert page.csp_violations == []
    finally:
        context.close()
        bot.stop()
