"""Every wait with a deadline is bounded, and one sick shard never stalls the healthy ones.

Faults are injected into a real server: the ``sick`` shard lives on a throwaway PostgreSQL
server this module starts (``_extra_postgres.py``), the two healthy shards on the shared test
server.  The sick shard is locked (another transaction holds its table), stopped (SIGSTOP on
every process of its server: connections stay open and nothing answers, not even a cancel
request) or killed mid-statement.  Each test checks that a statement with a deadline returns
by it (plus a generous margin: these are the only timing assertions of the suite), that it
names the shard that missed it, and that the healthy shards answered or were not waited for.

Without servers: the worker pool never queues a job behind another, the watchdog acts in
deadline order and not once disarmed, and SQLite statements on one shard are interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import _extra_postgres
import psycopg
import pytest
import sqlalchemy as sa
from _extra_postgres import ExtraPostgres
from _servers import (
    create_server_database,
    decide_unavailable,
    drop_server_database,
    new_database_name,
    probe_server,
)
from sqlalchemy import String, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shardalchemy import Range, ShardedSession, ShardKey, ShardMap, ShardTimeoutError
from shardalchemy.errors import ShardQueryError
from shardalchemy.execution.cancellation import ABANDON_GRACE_SECONDS
from shardalchemy.execution.watchdog import Watchdog
from shardalchemy.execution.workers import Workers

HEALTHY = ("h0", "h1")
SICK = "sick"
SHARDS = (*HEALTHY, SICK)
ROWS_PER_SHARD = 5
# what a statement may take past its deadline: the grace before abandoning, and then the
# machine (two cores shared with other test runs)
MARGIN = ABANDON_GRACE_SECONDS + 2.5


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "deadline_items"
    # ids 0-99 on h0, 100-199 on h1, from 200 on sick (ids_on)
    __sharding__ = ShardKey("id", Range([(None, "h0"), (100, "h1"), (200, SICK)]))

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    home: Mapped[str] = mapped_column(String(10))


def ids_on(shard: str) -> list[int]:
    return [SHARDS.index(shard) * 100 + index for index in range(ROWS_PER_SHARD)]


# -- without servers ---------------------------------------------------------------------------


def test_the_worker_pool_never_queues_a_job_behind_a_running_one() -> None:
    # every job waits for all the others to be running: a pool that queued any of them
    # behind another would break the barrier
    workers = Workers("test-workers")
    barrier = threading.Barrier(12, timeout=30)
    first = [workers.submit(barrier.wait) for _ in range(6)]
    second = [workers.submit(barrier.wait) for _ in range(6)]  # six threads are busy now
    assert sorted(future.result() for future in first + second) == list(range(12))
    # idle threads are reused, not multiplied
    assert workers.submit(lambda: threading.current_thread().name).result().startswith("test-")
    assert workers.threads == 12


def test_idle_workers_end() -> None:
    workers = Workers("test-idle", idle_seconds=0.05)
    assert workers.submit(int, "7").result() == 7
    deadline = time.monotonic() + 30
    while workers.threads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert workers.threads == 0
    assert workers.submit(int, "8").result() == 8  # and new ones start


def test_the_watchdog_acts_in_deadline_order_and_never_once_disarmed() -> None:
    watchdog = Watchdog()
    fired: list[str] = []
    done, release = threading.Event(), threading.Event()
    watchdog.arm(0, lambda: release.wait(30))  # holds the watchdog while the others are armed
    # armed in order of their delays, so their deadlines are in that order however slow
    # this thread is; all are due by the time the watchdog is released
    watchdog.arm(0.01, lambda: fired.append("first"))
    disarmed = watchdog.arm(0.02, lambda: fired.append("disarmed"))
    watchdog.arm(0.03, lambda: fired.append("second"))
    watchdog.arm(0.04, lambda: (fired.append("last"), done.set()))
    disarmed.disarm()
    time.sleep(0.05)
    release.set()
    assert done.wait(30)
    assert fired == ["first", "second", "last"]


def test_a_failing_action_does_not_stop_the_watchdog() -> None:
    watchdog = Watchdog()
    done = threading.Event()
    watchdog.arm(0.0, lambda: 1 / 0)
    watchdog.arm(0.01, done.set)
    assert done.wait(30)


def test_many_disarmed_deadlines_do_not_pile_up() -> None:
    watchdog = Watchdog()
    for _ in range(2000):
        watchdog.arm(3600, lambda: None).disarm()
    assert len(watchdog._heap) < 600


def slow_sqlite_condition() -> Any:
    # counting to a large number; interrupt() stops it
    return text(
        "(WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000000) "
        "SELECT count(*) FROM c) > 0"
    )


@pytest.fixture
def sqlite_map(tmp_path: Any) -> Iterator[ShardMap]:
    shard_map = ShardMap.databases({shard: f"sqlite:///{tmp_path}/{shard}.db" for shard in SHARDS})
    shard_map.create_all(Base.metadata)
    with shard_map.sessionmaker()() as session:
        session.add_all(Item(id=i, home=shard) for shard in SHARDS for i in ids_on(shard))
        session.commit()
    yield shard_map
    shard_map.dispose()


@pytest.mark.parametrize("where", ["session default (fast path)", "execution option"])
def test_a_sqlite_statement_on_one_shard_is_interrupted_at_its_deadline(
    sqlite_map: ShardMap, where: str
) -> None:
    statement = select(Item).where(Item.id == ids_on(SICK)[0], slow_sqlite_condition())
    options: dict[str, Any] = {}
    if where == "execution option":
        session = ShardedSession(shard_map=sqlite_map)
        options = {"shard_timeout": 0.3}
    else:
        session = ShardedSession(shard_map=sqlite_map, shard_timeout=0.3)
    with session:
        started = time.monotonic()
        with pytest.raises(ShardTimeoutError) as caught:
            session.execute(statement, execution_options=options).all()
        assert time.monotonic() - started < 0.3 + MARGIN
        assert caught.value.shard == SICK
        assert list(caught.value.failures) == [SICK]
        assert isinstance(caught.value.__cause__, sa.exc.OperationalError)  # "interrupted"
        session.rollback()
        # and the fast path still answers in time
        assert session.get(Item, ids_on(SICK)[1]) is not None


# -- faults on a real server -------------------------------------------------------------------


def _require_servers() -> None:
    reasons = [
        reason
        for reason in (
            probe_server("postgresql"),
            _extra_postgres.unavailable(),
        )
        if reason is not None
    ]
    if reasons:
        outcome = decide_unavailable("postgresql", "; ".join(reasons), os.environ)
        if outcome.action == "fail":
            pytest.fail(outcome.message, pytrace=False)
        pytest.skip(outcome.message)


@pytest.fixture(scope="module")
def sick_server() -> Iterator[ExtraPostgres]:
    _require_servers()
    with ExtraPostgres.started() as server:
        yield server
    _extra_postgres.cleanup()


@pytest.fixture(scope="module")
def shard_map(sick_server: ExtraPostgres) -> Iterator[ShardMap]:
    names = [new_database_name() for _ in HEALTHY]
    urls: dict[str, Any] = {
        shard: create_server_database("postgresql", name)
        for shard, name in zip(HEALTHY, names, strict=True)
    }
    # a connect timeout: a new connection to a stopped server must not hang the tests
    urls[SICK] = sick_server.url.update_query_dict({"connect_timeout": "2"})
    shard_map = ShardMap.databases(urls)
    shard_map.create_all(Base.metadata)
    try:
        yield shard_map
    finally:
        shard_map.dispose()
        for name in names:
            drop_server_database("postgresql", name)


@pytest.fixture
def world(shard_map: ShardMap, sick_server: ExtraPostgres) -> Iterator[ShardMap]:
    """The shard map with its rows; the sick server running again after each test."""
    if not sick_server.pids():
        sick_server.start()
    with shard_map.sessionmaker()() as session:
        session.execute(sa.delete(Item))
        session.add_all(Item(id=i, home=shard) for shard in SHARDS for i in ids_on(shard))
        session.commit()
    yield shard_map
    if sick_server.paused:
        sick_server.resume()
    shard_map.dispose()  # connections a test abandoned or broke


# a fault is undone after this long whatever happens, so that a deadline that does not hold
# fails its test (late) instead of hanging the run
SAFETY_SECONDS = 20


@contextlib.contextmanager
def locked(shard_map: ShardMap, shard: str) -> Iterator[None]:
    """Another transaction holds ``shard``'s table: every statement on it waits."""
    url = shard_map.bind(shard).url
    holder = psycopg.connect(
        host=url.host, port=url.port, user=url.username, dbname=url.database, connect_timeout=5
    )
    holder.execute(f"LOCK TABLE {Item.__tablename__} IN ACCESS EXCLUSIVE MODE")
    release = threading.Timer(SAFETY_SECONDS, holder.close)  # closing ends the transaction
    release.start()
    try:
        yield
    finally:
        release.cancel()
        holder.close()


