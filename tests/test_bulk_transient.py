"""A transient failure during a bulk write is not a bad row (issue 13, section 6).

Faults are injected on real servers (PostgreSQL, MariaDB) and SQLite files, one class at a time:
a row lock another connection holds past the lock timeout, a deadlock between two connections,
a statement timeout, the session's connection killed in the middle of
its executemany, and SQLite's "database is locked".  Each must raise ``ShardQueryError`` naming
the shard, retryable, the driver's error chained, without searching the batch for a row (INSERT
statements are counted per shard); after the caller's rollback no row of the statement, nor of
the transaction, remains on any shard (what one plain ``Session`` leaves), and the same rows then
go in.  A constraint violation still raises ``BulkWriteError`` naming the row.

Hypothesis generates the rows (their shards), the batch size and which row the fault hits, so
the fault lands in any batch of any shard, first or not.  ``failures`` is also checked against
real errors from the servers and drivers, asyncio drivers included.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import String, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shardalchemy import BulkWriteError, Lookup, ShardKey, ShardMap, ShardQueryError
from shardalchemy._sqlalchemy import failures

SHARDS = ("a", "b", "c")
SEED_ID = 90_000  # one committed row per shard, which must survive every rollback
EARLIER_ID = 80_000  # a row written earlier in the transaction, which the rollback undoes
TIMEOUT_MS = 150  # the short lock / statement timeouts the faults run into


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "transient_items"
    __sharding__ = ShardKey("region", Lookup({shard: shard for shard in SHARDS}))
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    region: Mapped[str] = mapped_column(String(5))
    name: Mapped[str] = mapped_column(String(20))


# a row named "sleep" sleeps in a trigger: timeouts and kills strike during it
TRIGGERS = {
    "postgresql": [
        """CREATE FUNCTION transient_fault() RETURNS trigger AS $$
        BEGIN
            IF NEW.name = 'sleep' THEN PERFORM pg_sleep(3); END IF;
            RETURN NEW;
        END $$ LANGUAGE plpgsql""",
        """CREATE TRIGGER transient_fault BEFORE INSERT ON transient_items
        FOR EACH ROW EXECUTE FUNCTION transient_fault()""",
    ],
    "mariadb": [
        """CREATE TRIGGER transient_fault BEFORE INSERT ON transient_items FOR EACH ROW
        BEGIN IF NEW.name = 'sleep' THEN DO SLEEP(3); END IF; END""",
    ],
    "sqlite": [],
}


@dataclass
class World:
    """Three shards of one backend, plain engines beside them, INSERTs counted per shard."""

    backend: str
    shard_map: ShardMap
    plain: dict[str, sa.Engine]
    inserts: Counter[str] = field(default_factory=Counter)

    def stored(self) -> dict[str, set[int]]:
        """Every row id of every shard, read with plain SQL outside shardalchemy."""
        found = {}
        for shard, engine in self.plain.items():
            with engine.connect() as connection:
                ids = connection.execute(sa.text("SELECT id FROM transient_items")).scalars()
                found[shard] = {int(i) for i in ids}
        return found

    def reset(self) -> None:
        for engine in self.plain.values():
            with engine.begin() as connection:
                connection.execute(sa.text(f"DELETE FROM transient_items WHERE id <> {SEED_ID}"))
        self.inserts.clear()

    def session_pid(self, session: Any, shard: str) -> int:
        query = {"postgresql": "SELECT pg_backend_pid()", "mariadb": "SELECT CONNECTION_ID()"}
        connection = session.connection(bind_arguments={"shard_id": shard})
        return int(connection.exec_driver_sql(query[self.backend]).scalar())


SEEDED = {shard: {SEED_ID} for shard in SHARDS}


def make_world(make_database: Any, backend: str) -> Iterator[World]:
    urls = {shard: make_database(backend) for shard in SHARDS}
    if backend == "sqlite":  # a short busy timeout: "database is locked" comes soon
        urls = {shard: url.update_query_dict({"timeout": "0.05"}) for shard, url in urls.items()}
    shard_map = ShardMap.databases(urls)
    world = World(backend, shard_map, {shard: sa.create_engine(url) for shard, url in urls.items()})

    def configure(dbapi_connection: Any, record: Any) -> None:
        if backend == "sqlite":
            return
        cursor = dbapi_connection.cursor()
        if backend == "postgresql":
            # deadlock_timeout shorter than the other connection's: the session is the victim
            cursor.execute(f"SET lock_timeout = '{TIMEOUT_MS}ms'")
            cursor.execute("SET deadlock_timeout = '20ms'")
        else:
            cursor.execute("SET SESSION innodb_lock_wait_timeout = 1")  # its minimum
        cursor.close()
        if backend == "postgresql":
            dbapi_connection.commit()

    def counter(shard: str) -> Callable[..., None]:
        def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith("INSERT"):
                world.inserts[shard] += 1

        return count

    for shard in SHARDS:
        engine = shard_map.bind(shard)
        sa.event.listen(engine, "connect", configure)
        sa.event.listen(engine, "before_cursor_execute", counter(shard))
    shard_map.create_all(Base.metadata)
    for engine in world.plain.values():
        with engine.begin() as connection:
            for statement in TRIGGERS[backend]:
                connection.exec_driver_sql(statement)
            connection.execute(sa.text(f"INSERT INTO transient_items VALUES ({SEED_ID}, 'x', 's')"))
    yield world
    shard_map.dispose()
    for engine in world.plain.values():
        engine.dispose()


@pytest.fixture
def world(make_database: Any, backend: str) -> Iterator[World]:
    yield from make_world(make_database, backend)


servers = pytest.mark.parametrize(
    "backend",
    [
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
    indirect=True,
)
with_sqlite = pytest.mark.parametrize(
    "backend",
    [
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
    indirect=True,
)
sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

examples = settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- the statement: rows, batches and the row the fault hits --------------------------------


@dataclass(frozen=True)
class Plan:
    """Rows of a bulk INSERT (by shard), the batch size, and the row the fault hits."""

    shards: tuple[str, ...]
    batch_size: int | None  # None: one list, one batch
    fault: int

    @property
    def victim(self) -> str:
        return self.shards[self.fault]

    def rows(self, name_of_fault: str = "n") -> list[dict[str, Any]]:
        return [
            {
                "id": index + 1,
                "region": shard,
                "name": name_of_fault if index == self.fault else "n",
            }
            for index, shard in enumerate(self.shards)
        ]

    def batches(self) -> list[range]:
        size = self.batch_size or len(self.shards)
        return [
            range(start, min(start + size, len(self.shards)))
            for start in range(0, len(self.shards), size)
        ]

    def inserts_up_to_the_fault(self) -> int:
        """INSERTs the victim gets when nothing is searched: one per batch with its rows."""
        return sum(
            1
            for batch in self.batches()
            if batch.start <= self.fault and any(self.shards[i] == self.victim for i in batch)
        )

    def options(self) -> dict[str, Any]:
        return {"bulk_batch_size": self.batch_size} if self.batch_size else {}


@st.composite
def plans(draw: st.DrawFn, max_rows: int = 40) -> Plan:
    shards = tuple(draw(st.lists(st.sampled_from(SHARDS), min_size=1, max_size=max_rows)))
    batch_size = draw(st.none() | st.integers(1, len(shards)))
    return Plan(shards, batch_size, draw(st.integers(0, len(shards) - 1)))


def first_victim_plans() -> st.SearchStrategy[Plan]:
    """Plans whose fault is on the victim's first row (SQLite locks a file at its first write)."""
    return plans().map(
        lambda plan: Plan(plan.shards, plan.batch_size, plan.shards.index(plan.victim))
    )


