"""ZStack's query-string grammar: what a client writes and what imgstore understands."""
from __future__ import annotations

from urllib.parse import parse_qsl

import pytest

from imgstore.wire.query import Condition, QueryError, QuerySpec, parse_condition, parse_query


def query(qs: str) -> QuerySpec:
    """Decode like the web layer does (form decoding: ``+`` is a space)."""
    return parse_query(parse_qsl(qs, keep_blank_values=True))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name=foo", Condition("name", "=", "foo")),
        ("name!=foo", Condition("name", "!=", "foo")),
        ("totalCapacity>100", Condition("totalCapacity", ">", "100")),
        ("totalCapacity>=100", Condition("totalCapacity", ">=", "100")),
        ("totalCapacity<100", Condition("totalCapacity", "<", "100")),
        ("totalCapacity<=100", Condition("totalCapacity", "<=", "100")),
        ("state?=Enabled,Disabled", Condition("state", "?=", "Enabled,Disabled")),
        ("state!?=Enabled,Disabled", Condition("state", "!?=", "Enabled,Disabled")),
        ("name~=ce%", Condition("name", "~=", "ce%")),
        ("name!~=ce_h", Condition("name", "!~=", "ce_h")),
        ("description is null", Condition("description", "is null", None)),
        ("description not null", Condition("description", "not null", None)),
    ],
)
def test_each_operator_splits_name_and_value(text: str, expected: Condition) -> None:
    assert parse_condition(text) == expected


def test_first_operator_of_the_table_wins_not_the_leftmost() -> None:
    # "!=" is scanned before "=", so ZStack splits at "!=" even though "=" comes first.
    assert parse_condition("name=a!=b") == Condition("name=a", "!=", "b")
    assert parse_condition("url=a<=b") == Condition("url=a", "<=", "b")
    # "~=" is scanned before "=": the first "=" stays in the name.
    assert parse_condition("a=b~=c") == Condition("a=b", "~=", "c")


def test_value_may_contain_later_operators() -> None:
    assert parse_condition("description=a>b<c") == Condition("description", "=", "a>b<c")
    assert parse_condition("description=this is null") == Condition(
        "description", "=", "this is null"
    )


def test_splits_at_first_occurrence_of_chosen_operator() -> None:
    assert parse_condition("url=a=b") == Condition("url", "=", "a=b")


def test_value_is_not_trimmed_but_name_is() -> None:
    assert parse_condition(" name = ce ph ") == Condition("name", "=", " ce ph ")


def test_empty_value_is_kept() -> None:
    assert parse_condition("description=") == Condition("description", "=", "")


def test_in_values_are_comma_split_untrimmed() -> None:
    assert parse_condition("state?=Enabled, Disabled").values == ["Enabled", " Disabled"]
    assert parse_condition("name=a,b").values == ["a,b"]
    assert parse_condition("name is null").values == []


def test_text_after_null_operator_is_ignored_like_zstack() -> None:
    assert parse_condition("description is nullish") == Condition("description", "is null")


def test_condition_without_operator_is_rejected_naming_it() -> None:
    with pytest.raises(QueryError) as err:
        parse_condition("nameisfoo")
    message = str(err.value)
    assert "'nameisfoo' in the parameter[q] doesn't contain any query operator" in message
    assert "[!=, >=, <=, !?=, !~=, ~=, ?=, =, >, <, is null, not null]" in message


@pytest.mark.parametrize("text", ["=foo", " !=foo", "?=a,b", "is null"])
def test_condition_without_name_is_rejected(text: str) -> None:
    with pytest.raises(QueryError, match=r"parameter\[q\].*no field name"):
        parse_condition(text)


def test_defaults_when_nothing_is_given() -> None:
    assert query("") == QuerySpec(conditions=(), limit=1000, start=0, count=False,
                                  reply_with_count=False, sort=None, fields=())


def test_repeated_q_adds_conditions_in_order() -> None:
    spec = query("q=name%3Dfoo&q=state%3F%3DEnabled%2CDisabled&q=totalCapacity%3E100")
    assert spec.conditions == (
        Condition("name", "=", "foo"),
        Condition("state", "?=", "Enabled,Disabled"),
        Condition("totalCapacity", ">", "100"),
    )


