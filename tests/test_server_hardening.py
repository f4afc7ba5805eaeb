"""What a browser can be made to do to a server without keys, and the rules that stop it.

DNS rebinding (issue 9 item 5): a page whose domain re-resolves to 127.0.0.1 talks to the
server as its own origin, sending its domain as `Host`: only loopback names are served. CSRF
(item 6): any page can POST a form-like body (`text/plain`, no preflight) and a foreign
`Origin` shows it: writes must say `application/json`, and a foreign Origin is refused.
The same requests a real browser sends are in tests/test_server_browser_attacks.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.responses import PlainTextResponse
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from flowtrace.server._command import run_server
from flowtrace.server._content_type import JsonContentTypeMiddleware
from flowtrace.server._keyless_guard import host_name
from flowtrace.server._otlp import OTLP_PATHS
from tests.serverutil import (
    DEFAULT_API_KEY,
    InProcessServer,
    RunningServer,
    SharedServer,
    app_server,
    serve_in_thread,
    start_server,
)
from tests.test_cli import read_viewer_url
from tests.test_server_process import child_env, serve_command

__all__ = ["app_server"]  # the fixture: a server with the default key, shared by the module

OTLP_INGEST_PATHS = frozenset(OTLP_PATHS)
FOREIGN_HOST = "rebound.example"
FOREIGN_ORIGIN = "http://attacker.example"


@pytest.fixture(scope="module", params=[True, False], ids=["fast-log", "fastapi-log"])
def keyless(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessServer]:
    """A keyless server in a thread, with and without POST /flows/log's fast path."""
    db = tmp_path_factory.mktemp("keyless") / "flowtrace.db"
    with serve_in_thread(db, api_keys=(), fast_log=request.param) as running:
        yield running


@pytest.fixture
def client(keyless: InProcessServer) -> Iterator[httpx.Client]:
    with keyless.client() as client:
        yield client


def port_of(server: InProcessServer | RunningServer) -> str:
    return server.root_url.rsplit(":", 1)[1]


def log(client: httpx.Client, path: str) -> str:
    response = client.post("/flows/log", json={"path": path})
    assert response.status_code == 200, response.text
    log_id: str = response.json()["id"]
    return log_id


def logs_of(client: httpx.Client, path: str) -> list[dict[str, Any]]:
    flows = client.get("/flows").json()["records"]
    flow = next((flow for flow in flows if flow["path"] == path), None)
    if flow is None:
        return []
    records: list[dict[str, Any]] = client.get("/logs", params={"file_id": flow["id"]}).json()[
        "records"
    ]
    return records


# --- item 5: DNS rebinding: the Host must be a loopback name --------------------------------


def test_a_rebound_host_can_neither_read_nor_delete_nor_write(
    keyless: InProcessServer, client: httpx.Client
) -> None:
    kept = log(client, "rebinding/kept")
    rebound = {"Host": f"{FOREIGN_HOST}:{port_of(keyless)}"}
    attempts = [
        client.get("/logs", headers=rebound),
        client.get(f"/logs/{kept}", headers=rebound),
        client.delete("/logs", params={"id": kept}, headers=rebound),
        client.post("/flows/log", json={"path": "rebinding/written"}, headers=rebound),
        client.get(keyless.root_url + "/", headers=rebound),  # the viewer's pages
        client.get(keyless.root_url + f"/ui/api/traces/{kept}", headers=rebound),
    ]
    for response in attempts:
        assert response.status_code == 403, (response.request.url, response.text)
        assert f"Host '{FOREIGN_HOST}:" in response.json()["detail"]
        assert "--api-key" in response.json()["detail"]
    assert [record["id"] for record in logs_of(client, "rebinding/kept")] == [kept]
    assert logs_of(client, "rebinding/written") == []


@pytest.mark.parametrize(
    "host",
    ["localhost", "LocalHost", "127.0.0.1", "127.42.0.7", "[::1]", "[0:0:0:0:0:0:0:1]"],
)
@pytest.mark.parametrize("with_port", [True, False], ids=["port", "no-port"])
def test_loopback_host_names_are_served(
    keyless: InProcessServer, client: httpx.Client, host: str, with_port: bool
) -> None:
    value = f"{host}:{port_of(keyless)}" if with_port else host
    response = client.get("/flows", headers={"Host": value})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "host",
    [
        "localhost.rebound.example",
        "127.0.0.1.rebound.example",
        "0.0.0.0",
        "[::ffff:7f00:1]",  # IPv4-mapped: not how any browser names loopback
        "::1",  # unbracketed: not a Host
        "[::1",
        "127.0.0.1:http",
        "",
    ],
)
def test_other_and_malformed_host_names_are_refused(client: httpx.Client, host: str) -> None:
    response = client.get("/flows", headers={"Host": host})
    assert response.status_code == 403, response.text


def test_host_name_parsing() -> None:
    assert host_name("127.0.0.1:8484") == "127.0.0.1"
    assert host_name("[::1]:8484") == "::1"
    assert host_name("LOCALHOST") == "localhost"
    assert host_name("localhost:") == "localhost"  # an empty port is allowed (RFC 3986)
    assert host_name("::1") is None
    assert host_name("127.0.0.1:8484:1") is None
    assert host_name("127.0.0.1:\u00b2") is None  # a digit to str.isdigit, not to HTTP


