"""Structured logs: secrets masked in every part of a record, one JSON object per line,
request ids given, echoed and carried by every log line of the request."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config
import sys
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi import FastAPI

from imgstore import logs
from imgstore.logs import MASK, JsonFormatter, SecretFilter, mask_text, mask_value, request_id_from

CEPHX_KEY = "AQBzK2dlAAAAABAAq8Hc1xTj5Xl0rXnJtI7j4A=="
SESSION = "0123456789abcdef0123456789abcdef"


# ---------------------------------------------------------------- masking text


@pytest.mark.parametrize("text, masked", [
    ("ssh to root:s3cret@127.0.0.1:22/?monPort=6789 failed",
     "ssh to root:******@127.0.0.1:22/?monPort=6789 failed"),
    ("mons ['root:a@h1', 'admin:b:c@d@h2:2222']", "mons ['root:******@h1', 'admin:******@h2:2222']"),
    ("GET http://user:pw@example.com/x", "GET http://user:******@example.com/x"),
    ('{"password": "s3\\"cret", "name": "bs1"}', '{"password": "******", "name": "bs1"}'),
    ("{'sshPassword': 'pw', 'sshPort': 22}", "{'sshPassword': '******', 'sshPort': 22}"),
    ("password=hunter2 account=admin", "password=****** account=admin"),
    ("[client.imgstore]\n\tkey = " + CEPHX_KEY + "\n", "[client.imgstore]\n\tkey = ******\n"),
    ("ceph_key: " + CEPHX_KEY, "ceph_key: ******"),
    ("got the key " + CEPHX_KEY + " back", "got the key ****** back"),
    ("Authorization: OAuth " + SESSION, "Authorization: OAuth ******"),
    ("{'authorization': 'OAuth " + SESSION + "'}", "{'authorization': 'OAuth ******'}"),
    ("GET /zstack/v1/accounts/sessions/" + SESSION + "/valid", "GET /zstack/v1/accounts/sessions/******/valid"),
])
def test_secrets_are_masked(text: str, masked: str) -> None:
    assert mask_text(text) == masked


@pytest.mark.parametrize("text", [
    "ssh imgstore-ceph@127.0.0.1:16022 at 10:30:00",
    "mon 127.0.0.1:6789 is in quorum",
    "backup storage 0123456789abcdef0123456789abcdef: Connected -> Disconnected",
    "monkey=banana poolName=imgs",
    "http://127.0.0.1:8080/zstack/v1/api-jobs/" + SESSION,
    "",
])
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert mask_text(text) == text


def test_structured_values_are_masked_by_key_and_by_text() -> None:
    value = {"name": "bs1", "sshPassword": "pw", "monUrls": ["root:pw@h"], "nested": {"password": "x"},
             "authorization": "OAuth abc", "size": 3, "password_hint": None}
    assert mask_value(value) == {"name": "bs1", "sshPassword": MASK, "monUrls": [f"root:{MASK}@h"],
                                 "nested": {"password": MASK}, "authorization": MASK, "size": 3,
                                 "password_hint": None}


# ---------------------------------------------------------------- the filter on records


def _record(msg: str, args: object = None, exc_info: object = None, **extra: object) -> logging.LogRecord:
    record = logging.getLogger("imgstore.test").makeRecord(
        "imgstore.test", logging.WARNING, __file__, 1, msg, args, exc_info, extra=extra)  # type: ignore[arg-type]
    return record


def test_the_filter_masks_the_message_with_its_args() -> None:
    record = _record("mon %s failed: %s", ("root:pw@h", {"password": "x"}))
    assert SecretFilter().filter(record) is True
    assert record.getMessage() == f"mon root:{MASK}@h failed: {{'password': '{MASK}'}}"
    assert "pw@" not in record.getMessage() and "'x'" not in record.getMessage()


def test_the_filter_masks_dict_args_and_extras() -> None:
    record = _record("login of %(account)s with %(password)s", None,
                     monUrl="root:pw@h", sshPassword="pw", body={"password": "x"})
    record.args = {"account": "admin", "password": "password=hunter2"}
    SecretFilter().filter(record)
    assert record.getMessage() == f"login of admin with password={MASK}"
    assert (record.monUrl, record.sshPassword, record.body) == (f"root:{MASK}@h", MASK, {"password": MASK})


def test_the_filter_masks_tracebacks() -> None:
    try:
        raise RuntimeError("cannot ssh to root:hunter2@10.0.0.1")
    except RuntimeError:
        record = _record("add failed", exc_info=sys.exc_info())
    SecretFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert "hunter2" not in json.dumps(line)
    assert f"root:{MASK}@10.0.0.1" in line["exc"] and "RuntimeError" in line["exc"]


def test_a_bad_format_string_is_still_logged_and_masked() -> None:
    record = _record("%d mons at %s", ("x",))
    SecretFilter().filter(record)
    assert "%d mons" in record.getMessage()


# ---------------------------------------------------------------- JSON lines


def test_a_record_is_one_json_object_on_one_line() -> None:
    record = _record("two\nlines and \u2028 a separator", None, backup_storage_uuid="bs", size=3)
    text = JsonFormatter().format(record)
    assert len(text.splitlines()) == 1
    line = json.loads(text)
    assert set(line) == {"ts", "level", "logger", "msg", "backup_storage_uuid", "size"}
    assert line["level"] == "WARNING" and line["logger"] == "imgstore.test"
    assert line["msg"] == "two\nlines and \u2028 a separator"
    assert line["ts"].endswith("Z") and line["size"] == 3


def test_the_request_id_is_on_lines_logged_inside_a_request() -> None:
    token = logs.request_id.set("req-1")
    try:
        line = json.loads(JsonFormatter().format(_record("inside")))
    finally:
        logs.request_id.reset(token)
    assert line["request_id"] == "req-1"
    assert "request_id" not in json.loads(JsonFormatter().format(_record("outside")))


def test_configure_masks_every_logger_through_the_root_handler() -> None:
    stream = io.StringIO()
    config = logs.log_config("info")
    config["handlers"]["default"]["stream"] = stream
    saved = logging.root.handlers[:], logging.root.level
    try:
        logging.config.dictConfig(config)
        logging.getLogger("asyncssh").info("connection narration")  # quieted
        logging.getLogger("uvicorn.error").info("started")
        logging.getLogger("somelib.deep").warning("using %s", "root:pw@h", extra={"sshPassword": "pw"})
    finally:
        logging.root.handlers, logging.root.level = saved
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["logger"] for line in lines] == ["uvicorn.error", "somelib.deep"]
    assert lines[1]["msg"] == f"using root:{MASK}@h" and lines[1]["sshPassword"] == MASK


# ---------------------------------------------------------------- request ids


@pytest.mark.parametrize("header", ["abc-123", "0123456789abcdef0123456789abcdef", "a.b_c:d",
                                    "f47ac10b-58cc-4372-a567-0e02b2c3d479"])
def test_a_sane_client_request_id_is_kept(header: str) -> None:
    assert request_id_from(header) == header


@pytest.mark.parametrize("header", [None, "", "has space", "line\nbreak", '"quoted"', "x" * 129, "-leading",
                                    "évian"])
def test_any_other_request_id_is_replaced(header: str | None) -> None:
    rid = request_id_from(header)
    assert rid != header and len(rid) == 32 and int(rid, 16) >= 0


def _app(seen: list[str | None]) -> FastAPI:
    app = FastAPI()

    @app.get("/hello")
    async def hello() -> dict:
        seen.append(logs.request_id.get())
        logging.getLogger("imgstore.test").info("in the route")
        return {"ok": True}

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("no")

    app.add_middleware(logs.RequestContext)
    return app


def _get(app: FastAPI, path: str, **headers: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get(path, headers=headers)
    return asyncio.run(go())


@pytest.fixture
def json_lines() -> Iterator[Callable[[str], list[dict]]]:
    """The JSON lines the server's handler would print, by logger name."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SecretFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    saved = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield lambda name: [line for line in map(json.loads, stream.getvalue().splitlines())
                            if line["logger"] == name]
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)


