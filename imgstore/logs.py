"""Structured logs: one JSON object per line, a request id on every line, no secrets.

:func:`configure` sends every logger (imgstore's, uvicorn's, libraries') through one
handler with :class:`SecretFilter` and :class:`JsonFormatter`; :func:`uvicorn_log_config`
hands uvicorn the same setup so its own logs are JSON lines too. :class:`RequestContext`,
a pure ASGI middleware, gives each request an id (the client's ``X-Request-Id`` when it
is a sane token), echoes it in the response, and writes one access line per request when
the response has been sent in full, so ``duration_ms`` covers a streamed body.

The filter sits on the handler, not on loggers: a handler filter sees every record that
reaches it, including those propagated from any logger, so nothing is printed unmasked.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

MASK = "******"

request_id: ContextVar[str | None] = ContextVar("imgstore_request_id", default=None)

access_log = logging.getLogger("imgstore.access")

# ------------------------------------------------------------------ secrets

# user:PASSWORD@host, the monUrl and URL userinfo form; the password runs to the last '@'
# of the word, so a password holding '@' or ':' is hidden whole
_USERINFO = re.compile(r"(?P<user>[^\s:@/'\"\[\](){}<>,;=]+):(?!//)(?P<secret>\S+)@(?=[^\s@])")
# "password": "x", 'sshPassword': 'x', password=x, key = AQ...== (a keyring line)
_SECRET_NAME = r"[\w-]*(?:password|passwd|secret)[\w-]*|(?:cephx?_?|api_?|private_?)?key"
_KEY_VALUE = re.compile(
    rf"""(?ix)(?<![\w-])(?P<name>["']?(?:{_SECRET_NAME})["']?\s*[:=]\s*)
    (?P<secret>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|[^\s,;}})\]]+)"""
)
# a cephx key outside any key=value: base64 of 28 bytes, 40 characters ending '=='
_CEPHX_KEY = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{38}==(?![A-Za-z0-9+/=])")
# Authorization header values: OAuth <session uuid>, and the usual other schemes
_AUTHORIZATION = re.compile(r"(?i)\b(?P<scheme>OAuth|Bearer|Basic)\s+[\w.+/=-]+")
# a session uuid is a bearer token; ValidateSession and LogOut carry it in their path
_SESSION_PATH = re.compile(r"(?P<path>/accounts/sessions/)[^/\s?#'\"]+")
# a job id opens its answer to whoever polls it: the access line does not show it
_JOB_PATH = re.compile(r"(?P<path>/api-jobs/)[^/\s?#'\"]+")

_SECRET_KEY = re.compile(rf"(?i)^(?:{_SECRET_NAME}|authorization)$")


def mask_text(text: str) -> str:
    """``text`` with every password, cephx key and session token replaced by ``******``."""
    if not text:
        return text
    text = _KEY_VALUE.sub(_mask_value, text)
    text = _USERINFO.sub(lambda m: f"{m['user']}:{MASK}@", text)
    text = _CEPHX_KEY.sub(MASK, text)
    text = _SESSION_PATH.sub(lambda m: f"{m['path']}{MASK}", text)
    return _AUTHORIZATION.sub(lambda m: f"{m['scheme']} {MASK}", text)


def _mask_value(m: re.Match[str]) -> str:
    value = m["secret"]
    quote = value[0] if value[0] in "\"'" else ""
    return f"{m['name']}{quote}{MASK}{quote}"


def mask_value(value: Any, key: str | None = None) -> Any:
    """A copy of a structured value (an ``extra``) with secrets masked, by key and by text."""
    if key is not None and _SECRET_KEY.match(key) and value not in (None, ""):
        return MASK
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: mask_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [mask_value(v) for v in value]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return mask_text(str(value))


# the attributes every LogRecord has; anything else on a record came from ``extra``
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime",
    "color_message",  # uvicorn's copy of the message with terminal colours
}


class SecretFilter(logging.Filter):
    """Masks secrets in the message (after its ``args`` are merged in), the extras and
    the traceback of a record. It never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is, still masked
            message = f"{record.msg} {record.args}"
        record.msg, record.args = mask_text(message), None
        for name in _extras(record):
            setattr(record, name, mask_value(getattr(record, name), name))
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_text(record.stack_info)
        return True


def _extras(record: logging.LogRecord) -> list[str]:
    return [k for k in vars(record) if k not in _RECORD_ATTRS and not k.startswith("_")]


