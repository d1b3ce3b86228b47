"""One policy for the credentials a user puts into an image URL (imgstore/wire/masking.py)."""
from __future__ import annotations

import pytest

from imgstore.wire.masking import masked, without_credentials, without_tokens


@pytest.mark.parametrize(("url", "kept", "shown"), [
    ("http://alice:s3cret@mirror.example/d.qcow2", "http://mirror.example/d.qcow2",
     "http://alice:***@mirror.example/d.qcow2"),
    ("https://token@mirror.example/d", "https://mirror.example/d", "https://***@mirror.example/d"),
    ("http://mirror.example/a@b", "http://mirror.example/a@b", "http://mirror.example/a@b"),
    ("file:///images/d.raw", "file:///images/d.raw", "file:///images/d.raw"),
])
def test_a_password_is_never_kept_nor_shown(url: str, kept: str, shown: str) -> None:
    assert without_credentials(url) == kept
    assert masked(url) == shown
    assert "s3cret" not in kept + shown and "token@" not in kept + shown


def test_what_is_not_a_url_passes_unchanged() -> None:
    assert masked("http://[::1") == "http://[::1"
    assert without_credentials("http://[::1") == "http://[::1"


def test_a_bearer_token_is_masked_where_a_url_carries_it() -> None:
    text = "upload to http://h:8080/zstack/v1/images/uploads/u1?token=s3cret&x=1 now"
    assert without_tokens(text) == "upload to http://h:8080/zstack/v1/images/uploads/u1?token=******&x=1 now"
