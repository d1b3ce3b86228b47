"""Every route of the live ``/openapi.json``, fuzzed by schemathesis against a real server.

Routes are read from the running server's document, so a route added tomorrow is fuzzed
without touching this file. Each operation gets a bounded number of cases (derandomized,
so a run is repeatable), without a session and with one:

* without a session, a route that declares the ``OAuth`` security answers 401 ID.1001
  (404 SYS.1008 when the generated path leaves the route, 400 when the request carries
  U+0000, refused before anything reads it); every other route answers like any API;
* with a session, nothing answers 500, 502 or 504 (503 is ZStack's "the API ran and
  failed", e.g. BS.1500 for a mon on a closed port; 501 is SYS.1014, not implemented),
  every failure is ZStack's ErrorCode body, no body carries a stack trace, a password
  field, a password the case sent or a cephx key;
* the document says what the server enforces: every schemathesis check passes on its
  coverage cases (each boundary of each parameter, a missing one, and every method the
  document does not declare): a schema-valid request is never refused as invalid, a
  schema-violating one is never accepted, a 405 says ``Allow``, replies match (as
  ``schemathesis run -c all`` checks, with ZStack's jobs followed to their answer:
  :func:`conforms`); the fuzzed cases are held to the document's statuses, media types
  and reply schemas;
* a refused call (4xx/5xx, or a job that failed) leaves the storages, zones, tags and
  images exactly as they were.

**No traffic leaves the host.** Every URL and monUrl a case carries is rewritten to
127.0.0.1 on a closed port before it is sent, and the server runs under an audit hook
(``netguard/sitecustomize.py``) that refuses any connect or name lookup beyond loopback
and logs it; a logged attempt fails the case that caused it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from imgstore import errors
from imgstore.ceph.exceptions import MonUrlError
from imgstore.ceph.monurl import MonUrl
from tests.conftest import ADMIN_PASSWORD, Api, DevCluster, Server, create_pg_database, pg_unavailable

pytestmark = pytest.mark.fuzz

NETGUARD = Path(__file__).resolve().parent / "netguard"
CLOSED_PORT = 1  # nothing listens on 127.0.0.1:1: a connection is refused at once
SSH_SECRET = "fuzz-Ssh-pw-7Qx2v"  # the password of every parseable monUrl a case sends
SAFE_MON_URL = f"root:{SSH_SECRET}@127.0.0.1:{CLOSED_PORT}/?monPort={CLOSED_PORT}"
SAFE_URL = f"http://127.0.0.1:{CLOSED_PORT}/fuzz.qcow2"
CEPHX_KEY = re.compile(r"AQ[A-Za-z0-9+/]{38}==")
TRACE = ("Traceback", 'File "')
ERROR_CODE = re.compile(r"[A-Z]+\.[0-9]{4}")
#: each ErrorCode's HTTP status when a synchronous call answers it
ERROR_STATUS = {kind.code: kind.status for kind in vars(errors).values() if isinstance(kind, errors.ErrorKind)}

# cases per operation: enough to reach every branch the document describes, few enough
# that the whole run stays within a couple of minutes on two cores;
# IMGSTORE_FUZZ_SCALE=10 digs ten times deeper (by hand, not in the suite)
_SCALE = float(os.environ.get("IMGSTORE_FUZZ_SCALE", "1"))
EXAMPLES_WITHOUT_SESSION = max(1, round(6 * _SCALE))
EXAMPLES_POSITIVE = max(1, round(25 * _SCALE))
EXAMPLES_NEGATIVE = max(1, round(12 * _SCALE))
#: IMGSTORE_FUZZ_ONLY="PUT .*/actions" fuzzes only the operations whose "METHOD path"
#: matches (by hand, to dig into one route; the suite fuzzes them all)
_ONLY = os.environ.get("IMGSTORE_FUZZ_ONLY", "")
#: the fuzzing is cut in SHARDS parts (every SHARDS-th operation), each a test class of its
#: own (TestFuzzPart1...), so scripts/test.sh's workers share it: in one piece it kept one
#: worker busy minutes after the other had finished
SHARDS = 4
#: the ZStack resource type of what each query lists, for tags naming a real resource
RESOURCE_TYPES = {"/zstack/v1/backup-storage": "BackupStorageVO", "/zstack/v1/zones": "ZoneVO",
                  "/zstack/v1/images": "ImageVO"}

#: operation → how often each status came back: printed at the end (``pytest -s``)
STATUSES: defaultdict[str, Counter[int]] = defaultdict(Counter)


# ---------------------------------------------------------------- the server and its document


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own (the fuzz leaves zones and tags behind) under the network guard."""
    data_dir = tmp_path_factory.mktemp("fuzz")
    guard_log = data_dir / "netguard.log"
    guard_log.touch()
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(NETGUARD), os.environ.get("PYTHONPATH")])),
        "IMGSTORE_FUZZ_NETGUARD_LOG": str(guard_log),
        "IMGSTORE_SSH_TIMEOUT": "2",
        "IMGSTORE_CEPH_TIMEOUT": "2",
        "IMGSTORE_PING_INTERVAL": "3600",
        # the fuzz sends ~100 failing logins: each throttled one waited 1 s before its 429
        # (76 of the fuzz's 305 s); the 429 and its Retry-After stay, tests/security holds the delay
        "IMGSTORE_LOGIN_THROTTLE_DELAY": "0",
    }
    srv = Server(data_dir=data_dir, env=env).start()
    yield srv
    srv.stop()
    srv.drop_database()