# -- the checks ------------------------------------------------------------------------------


def assert_transient(
    raised: BaseException, world: World, plan: Plan, *, lost: bool = False, searched: bool = False
) -> None:
    assert isinstance(raised, ShardQueryError) and not isinstance(raised, BulkWriteError), raised
    assert raised.shard == plan.victim, (raised.shard, plan)
    assert raised.retryable, raised
    cause = raised.__cause__
    assert isinstance(cause, sa.exc.DBAPIError), repr(cause)
    assert failures.is_transient(cause), repr(cause)
    assert raised.failures[plan.victim] is cause
    assert repr(plan.victim) in str(raised) and "not a refused row" in str(raised)
    if lost:
        assert "roll the session back" in str(raised)
    if not searched:  # no bisection: one INSERT per batch the victim took part in
        assert world.inserts[plan.victim] == plan.inserts_up_to_the_fault(), (
            world.inserts,
            plan,
        )


def begin_with_earlier_work(world: World, session: Any) -> None:
    """A row written earlier in the transaction, on every shard: the rollback takes it too."""
    session.execute(
        insert(Item),
        [{"id": EARLIER_ID + i, "region": s, "name": "e"} for i, s in enumerate(SHARDS)],
    )
    world.inserts.clear()


def conclude(
    world: World, session: Any, plan: Plan, *, usable: bool, release: Callable[[], None]
) -> None:
    """After the failure: the session as SQLAlchemy leaves it, the rollback, and a retry.

    ``release`` ends the fault (the other connection's transaction) after the rollback.
    """
    on_victim = select(Item.id).where(Item.region == plan.victim)
    if usable:  # the statement was undone, the transaction goes on
        assert set(session.scalars(on_victim)) == {EARLIER_ID + SHARDS.index(plan.victim)}
    else:  # as after a lost connection in one plain Session: roll back first
        with pytest.raises(sa.exc.PendingRollbackError):
            session.execute(on_victim)
    session.rollback()
    release()
    # nothing of the statement or of the transaction remains, as in one database
    assert world.stored() == SEEDED
    # the fault is gone: the same statement, retried, goes in whole
    session.execute(insert(Item), plan.rows(), execution_options=plan.options())
    session.commit()
    expected = {shard: {SEED_ID} for shard in SHARDS}
    for index, shard in enumerate(plan.shards):
        expected[shard].add(index + 1)
    assert world.stored() == expected


