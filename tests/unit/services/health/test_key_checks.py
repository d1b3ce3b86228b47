"""The tracker's key checker: whose cephx key it logs in with next."""
from __future__ import annotations

from imgstore.services.health.tracker import KEY_CHECK_SECONDS, next_key

NOW = 1000.0


def test_a_key_never_checked_goes_before_one_checked_long_ago() -> None:
    checked = {"old": NOW - 5 * KEY_CHECK_SECONDS}
    assert next_key({"old", "new"}, {}, checked, NOW) == "new"


def test_of_checked_keys_the_one_checked_longest_ago_goes_first() -> None:
    checked = {"a": NOW - 3 * KEY_CHECK_SECONDS, "b": NOW - 2 * KEY_CHECK_SECONDS}
    assert next_key({"a", "b"}, {}, checked, NOW) == "a"


def test_a_refused_key_is_checked_again_before_the_others() -> None:
    checked = {"fine": NOW - 9 * KEY_CHECK_SECONDS, "refused": NOW - KEY_CHECK_SECONDS}
    assert next_key({"fine", "refused"}, {"refused": (0, "denied")}, checked, NOW) == "refused"


def test_no_key_is_checked_twice_within_its_seconds() -> None:
    checked = {"a": NOW - KEY_CHECK_SECONDS / 2}
    assert next_key({"a"}, {"a": (0, "denied")}, checked, NOW) is None


def test_a_storage_whose_mons_do_not_answer_is_not_asked() -> None:
    # a refused login looks like a timeout: with the mons down it would read as a refusal
    assert next_key(set(), {"down": (0, "denied")}, {}, NOW) is None
    assert next_key({"up"}, {"down": (0, "denied")}, {}, NOW) == "up"
