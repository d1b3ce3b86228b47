"""ZStack monUrls: ``sshUsername:sshPassword@hostname[:sshPort][/?monPort=N]``.

The rules are ZStack's (``ceph/MonUri.java``, ``CephApiInterceptor``), reproduced so that
the same strings are accepted and the same error texts come back:

* there is no scheme; the user-info part is everything before the **last** ``@``, so a
  password may contain ``@``;
* the user-info part must contain ``:``; the user name is the text before the first
  ``:``, the password the text after it **up to the next** ``:`` (Java's
  ``split(":")``), so a password containing ``:`` is truncated;
* the rest is read as the URI ``ssh://<rest>``: a host name is required, the ssh port
  defaults to 22 and must be 1..65535;
* the only query parameter is ``monPort`` (default 6789); any other is "unknown".

imgstore adds two things ZStack does not have (issue Trust, point 1), both optional so
every ZStack monUrl means what it meant:

* a second query parameter, ``sshHostKeyFingerprint=SHA256:...`` (as ``ssh-keygen -lf``
  prints it; ``+`` stays ``+``), the host key the operator expects: the first contact
  is then checked against it instead of trusting whatever key answers;
* with ``password_optional`` (a private key is configured), ``user@host`` or
  ``user:@host`` carry no password: the login is by key.

Where Java would crash with an internal error (an empty user name or password, a
non-numeric monPort) we answer with ZStack's own "invalid monUrl" texts instead.

The password never appears in a message or a repr: error messages quote the url with
the password replaced by ``******``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import unquote, unquote_plus

from imgstore.ceph.exceptions import MonUrlError

__all__ = ["DEFAULT_MON_PORT", "DEFAULT_SSH_PORT", "MON_URL_FORMAT", "MonUrl", "check_fingerprint"]

MON_URL_FORMAT = "sshUsername:sshPassword@hostname:[sshPort]/?[monPort=]"
DEFAULT_SSH_PORT = 22
DEFAULT_MON_PORT = 6789
_MASK = "******"

# Characters java.net.URI accepts in a URI (unreserved, reserved, '%'); anything else
# (a space, a quote, a non-ASCII letter) makes `new URI(...)` throw.
_URI_CHARS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*\Z")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\Z")
_DIGITS = re.compile(r"[0-9]+\Z")
# OpenSSH's SHA256 form: 32 bytes in base64 without padding (43 characters)
_FINGERPRINT = re.compile(r"SHA256:([A-Za-z0-9+/]{43})=?\Z")
FINGERPRINT_PARAM = "sshHostKeyFingerprint"


def check_fingerprint(text: str) -> str | None:
    """``text`` as OpenSSH prints a SHA256 host key fingerprint, or None when it is not one."""
    match = _FINGERPRINT.match(text.strip()) if isinstance(text, str) else None
    return f"SHA256:{match.group(1)}" if match else None


class _NoHost(Exception):
    """Java's URI would fall back to a registry-based authority: getHost() is null."""


@dataclass(frozen=True)
class MonUrl:
    """One parsed monUrl. ``hostname`` is bare (no brackets, even for IPv6)."""

    username: str
    password: str = field(repr=False)
    hostname: str
    ssh_port: int = DEFAULT_SSH_PORT
    mon_port: int = DEFAULT_MON_PORT
    host_key: str | None = None  # the pinned SHA256 host key fingerprint; None: learn it

    @classmethod
    def parse(cls, text: str, password_optional: bool = False) -> MonUrl:
        """Parse ``text`` with ZStack's rules; raise MonUrlError in ZStack's words.
        ``password_optional``: the login may be by key, so no password is fine."""
        if not isinstance(text, str):
            raise MonUrlError(_generic(str(text)))
        at = text.rfind("@")
        user_info = text[:at]
        if at == -1 or (":" not in user_info and not password_optional):
            raise MonUrlError(_invalid(text, "the sshUsername:sshPassword part is invalid"))
        username, _, after = user_info.partition(":")
        password = after.split(":", 1)[0]
        if not username or not (password or password_optional):
            raise MonUrlError(_invalid(text, "the sshUsername:sshPassword part is invalid"))

        rest = text[at + 1 :]
        if not _URI_CHARS.match(rest):
            raise MonUrlError(_generic(text))
        authority, query = _split_rest(rest)
        try:
            hostname, port_text = _split_authority(authority)
        except _NoHost:
            raise MonUrlError(_invalid(text, "hostname cannot be null")) from None

        ssh_port = int(port_text) if port_text else DEFAULT_SSH_PORT
        if not 1 <= ssh_port <= 65535:
            raise MonUrlError(
                _invalid(text, "the ssh port is greater than 65535 or smaller than 1")
            )
        mon_port = _mon_port(text, query)
        return cls(username, password, hostname, ssh_port, mon_port, _host_key(text, query))

    def masked(self) -> str:
        """The url with the password hidden, always with both ports: safe to log/show."""
        return f"{self.username}:{_MASK}@{self.host_for_url}:{self.ssh_port}/?monPort={self.mon_port}"

    @property
    def host_for_url(self) -> str:
        """The host name as written in a url (IPv6 addresses in brackets)."""
        return f"[{self.hostname}]" if ":" in self.hostname else self.hostname

    def __str__(self) -> str:
        return self.masked()