@pytest.fixture(scope="module")
def document(fuzz_server: Server) -> dict[str, Any]:
    with httpx.Client(trust_env=False, timeout=120) as client:  # the first document takes seconds on a busy CPU
        r = client.get(f"{fuzz_server.url}/openapi.json")
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def schema(document: dict[str, Any]) -> schemathesis.BaseSchema:
    loaded = schemathesis.openapi.from_dict(document)
    # 503 is ZStack's "the API ran and failed" and 501 its SYS.1014, both documented
    # ErrorCode answers (check_answer holds them to that), not server errors
    loaded.config.checks.not_a_server_error.expected_statuses = ["2xx", "3xx", "4xx", "501", "503"]
    return loaded


@pytest.fixture(scope="module")
def world(fuzz_server: Server, document: dict[str, Any], request: pytest.FixtureRequest) -> Iterator[World]:
    """The fuzzed server's state; with a Ceph storage on the dev cluster c1 when it runs,
    so that the storage, mon and image routes meet a real resource too."""
    try:
        c1: DevCluster | None = request.getfixturevalue("c1")
    except pytest.skip.Exception:
        c1 = None
    pool = c1.create_pool(f"fuzz-{uuid.uuid4().hex[:8]}") if c1 else None
    w = World(fuzz_server, fuzz_server.login(), _query_paths(document), cluster=c1, pool=pool)
    yield w
    for inv in w.api.get("/backup-storage").json()["inventories"]:
        w.api.delete(f"/backup-storage/{inv['uuid']}", params={"deleteMode": "Enforcing"})
    if c1 and pool:
        c1.delete_pool(pool)
    w.api.close()
    w.http.close()
    if w.db is not None:
        w.db.close()


def _query_paths(document: dict[str, Any]) -> list[str]:
    """Every ``Query*`` API of the document without a path parameter: the state to watch."""
    return sorted(
        path for path, ops in document["paths"].items()
        if "{" not in path and str(ops.get("get", {}).get("summary", "")).startswith("Query")
    )


def _operations(schema: schemathesis.BaseSchema, shard: int) -> list[Any]:
    """Part ``shard`` of the document's operations (every SHARDS-th, so each part gets
    operations of every kind)."""
    ops = []
    for result in schema.get_all_operations():
        ops.append(result.ok())  # an operation schemathesis cannot read is a document bug
    assert len(ops) >= SHARDS, "the document lists (almost) no operation"
    return [op for op in ops[shard::SHARDS] if re.search(_ONLY, _label(op))]


