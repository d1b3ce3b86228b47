"""The Enabled/Disabled state machine of backup storages and zones.

State is what an operator decides (``enable``/``disable``); status (Connecting,
Connected, Disconnected) is what imgstore observes, and is not changed here.

ZStack's server checks ``stateEvent`` against ``validValues`` case-sensitively and then
calls ``valueOf``, so only ``enable`` and ``disable`` are accepted; its Java SDK compares
case-insensitively before sending, so ``Enable`` passes the SDK and fails the server.
imgstore does what the server does: exactly ``enable`` or ``disable``, anything else is
SYS.1007 naming the field and the value. Asking for the state a resource is already in
is a no-op that succeeds.

This module is pure: no database, no HTTP.
"""
from __future__ import annotations

from enum import Enum


class State(str, Enum):
    ENABLED = "Enabled"
    DISABLED = "Disabled"


class StateEvent(str, Enum):
    ENABLE = "enable"
    DISABLE = "disable"


EVENTS: tuple[str, ...] = tuple(e.value for e in StateEvent)

_TARGET = {StateEvent.ENABLE: State.ENABLED, StateEvent.DISABLE: State.DISABLED}


class InvalidStateEvent(ValueError):
    """A ``stateEvent`` that is not one of :data:`EVENTS`; the message is for the user."""


class UnknownState(ValueError):
    """A stored state this machine does not know (a corrupt or foreign row)."""


def parse_event(value: object, field: str = "stateEvent") -> StateEvent:
    """``enable``/``disable`` exactly, or :class:`InvalidStateEvent` in ZStack's words."""
    if isinstance(value, str):
        for event in StateEvent:
            if event.value == value:
                return event
    shown = value if isinstance(value, str) else repr(value)
    raise InvalidStateEvent(
        f"valid value for field[{field}] are [{', '.join(EVENTS)}], but {shown} found"
    )


def next_state(current: str, event: StateEvent) -> State:
    """The state after ``event``: Enabled --disable--> Disabled, Disabled --enable-->
    Enabled; an event towards the current state leaves it unchanged."""
    try:
        State(current)
    except ValueError:
        raise UnknownState(f"unknown state[{current}]") from None
    return _TARGET[event]


def is_change(current: str, event: StateEvent) -> bool:
    """Whether ``event`` moves a resource in ``current`` to another state."""
    return next_state(current, event).value != current
