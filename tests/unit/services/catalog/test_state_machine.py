"""The Enabled/Disabled state machine of backup storages and zones."""
from __future__ import annotations

import pytest

from imgstore.services.catalog.state_machine import (
    EVENTS,
    InvalidStateEvent,
    State,
    StateEvent,
    UnknownState,
    is_change,
    next_state,
    parse_event,
)


@pytest.mark.parametrize("current, event, after", [
    ("Enabled", StateEvent.DISABLE, State.DISABLED),
    ("Disabled", StateEvent.ENABLE, State.ENABLED),
])
def test_an_event_moves_to_the_other_state(current: str, event: StateEvent, after: State) -> None:
    assert next_state(current, event) is after
    assert is_change(current, event)


@pytest.mark.parametrize("current, event", [
    ("Enabled", StateEvent.ENABLE),
    ("Disabled", StateEvent.DISABLE),
])
def test_an_event_towards_the_current_state_is_a_no_op(current: str, event: StateEvent) -> None:
    assert next_state(current, event).value == current
    assert not is_change(current, event)


def test_every_state_and_event_has_a_next_state() -> None:
    for current in State:
        for event in StateEvent:
            assert next_state(current.value, event) in State


def test_the_events_are_zstacks_valid_values() -> None:
    assert EVENTS == ("enable", "disable")
    assert parse_event("enable") is StateEvent.ENABLE
    assert parse_event("disable") is StateEvent.DISABLE


@pytest.mark.parametrize("value", ["Enable", "DISABLE", " enable", "enabled", "Enabled", "", "maintain", None, 1])
def test_anything_else_is_refused_like_zstacks_server(value: object) -> None:
    """ZStack's server compares case-sensitively (only its SDK does not)."""
    with pytest.raises(InvalidStateEvent) as e:
        parse_event(value)
    assert "field[stateEvent]" in str(e.value) and "[enable, disable]" in str(e.value)
    if isinstance(value, str) and value:
        assert f"but {value} found" in str(e.value)


def test_the_field_name_is_the_callers() -> None:
    with pytest.raises(InvalidStateEvent, match=r"field\[changeZoneState.stateEvent\]"):
        parse_event("x", field="changeZoneState.stateEvent")


def test_an_unknown_stored_state_is_an_error_not_a_guess() -> None:
    with pytest.raises(UnknownState):
        next_state("ReadOnly", StateEvent.ENABLE)