def wait_until(check: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.005)


def waiting_for_lock(world: World, shard: str, pid: int) -> bool:
    query = {
        "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE pid = :pid "
        "AND wait_event_type = 'Lock'",
        # innodb_trx may show a waiting transaction as RUNNING; InnoDB finds the deadlock
        # whichever of the two asks last, so its statement having started is enough
        "mariadb": "SELECT count(*) FROM information_schema.processlist "
        "WHERE id = :pid AND command = 'Query' AND info LIKE 'INSERT%'",
    }
    with world.plain[shard].connect() as connection:
        return bool(connection.execute(sa.text(query[world.backend]), {"pid": pid}).scalar())


def sleeping(world: World, shard: str, pid: int) -> bool:
    query = {
        "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE pid = :pid "
        "AND wait_event = 'PgSleep'",
        "mariadb": "SELECT count(*) FROM information_schema.processlist "
        "WHERE id = :pid AND state = 'User sleep'",
    }
    with world.plain[shard].connect() as connection:
        return bool(connection.execute(sa.text(query[world.backend]), {"pid": pid}).scalar())


def kill(world: World, shard: str, pid: int) -> None:
    statement = {
        "postgresql": f"SELECT pg_terminate_backend({pid}, 5000)",  # waits until it is gone
        "mariadb": f"KILL {pid}",
    }
    with world.plain[shard].connect() as connection:
        connection.exec_driver_sql(statement[world.backend])


# -- the classes of transient failure -------------------------------------------------------


@servers
@given(plan=plans())
@examples
def test_a_row_lock_held_past_the_lock_timeout(world: World, plan: Plan) -> None:
    world.reset()
    holder = world.plain[plan.victim].connect()
    try:
        # another transaction inserted the same key and has not committed: ours must wait
        holder.execute(
            sa.text("INSERT INTO transient_items VALUES (:id, :region, 'other')"),
            {"id": plan.fault + 1, "region": plan.victim},
        )
        with world.shard_map.sessionmaker()() as session:
            begin_with_earlier_work(world, session)
            started = time.perf_counter()
            with pytest.raises(ShardQueryError) as raised:
                session.execute(insert(Item), plan.rows(), execution_options=plan.options())
            elapsed = time.perf_counter() - started
            assert_transient(raised.value, world, plan)
            # one lock wait, not one per bisection step (MariaDB's shortest wait is 1s)
            assert elapsed < (1.9 if world.backend == "mariadb" else 1.0), elapsed
            conclude(world, session, plan, usable=True, release=holder.rollback)
    finally:
        holder.close()


