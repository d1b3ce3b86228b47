"""MonUrl follows ZStack's MonUri rules and texts, and hides passwords."""

from __future__ import annotations

import pytest

from imgstore.ceph import MonUrl, MonUrlError
from imgstore.ceph.monurl import MON_URL_FORMAT

FORMAT_TAIL = f"A valid monUrl is in format of {MON_URL_FORMAT}"


def parse_error(url: str) -> str:
    with pytest.raises(MonUrlError) as info:
        MonUrl.parse(url)
    return str(info.value)


def test_parses_the_zstack_example() -> None:
    mon = MonUrl.parse("root:password@10.0.0.1:22/?monPort=6789")
    assert mon == MonUrl("root", "password", "10.0.0.1", 22, 6789)


def test_ports_default_to_22_and_6789() -> None:
    mon = MonUrl.parse("root:password@ceph-1.example.com")
    assert (mon.hostname, mon.ssh_port, mon.mon_port) == ("ceph-1.example.com", 22, 6789)


def test_custom_ports() -> None:
    mon = MonUrl.parse("imgstore-ceph:imgstore-dev@127.0.0.1:16022/?monPort=16789")
    assert (mon.ssh_port, mon.mon_port) == (16022, 16789)


def test_empty_port_after_colon_means_default() -> None:
    assert MonUrl.parse("root:pw@host:/?monPort=1").ssh_port == 22


def test_password_may_contain_at_sign_user_info_ends_at_last_at() -> None:
    mon = MonUrl.parse("root:p@ss@w@rd@10.0.0.1")
    assert (mon.username, mon.password, mon.hostname) == ("root", "p@ss@w@rd", "10.0.0.1")


def test_password_with_colon_is_truncated_at_the_next_colon() -> None:
    mon = MonUrl.parse("root:pass:word@10.0.0.1")
    assert mon.password == "pass"


def invalid(reason: str) -> str:
    """How ZStack's text ends for a url refused for ``reason`` (after the masked url)."""
    return f"], {reason}. {FORMAT_TAIL}"


USER_INFO = invalid("the sshUsername:sshPassword part is invalid")
NO_HOST = invalid("hostname cannot be null")
SSH_PORT = invalid("the ssh port is greater than 65535 or smaller than 1")
GENERIC = f"]. A valid url is in format of {MON_URL_FORMAT}"  # where Java's URI parser throws

# Every url ZStack refuses, and how its text ends. Every text quotes the url with its
# password masked: none shows "password" or "s3cr". The s3cr... rows are the masking's
# hard cases: an '@' in the password, no '@', no ':'.
REFUSED = [
    ("rootpassword@10.0.0.1", USER_INFO),  # no ':' in the user info
    ("10.0.0.1:22", USER_INFO),  # no '@'
    (":password@10.0.0.1", USER_INFO),  # an empty user name or password
    ("root:@10.0.0.1", USER_INFO),
    ("root::x@10.0.0.1", USER_INFO),
    ("root:password@10.0.0.1:0/?monPort=6789", SSH_PORT),
    ("root:password@10.0.0.1:65536/?monPort=6789", SSH_PORT),
    ("root:password@10.0.0.1:99999999999/?monPort=6789", SSH_PORT),
    ("root:password@10.0.0.1:22/?monPort=6789&pool=x", invalid("unknown parameter[pool]")),
    ("root:password@", NO_HOST),  # a missing or invalid host name
    ("root:password@:22", NO_HOST),
    ("root:password@/?monPort=6789", NO_HOST),
    ("root:password@bad_host:22", NO_HOST),
    ("root:password@10.0.0.1:ssh", NO_HOST),
    ("root:password@10.0.0.256", NO_HOST),
    ("root:password@a:b:c", NO_HOST),
    ("root:password@10.0.0.1/?monPort=abc", GENERIC),  # a bad monPort, an illegal character
    ("root:password@10.0.0.1/?monPort=", GENERIC),
    ("root:password@10.0.0.1/?monPort=0", GENERIC),
    ("root:password@10.0.0.1/?monPort=70000", GENERIC),
    ("root:password@host name", GENERIC),
    ("root:s3cr@t@bad_host", NO_HOST),  # the masking's hard cases
    ("root:s3cr@t@10.0.0.1:0", SSH_PORT),
    ("root:s3cr@t@10.0.0.1/?x=1", invalid("unknown parameter[x]")),
    ("root:s3cr@t@10.0.0.1/?monPort=x", GENERIC),
    ("root:s3cret", USER_INFO),
    ("rootXs3cret@10.0.0.1", USER_INFO),
]