def test_sdk_captured_query_string() -> None:
    # Captured from ZStack's Java SDK.
    spec = query(
        "q=name%3Dfoo&q=state%3F%3DEnabled%2CDisabled&q=totalCapacity%3E100"
        "&q=description%7E%3D%25ce%20ph%25&q=url%21%3Da%2Bb%26c&limit=10&start=0"
        "&count=false&replyWithCount=true&sort=-createDate&fields=uuid%2Cname"
    )
    assert spec.conditions[3] == Condition("description", "~=", "%ce ph%")
    assert spec.conditions[4] == Condition("url", "!=", "a+b&c")
    assert (spec.limit, spec.start, spec.count, spec.reply_with_count) == (10, 0, False, True)
    assert spec.sort == ("createDate", False)
    assert spec.fields == ("uuid", "name")


def test_unencoded_plus_in_condition_arrives_as_space() -> None:
    assert query("q=name=a+b").conditions == (Condition("name", "=", "a b"),)


@pytest.mark.parametrize(
    ("qs", "expected"),
    [
        ("sort=%2Bname", ("name", True)),
        ("sort=+name", ("name", True)),  # form-decoded: " name"
        ("sort=name", ("name", True)),
        ("sort=-createDate", ("createDate", False)),
    ],
)
def test_sort_direction(qs: str, expected: tuple[str, bool]) -> None:
    assert query(qs).sort == expected


@pytest.mark.parametrize("qs", ["sort=", "sort=-", "sort=%2B", "sort=a+b", "sort=--name"])
def test_bad_sort_is_rejected(qs: str) -> None:
    with pytest.raises(QueryError, match="'sort'"):
        query(qs)


@pytest.mark.parametrize("name", ["limit", "start"])
@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "", "2147483648", "1e3"])
def test_bad_limit_or_start_is_rejected_naming_param_and_value(name: str, value: str) -> None:
    with pytest.raises(QueryError) as err:
        parse_query([(name, value)])
    assert f"'{name}'" in str(err.value) and f"'{value}'" in str(err.value)


def test_limit_and_start_accept_zero_and_surrounding_blanks() -> None:
    spec = parse_query([("limit", "0"), ("start", " 20 ")])
    assert (spec.limit, spec.start) == (0, 20)


@pytest.mark.parametrize("name,attr", [("count", "count"), ("replyWithCount", "reply_with_count")])
def test_booleans_are_case_insensitive(name: str, attr: str) -> None:
    assert getattr(parse_query([(name, "TRUE")]), attr) is True
    assert getattr(parse_query([(name, "False")]), attr) is False


@pytest.mark.parametrize("name", ["count", "replyWithCount"])
@pytest.mark.parametrize("value", ["yes", "1", ""])
def test_bad_booleans_are_rejected(name: str, value: str) -> None:
    with pytest.raises(QueryError, match=f"'{name}' must be true or false"):
        parse_query([(name, value)])


def test_first_of_repeated_single_valued_params_counts() -> None:
    spec = parse_query([("limit", "5"), ("limit", "oops"), ("sort", "name"), ("sort", "-uuid")])
    assert spec.limit == 5 and spec.sort == ("name", True)


def test_fields_are_trimmed_and_blanks_dropped() -> None:
    assert query("fields=uuid,+name,,state").fields == ("uuid", "name", "state")


def test_empty_fields_is_rejected() -> None:
    with pytest.raises(QueryError, match="'fields' contains zero field"):
        query("fields=,")


def test_unknown_params_are_ignored() -> None:
    spec = query(
        "requestIp=1.2.3.4&groupBy=name&filterName=x&condition=name%3Dfoo&qq=a&q=uuid%3D1"
    )
    assert spec == QuerySpec(conditions=(Condition("uuid", "=", "1"),))


def test_only_the_exact_key_q_carries_conditions() -> None:
    assert parse_query([("q ", "name=foo"), ("Q", "name=bar")]).conditions == (
        Condition("name", "=", "foo"),
    )
