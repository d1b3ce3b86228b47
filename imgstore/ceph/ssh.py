"""SSH to a mon host: onboarding without an agent (DESIGN decision 4).

imgstore uses the monUrl's ssh credentials only for what needs the cluster's admin
identity: read the fsid and mon map, create/delete the pool, and mint a least-privilege
cephx key. Everything else goes through librados (``cluster.py``).

One :class:`MonShell` holds one ssh connection to one mon host and reuses it for all its
calls. Each call is one round trip: a small POSIX shell script whose every ``ceph``
command is bounded twice on the remote side (``--connect-timeout`` for the mon
connection, coreutils ``timeout`` for the whole command) and once more locally
(``asyncio.wait_for``), so a dead mon or a hung host gives :class:`CephTimeout` in
seconds. Every user-given value (pool and client names) goes through
``shlex.quote``, and is validated first so it cannot turn into a ceph CLI option or
inject a cephx cap.

Host keys are pinned, the way OpenSSH's known_hosts pins them (issue Trust, point 1).
A :class:`MonShell` is given the SHA256 fingerprint pinned for its mon
(``MonUrl.host_key``): the key the host offers is checked **in the key exchange**
(``validate_host_public_key``), before any password is sent, and another key fails with
:class:`SshHostKeyMismatch` naming both fingerprints. With nothing pinned (a first
contact) the offered key is accepted and :attr:`MonShell.host_key_fingerprint` tells it,
for the caller to pin. A new key is only ever taken by an operator's explicit accept
(:func:`offered_host_key` reads it without logging in).

The login is the monUrl's password, or a private key file the operator configured
(then a monUrl may carry no password); never the service account's own keys, agent or
``~/.ssh/config``. The password travels only inside the encrypted ssh session.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import re
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from imgstore.ceph.exceptions import (
    CephCommandFailed,
    CephError,
    CephPermissionDenied,
    CephTimeout,
    CephToolsMissing,
    PoolNotFound,
    SshAuthFailed,
    SshHostKeyMismatch,
    SshUnreachable,
)
from imgstore.ceph.monurl import MonUrl
from imgstore.ceph.names import check_client_name, check_pool_name, rbd_client_caps

__all__ = ["MonFacts", "MonShell", "offered_host_key"]

_MARK = "@@imgstore-out@@"
_ADDR_MARK = "@@imgstore-addrs@@"
_MISSING_TOOL = "imgstore: command not found: "
_STDERR_LIMIT = 600


@dataclass(frozen=True)
class MonFacts:
    """What one mon host says about its cluster (ZStack's agent ``facts``)."""

    hostname: str  # the ssh host
    fsid: str
    mon_addr: str  # this mon's IP as in `ceph mon dump` (ZStack monAddr)
    mon_host: str  # librados mon_host for this mon, e.g. "[v2:ip:3300,v1:ip:6789]"


class _PinnedHostKey(asyncssh.SSHClient):
    """Checks the host key in the key exchange: the pinned one, or any on first contact.
    Whatever is offered is kept in ``offered`` (for the caller to pin, or to report)."""

    def __init__(self, expected: str | None) -> None:
        self.expected = expected
        self.offered: str | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.offered = key.get_fingerprint("sha256")
        return self.expected is None or self.offered == self.expected


# known_hosts with no key in it: asyncssh then asks validate_host_public_key about every
# key (known_hosts=None would skip the check altogether)
_NO_KNOWN_HOSTS: tuple[list[Any], list[Any], list[Any]] = ([], [], [])


async def offered_host_key(host: str, port: int, timeout: float) -> str:
    """The SHA256 fingerprint of the host key ``host:port`` offers now: a key exchange
    only, no login, so nothing secret is sent (an operator's accept of a new key)."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        key = await asyncio.wait_for(asyncssh.get_server_host_key(host, port, config=None), timeout)
    except TimeoutError:
        raise CephTimeout(f"ssh to {where} timed out after {timeout:g}s", host) from None
    except (OSError, asyncssh.Error) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)
        raise SshUnreachable(f"cannot read the ssh host key of {where}: {reason}", host) from None
    if key is None:
        raise SshUnreachable(f"{where} offered no ssh host key", host)
    return key.get_fingerprint("sha256")


class MonShell:
    """Async context manager: one ssh connection to one mon host, reused by its calls."""

    def __init__(self, mon: MonUrl, timeout: float = 10.0, private_key: Path | None = None) -> None:
        self._mon = mon
        self._timeout = float(timeout)
        self._private_key = private_key
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()
        self.host_key_fingerprint: str | None = None  # what the host offered, once connected

    def __repr__(self) -> str:
        return f"MonShell({self._mon.masked()!r})"

    @property
    def _where(self) -> str:
        return f"{self._mon.username}@{self._mon.host_for_url}:{self._mon.ssh_port}"

    async def __aenter__(self) -> MonShell:
        await self._connection()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            try:
                await asyncio.wait_for(conn.wait_closed(), 2)
            except (TimeoutError, asyncssh.Error, OSError):
                pass

    # ------------------------------------------------------------------ calls

    async def facts(self) -> MonFacts:
        """fsid, this host's mon address and a librados mon_host for it: one round trip.

        ``ceph mon dump`` carries the cluster fsid (the monmap's fsid is what
        ``ceph fsid`` prints), so one ceph process answers both; the host's own
        addresses come from ``ip -o addr`` (or ``hostname -I``) in the same script.
        """
        script = (
            f"{_check_tools('ceph', 'rbd')}"
            f"addrs=$( (ip -o addr show || hostname -I) 2>/dev/null ); "
            f"out=$({self._ceph('mon', 'dump', '-f', 'json')}) || exit $?; "
            f"printf '%s\\n{_ADDR_MARK}\\n%s\\n' \"$out\" \"$addrs\""
        )
        out = await self._run(script, "ceph mon dump")
        dump_text, _, addrs_text = out.partition(_ADDR_MARK)
        monmap = _load_json(dump_text, "ceph mon dump", self._mon.hostname)
        local = _local_ips(addrs_text) | _ips_of(self._mon.hostname)
        mon_addr, mon_host = pick_mon(monmap, self._mon, local)
        return MonFacts(self._mon.hostname, str(monmap["fsid"]), mon_addr, mon_host)

    async def pool_exists(self, pool: str) -> bool:
        check_pool_name(pool)
        out = await self._run(self._ceph("osd", "pool", "ls", "-f", "json"), "ceph osd pool ls")
        return pool in _load_json(out, "ceph osd pool ls", self._mon.hostname)

    async def create_pool(self, pool: str) -> None:
        """Create ``pool`` with the cluster's default pg_num and tag it for rbd.

        No pg_num is given, so ``osd_pool_default_pg_num`` applies (ZStack's agent
        hardcodes 128, too many for small clusters). Idempotent: an existing pool
        is only tagged.
        """
        check_pool_name(pool)
        script = (
            f"{self._ceph('osd', 'pool', 'create', pool)} >/dev/null && "
            f"{self._ceph('osd', 'pool', 'application', 'enable', pool, 'rbd')} >/dev/null"
        )
        await self._run(script, f"create pool {pool}", commands=2)

    async def delete_pool(self, pool: str) -> None:
        """Delete ``pool`` (needs ``mon_allow_pool_delete``); a missing pool is fine."""
        check_pool_name(pool)
        cmd = self._ceph("osd", "pool", "delete", pool, pool, "--yes-i-really-really-mean-it")
        await self._run(cmd, f"delete pool {pool}")

    async def get_or_create_key(self, client: str, pool: str) -> str:
        """Return the key of ``client.<client>`` with exactly :func:`rbd_client_caps`.

        An existing entity whose caps differ (e.g. made for another pool) gets its
        caps replaced and keeps its key, in the same round trip.
        """
        entity = "client." + check_client_name(client)
        caps = rbd_client_caps(pool)
        create = self._ceph("auth", "get-or-create", entity, *caps, "-f", "json")
        recap = self._ceph("auth", "caps", entity, *caps)
        get = self._ceph("auth", "get", entity, "-f", "json")
        # 22 = EINVAL: "key for client.X exists but cap ... does not match"
        script = f"{create}; rc=$?; [ $rc -eq 22 ] || exit $rc; {recap} >/dev/null && {get}"
        out = await self._run(script, f"ceph auth get-or-create {entity}", commands=3)
        try:
            entries = json.loads(out)
            return str(next(e["key"] for e in entries if e.get("entity") == entity))
        except (ValueError, TypeError, KeyError, StopIteration):
            # Never echo `out`: it may hold the key.
            raise CephCommandFailed(
                f"unexpected reply of ceph auth get-or-create {entity} on {self._where}",
                self._mon.hostname,
            ) from None

    async def delete_key(self, client: str) -> None:
        """Remove ``client.<client>``; removing a missing entity succeeds."""
        entity = "client." + check_client_name(client)
        await self._run(self._ceph("auth", "del", entity), f"ceph auth del {entity}")

    # ------------------------------------------------------------------ plumbing

    def _ceph(self, *args: str) -> str:
        """A ceph CLI command bounded on the remote side (see the module docstring)."""
        connect = max(1, math.ceil(self._timeout))
        argv = ["ceph", "--connect-timeout", str(connect), *args]
        line = " ".join(shlex.quote(a) for a in argv)
        return f"_b {line}"

    async def _connection(self) -> asyncssh.SSHClientConnection:
        async with self._lock:
            if self._conn is None:
                self._conn = await self._connect()
            return self._conn

    async def _connect(self) -> asyncssh.SSHClientConnection:
        mon, t = self._mon, self._timeout
        pinned = _PinnedHostKey(mon.host_key)
        key = self._private_key
        try:
            conn = await asyncio.wait_for(
                asyncssh.connect(
                    mon.hostname,
                    mon.ssh_port,
                    username=mon.username,
                    password=mon.password or None,
                    client_factory=lambda: pinned,
                    known_hosts=_NO_KNOWN_HOSTS,  # see the module docstring
                    client_keys=[str(key)] if key else None,  # the configured key only
                    agent_path=None,
                    gss_host=None,
                    host_based_auth=False,
                    public_key_auth=key is not None,
                    config=None,  # ignore ~/.ssh/config of the service account
                    connect_timeout=t,
                    login_timeout=t,
                ),
                t + 1,
            )
        except asyncssh.HostKeyNotVerifiable as e:
            if pinned.offered and pinned.expected and pinned.offered != pinned.expected:
                raise _mismatch(mon, self._where, pinned.expected, pinned.offered) from None
            raise SshUnreachable(f"ssh to {self._where} failed: {e.reason}", mon.hostname) from None
        except asyncssh.PermissionDenied:
            how = "key" if key and not mon.password else "password"
            raise SshAuthFailed(
                f"ssh login to {self._where} failed: wrong user name or {how}",
                mon.hostname,
            ) from None
        except TimeoutError:
            raise CephTimeout(f"ssh to {self._where} timed out after {t:g}s", mon.hostname) from None
        except socket.gaierror as e:
            raise SshUnreachable(f"cannot resolve ssh host {mon.hostname}: {e.strerror}", mon.hostname) from None
        except OSError as e:
            raise SshUnreachable(f"cannot connect to ssh at {self._where}: {e.strerror or e}", mon.hostname) from None
        except asyncssh.Error as e:
            raise SshUnreachable(f"ssh to {self._where} failed: {e.reason}", mon.hostname) from None
        self.host_key_fingerprint = pinned.offered
        return conn

    async def _run(self, script: str, what: str, commands: int = 1) -> str:
        """Run ``script`` on the host; return its stdout or raise the mapped error."""
        conn = await self._connection()
        remote = max(1, math.ceil(self._timeout)) + 1
        prelude = (
            f"_b() {{ if command -v timeout >/dev/null 2>&1; then "
            f"timeout -k 2 {remote} \"$@\"; else \"$@\"; fi; }}; printf '%s\\n' {_MARK}; "
        )
        bound = commands * (remote + 2) + self._timeout
        try:
            result = await asyncio.wait_for(
                conn.run(prelude + script, check=False, errors="replace"), bound
            )
        except TimeoutError:
            raise CephTimeout(f"{what} on {self._where} timed out", self._mon.hostname) from None
        except (asyncssh.Error, OSError) as e:
            await self.close()
            reason = getattr(e, "reason", None) or str(e)
            raise SshUnreachable(f"ssh to {self._where} failed during {what}: {reason}", self._mon.hostname) from None
        stdout = str(result.stdout or "")
        stdout = stdout.split(_MARK + "\n", 1)[1] if _MARK + "\n" in stdout else stdout
        if result.exit_status == 0:
            return stdout
        raise _command_error(what, result.exit_status, str(result.stderr or ""), self._where, self._mon.hostname)


def _mismatch(mon: MonUrl, where: str, expected: str, offered: str) -> SshHostKeyMismatch:
    return SshHostKeyMismatch(
        f"the ssh host key of {where} has changed: expected {expected}, offered {offered}; "
        "nothing was sent. If the host was reinstalled or its key replaced, accept the new key "
        "(AcceptCephBackupStorageMonHostKey) after checking it on the host (ssh-keygen -lf)",
        mon.hostname, expected, offered,
    )


def _check_tools(*tools: str) -> str:
    return "".join(
        f"command -v {t} >/dev/null 2>&1 || {{ echo '{_MISSING_TOOL}{t}' >&2; exit 127; }}; "
        for t in tools
    )


def _command_error(what: str, status: int | None, stderr: str, where: str, host: str) -> CephError:
    """Map a failed remote command to our exceptions by exit status and stderr."""
    err = _trim(stderr)
    if status == 127:
        tool = err.split(_MISSING_TOOL, 1)[1].split()[0] if _MISSING_TOOL in err else "ceph"
        return CephToolsMissing(f"the `{tool}` command is not installed on {where}", host)
    lowered = err.lower()
    if status in (124, 137, 110) or "timed out" in lowered:
        return CephTimeout(f"{what} on {where} timed out: {err or 'no answer from the cluster'}", host)
    if status in (1, 13) and ("permission denied" in lowered or "access denied" in lowered):
        return CephPermissionDenied(f"{what} on {where} was refused: {err}", host)
    if status == 2 and "pool" in lowered:
        return PoolNotFound(f"{what} on {where}: {err}", host)
    return CephCommandFailed(f"{what} on {where} failed (exit {status}): {err}", host)


def _trim(stderr: str) -> str:
    """Keep the meaningful tail of stderr; drop librados' msgr chatter."""
    lines = [
        ln.strip()
        for ln in stderr.splitlines()
        if ln.strip() and "is using msgr V1 protocol" not in ln
    ]
    text = " | ".join(lines)
    return text if len(text) <= _STDERR_LIMIT else "..." + text[-_STDERR_LIMIT:]


def _load_json(text: str, what: str, host: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise CephCommandFailed(f"unexpected output of {what} on {host}: {text[:200]!r}", host) from None


def _local_ips(text: str) -> set[str]:
    """IP addresses in `ip -o addr` or `hostname -I` output."""
    tokens = re.findall(r"inet6?\s+([0-9A-Fa-f:.]+)", text) if "inet" in text else text.split()
    return {ip for ip in (_normalize_ip(t) for t in tokens) if ip}


def _ips_of(hostname: str) -> set[str]:
    ip = _normalize_ip(hostname)
    return {ip} if ip else set()


def _normalize_ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return None


def _split_hostport(addr: str) -> tuple[str, int] | None:
    """``"1.2.3.4:6789/0"`` or ``"[::1]:3300"`` -> (ip, port)."""
    addr = addr.split("/", 1)[0]
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        return None
    ip = _normalize_ip(host)
    return (ip, int(port)) if ip else None


def _mon_addrs(mon: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(type, ip, port) of one mon in `mon dump`, v2 first as the mon lists them."""
    out: list[tuple[str, str, int]] = []
    for a in mon.get("public_addrs", {}).get("addrvec", []):
        hp = _split_hostport(str(a.get("addr", "")))
        if hp:
            out.append((str(a.get("type", "v1")), hp[0], hp[1]))
    if not out:  # pre-Nautilus mon dump: only the legacy v1 "addr"
        hp = _split_hostport(str(mon.get("addr", "")))
        if hp:
            out.append(("v1", hp[0], hp[1]))
    return out


def _hostport(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def pick_mon(monmap: dict[str, Any], mon: MonUrl, local_ips: set[str]) -> tuple[str, str]:
    """Choose this host's mon in ``monmap``: (mon_addr, librados mon_host).

    The mon listening on ``mon.mon_port`` whose IP belongs to the host (ZStack's
    ``facts`` picks "the mon ip that belongs to this host"). Without such a mon we fall
    back to the ssh host name and the monUrl's port (``v1:host:monPort``), and
    librados will tell.
    """
    for entry in monmap.get("mons", []):
        addrs = _mon_addrs(entry)
        ips = {ip for _, ip, _ in addrs}
        if not any(port == mon.mon_port for _, _, port in addrs) or not ips & local_ips:
            continue
        ip = next(ip for _, ip, port in addrs if port == mon.mon_port)
        parts = [f"{kind}:{_hostport(i, p)}" for kind, i, p in addrs if kind in ("v1", "v2")]
        mon_host = f"[{','.join(parts)}]" if len(parts) > 1 else (parts[0] if parts else _hostport(ip, mon.mon_port))
        return ip, mon_host
    # monPort is ZStack's v1 port. Say so: given a bare custom port, librados tries
    # msgr2 on it first, and a wrong key then times out instead of failing with EACCES.
    kind = "v2" if mon.mon_port == 3300 else "v1"
    return mon.hostname, f"{kind}:{_hostport(mon.hostname, mon.mon_port)}"
