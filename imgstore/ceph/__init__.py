"""Everything that talks to a Ceph cluster.

The only package of imgstore that imports ``rados``, ``rbd`` or ``asyncssh``; it knows
nothing of HTTP or the database. Errors leave it as ``imgstore.ceph.exceptions``.

* :class:`MonUrl` parses ZStack monUrls;
* :class:`MonShell` onboards over ssh (facts, pool, least-privilege cephx key);
* :class:`Cluster` is the librados handle of a storage (capacity, the ping's health check);
* :class:`ImageWriter`, :func:`iter_image` and the rest of :mod:`imgstore.ceph.rbd` are
  the bits of images.

Code outside this package imports these names from here, never a submodule.
"""

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
from imgstore.ceph.monurl import MonUrl
from imgstore.ceph.rbd import (
    CHUNK_SIZE,
    READ_AHEAD,
    WRITE_WINDOW,
    ImageWriter,
    RadosSource,
    WriteResult,
    image_size,
    image_usage,
    iter_image,
    list_images,
    read_range,
    remove_image,
)
from imgstore.ceph.ssh import MonFacts, MonShell, offered_host_key, rbd_client_caps

__all__ = [
    "Capacity",
    "Cluster",
    "Health",
    "MonFacts",
    "MonShell",
    "MonUrl",
    "offered_host_key",
    "rbd_client_caps",
    "CHUNK_SIZE",
    "READ_AHEAD",
    "WRITE_WINDOW",
    "ImageWriter",
    "RadosSource",
    "WriteResult",
    "image_size",
    "image_usage",
    "iter_image",
    "list_images",
    "read_range",
    "remove_image",
    "CephError",
    "MonUrlError",
    "InvalidName",
    "SshAuthFailed",
    "SshUnreachable",
    "SshHostKeyMismatch",
    "CephToolsMissing",
    "CephTimeout",
    "CephCommandFailed",
    "PoolNotFound",
    "CephPermissionDenied",
    "ClusterUnreachable",
    "ImageExists",
    "ImageNotFound",
    "ImageBusy",
    "ImageNoSpace",
    "ImageSizeMismatch",
]