@contextlib.contextmanager
def paused(server: ExtraPostgres) -> Iterator[None]:
    """The server stopped (SIGSTOP) for the block, at most ``SAFETY_SECONDS``."""
    server.pause()
    resume = threading.Timer(SAFETY_SECONDS, server.resume)
    resume.start()
    try:
        yield
    finally:
        resume.cancel()
        server.resume()


def waiting_on_the_lock(shard_map: ShardMap) -> int:
    """Statements of other sessions still waiting for the sick shard's lock."""
    with shard_map.bind(SICK).connect() as connection:
        count = connection.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND pid <> pg_backend_pid()"
        ).scalar()
    return int(count or 0)


class Clock:
    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


def scatter() -> Any:
    return select(Item.id).order_by(Item.id)


def healthy_only() -> Any:
    return select(Item.id).where(Item.id.in_(healthy_ids())).order_by(Item.id)


def healthy_ids() -> list[int]:
    return [i for shard in HEALTHY for i in ids_on(shard)]


def test_a_locked_shard_times_out_a_scatter_and_only_it_is_blamed(world: ShardMap) -> None:
    with locked(world, SICK), world.sessionmaker()() as session:
        clock = Clock()
        with pytest.raises(ShardTimeoutError) as caught:
            session.scalars(scatter().execution_options(shard_timeout=1.0)).all()
        assert clock.seconds < 1.0 + MARGIN
        error = caught.value
        assert error.shard == SICK
        assert list(error.failures) == [SICK]
        assert "completed: h0, h1" in str(error)
        assert "cancelled" in str(error)  # a live server answers the cancel: not abandoned
        assert waiting_on_the_lock(world) == 0  # stopped on the server, not left waiting
        # each shard ran in a savepoint: the session goes on without a rollback
        assert session.scalars(healthy_only()).all() == healthy_ids()


