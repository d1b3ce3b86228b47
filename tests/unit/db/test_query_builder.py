"""QuerySpec → SQL, run for real on SQLite and PostgreSQL against a toy resource.

The toy ``Storage`` has a typed column of every kind, a list field (attached zones, via a
ref table), a related resource (``zone.*``) and tags: enough to show each operator's
ZStack meaning and that both engines agree on it.
"""
from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    Integer,
    String,
    create_engine,
    select,
    text,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from imgstore.db.query import (
    Field,
    FieldValueError,
    ListField,
    Queryable,
    UnknownFieldError,
    build_select,
    columns,
    relation,
    tag_filter,
)
from imgstore.wire.query import Condition, QuerySpec, parse_query

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class Base(DeclarativeBase):
    pass


class State(str, enum.Enum):
    Enabled = "Enabled"
    Disabled = "Disabled"


class Status(enum.Enum):
    Connecting = "Connecting"
    Connected = "Connected"
    Disconnected = "Disconnected"


class Storage(Base):
    __tablename__ = "qb_storage"
    uuid: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(String(64))
    total_capacity: Mapped[int | None] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))  # enum values stored as text
    status: Mapped[Status] = mapped_column(Enum(Status, native_enum=False))
    ready: Mapped[bool | None] = mapped_column(Boolean)
    ratio: Mapped[float | None] = mapped_column(Float)
    create_date: Mapped[datetime] = mapped_column(DateTime)  # naive UTC, as imgstore stores


class Zone(Base):
    __tablename__ = "qb_zone"
    uuid: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))


class StorageZoneRef(Base):
    __tablename__ = "qb_storage_zone_ref"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    storage_uuid: Mapped[str] = mapped_column(String(32))
    zone_uuid: Mapped[str] = mapped_column(String(32))


class Tag(Base):
    __tablename__ = "qb_tag"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource_uuid: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(16))  # "systemTag" | "userTag"
    tag: Mapped[str] = mapped_column(String(64))


ZONE = Queryable(Zone, {"uuid": Field(Zone.uuid), "name": Field(Zone.name)}, name="ZoneInventory")


def _zone_links():
    return select(StorageZoneRef.storage_uuid, StorageZoneRef.zone_uuid)


STORAGE = Queryable(
    entity=Storage,
    name="StorageInventory",
    fields={
        "uuid": Field(Storage.uuid),
        "name": Field(Storage.name),
        "description": Field(Storage.description),
        "totalCapacity": Field(Storage.total_capacity, int),
        "state": Field(Storage.state, State),
        "status": Field(Storage.status, Status),
        "ready": Field(Storage.ready, bool),
        "ratio": Field(Storage.ratio, float),
        "createDate": Field(Storage.create_date, datetime),
        "attachedZoneUuids": ListField(_zone_links),
    },
    relations={"zone": relation(Storage.uuid, _zone_links, ZONE)},
    tags=tag_filter(
        Storage.uuid, lambda kind: select(Tag.resource_uuid, Tag.tag).where(Tag.kind == kind)
    ),
)


def _utc(day: int, hour: int = 12, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2017, 6, day, hour, minute, second)


def _rows() -> list[Base]:
    s = Storage
    return [
        s(uuid="s1", name="ceph-a", description="fast ceph", total_capacity=100, ready=True,
          state="Enabled", status=Status.Connected, ratio=0.5, create_date=_utc(7, 13, 20, 17)),
        s(uuid="s2", name="ceph-b", description=None, total_capacity=200, ready=False,
          state="Disabled", status=Status.Connected, ratio=1.5, create_date=_utc(8)),
        s(uuid="s3", name="nfs_1", description="slow 100%", total_capacity=300, ready=True,
          state="Enabled", status=Status.Disconnected, ratio=None, create_date=_utc(9)),
        s(uuid="s4", name="CEPH-C", description="ceph", total_capacity=None, ready=None,
          state="Enabled", status=Status.Connecting, ratio=2.0, create_date=_utc(10)),
        s(uuid="s5", name="nfs-2", description="x", total_capacity=300, ready=None,
          state="Disabled", status=Status.Connected, ratio=None, create_date=_utc(11)),
        Zone(uuid="z1", name="zone-one"),
        Zone(uuid="z2", name="zone-two"),
        StorageZoneRef(storage_uuid="s1", zone_uuid="z1"),
        StorageZoneRef(storage_uuid="s1", zone_uuid="z2"),
        StorageZoneRef(storage_uuid="s2", zone_uuid="z1"),
        StorageZoneRef(storage_uuid="s4", zone_uuid="z2"),
        Tag(resource_uuid="s1", kind="systemTag", tag="ceph::fsid::abc"),
        Tag(resource_uuid="s1", kind="userTag", tag="gold"),
        Tag(resource_uuid="s2", kind="systemTag", tag="pool::p1"),
        Tag(resource_uuid="s4", kind="userTag", tag="silver"),
    ]