@pytest.mark.parametrize(("url", "ending"), REFUSED)
def test_a_bad_url_is_refused_in_zstacks_words_with_its_password_masked(url: str, ending: str) -> None:
    message = parse_error(url)
    assert message.startswith("invalid monUrl[") and message.endswith(ending)
    assert "******" in message
    assert "password" not in message and "s3cr" not in message


@pytest.mark.parametrize("port", ["1", "65535"])
def test_ssh_port_bounds_are_accepted(port: str) -> None:
    assert MonUrl.parse(f"root:password@10.0.0.1:{port}").ssh_port == int(port)


def test_first_mon_port_wins_like_zstack() -> None:
    assert MonUrl.parse("root:pw@h/?monPort=1&monPort=2").mon_port == 1


def test_ipv6_host_in_brackets() -> None:
    mon = MonUrl.parse("root:pw@[::1]:2222/?monPort=3300")
    assert (mon.hostname, mon.ssh_port) == ("::1", 2222)
    assert mon.masked() == "root:******@[::1]:2222/?monPort=3300"


def test_masked_shows_everything_but_the_password() -> None:
    mon = MonUrl.parse("root:s3cret@10.0.0.1")
    assert mon.masked() == "root:******@10.0.0.1:22/?monPort=6789"


def test_repr_and_str_do_not_show_the_password() -> None:
    mon = MonUrl.parse("root:s3cret@10.0.0.1")
    assert "s3cret" not in repr(mon)
    assert "s3cret" not in str(mon)
    assert "root" in repr(mon) and "10.0.0.1" in repr(mon)


def test_monurl_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        MonUrl.parse("nonsense")


# ------------------------------------------------------------------ imgstore's additions (issue Trust, point 1)

FP = "SHA256:FFx1oWmbFsQiPyCdO3JeDB26+iYGNIouki0VEY1vjWo"


def test_a_host_key_fingerprint_may_be_given_and_keeps_its_plus() -> None:
    mon = MonUrl.parse(f"root:pw@10.0.0.1:22/?monPort=6789&sshHostKeyFingerprint={FP}")
    assert (mon.host_key, mon.mon_port) == (FP, 6789)
    assert MonUrl.parse(f"root:pw@10.0.0.1/?sshHostKeyFingerprint={FP}=").host_key == FP  # padding dropped
    assert MonUrl.parse("root:pw@10.0.0.1").host_key is None


@pytest.mark.parametrize("value", ["MD5:aa:bb", "SHA256:short", "SHA256:" + "a" * 44, ""])
def test_a_malformed_fingerprint_is_refused(value: str) -> None:
    message = parse_error(f"root:s3cret@10.0.0.1/?sshHostKeyFingerprint={value}")
    assert "sshHostKeyFingerprint" in message and "s3cret" not in message


@pytest.mark.parametrize("url", ["root@10.0.0.1", "root:@10.0.0.1:22/?monPort=1"])
def test_a_password_is_optional_only_when_asked(url: str) -> None:
    parse_error(url)
    mon = MonUrl.parse(url, password_optional=True)
    assert (mon.username, mon.password, mon.hostname) == ("root", "", "10.0.0.1")
