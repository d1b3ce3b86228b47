"""Shared fixtures: the dev Ceph clusters, a real imgstore server, a logged-in client.

The clusters come from ``scripts/devcluster.sh`` (``scripts/test.sh`` starts ``c1`` and
``c2``); tests that need them are skipped, with the reason, when they are not running.
The server is a real ``imgstore serve`` process on loopback, so restarts and kills are
real too. Its database is a SQLite file in its data dir, or, with
``IMGSTORE_TEST_DB=postgresql``, a fresh PostgreSQL database of its own on the machine's
server (``IMGSTORE_TEST_PG``, default ``postgresql://postgres@127.0.0.1:5432/postgres``),
dropped at the end of the run.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pytest

from imgstore import memory
from tests import fakeceph, servers
from tests.forkserver import Forkserver
from tests.servers import ADMIN_PASSWORD, ROOT, Api, free_port, port_range  # noqa: F401 - tests import them from here

DEVCLUSTER = ROOT / "scripts" / "devcluster.sh"
#: ``scripts/test.sh --quick`` sets this (a directory): the clusters are the fake behind the
#: ``imgstore.ceph`` facade (tests/fakeceph) in every process the tests start (the servers,
#: the forkserver, the pinger children: its sitecustomize is on their PYTHONPATH)
FAKE_CEPH = os.environ.get("IMGSTORE_TEST_FAKE_CEPH", "")
if FAKE_CEPH:
    _site = str(ROOT / "tests" / "fakeceph" / "site")
    if _site not in os.environ.get("PYTHONPATH", "").split(os.pathsep):  # xdist's workers inherit it
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_site, os.environ.get("PYTHONPATH")) if p)


def _share_the_default_ssl_context() -> None:
    """httpx loads certifi's CAs into a new SSL context for every client it makes, even
    one that only speaks http:// (~28 ms of CPU); the suite makes thousands (a client a
    login, ``httpx.get``...), about a tenth of its workers' CPU. Clients made with the
    default ``verify=True`` share one context here (a context is safe to share); a test
    that verifies otherwise passes its own, which httpx uses as it is."""
    from httpx._transports import default as transports  # where HTTPTransport looks it up

    make = transports.create_ssl_context
    shared = make()

    def create_ssl_context(verify: Any = True, cert: Any = None, trust_env: bool = True) -> Any:
        if verify is True and cert is None and trust_env:
            return shared
        return make(verify, cert, trust_env)

    transports.create_ssl_context = create_ssl_context


_share_the_default_ssl_context()
TEST_DB = os.environ.get("IMGSTORE_TEST_DB", "sqlite")
PG_ADMIN_URL = os.environ.get("IMGSTORE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _module_rank(item: pytest.Item) -> int:
    """How early a module should start: the long ones first (the fuzzing, the browser, the
    Ceph-backed modules), the quick unit tests last to fill the gaps."""
    path = item.nodeid.split("::", 1)[0]
    if item.get_closest_marker("fuzz"):
        return 0
    if path.startswith("tests/e2e/"):
        return 1
    if item.get_closest_marker("ceph"):
        return 2
    return 4 if path.startswith("tests/unit/") else 3


@pytest.hookimpl(tryfirst=True)  # before ``-m "not serial"`` deselects the serial tests
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Long modules first. scripts/test.sh's workers take the modules (the fuzzing's parts
    one by one) in this order (``--dist loadscope --no-loadscope-reorder``) as each is free:
    a long module started last would keep one worker busy long after the other is done.
    A module's tests stay together and in their order (its module fixtures live once).

    With ``IMGSTORE_TEST_SERIAL_LIST`` set, the files holding tests marked ``serial`` are
    written there: scripts/test.sh's serial run afterwards collects only those files."""
    listing = os.environ.get("IMGSTORE_TEST_SERIAL_LIST")
    if listing and os.environ.get("PYTEST_XDIST_WORKER", "gw0") == "gw0":
        files = sorted({item.nodeid.split("::", 1)[0] for item in items if item.get_closest_marker("serial")})
        Path(listing).write_text("".join(f"{f}\n" for f in files))
    if FAKE_CEPH:  # scripts/test.sh --quick deselects these; a run by hand is told why
        skip = pytest.mark.skip(reason="needs the real dev clusters (real_ceph): IMGSTORE_TEST_FAKE_CEPH is set")
        for item in items:
            if item.get_closest_marker("real_ceph"):
                item.add_marker(skip)
    rank: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        rank[module] = min(rank.get(module, 9), _module_rank(item))
    items.sort(key=lambda item: rank[item.nodeid.split("::", 1)[0]])  # stable: order kept within


