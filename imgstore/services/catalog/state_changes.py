"""ChangeXxxState of everything with an Enabled/Disabled state: backup storages, zones,
images. The rules are services/catalog/state_machine.py's; this is the one way they meet a row."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from imgstore.errors import invalid_argument, not_found
from imgstore.services.catalog import state_machine as state
from imgstore.services.node.locking import commit_row, locked_row
from imgstore.services.node.runtime import Runtime

T = TypeVar("T")


async def change_state(
    rt: Runtime,
    entity: type[T],
    uuid: str,
    state_event: str,
    resource_type: str,
    refuse: Callable[[T], None] | None = None,
) -> T:
    """Apply ``enable``/``disable`` to the row, serialised per row (services/node/locking.py);
    asking for the state it is already in is a no-op. ``refuse`` may raise to keep a row
    that must not change now as it is."""
    try:
        event = state.parse_event(state_event)
    except state.InvalidStateEvent as e:
        raise invalid_argument(str(e)) from None
    async with locked_row(rt, entity, uuid) as (db, row):
        if row is None:
            raise not_found(resource_type, uuid)
        if refuse is not None:
            refuse(row)
        record: Any = row
        target = state.next_state(record.state, event).value
        if target != record.state:
            record.state = target
        return await commit_row(db, row)
