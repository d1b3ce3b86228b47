"""Test servers forked from a warm interpreter, instead of a fresh ``python -m
imgstore.server`` each time.

Why: a fresh server process spends ~1.5 s of CPU importing FastAPI, pydantic, SQLAlchemy,
asyncssh... before it runs a line of imgstore, and the suite starts a few hundred servers
on a 2-core machine. One forkserver per pytest process imports all that once; every start
is then a ``fork()`` that runs the very same ``imgstore.server`` (``runpy``, as ``-m`` does)
with the test's environment, working directory and log file.

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

Run as ``python -m tests.forkserver``: requests are JSON lines on stdin, answers JSON lines
on stdout.
"""
from __future__ import annotations

import faulthandler
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
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
    """The client side: one warm interpreter per pytest process, started on first use."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._env: dict[str, str] = {}
        self._ready = False
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
        with self._lock:
            proc = self._running(env)
            if _start_env(env) != _start_env(self._env):
                return None
            reply = self._call(proc, {"op": "fork", "argv": args[2:], "env": env, "cwd": str(ROOT),
                                      "stdin": str(stdin) if stdin else os.devnull,
                                      "stdout": str(stdout), "stderr": str(stderr)})
        return ForkedProcess(self, int(reply["pid"]), args)

    def status(self, pid: int) -> int | None:
        with self._lock:
            assert self._proc is not None
            return self._call(self._proc, {"op": "poll", "pid": pid})["returncode"]  # type: ignore[no-any-return]

    def close(self) -> None:
        with self._lock:
            if self._proc and self._proc.poll() is None:
                assert self._proc.stdin is not None
                self._proc.stdin.close()  # it leaves at end of input
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
            self._proc = None

    def prestart(self) -> None:
        """Start the forkserver now, without waiting for it: its imports (a few seconds on
        a busy machine) then overlap the test collection instead of the first test."""
        if enabled():
            with self._lock:
                self._spawn(dict(os.environ))

    def _spawn(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._env, self._ready = dict(env), False
            self._proc = subprocess.Popen([sys.executable, "-m", "tests.forkserver"], cwd=ROOT, env=env,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        return self._proc

    def _running(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        proc = self._spawn(env)
        if not self._ready:
            self._call(proc, None)  # its "ready" line
            self._ready = True
        return proc

    @staticmethod
    def _call(proc: subprocess.Popen[bytes], request: dict[str, Any] | None) -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        if request is not None:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the test forkserver exited (code {proc.wait()})")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the test forkserver: {reply['error']}")
        return reply


# ---------------------------------------------------------------- the forkserver itself


def _serve_requests() -> list[str]:
    """The forkserver's loop; returns (in a forked child only) the argv to run."""
    import gc
    import importlib

    for name in _WARM:
        importlib.import_module(name)
    from sqlalchemy.orm import configure_mappers

    configure_mappers()  # the models' relationships, resolved once here, not at each start
    requests = os.fdopen(os.dup(0), "rb")
    answers = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # nothing of the forkserver's own goes to the answers
    os.close(devnull)

    def answer(reply: dict[str, Any]) -> None:
        answers.write(json.dumps(reply).encode() + b"\n")
        answers.flush()

    # what was imported stays out of every collection, in here and in each child: a child's
    # first collections would otherwise walk (and copy, page by page) all of it
    gc.freeze()
    answer({"ready": True})
    for line in requests:
        req = json.loads(line)
        if req["op"] == "poll":
            try:
                pid, status = os.waitpid(req["pid"], os.WNOHANG)
            except ChildProcessError:
                answer({"error": f"pid {req['pid']} is no child of the forkserver"})
                continue
            answer({"returncode": None if pid == 0 else os.waitstatus_to_exitcode(status)})
            continue
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
            requests.close()
            answers.close()
            for target, fd in enumerate(opened):
                os.dup2(fd, target)
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            os.chdir(req["cwd"])
            os.environ.clear()
            os.environ.update(req["env"])
            if os.environ.get("PYTHONFAULTHANDLER"):  # what a fresh interpreter does with it
                faulthandler.enable()
            return list(req["argv"])
        for fd in set(opened):
            os.close(fd)
        answer({"pid": pid})
    sys.exit(0)


if __name__ == "__main__":
    argv = _serve_requests()
    # the child: what `python -m imgstore.server ...` (or `imgstore.cli.commands`) runs, in this warm interpreter
    import runpy

    # `-m` runs the module as __main__ only, never under its own name too (runpy warns)
    package, _, leaf = argv[0].rpartition(".")
    sys.modules.pop(argv[0], None)
    if package in sys.modules and hasattr(sys.modules[package], leaf):
        delattr(sys.modules[package], leaf)
    sys.argv = list(argv)  # runpy puts the module's path in sys.argv[0], as -m does
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
