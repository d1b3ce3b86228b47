"""The server process's options (imgstore/server.py; `imgstore serve` passes its
arguments to it)."""
from __future__ import annotations

import pytest

from imgstore import server


def test_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        server.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--log-level", "--ssl-certfile", "--ssl-keyfile"):
        assert option in out


@pytest.mark.parametrize("argv", [["--ssl-certfile", "/nonexistent.pem"], ["--ssl-keyfile", "/nonexistent.key"]])
def test_half_a_tls_pair_is_refused_before_anything_starts(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        server.main(argv)
    assert done.value.code == 2
    assert "--ssl-certfile and --ssl-keyfile go together" in capsys.readouterr().err


@pytest.mark.parametrize("host, url", [
    ("127.0.0.1", "http://127.0.0.1:8080/"), ("::1", "http://[::1]:8080/"), ("0.0.0.0", None), ("::", None),
])
def test_stored_urls_name_the_listening_address_unless_it_is_a_wildcard(host: str, url: str | None) -> None:
    assert server.listen_url("http", host, 8080) == url