def _fill(session: Session) -> None:
    session.add_all(_rows())
    session.commit()


@pytest.fixture(scope="module")
def sqlite_db() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        _fill(session)
        yield session
    engine.dispose()


@pytest.fixture(scope="module")
def pg_db() -> Iterator[Session]:
    """A throw-away schema on the local PostgreSQL; skipped when there is none."""
    engine = create_engine(PG_URL, connect_args={"connect_timeout": 2})
    try:
        engine.connect().close()
    except OperationalError as exc:
        engine.dispose()
        pytest.skip(f"PostgreSQL not reachable: {exc.orig}")
    schema = f"qb_{uuid.uuid4().hex[:12]}"
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    scoped = engine.execution_options(schema_translate_map={None: schema})
    try:
        Base.metadata.create_all(scoped)
        with Session(scoped) as session:
            _fill(session)
            yield session
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(params=["sqlite_db", "pg_db"], ids=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest) -> Session:
    """Every test taking ``db`` runs once per engine, on the same rows."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def shanghai(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run with the server's local zone at UTC+8, where zone-less dates are read."""
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def spec(*conditions: str, **params: str) -> QuerySpec:
    """A spec from ZStack-style parameters: conditions as ``q`` values, then the rest."""
    return parse_query([("q", c) for c in conditions] + list(params.items()))


def uuids(db: Session, *conditions: str, **params: str) -> list[str]:
    page, _ = build_select(STORAGE, spec(*conditions, **params))
    return [row.uuid for row in db.execute(page).scalars()]


def total(db: Session, *conditions: str, **params: str) -> int:
    _, count = build_select(STORAGE, spec(*conditions, **params))
    assert count is not None
    return db.execute(count).scalar_one()


# --- plain fields, one operator at a time ----------------------------------------------

@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("name=ceph-a", ["s1"]),
        ("name!=ceph-a", ["s2", "s3", "s4", "s5"]),
        ("totalCapacity>200", ["s3", "s5"]),
        ("totalCapacity>=200", ["s2", "s3", "s5"]),
        ("totalCapacity<200", ["s1"]),
        ("totalCapacity<=200", ["s1", "s2"]),
        ("totalCapacity=300", ["s3", "s5"]),
        ("totalCapacity?=100,300", ["s1", "s3", "s5"]),
        ("totalCapacity!?=100,300", ["s2"]),
        ("state?=Disabled", ["s2", "s5"]),
        ("state!?=Disabled", ["s1", "s3", "s4"]),
        ("status=Connected", ["s1", "s2", "s5"]),
        ("status!=Connected", ["s3", "s4"]),
        ("ready=true", ["s1", "s3"]),
        ("ready=FALSE", ["s2"]),
        ("ratio>=1.5", ["s2", "s4"]),
        ("description is null", ["s2"]),
        ("description not null", ["s1", "s3", "s4", "s5"]),
    ],
)
def test_each_operator_returns_exactly_the_matching_rows(
    db: Session, condition: str, expected: list[str]
) -> None:
    assert uuids(db, condition) == expected


def test_negative_operators_never_match_null_like_mysql(db: Session) -> None:
    assert uuids(db, "description!=ceph") == ["s1", "s3", "s5"]
    assert uuids(db, "description!?=ceph") == ["s1", "s3", "s5"]
    assert uuids(db, "description!~=%ceph%") == ["s3", "s5"]
    assert uuids(db, "totalCapacity!=100") == ["s2", "s3", "s5"]


def test_like_is_case_insensitive_on_both_engines(db: Session) -> None:
    assert uuids(db, "name~=ceph%") == ["s1", "s2", "s4"]
    assert uuids(db, "name~=%-C") == ["s4"]
    assert uuids(db, "name!~=CEPH%") == ["s3", "s5"]


def test_like_wildcards_and_backslash_escape(db: Session) -> None:
    assert uuids(db, "name~=nfs_%") == ["s3", "s5"]  # "_" is any one character
    assert uuids(db, r"name~=nfs\_%") == ["s3"]  # "\_" is a literal underscore
    assert uuids(db, r"description~=%100\%") == ["s3"]


def test_like_on_a_number_compares_its_text(db: Session) -> None:
    assert uuids(db, "totalCapacity~=1%") == ["s1"]


