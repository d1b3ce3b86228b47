"""Secrets at rest and account passwords (README, Design notes).

SSH passwords and cephx keys are encrypted with one Fernet key: the setting
``IMGSTORE_SECRET_KEY`` (shared by all nodes of a PostgreSQL deployment) or a key file
created 0600 in the data dir. Account passwords arrive as the SHA-512 hex digest the
ZStack clients send and are kept only as a salted scrypt hash of that digest.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import uuid
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class SecretBox:
    """Encrypts and decrypts the secrets imgstore must be able to use again."""

    def __init__(self, key: str | bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def from_settings(cls, key: str | None, data_dir: Path) -> SecretBox:
        if key:
            return cls(key)
        return cls(_key_file(data_dir / "secret.key"))

    def seal(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken as e:
            raise ValueError("a stored secret cannot be decrypted with this node's key") from e


def _key_file(path: Path) -> bytes:
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def sha512_hex(plain: str) -> str:
    """What a ZStack client sends as the password of an account."""
    return hashlib.sha512(plain.encode()).hexdigest()


def hash_password(client_digest: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(client_digest.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def verify_password(client_digest: str, stored: str) -> bool:
    try:
        scheme, salt_hex, digest_hex = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    digest = hashlib.scrypt(client_digest.encode(), salt=bytes.fromhex(salt_hex), **_SCRYPT)
    return hmac.compare_digest(digest.hex(), digest_hex)


def new_uuid() -> str:
    """ZStack uuids: 32 lowercase hex characters, no dashes."""
    return uuid.uuid4().hex
