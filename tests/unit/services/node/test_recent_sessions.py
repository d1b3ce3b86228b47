"""Sessions validated a moment ago are trusted for a few seconds, never past a logout or expiry."""
from datetime import timedelta

from imgstore.db.models import Session
from imgstore.services.node.sessions import RecentSessions
from imgstore.wire.dates import utcnow

DB, OTHER_DB = object(), object()


def _session(uuid: str = "s" * 32, lasts: float = 3600) -> Session:
    return Session(uuid=uuid, account_uuid="a" * 32, user_uuid="a" * 32,
                   expired_date=utcnow() + timedelta(seconds=lasts), create_date=utcnow())


def test_a_validated_session_is_remembered_for_its_database_only() -> None:
    recent, session = RecentSessions(seconds=60), _session()
    recent.put(DB, session)
    assert recent.get(DB, session.uuid) is session
    assert recent.get(OTHER_DB, session.uuid) is None


def test_a_logout_forgets_the_session_at_once() -> None:
    recent, session = RecentSessions(seconds=60), _session()
    recent.put(DB, session)
    recent.drop(session.uuid)
    assert recent.get(DB, session.uuid) is None


def test_the_database_is_asked_again_after_a_few_seconds() -> None:
    recent, session = RecentSessions(seconds=0), _session()
    recent.put(DB, session)
    assert recent.get(DB, session.uuid) is None


def test_an_expired_session_is_never_answered_from_memory() -> None:
    recent, session = RecentSessions(seconds=60), _session(lasts=-1)
    recent.put(DB, session)
    assert recent.get(DB, session.uuid) is None


def test_many_clients_do_not_grow_it_without_bound() -> None:
    recent = RecentSessions(seconds=60, max_entries=10)
    for i in range(25):
        recent.put(DB, _session(f"{i:032d}"))
    assert recent.get(DB, f"{24:032d}") is not None
    assert sum(recent.get(DB, f"{i:032d}") is not None for i in range(25)) <= 10
