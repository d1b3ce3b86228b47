"""``/metrics`` and the structured log of a real ``imgstore serve``.

The ``server`` fixture is shared by the whole session: counters are compared before and
after, never against absolute values.
"""
from __future__ import annotations

import json
import re
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Api, DevCluster, Server

UUID = re.compile(r"[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: Server) -> Samples:
    """Every sample of ``/metrics``, fetched without a session."""
    r = httpx.get(f"{server.url}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def requests(samples: Samples, method: str, route: str, code: int) -> float:
    return value(samples, "imgstore_http_requests_total", method=method, route=route, code=str(code)) or 0.0


def test_metrics_answer_prometheus_text_without_a_session(server: Server) -> None:
    samples = scrape(server)
    names = {name for name, _ in samples}
    assert "imgstore_http_requests_total" in names
    assert "imgstore_image_bytes_total" in names
    assert {value(samples, "imgstore_image_bytes_total", direction=d) is not None
            for d in ("upload", "download", "export")} == {True}
    # the route itself is outside the API: no session, nothing under /zstack/v1
    assert httpx.get(f"{server.url}/zstack/v1/metrics").status_code == 404


def test_requests_are_counted_by_route_template_and_code(server: Server, api: Api) -> None:
    route = "/zstack/v1/backup-storage/{uuid}"
    before = scrape(server)
    for _ in range(3):
        assert api.get(f"/backup-storage/{uuid.uuid4().hex}").status_code == 200
    assert httpx.get(f"{server.url}/zstack/v1/backup-storage/{uuid.uuid4().hex}").status_code == 401
    assert httpx.get(f"{server.url}/no/such/{uuid.uuid4().hex}").status_code == 404
    assert httpx.post(f"{server.url}/zstack/v1/backup-storage/ceph", content=b"not json").status_code == 400
    after = scrape(server)
    assert requests(after, "GET", route, 200) - requests(before, "GET", route, 200) == 3
    assert requests(after, "GET", route, 401) - requests(before, "GET", route, 401) == 1
    assert requests(after, "GET", "unmatched", 404) - requests(before, "GET", "unmatched", 404) == 1
    ceph = "/zstack/v1/backup-storage/ceph"
    assert requests(after, "POST", ceph, 400) - requests(before, "POST", ceph, 400) == 1
    count = "imgstore_http_request_duration_seconds_count"
    assert (value(after, count, method="GET", route=route) or 0) - (value(before, count, method="GET", route=route) or 0) == 4
    routes = {dict(labels)["route"] for _, labels in after if "route" in dict(labels)}
    assert route in routes and not [r for r in routes if UUID.search(r)]


@pytest.mark.ceph
def test_capacity_and_status_of_a_storage_and_its_mons(server: Server, api: Api, c1: DevCluster, pool: str) -> None:
    r = api.add_ceph("metered", [c1.mon_url], poolName=pool)
    assert r.status_code == 200, r.text
    inv = r.json()["inventory"]
    uid, mon = inv["uuid"], inv["mons"][0]
    samples = scrape(server)
    ids = {"uuid": uid, "name": "metered", "type": "Ceph"}
    prefix = "imgstore_backup_storage"
    assert value(samples, f"{prefix}_total_bytes", **ids) == inv["totalCapacity"] > 0
    assert value(samples, f"{prefix}_available_bytes", **ids) == inv["availableCapacity"]
    assert value(samples, f"{prefix}_pool_available_bytes", **ids) == inv["poolAvailableCapacity"]
    assert value(samples, f"{prefix}_pool_used_bytes", **ids) == inv["poolUsedCapacity"]
    assert {s: value(samples, f"{prefix}_status", uuid=uid, name="metered", status=s)
            for s in ("Connecting", "Connected", "Disconnected")} == {
        "Connecting": 0, "Connected": 1, "Disconnected": 0}
    assert {s: value(samples, f"{prefix}_state", uuid=uid, name="metered", state=s)
            for s in ("Enabled", "Disabled")} == {"Enabled": 1, "Disabled": 0}
    assert value(samples, "imgstore_ceph_mon_status", backup_storage_uuid=uid,
                 hostname=mon["hostname"], status="Connected") == 1
    # disabled, the state follows at the next scrape; deleted, the storage is gone
    r = api.put(f"/backup-storage/{uid}/actions", json={"changeBackupStorageState": {"stateEvent": "disable"}})
    assert r.status_code == 200, r.text
    assert value(scrape(server), f"{prefix}_state", uuid=uid, name="metered", state="Disabled") == 1
    assert api.delete(f"/backup-storage/{uid}").status_code == 200
    assert not [k for k in scrape(server) if ("uuid", uid) in k[1] or ("backup_storage_uuid", uid) in k[1]]


# librados' C code writes a few level -1 lines (auth, msgr) straight to stderr whatever its
# log settings say; they are Ceph's, not imgstore's log, and carry no secret
_LIBRADOS_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\S+ [0-9a-f]+ +-1 ")


def log_lines(server: Server) -> list[dict]:
    lines = [line for line in server.log().splitlines() if line.strip() and not _LIBRADOS_LINE.match(line)]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON line in the server log: {line[:300]}") from None
    return parsed


def test_the_request_id_round_trips_into_the_access_line(server: Server, api: Api) -> None:
    rid = f"metrics-test-{uuid.uuid4().hex[:8]}"
    r = api.get("/backup-storage", headers={"X-Request-Id": rid})
    assert r.status_code == 200 and r.headers["x-request-id"] == rid
    bad = api.get("/backup-storage", headers={"X-Request-Id": "no spaces allowed"})
    assert re.fullmatch(r"[0-9a-f]{32}", bad.headers["x-request-id"])
    [access] = [line for line in log_lines(server) if line.get("request_id") == rid]
    assert access["logger"] == "imgstore.access" and access["level"] == "INFO"
    assert (access["method"], access["path"], access["status"]) == ("GET", "/zstack/v1/backup-storage", 200)
    assert access["duration_ms"] >= 0 and access["ts"].endswith("Z")


@pytest.mark.ceph
def test_the_log_is_json_lines_without_ssh_passwords(server: Server, api: Api, c1: DevCluster, pool: str) -> None:
    rid = f"bad-password-{uuid.uuid4().hex[:8]}"
    body = {"params": {"name": "bad-pw", "monUrls": [c1.mon_url_with(password="wrong-password")], "poolName": pool}}
    r = api.post("/backup-storage/ceph", json=body, headers={"X-Request-Id": rid})
    assert r.status_code >= 400 and r.headers["x-request-id"] == rid
    assert api.add_ceph("good-pw", [c1.mon_url], poolName=pool).status_code == 200
    lines = log_lines(server)  # every line parses
    text = server.log()
    assert "wrong-password" not in text and c1.env["SSH_PASSWORD"] not in text
    assert {"ts", "level", "logger", "msg"} <= set(lines[-1])
    [access] = [line for line in lines if line.get("request_id") == rid and line["logger"] == "imgstore.access"]
    assert access["status"] == r.status_code and access["path"] == "/zstack/v1/backup-storage/ceph"