def test_conditions_are_anded(db: Session) -> None:
    assert uuids(db, "state=Enabled", "totalCapacity>=100", "name~=ceph%") == ["s1"]


# --- dates -----------------------------------------------------------------------------

def test_dates_in_zstack_form_are_server_local(db: Session, shanghai: None) -> None:
    # s1 was created at 13:20:17 UTC, i.e. 9:20:17 PM in Shanghai.
    assert uuids(db, "createDate=Jun 7, 2017 9:20:17 PM") == ["s1"]
    assert uuids(db, "createDate<=Jun 8, 2017, 8:00:00 PM") == ["s1", "s2"]


def test_dates_in_iso_8601_and_epoch_ms(db: Session) -> None:
    assert uuids(db, "createDate>=2017-06-10T12:00:00Z") == ["s4", "s5"]
    assert uuids(db, "createDate>2017-06-10T20:00:00+08:00") == ["s5"]
    epoch_ms = int(datetime(2017, 6, 8, 12, tzinfo=UTC).timestamp() * 1000)
    assert uuids(db, f"createDate<{epoch_ms}") == ["s1"]
    assert uuids(db, f"createDate?={epoch_ms},2017-06-09T12:00:00Z") == ["s2", "s3"]


# --- list fields, relations, tags ------------------------------------------------------

@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("attachedZoneUuids=z1", ["s1", "s2"]),
        ("attachedZoneUuids?=z2,z9", ["s1", "s4"]),
        ("attachedZoneUuids!=z1", ["s3", "s4", "s5"]),  # z1 is not among them
        ("attachedZoneUuids!?=z1,z2", ["s3", "s5"]),
        ("attachedZoneUuids~=Z%", ["s1", "s2", "s4"]),
        ("attachedZoneUuids is null", ["s3", "s5"]),  # attached to no zone
        ("attachedZoneUuids not null", ["s1", "s2", "s4"]),
    ],
)
def test_list_field_means_membership(db: Session, condition: str, expected: list[str]) -> None:
    assert uuids(db, condition) == expected


def test_both_members_required_when_two_conditions(db: Session) -> None:
    assert uuids(db, "attachedZoneUuids=z1", "attachedZoneUuids=z2") == ["s1"]


def test_relation_matches_through_a_related_resource(db: Session) -> None:
    assert uuids(db, "zone.name=zone-one") == ["s1", "s2"]
    assert uuids(db, "zone.uuid?=z2") == ["s1", "s4"]
    assert uuids(db, "zone.name~=%TWO") == ["s1", "s4"]


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("__systemTag__=pool::p1", ["s2"]),
        ("__systemTag__~=ceph::fsid::%", ["s1"]),
        ("__systemTag__!=pool::p1", ["s1", "s3", "s4", "s5"]),
        ("__userTag__?=gold,silver", ["s1", "s4"]),
        ("__userTag__ is null", ["s2", "s3", "s5"]),
        ("__userTag__ not null", ["s1", "s4"]),
    ],
)
def test_tags_match_like_zstack_tag_subqueries(
    db: Session, condition: str, expected: list[str]
) -> None:
    assert uuids(db, condition) == expected


# --- order, paging, count --------------------------------------------------------------

def test_default_order_is_the_primary_key(db: Session) -> None:
    assert uuids(db) == ["s1", "s2", "s3", "s4", "s5"]


def test_sort_desc_puts_nulls_last_and_breaks_ties_by_key(db: Session) -> None:
    assert uuids(db, sort="-totalCapacity") == ["s3", "s5", "s2", "s1", "s4"]


def test_sort_asc_puts_nulls_first_like_mysql(db: Session) -> None:
    assert uuids(db, sort="+totalCapacity") == ["s4", "s1", "s2", "s3", "s5"]
    assert uuids(db, sort="createDate") == ["s1", "s2", "s3", "s4", "s5"]


def test_start_skips_then_limit_caps(db: Session) -> None:
    assert uuids(db, sort="-totalCapacity", start="1", limit="2") == ["s5", "s2"]
    assert uuids(db, sort="-totalCapacity", start="4", limit="10") == ["s4"]
    assert uuids(db, start="9") == []
    assert uuids(db, limit="0") == []


def test_default_sort_field_is_used_when_none_asked(db: Session) -> None:
    by_ratio = Queryable(STORAGE.entity, STORAGE.fields, default_sort="ratio")
    page, _ = build_select(by_ratio, spec())
    assert [r.uuid for r in db.execute(page).scalars()] == ["s3", "s5", "s1", "s2", "s4"]


