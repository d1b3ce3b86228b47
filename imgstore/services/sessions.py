"""Accounts and sessions: login, logout, validation, the first admin."""
from __future__ import annotations

import logging
import os
import secrets
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from imgstore import crypto
from imgstore.config import Settings
from imgstore.dates import utcnow
from imgstore.db.models import Account, Session
from imgstore.errors import AUTH_FAILED, INVALID_SESSION, ApiError

log = logging.getLogger(__name__)

ADMIN = "admin"


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


async def log_in(db: AsyncSession, settings: Settings, account_name: str, password: str) -> Session:
    """``password`` is what the client sent: the SHA-512 hex of the real password."""
    account = await db.scalar(select(Account).where(Account.name == account_name))
    if account is None or not crypto.verify_password(password, account.password_hash):
        raise ApiError(AUTH_FAILED, "wrong account name or password")
    await _drop_expired(db)
    live = await db.scalar(
        select(func.count()).select_from(Session).where(Session.account_uuid == account.uuid)
    )
    if live >= settings.session_max_concurrent:
        raise ApiError(
            AUTH_FAILED,
            f"account[{account_name}] has reached the maximum of "
            f"{settings.session_max_concurrent} concurrent sessions",
        )
    now = utcnow()
    session = Session(
        uuid=crypto.new_uuid(),
        account_uuid=account.uuid,
        user_uuid=account.uuid,
        expired_date=now + timedelta(seconds=settings.session_timeout),
        create_date=now,
    )
    db.add(session)
    await db.commit()
    return session


async def log_out(db: AsyncSession, session_uuid: str) -> None:
    await db.execute(delete(Session).where(Session.uuid == session_uuid))
    await db.commit()


async def find_valid(db: AsyncSession, session_uuid: str) -> Session | None:
    session = await db.get(Session, session_uuid)
    if session is None or session.expired_date <= utcnow():
        return None
    return session


async def authenticate(db: AsyncSession, authorization: str | None) -> Session:
    """The session named by an ``Authorization: OAuth <uuid>`` header, or ID.1001."""
    if not authorization:
        raise ApiError(INVALID_SESSION, "missing header 'Authorization: OAuth <session uuid>'")
    scheme, _, key = authorization.strip().partition(" ")
    if scheme != "OAuth" or not key.strip():
        raise ApiError(INVALID_SESSION, "Authorization type must be 'OAuth' followed by a session uuid")
    session = await find_valid(db, key.strip())
    if session is None:
        raise ApiError(INVALID_SESSION, "the session is invalid or has expired; log in again")
    return session


async def _drop_expired(db: AsyncSession) -> None:
    await db.execute(delete(Session).where(Session.expired_date <= utcnow()))
