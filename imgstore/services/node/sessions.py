"""Accounts and sessions: login, logout, validation, the first admin.

Every API call names its session; looking it up in the database each time cost a
session, a connection and a round trip per call. :func:`authenticate` keeps the sessions
it validated for :data:`RECENT_SECONDS` (a few seconds) in memory, per database. Sessions
live in the database because several nodes share them: a logout on *this* node drops its
entry at once, a logout on another node is seen here within those few seconds, and an
expiry is always checked against the session's own ``expired_date``.

A session uuid is a bearer secret: the database keeps only its sha256
(:func:`stored_id`), so a copy of the database logs nobody in. Every lookup hashes the
uuid presented; :class:`RecentSessions` is keyed by the stored id too.

Logins go through the node's :class:`~imgstore.services.node.login_guard.LoginGuard`: the
password hash is checked off the event loop and failures are throttled.
"""
from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from imgstore import crypto
from imgstore.config import Settings
from imgstore.db.models import Account, Session
from imgstore.errors import AUTH_FAILED, INVALID_SESSION, ApiError
from imgstore.services.node.login_guard import LoginGuard
from imgstore.wire.dates import utcnow

log = logging.getLogger(__name__)

ADMIN = "admin"
#: how long a validated session is trusted without asking the database again
RECENT_SECONDS = 3.0


async def ensure_admin(db: AsyncSession, settings: Settings) -> None:
    """Create the admin account on first start.

    Its password is ``IMGSTORE_ADMIN_PASSWORD``, or a generated one written 0600 to the
    data dir and printed once, so a fresh install is never left with a known default.
    """
    if await db.scalar(select(Account.uuid).where(Account.name == ADMIN)):
        return
    plain = settings.admin_password or _generated_password(settings.data_dir)
    db.add(
        Account(
            uuid=crypto.new_uuid(),
            name=ADMIN,
            password_hash=crypto.hash_password(crypto.sha512_hex(plain)),
        )
    )
    try:
        await db.commit()
    except IntegrityError:  # another node starting at the same moment made it first
        await db.rollback()


def _generated_password(data_dir: Path) -> str:
    plain = secrets.token_urlsafe(18)
    path = data_dir / "admin-password"
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(plain + "\n")
    print(f"imgstore: generated the admin password; it is in {path} (mode 0600)", flush=True)
    return plain


def stored_id(session_uuid: str) -> str:
    """What the database keeps of a session uuid: its sha256, hex."""
    return hashlib.sha256(session_uuid.encode()).hexdigest()


async def log_in(db: AsyncSession, settings: Settings, guard: LoginGuard, address: str,
                 account_name: str, password: str) -> tuple[Session, str]:
    """The new session and its uuid (the row holds only :func:`stored_id` of it).

    ``password`` is what the client sent: the SHA-512 hex of the real password.
    ``address`` is the client's, for :class:`LoginGuard`'s counters.
    """
    async with guard.attempt(address, account_name):
        account = await db.scalar(select(Account).where(Account.name == account_name))
        if not await guard.verify(password, account.password_hash if account else None):
            guard.failed(address, account_name)
            raise ApiError(AUTH_FAILED, "wrong account name or password")
    assert account is not None
    await _drop_expired(db)
    live = await db.scalar(
        select(func.count()).select_from(Session).where(Session.account_uuid == account.uuid)
    ) or 0
    if live >= settings.session_max_concurrent:
        raise ApiError(
            AUTH_FAILED,
            f"account[{account_name}] has reached the maximum of "
            f"{settings.session_max_concurrent} concurrent sessions",
        )
    now = utcnow()
    plain = crypto.new_uuid()
    session = Session(
        uuid=stored_id(plain),
        account_uuid=account.uuid,
        user_uuid=account.uuid,
        expired_date=now + timedelta(seconds=settings.session_timeout),
        create_date=now,
    )
    db.add(session)
    await db.commit()
    return session, plain


async def log_out(db: AsyncSession, session_uuid: str) -> None:
    key = stored_id(session_uuid)
    _recent.drop(key)
    await db.execute(delete(Session).where(Session.uuid == key))
    await db.commit()


async def renew(db: AsyncSession, settings: Settings, session_uuid: str, duration: int | None) -> Session:
    """RenewSession: the live session now expires ``duration`` seconds from now (the
    session timeout when None); an unknown or expired one is ID.1001, as ZStack's
    ``Session.renewSession`` refuses it. Validated copies kept in memory are dropped."""
    session = await find_valid(db, session_uuid)
    if session is None:
        raise ApiError(INVALID_SESSION, "the session to renew is invalid or has expired")
    session.expired_date = utcnow() + timedelta(seconds=duration or settings.session_timeout)
    await db.commit()
    _recent.drop(session.uuid)
    return session


async def find_valid(db: AsyncSession, session_uuid: str) -> Session | None:
    """The live session of the uuid a client presents, or None."""
    session = await db.get(Session, stored_id(session_uuid))
    if session is None or session.expired_date <= utcnow():
        return None
    return session


async def authenticate(db: async_sessionmaker[AsyncSession], authorization: str | None) -> Session:
    """The session named by an ``Authorization: OAuth <uuid>`` header, or ID.1001.

    ``db`` makes database sessions; one is opened only when the session was not
    validated in the last :data:`RECENT_SECONDS` (see the module's doc).
    """
    if not authorization:
        raise ApiError(INVALID_SESSION, "missing header 'Authorization: OAuth <session uuid>'")
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    if scheme != "OAuth" or not key:
        raise ApiError(INVALID_SESSION, "Authorization type must be 'OAuth' followed by a session uuid")
    session = _recent.get(db, stored_id(key))
    if session is None:
        async with db() as s:
            session = await find_valid(s, key)
        if session is None:
            raise ApiError(INVALID_SESSION, "the session is invalid or has expired; log in again")
        _recent.put(db, session)
    return session


class RecentSessions:
    """Sessions validated in the last ``seconds``, by stored id (:func:`stored_id`), each
    with the database (its session maker) it was found in: one process may serve several
    databases."""

    def __init__(self, seconds: float = RECENT_SECONDS, max_entries: int = 10_000) -> None:
        self.seconds = seconds
        self.max_entries = max_entries
        self._entries: dict[str, tuple[Any, Session, float]] = {}

    def get(self, owner: Any, uuid: str) -> Session | None:
        entry = self._entries.get(uuid)
        if entry is None:
            return None
        entry_owner, session, until = entry
        if entry_owner is not owner or until <= time.monotonic() or session.expired_date <= utcnow():
            self._entries.pop(uuid, None)
            return None
        return session

    def put(self, owner: Any, session: Session) -> None:
        now = time.monotonic()
        if len(self._entries) >= self.max_entries:  # many clients: forget the stale ones
            self._entries = {k: e for k, e in self._entries.items() if e[2] > now}
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
        self._entries[session.uuid] = (owner, session, now + self.seconds)

    def drop(self, uuid: str) -> None:
        self._entries.pop(uuid, None)


_recent = RecentSessions()


async def _drop_expired(db: AsyncSession) -> None:
    await db.execute(delete(Session).where(Session.expired_date <= utcnow()))
