"""Nested transactions (``begin_nested()``) across shards (issue 12, section 4b).

A nested transaction of a sharded session must do what one on a plain ``Session`` over one
database does: hold a SAVEPOINT on every shard the session has a transaction on and on every
shard it reaches later, and roll them back (or release them) together; the ORM state
(objects added, changed or deleted inside it) ends as a plain ``Session``'s.  SQLAlchemy's
``horizontal_shard`` sent no SAVEPOINT at all: its flush takes connections from the root
transaction, so ``sp.rollback()`` undid nothing and the nested changes were committed.

Proved by difference: hypothesis draws sequences of adds (locations and reports, the reports
by relationship or by foreign key alone), changes, deletes, flushes, queries,
``begin_nested()``, savepoint rollback and release, commit and rollback; each sequence runs
step by step in a ``ShardedSession`` over the weather shards and in a plain ``Session`` on
one reference database, and after every step the two must agree: the step's outcome, what
a query inside the transaction sees, the state of every object the sequence touched
(transient, pending, persistent, deleted, detached; its loaded and expired attributes), the
session's new / dirty / deleted objects.  At the end the rows on the shards (each on the
shard its continent names) must be the reference database's.  SQLite, PostgreSQL and
MariaDB, all three placements (on SQLite, the ``tables`` and ``schema`` shards share one
database connection, hence one SAVEPOINT per nested transaction); an async test runs
sequences through ``AsyncSession``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from _servers import MakeDatabase
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st
from models_weather import (
    CONTINENTS,
    SHARDS,
    Base,
    Deployment,
    Report,
    WeatherLocation,
    async_shard_map,
)
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from shardalchemy import ShardMap, StatementLog

EXAMPLES = 30  # sequences per backend and placement (derandomized: the same every run)
ASYNC_EXAMPLES = 16


def reference_engine(url: sa.URL) -> sa.Engine:
    """A plain engine on the reference database; pysqlite made to run SAVEPOINTs properly.

    pysqlite begins a transaction only before DML, so a SAVEPOINT sent first would start
    (and its RELEASE commit) a transaction of its own: SQLAlchemy's documented recipe.
    """
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def no_implicit_begin(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def explicit_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN")

    return engine


@dataclasses.dataclass
class World:
    deployment: Deployment
    reference: sa.Engine

    def reset(self) -> None:
        self.deployment.reset()
        with self.reference.begin() as connection:
            connection.execute(sa.delete(Report.__table__))
            connection.execute(sa.delete(WeatherLocation.__table__))


@pytest.fixture
def world(deployment: Deployment, make_database: MakeDatabase) -> Iterator[World]:
    reference = reference_engine(make_database(deployment.backend))  # type: ignore[arg-type]
    Base.metadata.create_all(reference)
    yield World(deployment, reference)
    reference.dispose()


# -- steps ---------------------------------------------------------------------------------------

DATA_KINDS = (
    "add location",
    "add location",
    "add report by relationship",
    "add report by foreign key",
    "change city",
    "change temperature",
    "delete report",
    "delete location",
    "flush",
    "flush",
    "query",  # rare: a query inside a nested transaction reaches every shard
)
TRANSACTION_KINDS = (
    "begin_nested",
    "rollback savepoint",
    "release savepoint",
    "commit",
    "rollback",
)
TRANSACTION_STEPS = set(TRANSACTION_KINDS)


@dataclasses.dataclass(frozen=True)
class Step:
    kind: str
    pick: int = 0  # which object touched before (modulo how many there are)
    continent: str = "Asia"
    value: int = 0


def steps_of(kinds: Any) -> Any:
    return st.builds(
        Step,
        kind=kinds,
        pick=st.integers(0, 50),
        continent=st.sampled_from(list(CONTINENTS)),
        value=st.integers(0, 99),
    )


def flattened(item: Any) -> list[Step]:
    if isinstance(item, Step):
        return [item]
    _, inner, end = item
    return [Step("begin_nested"), *(s for child in inner for s in flattened(child)), Step(end)]


# programs: data steps, nested blocks (begin_nested ... rollback or release, nested in turn),
# and now and then a transaction step out of order (a commit with savepoints open, a
# savepoint ended twice)
programs = st.lists(
    st.recursive(
        steps_of(st.sampled_from(DATA_KINDS)),
        lambda children: st.tuples(
            st.just("nested"),
            st.lists(children, max_size=5),
            st.sampled_from(["rollback savepoint", "release savepoint"]),
        ),
        max_leaves=16,
    )
    | steps_of(st.sampled_from(TRANSACTION_KINDS)),
    min_size=1,
    max_size=6,
).map(lambda items: [step for item in items for step in flattened(item)])


@dataclasses.dataclass
class Side:
    """One session, the objects the sequence touched in it, and its open savepoints."""

    session: Any
    held: list[Any] = dataclasses.field(default_factory=list)
    savepoints: list[Any] = dataclasses.field(default_factory=list)


class Sequence_:
    """Runs steps on both sides with the same values; ids come from one counter.

    A step that changes or deletes picks one of the objects the sequence already touched
    (the same one on both sides), so that it sends no query of its own: a query inside a
    nested transaction reaches every shard and would hide a flush that bypasses it.
    """

    def __init__(self) -> None:
        self.ids = itertools.count(1)

    @staticmethod
    def choose(plain: Side, step: Step) -> int | None:
        """The index (in ``held``) of the object ``step`` works on, read on the plain side."""
        cls = Report if step.kind in ("change temperature", "delete report") else WeatherLocation
        if step.kind == "add location" or step.kind in ("flush", "query"):
            return None
        candidates = [
            index
            for index, obj in enumerate(plain.held)
            if isinstance(obj, cls) and (sa.inspect(obj).persistent or sa.inspect(obj).pending)
        ]
        return candidates[step.pick % len(candidates)] if candidates else None

    def data_step(self, side: Side, step: Step, fresh: int, index: int | None) -> Any:
        session = side.session
        kind = step.kind
        if kind == "add location":
            location = WeatherLocation(id=fresh, continent=step.continent, city=f"c{step.value}")
            session.add(location)
            side.held.append(location)
            return None
        if kind == "query":
            return visible_rows(session)
        if kind == "flush":
            session.flush()
            return None
        if index is None:
            return "nothing to pick"
        obj = side.held[index]
        if kind == "add report by relationship":
            report = Report(id=fresh, location=obj, temperature=float(step.value))
            session.add(report)
            side.held.append(report)
        elif kind == "add report by foreign key":  # the parent is found by its key
            report = Report(id=fresh, location_id=obj.id, temperature=float(step.value))
            session.add(report)
            side.held.append(report)
        elif kind == "change city":
            obj.city = f"c{step.value}"
        elif kind == "change temperature":
            obj.temperature = float(step.value)
        elif kind == "delete report":
            session.delete(obj)
        else:
            assert kind == "delete location"
            for report in list(obj.reports):  # their foreign key refers to it
                session.delete(report)
            session.flush()
            session.delete(obj)
        return obj.id

    def transaction_step(self, side: Side, step: Step) -> Any:
        session = side.session
        if step.kind == "begin_nested":
            side.savepoints.append(session.begin_nested())
        elif step.kind in ("rollback savepoint", "release savepoint"):
            if not side.savepoints:
                return "no savepoint"
            savepoint = side.savepoints.pop()
            if step.kind == "rollback savepoint":
                savepoint.rollback()
            else:
                savepoint.commit()
        elif step.kind == "commit":
            session.commit()
            side.savepoints.clear()
        else:
            assert step.kind == "rollback"
            session.rollback()
            side.savepoints.clear()
        return None


def visible_rows(session: Any) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """What a query inside the transaction sees (after the autoflush)."""
    locations = session.execute(
        select(WeatherLocation.id, WeatherLocation.continent, WeatherLocation.city).order_by(
            WeatherLocation.id
        )
    ).all()
    reports = session.execute(
        select(Report.id, Report.location_id, Report.temperature).order_by(Report.id)
    ).all()
    return [tuple(row) for row in locations], [tuple(row) for row in reports]


def object_state(obj: Any) -> tuple[Any, ...]:
    """An object's ORM state, read without loading anything."""
    state = sa.inspect(obj)
    if state.transient:
        kind = "transient"
    elif state.pending:
        kind = "pending"
    elif state.deleted:
        kind = "deleted"
    elif state.detached:
        kind = "detached"
    else:
        kind = "persistent"
    # report_time defaults to the clock: the two sides differ by construction
    columns = [attr.key for attr in state.mapper.column_attrs if attr.key != "report_time"]
    loaded = {key: state.dict[key] for key in columns if key in state.dict}
    return (
        type(obj).__name__,
        kind,
        state.key[1] if state.key is not None else None,
        sorted(loaded.items()),
        sorted(state.expired_attributes & set(columns)),
    )