def mask_url(text: str) -> str:
    """Hide the password of a (possibly malformed) monUrl for an error message."""
    at = text.rfind("@")
    if at == -1:
        # No user-info separator: whatever follows the first ':' may be a password.
        colon = text.find(":")
        return text if colon == -1 else text[: colon + 1] + _MASK
    user_info = text[:at]
    if ":" in user_info:
        return user_info.split(":", 1)[0] + ":" + _MASK + text[at:]
    return _MASK + text[at:]


def _invalid(text: str, what: str) -> str:
    return f"invalid monUrl[{mask_url(text)}], {what}. A valid monUrl is in format of {MON_URL_FORMAT}"


def _generic(text: str) -> str:
    return f"invalid monUrl[{mask_url(text)}]. A valid url is in format of {MON_URL_FORMAT}"


def _split_rest(rest: str) -> tuple[str, str]:
    """Split ``host[:port][/path][?query][#fragment]`` into (authority, query)."""
    rest = rest.split("#", 1)[0]
    rest, _, query = rest.partition("?")
    authority = rest.split("/", 1)[0]
    return authority, query


def _split_authority(authority: str) -> tuple[str, str]:
    """Return (bare host, port text) the way java.net.URI's server authority does."""
    if authority.startswith("["):
        end = authority.find("]")
        if end == -1:
            raise _NoHost()
        host, tail = authority[1:end], authority[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _NoHost() from None
        if tail and not tail.startswith(":"):
            raise _NoHost()
        port = tail[1:]
    else:
        if authority.count(":") > 1:
            raise _NoHost()
        host, _, port = authority.partition(":")
        if not _is_hostname(host):
            raise _NoHost()
    if port and not _DIGITS.match(port):
        raise _NoHost()  # Java reads "host:abc" as a registry authority: no host
    return host, port


def _is_hostname(host: str) -> bool:
    """An IPv4 address, or DNS labels whose last one starts with a letter (RFC 2396)."""
    if not host:
        return False
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if not all(_LABEL.match(label) for label in labels):
        return False
    return labels[-1][0].isalpha()


def _mon_port(text: str, query: str) -> int:
    """Read ``monPort`` from the query; any other parameter is refused (ZStack)."""
    value: str | None = None
    seen = False
    for pair in query.split("&"):
        if not pair:
            continue
        name, eq, raw = pair.partition("=")
        name = unquote_plus(name)
        if name == FINGERPRINT_PARAM:
            continue  # read by _host_key
        if name != "monPort":
            raise MonUrlError(_invalid(text, f"unknown parameter[{name}]"))
        if not seen:  # like URLEncodedUtils + getQueryValue: the first one wins
            seen = True
            value = unquote_plus(raw) if eq else None
    if value is None:
        return DEFAULT_MON_PORT
    if not _DIGITS.match(value) or not 1 <= int(value) <= 65535:
        raise MonUrlError(_generic(text))
    return int(value)


def _host_key(text: str, query: str) -> str | None:
    """The ``sshHostKeyFingerprint`` of the query (the first one), checked; None if absent."""
    for pair in query.split("&"):
        name, _, raw = pair.partition("=")
        if unquote_plus(name) != FINGERPRINT_PARAM:
            continue
        fingerprint = check_fingerprint(unquote(raw))  # not unquote_plus: base64 has '+'
        if fingerprint is None:
            raise MonUrlError(_invalid(
                text, f"{FINGERPRINT_PARAM} must be an SSH host key fingerprint as OpenSSH prints it "
                "(SHA256:<43 base64 characters>)"))
        return fingerprint
    return None