def test_count_ignores_start_and_limit(db: Session) -> None:
    assert total(db, count="true", limit="1", start="1") == 5
    assert total(db, "state=Enabled", replyWithCount="true", limit="1") == 3
    assert total(db, "attachedZoneUuids is null", count="true") == 2


def test_no_count_select_unless_asked() -> None:
    assert build_select(STORAGE, spec())[1] is None


@pytest.mark.anyio
async def test_selects_run_on_an_async_session() -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with AsyncSession(engine) as session:
        session.add_all(_rows())
        await session.commit()
        page, count = build_select(STORAGE, spec("attachedZoneUuids=z2", replyWithCount="true"))
        assert [s.uuid for s in (await session.execute(page)).scalars()] == ["s1", "s4"]
        assert (await session.execute(count)).scalar_one() == 2
    await engine.dispose()


# --- errors ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("totalCapacity>abc", "value[abc] of field[totalCapacity] is not a valid integer"),
        ("totalCapacity?=1,2.5", "value[2.5] of field[totalCapacity] is not a valid integer"),
        ("ratio<nan", "value[nan] of field[ratio] is not a valid number"),
        ("ready=yes", "value[yes] of field[ready] is not a valid boolean"),
        ("ready<=true", "field[ready] is a boolean: <= does not apply to it"),  # was a 500 (fuzzing)
        ("createDate>yesterday", "value[yesterday] of field[createDate] is not a valid date"),
        ("createDate>Jun 31, 2017 1:00:00 PM", "of field[createDate] is not a valid date"),
        ("state=Broken", "value[Broken] of field[state] is not a valid value; "
                         "valid values are [Enabled, Disabled]"),
    ],
)
def test_values_that_do_not_fit_the_field_are_rejected(condition: str, message: str) -> None:
    with pytest.raises(FieldValueError) as err:
        build_select(STORAGE, spec(condition))
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("params", "unknown"),
    [
        ({"conditions": ("foo=1",)}, "field[foo] is not a queryable field of StorageInventory"),
        ({"conditions": ("name=a!=b",)}, "field[name=a]"),
        ({"conditions": ("nosuch.uuid=1",)}, "field[nosuch.uuid]"),
        ({"conditions": ("zone.size>1",)}, "field[size] is not a queryable field of Zone"),
        ({"conditions": ("zone=z1",)}, "field[zone]"),
        ({"sort": "foo"}, "field[foo]"),
        ({"fields": "uuid,foo"}, "field[foo]"),
    ],
)
def test_unknown_fields_are_rejected_listing_valid_ones(params: dict, unknown: str) -> None:
    conditions = params.pop("conditions", ())
    with pytest.raises(UnknownFieldError) as err:
        build_select(STORAGE, spec(*conditions, **params))
    assert unknown in str(err.value)
    if "StorageInventory" in str(err.value):
        assert "valid fields are [uuid, name," in str(err.value)
        assert "zone.<field>, __systemTag__, __userTag__]" in str(err.value)


def test_columns_are_named_as_zstack_names_them_and_typed_as_stored() -> None:
    """``columns``: per attribute, in order, its camelCase name and its column's type, so a
    condition on a number compares numbers and one on a date reads a date."""
    fields = columns(Storage, "uuid", "total_capacity", "status", "ready", "ratio", "create_date")
    assert [(name, f.kind) for name, f in fields.items()] == [
        ("uuid", str), ("totalCapacity", int), ("status", Status), ("ready", bool), ("ratio", float),
        ("createDate", datetime),
    ]
    assert all(f.column is STORAGE.fields[name].column for name, f in fields.items())  # type: ignore[union-attr]


def test_list_fields_cannot_sort() -> None:
    with pytest.raises(UnknownFieldError, match="is a list and cannot be used to sort"):
        build_select(STORAGE, spec(sort="-attachedZoneUuids"))


def test_tags_are_unknown_where_the_resource_has_none() -> None:
    with pytest.raises(UnknownFieldError, match=r"field\[__systemTag__\]"):
        build_select(ZONE, QuerySpec(conditions=(Condition("__systemTag__", "=", "x"),)))


def test_fields_are_validated_and_kept_for_projection(db: Session) -> None:
    """``fields`` names known fields (lists too) and leaves the page alone: the reply, not
    the select, projects (api/envelope.py)."""
    assert uuids(db, fields="uuid,attachedZoneUuids", sort="-name") == uuids(db, sort="-name")
    with pytest.raises(UnknownFieldError, match=r"field\[nope\] is not a queryable field"):
        build_select(STORAGE, spec(fields="uuid,nope"))