@dataclass
class World:
    """What the fuzzed server holds, read through its own query APIs."""

    server: Server
    api: Api
    query_paths: list[str]
    cluster: DevCluster | None = None
    pool: str | None = None
    uuids: list[str] = field(default_factory=list)
    types: dict[str, str] = field(default_factory=dict)  # uuid → ZStack resource type
    last: dict[str, list[str]] | None = None  # the state, while no call may have changed it
    http: requests.Session = field(default_factory=requests.Session)
    #: the server's SQLite database, read-only, when it has one: has anything been committed?
    db: sqlite3.Connection | None = None
    last_version: int | None = None  # the database's data_version just before ``last`` was read

    def __post_init__(self) -> None:
        self.http.trust_env = False  # never through a proxy: the server is on loopback
        if self.server.sqlite_path is not None:
            self.db = sqlite3.connect(f"file:{self.server.sqlite_path}?mode=ro", uri=True, isolation_level=None)

    def data_version(self) -> int | None:
        """SQLite's count of the commits other connections made (``PRAGMA data_version``)."""
        return self.db.execute("PRAGMA data_version").fetchone()[0] if self.db is not None else None

    @property
    def session_header(self) -> dict[str, str]:
        return {"Authorization": self.api.headers["Authorization"]}

    def snapshot(self) -> dict[str, list[str]]:
        version = self.data_version()  # before the reads: a commit during them shows later
        state: dict[str, list[str]] = {}
        for path in self.query_paths:
            r = self.api.get(f"{self.server.url}{path}")
            assert r.status_code == 200, f"{path}: {r.status_code} {r.text[:500]}"
            state[path] = sorted(json.dumps(i, sort_keys=True) for i in r.json()["inventories"])
        inventories = [json.loads(i) for items in state.values() for i in items]
        mons = [m["monUuid"] for inv in inventories for m in inv.get("mons", [])]
        self.uuids = sorted({inv["uuid"] for inv in inventories} | set(mons))
        self.types = {json.loads(i)["uuid"]: RESOURCE_TYPES[path]
                      for path, items in state.items() if path in RESOURCE_TYPES for i in items}
        self.last, self.last_version = state, version
        return state

    def state(self) -> dict[str, list[str]]:
        return self.last if self.last is not None else self.snapshot()

    def check_unchanged(self, before: dict[str, list[str]]) -> None:
        """The state is ``before``. Read again only when something was committed since
        ``before`` was read (most refused calls commit nothing: reading every query API after
        each was ~40 % of the fuzzing's CPU); :meth:`check_unread` reads what this skipped."""
        if before is self.last and self.last_version is not None and self.data_version() == self.last_version:
            return
        after = self.snapshot()
        changed = {path: sorted(set(after[path]) ^ set(before[path]))
                   for path in before if after.get(path) != before[path]}
        assert not changed, f"a refused call changed the state: {json.dumps(changed)[:2000]}"

    def check_unread(self) -> None:
        """Read the state that :meth:`check_unchanged` took as unchanged (no commit): a
        refused call that changed what the query APIs answer without a commit shows here,
        at the end of its operation's cases."""
        if self.last is not None:
            self.last_version = None
            self.check_unchanged(self.last)

    @property
    def secrets(self) -> set[str]:
        """What must never come back: the dev cluster's ssh password, when it is used."""
        return {self.cluster.env["SSH_PASSWORD"]} if self.cluster else set()

    def seed(self) -> None:
        """A zone with a system tag and a user tag, and a Ceph storage on c1 when it runs,
        so that cases can name real resources."""
        if self.cluster and not self.api.get("/backup-storage").json()["inventories"]:
            r = self.api.add_ceph("fuzz-bs", [self.cluster.mon_url], poolName=self.pool)
            assert r.status_code == 200, r.text
        zones = self.api.get("/zones").json()["inventories"]
        if zones:
            zone = zones[0]["uuid"]
        else:
            r = self.api.post("/zones", json={"params": {"name": "fuzz-zone"}})
            assert r.status_code == 200, r.text
            zone = r.json()["inventory"]["uuid"]
        for kind in ("system-tags", "user-tags"):
            if not self.api.get(f"/{kind}", params={"q": f"resourceUuid={zone}"}).json()["inventories"]:
                r = self.api.post(f"/{kind}", json={
                    "params": {"resourceType": "ZoneVO", "resourceUuid": zone, "tag": f"fuzz::{kind}"}})
                assert r.status_code == 200, r.text
        self.snapshot()

    def after(self, case: Any, out: Outcome, before: dict[str, list[str]]) -> None:
        """A refused call (or job) changed nothing; a successful write may have."""
        if out.final_status >= 300:
            self.check_unchanged(before)
        elif case.method not in ("GET", "HEAD"):
            self.last = None

    def guard_log(self) -> str:
        return (self.server.data_dir / "netguard.log").read_text()


# ---------------------------------------------------------------- making a case safe to send


def _safe_mon_url(text: Any, index: int = 0) -> Any:
    """A parseable monUrl, moved to a loopback address on port 1 with the test's password:
    127.0.0.<2 + index>, so that the mons of one case stay apart, and apart from the dev
    cluster's (127.0.0.1), as the schema-valid urls were. Anything the server cannot parse
    is refused before any connection, so it goes as generated."""
    if not isinstance(text, str):
        return text
    try:
        mon = MonUrl.parse(text)
    except MonUrlError:
        return text
    host = f"127.0.0.{2 + index % 250}"
    rebuilt = f"{mon.username}:{SSH_SECRET}@{host}:{CLOSED_PORT}/?monPort={CLOSED_PORT}"
    try:
        if MonUrl.parse(rebuilt).hostname == host:
            return rebuilt
    except MonUrlError:
        pass
    return SAFE_MON_URL


def _safe_url(text: str) -> str:
    """A URL with a host, moved to 127.0.0.1:1 (scheme and path kept)."""
    try:
        parts = urlsplit(text)
        if not parts.netloc:
            return text
        return parts._replace(netloc=f"127.0.0.1:{CLOSED_PORT}").geturl()
    except ValueError:
        return SAFE_URL


