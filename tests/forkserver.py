"""Test servers forked from a warm interpreter, instead of a fresh ``python -m
imgstore.server`` each time.

Why: a fresh server process spends ~1.5 s of CPU importing FastAPI, pydantic, SQLAlchemy,
asyncssh... before it runs a line of imgstore, and the suite starts a few hundred servers
on a 2-core machine. One forkserver per pytest run imports all that once; every start is
then a ``fork()`` that runs the very same ``imgstore.server`` (``runpy``, as ``-m`` does)
with the test's environment, working directory and log file. Under pytest-xdist the
controller starts it and every worker connects to it (``SOCKET_VARIABLE``): one warm
interpreter for all the workers, not one each (each took ~1.5 s of CPU to start, while
the workers collected).

What stays as it was: the server is a real process of its own (restarts, kills, signals,
its pinger child, its log are real); :class:`ForkedProcess` answers ``pid``, ``poll``,
``wait``, ``send_signal``, ``terminate``, ``kill`` and ``returncode`` like
``subprocess.Popen``. The server's parent is the forkserver, which reaps a server only when
asked (``poll``), so a pid is never reused while a test may still signal it.

The same holds for the ``imgstore`` command the CLI tests run (:meth:`Forkserver.run`).

What the fork cannot give, and where a fresh process starts instead: an environment that
differs from the forkserver's in more than the settings read at run time
(``_RUN_TIME_KEYS``: an interpreter, libc or an import reads the rest when it starts), or
``IMGSTORE_TEST_FORKSERVER=0``.

Run as ``python -m tests.forkserver SOCKET``: it says ``ready`` on stdout once warm and
listening on the Unix socket SOCKET, takes JSON-line requests on each connection and answers
on it, and leaves when its stdin ends (its owner closed it or died).
"""
from __future__ import annotations

import faulthandler
import json
import os
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: where a pytest run's forkserver listens: set by the process that started it (xdist's
#: controller, or a lone pytest process) for its workers, which inherit the environment
SOCKET_VARIABLE = "IMGSTORE_TEST_FORKSERVER_SOCKET"
#: settings read only when the program runs (not at its start, nor by an import the
#: forkserver made; PYTHONFAULTHANDLER the fork applies itself): a request's environment
#: may differ from the forkserver's in these only
_RUN_TIME_KEYS = ("IMGSTORE_", "PYTEST_", "XDG_CONFIG_HOME", "COLUMNS", "LINES", "CEPH_CONF",
                  "PYTHONFAULTHANDLER")
#: what the server and the CLI import, and the SQLite and
#: PostgreSQL drivers (its migrations run in a child process: Alembic is not among them)
_WARM = (
    "imgstore.server", "imgstore.cli.commands", "imgstore.app", "imgstore.logs", "imgstore.memory", "imgstore.config",
    "imgstore.http_protocol",
    "aiosqlite", "sqlalchemy.dialects.sqlite.aiosqlite", "sqlalchemy.dialects.postgresql.psycopg",
    "uvicorn.lifespan.on", "uvicorn.loops.auto", "uvicorn.protocols.websockets.auto",
)


def enabled() -> bool:
    return os.environ.get("IMGSTORE_TEST_FORKSERVER", "1") != "0"


def _start_env(env: dict[str, str]) -> dict[str, str]:
    """What of ``env`` a process reads when it starts or imports (all but the run-time keys)."""
    return {k: v for k, v in env.items() if not k.startswith(_RUN_TIME_KEYS)}