@servers
@given(plan=plans())
@examples
def test_a_deadlock_between_two_connections(world: World, plan: Plan) -> None:
    world.reset()
    other = world.plain[plan.victim].connect()
    try:
        if world.backend == "postgresql":
            other.exec_driver_sql("SET deadlock_timeout = '10s'")  # the session checks first
        else:  # InnoDB's victim is the transaction that changed fewer rows: make this heavier
            other.execute(
                sa.text("INSERT INTO transient_items VALUES (:id, :region, 'heavy')"),
                [{"id": 50_000 + i, "region": plan.victim} for i in range(300)],
            )
        other.execute(
            sa.text("INSERT INTO transient_items VALUES (:id, :region, 'other')"),
            {"id": plan.fault + 1, "region": plan.victim},
        )
        other_pid = int(
            other.exec_driver_sql(
                "SELECT pg_backend_pid()"
                if world.backend == "postgresql"
                else "SELECT CONNECTION_ID()"
            ).scalar()
        )
        with world.shard_map.sessionmaker()() as session:
            begin_with_earlier_work(world, session)
            # the other transaction now waits for the session's earlier row ...
            blocked = threading.Thread(
                target=other.execute,
                args=(
                    sa.text("INSERT INTO transient_items VALUES (:id, :region, 'x')"),
                    {"id": EARLIER_ID + SHARDS.index(plan.victim), "region": plan.victim},
                ),
            )
            blocked.start()
            wait_until(lambda: waiting_for_lock(world, plan.victim, other_pid), "it waits")
            # ... and the session for the other's row: a deadlock
            with pytest.raises(ShardQueryError) as raised:
                session.execute(insert(Item), plan.rows(), execution_options=plan.options())
            # InnoDB rolled the session's whole transaction back on that shard (the session
            # must be rolled back); PostgreSQL only the statement
            innodb = world.backend == "mariadb"
            assert_transient(raised.value, world, plan, lost=innodb)

            def release() -> None:
                blocked.join(10)  # it got the session's row when the session rolled back
                assert not blocked.is_alive()
                other.rollback()

            conclude(world, session, plan, usable=not innodb, release=release)
    finally:
        other.close()


@servers
@given(plan=plans())
@examples
def test_a_statement_timeout(world: World, plan: Plan) -> None:
    """PostgreSQL's statement_timeout, MariaDB's max_statement_time (SQLite has none)."""
    world.reset()
    with world.shard_map.sessionmaker()() as session:
        begin_with_earlier_work(world, session)
        victim = session.connection(bind_arguments={"shard_id": plan.victim})
        if world.backend == "postgresql":
            victim.exec_driver_sql(f"SET LOCAL statement_timeout = '{TIMEOUT_MS}ms'")
        else:
            victim.exec_driver_sql(f"SET SESSION max_statement_time = {TIMEOUT_MS / 1000}")
        started = time.perf_counter()
        with pytest.raises(ShardQueryError) as raised:
            session.execute(insert(Item), plan.rows("sleep"), execution_options=plan.options())
        assert time.perf_counter() - started < 2.5  # one timeout, not one per bisection step
        assert_transient(raised.value, world, plan)
        if world.backend == "mariadb":
            victim.exec_driver_sql("SET SESSION max_statement_time = 0")
        conclude(world, session, plan, usable=True, release=lambda: None)


@servers
@given(plan=plans())
@examples
def test_the_connection_killed_in_the_middle_of_the_executemany(world: World, plan: Plan) -> None:
    """pg_terminate_backend / KILL from another connection while the executemany runs."""
    world.reset()
    with world.shard_map.sessionmaker()() as session:
        begin_with_earlier_work(world, session)
        pid = world.session_pid(session, plan.victim)

        def killer() -> None:  # once the victim's statement sleeps in the faulty row
            wait_until(lambda: sleeping(world, plan.victim, pid), "the statement runs")
            kill(world, plan.victim, pid)

        thread = threading.Thread(target=killer)
        thread.start()
        try:
            with pytest.raises(ShardQueryError) as raised:
                session.execute(insert(Item), plan.rows("sleep"), execution_options=plan.options())
        finally:
            thread.join(15)
        # the real cause, not PendingRollbackError, nor an error of undoing the savepoints
        assert_transient(raised.value, world, plan, lost=True)
        assert failures.is_connection_lost(raised.value.__cause__)
        conclude(world, session, plan, usable=False, release=lambda: None)


