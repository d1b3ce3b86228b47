"""The names imgstore gives Ceph, checked before they reach a shell, a cap or an rbd path:
pools, cephx clients, and the caps of a storage's key.

Apart from :mod:`imgstore.ceph.ssh` so that checking a name does not load asyncssh: a
server loads it with its first SSH session to a mon host (an add, a mon's change), not at
its start (a restarted server with its storages talks to them through librados only).
"""
from __future__ import annotations

import re

from imgstore.ceph.exceptions import InvalidName

__all__ = ["check_client_name", "check_pool_name", "rbd_client_caps"]

# A pool name is also written into cephx caps (pool="..."), rbd paths (pool/image) and
# shell commands: refuse what could break out of any of them.
_BAD_POOL_CHARS = re.compile(r"[\s\"'`,;=/@\\]|[\x00-\x1f\x7f]")
_CLIENT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}\Z")


def check_pool_name(pool: str) -> str:
    """Refuse pool names that are not safe in a shell, a cap or an rbd path."""
    if not pool or len(pool) > 255 or pool.startswith("-") or _BAD_POOL_CHARS.search(pool):
        raise InvalidName(f"invalid pool name[{pool!r}]")
    return pool


def check_client_name(client: str) -> str:
    """A cephx client id (without ``client.``): letters, digits, ``_ . -``."""
    if not _CLIENT_NAME.match(client or ""):
        raise InvalidName(f"invalid ceph client name[{client!r}]")
    return client


def rbd_client_caps(pool: str) -> list[str]:
    """The cephx caps of an imgstore key for ``pool``, as ``auth`` command arguments.

    * ``mon 'profile rbd'``: read the maps (incl. the `df`, `osd dump`, `osd crush rule
      dump`, `osd tree`, `quorum_status` capacity/health reads) and blocklist dead
      clients' locks. `osd df` is a mgr command in Pacific; we send it through the mon,
      which proxies mgr commands for clients whose *mon* caps allow them, so no extra
      mgr cap is needed for it.
    * ``osd 'profile rbd pool=P'``: read/write/remove objects and rbd images in P only.
    * ``mgr 'profile rbd pool=P'``: the rbd_support module calls librbd may make, for P.
    """
    quoted = f'pool="{check_pool_name(pool)}"'
    return ["mon", "profile rbd", "osd", f"profile rbd {quoted}", "mgr", f"profile rbd {quoted}"]