class ForkedProcess:
    """A forked server, seen as ``subprocess.Popen`` sees its child."""

    def __init__(self, server: Forkserver, pid: int, args: list[str]) -> None:
        self._server, self.pid, self.args = server, pid, args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server.status(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = _pidfd(self.pid)
        try:
            while (code := self.poll()) is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(self.args, timeout or 0)
                wait = 0.05 if left is None else min(0.05, left)
                if fd is not None:
                    select.select([fd], [], [], wait)  # readable once the process has exited
                else:
                    time.sleep(wait)
            return code
        finally:
            if fd is not None:
                os.close(fd)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # not reaped yet: the pid is still this process's
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class Forkserver:
    """The client side: the run's warm interpreter, started by :meth:`prestart` in the
    process that owns it, connected to on first use by every process that forks from it."""

    def __init__(self) -> None:
        self._owned: subprocess.Popen[bytes] | None = None  # the forkserver this process started
        self._conn: socket.socket | None = None
        self._replies: Any = None  # the connection's reading side, by lines
        self._ready = False  # the owned one said it is warm and listening
        self._lock = threading.Lock()

    def launch(self, args: list[str], env: dict[str, str], log: Path) -> ForkedProcess | None:
        """``args`` (``python -m imgstore.server ...``) forked with ``env``, stdin
        /dev/null, output appended to ``log``; None when a fresh process is needed instead
        (see the module)."""
        return self._fork(args, env, None, log, log)

    def run(self, args: list[str], env: dict[str, str], input: str | None = None,
            timeout: float | None = None) -> subprocess.CompletedProcess[str] | None:
        """``subprocess.run(args, env=env, input=input, capture_output=True, text=True,
        timeout=timeout, cwd=ROOT)``, forked; None when a fresh process is needed instead.
        Its stdin and output are files rather than pipes (neither is a terminal either way)."""
        with tempfile.TemporaryDirectory(prefix="imgstore-fork-") as tmp:
            stdin, stdout, stderr = (Path(tmp) / name for name in ("stdin", "stdout", "stderr"))
            stdin.write_text(input or "")
            proc = self._fork(args, env, stdin if input is not None else None, stdout, stderr)
            if proc is None:
                return None
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
            return subprocess.CompletedProcess(args, code, stdout.read_text(), stderr.read_text())

    def _fork(self, args: list[str], env: dict[str, str], stdin: Path | None, stdout: Path,
              stderr: Path) -> ForkedProcess | None:
        if args[:2] != [sys.executable, "-m"] or args[2:3] not in (["imgstore.server"], ["imgstore.cli.commands"]) \
                or not enabled():
            return None
        reply = self._call({"op": "fork", "argv": args[2:], "env": env, "cwd": str(ROOT),
                            "stdin": str(stdin) if stdin else os.devnull,
                            "stdout": str(stdout), "stderr": str(stderr)})
        return None if reply.get("fresh") else ForkedProcess(self, int(reply["pid"]), args)

    def status(self, pid: int) -> int | None:
        return self._call({"op": "poll", "pid": pid})["returncode"]  # type: ignore[no-any-return]

    def prestart(self) -> None:
        """Start the run's forkserver now, without waiting for it, unless one was started
        for this process already: its imports then overlap the test collection. Processes
        started from here on (xdist's workers) find it through ``SOCKET_VARIABLE``."""
        if enabled():
            with self._lock:
                self._start()

    def _start(self) -> None:
        if os.environ.get(SOCKET_VARIABLE):
            return
        path = os.path.join(tempfile.mkdtemp(prefix="imgstore-fs-"), "socket")
        self._owned = subprocess.Popen([sys.executable, "-m", "tests.forkserver", path], cwd=ROOT,
                                       env=dict(os.environ), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        os.environ[SOCKET_VARIABLE] = path
        self._ready = False

    def close(self) -> None:
        """Drop this process's connection; the owner also stops the forkserver."""
        with self._lock:
            if self._conn is not None:
                self._replies.close()
                self._conn.close()
                self._conn = None
            if self._owned is not None:
                assert self._owned.stdin is not None
                self._owned.stdin.close()  # it leaves at end of input
                try:
                    self._owned.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._owned.kill()
                shutil.rmtree(Path(os.environ.pop(SOCKET_VARIABLE)).parent, ignore_errors=True)
                self._owned = None

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            conn = self._connected()
            conn.sendall(json.dumps(request).encode() + b"\n")
            line = self._replies.readline()
            if not line:
                raise RuntimeError("the test forkserver closed the connection")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the test forkserver: {reply['error']}")
        return reply

    def _connected(self) -> socket.socket:
        if self._conn is not None:
            return self._conn
        self._start()  # when nothing started one for this process yet
        if self._owned is not None and not self._ready:
            assert self._owned.stdout is not None
            if not self._owned.stdout.readline():  # its "ready": warm and listening
                raise RuntimeError(f"the test forkserver exited (code {self._owned.wait()})")
            self._ready = True
        deadline = time.monotonic() + 120  # the owner's forkserver may still be warming up
        while True:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.connect(os.environ[SOCKET_VARIABLE])
                break
            except (FileNotFoundError, ConnectionRefusedError):
                conn.close()
                if time.monotonic() > deadline:
                    raise RuntimeError("the test forkserver did not come up in 120 s") from None
                time.sleep(0.05)
        self._conn, self._replies = conn, conn.makefile("rb")
        return conn


# ---------------------------------------------------------------- the forkserver itself


def _serve_requests(path: str) -> list[str]:
    """The forkserver's loop; returns (in a forked child only) the argv to run."""
    import gc
    import importlib

    for name in _WARM:
        importlib.import_module(name)
    from sqlalchemy.orm import configure_mappers

    configure_mappers()  # the models' relationships, resolved once here, not at each start
    started = _start_env(dict(os.environ))
    owner = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # nothing of the forkserver's own goes to its owner
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    sel.register(0, selectors.EVENT_READ)  # its end: the owner closed our stdin, or died
    pending: dict[socket.socket, bytes] = {}

    # what was imported stays out of every collection, in here and in each child: a child's
    # first collections would otherwise walk (and copy, page by page) all of it
    gc.freeze()
    owner.write(b"ready\n")
    owner.flush()
    while True:
        for key, _ in sel.select():
            if key.fileobj is listener:
                conn, _ = listener.accept()
                sel.register(conn, selectors.EVENT_READ)
                pending[conn] = b""
                continue
            if key.fileobj == 0:
                if not os.read(0, 4096):
                    sys.exit(0)
                continue
            conn = key.fileobj  # type: ignore[assignment]
            data = conn.recv(65536)
            if not data:
                sel.unregister(conn)
                conn.close()
                del pending[conn]
                continue
            pending[conn] += data
            while b"\n" in pending[conn]:
                line, pending[conn] = pending[conn].split(b"\n", 1)
                argv = _serve(json.loads(line), started, conn)
                if argv is not None:  # the child: none of the forkserver's files are its
                    for c in pending:
                        c.close()
                    sel.close()
                    listener.close()
                    owner.close()
                    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
                    return argv


def _serve(req: dict[str, Any], started: dict[str, str], conn: socket.socket) -> list[str] | None:
    """Answer one request on ``conn``; in a forked child, return the argv it is to run."""

    def answer(reply: dict[str, Any]) -> None:
        conn.sendall(json.dumps(reply).encode() + b"\n")

    if req["op"] == "poll":
        try:
            pid, status = os.waitpid(req["pid"], os.WNOHANG)
        except ChildProcessError:
            answer({"error": f"pid {req['pid']} is no child of the forkserver"})
            return None
        answer({"returncode": None if pid == 0 else os.waitstatus_to_exitcode(status)})
        return None
    if _start_env(req["env"]) != started:
        answer({"fresh": True})  # read when a process starts: only a fresh one honours it
        return None
    opened = [os.open(req["stdin"], os.O_RDONLY)]
    for name in ("stdout", "stderr"):
        if req[name] == req["stdout"] and len(opened) == 2:
            opened.append(opened[1])  # 2>&1: one file position, as subprocess.STDOUT
        else:
            opened.append(os.open(req[name], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666))
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        for target, fd in enumerate(opened):
            os.dup2(fd, target)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        if os.environ.get("PYTHONFAULTHANDLER"):  # what a fresh interpreter does with it
            faulthandler.enable()
        return list(req["argv"])
    for fd in set(opened):
        os.close(fd)
    answer({"pid": pid})
    return None


if __name__ == "__main__":
    argv = _serve_requests(sys.argv[1])
    # the child: what `python -m imgstore.server ...` (or `imgstore.cli.commands`) runs, in this warm interpreter
    import runpy

    # `-m` runs the module as __main__ only, never under its own name too (runpy warns)
    package, _, leaf = argv[0].rpartition(".")
    sys.modules.pop(argv[0], None)
    if package in sys.modules and hasattr(sys.modules[package], leaf):
        delattr(sys.modules[package], leaf)
    sys.argv = list(argv)  # runpy puts the module's path in sys.argv[0], as -m does
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