SINGLE_SHARD = {
    "get": lambda session, options: session.get(Item, ids_on(SICK)[0], execution_options=options),
    "where id == k": lambda session, options: session.execute(
        select(Item).where(Item.id == ids_on(SICK)[0]), execution_options=options
    ).all(),
    "two-key IN": lambda session, options: session.execute(
        select(Item).where(Item.id.in_(ids_on(SICK)[:2])), execution_options=options
    ).all(),
    "UPDATE": lambda session, options: session.execute(
        sa.update(Item).where(Item.id == ids_on(SICK)[0]).values(home=SICK),
        execution_options={**options, "synchronize_session": False},
    ),
}


@pytest.mark.parametrize("where", ["execution option", "session default"])
@pytest.mark.parametrize("shape", list(SINGLE_SHARD))
def test_a_single_shard_statement_waits_for_a_lock_no_longer_than_its_deadline(
    world: ShardMap, shape: str, where: str
) -> None:
    if where == "session default":
        session, options = ShardedSession(shard_map=world, shard_timeout=0.5), {}
    else:
        session, options = ShardedSession(shard_map=world), {"shard_timeout": 0.5}
    with locked(world, SICK), session:
        clock = Clock()
        with pytest.raises(ShardTimeoutError) as caught:
            SINGLE_SHARD[shape](session, options)
        assert clock.seconds < 0.5 + MARGIN
        assert caught.value.shard == SICK
        assert isinstance(caught.value.__cause__, sa.exc.DBAPIError)
        assert waiting_on_the_lock(world) == 0
        session.rollback()
        # a healthy shard's statement right after, with the same deadline, answers
        assert session.get(Item, ids_on("h0")[0], execution_options=options) is not None