def _make_safe(value: Any, key: str = "") -> Any:
    """``value`` with every host it names replaced by loopback on a closed port."""
    if isinstance(value, dict):
        return {k: _make_safe(v, k) for k, v in value.items()}
    if isinstance(value, list):
        if key == "monUrls":
            return [_safe_mon_url(v, i) for i, v in enumerate(value)]
        return [_make_safe(v, key) for v in value]
    if key == "hostname" and isinstance(value, str):
        return "127.0.0.1"
    if key == "sshPassword" and isinstance(value, str):
        return SSH_SECRET
    if key in ("sshPort", "monPort") and isinstance(value, int) and not isinstance(value, bool):
        return CLOSED_PORT
    if isinstance(value, str) and ("://" in value or value.startswith("//")):
        return _safe_url(value)
    return value


def _name_real_resources(case: Any, data: st.DataObject, world: World) -> bool:
    """Half of the uuids a case sends (path, body ``*Uuid``/``*Uuids``) name real resources;
    whether any was replaced (a negative case's bad uuid may then be a good one).

    What is drawn never depends on the server's state (Hypothesis replays a failing case
    and must draw the same things): an index, taken modulo what exists at the time."""
    uuids = world.uuids
    before = json.dumps([case.path_parameters, case.body], sort_keys=True, default=str)

    def real(label: str) -> str | None:
        use, index = data.draw(st.booleans(), label=label), data.draw(st.integers(0, 1 << 16))
        return uuids[index % len(uuids)] if use and uuids else None

    for name in list(case.path_parameters or {}):
        case.path_parameters[name] = real(f"real {name}") or case.path_parameters[name]
    if isinstance(case.body, dict):
        for params in [case.body, *[v for v in case.body.values() if isinstance(v, dict)]]:
            for name, value in list(params.items()):
                if name == "resourceUuid" and "resourceType" not in params:
                    continue  # the uuid a create gives its resource: a taken one is refused
                if name.endswith("Uuid") and isinstance(value, str) and (known := real(f"real {name}")):
                    params[name] = known
                    if name == "resourceUuid" and "resourceType" in params:  # a tag on it
                        params["resourceType"] = world.types.get(known, params["resourceType"])
                elif name.endswith("Uuids") and isinstance(value, list) and (known := real(f"real {name}")):
                    params[name] = [known]
    return json.dumps([case.path_parameters, case.body], sort_keys=True, default=str) != before


# ---------------------------------------------------------------- what every answer must be


def _request_secrets(body: Any, key: str = "") -> set[str]:
    """Passwords the case sent (long enough that finding one in a reply means a leak)."""
    found: set[str] = set()
    if isinstance(body, dict):
        for k, v in body.items():
            found |= _request_secrets(v, k)
    elif isinstance(body, list):
        for v in body:
            found |= _request_secrets(v, key)
    elif isinstance(body, str) and "password" in key.lower() and len(body) >= 8 and len(set(body)) >= 4:
        found.add(body)
    return found


def _keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _keys(v)
    elif isinstance(value, list):
        for v in value:
            yield from _keys(v)


def check_answer(method: str, status: int, text: str, secrets: set[str]) -> Any:
    """The checks every answer passes, whatever the route; the decoded body."""
    assert status != 500 and status not in (502, 504), f"server error {status}: {text[:1000]}"
    for marker in TRACE:
        assert marker not in text, f"a stack trace in the reply: {text[:2000]}"
    for secret in {SSH_SECRET, ADMIN_PASSWORD, hashlib.sha512(ADMIN_PASSWORD.encode()).hexdigest()} | secrets:
        assert secret not in text, f"a secret ({secret[:3]}...) in the reply: {text[:1000]}"
    assert not CEPHX_KEY.search(text), f"a cephx key in the reply: {text[:1000]}"
    if method == "HEAD" or not text:
        return None
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if body is not None:
        leaked = [k for k in _keys(body) if "password" in k.lower()]
        assert not leaked, f"a password field {leaked} in the reply: {text[:1000]}"
    if status >= 400:
        assert isinstance(body, dict) and isinstance(body.get("error"), dict), (
            f"{status} without a ZStack ErrorCode body: {text[:1000]}")
        error = body["error"]
        assert ERROR_CODE.fullmatch(str(error.get("code"))), f"bad error code: {error}"
        assert isinstance(error.get("description"), str) and isinstance(error.get("details"), str), error
        if status >= 500:
            assert status in (501, 503), f"{status} is not a failure ZStack answers: {error}"
            assert status != 501 or error["code"] == "SYS.1014", error
    return body


# ---------------------------------------------------------------- one case, sent and judged


@dataclass
class Outcome:
    status: int
    text: str
    final_status: int  # a job's own answer when the call was accepted as one
    response: Any  # schemathesis's, for the document checks
    rewritten: bool = False  # _make_safe changed what was generated (hosts, passwords, ports)
    job_answer: Any = None  # the poll's final response, when the call ran as a job


