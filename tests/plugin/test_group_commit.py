"""Group commit: requests that arrive together share one commit, and each waits for it."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from plugin import migrate
from plugin.config import Config
from plugin.events import Event
from plugin.inbox import GroupCommitter, StoreError
from plugin.storage import get_engine, inbox


def ev(n: int) -> Event:
    return Event(
        source="test",
        delivery_id=f"d{n}",
        kind="record.changed",
        occurred_at=datetime(2026, 11, 26, tzinfo=UTC),
        object="Opportunity",
        record_id=f"r{n}",
    )


@pytest.fixture
def engine(config: Config) -> sa.Engine:
    eng = get_engine(config.storage.url)
    migrate.upgrade(eng)
    return eng


def test_concurrent_requests_share_commits_and_each_learns_its_own_result(engine: sa.Engine) -> None:
    committer = GroupCommitter(engine)
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda n: committer.store([ev(n), ev(n)], timeout=30), range(400)))
    assert all(r.stored == 1 and r.duplicates == 1 for r in results)
    assert committer.commits < 400  # shared: fewer transactions than requests
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(inbox)).scalar() == 400


def test_a_failed_commit_is_reported_to_every_waiter_and_nothing_is_acknowledged(engine: sa.Engine) -> None:
    committer = GroupCommitter(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE inbox"))
    errors: list[BaseException] = []

    def attempt(n: int) -> None:
        try:
            committer.store([ev(n)], timeout=30)
        except StoreError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 10


def test_the_committer_survives_a_failed_commit(engine: sa.Engine) -> None:
    committer = GroupCommitter(engine)
    with pytest.raises(StoreError):
        committer.store(
            [ev(1).__class__(**{**ev(1).__dict__, "occurred_at": datetime(2026, 1, 1)})], timeout=30
        )
    assert committer.store([ev(2)], timeout=30).stored == 1


def test_a_request_mixing_stored_and_new_deliveries_learns_exactly_which_are_new(engine: sa.Engine) -> None:
    committer = GroupCommitter(engine)
    committer.store([ev(1), ev(3)], timeout=30)

    result = committer.store([ev(1), ev(2), ev(3), ev(4), ev(2)], timeout=30)

    assert (result.stored, result.duplicates) == (2, 3)
    with engine.connect() as conn:
        ids = conn.execute(sa.select(inbox.c.delivery_id).order_by(inbox.c.id)).scalars().all()
    assert ids == ["d1", "d3", "d2", "d4"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # it dies on purpose
def test_a_committer_that_died_is_started_again_by_the_next_request(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    committer = GroupCommitter(engine)
    assert committer.store([ev(1)], timeout=30).stored == 1
    commit = committer._commit

    def dying(batch: object) -> None:
        raise SystemExit  # not an Exception: it gets past the commit's own handler and ends the thread

    monkeypatch.setattr(committer, "_commit", dying)
    with pytest.raises(StoreError):
        committer.store([ev(2)], timeout=1)  # nobody answers this one: the sender retries it
    monkeypatch.setattr(committer, "_commit", commit)

    assert committer.store([ev(3)], timeout=30).stored == 1
