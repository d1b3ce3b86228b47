"""api/export_slots.py: downloads per export link and in all, and their slots coming back."""
from __future__ import annotations

import pytest

from imgstore.api.export_slots import ExportSlots
from imgstore.errors import ApiError


def test_slots_per_link_and_in_all() -> None:
    slots = ExportSlots(per_link=2, total=3)
    a1, a2 = slots.take("p/a"), slots.take("p/a")
    with pytest.raises(ApiError) as e:
        slots.take("p/a")
    assert e.value.status == 429 and "export_max_per_link" in e.value.details
    b1 = slots.take("p/b")
    with pytest.raises(ApiError) as e:
        slots.take("p/c")
    assert e.value.status == 429 and "export_max_total" in e.value.details
    a1()
    a1()  # giving a slot back twice gives it back once
    assert slots.running("p/a") == 1 and slots.running() == 2
    slots.take("p/c")
    for release in (a2, b1):
        release()
    assert slots.running() == 1
