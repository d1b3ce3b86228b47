"""What the document says a ``q=`` condition may be: every condition the server runs is
one a client generated from /openapi.json may send."""
from __future__ import annotations

import re

import pytest

from imgstore.db import query as q
from imgstore.services.images.manage import IMAGE_QUERY
from imgstore.services.storage.queryables import BACKUP_STORAGE_QUERY, ZONE_QUERY


@pytest.mark.parametrize(("queryable", "condition"), [
    (IMAGE_QUERY, "backupStorage.name=bs-1"),
    (IMAGE_QUERY, "backupStorage.totalCapacity>10"),
    (ZONE_QUERY, "backupStorage.name~=bs%"),
    (BACKUP_STORAGE_QUERY, "zone.name=z"),
    (IMAGE_QUERY, "backupStorageRefs.installPath~=ceph://%"),
])
def test_the_document_admits_conditions_on_related_resources(queryable: q.Queryable, condition: str) -> None:
    assert re.match(q.condition_pattern(queryable), condition), condition