@servers
@given(plan=plans(), probe=st.integers(1, 8))
@examples
def test_the_connection_killed_while_searching_for_a_refused_row(
    world: World, plan: Plan, probe: int
) -> None:
    """A duplicate starts the search for the refused row; a kill during the search stops it."""
    world.reset()
    rows = plan.rows()
    rows[plan.fault]["id"] = SEED_ID  # a duplicate of the victim's committed row
    with world.shard_map.sessionmaker()() as session:
        begin_with_earlier_work(world, session)
        pid = world.session_pid(session, plan.victim)
        seen = [0]

        def kill_at_a_probe(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith("INSERT"):
                seen[0] += 1
                # the first INSERT of the failing batch failed; later ones are the search's
                if seen[0] == plan.inserts_up_to_the_fault() + probe:
                    kill(world, plan.victim, pid)

        engine = world.shard_map.bind(plan.victim)
        sa.event.listen(engine, "before_cursor_execute", kill_at_a_probe)
        try:
            with pytest.raises((ShardQueryError, BulkWriteError)) as raised:
                session.execute(insert(Item), rows, execution_options=plan.options())
        finally:
            sa.event.remove(engine, "before_cursor_execute", kill_at_a_probe)
        if seen[0] < plan.inserts_up_to_the_fault() + probe:
            # the search ended before that probe: the refused row was found
            assert isinstance(raised.value, BulkWriteError)
            assert raised.value.row_index == plan.fault
            session.rollback()
            assert world.stored() == SEEDED
            return
        assert_transient(raised.value, world, plan, lost=True, searched=True)
        assert "while searching the batch" in str(raised.value)
        conclude(world, session, plan, usable=False, release=lambda: None)


@sqlite_only
@given(plan=first_victim_plans())
@examples
def test_sqlite_database_is_locked(world: World, plan: Plan) -> None:
    """Another connection holds the file's write lock past the busy timeout."""
    world.reset()
    path = world.plain[plan.victim].url.database
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with world.shard_map.sessionmaker()() as session:
            # the earlier work on other shards only: SQLite's lock is taken at a first write
            session.execute(
                insert(Item),
                [
                    {"id": EARLIER_ID + i, "region": s, "name": "e"}
                    for i, s in enumerate(SHARDS)
                    if s != plan.victim
                ],
            )
            world.inserts.clear()
            started = time.perf_counter()
            with pytest.raises(ShardQueryError) as raised:
                session.execute(insert(Item), plan.rows(), execution_options=plan.options())
            assert time.perf_counter() - started < 1.0  # one busy timeout of 50 ms
            assert_transient(raised.value, world, plan)
            assert "database is locked" in str(raised.value)
            session.rollback()
            holder.execute("ROLLBACK")
            assert world.stored() == SEEDED
            session.execute(insert(Item), plan.rows(), execution_options=plan.options())
            session.commit()
        assert sum(len(ids) for ids in world.stored().values()) == len(SHARDS) + len(plan.shards)
    finally:
        holder.close()


# -- rows refused on their merits still name the row -----------------------------------------


@with_sqlite
@given(plan=plans(), kind=st.sampled_from(["duplicate", "null"]))
@examples
def test_a_constraint_violation_is_still_a_bulk_write_error(
    world: World, plan: Plan, kind: str
) -> None:
    world.reset()
    rows = plan.rows()
    if kind == "duplicate":
        rows[plan.fault]["id"] = SEED_ID
    else:
        rows[plan.fault]["name"] = None  # NOT NULL
    with world.shard_map.sessionmaker()() as session:
        begin_with_earlier_work(world, session)
        with pytest.raises(BulkWriteError) as raised:
            session.execute(insert(Item), rows, execution_options=plan.options())
        assert raised.value.row_index == plan.fault, str(raised.value)
        assert raised.value.shard == plan.victim
        cause = raised.value.__cause__
        # MariaDB reports a NULL the ORM leaves out as a missing default (1364), not as an
        # IntegrityError: refused on its merits all the same
        assert isinstance(
            cause, sa.exc.IntegrityError if kind == "duplicate" else sa.exc.DBAPIError
        )
        assert not failures.is_transient(cause) and not failures.blames_the_shard(cause)
        # the session goes on: the earlier work is there, nothing of the statement
        assert set(session.scalars(select(Item.id).where(Item.id < SEED_ID))) == {
            EARLIER_ID + i for i in range(len(SHARDS))
        }
        session.rollback()
    assert world.stored() == SEEDED


# -- several shards written at once ---------------------------------------------------------


@servers
@pytest.mark.parametrize("fault", ["lock", "kill"])
def test_a_transient_failure_while_shards_are_written_at_once(world: World, fault: str) -> None:
    shards = tuple(SHARDS[i % 3] for i in range(3000))
    plan = Plan(shards, None, 2999 - 3)  # late in a shard's batch, every shard running
    holder = world.plain[plan.victim].connect()
    try:
        with world.shard_map.sessionmaker()() as session:
            begin_with_earlier_work(world, session)
            pid = world.session_pid(session, plan.victim)
            if fault == "lock":
                holder.execute(
                    sa.text("INSERT INTO transient_items VALUES (:id, :region, 'other')"),
                    {"id": plan.fault + 1, "region": plan.victim},
                )
                thread = None
            else:
                thread = threading.Thread(
                    target=lambda: (
                        wait_until(lambda: sleeping(world, plan.victim, pid), "it sleeps"),
                        kill(world, plan.victim, pid),
                    )
                )
                thread.start()
            with pytest.raises(ShardQueryError) as raised:
                session.execute(
                    insert(Item),
                    plan.rows("sleep" if fault == "kill" else "n"),
                    execution_options={"bulk_concurrency": 3},
                )
            if thread is not None:
                thread.join(15)
            assert_transient(raised.value, world, plan, lost=fault == "kill")
            conclude(world, session, plan, usable=fault == "lock", release=holder.rollback)
    finally:
        holder.close()


# -- failures: real errors from real servers and drivers ------------------------------------


def raised_by(connection: Any, statement: str) -> sa.exc.DBAPIError:
    with pytest.raises(sa.exc.DBAPIError) as raised:
        connection.exec_driver_sql(statement)
    connection.rollback()
    return raised.value


POSTGRESQL_PERMANENT = ["23505", "23502", "22001", "22P02", "23514", "42P10", "P0001"]


@pytest.mark.parametrize(
    "sqlstate",
    [
        *sorted(failures.POSTGRESQL_TRANSIENT_STATES),
        *("08000", "08006", "08001"),
        *POSTGRESQL_PERMANENT,
        *sorted(failures.POSTGRESQL_SHARD_STATES),
    ],
)
def test_postgresql_sqlstates_as_the_server_sends_them(postgresql_url: Any, sqlstate: str) -> None:
    """RAISE ... USING ERRCODE makes the server send that SQLSTATE, read where psycopg puts it."""
    engine = sa.create_engine(postgresql_url)
    try:
        with engine.connect() as connection:
            error = raised_by(
                connection,
                f"DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{sqlstate}'; END $$",
            )
    finally:
        engine.dispose()
    transient = sqlstate in failures.POSTGRESQL_TRANSIENT_STATES or sqlstate.startswith("08")
    assert failures.is_transient(error) is transient
    assert failures.blames_the_shard(error) is (sqlstate not in POSTGRESQL_PERMANENT)
    assert ShardQueryError("x", shard="a", failures={}, retryable=None).retryable is False
    wrapped = ShardQueryError("x", shard="a", failures={"a": error})
    wrapped.__cause__ = error  # as execution/fan_out.py chains it
    assert wrapped.retryable is transient


MYSQL_PERMANENT = [1062, 1048, 1452, 4025, 1406, 1366, 1644]


@pytest.mark.parametrize(
    "errno", [*sorted(failures.MYSQL_TRANSIENT_ERRNOS), *MYSQL_PERMANENT, 1146, 1142, 1021]
)
def test_mariadb_errnos_as_the_server_sends_them(mariadb_url: Any, errno: int) -> None:
    """SIGNAL ... SET MYSQL_ERRNO makes MariaDB send that errno, read where PyMySQL puts it."""
    engine = sa.create_engine(mariadb_url)
    try:
        with engine.connect() as connection:
            error = raised_by(
                connection,
                f"SIGNAL SQLSTATE '45000' SET MYSQL_ERRNO = {errno}, MESSAGE_TEXT = 'injected'",
            )
    finally:
        engine.dispose()
    assert failures.is_transient(error) is (errno in failures.MYSQL_TRANSIENT_ERRNOS)
    assert failures.blames_the_shard(error) is (errno not in MYSQL_PERMANENT)


def test_real_timeouts_and_lost_connections(postgresql_url: Any, mariadb_url: Any) -> None:
    """Not injected codes: the servers' own timeouts, a kill, a constraint."""
    for url, timeout, sleep, pid, kill_sql in [
        (
            postgresql_url,
            "SET statement_timeout = '20ms'",
            "SELECT pg_sleep(2)",
            "SELECT pg_backend_pid()",
            "SELECT pg_terminate_backend({}, 5000)",
        ),
        (
            mariadb_url,
            "SET max_statement_time = 0.02",
            "SELECT SLEEP(2)",
            "SELECT CONNECTION_ID()",
            "KILL {}",
        ),
    ]:
        engine, killer = sa.create_engine(url), sa.create_engine(url)
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql(timeout)
                timed_out = raised_by(connection, sleep)
                assert failures.is_transient(timed_out), repr(timed_out)
                assert not failures.is_connection_lost(timed_out)
                backend_pid = connection.exec_driver_sql(pid).scalar()
                with killer.connect() as other:
                    other.exec_driver_sql(kill_sql.format(backend_pid))
                with pytest.raises(sa.exc.DBAPIError) as lost:
                    connection.exec_driver_sql("SELECT 1")
                assert failures.is_transient(lost.value), repr(lost.value)
                assert failures.is_connection_lost(lost.value), repr(lost.value)
        finally:
            engine.dispose()
            killer.dispose()


def test_sqlite_locked_and_interrupted(tmp_path: Any) -> None:
    path = tmp_path / "one.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    holder.execute("BEGIN IMMEDIATE")
    engine = sa.create_engine(f"sqlite:///{path}?timeout=0.01")
    try:
        with engine.connect() as connection:
            locked = raised_by(connection, "INSERT INTO t VALUES (1)")
            assert failures.is_transient(locked), repr(locked)
            holder.execute("ROLLBACK")
            connection.exec_driver_sql("INSERT INTO t VALUES (1)")
            duplicate = raised_by(connection, "INSERT INTO t VALUES (1)")
            assert not failures.is_transient(duplicate)
            assert not failures.blames_the_shard(duplicate)
            driver = connection.connection.dbapi_connection
            timer = threading.Timer(0.05, driver.interrupt)
            timer.start()
            endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
            interrupted = raised_by(connection, endless + "SELECT count(*) FROM c")
            timer.join()
            assert "interrupted" in str(interrupted)
            assert failures.is_transient(interrupted)
    finally:
        holder.close()
        engine.dispose()


def test_asyncio_drivers(postgresql_url: Any, tmp_path: Any) -> None:
    """asyncpg's SQLSTATE through SQLAlchemy's adapter; aiosqlite's sqlite3 errors."""
    from sqlalchemy.ext.asyncio import create_async_engine

    async def errors() -> list[tuple[BaseException, bool]]:
        found = []
        pg = create_async_engine(postgresql_url.set(drivername="postgresql+asyncpg"))
        path = tmp_path / "async.db"
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        holder.execute("BEGIN IMMEDIATE")
        lite = create_async_engine(f"sqlite+aiosqlite:///{path}?timeout=0.01")
        try:
            for engine, statement, transient in [
                (pg, "SELECT pg_sleep(2)", True),
                (pg, "SELECT 1 / 0", False),
                (lite, "INSERT INTO t VALUES (1)", True),
            ]:
                async with engine.connect() as connection:
                    if engine is pg:
                        await connection.exec_driver_sql("SET statement_timeout = '20ms'")
                    try:
                        await connection.exec_driver_sql(statement)
                    except sa.exc.DBAPIError as error:
                        found.append((error, transient))
        finally:
            holder.close()
            await pg.dispose()
            await lite.dispose()
        return found

    found = asyncio.run(errors())
    assert len(found) == 3
    for error, transient in found:
        assert failures.is_transient(error) is transient, repr(error)