def send(world: World, case: Any, headers: dict[str, str]) -> Outcome:
    """Send ``case`` (made safe first) and, when it was accepted as a job, poll the job."""
    _fresh_uuids(case)
    generated = json.dumps([case.body, case.query], sort_keys=True, default=str)
    case.body = _make_safe(case.body) if case.body is not None else case.body
    if case.query:
        case.query = _make_safe(case.query)
    rewritten = json.dumps([case.body, case.query], sort_keys=True, default=str) != generated
    guard_before = len(world.guard_log())
    response = case.call(base_url=world.server.url, session=world.http, headers=headers,
                         allow_redirects=False, timeout=60)
    status, text = response.status_code, response.text
    final, job_answer = status, None
    if status == 202 and text:
        location = json.loads(text).get("location", "")
        if location:
            job_answer = _poll(world, location)
            final = job_answer.status_code
    blocked = world.guard_log()[guard_before:]
    assert not blocked, f"the server tried to leave loopback:\n{blocked}"
    if 300 <= status < 400:
        location = response.headers.get("location", "")
        assert location.startswith(("/", world.server.url)), f"redirect off the server: {location}"
    STATUSES[f"{case.method} {case.path}"][final] += 1
    return Outcome(status, text, final, response, rewritten, job_answer)


def _fresh_uuids(case: Any) -> None:
    """A valid X-Job-UUID, or a valid uuid a create gives its resource, made one never
    taken: a taken one is refused (400, as in ZStack), which no document can foresee."""
    job = next((k for k in case.headers or {} if k.lower() == "x-job-uuid"), None)
    if job and re.fullmatch(r"[0-9a-fA-F]{32}", str(case.headers[job])):
        case.headers[job] = uuid.uuid4().hex
    params = case.body.get("params") if isinstance(case.body, dict) else None
    if isinstance(params, dict) and "resourceType" not in params \
            and re.fullmatch(r"[0-9a-f]{32}", str(params.get("resourceUuid"))):
        params["resourceUuid"] = uuid.uuid4().hex


def _poll(world: World, location: str) -> requests.Response:
    assert location.startswith(f"{world.server.url}/zstack/v1/api-jobs/"), location
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = world.http.get(location, timeout=10)
        if r.status_code != 202:
            check_answer("GET", r.status_code, r.text, world.secrets)
            return r
        time.sleep(0.05)
    raise AssertionError(f"job {location} still running after 60 s")


def _holds_nul(case: Any) -> bool:
    """Whether the case sends U+0000 anywhere (path, query, body)."""

    def walk(value: Any) -> bool:
        if isinstance(value, str):
            return "\x00" in value
        if isinstance(value, dict):
            return any(walk(k) or walk(v) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return any(walk(v) for v in value)
        return False

    return walk([case.path_parameters, case.query, case.body])


def _describe(case: Any) -> str:
    try:
        return case.as_curl_command()
    except Exception:
        return f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r}"


def _fuzz(op: Any, mode: GenerationMode, examples: int, one_case) -> None:  # type: ignore[no-untyped-def]
    strategy = op.as_strategy(generation_mode=mode)

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
              print_blob=False)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        one_case(data.draw(strategy, label="case"), data)

    try:
        run()
    except Unsatisfiable:
        # nothing of the operation can be made invalid (a lone string path parameter)
        assert mode is GenerationMode.NEGATIVE, f"no valid case of {_label(op)} could be generated"


def _label(op: Any) -> str:
    return f"{op.method.upper()} {op.path}"


# ---------------------------------------------------------------- the tests


def test_document_describes_every_api_route(document: dict[str, Any]) -> None:
    """Errors are ErrorCodes (never FastAPI's 422), session routes say so, and the loose
    ZStack formats (action bodies, query strings) are spelled out."""
    error_ref = "#/components/schemas/ErrorReply"
    problems = []
    ids = Counter(op.get("operationId") for ops in document["paths"].values() for op in ops.values())
    problems += [f"operationId {name} names {n} operations" for name, n in ids.items() if n > 1]
    for path, ops in document["paths"].items():
        if not path.startswith("/zstack/v1/"):
            continue
        for method, op in ops.items():
            label = f"{method.upper()} {path}"
            responses = op["responses"]
            if "422" in responses:
                problems.append(f"{label}: documents FastAPI's 422, which imgstore never sends")
            for status in ("400", "404", "default"):
                schema = responses.get(status, {}).get("content", {}).get("application/json", {}).get("schema")
                if schema != {"$ref": error_ref}:
                    problems.append(f"{label}: {status} is not the ErrorCode body")
            if op.get("security") and "401" not in responses:
                problems.append(f"{label}: needs a session but does not document 401")
            if path.endswith("/actions") and method == "put":
                body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
                if not body.get("oneOf") and "$ref" not in body:  # a one-action route has its model
                    problems.append(f"{label}: the action body is neither a model nor a oneOf of its actions")
            if method == "get" and str(op.get("summary", "")).startswith("Query"):
                names = {p["name"] for p in op.get("parameters", [])}
                missing = {"q", "limit", "start", "count", "replyWithCount", "sort", "fields"} - names
                if missing:
                    problems.append(f"{label}: query parameters {sorted(missing)} are not documented")
    assert not problems, "\n".join(problems)


