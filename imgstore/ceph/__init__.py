"""Everything that talks to a Ceph cluster (see DESIGN.md: ceph/)."""

from imgstore.ceph.exceptions import (
    CephCommandFailed,
    CephError,
    CephPermissionDenied,
    CephTimeout,
    CephToolsMissing,
    ClusterUnreachable,
    InvalidName,
    MonUrlError,
    PoolNotFound,
    SshAuthFailed,
    SshUnreachable,
)
from imgstore.ceph.monurl import MonUrl
from imgstore.ceph.capacity import Capacity

__all__ = [
    "Capacity",
    "MonUrl",
    "CephError",
    "MonUrlError",
    "InvalidName",
    "SshAuthFailed",
    "SshUnreachable",
    "CephToolsMissing",
    "CephTimeout",
    "CephCommandFailed",
    "PoolNotFound",
    "CephPermissionDenied",
    "ClusterUnreachable",
]