def test_the_request_id_round_trips_and_reaches_log_records(json_lines: Callable[[str], list[dict]]) -> None:
    seen: list[str | None] = []
    r = _get(_app(seen), "/hello", **{"X-Request-Id": "client-id-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "client-id-1"
    assert seen == ["client-id-1"]
    [route_line] = json_lines("imgstore.test")
    assert route_line["request_id"] == "client-id-1" and route_line["msg"] == "in the route"
    assert logs.request_id.get() is None  # reset after the request


def test_a_request_without_an_id_gets_a_fresh_one_per_request() -> None:
    seen: list[str | None] = []
    app = _app(seen)
    first, second = _get(app, "/hello"), _get(app, "/hello", **{"X-Request-Id": "bad id"})
    assert first.headers["x-request-id"] == seen[0] and second.headers["x-request-id"] == seen[1]
    assert len(set(seen)) == 2 and "bad id" not in seen


def test_one_access_line_per_request_with_status_and_duration(json_lines: Callable[[str], list[dict]]) -> None:
    app = _app([])
    _get(app, "/hello", **{"X-Request-Id": "r1"})
    _get(app, "/boom", **{"X-Request-Id": "r2"})
    lines = json_lines("imgstore.access")
    assert [(line["method"], line["path"], line["status"]) for line in lines] == [
        ("GET", "/hello", 200), ("GET", "/boom", 500)]
    assert [line["request_id"] for line in lines] == ["r1", "r2"]
    assert all(isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0 for line in lines)