def session_state(session: Any) -> tuple[Any, ...]:
    def keys(objects: Any) -> list[Any]:
        return sorted((type(obj).__name__, obj.id) for obj in objects)

    return (
        keys(session.new),
        keys(session.deleted),
        keys(obj for obj in session.dirty if session.is_modified(obj)),
        session.in_transaction(),
        session.in_nested_transaction(),
    )


def compare_states(sharded: Side, plain: Side) -> None:
    assert len(sharded.held) == len(plain.held)
    for mine, theirs in zip(sharded.held, plain.held, strict=True):
        assert object_state(mine) == object_state(theirs)
        token = sa.inspect(mine).identity_token
        shard = shard_of(mine)
        if sa.inspect(mine).key is not None and shard is not None:  # stored: it carries its shard
            assert token == shard, (mine, token)
    assert session_state(sharded.session) == session_state(plain.session)
    assert len(sharded.savepoints) == len(plain.savepoints)


def shard_of(obj: Any) -> str | None:
    """The shard an object belongs on, from what it has loaded (``None``: unknown)."""
    if isinstance(obj, WeatherLocation):
        continent = sa.inspect(obj).dict.get("continent")
        return CONTINENTS[continent] if continent is not None else None
    location = sa.inspect(obj).dict.get("location")
    return shard_of(location) if location is not None else None