def pytest_collection_finish(session: pytest.Session) -> None:
    """The test process's garbage collector tuned as the server's (``imgstore.memory``):
    what collection loaded (modules, tests, fixtures' code) is frozen out of its passes and
    the young generation is collected every 50 000 allocations. With the defaults, its
    passes over a pytest process's objects stood out in ``perf`` of the quick loop."""
    memory.tune_garbage_collector()


@pytest.fixture
def anyio_backend() -> str:
    """``@pytest.mark.anyio`` tests run on asyncio, the loop the server runs on."""
    return "asyncio"


# ---------------------------------------------------------------- PostgreSQL

_PG_DATABASES: list[str] = []


def pg_unavailable() -> str | None:
    """Why PostgreSQL cannot be used for tests, or None when it can."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except Exception as e:
        return f"PostgreSQL at {PG_ADMIN_URL} is not reachable: {e}"


def create_pg_database(migrated: bool = False) -> str:
    """A fresh database on the test PostgreSQL, empty or (``migrated``) a copy of one this
    process migrated to head once; its URL. Dropped at the end of the run."""
    import psycopg
    from psycopg import sql

    name = f"imgstore_t_{uuid.uuid4().hex[:12]}"
    template = sql.SQL(" TEMPLATE {}").format(sql.Identifier(_pg_template())) if migrated else sql.SQL("")
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}{}").format(sql.Identifier(name), template))
    _PG_DATABASES.append(name)
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


# ---------------------------------------------------------------- databases at head
# A test server on a database of its own would run every migration at its start (~0.1 s of
# CPU and ~0.2 s of wall each, a few hundred times a run). Each pytest process migrates
# one SQLite file and one PostgreSQL database once, by the server's own code
# (imgstore.db.engine.migrate), and the servers it starts get copies: their start then
# finds the schema at head, as a restart does. Migrating at start stays covered by the
# migration tests (tests/unit/db) and by test_a_server_migrates_the_database_it_is_given.

_TEMPLATES: dict[str, str] = {}


def migrate_to_head(url: str) -> None:
    """Migrate the database at ``url`` as a server's start does (in a thread of its own:
    the caller may be inside an event loop)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from imgstore.config import Settings
    from imgstore.db.engine import create_engine, migrate

    async def run() -> None:
        engine = create_engine(Settings(db_url=url).database_url())
        try:
            await migrate(engine)
        finally:
            await engine.dispose()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def _pg_template() -> str:
    if "postgresql" not in _TEMPLATES:
        url = create_pg_database()
        migrate_to_head(url)
        _TEMPLATES["postgresql"] = url.rsplit("/", 1)[1]
    return _TEMPLATES["postgresql"]


def _sqlite_template() -> Path:
    """A SQLite database at head, made once per set of migrations and kept in the temporary
    directory for every later pytest process (each run's workers, the serial passes, the
    next run): a migration to head is a second of CPU, paid by every worker before."""
    if "sqlite" not in _TEMPLATES:
        migrations = ROOT / "imgstore" / "db" / "migrations"
        digest = hashlib.sha256()
        for path in sorted(migrations.rglob("*.py")):
            digest.update(path.relative_to(migrations).as_posix().encode() + b"\0" + path.read_bytes())
        path = Path(tempfile.gettempdir()) / f"imgstore-template-{digest.hexdigest()[:16]}.db"
        if not path.exists():
            fresh = Path(tempfile.mkdtemp(prefix="imgstore-template-")) / "imgstore.db"
            migrate_to_head(f"sqlite:///{fresh}")  # the engine's close leaves no -wal behind
            os.replace(fresh, path)  # whole or not there, whichever worker gets there first
            shutil.rmtree(fresh.parent, ignore_errors=True)
        _TEMPLATES["sqlite"] = str(path)
    return Path(_TEMPLATES["sqlite"])