def test_the_servers_statement_timeout_is_only_for_the_statement(world: ShardMap) -> None:
    with world.sessionmaker()() as session:
        bounded = session.execute(
            text("SELECT current_setting('statement_timeout')"),
            bind_arguments={"shard_id": SICK},
            execution_options={"shard_timeout": 2.5},
        ).scalar()
        after = session.execute(
            text("SELECT current_setting('statement_timeout')"), bind_arguments={"shard_id": SICK}
        ).scalar()
    # the time left of the deadline when the statement was sent
    assert bounded.endswith("ms") and 1000 < int(bounded[:-2]) <= 2500, bounded
    assert after == "0"


def test_scatters_stuck_on_a_locked_shard_do_not_delay_statements_to_healthy_shards(
    world: ShardMap,
) -> None:
    stuck_errors: list[BaseException] = []

    def stuck_scatter() -> None:
        with world.sessionmaker()() as session:
            try:
                session.scalars(scatter().execution_options(shard_timeout=30)).all()
            except BaseException as error:
                stuck_errors.append(error)

    with locked(world, SICK):
        threads = [threading.Thread(target=stuck_scatter) for _ in range(3)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        while waiting_on_the_lock(world) < len(threads) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert waiting_on_the_lock(world) == len(threads)  # three scatters hold the sick shard
        # more scatters touching fewer shards, then a wider one: none waits for a thread
        with world.sessionmaker()() as session:
            for _ in range(3):
                clock = Clock()
                ids = session.scalars(healthy_only().execution_options(shard_timeout=3.0)).all()
                assert ids == healthy_ids()
                assert clock.seconds < 3.0
    for thread in threads:
        thread.join(30)
    assert stuck_errors == []  # the lock released, the stuck scatters finished


def test_a_stopped_shard_is_abandoned_at_the_deadline_and_healthy_shards_are_not_delayed(
    world: ShardMap, sick_server: ExtraPostgres
) -> None:
    with world.sessionmaker()() as session:
        assert len(session.scalars(scatter()).all()) == len(SHARDS) * ROWS_PER_SHARD
        with paused(sick_server):
            clock = Clock()
            with pytest.raises(ShardTimeoutError) as caught:
                session.scalars(scatter().execution_options(shard_timeout=1.0)).all()
            assert clock.seconds < 1.0 + MARGIN
            assert caught.value.shard == SICK
            assert "abandoned" in str(caught.value)
            assert "completed: h0, h1" in str(caught.value)
            session.rollback()
            # statements that do not touch the stopped shard are not delayed at all
            with world.sessionmaker()() as other:
                assert other.scalars(healthy_only()).all() == healthy_ids()
            assert session.scalars(healthy_only()).all() == healthy_ids()
    with world.sessionmaker()() as session:  # the abandoned connection was thrown away
        assert len(session.scalars(scatter()).all()) == len(SHARDS) * ROWS_PER_SHARD


def test_a_single_shard_statement_on_a_stopped_shard_returns_by_its_deadline(
    world: ShardMap, sick_server: ExtraPostgres
) -> None:
    with ShardedSession(shard_map=world, shard_timeout=1.0) as session:
        assert session.get(Item, ids_on(SICK)[0]) is not None  # its connection is open
        with paused(sick_server):
            clock = Clock()
            with pytest.raises(ShardTimeoutError) as caught:
                session.execute(select(Item).where(Item.id == ids_on(SICK)[1])).all()
            assert clock.seconds < 1.0 + MARGIN
            assert caught.value.shard == SICK
            assert "abandoned" in str(caught.value)
            session.rollback()
            assert session.get(Item, ids_on("h1")[0]) is not None


def test_a_shard_killed_mid_statement_fails_the_scatter_at_once_naming_it(
    world: ShardMap, sick_server: ExtraPostgres
) -> None:
    with locked(world, SICK), world.sessionmaker()() as session:
        killer = threading.Timer(0.5, sick_server.kill)
        killer.start()
        clock = Clock()
        with pytest.raises(ShardQueryError) as caught:
            session.scalars(scatter()).all()  # no deadline: the failure itself ends it
        killer.join()
        assert clock.seconds < 0.5 + MARGIN
        assert caught.value.shard == SICK
        assert not isinstance(caught.value, ShardTimeoutError)
        assert isinstance(caught.value.__cause__, sa.exc.OperationalError)
        assert "completed: h0, h1" in str(caught.value)
    sick_server.start()


@pytest.mark.slow
@pytest.mark.parametrize("scatters", [4, 12])  # the pool's 15 connections: sessions hold them
def test_many_stuck_scatters_and_many_healthy_statements_at_once(
    world: ShardMap, sick_server: ExtraPostgres, scatters: int
) -> None:
    # the stopped shard holds a thread per scatter until its deadline; meanwhile every
    # statement to the healthy shards still answers at once
    with world.sessionmaker()() as warm:
        warm.scalars(scatter()).all()
    sessions = [world.sessionmaker()() for _ in range(scatters)]
    for session in sessions:
        session.connection(bind_arguments={"shard_id": SICK})  # opened before the stop
    timed_out: list[Any] = []

    def stuck(session: ShardedSession) -> None:
        try:
            session.scalars(scatter().execution_options(shard_timeout=2.0)).all()
        except ShardTimeoutError as error:
            timed_out.append(error.shard)

    with paused(sick_server):
        clock = Clock()
        threads = [threading.Thread(target=stuck, args=(session,)) for session in sessions]
        for thread in threads:
            thread.start()
        with world.sessionmaker()() as session:
            for _ in range(20):
                assert session.scalars(healthy_only()).all() == healthy_ids()
        for thread in threads:
            thread.join(SAFETY_SECONDS)
        assert clock.seconds < 2.0 + MARGIN
        assert timed_out == [SICK] * scatters
        for session in sessions:
            session.close()


def test_errors_chain_their_cause_and_name_the_shard_in_the_message(world: ShardMap) -> None:
    with (
        locked(world, SICK),
        world.sessionmaker()() as session,
        pytest.raises(ShardTimeoutError) as caught,
    ):
        session.execute(
            select(func.count()).select_from(Item).where(Item.id == ids_on(SICK)[0]),
            execution_options={"shard_timeout": 0.3},
        ).scalar()
    assert f"shard {SICK!r} did not answer within shard_timeout=0.3s" in str(caught.value)
    assert caught.value.failures[SICK] is caught.value.__cause__


def async_map_of(shard_map: ShardMap) -> ShardMap:
    urls = {
        shard: shard_map.bind(shard).url.set(drivername="postgresql+asyncpg") for shard in SHARDS
    }
    return ShardMap.databases(
        {shard: url.difference_update_query(["connect_timeout"]) for shard, url in urls.items()}
    )


ASYNC_STATEMENTS = {
    "scatter": scatter,
    "one shard": lambda: select(Item).where(Item.id == ids_on(SICK)[0]),
}


@pytest.mark.parametrize("shape", list(ASYNC_STATEMENTS))
@pytest.mark.parametrize("fault", ["locked", "stopped"])
def test_async_sessions_keep_their_deadlines_too(
    world: ShardMap, sick_server: ExtraPostgres, fault: str, shape: str
) -> None:
    # one statement per fault: after a stopped shard's connection is abandoned, the next
    # statement on it opens a new one, which only the engine's connect timeout bounds
    async_map = async_map_of(world)

    async def main() -> tuple[Any, float]:
        async with AsyncSession(
            sync_session_class=ShardedSession, shard_map=async_map, shard_timeout=1.0
        ) as session:
            await session.scalars(scatter())  # a pooled connection to every shard
            await session.commit()  # (no transaction left to wait for the lock)
            with locked(world, SICK) if fault == "locked" else paused(sick_server):
                clock = Clock()
                with pytest.raises(ShardTimeoutError) as caught:
                    await session.execute(ASYNC_STATEMENTS[shape]())
                seconds = clock.seconds
                await session.rollback()
                assert (await session.scalars(healthy_only())).all() == healthy_ids()
        await async_map.dispose_async()
        return caught.value.shard, seconds

    shard, seconds = asyncio.run(main())
    assert shard == SICK
    assert seconds < 1.0 + MARGIN