def outcome(run: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        return ("ok", run(*args))
    except Exception as error:  # the same failure on both sides is an answer too
        return ("error", type(error).__name__)


def stored_rows(world: World) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every row on the shards (each checked to be on its own shard), read with plain SQL."""
    locations, reports = [], []
    for shard in SHARDS:
        here = world.deployment.rows(shard, "weather_locations", "id", "continent", "city")
        assert all(CONTINENTS[continent] == shard for _, continent, _ in here), (shard, here)
        locations += here
        ids_here = {id_ for id_, _, _ in here}
        rows = world.deployment.rows(shard, "weather_reports", "id", "location_id", "temperature")
        assert all(location_id in ids_here for _, location_id, _ in rows), (shard, rows)
        reports += rows
    return sorted(locations), sorted(reports)


def reference_rows(world: World) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with world.reference.connect() as connection:
        locations = connection.execute(
            select(WeatherLocation.id, WeatherLocation.continent, WeatherLocation.city)
        ).all()
        reports = connection.execute(
            select(Report.id, Report.location_id, Report.temperature)
        ).all()
    return sorted(map(tuple, locations)), sorted(map(tuple, reports))


def run_sequence(world: World, sequence: list[Step], finish: str) -> None:
    runner = Sequence_()
    with (
        world.deployment.shard_map.sessionmaker()() as sharded_session,
        Session(world.reference) as plain_session,
    ):
        sharded, plain = Side(sharded_session), Side(plain_session)
        for step in sequence:
            note(f"step {step}")
            if step.kind in TRANSACTION_STEPS:
                got = outcome(runner.transaction_step, sharded, step)
                expected = outcome(runner.transaction_step, plain, step)
            else:
                fresh, index = next(runner.ids), runner.choose(plain, step)
                got = outcome(runner.data_step, sharded, step, fresh, index)
                expected = outcome(runner.data_step, plain, step, fresh, index)
            assert got == expected, step
            if got[0] == "error":  # e.g. a flush refused: both sides start again
                sharded_session.rollback()
                plain_session.rollback()
                sharded.savepoints.clear()
                plain.savepoints.clear()
            compare_states(sharded, plain)
        getattr(sharded_session, finish)()
        getattr(plain_session, finish)()
        compare_states(sharded, plain)
    assert stored_rows(world) == reference_rows(world)


# the issue's: the nested transaction's first statement is its flush
ISSUE_SEQUENCE = [
    Step("add location", continent="Asia"),
    Step("flush"),
    Step("begin_nested"),
    Step("add location", continent="Europe"),
    Step("change city", pick=0, value=7),
    Step("flush"),
    Step("rollback savepoint"),
]


def test_nested_transactions_behave_as_on_one_database(world: World) -> None:
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(sequence=programs, finish=st.sampled_from(["commit", "rollback"]))
    @example(sequence=ISSUE_SEQUENCE, finish="commit")
    def prop(sequence: list[Step], finish: str) -> None:
        world.reset()
        run_sequence(world, sequence, finish)

    prop()


# -- the issue's example and the SQL it sends -----------------------------------------------------


def test_savepoint_rollback_undoes_the_nested_changes_on_every_shard(world: World) -> None:
    shard_map = world.deployment.shard_map
    with shard_map.sessionmaker()() as session:
        tokyo = WeatherLocation(id=1, continent="Asia", city="Tokyo")
        session.add(tokyo)
        session.flush()
        savepoint = session.begin_nested()
        session.add(WeatherLocation(id=2, continent="Europe", city="London"))  # a new shard
        tokyo.city = "Edo"  # a shard the session already had a transaction on
        session.flush()
        savepoint.rollback()
        assert tokyo.city == "Tokyo"
        session.commit()
    assert stored_rows(world) == ([(1, "Asia", "Tokyo")], [])


def test_a_savepoint_is_held_on_every_shard_and_on_shards_reached_later(world: World) -> None:
    shard_map = world.deployment.shard_map
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        session.add_all(
            [
                WeatherLocation(id=1, continent="Asia", city="Tokyo"),
                WeatherLocation(id=2, continent="Europe", city="London"),
            ]
        )
        session.flush()
        log.entries.clear()
        outer = session.begin_nested()
        held = {entry.shard for entry in log.entries if entry.sql.startswith("SAVEPOINT")}
        if world.deployment.placement != "database":
            assert len(held) == 1  # the session's one connection to the database: one SAVEPOINT
        else:
            assert held == {"asia", "europe"}
        inner = session.begin_nested()
        log.entries.clear()
        session.add(WeatherLocation(id=3, continent="South America", city="Quito"))
        session.flush()
        later = [entry for entry in log.entries if entry.sql.startswith("SAVEPOINT")]
        if world.deployment.placement == "database":
            # the shard reached later: a SAVEPOINT for each nested transaction in progress
            assert [entry.shard for entry in later] == ["south_america", "south_america"]
        inner.rollback()
        outer.commit()
        session.commit()
    assert stored_rows(world) == ([(1, "Asia", "Tokyo"), (2, "Europe", "London")], [])


def test_released_savepoints_keep_their_changes(world: World) -> None:
    shard_map = world.deployment.shard_map
    with shard_map.sessionmaker()() as session:
        with session.begin_nested():
            session.add(WeatherLocation(id=1, continent="Asia", city="Tokyo"))
            with session.begin_nested():
                session.add(WeatherLocation(id=2, continent="Europe", city="London"))
        with pytest.raises(RuntimeError), session.begin_nested():  # an error rolls it back
            session.add(WeatherLocation(id=3, continent="South America", city="Quito"))
            session.flush()
            raise RuntimeError
        session.commit()
    assert stored_rows(world) == ([(1, "Asia", "Tokyo"), (2, "Europe", "London")], [])


# -- AsyncSession ---------------------------------------------------------------------------------


async def async_transaction_step(side: Side, step: Step) -> Any:
    session: AsyncSession = side.session
    if step.kind == "begin_nested":
        side.savepoints.append(await session.begin_nested())
    elif step.kind in ("rollback savepoint", "release savepoint"):
        if not side.savepoints:
            return "no savepoint"
        savepoint = side.savepoints.pop()
        await (savepoint.rollback() if step.kind == "rollback savepoint" else savepoint.commit())
    elif step.kind == "commit":
        await session.commit()
        side.savepoints.clear()
    else:
        await session.rollback()
        side.savepoints.clear()
    return None


async def async_outcome(run: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    try:
        return ("ok", await run(*args))
    except Exception as error:
        return ("error", type(error).__name__)


def test_nested_transactions_of_an_async_session(world: World) -> None:
    """The same sequences, the sharded side an ``AsyncSession`` (data steps in ``run_sync``)."""
    sequences = st.tuples(programs, st.sampled_from(["commit", "rollback"]))
    examples: list[tuple[list[Step], str]] = []

    @settings(max_examples=ASYNC_EXAMPLES, derandomize=True, database=None, deadline=None)
    @given(drawn=sequences)
    def collect(drawn: tuple[list[Step], str]) -> None:
        examples.append(drawn)

    collect()
    examples.insert(0, (ISSUE_SEQUENCE, "commit"))

    async def body() -> None:
        shard_map = async_shard_map(world.deployment)
        try:
            for sequence, finish in examples:
                world.reset()
                await run_async_sequence(world, shard_map, sequence, finish)
        finally:
            await shard_map.dispose_async()

    asyncio.run(body())


async def run_async_sequence(
    world: World, shard_map: ShardMap, sequence: list[Step], finish: str
) -> None:
    runner = Sequence_()
    async with shard_map.async_sessionmaker()() as async_session:
        with Session(world.reference) as plain_session:
            sharded, plain = Side(async_session), Side(plain_session)
            data_side = Side(async_session.sync_session, sharded.held)

            def data_step_in_sync(_: Any, step: Step, fresh: int, index: int | None) -> Any:
                return runner.data_step(data_side, step, fresh, index)

            for step in sequence:
                if step.kind in TRANSACTION_STEPS:
                    got = await async_outcome(async_transaction_step, sharded, step)
                    expected = outcome(runner.transaction_step, plain, step)
                else:
                    fresh, index = next(runner.ids), runner.choose(plain, step)
                    got = await async_outcome(
                        async_session.run_sync, data_step_in_sync, step, fresh, index
                    )
                    expected = outcome(runner.data_step, plain, step, fresh, index)
                assert got == expected, (sequence, step)
                if got[0] == "error":
                    await async_session.rollback()
                    plain_session.rollback()
                    sharded.savepoints.clear()
                    plain.savepoints.clear()
                compare_states(
                    Side(async_session.sync_session, sharded.held, sharded.savepoints), plain
                )
            await getattr(async_session, finish)()
            getattr(plain_session, finish)()
    assert stored_rows(world) == reference_rows(world), sequence