def routes_answer_401_without_a_session(schema, world: World, subtests, shard: int) -> None:  # type: ignore[no-untyped-def]
    """No session, a made-up one, or a malformed header: every route behind a session
    refuses with ID.1001 and changes nothing; the public routes stay well-behaved."""
    world.seed()
    headers_choices = st.sampled_from([
        {}, {"Authorization": "OAuth 0123456789abcdef0123456789abcdef"},
        {"Authorization": "Bearer x"}, {"Authorization": "OAuth "},
    ])
    for op in _operations(schema, shard):
        secured = bool(op.definition.raw.get("security"))

        def one_case(case, data, secured=secured) -> None:  # type: ignore[no-untyped-def]
            if case.headers:
                case.headers.pop("Authorization", None)
            headers = data.draw(headers_choices, label="authorization")
            before = world.state()
            out = send(world, case, headers)
            try:
                check_answer(case.method, out.status, out.text, _request_secrets(case.body) | world.secrets)
                if secured:
                    body = json.loads(out.text) if case.method != "HEAD" else None
                    if out.status == 404 and body and body["error"]["code"] == "SYS.1008":
                        pass  # the generated path left the route: no API was reached
                    elif out.status == 400 and _holds_nul(case) and (body is None or "U+0000" in out.text):
                        pass  # refused before anything reads it (deps.refuse_nul: the URL)
                    elif out.status == 202 and out.final_status == 503:
                        pass  # asked for a job: refused as a failed one (api/refused_jobs.py)
                    else:
                        assert out.status == 401, f"{out.status} without a session: {out.text[:500]}"
                        assert body is None or body["error"]["code"] == "ID.1001", out.text[:500]
                world.after(case, out, before)
            except AssertionError as e:
                raise AssertionError(f"{e}\n\n{_describe(case)}") from None

        with subtests.test(msg=_label(op)):
            _fuzz(op, GenerationMode.POSITIVE, EXAMPLES_WITHOUT_SESSION, one_case)
            world.check_unread()


def judge_with_session(world: World, case: Any, renamed: bool = False) -> None:
    """Send ``case`` with the session and hold its answer to everything: no server error,
    no trace, no secret (:func:`check_answer`), the session honoured, a refusal changing
    nothing, and every schemathesis check (:func:`conforms`). AssertionError with the case."""
    drops_session = _drops_session(case)
    if case.headers:
        case.headers.pop("Authorization", None)  # a made-up one: the session goes in its place
    before = world.state()
    out = send(world, case, {} if drops_session else world.session_header)
    try:
        check_answer(case.method, out.status, out.text, _request_secrets(case.body) | world.secrets)
        if "Authorization" not in out.response.request.headers:
            # schemathesis's own negative case, the session left out: refused, never served
            # (with what, the checks say: ID.1001, or SYS.1007 when the body cannot be read)
            assert out.final_status >= 400, f"served without a session: {out.text[:500]}"
        elif out.status == 401 and not case.path.endswith("/renew"):  # renew: the path's session
            assert "ID.1000" in out.text, f"the session was refused: {out.text[:500]}"
        world.after(case, out, before)
        conforms(case, out, renamed)
    except (AssertionError, FailureGroup) as e:  # ours, and schemathesis's (a BaseExceptionGroup)
        raise AssertionError(f"{e}\n\n{_describe(case)}") from None


def _drops_session(case: Any) -> bool:
    """A negative case of a route behind the session whose headers leave it out: it is
    sent without one (adding the session would undo the case, and the checks would then
    hold the server to refuse a valid request)."""
    headers = (case.meta.components if case.meta else {}).get(ParameterLocation.HEADER)
    return (headers is not None and headers.mode.is_negative and bool(case.operation.definition.raw.get("security"))
            and "Authorization" not in (case.headers or {}))


