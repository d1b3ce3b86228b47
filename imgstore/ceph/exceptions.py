"""Errors of the Ceph layer.

Every failure that leaves ``imgstore.ceph`` is one of these (glance_store style): callers
never see a ``rados``, ``rbd`` or ``asyncssh`` exception, so the services can map a cause
to a ZStack error code without importing those libraries.

Messages are meant to be shown to an operator. They never contain an SSH password or a
cephx key: the code that raises them only ever formats user names, host names, pool
names and (trimmed) stderr of ceph commands, which do not echo secrets.
"""

from __future__ import annotations


class CephError(Exception):
    """Base of every Ceph-layer error.

    ``host`` is the mon host (ssh hostname, or the mon_host string of a cluster handle)
    the error is about, or None when it is not about one host.
    """

    def __init__(self, message: str, host: str | None = None) -> None:
        super().__init__(message)
        self.host = host

    @property
    def reason(self) -> str:
        return str(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, host={self.host!r})"


class MonUrlError(CephError, ValueError):
    """A monUrl does not follow ZStack's format; the message is ZStack's own text."""


class InvalidName(CephError, ValueError):
    """A pool or client name that is not safe to pass to ceph (shell, caps, rbd paths)."""


class SshAuthFailed(CephError):
    """The mon host refused the ssh user name or password."""


class SshUnreachable(CephError):
    """No ssh connection could be made: refused, no route, unknown host name."""


class SshHostKeyMismatch(CephError):
    """The host offered another ssh host key than the one pinned for it: refused in the
    key exchange, before any password was sent. Both fingerprints are in the message."""

    def __init__(self, message: str, host: str | None, expected: str, offered: str) -> None:
        super().__init__(message, host)
        self.expected = expected
        self.offered = offered


class CephToolsMissing(CephError):
    """The ``ceph`` or ``rbd`` command is not installed (or not on PATH) on the host."""


class CephTimeout(CephError):
    """A bounded call ran out of time (ssh, a ceph command, or a librados call)."""


class CephCommandFailed(CephError):
    """A ceph command returned an error; the message carries its (trimmed) stderr."""


class PoolNotFound(CephError):
    """The pool does not exist in the cluster."""


class CephPermissionDenied(CephError):
    """The cephx key was refused (wrong, revoked) or lacks the caps for the call."""


class ClusterUnreachable(CephError):
    """librados could not reach any monitor of the cluster."""


class ImageExists(CephError):
    """An RBD image of that name is already in the pool."""


class ImageNotFound(CephError):
    """No RBD image of that name in the pool."""


class ImageBusy(CephError):
    """The image cannot be removed: it has clones, snapshots, or is open somewhere."""


class ImageNoSpace(CephError):
    """The pool (or its quota) is full."""


class ImageSizeMismatch(CephError, ValueError):
    """The stream was shorter or longer than the size announced for it."""


__all__ = [
    "CephCommandFailed",
    "CephError",
    "CephPermissionDenied",
    "CephTimeout",
    "CephToolsMissing",
    "ClusterUnreachable",
    "ImageBusy",
    "ImageExists",
    "ImageNoSpace",
    "ImageNotFound",
    "ImageSizeMismatch",
    "InvalidName",
    "MonUrlError",
    "PoolNotFound",
    "SshAuthFailed",
    "SshUnreachable",
]
