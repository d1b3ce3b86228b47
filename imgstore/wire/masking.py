"""What of a URL may be kept: never the credentials a user put into it (issue Trust, point 7).

AddImage takes ``http://user:password@host/disk.qcow2``; the download uses the user info,
but the image's ``url`` column, its task progress and the pool's ``bs_ceph_info.json``
(read by ZStack and by anyone with the pool) keep the URL without it.
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

TOKEN_MASK = "******"
_TOKEN = re.compile(r"(?P<name>[?&]token=)[^&#\s]+")


def without_credentials(url: str) -> str:
    """``url`` without its user info (``user:password@``); any other string unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:  # not a URL we can split: nothing to strip that we could find
        return url
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def masked(url: str) -> str:
    """The URL with the password of its user info hidden: safe in an error or a log line
    (the user name stays, so an operator can tell which credentials were used)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{host}" if ":" in userinfo else f"***@{host}").geturl()


def without_tokens(text: str) -> str:
    """``text`` with the ``token=`` of every upload or export URL in it masked: the URL
    keeps its shape but cannot be used (what a job poll without a session may see)."""
    return _TOKEN.sub(lambda m: m["name"] + TOKEN_MASK, text)
