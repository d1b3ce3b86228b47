"""Everything that talks to a Ceph cluster.

The only package of imgstore that imports ``rados``, ``rbd`` or ``asyncssh``; it knows
nothing of HTTP or the database. Errors leave it as ``imgstore.ceph.exceptions``.

* :class:`MonUrl` parses ZStack monUrls;
* :class:`MonShell` onboards over ssh (facts, pool, least-privilege cephx key);
* :class:`Cluster` is the librados handle of a storage (capacity, the ping's health check);
* :func:`read_object`, :func:`write_object`, :func:`object_lock` and the like keep small
  RADOS objects of a pool (``bs_ceph_info.json``);
* :class:`ImageWriter`, :func:`iter_image` and the rest of :mod:`imgstore.ceph.rbd` are
  the bits of images;
* :class:`ImageChecksums` asks the OSDs for the CRC-32C of an image's objects (a copy
  verified without reading it back), where :func:`osd_checksums_available`.

Code outside this package imports these names from here, never a submodule.
"""

import importlib
from typing import TYPE_CHECKING

from imgstore.ceph.capacity import Capacity
from imgstore.ceph.cluster import Cluster, Health
from imgstore.ceph.exceptions import (
    CephCommandFailed,
    CephError,
    CephPermissionDenied,
    CephTimeout,
    CephToolsMissing,
    ClusterUnreachable,
    ImageBusy,
    ImageExists,
    ImageNoSpace,
    ImageNotFound,
    ImageSizeMismatch,
    InvalidName,
    MonUrlError,
    PoolNotFound,
    SshAuthFailed,
    SshHostKeyMismatch,
    SshUnreachable,
)
from imgstore.ceph.monurl import MonUrl, check_fingerprint
from imgstore.ceph.names import check_pool_name, rbd_client_caps
from imgstore.ceph.objects import append_object, object_lock, read_object, remove_object, write_object
from imgstore.ceph.rados_checksum import ImageChecksums
from imgstore.ceph.rados_checksum import available as osd_checksums_available
from imgstore.ceph.rbd import (
    CHUNK_SIZE,
    READ_AHEAD,
    WRITE_WINDOW,
    ZERO_GRAIN,
    ImageWriter,
    RadosSource,
    SparsePiece,
    WriteResult,
    image_size,
    image_usage,
    iter_image,
    list_images,
    read_range,
    remove_image,
    runs_to_write,
    zero_block,
)

if TYPE_CHECKING:
    from imgstore.ceph.ssh import MonFacts, MonShell, offered_host_key

# The SSH side (onboarding, mons) loads asyncssh; a process that only asks Ceph over
# librados (the pinger child, tests/unit/test_import_rules.py) never needs it, so these
# names load ``imgstore.ceph.ssh`` on first use (PEP 562), not when the package loads.
_SSH_NAMES = frozenset({"MonFacts", "MonShell", "offered_host_key"})


def __getattr__(name: str) -> object:
    if name in _SSH_NAMES:
        return getattr(importlib.import_module("imgstore.ceph.ssh"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CHUNK_SIZE",
    "READ_AHEAD",
    "WRITE_WINDOW",
    "ZERO_GRAIN",
    "Capacity",
    "CephCommandFailed",
    "CephError",
    "CephPermissionDenied",
    "CephTimeout",
    "CephToolsMissing",
    "Cluster",
    "ClusterUnreachable",
    "Health",
    "ImageBusy",
    "ImageChecksums",
    "ImageExists",
    "ImageNoSpace",
    "ImageNotFound",
    "ImageSizeMismatch",
    "ImageWriter",
    "InvalidName",
    "MonFacts",
    "MonShell",
    "MonUrl",
    "MonUrlError",
    "PoolNotFound",
    "RadosSource",
    "SparsePiece",
    "SshAuthFailed",
    "SshHostKeyMismatch",
    "SshUnreachable",
    "WriteResult",
    "append_object",
    "check_fingerprint",
    "check_pool_name",
    "image_size",
    "image_usage",
    "iter_image",
    "list_images",
    "object_lock",
    "offered_host_key",
    "osd_checksums_available",
    "rbd_client_caps",
    "read_object",
    "read_range",
    "remove_image",
    "remove_object",
    "runs_to_write",
    "write_object",
    "zero_block",
]
