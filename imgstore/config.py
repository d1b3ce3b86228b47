"""Settings: one typed object read from the environment (``IMGSTORE_*``)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything an operator may tune, with defaults that are safe on one node."""

    model_config = SettingsConfigDict(env_prefix="IMGSTORE_", extra="ignore")

    data_dir: Path = Path("./data")
    db_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default is a SQLite file in data_dir"
    )
    admin_password: str | None = Field(
        default=None, description="initial admin password (plain); generated when unset"
    )
    secret_key: str | None = Field(
        default=None,
        description="Fernet key for secrets at rest; shared by all nodes. "
        "Default: a key file in data_dir.",
    )
    session_timeout: int = 7200
    session_max_concurrent: int = 500
    ceph_timeout: float = 10.0
    ssh_timeout: float = 10.0
    ping_interval: float = 60.0
    job_retention: int = 10800
    public_url: str | None = Field(
        default=None, description="base URL put into job locations; default from the request"
    )
    node_id: str | None = None

    def database_url(self) -> str:
        """The async SQLAlchemy URL: plain URLs are given their async driver."""
        url = self.db_url or f"sqlite:///{(self.data_dir / 'imgstore.db').resolve()}"
        for plain, driver in (
            ("sqlite://", "sqlite+aiosqlite://"),
            ("postgresql://", "postgresql+psycopg://"),
            ("postgres://", "postgresql+psycopg://"),
        ):
            if url.startswith(plain):
                return driver + url[len(plain):]
        return url
