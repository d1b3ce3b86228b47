"""Starting a real ``imgstore serve`` on loopback and logging into it: the one way, for the
tests (``tests/conftest.py``'s fixtures) and the benchmarks (``scripts/bench_*.py`` put the
checkout on ``sys.path`` and import this module).

A server is a real process, so restarts and kills are real too; it is ready when it answers
an unauthenticated call, and a start that lost its port to another process between
``free_port()`` and bind is retried once on another port. Its database is a SQLite file in
its data dir unless the caller sets ``IMGSTORE_DB_URL`` (``tests/conftest.py`` does for the
PostgreSQL pass).
"""
from __future__ import annotations

import hashlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

import httpx

ROOT = Path(__file__).resolve().parents[1]
ADMIN_PASSWORD = "test-admin-password"
READY_PATH = "/zstack/v1/accounts/sessions/x/valid"  # answers 200 without a session


def port_range() -> range:
    """Where this process looks for free ports. scripts/test.sh gives each pass a base
    (``IMGSTORE_TEST_PORT_BASE``) and each xdist worker of it takes its own 1000 ports above it:
    two processes scanning the same ports could both pick one before either binds it, and a
    test would then talk to another test's server. Without a base (a bench, a test run by
    hand): from a point that depends on the pid, below the ephemeral ports (32768)."""
    base = os.environ.get("IMGSTORE_TEST_PORT_BASE")
    if not base:
        return range(21000 + os.getpid() % 5000, 32000)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    start = int(base) + 1000 * (int(worker[2:]) if worker[2:].isdigit() else 0)
    return range(start, start + 1000)


def free_port(ports: range | None = None) -> int:
    """A port nobody listens on at 127.0.0.1, from ``ports`` (default :func:`port_range`)."""
    ports = ports or port_range()
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError(f"no free port in {ports}")


def password_digest(password: str) -> str:
    """What ZStack clients send as the password: its SHA-512, hex."""
    return hashlib.sha512(password.encode()).hexdigest()


class Process(Protocol):
    """What a test or bench uses of a server's process: ``subprocess.Popen``'s surface
    (tests/forkserver.py's ``ForkedProcess`` has it too)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


@dataclass
class Server:
    """A real ``imgstore serve`` process on 127.0.0.1.

    ``env`` is added to this process's environment (it wins over the defaults below);
    ``args`` are more ``serve`` options (``--ssl-certfile``...: the server then speaks https,
    checked against ``ca_file``); ``log_level`` None keeps the server's default."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    password: str = ADMIN_PASSWORD
    log_level: str | None = None
    ca_file: Path | None = None
    proc: Process | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ca_file else 'http'}://127.0.0.1:{self.port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else True

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the server was not started"
        return self.proc.pid

    def start(self, timeout: float = 120, retried: bool = False) -> Server:
        """Start the process and return once it answers; RuntimeError with the end of its
        log when it exits or does not answer within ``timeout`` seconds (generous: on a
        loaded 2-core machine the imports alone have taken 30 s)."""
        env = {**os.environ, "IMGSTORE_DATA_DIR": str(self.data_dir),
               "IMGSTORE_ADMIN_PASSWORD": self.password, **self.env}
        cmd = [sys.executable, "-m", "imgstore.server", "--port", str(self.port), *self.args]
        if self.log_level:
            cmd += ["--log-level", self.log_level]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "server.log", "ab") as log:
            logged = log.tell()
            self.proc = self.spawn(cmd, env, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "address already in use" in self.log()[logged:].lower() and not retried:
                    # another process took the port between free_port() and bind: forget
                    # this attempt's log (tests read the log) and start on another port
                    os.truncate(self.data_dir / "server.log", logged)
                    self.port = free_port()
                    return self.start(timeout, retried=True)
                raise RuntimeError(f"server exited: {self.log()[-2000:]}")
            try:
                httpx.get(f"{self.url}{READY_PATH}", timeout=1, verify=self.verify)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError(f"server did not start in {timeout} s: {self.log()[-2000:]}")

    def spawn(self, cmd: list[str], env: dict[str, str], log: BinaryIO) -> Process:
        """The server's process, its output appended to ``log`` (tests/conftest.py's
        ``Server`` forks it from a warm interpreter instead)."""
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        """Signal the server and wait for it; one still there after ``timeout`` is asked
        where it waits (``kill -USR1``: logs.dump_waits), killed, and reported with that."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGUSR1)
                time.sleep(1)
                self.proc.kill()
                self.proc.wait(timeout=10)
                raise AssertionError(f"the server did not stop in {timeout} s; where it waited:\n"
                                     + self.log()[-12000:]) from None

    def log(self) -> str:
        return (self.data_dir / "server.log").read_text(errors="replace")

    def login(self, password: str | None = None, timeout: float = 60) -> Api:
        return Api.login(self.url, password or self.password, timeout=timeout, verify=self.verify)

    def session(self, password: str | None = None) -> str:
        """A new session id of the admin account."""
        api = self.login(password)  # opened by its login: `with` would open it again (RuntimeError)
        try:
            return api.headers["Authorization"].removeprefix("OAuth ")
        finally:
            api.close()


@contextmanager
def serving(data_dir: Path, **kwargs: object) -> Iterator[Server]:
    """``with serving(dir, env={...}) as server:`` a started server, stopped at the end."""
    server = Server(data_dir, **kwargs)  # type: ignore[arg-type]
    try:
        yield server.start()
    finally:
        server.stop()


class Api(httpx.Client):
    """An httpx client on ``/zstack/v1`` with a session, and ZStack's job polling."""

    @classmethod
    def login(cls, url: str, password: str = ADMIN_PASSWORD, timeout: float = 60,
              verify: ssl.SSLContext | bool = True) -> Api:
        client = cls(base_url=f"{url}/zstack/v1", timeout=timeout, verify=verify)
        r = client.put("/accounts/login", json={"logInByAccount": {
            "accountName": "admin", "password": password_digest(password)}})
        assert r.status_code == 200, r.text
        client.headers["Authorization"] = f"OAuth {r.json()['inventory']['uuid']}"
        return client

    @classmethod
    def resume(cls, url: str, session: str, timeout: float = 60,
               verify: ssl.SSLContext | bool = True) -> Api | None:
        """A client of its own on an existing session; None when the session is no longer
        valid (logged out, expired)."""
        client = cls(base_url=f"{url}/zstack/v1", timeout=timeout, verify=verify,
                     headers={"Authorization": f"OAuth {session}"})
        r = client.get(f"/accounts/sessions/{session}/valid")
        if r.status_code == 200 and r.json().get("valid") is True:
            return client
        client.close()
        return None

    @property
    def session(self) -> str:
        return self.headers["Authorization"].removeprefix("OAuth ")

    def wait_job(self, response: httpx.Response, timeout: float = 60, poll: float = 0.1) -> httpx.Response:
        """The job's result, polled every ``poll`` seconds (a bench timing a job of a second
        polls more often: it overshoots the job's end by half of ``poll`` on average)."""
        assert response.status_code == 202, response.text
        location = response.json()["location"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.get(location, timeout=10)  # with the session, as the Java SDK polls
            if r.status_code != 202:
                return r
            time.sleep(poll)
        raise AssertionError(f"job {location} still running after {timeout} s")

    def add_ceph(self, name: str, mon_urls: list[str], **params: object) -> httpx.Response:
        return self.post("/backup-storage/ceph", json={"params": {"name": name, "monUrls": mon_urls, **params}})

    def storages(self, **query: str) -> list[dict]:
        r = self.get("/backup-storage", params=query)
        assert r.status_code == 200, r.text
        return r.json()["inventories"]