def routes_survive_fuzzing_with_a_session(schema, world: World, subtests, shard: int) -> None:  # type: ignore[no-untyped-def]
    """Valid and invalid cases of every route: no 500, ErrorCode failures, no trace, no
    secret, a refused call changes nothing, and every schemathesis check passes (a case
    the document calls valid is served, one it calls invalid refused)."""
    for op in _operations(schema, shard):
        for mode, examples in ((GenerationMode.POSITIVE, EXAMPLES_POSITIVE),
                               (GenerationMode.NEGATIVE, EXAMPLES_NEGATIVE)):
            world.seed()

            def one_case(case, data) -> None:  # type: ignore[no-untyped-def]
                renamed = _name_real_resources(case, data, world)
                judge_with_session(world, case, renamed)

            with subtests.test(msg=f"{_label(op)} [{mode.value}]"):
                _fuzz(op, mode, examples, one_case)
                world.check_unread()
    assert not world.guard_log(), world.guard_log()
    for label, counts in sorted(STATUSES.items()):
        print(f"{label}: {dict(sorted(counts.items()))}")


def conforms(case: Any, out: Outcome, renamed: bool = False) -> None:
    """Every schemathesis check, as ``schemathesis run -c all`` runs them (503 and 501 are
    ZStack's answers: the ``schema`` fixture says so). A negative case that _make_safe
    rewrote may have become valid (a bad monUrl is now 127.0.0.2): what was sent is not
    what was generated, so it is not held to be refused; nor is one whose uuids
    ``_name_real_resources`` replaced by real ones (``renamed``: a malformed uuid may have
    been its one fault)."""
    excluded: list[Any] = []
    if "fields" in (case.query or {}):  # fields= trims the inventories on purpose
        excluded.append(response_schema_conformance)
    if out.rewritten or renamed or _only_unknown_headers(case):
        excluded.append(negative_data_rejection)
    if out.job_answer is None:
        case.validate_response(out.response, excluded_checks=excluded)
        return
    case.validate_response(out.response, checks=[  # 202: run as a job, as documented
        status_code_conformance, content_type_conformance, response_schema_conformance])
    # ignored_auth re-sends the request: its answer is the 202 of a new job, not this one's
    case.validate_response(_as_answered(out), excluded_checks=[*excluded, ignored_auth])


def _only_unknown_headers(case: Any) -> bool:
    """A negative case whose one fault is a header the document does not name: every
    HTTP server ignores headers it does not know, and no document can forbid them."""
    data = getattr(getattr(case.meta, "phase", None), "data", None)
    description = str(getattr(data, "description", "")).lower()
    location = str(getattr(data, "parameter_location", "")).lower()
    return "unexpected properties" in description and "header" in location


def _as_answered(out: Outcome) -> Response:
    """A job's final answer as the answer of the call itself, which it is (ZStack answers
    an async API's refusal on the poll, as 503 with the ErrorCode): a failed job answers
    the status its ErrorCode has in a synchronous call (SYS.1007 400, ID.1001 401, SYS.1003
    404...), so that the checks can tell a refused request from an accepted one."""
    polled = out.job_answer
    status = polled.status_code
    if status == 503:
        status = ERROR_STATUS.get(polled.json().get("error", {}).get("code"), status)
    headers = {k: [v] for k, v in polled.headers.items()}
    return Response(status, headers, polled.content, out.response.request, polled.elapsed.total_seconds(),
                    verify=False)


def routes_keep_to_the_document(schema, world: World, subtests, shard: int) -> None:  # type: ignore[no-untyped-def]
    """schemathesis's coverage cases of every route (the boundaries of each parameter, a
    missing one, each undeclared method), with a session: every check passes, so a
    request the document calls valid is served and one it calls invalid is refused."""
    world.seed()
    for op in _operations(schema, shard):
        config = schema.config.generation_for(operation=op, phase="coverage")
        cases = schema.iter_coverage_cases(op, generation_modes=list(GenerationMode), generation_config=config)
        failures = []
        for case in cases:
            try:
                judge_with_session(world, case)
            except AssertionError as e:
                failures.append(str(e))
        try:
            world.check_unread()
        except AssertionError as e:
            failures.append(f"after its cases: {e}")
        with subtests.test(msg=_label(op)):
            assert not failures, f"{len(failures)} cases failed; the first:\n" + "\n\n".join(failures[:3])


class FuzzPart:
    """One part of the fuzzing: every SHARDS-th operation, from ``shard`` on. xdist's
    ``--dist loadscope`` (scripts/test.sh) hands each ``TestFuzzPartN`` class to whichever
    worker is free, so the parts run side by side (the module fixtures, the fuzzed server
    among them, are made once on each worker that runs a part)."""

    shard = 0

    def test_routes_answer_401_without_a_session(self, schema, world: World, subtests) -> None:  # type: ignore[no-untyped-def]
        routes_answer_401_without_a_session(schema, world, subtests, self.shard)

    def test_routes_survive_fuzzing_with_a_session(self, schema, world: World, subtests) -> None:  # type: ignore[no-untyped-def]
        routes_survive_fuzzing_with_a_session(schema, world, subtests, self.shard)

    def test_routes_keep_to_the_document(self, schema, world: World, subtests) -> None:  # type: ignore[no-untyped-def]
        routes_keep_to_the_document(schema, world, subtests, self.shard)