def test_the_address_the_server_listens_on_is_served(tmp_path: Path) -> None:
    with (
        serve_in_thread(tmp_path / "db", api_keys=(), listen_hosts=("box.lan",)) as running,
        running.client() as client,
    ):
        assert client.get("/flows", headers={"Host": "box.lan:8484"}).status_code == 200
        assert client.get("/flows", headers={"Host": "other.lan"}).status_code == 403


def test_a_server_with_keys_serves_any_host(app_server: SharedServer) -> None:
    """With keys the key is the protection: a rebound page never has it."""
    with app_server.client() as client:
        response = client.get("/flows", headers={"Host": FOREIGN_HOST})
        assert response.status_code == 200
        unkeyed = httpx.get(app_server.base_url + "/flows", headers={"Host": FOREIGN_HOST})
        assert unkeyed.status_code == 401


def test_flowtrace_serve_without_keys_refuses_a_foreign_host(tmp_path: Path) -> None:
    with start_server(tmp_path / "db", api_keys=()) as running, running.client() as client:
        assert client.get("/flows").status_code == 200
        assert client.get("/flows", headers={"Host": FOREIGN_HOST}).status_code == 403


def test_flowtrace_ui_refuses_a_foreign_host(tmp_path: Path) -> None:
    db = tmp_path / "db"
    db.touch()
    process = subprocess.Popen(
        [sys.executable, "-m", "flowtrace", "ui", "--port", "0", "--db", str(db)],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        url = read_viewer_url(process)
        assert httpx.get(url, timeout=30).status_code == 200
        refused = httpx.get(url, headers={"Host": FOREIGN_HOST}, timeout=30)
        assert refused.status_code == 403
        posted = httpx.post(
            url + "v5/flows/log", json={"path": "p"}, headers={"Origin": FOREIGN_ORIGIN}
        )
        assert posted.status_code == 403
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert process.stdout is not None
        process.stdout.close()


# --- item 6: CSRF: writes must be declared JSON, and foreign origins are refused -----------


# What pages can send without a preflight: fetch no-cors / sendBeacon (text/plain), forms.
NOT_JSON = [
    None,
    "text/plain;charset=UTF-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/x-json",
    "application/jsonp",
]
JSON_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "Application/JSON",
    "application/vnd.flowtrace+json",
]


def writes(client: httpx.Client) -> dict[str, tuple[str, str, bytes]]:
    """Every JSON write of the contract: method, path, a body it would accept."""
    created = log(client, "csrf/existing")
    flow = client.post("/flows", json={"path": "csrf/flow", "attributes": {"v": 1}}).json()
    return {
        "log": ("POST", "/flows/log", b'{"path": "csrf/written"}'),
        "batch": (
            "POST",
            "/flows/logs/batch",
            b'{"operations": [{"op": "log", "body": {"path": "csrf/written"}}]}',
        ),
        "update": ("PATCH", f"/flows/logs/{created}", b'{"output": "csrf"}'),
        "upsert": ("POST", "/flows", b'{"path": "csrf/written", "attributes": {"v": 2}}'),
        "deploy": (
            "POST",
            f"/flows/{flow['id']}/environments/csrf",
            b'{"version_id": "%s"}' % flow["version_id"].encode(),
        ),
    }


