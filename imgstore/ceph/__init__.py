"""Everything that talks to a Ceph cluster.

The only package of imgstore that imports ``rados``, ``rbd`` or ``asyncssh``; it knows
nothing of HTTP or the database. Errors leave it as ``imgstore.ceph.exceptions``.

* :class:`MonUrl` parses ZStack monUrls;
* :class:`MonShell` onboards over ssh (facts, pool, least-privilege cephx key);
* :class:`Cluster` is the librados handle of a storage (capacity, the ping's health check);
* :func:`read_object`, :func:`write_object`, :func:`object_lock` and the like keep small
  RADOS objects of a pool (``bs_ceph_info.json``);
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
from imgstore.ceph.monurl import MonUrl, check_fingerprint
from imgstore.ceph.objects import append_object, object_lock, read_object, remove_object, write_object
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
from imgstore.ceph.ssh import MonFacts, MonShell, check_pool_name, offered_host_key, rbd_client_caps

__all__ = [
    "CHUNK_SIZE",
    "READ_AHEAD",
    "WRITE_WINDOW",
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
    "rbd_client_caps",
    "read_object",
    "read_range",
    "remove_image",
    "remove_object",
    "write_object",
]
