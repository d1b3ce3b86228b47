"""A Python client for imgstore (and ZStack) on httpx, driven by :mod:`imgstore.client.catalogue`.

``ImgstoreClient(url).login("admin", "password")`` hashes the password with SHA-512 as
ZStack's clients do; ``call("DeleteBackupStorage", uuid=...)`` builds the request from the
catalogue (path variables substituted, lists repeated in query strings, the ``params`` or
action body key), asks jobs to run asynchronously (``Prefer: respond-async``) and polls
them; ``query("QueryBackupStorage", ["name~=bs%"], limit=10)`` speaks ZStack's query
grammar. Every failure is an :class:`ImgstoreError` carrying a ZStack error code.

The CLI keeps its session in ``$XDG_CONFIG_HOME/imgstore/session.json`` (0600).
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import httpx

from imgstore.client import catalogue as apis
from imgstore.client.catalogue import Api

API_PREFIX = "/zstack/v1"
DEFAULT_URL = "http://127.0.0.1:8080"
CA_FILE_ENV = "IMGSTORE_CA_FILE"  # the CA (or the certificate itself) an https server is checked with
DEFAULT_JOB_TIMEOUT = 3 * 3600.0  # ZStack's SDK polls for 3 h

# Codes of failures that happen on the client's side of the wire. The first two are the
# ones ZStack's own SDKs report; SYS.1015 is ZStack's HTTP_ERROR ("Cannot make an HTTP
# request"), SYS.1014 its UNIMPLEMENTED_OPERATION_ERROR.
HTTP_STATUS_ERROR = "sdk.1000"
POLL_TIMEOUT = "sdk.1001"
CONNECTION_ERROR = "SYS.1015"
UNIMPLEMENTED = "SYS.1014"
INVALID_SESSION = "ID.1001"


class ImgstoreError(Exception):
    """A ZStack ErrorCode: from the server's ``{"error": ...}`` body or made here."""

    def __init__(self, code: str, description: str, details: str | None = None, *,
                 status: int | None = None, cause: Mapping[str, Any] | None = None) -> None:
        self.code = code
        self.description = description
        self.details = details or description
        self.status = status
        self.cause = dict(cause) if cause else None
        super().__init__(f"{code}: {self.details}")

    @classmethod
    def from_response(cls, response: httpx.Response) -> ImgstoreError:
        try:
            error = response.json().get("error")
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, dict) and error.get("code"):
            return cls(str(error["code"]), str(error.get("description") or ""), error.get("details"),
                       status=response.status_code, cause=error.get("cause") or None)
        text = response.text.strip()[:500] or response.reason_phrase
        return cls(HTTP_STATUS_ERROR, f"the http status code[{response.status_code}] indicates a failure happened",
                   text, status=response.status_code)


class ParamError(ValueError):
    """The caller's parameters do not fit the API (caught before any request is sent)."""


def hash_password(password: str) -> str:
    """What ZStack's login expects: the SHA-512 hex digest of the password."""
    return hashlib.sha512(password.encode()).hexdigest()


def normalize_url(url: str) -> str:
    """``http://host:8080`` from whatever the user typed (trailing ``/zstack/v1`` or ``/``)."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    for suffix in (API_PREFIX, "/v1"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url


# ------------------------------------------------------------------ building requests


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str  # under /zstack/v1, variables substituted
    query: tuple[tuple[str, str], ...] = ()
    body: dict[str, Any] | None = None


def coerce_params(api: Api, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check names, kinds, choices and required fields like ZStack's SDK does, and turn
    text into lists, booleans and integers where the API wants them."""
    out: dict[str, Any] = {}
    for name, value in params.items():
        if value is None:
            continue
        if api.query:
            out[name] = _coerce_query_param(name, value)
            continue
        param = api.param(name)
        if param is None:
            near = _closest(name, [p.name for p in api.params])
            hint = f"; did you mean {near}?" if near else ""
            raise ParamError(f"{api.name} has no parameter '{name}'{hint}")
        out[name] = _coerce(api.name, param, value)
    missing = [n for n in api.required if n not in out]
    if missing:
        raise ParamError(f"{api.name} needs {', '.join(missing)}")
    return out


def _coerce(api_name: str, param: apis.Param, value: Any) -> Any:
    where = f"{api_name} {param.name}"
    if param.kind == "list":
        values = [value] if isinstance(value, (str, bytes)) or not isinstance(value, Iterable) else list(value)
        return [str(v) for v in values]
    if isinstance(value, (list, tuple)):
        raise ParamError(f"{where} takes one value, not a list")
    if param.kind == "bool":
        return _to_bool(where, value)
    if param.kind == "int":
        return _to_int(where, value)
    text = str(value)
    if param.choices:
        match = next((c for c in param.choices if c.lower() == text.lower()), None)
        if match is None:
            raise ParamError(f"{where} must be one of {', '.join(param.choices)}, not '{text}'")
        return match
    return text


