"""A real browser (Debian's chromium, driven by Playwright) turned against a keyless server.

DNS rebinding (issue 9 item 5): chromium resolves `rebound.test` to 127.0.0.1 (its
`--host-resolver-rules`), so a page at http://rebound.test:PORT is, to the browser, the origin
of the server itself, as a page whose domain re-resolved would be: its scripts may read and
delete what they like unless the server refuses the Host. CSRF (item 6): a page served from
another origin (another loopback port) sends the writes a page may send without asking,
`fetch(..., {mode: "no-cors"})` and `navigator.sendBeacon`; none may be stored.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from flowtrace.models import FlowLogRequest
from flowtrace.store import Store
from tests.serverutil import InProcessServer, serve_in_thread
from tests.test_viewer_browser import CHROMIUM, CHROMIUM_ARGS
from tests.test_viewer_browser import pytestmark as viewer_browser_mark

pytestmark = viewer_browser_mark  # skipped where chromium is missing, as the viewer's tests

sync_api = pytest.importorskip("playwright.sync_api")
Browser = sync_api.Browser
Page = sync_api.Page

REBOUND = "rebound.test"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    yield context.new_page()
    context.close()


@pytest.fixture
def keyless(tmp_path: Path) -> Iterator[tuple[InProcessServer, Store, str]]:
    """A keyless server over a store holding one log (its id is the third item)."""
    store = Store(tmp_path / "flowtrace.db")
    secret = store.log(FlowLogRequest(path="secret/flow", inputs={"password": "hunter2"}), None)
    with serve_in_thread(tmp_path / "flowtrace.db", api_keys=(), store=store) as running:
        yield running, store, secret.id


def test_a_rebound_page_can_neither_read_nor_delete_logs(
    page: Page, keyless: tuple[InProcessServer, Store, str]
) -> None:
    server, store, secret = keyless
    port = server.root_url.rsplit(":", 1)[1]
    landing = page.goto(f"http://{REBOUND}:{port}/")
    assert landing is not None and landing.status == 403
    # Scripts of that origin: what a rebinding page runs once its name points here.
    read = same_origin_fetch(page, "/v5/logs")
    deleted = same_origin_fetch(page, f"/v5/logs?id={secret}", method="DELETE")
    viewer = same_origin_fetch(page, f"/ui/api/traces/{secret}")
    assert [read["status"], deleted["status"], viewer["status"]] == [403, 403, 403]
    assert "hunter2" not in read["text"] + viewer["text"]
    assert store.get_log(secret).id == secret  # still there


def same_origin_fetch(page: Page, path: str, method: str = "GET") -> dict[str, Any]:
    answer: dict[str, Any] = page.evaluate(
        """async ([path, method]) => {
            const response = await fetch(path, {method});
            return {status: response.status, text: await response.text()};
        }""",
        [path, method],
    )
    return answer


# Each write twice: a string body (sent as text/plain) and a Blob without a type (sent with no
# Content-Type at all, which the server used to read as JSON). The query names the attempt
# (the server ignores it); the body's path is the flow it would create.
ATTACK_PAGE = b"""<!doctype html><title>a page on another site</title><script>
const target = new URLSearchParams(location.search).get("target") + "/v5/flows/log?attempt=";
const text = (name) => JSON.stringify({path: "attack/" + name});
const blob = (name) => new Blob([text(name)]);
fetch(target + "fetch-text", {method: "POST", mode: "no-cors", body: text("fetch-text")});
fetch(target + "fetch-blob", {method: "POST", mode: "no-cors", body: blob("fetch-blob")});
navigator.sendBeacon(target + "beacon-text", text("beacon-text"));
navigator.sendBeacon(target + "beacon-blob", blob("beacon-blob"));
</script>"""
ATTEMPTS = ["fetch-text", "fetch-blob", "beacon-text", "beacon-blob"]


class _AttackPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(ATTACK_PAGE)))
        self.end_headers()
        self.wfile.write(ATTACK_PAGE)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def attacker() -> Iterator[str]:
    """Another origin on this machine (another port), serving the attack page."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _AttackPage)
    thread = threading.Thread(target=httpd.serve_forever, name="attack-page")
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        thread.join()
        httpd.server_close()


def test_a_page_on_another_origin_cannot_store_logs(
    page: Page, keyless: tuple[InProcessServer, Store, str], attacker: str
) -> None:
    server, store, _ = keyless

    def answer_to(attempt: str) -> Any:
        return page.expect_response(lambda r: r.url.endswith(f"/flows/log?attempt={attempt}"))

    with ExitStack() as waiting:
        answers = [waiting.enter_context(answer_to(attempt)) for attempt in ATTEMPTS]
        page.goto(f"{attacker}?target={server.root_url}")
    assert [answer.value.status for answer in answers] == [403] * len(ATTEMPTS)
    assert [flow.path for flow in store.list_flows()] == ["secret/flow"]