def _sqlite_copy_at_head(data_dir: Path) -> None:
    """Put a SQLite database at head into ``data_dir`` (0600, as the server makes it)."""
    data = _sqlite_template().read_bytes()
    fd = os.open(data_dir / "imgstore.db", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def drop_pg_database(url: str) -> None:
    import psycopg
    from psycopg import sql

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    if name in _PG_DATABASES:
        _PG_DATABASES.remove(name)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the test PostgreSQL, dropped after the test; skipped when
    PostgreSQL is not reachable."""
    reason = pg_unavailable()
    if reason:
        pytest.skip(reason)
    url = create_pg_database()
    yield url
    drop_pg_database(url)


@pytest.fixture(scope="session", autouse=True)
def _drop_test_databases() -> Iterator[None]:
    yield
    for name in list(_PG_DATABASES):
        try:
            drop_pg_database(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}")
        except Exception as e:
            print(f"could not drop test database {name}: {e}", file=sys.stderr)


# ---------------------------------------------------------------- clusters


#: the ``ceph`` CLI commands tests send, as librados mon commands: the words that name the
#: command, then the names of its positional arguments (``*`` takes the rest as a list)
_MON_COMMANDS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("osd", "pool", "ls"): (),
    ("osd", "pool", "create"): ("pool", "pg_num"),
    ("osd", "pool", "application", "enable"): ("pool", "app"),
    ("osd", "pool", "rm"): ("pool", "pool2"),
    ("osd", "dump"): (),
    ("osd", "df"): (),
    ("auth", "ls"): (),
    ("auth", "get"): ("entity",),
    ("auth", "del"): ("entity",),
    ("auth", "get-or-create-key"): ("entity", "*caps"),
}


def mon_command(args: tuple[str, ...]) -> dict[str, object] | None:
    """``ceph`` CLI words as the JSON of a mon command, or None for a command not listed."""
    words, fmt = list(args), None
    if words[-2:] == ["-f", "json"]:
        words, fmt = words[:-2], "json"
    for prefix, names in _MON_COMMANDS.items():
        if tuple(words[:len(prefix)]) != prefix:
            continue
        cmd: dict[str, object] = {"prefix": " ".join(prefix)}
        rest = [w for w in words[len(prefix):] if not w.startswith("--")]
        for flag in (w for w in words[len(prefix):] if w.startswith("--")):
            cmd[flag[2:].replace("-", "_")] = True
        for name in names:
            if name.startswith("*"):
                cmd[name[1:]], rest = rest, []
            elif rest:
                cmd[name] = int(rest[0]) if name == "pg_num" else rest[0]
                rest = rest[1:]
        if rest:
            return None
        if fmt:
            cmd["format"] = fmt
        return cmd
    return None


@dataclass
class DevCluster:
    name: str
    env: dict[str, str]
    _rados: Any = field(default=None, repr=False)

    @property
    def mon_url(self) -> str:
        return self.env["MON_URL"]

    @property
    def fsid(self) -> str:
        return self.env["CEPH_FSID"]

    def mon_url_with(self, password: str | None = None, ssh_port: int | None = None,
                     mon_port: int | None = None) -> str:
        e = self.env
        return (
            f"{e['SSH_USER']}:{password or e['SSH_PASSWORD']}@127.0.0.1:"
            f"{ssh_port or e['SSH_PORT']}/?monPort={mon_port or e['CEPH_MON_PORT']}"
        )

    def _admin(self) -> Any:
        """One admin librados connection per cluster and process: a ``ceph`` CLI run costs a
        second of wall time and a quarter of CPU (a Python start and a mon session), and tests
        make hundreds of them (every pool fixture makes three)."""
        if self._rados is None:
            import rados

            r = rados.Rados(conffile=self.env["CEPH_CONF"],
                            conf={"client_mount_timeout": "10", "rados_mon_op_timeout": "30"})
            r.connect(timeout=10)
            self._rados = r
        return self._rados

    def ceph(self, *args: str, timeout: float = 30) -> str:
        """The admin ``ceph`` CLI against this cluster: the commands in ``_MON_COMMANDS`` go
        to the mon over this process's librados connection, the rest through the CLI."""
        cmd = mon_command(args)
        if cmd is not None:
            ret, out, err = self._admin().mon_command(json.dumps(cmd), b"", timeout=int(timeout))
            if ret != 0:
                raise RuntimeError(f"ceph {' '.join(args)}: {err.strip() or ret}")
            return out.decode()
        out = subprocess.run(
            ["ceph", "-c", self.env["CEPH_CONF"], "--connect-timeout", "10", *args],
            capture_output=True, text=True, timeout=timeout,
        )
        if out.returncode != 0:
            raise RuntimeError(f"ceph {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def ceph_json(self, *args: str) -> dict:
        return json.loads(self.ceph(*args, "-f", "json"))

    def rbd(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """The ``rbd`` CLI against this cluster, output captured."""
        return subprocess.run(["rbd", "-c", self.env["CEPH_CONF"], *args], capture_output=True, timeout=120)

    def images(self, pool: str) -> set[str]:
        """The images in ``pool`` (``rbd ls``)."""
        return set(self.rbd("ls", pool).stdout.decode().split())

    def image_bytes(self, pool: str, name: str) -> bytes:
        """Every byte of image ``pool/name`` (``rbd export``)."""
        out = self.rbd("export", f"{pool}/{name}", "-")
        assert out.returncode == 0, out.stderr
        return out.stdout

    def import_image(self, pool: str, name: str, path: Path) -> None:
        """A format-2 image ``pool/name`` holding the file's bytes (``rbd import``)."""
        out = self.rbd("import", "--image-format", "2", str(path), f"{pool}/{name}")
        assert out.returncode == 0, out.stderr

    def create_image(self, pool: str, name: str, size: int) -> None:
        """An empty image of ``size`` bytes (``rbd create``)."""
        out = self.rbd("create", "--size", f"{size}B", f"{pool}/{name}")
        assert out.returncode == 0, out.stderr

    def resize_image(self, pool: str, name: str, size: int) -> None:
        """Grow or shrink image ``pool/name`` to ``size`` bytes (``rbd resize``)."""
        out = self.rbd("resize", "--allow-shrink", "--size", f"{size}B", f"{pool}/{name}")
        assert out.returncode == 0, out.stderr

    def rados(self, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        """The ``rados`` CLI against this cluster, ``data`` on its stdin, output captured."""
        return subprocess.run(["rados", "-c", self.env["CEPH_CONF"], *args], input=data,
                              capture_output=True, timeout=60)

    def get_object(self, pool: str, name: str) -> bytes | None:
        """The RADOS object ``pool/name``, None when there is none (``rados get``)."""
        out = self.rados("-p", pool, "get", name, "-")
        return out.stdout if out.returncode == 0 else None

    def put_object(self, pool: str, name: str, data: bytes) -> None:
        """Write the RADOS object ``pool/name`` whole (``rados put``)."""
        out = self.rados("-p", pool, "put", name, "-", data=data)
        assert out.returncode == 0, out.stderr

    def pools(self) -> set[str]:
        return set(self.ceph("osd", "pool", "ls").split())

    def clients(self) -> set[str]:
        return {e["entity"] for e in self.ceph_json("auth", "ls")["auth_dump"]}

    def create_pool(self, name: str) -> str:
        self.ceph("osd", "pool", "create", name, "8")
        self.ceph("osd", "pool", "application", "enable", name, "rbd")
        return name

    def delete_pool(self, name: str) -> None:
        self.ceph("osd", "pool", "rm", name, name, "--yes-i-really-really-mean-it")

    def devcluster(self, *args: str) -> None:
        subprocess.run(["bash", str(DEVCLUSTER), *args, self.name], check=True, timeout=120,
                       stdout=subprocess.DEVNULL)


def _started_clusters() -> list[list[str]]:
    """``IMGSTORE_TEST_CLUSTERS`` as lanes: ``c1,c2`` is one lane, ``c1,c2;c1,c3`` two.
    scripts/test.sh starts these clusters; each pytest-xdist worker takes a lane of its own,
    so a test that stops a daemon of its ``c2`` never hits another worker's tests."""
    spec = os.environ.get("IMGSTORE_TEST_CLUSTERS", "")
    return [[n.strip() for n in lane.split(",") if n.strip()] for lane in spec.split(";") if lane.strip()]


def lane_cluster(role: int) -> str:
    """The name of this worker's cluster in ``role`` (0 = the fixture ``c1``, 1 = ``c2``):
    worker gwN takes lane N (modulo the lanes given); ``c1``/``c2`` without lanes."""
    default = f"c{role + 1}"
    lanes = _started_clusters()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    lane = lanes[index % len(lanes)] if lanes else []
    return lane[role] if role < len(lane) else default


def _unavailable(name: str, reason: str) -> None:
    """Skip a test whose cluster is not running, unless scripts/test.sh started it
    (``IMGSTORE_TEST_CLUSTERS``): then a missing cluster is a failure, never a silent skip."""
    if any(name in lane for lane in _started_clusters()):
        pytest.fail(f"dev cluster {name} was started for this run but {reason}")
    pytest.skip(reason)


class FakeDevCluster(DevCluster):
    """A fake cluster (tests/fakeceph) where a dev cluster would be: the same ``mon_url``,
    ``fsid``, pools, images and objects; no CLI and no daemons to stop."""

    @classmethod
    def make(cls, name: str) -> FakeDevCluster:
        facts = fakeceph.create_cluster(name, "fake-" + name)
        env = {"SSH_USER": facts["user"], "SSH_PASSWORD": facts["password"], "SSH_PORT": str(facts["ssh_port"]),
               "CEPH_MON_PORT": str(facts["mon_port"]), "CEPH_FSID": facts["fsid"]}
        env["MON_URL"] = (f"{env['SSH_USER']}:{env['SSH_PASSWORD']}@127.0.0.1:{env['SSH_PORT']}"
                          f"/?monPort={env['CEPH_MON_PORT']}")
        return cls(name, env)

    @property
    def _home(self) -> fakeceph.Home:
        return fakeceph.home(self.name)

    def _none(self, what: str) -> NotImplementedError:
        return NotImplementedError(f"the fake cluster {self.name} has no {what}: mark the test real_ceph")

    def ceph(self, *args: str, timeout: float = 30) -> str:
        raise self._none("ceph CLI")

    def rbd(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        raise self._none("rbd CLI")

    def rados(self, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        raise self._none("rados CLI")

    def devcluster(self, *args: str) -> None:
        raise self._none("daemons")

    def pools(self) -> set[str]:
        return self._home.pools()

    def clients(self) -> set[str]:
        return {f"client.{c}" for c in self._home.clients()}

    def create_pool(self, name: str) -> str:
        self._home.make_pool(name)
        return name

    def delete_pool(self, name: str) -> None:
        shutil.rmtree(self._home.pool(name))

    def images(self, pool: str) -> set[str]:
        return {p.name for p in self._home.images(pool).iterdir()}

    def image_bytes(self, pool: str, name: str) -> bytes:
        return (self._home.images(pool) / name).read_bytes()

    def import_image(self, pool: str, name: str, path: Path) -> None:
        shutil.copyfile(path, self._home.images(pool) / name)

    def create_image(self, pool: str, name: str, size: int) -> None:
        with (self._home.images(pool) / name).open("xb") as f:
            f.truncate(size)

    def resize_image(self, pool: str, name: str, size: int) -> None:
        os.truncate(self._home.images(pool) / name, size)

    def get_object(self, pool: str, name: str) -> bytes | None:
        path = self._home.objects(pool) / name
        return path.read_bytes() if path.exists() else None

    def put_object(self, pool: str, name: str, data: bytes) -> None:
        (self._home.objects(pool) / name).write_bytes(data)


def _cluster(name: str) -> DevCluster:
    if FAKE_CEPH:
        return FakeDevCluster.make(name)
    if not DEVCLUSTER.exists():
        _unavailable(name, "scripts/devcluster.sh is missing")
    out = subprocess.run(["bash", str(DEVCLUSTER), "env", name], capture_output=True, text=True)
    if out.returncode != 0:
        _unavailable(name, f"dev cluster {name} is not running (scripts/test.sh starts it): {out.stderr.strip()}")
    env = {}
    for line in out.stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            k, v = line[len("export "):].split("=", 1)
            env[k] = v.strip("'\"")
    status = subprocess.run(["bash", str(DEVCLUSTER), "status", name], capture_output=True)
    if status.returncode != 0:
        _unavailable(name, f"dev cluster {name} is not healthy")
    return DevCluster(name, env)


@pytest.fixture(scope="session")
def c1() -> DevCluster:
    """This worker's first cluster: ``c1`` unless ``IMGSTORE_TEST_CLUSTERS`` names lanes."""
    return _cluster(lane_cluster(0))


@pytest.fixture(scope="session")
def c2() -> DevCluster:
    """This worker's second cluster, the one fault tests stop daemons of (one per worker)."""
    return _cluster(lane_cluster(1))


@pytest.fixture
def pool(c1: DevCluster) -> Iterator[str]:
    """A fresh pool on c1, removed afterwards (with the images in it)."""
    name = c1.create_pool(f"t-{uuid.uuid4().hex[:10]}")
    yield name
    c1.delete_pool(name)


@pytest.fixture
def pool2(c2: DevCluster) -> Iterator[str]:
    """A fresh pool on c2, removed afterwards (with the images in it)."""
    name = c2.create_pool(f"t-{uuid.uuid4().hex[:10]}")
    yield name
    c2.delete_pool(name)


# ---------------------------------------------------------------- server

#: what every test server runs with, unless the test says otherwise
TEST_SERVER_ENV = {
    "IMGSTORE_CEPH_TIMEOUT": "5",
    "IMGSTORE_IMAGE_URL_ALLOW": "127.0.0.1,::1",  # tests serve images on loopback (point 5)
    "IMGSTORE_SSH_TIMEOUT": "5",
    "PYTHONFAULTHANDLER": "1",  # a server that crashes says where, in its log
}


_FORKSERVER = Forkserver()


def _at_head() -> bool:
    """Whether test servers get a database already at head (IMGSTORE_TEST_DB_AT_HEAD=0: no)."""
    return os.environ.get("IMGSTORE_TEST_DB_AT_HEAD", "1") != "0"


def pytest_sessionstart(session: pytest.Session) -> None:
    """A run that may start servers starts its forkserver at once (tests/forkserver.py): a
    lone pytest process for itself, pytest-xdist's controller for all its workers, before it
    starts them (xdist starts them in its own, last, ``pytest_sessionstart``)."""
    if hasattr(session.config, "workerinput"):
        return  # a worker: it connects to its controller's
    paths = [str(a) for a in session.config.args]
    if not paths or any(not p.startswith(("tests/unit", str(ROOT / "tests" / "unit"))) for p in paths):
        _FORKSERVER.prestart()


def pytest_unconfigure(config: pytest.Config) -> None:
    _FORKSERVER.close()


@dataclass
class Server(servers.Server):
    """A real ``imgstore serve`` (tests/servers.py) with the tests' settings and, on the
    PostgreSQL pass, a fresh database of its own (kept across restarts); forked from a warm
    interpreter (tests/forkserver.py) where it can be."""

    def start(self, timeout: float = 120, retried: bool = False) -> Server:
        self.env = {**TEST_SERVER_ENV, **self.env}
        given = {**os.environ, **self.env}.get("IMGSTORE_DB_URL")
        if TEST_DB == "postgresql" and not given:
            self.env["IMGSTORE_DB_URL"] = create_pg_database(migrated=_at_head())
        elif not given and _at_head() and not any(self.data_dir.glob("imgstore.db*")):
            self.data_dir.mkdir(parents=True, exist_ok=True)
            _sqlite_copy_at_head(self.data_dir)
        super().start(timeout, retried)
        return self

    @property
    def sqlite_path(self) -> Path | None:
        """The server's SQLite database file (imgstore.config's default), None when it
        was given a database URL (PostgreSQL)."""
        return None if {**os.environ, **self.env}.get("IMGSTORE_DB_URL") else self.data_dir / "imgstore.db"

    def spawn(self, cmd: list[str], env: dict[str, str], log: BinaryIO) -> servers.Process:
        log.flush()
        return _FORKSERVER.launch(cmd, env, Path(log.name)) or super().spawn(cmd, env, log)

    def drop_database(self) -> None:
        """Drop the PostgreSQL database made for this server, if one was (after stop)."""
        url = self.env.get("IMGSTORE_DB_URL", "")
        if url.rsplit("/", 1)[-1] in _PG_DATABASES:
            drop_pg_database(url)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("imgstore")).start()
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def _shared_server_outlives_the_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A shared server that died fails the test it died in, with the end of its log, and
    is started again: one error that says why, not every later test of the worker refused
    a connection (CI saw 23 such failures and no cause)."""
    yield
    if "server" not in request.fixturenames:
        return
    srv: Server = request.getfixturevalue("server")
    code = srv.proc.poll() if srv.proc else None
    if code is None:
        return
    log = srv.log()[-8000:]
    srv.start()
    pytest.fail(f"the shared server exited with {code} during this test; its log ends with:\n{log}",
                pytrace=False)


#: the admin session the ``api`` clients of a shared server use, by the server's url
_SHARED_SESSIONS: dict[str, str] = {}


@pytest.fixture
def api(server: Server) -> Iterator[Api]:
    """A logged-in client of its own; storages a test leaves behind are deleted after it.

    The tests on one shared server share its session while it stays valid (a login is
    30 ms of scrypt on the server, and most tests made one); a test that logs it out
    or lets it expire only makes the next one log in again."""
    shared = _SHARED_SESSIONS.get(server.url)
    client = shared and Api.resume(server.url, shared, verify=server.verify)
    if not client:
        client = server.login()
        _SHARED_SESSIONS[server.url] = client.session
    yield client
    for inv in client.storages():
        client.delete(f"/backup-storage/{inv['uuid']}")
    client.close()


@pytest.fixture
def zapi(api: Api) -> Iterator[Api]:
    """The logged-in client; zones a test leaves behind (and so their tags) are deleted after it."""
    yield api
    for zone in api.get("/zones").json()["inventories"]:
        api.delete(f"/zones/{zone['uuid']}")


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[Server]:
    """A server of the test's own, for restarts and kills."""
    srv = Server(tmp_path / "srv")
    srv.data_dir.mkdir()
    yield srv
    if srv.proc and srv.proc.poll() is None:
        try:
            api = srv.login()
            for inv in api.storages():
                api.delete(f"/backup-storage/{inv['uuid']}")
        except Exception:
            pass
    srv.stop()
    srv.drop_database()
    shutil.rmtree(srv.data_dir, ignore_errors=True)


@pytest.fixture
def tracked_server(fresh_server: Server) -> Server:
    """A server of the test's own whose tracker pings every second, Ceph bounded to 3 s."""
    fresh_server.env.update({"IMGSTORE_PING_INTERVAL": "1", "IMGSTORE_CEPH_TIMEOUT": "3"})
    return fresh_server.start()


def run_command(args: list[str], env: dict[str, str], input: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` of ``args`` in the checkout, output captured as text: the
    ``imgstore`` command (``python -m imgstore.cli.commands ...``) is forked from the warm
    interpreter where it can be (tests/forkserver.py), anything else runs as given."""
    done = _FORKSERVER.run(args, env, input, timeout)
    return done or subprocess.run(args, env=env, cwd=ROOT, input=input, capture_output=True, text=True,
                                  timeout=timeout)


def assert_error(r: httpx.Response, status: int, code: str, *words: str) -> dict:
    """Assert ``r`` is a ZStack error reply of ``status`` and ``code`` whose details say
    each of ``words``; the error object."""
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, r.text
    for w in words:
        assert w in err["details"], (w, err["details"])
    return err


def wait_for(predicate, timeout: float, every: float = 0.25):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns something truthy; that value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(every)
