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


def test_user_info_without_colon_is_refused() -> None:
    message = parse_error("rootpassword@10.0.0.1")
    assert message.startswith("invalid monUrl[")
    assert "the sshUsername:sshPassword part is invalid" in message
    assert message.endswith(FORMAT_TAIL)


def test_missing_at_sign_is_refused() -> None:
    assert "the sshUsername:sshPassword part is invalid" in parse_error("10.0.0.1:22")


@pytest.mark.parametrize("url", [":password@10.0.0.1", "root:@10.0.0.1", "root::x@10.0.0.1"])
def test_empty_username_or_password_is_refused(url: str) -> None:
    assert "the sshUsername:sshPassword part is invalid" in parse_error(url)


@pytest.mark.parametrize("port", ["0", "65536", "99999999999"])
def test_ssh_port_out_of_range_is_refused(port: str) -> None:
    message = parse_error(f"root:password@10.0.0.1:{port}/?monPort=6789")
    assert "the ssh port is greater than 65535 or smaller than 1" in message


@pytest.mark.parametrize("port", ["1", "65535"])
def test_ssh_port_bounds_are_accepted(port: str) -> None:
    assert MonUrl.parse(f"root:password@10.0.0.1:{port}").ssh_port == int(port)


def test_unknown_query_parameter_is_refused() -> None:
    message = parse_error("root:password@10.0.0.1:22/?monPort=6789&pool=x")
    assert "unknown parameter[pool]" in message
    assert message.endswith(FORMAT_TAIL)


@pytest.mark.parametrize(
    "url",
    [
        "root:password@",
        "root:password@:22",
        "root:password@/?monPort=6789",
        "root:password@bad_host:22",
        "root:password@10.0.0.1:ssh",
        "root:password@10.0.0.256",
        "root:password@a:b:c",
    ],
)
def test_missing_or_invalid_hostname_is_refused(url: str) -> None:
    assert "hostname cannot be null" in parse_error(url)


@pytest.mark.parametrize(
    "url",
    [
        "root:password@10.0.0.1/?monPort=abc",
        "root:password@10.0.0.1/?monPort=",
        "root:password@10.0.0.1/?monPort=0",
        "root:password@10.0.0.1/?monPort=70000",
        "root:password@host name",
    ],
)
def test_bad_mon_port_or_illegal_characters_give_the_generic_text(url: str) -> None:
    message = parse_error(url)
    assert message.endswith(f"]. A valid url is in format of {MON_URL_FORMAT}")


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


@pytest.mark.parametrize(
    "url",
    [
        "root:s3cr@t@bad_host",
        "root:s3cr@t@10.0.0.1:0",
        "root:s3cr@t@10.0.0.1/?x=1",
        "root:s3cr@t@10.0.0.1/?monPort=x",
        "root:s3cret",
        "rootXs3cret@10.0.0.1",
    ],
)
def test_error_messages_never_contain_the_password(url: str) -> None:
    message = parse_error(url)
    assert "s3cr" not in message
    assert "******" in message


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
