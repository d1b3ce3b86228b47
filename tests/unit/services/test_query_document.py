"""What the document says a ``q=`` condition may be: every condition the server runs is
one a client generated from /openapi.json may send."""
from __future__ import annotations

import enum
import re
from datetime import datetime

import pytest

from imgstore.db import query as q
from imgstore.services.catalog.tags import SYSTEM_TAG_QUERY, USER_TAG_QUERY
from imgstore.services.images.manage import IMAGE_QUERY, REF_QUERY
from imgstore.services.storage.queryables import BACKUP_STORAGE_QUERY, CEPH_BACKUP_STORAGE_QUERY, MON_QUERY, ZONE_QUERY


@pytest.mark.parametrize(("queryable", "condition"), [
    (IMAGE_QUERY, "backupStorage.name=bs-1"),
    (IMAGE_QUERY, "backupStorage.totalCapacity>10"),
    (ZONE_QUERY, "backupStorage.name~=bs%"),
    (BACKUP_STORAGE_QUERY, "zone.name=z"),
    (IMAGE_QUERY, "backupStorageRefs.installPath~=ceph://%"),
])
def test_the_document_admits_conditions_on_related_resources(queryable: q.Queryable, condition: str) -> None:
    assert re.match(q.condition_pattern(queryable), condition), condition


#: what a value of each kind may look like in a condition, and what it may not
_SAMPLES: dict[type, tuple[str, str]] = {
    int: ("=10", "=ten"),
    float: ("<1.5", "<1.5x"),
    bool: ("=true", ">true"),
    datetime: (">=2026-12-04", ">=yesterday"),
}


def _queryables() -> list[q.Queryable]:
    return [IMAGE_QUERY, REF_QUERY, BACKUP_STORAGE_QUERY, CEPH_BACKUP_STORAGE_QUERY, ZONE_QUERY, MON_QUERY,
            SYSTEM_TAG_QUERY, USER_TAG_QUERY]


@pytest.mark.parametrize("queryable", _queryables(), ids=lambda x: x.label)
def test_every_field_takes_the_values_of_its_kind(queryable: q.Queryable) -> None:
    """Each field, and each field a relation leads to, admits a value of its own kind and
    refuses one of another; a name the resource lacks is refused."""
    pattern = re.compile(q.condition_pattern(queryable))
    fields = [(name, f.kind) for name, f in queryable.fields.items()]
    for rel, clause in queryable.relations.items():
        fields += [(f"{rel}.{name}", f.kind) for name, f in q.related(clause).fields.items()]
    for name, kind in fields:
        assert pattern.match(f"{name} is null"), name
        if kind is str:
            assert pattern.match(f"{name}~=a%"), name
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            member = str(next(iter(kind)).value)
            assert pattern.match(f"{name}={member}") and not pattern.match(f"{name}={member}\u00e9"), name
        else:
            good, bad = _SAMPLES[kind]
            assert pattern.match(f"{name}{good}") and not pattern.match(f"{name}{bad}"), (name, kind)
    assert not pattern.match("noSuchField=1")


@pytest.mark.parametrize("queryable", _queryables(), ids=lambda x: x.label)
def test_the_condition_pattern_spells_each_kinds_operators_once(queryable: q.Queryable) -> None:
    """Fields of one kind share their operators in the document: a pattern that spelled
    them out per field ran to 9 KB on images, and a client (or the fuzzing's generator)
    spent ~0.3 s building a matcher from it each time."""
    pattern = q.condition_pattern(queryable)
    kinds = {f.kind for f in queryable.fields.values()} | {str}
    for clause in queryable.relations.values():
        kinds |= {f.kind for f in q.related(clause).fields.values()}
    assert pattern.count("is null") == len(kinds), pattern[:300]