def _coerce_query_param(name: str, value: Any) -> Any:
    if name == "q":
        return [value] if isinstance(value, str) else [str(v) for v in value]
    kind = apis.QUERY_PARAMS.get(name)
    if kind is None:
        raise ParamError(f"'{name}' is not a query parameter; they are q, {', '.join(apis.QUERY_PARAMS)}")
    if name == "fields" and not isinstance(value, str):
        return ",".join(value)
    return {"int": _to_int, "bool": _to_bool}.get(kind, lambda _w, v: str(v))(name, value)


def _to_bool(where: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise ParamError(f"{where} is a boolean: true or false, not '{value}'")


def _to_int(where: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ParamError(f"{where} is an integer, not '{value}'")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ParamError(f"{where} is an integer, not '{value}'") from None


def _closest(name: str, names: Sequence[str]) -> str | None:
    found = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    return found[0] if found else None


def _query_value(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def build_request(api: Api, params: Mapping[str, Any]) -> Request:
    """The HTTP request for ``api`` with already coerced ``params`` (see coerce_params)."""
    rest = dict(params)
    path = api.path
    for var in api.path_vars:
        if var not in rest:
            raise ParamError(f"{api.name} needs {var}")
        path = path.replace("{" + var + "}", quote(str(rest.pop(var)), safe=""))
    if api.body_key is not None:
        return Request(api.method, path, body={api.body_key: rest})
    query: list[tuple[str, str]] = []
    if api.query:  # ZStack's SDK order: q..., then the paging/sorting parameters
        query += [("q", c) for c in rest.pop("q", [])]
    for name, value in rest.items():
        values = value if isinstance(value, list) else [value]
        query += [(name, _query_value(v)) for v in values]
    return Request(api.method, path, tuple(query))


def query_params(conditions: Iterable[str] = (), *, limit: int | None = None, start: int | None = None,
                 sort: str | None = None, fields: Sequence[str] | str | None = None,
                 count: bool | None = None, reply_with_count: bool | None = None) -> dict[str, Any]:
    """The parameters of a Query* call (``fields`` may be a list or ``"a,b"``)."""
    params: dict[str, Any] = {"q": list(conditions), "limit": limit, "start": start, "sort": sort,
                              "count": count, "replyWithCount": reply_with_count}
    if fields:
        params["fields"] = fields if isinstance(fields, str) else ",".join(fields)
    return {k: v for k, v in params.items() if v is not None}


def poll_delays(first: float = 0.2, step: float = 0.2, ceiling: float = 1.0) -> Iterator[float]:
    """0.2, 0.4, ... 1.0, 1.0, ...: quick answers for quick jobs, ZStack's 1 s after that."""
    delay = first
    while True:
        yield delay
        delay = min(ceiling, delay + step)


# ------------------------------------------------------------------ the client


class ImgstoreClient:
    """One imgstore (or ZStack) server, optionally with a session."""

    def __init__(self, url: str = DEFAULT_URL, session: str | None = None, *, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None, ca_file: str | Path | None = None) -> None:
        self.url = normalize_url(url)
        self.session = session
        self._http = httpx.Client(timeout=timeout, transport=transport, verify=tls_context(ca_file))

    def __enter__(self) -> ImgstoreClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # sessions -------------------------------------------------------------

    def login(self, account: str, password: str) -> dict[str, Any]:
        """Log in with a clear-text password (sent as its SHA-512 hex); keep the session."""
        reply = self.call("LogInByAccount", accountName=account, password=hash_password(password))
        inventory: dict[str, Any] = reply["inventory"]
        self.session = inventory["uuid"]
        return inventory

    def logout(self) -> None:
        if self.session:
            self.call("LogOut", sessionUuid=self.session)
            self.session = None

    # calls ----------------------------------------------------------------

    def call(self, api_name: str, *, job_timeout: float | None = None, **params: Any) -> dict[str, Any]:
        """Run one API and return its reply body (for a job: the job's result)."""
        api = apis.get(api_name)
        request = build_request(api, coerce_params(api, params))
        headers = {"Prefer": "respond-async"} if api.is_async else {}
        response = self._send(request, api, headers)
        if response.status_code == 202 and api.is_async:
            return self.wait_job(_location(response), job_timeout)
        return _reply(response)

    def query(self, api_name: str, conditions: Iterable[str] = (), *, limit: int | None = None,
              start: int | None = None, sort: str | None = None, fields: Sequence[str] | str | None = None,
              count: bool | None = None, reply_with_count: bool | None = None) -> dict[str, Any]:
        """A Query* API: ``conditions`` like ``name~=bs%``, ``state?=Enabled,Disabled``."""
        if not apis.get(api_name).query:
            raise ParamError(f"{api_name} is not a query API")
        return self.call(api_name, **query_params(conditions, limit=limit, start=start, sort=sort, fields=fields,
                                                  count=count, reply_with_count=reply_with_count))

    def wait_job(self, location: str, timeout: float | None = None) -> dict[str, Any]:
        """Poll a job until it ends: 200 is its result, anything else its error."""
        url = self._job_url(location)
        deadline = time.monotonic() + (DEFAULT_JOB_TIMEOUT if timeout is None else timeout)
        delays = poll_delays()
        while True:
            response = self._get(url)
            if response.status_code != 202:
                return _reply(response)
            delay = next(delays)
            if time.monotonic() + delay > deadline:
                raise ImgstoreError(POLL_TIMEOUT, "timeout of polling API result",
                                    f"the job is still running; poll {url} for its result")
            time.sleep(delay)

    def _job_url(self, location: str) -> str:
        """Poll where we talk to, whatever host the server wrote (as ZStack's SDK does)."""
        for marker in (f"{API_PREFIX}/api-jobs", "/v1/api-jobs"):
            if marker in location:
                return f"{self.url}{API_PREFIX}/api-jobs{location.split(marker, 1)[1]}"
        return urljoin(self.url + "/", location)

    def _send(self, request: Request, api: Api, headers: dict[str, str]) -> httpx.Response:
        if api.session:
            if not self.session:
                raise ImgstoreError(INVALID_SESSION, "Invalid or expired session",
                                    "not logged in; run 'imgstore login' first")
            headers["Authorization"] = f"OAuth {self.session}"
        url = f"{self.url}{API_PREFIX}{request.path}"
        try:
            return self._http.request(request.method, url, params=list(request.query) or None,
                                      json=request.body, headers=headers)
        except httpx.HTTPError as e:
            raise _connection_error(url, e) from None

    def _get(self, url: str) -> httpx.Response:
        headers = {"Authorization": f"OAuth {self.session}"} if self.session else {}
        try:
            return self._http.get(url, headers=headers)
        except httpx.HTTPError as e:
            raise _connection_error(url, e) from None

    # images ---------------------------------------------------------------

    def upload_image(self, path: Path, backup_storage_uuids: Sequence[str], *, name: str, format: str,
                     on_progress: Callable[[int], None] | None = None, job_timeout: float | None = None,
                     **image_params: Any) -> dict[str, Any]:
        """Add an image with ``url=upload://``, then send the file's bytes where the server says.

        ZStack answers AddImage(upload://) with the image (status Downloading) and an upload
        URL; the bytes then go there, and the image turns Ready once they are in. Returns the
        image inventory from AddImage.
        """
        reply = self.call("AddImage", job_timeout=job_timeout, name=name, url="upload://",
                          backupStorageUuids=list(backup_storage_uuids), format=format, **image_params)
        image: dict[str, Any] = reply["inventory"]
        target = upload_url(image) or self._upload_url_of_job(image["uuid"])
        if not target:
            raise ImgstoreError(UNIMPLEMENTED, "Not implemented or not supported",
                                f"the server gave no upload URL for image[uuid:{image['uuid']}]")
        self.put_file(target, path, image["uuid"], on_progress)
        return image

    def _upload_url_of_job(self, image_uuid: str) -> str | None:
        try:
            details = self.call("GetUploadImageJobDetails", imageId=image_uuid).get("existingJobDetails") or []
        except ImgstoreError:
            return None
        return next((d["imageUploadUrl"] for d in details if d.get("imageUploadUrl")), None)

    def put_file(self, url: str, path: Path, image_uuid: str,
                 on_progress: Callable[[int], None] | None = None, chunk_size: int = 1 << 20) -> None:
        """PUT a file's bytes to ``url`` (absolute, or relative to the server), streaming."""
        size = path.stat().st_size
        target = url if "://" in url else urljoin(self.url + "/", url)

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as f:
                while block := f.read(chunk_size):
                    yield block
                    if on_progress:
                        on_progress(len(block))

        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream",
                   "X-IMAGE-UUID": image_uuid, "X-IMAGE-SIZE": str(size)}
        if self.session:
            headers["Authorization"] = f"OAuth {self.session}"
        try:
            response = self._http.put(target, content=chunks(), headers=headers, timeout=None)
        except httpx.HTTPError as e:
            raise _connection_error(target, e) from None
        if response.status_code >= 300:
            raise ImgstoreError.from_response(response)

    def wait_image(self, image_uuid: str, timeout: float = 3600.0) -> dict[str, Any]:
        """Poll QueryImage until the image is Ready (returned) or failed (raised)."""
        deadline = time.monotonic() + timeout
        for delay in poll_delays():
            [image] = self.query("QueryImage", [f"uuid={image_uuid}"])["inventories"] or [None]
            if image is None or image.get("status") in ("Error", "Deleted"):
                raise ImgstoreError("SYS.1002", "Unable to create a resource",
                                    f"image[uuid:{image_uuid}] is {image['status'] if image else 'gone'}")
            if image.get("status") == "Ready":
                ready: dict[str, Any] = image
                return ready
            if time.monotonic() + delay > deadline:
                raise ImgstoreError(POLL_TIMEOUT, "timeout of polling API result",
                                    f"image[uuid:{image_uuid}] is still {image.get('status')}")
            time.sleep(delay)
        raise AssertionError("unreachable")


def upload_url(image: Mapping[str, Any]) -> str | None:
    """Where to send an upload:// image's bytes, as the AddImage reply gives it."""
    if image.get("uploadUrl"):
        return str(image["uploadUrl"])
    for ref in image.get("backupStorageRefs") or []:
        for key in ("uploadUrl", "imageUploadUrl"):
            if ref.get(key):
                return str(ref[key])
    url = str(image.get("url") or "")
    return url if url.startswith(("http://", "https://", "/")) else None


_MAGIC = ((0, b"QFI\xfb", "qcow2"), (0, b"KDMV", "vmdk"), (0x8001, b"CD001", "iso"))


def guess_format(path: Path) -> str:
    """qcow2, vmdk or iso from the file's magic bytes; raw otherwise."""
    with path.open("rb") as f:
        head = f.read(0x8006)
    return next((fmt for offset, magic, fmt in _MAGIC if head[offset:offset + len(magic)] == magic), "raw")


def tls_context(ca_file: str | Path | None = None) -> ssl.SSLContext:
    """How https servers are verified: against ``ca_file`` (else ``IMGSTORE_CA_FILE``)
    when given, a server with a certificate of its own (``imgstore serve
    --ssl-certfile``); else against the system's CAs. Never unverified: the API carries
    mon passwords."""
    ca = ca_file or os.environ.get(CA_FILE_ENV) or None
    return ssl.create_default_context(cafile=str(ca) if ca else None)


def _location(response: httpx.Response) -> str:
    try:
        return str(response.json()["location"])
    except (ValueError, KeyError, TypeError):
        raise ImgstoreError(HTTP_STATUS_ERROR, "the server did not return a polling location",
                            response.text[:500], status=202) from None


def _reply(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        raise ImgstoreError.from_response(response)
    if not response.content:
        return {}
    try:
        body = response.json()
    except ValueError:
        raise ImgstoreError(HTTP_STATUS_ERROR, "the server's reply is not JSON", response.text[:500],
                            status=200) from None
    return body if isinstance(body, dict) else {"value": body}


def _connection_error(url: str, e: httpx.HTTPError) -> ImgstoreError:
    return ImgstoreError(CONNECTION_ERROR, "Cannot make an HTTP request", f"{url}: {e or type(e).__name__}")


# ------------------------------------------------------------------ the saved session


@dataclasses.dataclass(frozen=True)
class SavedSession:
    url: str
    session: str
    account: str = "admin"
    ca_file: str | None = None  # login's --ca-file, kept for the commands after it


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/imgstore`` (``~/.config/imgstore`` when unset or relative)."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "imgstore"


def session_file() -> Path:
    return config_dir() / "session.json"


def save_session(saved: SavedSession) -> Path:
    """Write the session file 0600 in a 0700 directory, atomically."""
    path = session_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(dataclasses.asdict(saved), f)
    os.replace(tmp, path)
    return path


def load_session() -> SavedSession | None:
    try:
        data = json.loads(session_file().read_text())
        return SavedSession(url=data["url"], session=data["session"], account=data.get("account", "admin"),
                            ca_file=data.get("ca_file"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def forget_session() -> bool:
    try:
        session_file().unlink()
        return True
    except FileNotFoundError:
        return False


__all__ = ["ImgstoreClient", "ImgstoreError", "ParamError", "Request", "SavedSession", "build_request",
           "coerce_params", "config_dir", "forget_session", "guess_format", "hash_password", "load_session",
           "normalize_url", "poll_delays", "query_params", "save_session", "session_file", "upload_url"]
