"""Settings: one typed object read from the environment (``IMGSTORE_*``)."""
from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# a host name in image_url_allow (url_guard.Allowance reads the entries this lets through)
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?")


def _is_network_or_host(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry.strip("[]"), strict=False)
        return True
    except ValueError:
        return bool(_HOST_NAME.fullmatch(entry))


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
        default=None, description="base URL put into job locations, upload and export URLs; "
        "default: the address `imgstore serve` listens on"
    )
    node_id: str | None = None
    reply_cache_entries: int = Field(
        default=2048, description="query replies kept until the database changes (api/reply_cache.py); 0: none"
    )
    kept_list_rows: int = Field(
        default=200_000, ge=0,
        description="the longest list a query without conditions keeps until the database changes, to answer "
                    "any page of it without its handler (api/kept_pages.py; a longer one keeps only its keys); "
                    "0: none",
    )

    # logins (issue Trust, point 4: services/node/login_guard.py); tiers in the `limits` notation
    login_hash_workers: int = Field(
        default=1, ge=1, le=8,
        description="threads that hash account passwords (scrypt); logins wait for one, off the event loop",
    )
    login_failures_per_address: str = Field(
        default="5 per minute; 20 per hour",
        description="failed logins allowed per source address, per window; beyond: 429 with Retry-After",
    )
    login_failures_per_account: str = Field(
        default="10 per minute; 50 per hour",
        description="failed logins allowed per account name, per window, from any address; beyond: 429",
    )
    login_throttle_delay: float = Field(
        default=1.0, ge=0, le=10,
        description="seconds a throttled login waits before its 429, so a guessing client slows down",
    )

    # issue 16 point 1: an async API refused before its job starts answers 202 + a failed job
    # (api/refused_jobs.py); such jobs are bounded per source and forgotten fast
    refused_jobs_per_address: str = Field(
        default="60 per minute",
        description="refused requests per source address turned into failed jobs, per window; "
        "beyond: the refusal is answered at once (401/400), with no job",
    )
    refused_jobs_per_node: str = Field(
        default="600 per minute",
        description="refused requests turned into failed jobs by this node, from all sources, per window",
    )
    refused_job_retention: int = Field(
        default=120, gt=0, description="seconds a refused request's failed job can be polled",
    )

    # Trust point 6: image files cannot reach outside themselves or blow up
    # (imageformat.py, qemu.py, services/images/intake.py)
    image_max_virtual_size: int = Field(
        default=16 << 40, gt=0,
        description="bytes: an image whose virtual size (qcow2/vmdk header, or a raw source's "
        "length) is larger is refused before any RBD image exists; 16 TiB: above any real "
        "template, far below what a crafted header can claim",
    )
    image_max_source_bytes: int = Field(
        default=1 << 40, gt=0,
        description="bytes: a source of unknown length (no Content-Length, an upload without a "
        "size) that sends more is refused",
    )
    image_convert_timeout: float = Field(
        default=21600.0, gt=0,
        description="seconds a qcow2/vmdk conversion may take before it fails (6 h: ~4 TiB "
        "allocated at 200 MB/s)",
    )
    image_convert_memory: int = Field(
        default=2 << 30, gt=0, description="bytes of address space qemu-nbd may map (RLIMIT_AS)"
    )

    # images (services/images/manage.py, image_download.py, image_upload.py)
    file_allow_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="directories AddImage may read file:/// URLs from (separated by ':' or ','); "
        "empty: file:/// URLs are refused",
    )
    image_deletion_policy: Literal["Delay", "Direct"] = Field(
        default="Delay",
        description="DeleteImage: Delay keeps the bits until expunged (by hand or after "
        "image_expunge_period); Direct removes them at once",
    )
    image_expunge_period: int = Field(default=259200, description="seconds a Delay-deleted image is kept")
    image_expunge_interval: float = Field(default=3600.0, description="seconds between expunge checks")
    image_upload_timeout: int = Field(
        default=86400, description="an upload:// image that receives no byte for this long fails"
    )
    image_download_timeout: float = Field(
        default=60.0, description="seconds an http(s) source may stay silent before the download fails"
    )

    # Trust issue, point 5 (helper D): AddImage http(s) sources (services/images/url_guard.py)
    image_url_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="hosts and networks (names, addresses, CIDRs; separated by ',') AddImage may "
        "download from although they are not public (loopback, private, link-local...); empty: "
        "only public addresses",
    )

    # Trust issue, points 3, 8, 11 (helper B): bodies, slow clients, exports, TLS
    max_body_bytes: int = Field(
        default=1 << 20, description="largest request body but an upload's; bigger ones get 413 unread"
    )
    header_timeout: float = Field(
        default=8.0, description="seconds a connection may take to send a request's headers, then closed"
    )
    idle_timeout: float = Field(
        default=5.0, description="seconds a kept-alive connection may stay idle between requests"
    )
    export_max_per_link: int = Field(
        default=4, description="downloads of one export URL served at once; more get 429"
    )
    export_max_total: int = Field(
        default=32, description="downloads of export URLs served at once by this node; more get 429"
    )
    listen_url: str | None = Field(
        default=None, description="set by `imgstore serve`: its own scheme://host:port, the base of "
        "stored URLs when public_url is unset (never the request's Host header)"
    )

    @field_validator("image_url_allow", mode="before")
    @classmethod
    def _split_allowance(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        for entry in value if isinstance(value, list) else []:
            if not _is_network_or_host(str(entry)):
                raise ValueError(f"image_url_allow: [{entry}] is neither a host name, an address nor a CIDR")
        return value

    # ssh to mons (issue Trust, point 1)
    ssh_private_key: Path | None = Field(
        default=None,
        description="private key file (no passphrase) imgstore logs in to mons with; "
        "then a monUrl may carry no password, and moving a mon needs none",
    )

    @field_validator("file_allow_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in re.split(r"[:,]", text) if part.strip()]
        return value

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