class TestFuzzPart1(FuzzPart):
    shard = 0


class TestFuzzPart2(FuzzPart):
    shard = 1


class TestFuzzPart3(FuzzPart):
    shard = 2


class TestFuzzPart4(FuzzPart):
    shard = 3


assert len(FuzzPart.__subclasses__()) == SHARDS


# ---------------------------------------------------------------- regressions the fuzz run found


@pytest.fixture(params=["default-db", "postgresql"])
def any_db_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A server on the suite's database, and one on PostgreSQL (skipped without one)."""
    env: dict[str, str] = {}
    if request.param == "postgresql":
        reason = pg_unavailable()
        if reason:
            pytest.skip(reason)
        env["IMGSTORE_DB_URL"] = create_pg_database()
    srv = Server(data_dir=tmp_path, env=env).start()
    yield srv
    srv.stop()
    srv.drop_database()


def _with_nul(schema: dict[str, Any], document: dict[str, Any]) -> Any:
    """A value of ``schema`` with every property it names given, each string holding
    U+0000 (an enum's strings aside)."""
    while True:
        if "$ref" in schema:
            schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        elif "oneOf" in schema or "anyOf" in schema:
            schema = next(c for c in schema.get("oneOf") or schema["anyOf"] if c.get("type") != "null")
        else:
            break
    kind = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if kind == "object" or "properties" in schema:
        return {k: _with_nul(v, document) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        return [_with_nul(schema.get("items", {"type": "string"}), document)]
    return {"string": "a\x00b", "integer": 60, "number": 60, "boolean": True}.get(kind)


def test_a_key_no_api_names_is_ignored_whatever_it_holds(server: Server) -> None:
    """As ZStack's JSON reading ignores a key its message has no field for, imgstore does,
    even one holding U+0000 (the document leaves such keys open: a client generated from
    it may send them)."""
    api = server.login()
    r = api.post("/zones", json={"params": {"name": "z", "junk\x00": ["\x00", {"a": ["\x00"]}]},
                                 "requestIp": "\x00", "x": [["\x00"]]})
    assert r.status_code == 200, r.text
    zone = r.json()["inventory"]
    assert zone["name"] == "z"
    r = api.put(f"/zones/{zone['uuid']}/actions", json={"updateZone": {"name": "y", "junk": ["\x00"]}, "k": "\x00"})
    assert r.status_code == 200 and r.json()["inventory"]["name"] == "y", r.text
    r = api.put(f"/zones/{zone['uuid']}/actions", json={"updateZone": {"name": "y"}, "systemTags": ["a\x00"]})
    assert r.status_code == 400 and "field[systemTags] holds the character U+0000" in r.text, r.text


def test_no_api_takes_the_nul_character(any_db_server: Server) -> None:
    """U+0000 in a path, a query or a field of a JSON body reached PostgreSQL, which cannot
    store it in text: 500 on nearly every route. Every route refuses it with SYS.1007 now,
    naming where it was."""
    api = any_db_server.login()
    with httpx.Client(trust_env=False, timeout=120) as client:  # the first document takes seconds on a busy CPU
        document = client.get(f"{any_db_server.url}/openapi.json").json()
    zone = api.post("/zones", json={"params": {"name": "z"}}).json()["inventory"]["uuid"]
    before = api.get("/zones").json()["inventories"]
    tried = 0
    for path, ops in document["paths"].items():
        if not path.startswith("/zstack/v1/"):
            continue
        for method, op in ops.items():
            names = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
            url = path.format(**{n: "a%00b" for n in names})
            query = {"q": "name=a\x00b"} if not names and method == "get" else None
            body = None
            json_body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if json_body is not None:  # the path's own U+0000 would be refused first
                url = path.format(**{n: "0123456789abcdef0123456789abcdef" for n in names})
                body = _with_nul(json_body["schema"], document)
            if not names and query is None and body is None:
                continue
            r = api.request(method.upper(), f"{any_db_server.url}{url}", params=query, json=body)
            assert r.status_code == 400, f"{method.upper()} {url} {body}: {r.status_code} {r.text[:300]}"
            assert method == "head" or "U+0000" in r.json()["error"]["details"], r.text
            tried += 1
    r = api.put(f"/zones/{zone}/actions", json={"updateZone": {"name": "a\x00b"}})
    assert r.status_code == 400 and "field[updateZone.name] holds the character U+0000" in r.text, r.text
    assert api.get("/zones").json()["inventories"] == before
    assert tried > 20
    assert '"ERROR"' not in any_db_server.log()
