"""The viewer's pages over HTTP (no browser): content, escaping, headers, auth, not-found."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterator

import markupsafe
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from flowtrace.models import FlowLogRequest
from flowtrace.server._app import create_app
from flowtrace.server.viewer._routes import mount_viewer
from flowtrace.store import Store
from tests.viewerdata import (
    HOSTILE_INPUT,
    HOSTILE_OUTPUT,
    HOSTILE_USER,
    Sample,
    at,
    populate,
)

API_KEY = "ft-secret-key-0123456789"


@pytest.fixture
def store(store_target: str) -> Iterator[Store]:
    """The viewer over each backend (SQLite, PostgreSQL)."""
    store = Store(store_target)
    yield store
    store.close()


@pytest.fixture
def sample(store: Store) -> Sample:
    return populate(store)


@pytest.fixture
def client(store: Store, sample: Sample) -> TestClient:
    app = FastAPI()
    mount_viewer(app, store)
    return TestClient(app)


def basic_auth(password: str) -> dict[str, str]:
    token = base64.b64encode(f"viewer:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_flow_list_shows_counts_and_links(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert "support/answer" in page.text
    assert "tools/search" in page.text
    assert "/logs?flow=" in page.text
    assert "Last used" in page.text


def test_log_list_shows_traces_newest_first(client: TestClient, sample: Sample) -> None:
    page = client.get("/logs")
    assert page.status_code == 200
    assert page.text.index(sample.hostile) < page.text.index(sample.root)
    # Across all flows a row is a trace: children are reached through their trace.
    assert f"/traces/{sample.search}" not in page.text


def test_log_list_of_one_flow_filters_and_searches(client: TestClient, sample: Sample) -> None:
    by_path = client.get("/logs", params={"flow": "llm/call"})
    assert by_path.status_code == 200
    assert sample.failing in by_path.text
    assert sample.root not in by_path.text
    errors = client.get("/logs", params={"errors": "1"})
    assert sample.hostile in errors.text
    assert sample.root not in errors.text
    found = client.get("/logs", params={"search": "reset password", "flow": "tools/search"})
    assert sample.search in found.text
    missing = client.get("/logs", params={"search": "nothing like this"})
    assert "No logs match." in missing.text


def test_log_list_pages(store: Store, client: TestClient) -> None:

    for index in range(55):
        store.log(
            FlowLogRequest(
                path="bulk/job",
                start_time=at(100 + index),
                end_time=at(101 + index),
                trace_status="complete",
            )
        )
    first = client.get("/logs", params={"flow": "bulk/job"})
    assert "page 1" in first.text
    assert "page=2" in first.text
    second = client.get("/logs", params={"flow": "bulk/job", "page": "2"})
    assert "page 2" in second.text
    assert second.text.count('class="log-id"') == 5
    assert "page=3" not in second.text


def test_unknown_trace_and_flow_are_404(client: TestClient) -> None:
    assert client.get("/traces/no-such-log").status_code == 404
    assert client.get("/ui/api/traces/no-such-log").status_code == 404
    assert client.get("/logs", params={"flow": "no/such/flow"}).status_code == 404


def test_trace_page_frames_the_script(client: TestClient, sample: Sample) -> None:
    page = client.get(f"/traces/{sample.failing}")
    assert page.status_code == 200
    assert f'data-api="/ui/api/traces/{sample.root}"' in page.text
    assert f'data-selected="{sample.failing}"' in page.text
    assert '<script src="/ui/static/trace.js" defer></script>' in page.text
    assert client.get("/ui/static/trace.js").status_code == 200
    assert client.get("/ui/static/viewer.css").status_code == 200


def test_trace_json_has_the_tree_timing_and_details(client: TestClient, sample: Sample) -> None:
    trace = client.get(f"/ui/api/traces/{sample.search}").json()
    assert trace["root_id"] == sample.root
    assert trace["selected"] == sample.search
    assert trace["live"] is False
    by_id = {log["id"]: log for log in trace["logs"]}
    assert [log["id"] for log in trace["logs"]] == [sample.root, sample.search, sample.failing]
    assert [log["depth"] for log in trace["logs"]] == [0, 1, 1]
    failing = by_id[sample.failing]
    assert failing["status"] == "error"
    assert failing["traceback"].startswith("Traceback")
    assert failing["flowtrace"] == {"truncated": True}
    assert failing["metadata"] == {"team": "support"}
    assert failing["offset_ms"] == pytest.approx(500)
    assert failing["end_ms"] == pytest.approx(1200)
    assert trace["span_ms"] == pytest.approx(1200)
    assert by_id[sample.search]["provider_response"]["hits"][0]["title"] == "Resetting"
    assert by_id[sample.root]["attributes"] == {"model": "gpt-test", "prompt": "Answer kindly."}


def test_untrusted_text_is_escaped(client: TestClient, sample: Sample) -> None:
    pages = [
        client.get("/logs").text,
        client.get("/logs", params={"errors": "1"}).text,
        client.get(f"/traces/{sample.hostile}").text,
        client.get("/").text,
    ]
    for text in pages:
        assert "<script>window" not in text
        assert "<img src=x" not in text
    logs = pages[0]
    assert str(markupsafe.escape(HOSTILE_USER)) in logs  # &#34;&gt;&lt;script&gt;...
    assert str(markupsafe.escape(HOSTILE_OUTPUT)) in pages[1]
    trace = client.get(f"/ui/api/traces/{sample.hostile}").json()
    assert trace["logs"][0]["output"] == HOSTILE_OUTPUT
    assert trace["logs"][0]["inputs"] == {"q": HOSTILE_INPUT}
    assert trace["logs"][0]["user"] == HOSTILE_USER


@pytest.mark.parametrize("path", ["/", "/logs", "/traces/log_root", "/ui/api/traces/log_root"])
def test_every_viewer_response_has_a_strict_csp(client: TestClient, path: str) -> None:
    response = client.get(path)
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "script-src 'self'" in policy
    assert "object-src 'none'" in policy
    assert "base-uri 'none'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"


def test_with_api_keys_the_viewer_asks_for_basic_auth(store: Store, sample: Sample) -> None:
    app = FastAPI()
    mount_viewer(app, store, api_keys=[API_KEY])
    client = TestClient(app)
    paths = ["/", "/logs", f"/traces/{sample.root}", f"/ui/api/traces/{sample.root}"]
    for path in paths:
        refused = client.get(path)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Basic")
        assert client.get(path, headers=basic_auth("wrong")).status_code == 401
        allowed = client.get(path, headers=basic_auth(API_KEY))
        assert allowed.status_code == 200
        assert API_KEY not in allowed.text
    assert client.get("/ui/static/trace.js").status_code == 200


def test_keys_can_come_from_the_app_state(store: Store, sample: Sample) -> None:
    app = FastAPI()
    mount_viewer(app, store)
    app.state.api_keys = (API_KEY,)
    client = TestClient(app)
    assert client.get("/").status_code == 401
    assert client.get("/", headers=basic_auth(API_KEY)).status_code == 200


def test_the_server_guards_its_viewer_with_its_keys(store: Store, sample: Sample) -> None:
    client = TestClient(create_app(store, api_keys=[API_KEY]))
    assert client.get("/").status_code == 401
    assert client.get(f"/ui/api/traces/{sample.root}").status_code == 401
    page = client.get(f"/traces/{sample.root}", headers=basic_auth(API_KEY))
    assert page.status_code == 200
    assert API_KEY not in page.text
    # The contract's API keeps taking the key in its own header.
    api = client.get(f"/v5/logs/{sample.root}", headers={"X-API-KEY": API_KEY})
    assert api.status_code == 200


def test_the_server_without_keys_serves_its_viewer(store: Store, sample: Sample) -> None:
    # Under a loopback name: without keys other Host names are refused (DNS rebinding).
    client = TestClient(create_app(store), base_url="http://localhost")
    assert client.get("/").status_code == 200
    assert client.get(f"/traces/{sample.failing}").status_code == 200


def _older_link(page: str) -> str | None:
    found = re.search(r'<a href="([^"]*)" class="next">', page)
    return html.unescape(found.group(1)) if found else None


def _newer_link(page: str) -> str | None:
    found = re.search(r'<a href="([^"]*)" class="prev">', page)
    return html.unescape(found.group(1)) if found else None


def test_older_and_newer_links_walk_by_cursor(store: Store, client: TestClient) -> None:
    ids = [f"bulk-{index:03}" for index in range(120)]
    for index, log_id in enumerate(ids):
        store.log(FlowLogRequest(path="bulk/job", log_id=log_id, start_time=at(100 + index)))
    newest_first = ids[::-1]
    shown: list[str] = []
    pages = []
    href: str | None = "/logs?flow=bulk/job"
    while href is not None:
        page = client.get(href)
        assert page.status_code == 200
        pages.append(page.text)
        shown.extend(log_id for log_id in newest_first if f"/traces/{log_id}" in page.text)
        href = _older_link(page.text)
    assert shown == newest_first  # every log once, in order, over three pages
    assert len(pages) == 3
    assert "page 3" in pages[2]
    assert "before=bulk-070" in (_older_link(pages[0]) or "")
    # back from page 3: the 50 logs just newer than its first one, i.e. page 2
    third = _older_link(pages[1])
    assert third is not None
    back = client.get(_newer_link(client.get(third).text) or "")
    assert "page 2" in back.text
    assert back.text.count('class="log-id"') == 50
    assert "/traces/bulk-069" in back.text and "/traces/bulk-020" in back.text


def test_a_cursor_whose_log_is_gone_shows_the_newest(store: Store, client: TestClient) -> None:
    page = client.get("/logs", params={"before": "no-such-log"})
    assert page.status_code == 200
    assert "page 1" in page.text
    assert "log_root" in page.text


def test_a_search_reads_a_bounded_window_and_says_so(
    store: Store, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowtrace.server.viewer import _routes as _viewer

    for index in range(10):
        store.log(
            FlowLogRequest(
                path="bulk/job",
                log_id=f"w{index}",
                start_time=at(100 + index),
                output="needle" if index in (1, 8) else "hay",
            )
        )
    monkeypatch.setattr(_viewer, "SEARCH_WINDOW", 4)
    first = client.get("/logs", params={"flow": "bulk/job", "search": "needle"})
    assert "/traces/w8" in first.text and "/traces/w1" not in first.text
    assert "Searched the newest 4 logs of this flow only." in first.text
    more = re.search(r'<a href="([^"]*)" class="search-older">', first.text)
    assert more is not None
    second = client.get(html.unescape(more.group(1)))
    assert "/traces/w1" not in second.text  # w5..w2: no needle
    assert "Searched the next 4 logs" in second.text
    more = re.search(r'<a href="([^"]*)" class="search-older">', second.text)
    assert more is not None
    third = client.get(html.unescape(more.group(1)))
    assert "/traces/w1" in third.text
    assert "Searched the" not in third.text  # that window reached the oldest log


def test_a_trace_with_a_failed_child_is_flagged_in_the_list(
    store: Store, client: TestClient, sample: Sample
) -> None:
    assert store.get_log(sample.root).error is None  # the root itself did not fail
    assert store.traces_with_errors([sample.root, sample.hostile, sample.failing]) == {sample.root}
    rows = client.get("/logs").text.split("<tr>")
    flagged = [row for row in rows if "child error" in row]
    assert len(flagged) == 1
    assert f"/traces/{sample.root}" in flagged[0]
    # within one flow's logs a child row is not a trace: nothing to flag there
    assert "child error" not in client.get("/logs", params={"flow": "llm/call"}).text


@pytest.mark.parametrize(
    "params",
    [
        {"page": "99999999999999999999"},
        {"page": "-5"},
        {"page": "1e9"},
        {"flow": "x" * 20_000},
        {"search": "%_" * 3_000},
        {"before": "b" * 20_000},
        {"status": "nope", "kind": "nope", "errors": "1"},
    ],
)
def test_every_viewer_parameter_is_bounded(client: TestClient, params: dict[str, str]) -> None:
    """Issue 9 item 13: `/logs?page=99999999999999999999` answered 500 (a row offset SQLite
    cannot hold); every parameter is bounded as the API bounds its own."""
    page = client.get("/logs", params=params)
    assert page.status_code in (200, 404), page.text[:200]
    if "page" in params and params["page"].isdigit():
        assert "page 1000000000" in page.text


def test_the_log_list_filters_by_kind(store: Store, client: TestClient) -> None:
    from tests.viewerdata import populate_llm

    llm = populate_llm(store)
    prompts = client.get("/logs", params={"kind": "prompt"}).text
    assert f"/traces/{llm.prompt}" in prompts and f"/traces/{llm.tool}" not in prompts
    assert "1200 → 80" in prompts  # the tokens column
    tools = client.get("/logs", params={"kind": "tool"}).text
    assert f"/traces/{llm.tool}" in tools and "kind-tool" in tools
    flows = client.get("/").text
    assert "prompts/forecaster" in flows and 'class="kind kind-prompt"' in flows