@pytest.mark.parametrize("content_type", NOT_JSON)
def test_a_write_not_declared_json_is_415_and_changes_nothing(
    client: httpx.Client, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    for name, (method, path, body) in writes(client).items():
        response = client.request(method, path, content=body, headers=headers)
        assert response.status_code == 415, (name, response.text)
        shown = "none was sent" if content_type is None else f"got {content_type!r}"
        assert response.json()["detail"] == f"Content-Type must be application/json ({shown})"
    flows = client.get("/flows").json()["records"]
    assert "csrf/written" not in [flow["path"] for flow in flows]
    assert all("output" not in record for record in logs_of(client, "csrf/existing"))
    deployed = next(flow for flow in flows if flow["path"] == "csrf/flow")
    assert "csrf" not in str(deployed.get("environments", ""))


@pytest.mark.parametrize("content_type", JSON_TYPES)
def test_json_media_types_are_accepted(client: httpx.Client, content_type: str) -> None:
    for name, (method, path, body) in writes(client).items():
        response = client.request(
            method, path, content=body, headers={"Content-Type": content_type}
        )
        assert response.status_code == 200, (name, response.text)


def test_a_write_without_a_body_needs_no_content_type(client: httpx.Client) -> None:
    """As the Humanloop SDK sends them: DELETE /logs?id= and a deploy by query, no body and
    no Content-Type."""
    doomed = log(client, "csrf/doomed")
    assert client.delete("/logs", params={"id": doomed}).status_code == 204
    flow = client.post("/flows", json={"path": "csrf/deployed", "attributes": {"v": 1}}).json()
    deployed = client.post(
        f"/flows/{flow['id']}/environments/staging", params={"version_id": flow["version_id"]}
    )
    assert deployed.status_code == 200, deployed.text


def test_the_viewer_has_no_writes_to_guard(keyless: InProcessServer) -> None:
    """The rule covers /v5 only; the viewer answers a POST as any route without it."""
    response = httpx.post(
        keyless.root_url + "/", content=b"x", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 405


async def _accept(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse("accepted")(scope, receive, send)


def test_the_otlp_ingest_routes_are_exempt_from_the_json_rule() -> None:
    """The OTLP routes (another branch adds them) read protobuf, or JSON the Humanloop SDK
    sends without a Content-Type: the rule leaves exactly these paths alone."""
    assert {
        "/v1/traces",
        "/v1/metrics",
        "/v1/logs",
        "/v5/import/otel/v1/traces",
    } == OTLP_INGEST_PATHS
    app = JsonContentTypeMiddleware(_accept, prefix="/v5", exempt_paths=OTLP_INGEST_PATHS)
    protobuf = {"Content-Type": "application/x-protobuf"}
    client = TestClient(app)  # no lifespan: the app is a bare ASGI callable
    for path in sorted(OTLP_INGEST_PATHS):
        assert client.post(path, content=b"\x0a\x00", headers=protobuf).status_code == 200
        assert client.post(path, content=b"{}").status_code == 200
    refused = client.post("/v5/import/otel/v1/traces/", content=b"\x0a\x00", headers=protobuf)
    assert refused.status_code == 415


@pytest.mark.parametrize("path", sorted(OTLP_INGEST_PATHS))
def test_the_otlp_ingest_routes_keep_the_host_and_origin_rules(
    client: httpx.Client, keyless: InProcessServer, path: str
) -> None:
    url = keyless.root_url + path
    assert client.post(url, content=b"{}", headers={"Host": FOREIGN_HOST}).status_code == 403
    assert client.post(url, content=b"{}", headers={"Origin": FOREIGN_ORIGIN}).status_code == 403


@pytest.mark.parametrize(
    "origin", [FOREIGN_ORIGIN, "null", "http://localhost:1", "https://127.0.0.1:{port}"]
)
def test_a_foreign_origin_is_refused(
    keyless: InProcessServer, client: httpx.Client, origin: str
) -> None:
    headers = {"Origin": origin.format(port=port_of(keyless))}
    posted = client.post("/flows/log", json={"path": "csrf/foreign"}, headers=headers)
    assert posted.status_code == 403
    assert posted.json()["detail"].startswith(
        f"cross-origin request refused: Origin {headers['Origin']!r}"
    )
    assert client.get("/logs", headers=headers).status_code == 403
    assert logs_of(client, "csrf/foreign") == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_the_server_s_own_origin_is_served(
    keyless: InProcessServer, client: httpx.Client, host: str
) -> None:
    own = f"{host}:{port_of(keyless)}"
    headers = {"Host": own, "Origin": f"http://{own}"}
    posted = client.post("/flows/log", json={"path": "csrf/own"}, headers=headers)
    assert posted.status_code == 200, posted.text


def test_a_server_with_keys_does_not_check_origins(app_server: SharedServer) -> None:
    with app_server.client() as client:
        headers = {"Origin": FOREIGN_ORIGIN}
        assert client.post("/flows/log", json={"path": "p"}, headers=headers).status_code == 200
        # ... but the JSON rule holds with keys too.
        assert client.post("/flows/log", content=b'{"path": "p"}').status_code == 415


# --- README: "without --api-key it only listens on loopback" --------------------------------


@pytest.mark.parametrize("key", ["", "  "])
def test_a_blank_api_key_is_refused(tmp_path: Path, key: str) -> None:
    """A blank key would let in anyone sending an empty X-API-KEY, on any address."""
    result = subprocess.run(
        serve_command(tmp_path / "db", "--host", "0.0.0.0", "--port", "0", "--api-key", key),
        capture_output=True,
        env=child_env(),
        timeout=60,
    )
    assert result.returncode == 2
    assert b"an API key must not be empty or blank" in result.stderr
    assert not (tmp_path / "db").exists()


def test_an_empty_x_api_key_header_is_refused(app_server: SharedServer) -> None:
    assert app_server.api_key == DEFAULT_API_KEY
    empty_key = {"X-API-KEY": ""}
    assert httpx.get(app_server.base_url + "/flows", headers=empty_key).status_code == 401


@pytest.mark.parametrize(
    ("host", "keys", "http", "reason"),
    [
        ("0.0.0.0", (), "auto", "without an API key"),
        ("box.lan", (), "auto", "without an API key"),
        ("0.0.0.0", ("",), "auto", "must not be empty"),
        ("127.0.0.1", (), "zttp", "unknown HTTP implementation 'zttp'"),
    ],
)
def test_run_server_refuses_what_serve_refuses(
    tmp_path: Path, host: str, keys: tuple[str, ...], http: str, reason: str
) -> None:
    """The Python API keeps the command's promise too: keyless means loopback only."""
    with pytest.raises(ValueError, match=reason):
        run_server(host, 0, tmp_path / "db", keys, http=http)
    assert not (tmp_path / "db").exists()
