"""The viewer in a real browser: Debian's chromium, headless, driven by Playwright.

Navigates from the flow list to a trace, selects child logs, checks that hostile log text is
shown as text and runs nothing, and watches a running trace gain a child. The page screenshot
is written to test-artifacts/viewer.png.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowtrace.models import FlowLogRequest, FlowLogUpdateRequest
from flowtrace.store import Store
from tests.serverutil import serve_in_thread
from tests.viewerdata import (
    HOSTILE_INPUT,
    HOSTILE_OUTPUT,
    HOSTILE_STDOUT,
    HOSTILE_USER,
    TRACEBACK,
    LlmSample,
    Sample,
    at,
    populate,
    populate_llm,
)

sync_api = pytest.importorskip("playwright.sync_api")
Browser = sync_api.Browser
Page = sync_api.Page
expect = sync_api.expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"

# Locally, no chromium means these tests are skipped; in CI (which installs it) they must run.
pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Store, Sample]]:
    """The real server app (contract and viewer) in a thread, over a store the tests keep
    writing to; stopping it closes the store."""
    path = tmp_path_factory.mktemp("browser") / "viewer.db"
    store = Store(path)
    sample = populate(store)
    with serve_in_thread(path, api_keys=(), store=store) as server:
        yield server.root_url, store, sample


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    # A script from a log would most likely call alert(); any dialog fails the test.
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    yield page
    context.close()
    assert dialogs == [], f"a dialog opened: {dialogs}"


def tree_row(page: Page, path: str) -> Any:
    return page.locator(".tree-row", has=page.locator(".tree-name", has_text=path))


def test_flow_list_to_trace_to_child_log(page: Page, viewer: tuple[str, Store, Sample]) -> None:
    base_url, _, sample = viewer
    page.goto(base_url + "/")
    expect(page.locator("h1")).to_have_text("Flows")
    page.get_by_role("link", name="support/answer").click()
    expect(page.locator("h1")).to_have_text("Logs of support/answer")
    page.get_by_role("link", name=sample.root).click()

    expect(page.locator(".tree-row")).to_have_count(3)
    expect(page.locator(".wf-bar")).to_have_count(3)
    details = page.locator("#details")
    expect(details.locator(".role-system")).to_contain_text("You are a support agent.")
    expect(details.locator(".role-assistant")).to_contain_text("Use the reset link.")
    expect(details).to_contain_text("Version attributes")

    tree_row(page, "tools/search").click()
    expect(details.locator(".terminal")).to_have_text("searching docs\nfound 3 results\n")
    expect(page).to_have_url(f"{base_url}/traces/{sample.search}")
    details.locator("summary", has_text="Provider response").click()
    expect(details).to_contain_text('"Resetting"')

    tree_row(page, "llm/call").click()
    expect(details.locator(".error-message")).to_have_text("ValueError: model refused")
    expect(details.locator(".traceback")).to_have_text(TRACEBACK)
    expect(details.locator(".terminal")).to_have_text("retrying once\n")
    expect(details).to_contain_text("Recorder flags")
    expect(tree_row(page, "llm/call")).to_have_class("tree-row selected")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer.png"), full_page=True)


def test_hostile_log_text_is_shown_and_runs_nothing(
    page: Page, viewer: tuple[str, Store, Sample]
) -> None:
    base_url, _, sample = viewer
    page.goto(f"{base_url}/logs?errors=1")
    expect(page.locator("td", has_text=HOSTILE_USER)).to_have_count(1)
    expect(page.locator(".error-text", has_text=HOSTILE_OUTPUT)).to_have_count(1)

    page.goto(f"{base_url}/traces/{sample.hostile}")
    details = page.locator("#details")
    expect(details.locator(".output")).to_have_text(HOSTILE_OUTPUT)
    expect(details.locator(".error-message")).to_have_text(HOSTILE_OUTPUT)
    expect(details.locator(".terminal")).to_have_text(HOSTILE_STDOUT)
    expect(details.locator(".role-user")).to_contain_text(HOSTILE_INPUT)
    expect(details.locator(".json-key", has_text=HOSTILE_INPUT)).to_have_count(1)
    # Nothing from the log became an element, and none of its scripts ran.
    expect(page.locator("main img")).to_have_count(0)
    expect(page.locator("main script")).to_have_count(0)
    assert page.evaluate("() => window.__pwned") is None


def test_running_trace_gains_a_child_while_open(
    page: Page, viewer: tuple[str, Store, Sample]
) -> None:
    base_url, store, _ = viewer
    root = store.log(
        FlowLogRequest(
            path="agent/run",
            log_id="log_live",
            start_time=at(20),
            inputs={"task": "plan a trip"},
            trace_status="incomplete",
        )
    ).id
    page.goto(f"{base_url}/traces/{root}")
    expect(page.locator("#live-note")).to_have_text("live · updating")
    expect(page.locator("#trace-status")).to_have_text("incomplete")
    expect(page.locator(".tree-row")).to_have_count(1)

    store.log(
        FlowLogRequest(
            path="agent/step",
            trace_parent_id=root,
            start_time=at(21),
            end_time=at(22),
            stdout="step one done\n",
            trace_status="complete",
        )
    )
    expect(tree_row(page, "agent/step")).to_have_count(1)
    # The selection survives the re-render: the root's details are still shown.
    expect(page.locator("#details .detail-title")).to_contain_text("agent/run")

    store.update(root, FlowLogUpdateRequest(output="trip planned", trace_status="complete"))
    expect(page.locator("#live-note")).to_have_text("")
    expect(page.locator("#trace-status")).to_have_text("complete")
    expect(page.locator("#details .output")).to_have_text("trip planned")
    tree_row(page, "agent/step").click()
    expect(page.locator("#details .terminal")).to_have_text("step one done\n")


@pytest.fixture(scope="module")
def llm(viewer: tuple[str, Store, Sample]) -> LlmSample:
    return populate_llm(viewer[1])


def test_a_prompt_log_shows_the_llm_call_as_a_chat(
    page: Page, viewer: tuple[str, Store, Sample], llm: LlmSample
) -> None:
    base_url, _, _ = viewer
    page.goto(f"{base_url}/traces/{llm.root}")
    expect(page.locator(".tree-row")).to_have_count(3)
    expect(page.locator("#trace-totals")).to_have_text("· 1200 in · 80 out tokens · $0.0038")
    expect(tree_row(page, "prompts/forecaster").locator(".kind-prompt")).to_have_text("prompt")
    tree_row(page, "prompts/forecaster").click()
    details = page.locator("#details")
    llm_call = details.locator(".llm-section")
    expect(llm_call).to_contain_text("gpt-4o")
    expect(llm_call).to_contain_text("openai")
    expect(llm_call).to_contain_text("1200 in · 80 out")
    expect(llm_call).to_contain_text("1000")  # cache read
    expect(llm_call).to_contain_text("$0.0038")
    expect(llm_call).to_contain_text("1.20 s")
    expect(llm_call).to_contain_text("stop")
    expect(details.locator(".tool-call")).to_have_text('→ get_weather({"city":"Paris"})')
    expect(details.locator(".role-tool")).to_contain_text("answers tool call call_1")
    expect(details.locator(".role-tool")).to_contain_text("sunny, 21C")
    expect(details.locator(".role-assistant").last).to_contain_text("Sunny and 21C in Paris.")
    tree_row(page, "tools/get_weather").click()
    expect(details.locator(".kind-tool")).to_have_text("tool")
    expect(details.locator(".output")).to_have_text("sunny, 21C")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer-llm.png"), full_page=True)


def test_a_parent_that_never_arrived_is_marked_pending(
    page: Page, viewer: tuple[str, Store, Sample], llm: LlmSample
) -> None:
    base_url, _, _ = viewer
    page.goto(f"{base_url}/traces/{llm.pending_child}")
    expect(page.locator("#trace-status")).to_have_text("pending")
    expect(page.locator("#trace-totals")).to_have_text("· 1 pending")
    expect(page.locator(".tree-row .status-pending")).to_have_count(1)
    tree_row(page, "flowtrace/pending").click()
    expect(page.locator("#details .pending-note")).to_be_visible()
    page.goto(f"{base_url}/logs?kind=prompt")
    expect(page.locator(".log-id")).to_have_text([llm.prompt])
