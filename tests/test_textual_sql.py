"""Textual SQL across shards (issue 12, section 4a).

Nothing tells what a ``text()`` statement reads or computes, so on several shards no plan
can turn the shards' answers into one database's: ``text("SELECT count(*) FROM tasks")``
used to return one count per shard.  A textual statement (``text()``, ``text().columns()``,
and a structured statement that reads one: from a ``text()`` FROM, a textual subquery or
CTE, a lightweight ``table("name")``) that reaches several shards is refused with
``CrossShardQueryError`` saying how to pin it or to ask for concatenation, before anything
runs; pinned (``bind_arguments={"shard_id": ...}``, ``set_shard_id``) it runs on that
shard only, and with ``cross_shard="concatenate"`` on every shard, the results one after
another (rowcounts summed).

Hypothesis draws textual statements (SELECT and UPDATE as ``text()``, ``text().columns()``,
selects from textual subqueries, CTEs and FROMs, joined to sharded tables with a shard-key
predicate or not), a way to pin them (none, bind arguments, ``set_shard_id``, concatenate,
no-scatter mode), a shard, and a result API; each is checked against the same SQL run with
plain engines on the shards it should reach.  SQLite, PostgreSQL and MariaDB, all three
placements, and ``AsyncSession``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from models_weather import SHARDS, Deployment, WeatherLocation, async_shard_map, new_cities
from sqlalchemy import Integer, String, column, select, table, text
from sqlalchemy.ext.asyncio import AsyncSession

from shardalchemy import (
    CrossShardQueryError,
    ScatterQueryError,
    ShardMap,
    StatementLog,
    set_shard_id,
)

EXAMPLES = 40  # per backend and placement, derandomized


@pytest.fixture
def seeded(deployment: Deployment) -> Iterator[Deployment]:
    with deployment.shard_map.sessionmaker()() as session:
        session.add_all(new_cities())
        session.commit()
    yield deployment


def physical(deployment: Deployment, shard: str, name: str, plain: bool = False) -> str:
    """The name a textual statement must use for ``shard``'s table: text is not renamed.

    ``plain``: the name on the plain engine of that shard (on SQLite, a schema is a file
    of its own, ATTACHed under the shard's name by the shard map).
    """
    schema = deployment.schemas[shard]
    if deployment.backend == "sqlite" and deployment.placement == "schema" and not plain:
        assert deployment.schema_names is not None
        schema = deployment.schema_names[shard]
    table_ = sa.table(deployment.physical_name(shard, name), schema=schema)
    return deployment.plain_engine(shard).dialect.identifier_preparer.format_table(table_)


# -- what is drawn -----------------------------------------------------------------------------

SHAPES = (
    "text count",  # the issue's
    "text rows",
    "text with a parameter",
    "text update",
    "textual select",
    "select from a textual subquery",
    "select from a textual CTE",
    "select from a text FROM",
    "sharded table joined to a textual subquery, pinned by its shard key",
    "lightweight table()",
)
PINS = ("none", "bind_arguments", "set_shard_id", "concatenate", "no_scatter")
APIS = ("execute", "scalars", "scalar")


@dataclasses.dataclass(frozen=True)
class Case:
    shape: str
    pin: str
    shard: str  # the shard pinned to, and whose tables the text names
    api: str


cases = st.builds(
    Case,
    shape=st.sampled_from(SHAPES),
    pin=st.sampled_from(PINS),
    shard=st.sampled_from(SHARDS),
    api=st.sampled_from(APIS),
)


def statement_of(deployment: Deployment, case: Case) -> tuple[Any, str, dict[str, Any]]:
    """(statement, the SQL a plain engine runs for the same answer, its parameters)."""
    statement, _, parameters = _statement_of(deployment, case, plain=False)
    return statement, _statement_of(deployment, case, plain=True)[1], parameters


def _statement_of(
    deployment: Deployment, case: Case, plain: bool
) -> tuple[Any, str, dict[str, Any]]:
    locations = physical(deployment, case.shard, "weather_locations", plain)
    reports = physical(deployment, case.shard, "weather_reports", plain)
    shape = case.shape
    if shape == "text count":
        sql = f"SELECT count(*) FROM {reports}"
        return text(sql), sql, {}
    if shape == "text rows":
        sql = f"SELECT id, city FROM {locations} ORDER BY id"
        return text(sql), sql, {}
    if shape == "text with a parameter":
        sql = f"SELECT city FROM {locations} WHERE id > :low ORDER BY id"
        return text(sql), sql, {"low": 2}
    if shape == "text update":
        sql = f"UPDATE {locations} SET city = city WHERE id > 2"
        return text(sql), sql, {}
    textual = text(f"SELECT id, city FROM {locations}").columns(
        column("id", Integer), column("city", String)
    )
    if shape == "textual select":
        return textual, f"SELECT id, city FROM {locations}", {}
    inner = f"SELECT id, city FROM {locations}"
    if shape == "select from a textual subquery":
        places = textual.subquery("places")
        return (
            select(sa.func.count()).select_from(places),
            f"SELECT count(*) FROM ({inner}) AS places",
            {},
        )
    if shape == "select from a textual CTE":
        places = textual.cte("places")
        return (
            select(places.c.city).where(places.c.id > 1),
            f"WITH places AS ({inner}) SELECT places.city FROM places WHERE places.id > 1",
            {},
        )
    if shape == "select from a text FROM":
        return (
            select(column("city")).select_from(text(locations)),
            f"SELECT city FROM {locations}",
            {},
        )
    if shape == "lightweight table()":
        schema, _, name = locations.replace('"', "").replace("`", "").rpartition(".")
        light = table(name, column("city"), schema=schema or None)
        return select(light.c.city), f"SELECT city FROM {locations}", {}
    assert shape == "sharded table joined to a textual subquery, pinned by its shard key"
    places = textual.subquery("places")
    # the shard-key predicate pins weather_locations, but not what the text reads
    continent = {"asia": "Asia", "europe": "Europe"}.get(case.shard, "North America")
    statement = (
        select(WeatherLocation.city, places.c.city)
        .join(places, places.c.id == WeatherLocation.id)
        .where(WeatherLocation.continent == continent)
    )
    return statement, "", {}  # answered on no plain engine: only refusal is checked


def run(session: Any, statement: Any, parameters: dict[str, Any], case: Case) -> Any:
    kw: dict[str, Any] = {}
    if case.pin == "bind_arguments":
        kw["bind_arguments"] = {"shard_id": case.shard}
    elif case.pin == "set_shard_id":
        statement = statement.options(set_shard_id(case.shard))
    elif case.pin == "concatenate":
        statement = statement.execution_options(cross_shard="concatenate")
    elif case.pin == "no_scatter":
        statement = statement.execution_options(no_scatter=True)
    if case.shape == "text update":
        return ("rowcount", session.execute(statement, parameters, **kw).rowcount)
    if case.api == "scalars":
        return sorted(map(repr, session.scalars(statement, parameters, **kw).all()))
    if case.api == "scalar":
        return ("scalar", session.scalar(statement, parameters, **kw))
    return sorted(map(repr, (tuple(row) for row in session.execute(statement, parameters, **kw))))


def expected(deployment: Deployment, sql: str, parameters: dict[str, Any], case: Case) -> Any:
    """The same SQL through plain engines: on the pinned shard, or on every shard in turn."""
    shards = SHARDS if case.pin == "concatenate" else (case.shard,)
    rows: list[tuple[Any, ...]] = []
    rowcount = 0
    one_file_per_schema = deployment.backend == "sqlite" and deployment.placement == "schema"
    for shard in shards:
        # the text names case.shard's tables: on SQLite's schemas those are one file
        where = case.shard if one_file_per_schema else shard
        with deployment.plain_engine(where).connect() as connection:
            result = connection.execute(text(sql), parameters)
            if case.shape == "text update":
                rowcount += result.rowcount
            else:
                rows += [tuple(row) for row in result]
            connection.rollback()
    if case.shape == "text update":
        return ("rowcount", rowcount)
    if case.api == "scalars":
        return sorted(repr(row[0]) for row in rows)
    if case.api == "scalar":
        return ("scalar", rows[0][0] if rows else None)
    return sorted(map(repr, rows))


def check(deployment: Deployment, case: Case, stats: collections.Counter[str]) -> None:
    statement, sql, parameters = statement_of(deployment, case)
    pinned = case.pin in ("bind_arguments", "set_shard_id")
    refused = not pinned and case.pin != "concatenate"
    if not sql and not refused:
        return  # the joined shape is only ever refused here
    if case.api == "scalar" and case.pin == "concatenate" and case.shape != "text update":
        return  # scalar() of concatenated results reads the first shard's row: by design
    want = None if refused else expected(deployment, sql, parameters, case)
    with (
        deployment.shard_map.sessionmaker()() as session,
        StatementLog(deployment.shard_map) as log,
    ):
        if refused:
            error = ScatterQueryError if case.pin == "no_scatter" else CrossShardQueryError
            with pytest.raises(error) as caught:
                run(session, statement, parameters, case)
            assert log.entries == [], case  # refused before anything ran
            if error is CrossShardQueryError:
                message = str(caught.value)
                for hint in ("bind_arguments={'shard_id'", "set_shard_id(", "'concatenate'"):
                    assert hint in message, (hint, message)
            stats[f"refused ({case.pin})"] += 1
            return
        got = run(session, statement, parameters, case)
        ran_on = {entry.shard for entry in log.entries}
    assert got == want, case
    assert ran_on == (set(SHARDS) if case.pin == "concatenate" else {case.shard}), case
    stats[f"answered ({case.pin})"] += 1


FIXED = [
    Case("text count", "none", "asia", "execute"),  # the issue's
    Case("text count", "bind_arguments", "asia", "scalar"),
    Case("text count", "concatenate", "europe", "execute"),
    Case("select from a textual subquery", "none", "asia", "scalar"),
]


def test_textual_statements_are_refused_pinned_or_concatenated(seeded: Deployment) -> None:
    stats: collections.Counter[str] = collections.Counter()

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(case=cases)
    def prop(case: Case) -> None:
        check(seeded, case, stats)

    for fixed in FIXED:
        prop = example(case=fixed)(prop)
    prop()
    print(dict(stats))
    assert any(key.startswith("refused") for key in stats)
    assert any(key.startswith("answered") for key in stats)


# -- the example, and what stays as it was ----------------------------------------------


def test_text_count_on_several_shards_is_refused_saying_how_to_pin_it(seeded: Deployment) -> None:
    with seeded.shard_map.sessionmaker()() as session:
        with pytest.raises(CrossShardQueryError) as caught:
            session.execute(text("SELECT count(*) FROM weather_reports"))
        assert caught.value.construct == "text()"
        message = str(caught.value)
        assert "'SELECT count(*) FROM weather_reports'" in message
        assert "north_america, asia, europe, south_america" in message
        # explain says so without running it
        route = session.explain(text("SELECT count(*) FROM weather_reports"))
        assert isinstance(route.plan_error, CrossShardQueryError)
        # pinned: that shard's count
        asia = physical(seeded, "asia", "weather_reports")
        with seeded.plain_engine("asia").connect() as plain:
            stored = plain.scalar(
                text(f"SELECT count(*) FROM {physical(seeded, 'asia', 'weather_reports', True)}")
            )
        pinned = session.scalar(
            text(f"SELECT count(*) FROM {asia}"), bind_arguments={"shard_id": "asia"}
        )
        assert pinned == stored == 1


def test_textual_select_from_no_sharded_table_is_still_every_shard(seeded: Deployment) -> None:
    # it used to be "reads no table: one shard answers", and so answered by the first shard
    with seeded.shard_map.sessionmaker()() as session:
        textual = text("SELECT 1 AS n").columns(column("n", Integer))
        statement = select(column("n")).select_from(textual.subquery())
        route = session.explain(statement)
        assert route.shards == SHARDS
        assert route.reason == "reads text().columns(), which cannot be analysed; all shards"
        with pytest.raises(CrossShardQueryError):
            session.execute(statement)
        # a select of no table at all, not textual, is one shard's to answer
        assert session.scalar(select(sa.literal(1))) == 1


def test_a_connection_of_the_session_takes_driver_sql_on_its_shard(seeded: Deployment) -> None:
    with seeded.shard_map.sessionmaker()() as session:
        with pytest.raises(Exception, match=r"bind_arguments=\{'shard_id'"):
            session.connection()
        connection = session.connection(bind_arguments={"shard_id": "europe"})
        europe = physical(seeded, "europe", "weather_locations")
        assert connection.exec_driver_sql(f"SELECT count(*) FROM {europe}").scalar() == 2


settings_metadata = sa.MetaData()
app_settings = sa.Table(
    "app_settings",
    settings_metadata,
    sa.Column("name", String(20), primary_key=True),
    sa.Column("value", String(20)),
)


def test_text_over_unsharded_tables_is_every_shard_where_a_select_is_one(tmp_path: Any) -> None:
    """In the tables placement an unsharded table has one copy: a SELECT of it runs once."""
    shard_map = ShardMap.tables(f"sqlite:///{tmp_path / 'one.db'}", list(SHARDS))
    try:
        shard_map.create_all(settings_metadata)
        with shard_map.sessionmaker()() as session:
            session.execute(sa.insert(app_settings), [{"name": "a", "value": "1"}])
            assert session.execute(select(app_settings.c.name)).all() == [("a",)]
            with pytest.raises(CrossShardQueryError):
                session.execute(text("SELECT name FROM app_settings"))
            pinned = session.execute(
                text("SELECT name FROM app_settings"), bind_arguments={"shard_id": "asia"}
            )
            assert pinned.all() == [("a",)]
    finally:
        shard_map.dispose()


# -- AsyncSession -------------------------------------------------------------------------------


@pytest.mark.parametrize("placement", ["database", "tables"])
def test_async_session_refuses_pins_and_concatenates_text(seeded: Deployment) -> None:
    reports = {shard: physical(seeded, shard, "weather_reports") for shard in SHARDS}
    plain_reports = {shard: physical(seeded, shard, "weather_reports", True) for shard in SHARDS}

    async def body() -> None:
        shard_map = async_shard_map(seeded)
        try:
            async with shard_map.async_sessionmaker()() as session:
                assert isinstance(session, AsyncSession)
                with pytest.raises(CrossShardQueryError):
                    await session.execute(text("SELECT count(*) FROM weather_reports"))
                with pytest.raises(CrossShardQueryError):
                    await session.stream(text("SELECT count(*) FROM weather_reports"))
                count = await session.scalar(
                    text(f"SELECT count(*) FROM {reports['europe']}"),
                    bind_arguments={"shard_id": "europe"},
                )
                assert count == 2
                concatenated = await session.execute(
                    text(f"SELECT count(*) FROM {reports['asia']}").execution_options(
                        cross_shard="concatenate"
                    )
                )
                sql = f"SELECT count(*) FROM {plain_reports['asia']}"
                each = []
                for shard in SHARDS:
                    with seeded.plain_engine(shard).connect() as plain:
                        each.append(plain.execute(text(sql)).scalar())
                assert sorted(row[0] for row in concatenated) == sorted(each)
        finally:
            await shard_map.dispose_async()

    asyncio.run(body())
