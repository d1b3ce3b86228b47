"""The metrics module without a server: the scrape text, route templates, the counters."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client.parser import text_string_to_metric_families

from imgstore.app import JsonBodyByDefault
from imgstore.metrics import UNMATCHED, Metrics, MetricsMiddleware, figures_text
from imgstore.services.node.metrics import Figures, MonFigures, StorageFigures, count_image_bytes

BS = "0123456789abcdef0123456789abcdef"


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_figures_are_gauges_per_storage_with_one_hot_status_and_state() -> None:
    figures = Figures(
        storages=[StorageFigures(BS, 'odd "name"\\ with\nnewline', "Ceph", "Disabled", "Disconnected",
                                 100, 40, 30, 60),
                  StorageFigures("b" * 32, "other", "Sftp", "Enabled", "Weird", 7, 3, None, None)],
        mons=[MonFigures(BS, "127.0.0.1", "Connected")],
    )
    samples = _samples(figures_text(figures, ping_round_seconds=0.25))
    name = 'odd "name"\\ with\nnewline'
    ids = {"uuid": BS, "name": name, "type": "Ceph"}

    def get(metric: str, **labels: str) -> float | None:
        return samples.get((metric, frozenset(labels.items())))

    assert get("imgstore_backup_storage_total_bytes", **ids) == 100
    assert get("imgstore_backup_storage_available_bytes", **ids) == 40
    assert get("imgstore_backup_storage_pool_available_bytes", **ids) == 30
    assert get("imgstore_backup_storage_pool_used_bytes", **ids) == 60
    assert [get("imgstore_backup_storage_status", uuid=BS, name=name, status=s)
            for s in ("Connecting", "Connected", "Disconnected")] == [0, 0, 1]
    assert [get("imgstore_backup_storage_state", uuid=BS, name=name, state=s)
            for s in ("Enabled", "Disabled")] == [0, 1]
    # a storage without a pool has no pool gauges; a status imgstore does not know still shows
    assert get("imgstore_backup_storage_pool_used_bytes", uuid="b" * 32, name="other", type="Sftp") is None
    assert get("imgstore_backup_storage_status", uuid="b" * 32, name="other", status="Weird") == 1
    assert get("imgstore_ceph_mon_status", backup_storage_uuid=BS, hostname="127.0.0.1", status="Connected") == 1
    assert get("imgstore_ping_round_seconds") == 0.25


def test_no_storages_still_declares_the_families() -> None:
    text = figures_text(Figures([], []))
    assert "# TYPE imgstore_backup_storage_status gauge" in text and "imgstore_ping_round_seconds" not in text
    assert _samples(text) == {}


def test_each_app_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.count_image_bytes("upload", 10)
    count_image_bytes(SimpleNamespace(metrics=b), "export", 5)  # type: ignore[arg-type]
    count_image_bytes(SimpleNamespace(metrics=None), "export", 5)  # type: ignore[arg-type]  # a runtime without an app: nothing
    assert a.registry.get_sample_value("imgstore_image_bytes_total", {"direction": "upload"}) == 10
    assert b.registry.get_sample_value("imgstore_image_bytes_total", {"direction": "upload"}) == 0
    assert b.registry.get_sample_value("imgstore_image_bytes_total", {"direction": "export"}) == 5
    with pytest.raises(KeyError):
        a.count_image_bytes("sideways", 1)


def _app(metrics: Metrics) -> FastAPI:
    inner = APIRouter()

    @inner.get("/backup-storage/{uuid}")
    async def get_storage(uuid: str) -> dict:
        return {"uuid": uuid}

    @inner.post("/backup-storage/{uuid}/actions")
    async def act(uuid: str) -> dict:
        return {}

    nested = APIRouter()
    nested.include_router(inner)
    app = FastAPI()
    for prefix in ("/zstack/v1", "/v1"):
        app.include_router(nested, prefix=prefix)

    @app.get("/metrics")
    async def scrape() -> dict:
        return {}

    app.add_middleware(MetricsMiddleware, metrics=metrics, prefixes=("/zstack/v1", "/v1"))
    app.add_middleware(JsonBodyByDefault)  # copies the scope of form posts: must sit outside
    return app


def _call(app: FastAPI, method: str, path: str, **kwargs: object) -> int:
    async def go() -> int:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return (await client.request(method, path, **kwargs)).status_code  # type: ignore[arg-type]
    return asyncio.run(go())


def test_requests_are_labelled_by_route_template_never_by_raw_path() -> None:
    metrics = Metrics()
    app = _app(metrics)
    assert _call(app, "GET", f"/zstack/v1/backup-storage/{BS}") == 200
    assert _call(app, "GET", "/v1/backup-storage/other") == 200
    assert _call(app, "POST", f"/v1/backup-storage/{BS}/actions", content=b"a=b",
                 headers={"content-type": "application/x-www-form-urlencoded"}) == 200
    assert _call(app, "PUT", f"/v1/backup-storage/{BS}/actions") == 405
    assert _call(app, "GET", f"/zstack/v1/nothing/{BS}") == 404
    assert _call(app, "BREW", "/metrics") == 405
    assert _call(app, "GET", "/metrics") == 200

    def count(method: str, route: str, code: int) -> float | None:
        return metrics.registry.get_sample_value(
            "imgstore_http_requests_total", {"method": method, "route": route, "code": str(code)})

    assert count("GET", "/zstack/v1/backup-storage/{uuid}", 200) == 1
    assert count("GET", "/v1/backup-storage/{uuid}", 200) == 1
    assert count("POST", "/v1/backup-storage/{uuid}/actions", 200) == 1
    assert count("PUT", "/v1/backup-storage/{uuid}/actions", 405) == 1
    assert count("GET", UNMATCHED, 404) == 1
    assert count("other", "/metrics", 405) == 1
    assert count("GET", "/metrics", 200) == 1
    routes = {s.labels["route"] for f in metrics.registry.collect() for s in f.samples if "route" in s.labels}
    assert not [r for r in routes if BS in r or "other" in r]
    assert metrics.registry.get_sample_value(
        "imgstore_http_request_duration_seconds_count", {"method": "GET", "route": "/metrics"}) == 1
