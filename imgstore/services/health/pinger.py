"""The tracker's Ceph calls, in a process of their own at a lower CPU priority: the
parent's side (the child is ``pinger_child.py``).

Why a process: with 200 storages pinged every interval (``scripts/bench_tracker.py``),
the pings' librados threads, their pool threads' Python and their replies on the event
loop shared one interpreter and the same cores with the API, and moved its p99 1.6-1.8x
(up to 3x on a busy machine) while rounds ran. In a child process niced by ``NICE``, the
kernel runs the API first whenever both want a core, and the API's event loop and GIL
carry none of it; the same bench, same day, put the p99 back within 1.1-1.2x of idle.

The child keeps one librados handle per storage (a ``ClusterRegistry`` of its own; the
node's registry keeps the API's handles for image I/O), and answers JSON lines on a pipe:
the parent sends ``{id, op, ...}`` and reads ``{id, ...}`` back, so pings run concurrently.
It is started on first use and again after it dies (the calls it owed fail with
``PingerLost``, which the tracker reads as "no news", not as a dead cluster), and it ends
when its stdin closes, that is when the node stops or dies.

The cephx keys cross the pipe opened: the child has no secret box. They are never in its
argv, environment or logs, and its stdout carries only the protocol. Its environment is
``CHILD_ENVIRONMENT`` alone: no ``IMGSTORE_*`` setting (the admin password, the secret
key) reaches it. Its stderr (its log and librados' own prints) is read by the parent and
logged there, line by line. A deleted storage's handle is dropped by a ``forget`` at
once (``Tracker.drop``), not at the next round.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import imgstore
from imgstore import ceph
from imgstore.crypto import SecretBox
from imgstore.db.models import CephBackupStorage
from imgstore.errors import ApiError, kind_of
from imgstore.services.health.pinger_child import NICE, ceph_error_from
from imgstore.services.node.handles import mon_host_of, require_key

log = logging.getLogger(__name__)

# What the child inherits of the node's environment: enough to run Python and librados,
# nothing of imgstore's settings (IMGSTORE_ADMIN_PASSWORD, the secret key, the database
# URL): a child that talks to Ceph has no use for them, and /proc/<pid>/environ shows them.
CHILD_ENVIRONMENT = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH", "VIRTUAL_ENV",
                     "CEPH_CONF")
CHILD_ENVIRONMENT_PREFIXES = ("LC_",)
_STOP_SECONDS = 2.0  # how long close() waits for the child to exit before killing it
_IMPORT_ROOT = str(Path(imgstore.__file__).resolve().parents[1])  # the child imports imgstore from here too

_Calls = dict[int, "asyncio.Future[dict[str, Any]]"]  # a child's calls awaiting their replies, by id


class PingerLost(Exception):
    """The pinger process died or stopped answering: the call says nothing about Ceph."""


class Pinger:
    """The parent's side: ask the child process, which it starts when first needed."""

    def __init__(self, secrets: SecretBox, timeout: float) -> None:
        self._secrets = secrets
        self._timeout = timeout
        # a key check may connect, ask the mons and log in afresh: three bounded calls
        self._answer_within = 4 * timeout + 10
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._relay: asyncio.Task[None] | None = None
        self._waiting: _Calls = {}  # the running child's
        # storage -> (sealed key, opened key): opening one costs more than the rest of a
        # ping's work in this process (measured: Fernet was 40 % of the tracker's CPU here)
        self._keys: dict[str, tuple[str, str]] = {}
        self._ids = itertools.count(1)
        self._starting = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    async def health(self, row: CephBackupStorage) -> ceph.Health:
        """``checks.health_of`` through the child's handle of the storage.
        ApiError when its mons cannot be asked (or it has no key)."""
        reply = await self._ask({"op": "health", **self._target(row), "pool": row.pool_name})
        pool_error = reply["pool_error"]
        return ceph.Health(
            frozenset(reply["quorum"]),
            ceph.Capacity(**reply["capacity"]) if reply["capacity"] else None,
            ceph_error_from(pool_error) if pool_error else None,
        )

    async def refused_key(self, row: CephBackupStorage) -> str | None:
        """Log in afresh with the storage's key (in the child): why it was refused, or None."""
        refused: str | None = (await self._ask({"op": "check_key", **self._target(row)}))["refused"]
        return refused

    async def forget(self, uuid: str) -> None:
        """Drop the child's handle of the storage; the next call makes a new one."""
        self._keys.pop(uuid, None)
        if self.pid is not None:
            try:
                await self._ask({"op": "forget", "storage": uuid})
            except PingerLost:
                pass  # a child that is gone holds no handle

    async def close(self) -> None:
        """Close the child's stdin (it exits at once); kill it if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), _STOP_SECONDS)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        for task in (self._reader, self._relay):
            if task is not None:
                await task

    def _target(self, row: CephBackupStorage) -> dict[str, str]:
        client, sealed = require_key(row)
        return {"storage": row.uuid, "mon_host": mon_host_of(row), "client": client,
                "key": self._opened(row.uuid, sealed)}

    def _opened(self, uuid: str, sealed: str) -> str:
        known = self._keys.get(uuid)
        if known is None or known[0] != sealed:
            known = self._keys[uuid] = (sealed, self._secrets.open(sealed))
        return known[1]

    async def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        proc, waiting = await self._running()
        ident = next(self._ids)
        answer = waiting[ident] = asyncio.get_running_loop().create_future()
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"id": ident, **request}).encode() + b"\n")
            await proc.stdin.drain()
            reply = await asyncio.wait_for(asyncio.shield(answer), self._answer_within)
        except (ConnectionError, RuntimeError) as e:  # the pipe broke under us
            raise PingerLost(f"the pinger process is gone ({type(e).__name__})") from None
        except TimeoutError:
            self._lose(proc, f"did not answer within {self._answer_within:.0f} s")
            raise PingerLost("the pinger process did not answer") from None
        finally:
            waiting.pop(ident, None)
        if "error" in reply:
            err = reply["error"]
            raise ApiError(kind_of(err["code"]), err["details"], status=err["status"], opaque=err["opaque"])
        answered: dict[str, Any] = reply
        return answered

    async def _running(self) -> tuple[asyncio.subprocess.Process, _Calls]:
        """The running child and its calls; a new child has calls of its own, so the
        reader of one that died fails only what that one owed."""
        async with self._starting:
            if self._proc is None or self._proc.returncode is not None:
                self._proc, self._waiting = await self._spawn(), {}
                self._reader = asyncio.create_task(self._read(self._proc, self._waiting), name="pinger-replies")
                self._relay = asyncio.create_task(_relay(self._proc), name="pinger-stderr")
            return self._proc, self._waiting

    async def _spawn(self) -> asyncio.subprocess.Process:
        root = _IMPORT_ROOT
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "imgstore.services.health.pinger_child", "--timeout", str(self._timeout),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**child_environment(os.environ), "PYTHONPATH": path},
        )
        log.info("pinger process %d started", proc.pid)
        return proc

    async def _read(self, proc: asyncio.subprocess.Process, waiting: _Calls) -> None:
        """Hand each reply to its caller; when the child ends, fail what it still owed."""
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            reply = json.loads(line)
            waiter = waiting.get(reply.get("id"))
            if waiter is not None and not waiter.done():
                waiter.set_result(reply)
        code = await proc.wait()
        if self._proc is proc:
            log.warning("pinger process %d exited with %s; the next ping starts another", proc.pid, code)
        for waiter in list(waiting.values()):
            if not waiter.done():
                waiter.set_exception(PingerLost(f"the pinger process exited with {code}"))

    def _lose(self, proc: asyncio.subprocess.Process, why: str) -> None:
        """Kill a child that stopped answering; its reader fails the other calls."""
        log.warning("pinger process %d %s; killing it", proc.pid, why)
        if proc.returncode is None:
            proc.kill()


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``environ`` the pinger child may see (``CHILD_ENVIRONMENT``)."""
    return {k: v for k, v in environ.items()
            if k in CHILD_ENVIRONMENT or k.startswith(CHILD_ENVIRONMENT_PREFIXES)}


async def _relay(proc: asyncio.subprocess.Process) -> None:
    """The child's stderr (its log, librados' own prints) into this process's log, so the
    server's log stays one format (JSON lines) whoever wrote a line."""
    assert proc.stderr is not None
    while line := await proc.stderr.readline():
        text = line.decode(errors="replace").rstrip()
        if text:
            log.warning("pinger process %d: %s", proc.pid, text)


__all__ = ["CHILD_ENVIRONMENT", "NICE", "Pinger", "PingerLost", "child_environment"]