# ------------------------------------------------------------------ JSON lines


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "request_id"?, ...extras, "exc"?}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid:
            line["request_id"] = rid
        for name in _extras(record):
            line.setdefault(name, getattr(record, name))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, default=str)  # ASCII: no U+2028 to split a line


def log_config(level: str = "info") -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` dict: everything to stderr as masked JSON lines.

    uvicorn's loggers carry no handler of their own and propagate to the root's, so
    they are formatted and masked like every other record. asyncssh narrates every
    connection at INFO; it is kept to warnings unless the level is debug.
    """
    level = level.upper()
    quiet = "DEBUG" if level == "DEBUG" else "WARNING"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"secrets": {"()": SecretFilter}},
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "json",
                "filters": ["secrets"],
            },
        },
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True},
            "asyncssh": {"level": quiet},
        },
        "root": {"level": level, "handlers": ["default"]},
    }


def configure(level: str = "info") -> dict[str, Any]:
    """Configure logging for the process; returns the dict to give uvicorn as ``log_config``."""
    config = log_config(level)
    logging.config.dictConfig(config)
    logging.captureWarnings(True)  # a warning is a JSON line too, not raw text on stderr
    return config


# ------------------------------------------------------------------ request ids

_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")


def request_id_from(header: str | None) -> str:
    """The client's request id when it is a sane token (no spaces, quotes or control
    characters, at most 128 characters), else a fresh one."""
    if header and _SANE_ID.match(header):
        return header
    return uuid.uuid4().hex


class StatusWatch:
    """An ASGI ``send`` that passes each message on and keeps the response's status:
    500 until ``http.response.start`` has passed, so a request that raised before it
    answered counts as a 500. ``on_start`` may change that message on its way (headers).
    For the middlewares that report on a request once it is done (the access log here,
    ``metrics.RequestMetrics``)."""

    def __init__(self, send: Any, on_start: Callable[[Any], Any] | None = None) -> None:
        self.status = 500
        self._send = send
        self._on_start = on_start

    async def __call__(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if self._on_start is not None:
                message = self._on_start(message)
        await self._send(message)


class RequestContext:
    """Pure ASGI middleware: a request id per request, echoed as ``X-Request-Id`` and set
    in :data:`request_id` for every log line of the request (and of jobs it starts), and
    one access line per request once its response is complete.

    It does not touch the body: uploads and exports stream through untouched.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"")
        rid = request_id_from(header.decode("latin-1"))
        token = request_id.set(rid)
        raw_id = rid.encode()
        started = time.perf_counter()

        def with_id(message: Any) -> Any:
            headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"]
            return {**message, "headers": [*headers, (b"x-request-id", raw_id)]}

        watch = StatusWatch(send, with_id)
        try:
            await self.app(scope, receive, watch)
        except BaseException:
            _log_access(scope, watch.status, time.perf_counter() - started)
            raise  # the id stays set: the handler outside logs the traceback with it
        _log_access(scope, watch.status, time.perf_counter() - started)
        request_id.reset(token)


def _log_access(scope: Any, status: int, seconds: float) -> None:
    client = scope.get("client")
    path = _JOB_PATH.sub(lambda m: f"{m['path']}{MASK}", scope["path"])
    access_log.info(
        "%s %s %s", scope["method"], path, status,
        extra={
            "method": scope["method"],
            "path": path,
            "status": status,
            "duration_ms": round(seconds * 1000, 3),
            "client": client[0] if client else None,
        },
    )


# ------------------------------------------------------------------ what a stuck server waits on


def dump_waits() -> None:
    """Log where every task of the event loop and every thread is waiting: what
    ``kill -USR1 <pid>`` asks of a server that does not answer or does not stop (a task
    waits inside the loop, where a thread dump shows only the loop's poll)."""
    log = logging.getLogger("imgstore.waits")
    for task in asyncio.all_tasks():
        frames = io.StringIO()
        task.print_stack(file=frames)
        log.warning("task %s waits:\n%s", task.get_name(), frames.getvalue())
    threads = sys._current_frames()  # the one way to read other threads' stacks
    for thread in threading.enumerate():
        frame = threads.get(thread.ident or -1)
        if frame is not None:
            log.warning("thread %s waits:\n%s", thread.name, "".join(traceback.format_stack(frame)))
