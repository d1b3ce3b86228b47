"""The mon hosts of a Ceph backup storage: their urls, their rows, and SSH to them.

Every SSH to a mon is made by :func:`shell_for`, so none skips the host-key pin; a mon's
first contact pins the key it offered (:func:`pin_host_key`). Adding a storage and adding
mons both probe mons with :func:`probe_mons`: all at once, a failure kept on the mon.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

from sqlalchemy import select

from imgstore import ceph
from imgstore.crypto import new_uuid
from imgstore.db.models import CephMon
from imgstore.errors import OPERATION_ERROR, ApiError, invalid_argument
from imgstore.services.node.ceph_errors import ceph_error
from imgstore.services.node.runtime import Runtime
from imgstore.wire.enums import StorageStatus

log = logging.getLogger(__name__)


@dataclass
class MonProbe:
    url: ceph.MonUrl
    row: CephMon
    shell: ceph.MonShell | None = None
    facts: ceph.MonFacts | None = None
    key: str | None = None
    error: ApiError | None = None

    @property
    def host_key(self) -> str | None:
        """The host key this mon offered (checked against its pin, if it had one)."""
        return self.shell.host_key_fingerprint if self.shell else None


def parse_mon_urls(mon_urls: list[str], password_optional: bool = False) -> list[ceph.MonUrl]:
    """ZStack's interceptor checks, in its order: each url parses, no host twice.
    ``password_optional``: a private key is configured, so a url may carry no password."""
    if not mon_urls:
        raise invalid_argument("field[monUrls] must be a non-empty list of mon urls")
    parsed = []
    for text in mon_urls:
        if not text or not text.strip():
            raise invalid_argument("field[monUrls] cannot contain an empty string")
        try:
            parsed.append(ceph.MonUrl.parse(text, password_optional))
        except ceph.MonUrlError as e:
            raise invalid_argument(str(e)) from None
    seen: set[str] = set()
    for mon in parsed:
        if mon.hostname in seen:
            raise invalid_argument(f"Cannot add same host[{mon.hostname}] in mons")
        seen.add(mon.hostname)
    return parsed


async def used_hostnames(rt: Runtime, mons: list[ceph.MonUrl]) -> list[str]:
    """Mon hostnames are unique across all Ceph backup storages, as in ZStack."""
    async with rt.db() as db:
        used = await db.scalars(
            select(CephMon.hostname).where(CephMon.hostname.in_([m.hostname for m in mons]))
        )
        return sorted(used)


def new_mon_rows(rt: Runtime, mons: list[ceph.MonUrl]) -> list[CephMon]:
    return [
        CephMon(
            uuid=new_uuid(),
            hostname=m.hostname,
            mon_addr=m.hostname,
            mon_port=m.mon_port,
            ssh_port=m.ssh_port,
            ssh_username=m.username,
            ssh_password=rt.secrets.seal(m.password),
            ssh_host_key_fingerprint=m.host_key,  # the operator's; None: learnt at first contact
            status=StorageStatus.CONNECTING,
        )
        for m in mons
    ]


def mon_url_of(rt: Runtime, mon: CephMon) -> ceph.MonUrl:
    return ceph.MonUrl(
        username=mon.ssh_username,
        password=rt.secrets.open(mon.ssh_password),
        hostname=mon.hostname,
        ssh_port=mon.ssh_port,
        mon_port=mon.mon_port,
        host_key=mon.ssh_host_key_fingerprint,
    )


def shell_for(rt: Runtime, url: ceph.MonUrl) -> ceph.MonShell:
    """An ssh shell to a mon: the url's pinned host key, the configured login key.
    Every ssh to a mon is made here, so none skips the pin."""
    return ceph.MonShell(url, rt.settings.ssh_timeout, rt.settings.ssh_private_key)


async def pin_host_key(rt: Runtime, mon: CephMon, shell: ceph.MonShell) -> None:
    """Record the host key ``shell`` met on a mon that had none pinned (first use)."""
    if mon.ssh_host_key_fingerprint or not shell.host_key_fingerprint:
        return
    async with rt.db() as db:
        row = await db.get(CephMon, mon.uuid)
        if row is not None and row.ssh_host_key_fingerprint is None and row.hostname == mon.hostname:
            row.ssh_host_key_fingerprint = shell.host_key_fingerprint
            await db.commit()
            log.info("mon %s: pinned its ssh host key %s (first contact)", mon.hostname, shell.host_key_fingerprint)


KeyRequest = tuple[str, str, Callable[[], Awaitable[None]]]  # client, pool, called just before


async def probe_mons(
    rt: Runtime, stack: AsyncExitStack, mons: list[MonProbe], key_for: KeyRequest | None = None
) -> None:
    """SSH to every mon at once and read its facts; the shells stay open on ``stack``.
    With ``key_for`` = (client, pool, before), the first mon, once logged in, also gets or
    creates that key (``before`` records that it may exist)."""
    await asyncio.gather(*(_probe(rt, stack, m, key_for if i == 0 else None) for i, m in enumerate(mons)))


async def _probe(rt: Runtime, stack: AsyncExitStack, mon: MonProbe, key_for: KeyRequest | None) -> None:
    """SSH to one mon and read its facts; a failure is kept on the mon, not raised."""
    try:
        shell = shell_for(rt, mon.url)
        mon.shell = await stack.enter_async_context(shell)
        if key_for is None:
            mon.facts = await mon.shell.facts()
            return
        client, pool, before = key_for
        await before()
        facts, key = await asyncio.gather(
            mon.shell.facts(), mon.shell.get_or_create_key(client, pool), return_exceptions=True
        )
        if isinstance(facts, BaseException):
            raise facts
        if isinstance(key, BaseException):
            raise key
        mon.facts, mon.key = facts, key
    except ceph.CephError as e:
        mon.error = ceph_error(e, f"{mon.url.hostname}:{mon.url.ssh_port}")
        log.warning("mon %s of backup storage failed to connect: %s", mon.url.hostname, e)


def mons_failed(mons: list[MonProbe], what: str) -> ApiError:
    """One error for the mons that failed: each one's reason, by host, as a cause."""
    causes = [m.error for m in mons if m.error]
    statuses = {c.status for c in causes}
    reasons = "; ".join(c.details for c in causes)
    return ApiError(
        OPERATION_ERROR,
        f"{what}: {reasons}",
        cause=causes[0] if len(causes) == 1 else None,
        causes=causes if len(causes) > 1 else None,
        status=statuses.pop() if len(statuses) == 1 else 503,
    )
