"""Bulk writes through the declarative ShardedSession: each row goes to its own shard.

Covers ORM bulk INSERT (with and without RETURNING), ORM bulk UPDATE by primary key, the
legacy ``bulk_*`` methods, ``insert().values(...)``, Core ``insert(table)`` executemany,
explicit shard options, rows from iterators in batches, and the atomicity of a bulk
statement over several shards (a failed statement leaves none of its rows anywhere, and the
session stays usable).

What was written is read back with plain engines that bypass shardalchemy
(``Deployment.rows``), always after the session committed or rolled back; where the
statements went is checked with :class:`shardalchemy.StatementLog`.  The core insert, update
and atomicity tests run on every backend x placement; the rest on SQLite (all placements).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from models_weather import (
    CITIES,
    CONTINENTS,
    SHARDS,
    Deployment,
    Report,
    WeatherLocation,
    new_cities,
)
from sqlalchemy import ForeignKey, String, insert, inspect, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shardalchemy import (
    BulkWriteError,
    FollowParent,
    Lookup,
    MissingParentError,
    MissingShardKeyError,
    RoutingError,
    ShardedSession,
    ShardingError,
    ShardKey,
    ShardKeyError,
    ShardMap,
    StatementLog,
    UnknownShardKeyError,
    set_shard_id,
)
from shardalchemy.inspection import ExecutedStatement

sqlite_only = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

CityRow = tuple[int, str, str]  # (id, continent, city)


# -- helpers --------------------------------------------------------------------------------

# interleaved on purpose: no shard's rows are contiguous, and shards come in no fixed order
NEW_CITIES: tuple[CityRow, ...] = (
    (101, "Europe", "Paris"),
    (102, "Asia", "Seoul"),
    (103, "South America", "Lima"),
    (104, "North America", "Chicago"),
    (105, "Asia", "Hanoi"),
    (106, "Europe", "Rome"),
    (107, "North America", "Denver"),
    (108, "South America", "Bogota"),
    (109, "Asia", "Delhi"),
)


def city_dicts(rows: Iterable[CityRow]) -> list[dict[str, Any]]:
    return [{"id": id_, "continent": continent, "city": city} for id_, continent, city in rows]


def by_shard(rows: Iterable[CityRow]) -> dict[str, list[CityRow]]:
    """Where each city row belongs, as plain SQL on each shard reads it (ordered by id)."""
    grouped: dict[str, list[CityRow]] = {shard: [] for shard in SHARDS}
    for row in rows:
        grouped[CONTINENTS[row[1]]].append(row)
    return {shard: sorted(found) for shard, found in grouped.items()}


def stored_cities(deployment: Deployment) -> dict[str, list[CityRow]]:
    """Every weather_locations row of every shard, read with plain SQL outside shardalchemy."""
    return {
        shard: [
            (int(i), str(c), str(n))
            for i, c, n in deployment.rows(shard, "weather_locations", "id", "continent", "city")
        ]
        for shard in SHARDS
    }


def stored_reports(deployment: Deployment) -> dict[str, list[tuple[int, float]]]:
    """(location_id, temperature) of every report of every shard, by plain SQL."""
    return {
        shard: [
            (int(loc), float(t))
            for loc, t in deployment.rows(shard, "weather_reports", "location_id", "temperature")
        ]
        for shard in SHARDS
    }


def store_seed(deployment: Deployment) -> None:
    with deployment.shard_map.sessionmaker()() as session:
        session.add_all(new_cities())
        session.commit()


def writes(log: StatementLog, verb: str = "") -> list[ExecutedStatement]:
    verbs = (verb,) if verb else ("INSERT", "UPDATE", "DELETE")
    return [e for e in log.entries if e.sql.lstrip().upper().startswith(verbs)]


def writes_per_shard(log: StatementLog, verb: str, table: str = "weather_locations") -> Counter:
    """How many ``verb`` statements on ``table`` each shard received."""
    return Counter(e.shard for e in writes(log, verb) if table in e.sql)


def shards_of(rows: Iterable[CityRow]) -> set[str]:
    return {CONTINENTS[continent] for _, continent, _ in rows}


def assert_names_row(error: BaseException, index: int) -> None:
    message = str(error)
    assert getattr(error, "row_index", None) == index, (getattr(error, "row_index", None), message)
    assert f"row {index}" in message, message


def assert_bulk_write_error(
    error: BulkWriteError, index: int, shard: str | None, cause: type[BaseException]
) -> None:
    assert isinstance(error, ShardingError)
    assert_names_row(error, index)
    assert error.shard == shard
    assert isinstance(error.statement, str) and error.statement, error.statement
    assert isinstance(error.__cause__, cause), repr(error.__cause__)
    message = str(error)
    if shard is not None:
        assert shard in message, message
        # the cause is named: its class or the driver's own first line
        db_error = error.__cause__
        assert isinstance(db_error, sa.exc.DBAPIError)
        driver_line = str(db_error.orig).strip().splitlines()[0]
        candidates = (type(db_error).__name__, type(db_error.orig).__name__, driver_line)
        assert any(c and c in message for c in candidates), (candidates, message)


def rowcount_matches(backend: str, rowcount: int, expected: int, verb: str) -> bool:
    """The rowcount of a bulk statement: the total over shards, where the driver reports it.

    psycopg reports -1 for an INSERT sent as SQLAlchemy's "insertmanyvalues" batches
    (plain SQLAlchemy on one PostgreSQL database reports -1 too); everything else counts.
    """
    if backend == "postgresql" and verb == "INSERT":
        return rowcount in (expected, -1)
    return rowcount == expected


SEED: tuple[CityRow, ...] = tuple(CITIES)


# -- bulk INSERT: routing, statements per shard, rowcount (every backend) -------------------


def test_bulk_insert_routes_each_row_to_its_shard(deployment: Deployment) -> None:
    shard_map = deployment.shard_map
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        session.execute(insert(WeatherLocation), city_dicts(NEW_CITIES))
        session.commit()

    assert stored_cities(deployment) == by_shard(NEW_CITIES)
    # one executemany per shard: rows are grouped, not sent one by one
    assert writes_per_shard(log, "INSERT") == Counter(dict.fromkeys(SHARDS, 1))
    for entry in writes(log, "INSERT"):
        assert entry.executemany, entry  # every shard got at least two rows
        if deployment.placement == "tables":
            assert f"INTO {entry.shard}_weather_locations" in entry.sql, entry.sql


def test_bulk_insert_into_some_shards_touches_only_those(deployment: Deployment) -> None:
    rows = [(201, "Europe", "Oslo"), (202, "Asia", "Osaka"), (203, "Europe", "Bern")]
    shard_map = deployment.shard_map
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        session.execute(insert(WeatherLocation), city_dicts(rows))
        session.commit()
    assert stored_cities(deployment) == by_shard(rows)
    assert writes_per_shard(log, "INSERT") == Counter({"europe": 1, "asia": 1})
    assert {e.shard for e in log.entries} <= {"europe", "asia"}


def test_bulk_insert_returning_objects_in_callers_order(deployment: Deployment) -> None:
    shard_map = deployment.shard_map
    with shard_map.sessionmaker()() as session:
        cities = session.scalars(
            insert(WeatherLocation).returning(WeatherLocation), city_dicts(NEW_CITIES)
        ).all()
        assert [(c.id, c.continent, c.city) for c in cities] == list(NEW_CITIES)
        for city in cities:
            shard = CONTINENTS[city.continent]
            assert inspect(city).key == (WeatherLocation, (city.id,), shard)
            assert inspect(city).identity_token == shard

        # RETURNING of columns: plain rows, in the caller's order too
        more = [(301, "South America", "Cusco"), (302, "Asia", "Pune"), (303, "Europe", "Nice")]
        returned = session.execute(
            insert(WeatherLocation).returning(WeatherLocation.id, WeatherLocation.city),
            city_dicts(more),
        ).all()
        assert [tuple(row) for row in returned] == [(i, name) for i, _, name in more]
        session.commit()
    assert stored_cities(deployment) == by_shard([*NEW_CITIES, *more])


def test_bulk_insert_is_part_of_the_sessions_transaction(deployment: Deployment) -> None:
    """A successful bulk INSERT over several shards is undone by session.rollback()."""
    store_seed(deployment)
    with deployment.shard_map.sessionmaker()() as session:
        session.execute(insert(WeatherLocation), city_dicts(NEW_CITIES))
        # visible inside the transaction, on each row's shard
        asia = session.scalars(
            select(WeatherLocation.id).options(set_shard_id("asia")).order_by(WeatherLocation.id)
        ).all()
        assert asia == [1, 102, 105, 109]
        session.rollback()
    assert stored_cities(deployment) == by_shard(SEED)


def test_bulk_insert_of_followers_lands_on_the_parents_shard(deployment: Deployment) -> None:
    store_seed(deployment)
    shard_map = deployment.shard_map
    reports = [(7, 1.0), (1, 2.0), (20, 3.0), (4, 4.0), (1, 5.0), (20, 6.0)]
    returning = [(2, 7.0), (6, 8.0), (3, 9.0), (20, 10.0)]
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        # a parent added by an earlier bulk INSERT of the same transaction counts too
        session.execute(
            insert(WeatherLocation), [{"id": 20, "continent": "South America", "city": "Lima"}]
        )
        log.clear()
        session.execute(
            insert(Report), [{"location_id": loc, "temperature": t} for loc, t in reports]
        )
        assert writes_per_shard(log, "INSERT", "weather_reports") == Counter(
            {"south_america": 1, "asia": 1, "europe": 1}
        )
        objects = session.scalars(
            insert(Report).returning(Report),
            [{"location_id": loc, "temperature": t} for loc, t in returning],
        ).all()
        assert [(r.location_id, r.temperature) for r in objects] == returning
        shard_of_location = {20: "south_america", **{i: CONTINENTS[c] for i, c, _ in SEED}}
        for report in objects:
            assert inspect(report).key == (
                Report,
                (report.id,),
                shard_of_location[report.location_id],
            )
        session.commit()

    expected: dict[str, list[tuple[int, float]]] = {shard: [] for shard in SHARDS}
    for location_id, _, _ in SEED:
        expected[shard_of_location[location_id]].append((location_id, 80.0))
    for location_id, temperature in [*reports, *returning]:
        expected[shard_of_location[location_id]].append((location_id, temperature))
    assert stored_reports(deployment) == {shard: sorted(rows) for shard, rows in expected.items()}


@sqlite_only
def test_followers_of_a_pending_parent_are_autoflushed_first(deployment: Deployment) -> None:
    with deployment.shard_map.sessionmaker()() as session:
        session.add(WeatherLocation(id=30, continent="Europe", city="Riga"))  # not flushed
        reports = session.scalars(
            insert(Report).returning(Report),
            [{"location_id": 30, "temperature": 1.0}, {"location_id": 30, "temperature": 2.0}],
        ).all()
        assert [inspect(r).identity_token for r in reports] == ["europe", "europe"]
        session.commit()
    assert stored_reports(deployment)["europe"] == [(30, 1.0), (30, 2.0)]
    assert deployment.count_rows()[("europe", "weather_locations")] == 1


def test_rowcount_is_the_total_over_shards(deployment: Deployment) -> None:
    backend = deployment.backend
    with deployment.shard_map.sessionmaker()() as session:
        # Core executemany through the session reports the rows it wrote, summed over shards
        result = session.execute(
            insert(WeatherLocation.__table__),
            city_dicts([(401, "Asia", "A"), (402, "Europe", "B"), (403, "Asia", "C")]),
        )
        assert rowcount_matches(backend, result.rowcount, 3, "INSERT")
        # ORM bulk INSERT / UPDATE results carry no rowcount in plain SQLAlchemy either
        result = session.execute(insert(WeatherLocation), city_dicts(NEW_CITIES))
        assert getattr(result, "rowcount", None) in (None, len(NEW_CITIES))
        session.rollback()


# -- bulk UPDATE by primary key (every backend) ------------------------------------------


def test_bulk_update_by_primary_key_routes_each_row(deployment: Deployment) -> None:
    store_seed(deployment)
    shard_map = deployment.shard_map
    changes = {
        7: "San Francisco de Quito",
        1: "Edo",
        4: "Londinium",
        2: "New Amsterdam",
        5: "Dubh Linn",
    }
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        session.execute(
            update(WeatherLocation), [{"id": i, "city": name} for i, name in changes.items()]
        )
        session.commit()

    expected = [(i, continent, changes.get(i, city)) for i, continent, city in SEED]
    assert stored_cities(deployment) == by_shard(expected)
    # one executemany UPDATE per shard that holds changed rows, none elsewhere
    assert writes_per_shard(log, "UPDATE") == Counter(
        {"south_america": 1, "asia": 1, "europe": 1, "north_america": 1}
    )


def test_failed_bulk_update_changes_nothing_and_keeps_the_session(
    deployment: Deployment,
) -> None:
    store_seed(deployment)
    shard_map = deployment.shard_map
    with shard_map.sessionmaker()() as session:
        # an earlier change in the same transaction, to be kept
        session.execute(update(WeatherLocation), [{"id": 3, "city": "York"}])

        # a row that exists on no shard: its index, and no shard
        with pytest.raises(BulkWriteError) as raised:
            session.execute(
                update(WeatherLocation),
                [
                    {"id": 1, "city": "X1"},
                    {"id": 6, "city": "X6"},
                    {"id": 999, "city": "X?"},
                    {"id": 4, "city": "X4"},
                ],
            )
        assert raised.value.row_index == 2, str(raised.value)
        assert "row 2" in str(raised.value)
        assert raised.value.shard is None
        assert isinstance(raised.value.statement, str)

        # the database refuses one row (NOT NULL): its index, its shard, the cause
        with pytest.raises(BulkWriteError) as raised:
            session.execute(
                update(WeatherLocation),
                [
                    {"id": 6, "city": "B6"},
                    {"id": 2, "city": "B2"},
                    {"id": 4, "city": None},
                    {"id": 1, "city": "B1"},
                ],
            )
        assert_bulk_write_error(raised.value, 2, "europe", sa.exc.IntegrityError)

        # nothing of either statement is visible, and the session goes on
        cities = session.scalars(
            select(WeatherLocation).execution_options(populate_existing=True)
        ).all()
        assert sorted((c.id, c.city) for c in cities) == sorted(
            (i, "York" if i == 3 else city) for i, _, city in SEED
        )
        session.commit()

    expected = [(i, continent, "York" if i == 3 else city) for i, continent, city in SEED]
    assert stored_cities(deployment) == by_shard(expected)


# -- atomicity of bulk INSERT (every backend) ----------------------------------------------


def test_failed_bulk_insert_leaves_nothing_and_keeps_the_session(deployment: Deployment) -> None:
    store_seed(deployment)
    shard_map = deployment.shard_map
    earlier = [(110, "Asia", "Kyoto"), (111, "Europe", "Porto"), (112, "North America", "Austin")]
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        # rows added earlier in the same transaction: by flush, and by a bulk INSERT
        session.add(WeatherLocation(id=100, continent="South America", city="Santiago"))
        session.flush()
        session.execute(insert(WeatherLocation), city_dicts(earlier))

        # London (4) is on europe already: row 3 is a duplicate primary key there; rows
        # of other shards come before and after it
        bad = [
            (200, "North America", "Boston"),
            (201, "Asia", "Taipei"),
            (202, "South America", "Recife"),
            (4, "Europe", "London again"),
            (203, "Europe", "Madrid"),
            (204, "North America", "Houston"),
            (205, "South America", "Salta"),
        ]
        with pytest.raises(BulkWriteError) as raised:
            session.execute(insert(WeatherLocation), city_dicts(bad))
        assert_bulk_write_error(raised.value, 3, "europe", sa.exc.IntegrityError)

        # the duplicate first, on north_america (New York is 2): the other shards' batches
        # may run after the failing one, or not at all
        bad_first = [
            (2, "North America", "New York again"),
            (210, "Asia", "Busan"),
            (211, "Europe", "Lyon"),
            (212, "South America", "Cali"),
        ]
        with pytest.raises(BulkWriteError) as raised:
            session.execute(insert(WeatherLocation), city_dicts(bad_first))
        assert_bulk_write_error(raised.value, 0, "north_america", sa.exc.IntegrityError)

        # the same with RETURNING: the duplicate last, on south_america (Brasilia is 6)
        bad_last = [(220, "Europe", "Graz"), (221, "Asia", "Hue"), (6, "South America", "B")]
        with pytest.raises(BulkWriteError) as raised:
            session.scalars(
                insert(WeatherLocation).returning(WeatherLocation), city_dicts(bad_last)
            ).all()
        assert_bulk_write_error(raised.value, 2, "south_america", sa.exc.IntegrityError)

        # the session is usable: the transaction still holds the earlier rows only
        log.clear()
        ids = session.scalars(select(WeatherLocation.id).where(WeatherLocation.id >= 100)).all()
        assert sorted(ids) == [100, 110, 111, 112]
        session.commit()

    good = [*SEED, (100, "South America", "Santiago"), *earlier]
    assert stored_cities(deployment) == by_shard(good)


def test_duplicate_within_one_statement_names_the_second_row(deployment: Deployment) -> None:
    shard_map = deployment.shard_map
    rows = [
        (120, "Asia", "Nara"),
        (121, "Europe", "Turin"),
        (122, "Europe", "Genoa"),
        (121, "Europe", "Turin again"),  # same primary key as row 1, same shard
        (123, "North America", "Reno"),
    ]
    with shard_map.sessionmaker()() as session:
        session.add(WeatherLocation(id=1, continent="Asia", city="Tokyo"))
        session.flush()
        with pytest.raises(BulkWriteError) as raised:
            session.execute(insert(WeatherLocation), city_dicts(rows))
        assert_bulk_write_error(raised.value, 3, "europe", sa.exc.IntegrityError)
        session.commit()
    assert stored_cities(deployment) == by_shard([(1, "Asia", "Tokyo")])


UNROUTABLE: dict[
    str, tuple[Any, list[dict[str, Any]], int, type[ShardingError], tuple[str, ...]]
] = {
    "unknown continent": (
        WeatherLocation,
        [
            {"id": 300, "continent": "Asia", "city": "A"},
            {"id": 301, "continent": "Europe", "city": "B"},
            {"id": 302, "continent": "Atlantis", "city": "C"},
            {"id": 303, "continent": "Europe", "city": "D"},
        ],
        2,
        UnknownShardKeyError,
        ("WeatherLocation", "continent", "'Atlantis'"),
    ),
    "None continent": (
        WeatherLocation,
        [
            {"id": 310, "continent": None, "city": "A"},
            {"id": 311, "continent": "Europe", "city": "B"},
        ],
        0,
        MissingShardKeyError,
        ("WeatherLocation", "continent"),
    ),
    "no continent key": (
        WeatherLocation,
        [
            {"id": 320, "continent": "Asia", "city": "A"},
            {"id": 321, "continent": "Europe", "city": "B"},
            {"id": 322, "continent": "Asia", "city": "C"},
            {"id": 323, "city": "D"},
        ],
        3,
        MissingShardKeyError,
        ("WeatherLocation", "continent"),
    ),
    "report of a missing location": (
        Report,
        [
            {"location_id": 1, "temperature": 1.0},
            {"location_id": 12345, "temperature": 2.0},
            {"location_id": 4, "temperature": 3.0},
        ],
        1,
        MissingParentError,
        ("Report", "12345"),
    ),
    "report without location": (
        Report,
        [{"location_id": 1, "temperature": 1.0}, {"temperature": 2.0}],
        1,
        MissingParentError,
        ("Report", "location"),
    ),
}


def test_unroutable_rows_write_nothing(deployment: Deployment) -> None:
    """Routing errors name the row; nothing is sent to any shard; the session goes on."""
    store_seed(deployment)
    shard_map = deployment.shard_map
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        session.execute(insert(WeatherLocation), city_dicts([(130, "Europe", "Vienna")]))
        for case, (model, rows, index, error_class, words) in UNROUTABLE.items():
            log.clear()
            with pytest.raises(error_class) as raised:
                session.execute(insert(model), rows)
            assert writes(log) == [], case  # all rows are routed before anything is sent
            assert_names_row(raised.value, index)
            for word in words:
                assert word in str(raised.value), (case, word, str(raised.value))
            if isinstance(raised.value, ShardKeyError):
                assert raised.value.model == "WeatherLocation"
                assert raised.value.attribute == "continent"
        session.commit()
    assert stored_cities(deployment) == by_shard([*SEED, (130, "Europe", "Vienna")])
    assert stored_reports(deployment) == {
        shard: sorted((i, 80.0) for i, c, _ in SEED if CONTINENTS[c] == shard) for shard in SHARDS
    }


def test_unroutable_row_error_attributes(deployment: Deployment) -> None:
    with deployment.shard_map.sessionmaker()() as session:
        with pytest.raises(UnknownShardKeyError) as raised:
            session.execute(insert(WeatherLocation), city_dicts([(1, "Asia", "A"), (2, "Mu", "B")]))
        error = raised.value
        assert (error.model, error.attribute, error.value, error.row_index) == (
            "WeatherLocation",
            "continent",
            "Mu",
            1,
        )
        session.rollback()
    assert deployment.total_rows() == 0


# -- explicit shard options ---------------------------------------------------------------


@sqlite_only
def test_explicit_shard_sends_the_whole_batch_there(deployment: Deployment) -> None:
    shard_map = deployment.shard_map
    asia = [(140, "Asia", "Kobe"), (141, "Asia", "Sendai"), (142, "Asia", "Nagoya")]
    asia_too = [(143, "Asia", "Sapporo"), (144, "Asia", "Fukuoka")]
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        session.execute(insert(WeatherLocation).options(set_shard_id("asia")), city_dicts(asia))
        assert writes_per_shard(log, "INSERT") == Counter({"asia": 1})
        log.clear()
        session.execute(
            insert(WeatherLocation), city_dicts(asia_too), bind_arguments={"shard_id": "asia"}
        )
        assert writes_per_shard(log, "INSERT") == Counter({"asia": 1})
        session.commit()
    assert stored_cities(deployment) == by_shard([*asia, *asia_too])


@sqlite_only
def test_explicit_shard_refuses_rows_of_other_shards(deployment: Deployment) -> None:
    shard_map = deployment.shard_map
    mixed = [(150, "Asia", "Kobe"), (151, "Europe", "Oslo"), (152, "Asia", "Nara")]
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        session.add(WeatherLocation(id=1, continent="Asia", city="Tokyo"))
        session.add(WeatherLocation(id=4, continent="Europe", city="London"))
        session.flush()
        log.clear()
        attempts = [
            lambda: session.execute(
                insert(WeatherLocation).options(set_shard_id("asia")), city_dicts(mixed)
            ),
            lambda: session.execute(
                insert(WeatherLocation), city_dicts(mixed), bind_arguments={"shard_id": "asia"}
            ),
            # a follower whose parent is on europe (London is 4)
            lambda: session.execute(
                insert(Report).options(set_shard_id("asia")),
                [{"location_id": 1, "temperature": 1.0}, {"location_id": 4, "temperature": 2.0}],
            ),
        ]
        for index, attempt in zip((1, 1, 1), attempts, strict=True):
            with pytest.raises(RoutingError) as raised:
                attempt()
            assert_names_row(raised.value, index)
            assert "asia" in str(raised.value)
            assert writes(log) == []
        session.commit()
    assert stored_cities(deployment) == by_shard([(1, "Asia", "Tokyo"), (4, "Europe", "London")])
    assert deployment.count_rows()[("asia", "weather_reports")] == 0


# -- the other bulk APIs (SQLite) --------------------------------------------------------


@sqlite_only
def test_insert_values_single_and_multi_row(deployment: Deployment) -> None:
    shard_map = deployment.shard_map
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        session.execute(insert(WeatherLocation).values(id=160, continent="Europe", city="Bonn"))
        assert writes_per_shard(log, "INSERT") == Counter({"europe": 1})
        log.clear()
        multi = [(161, "Asia", "Ulsan"), (162, "South America", "Rosario"), (163, "Asia", "Agra")]
        session.execute(insert(WeatherLocation).values(city_dicts(multi)))
        assert writes_per_shard(log, "INSERT") == Counter({"asia": 1, "south_america": 1})
        log.clear()
        returned = [(165, "Europe", "Kiel"), (166, "Asia", "Ipoh"), (167, "Europe", "Ulm")]
        ids = session.scalars(
            insert(WeatherLocation).values(city_dicts(returned)).returning(WeatherLocation.id)
        ).all()
        assert ids == [165, 166, 167]
        log.clear()
        (city,) = session.scalars(
            insert(WeatherLocation)
            .values(id=164, continent="North America", city="Tulsa")
            .returning(WeatherLocation)
        ).all()
        assert inspect(city).key == (WeatherLocation, (164,), "north_america")
        assert writes_per_shard(log, "INSERT") == Counter({"north_america": 1})
        session.commit()
    assert stored_cities(deployment) == by_shard(
        [(160, "Europe", "Bonn"), *multi, *returned, (164, "North America", "Tulsa")]
    )


@sqlite_only
def test_core_insert_of_the_table_through_the_session(deployment: Deployment) -> None:
    shard_map = deployment.shard_map
    table = WeatherLocation.__table__
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        result = session.execute(insert(table), city_dicts(NEW_CITIES))
        assert result.rowcount == len(NEW_CITIES)
        assert writes_per_shard(log, "INSERT") == Counter(dict.fromkeys(SHARDS, 1))
        session.execute(insert(table).values(id=170, continent="Asia", city="Kochi"))
        session.commit()
    assert stored_cities(deployment) == by_shard([*NEW_CITIES, (170, "Asia", "Kochi")])


@sqlite_only
def test_returning_with_sort_by_parameter_order(deployment: Deployment) -> None:
    with deployment.shard_map.sessionmaker()() as session:
        rows = session.execute(
            insert(WeatherLocation).returning(
                WeatherLocation.id, WeatherLocation.continent, sort_by_parameter_order=True
            ),
            city_dicts(NEW_CITIES),
        ).all()
        assert [tuple(r) for r in rows] == [(i, c) for i, c, _ in NEW_CITIES]
        session.commit()
    assert stored_cities(deployment) == by_shard(NEW_CITIES)


@sqlite_only
def test_bulk_update_of_followers_by_primary_key(deployment: Deployment) -> None:
    store_seed(deployment)
    # reports with ids unique across shards (the seed's are per-shard 1, 2, ...)
    with deployment.shard_map.sessionmaker()() as session:
        session.execute(
            insert(Report),
            [{"id": 1000 + i, "location_id": i, "temperature": 50.0} for i, _, _ in SEED],
        )
        session.commit()
    with deployment.shard_map.sessionmaker()() as session:
        session.execute(
            update(Report), [{"id": 1007, "temperature": 7.5}, {"id": 1001, "temperature": 1.5}]
        )
        session.commit()
    stored = stored_reports(deployment)
    assert (7, 7.5) in stored["south_america"] and (7, 50.0) not in stored["south_america"]
    assert (1, 1.5) in stored["asia"] and (1, 50.0) not in stored["asia"]
    assert (4, 50.0) in stored["europe"]


@sqlite_only
def test_bulk_save_objects_gets_identity_keys_with_shard_tokens(deployment: Deployment) -> None:
    shard_map = deployment.shard_map
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        cities = [WeatherLocation(id=i, continent=c, city=n) for i, c, n in NEW_CITIES]
        session.bulk_save_objects(cities, return_defaults=True)
        for city in cities:
            assert inspect(city).key == (WeatherLocation, (city.id,), CONTINENTS[city.continent])
        reports = [
            Report(location_id=108, temperature=1.0),
            Report(location_id=102, temperature=2.0),
            Report(location_id=108, temperature=3.0),
        ]
        session.bulk_save_objects(reports, return_defaults=True)
        for report in reports:
            assert report.id is not None
        assert [inspect(r).key for r in reports] == [
            (Report, (reports[0].id,), "south_america"),
            (Report, (reports[1].id,), "asia"),
            (Report, (reports[2].id,), "south_america"),
        ]
        assert writes_per_shard(log, "INSERT", "weather_locations") == Counter(
            dict.fromkeys(SHARDS, 1)
        )
        session.commit()
    assert stored_cities(deployment) == by_shard(NEW_CITIES)
    assert stored_reports(deployment)["south_america"] == [(108, 1.0), (108, 3.0)]
    assert stored_reports(deployment)["asia"] == [(102, 2.0)]


@sqlite_only
def test_bulk_save_objects_updates_loaded_objects_on_their_shards(deployment: Deployment) -> None:
    store_seed(deployment)
    shard_map = deployment.shard_map
    with shard_map.sessionmaker()() as session:
        cities = session.scalars(
            select(WeatherLocation).where(WeatherLocation.id.in_([1, 4, 6]))
        ).all()
        for city in cities:
            city.city = city.city.upper()
        session.bulk_save_objects(
            [*cities, WeatherLocation(id=180, continent="Asia", city="Chiba")]
        )
        session.commit()
    upper = {1: "TOKYO", 4: "LONDON", 6: "BRASILIA"}
    expected = [(i, c, upper.get(i, n)) for i, c, n in SEED] + [(180, "Asia", "Chiba")]
    assert stored_cities(deployment) == by_shard(expected)


@sqlite_only
def test_bulk_insert_and_update_mappings(deployment: Deployment) -> None:
    store_seed(deployment)
    shard_map = deployment.shard_map
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        session.bulk_insert_mappings(WeatherLocation, city_dicts(NEW_CITIES))
        assert writes_per_shard(log, "INSERT") == Counter(dict.fromkeys(SHARDS, 1))
        session.bulk_insert_mappings(
            Report,
            [{"location_id": 3, "temperature": 3.0}, {"location_id": 103, "temperature": 4.0}],
        )
        session.bulk_update_mappings(
            WeatherLocation, [{"id": 105, "city": "Saigon"}, {"id": 5, "city": "Baile Atha Cliath"}]
        )
        session.commit()
    expected = [*SEED, *NEW_CITIES]
    renamed = {105: "Saigon", 5: "Baile Atha Cliath"}
    expected = [(i, c, renamed.get(i, n)) for i, c, n in expected]
    assert stored_cities(deployment) == by_shard(expected)
    reports = stored_reports(deployment)
    assert reports["north_america"] == [(2, 80.0), (3, 3.0), (3, 80.0)]
    assert reports["south_america"] == [(6, 80.0), (7, 80.0), (103, 4.0)]


@sqlite_only
def test_bulk_insert_mappings_with_a_bad_row_writes_nothing(deployment: Deployment) -> None:
    store_seed(deployment)
    with deployment.shard_map.sessionmaker()() as session:
        with pytest.raises(UnknownShardKeyError) as raised:
            session.bulk_insert_mappings(
                WeatherLocation, city_dicts([(190, "Asia", "A"), (191, "Oceania", "B")])
            )
        assert_names_row(raised.value, 1)
        with pytest.raises(BulkWriteError) as failed:
            session.bulk_insert_mappings(
                WeatherLocation, city_dicts([(192, "Asia", "A"), (5, "Europe", "dup of Dublin")])
            )
        assert_bulk_write_error(failed.value, 1, "europe", sa.exc.IntegrityError)
        session.commit()
    assert stored_cities(deployment) == by_shard(SEED)


# -- rows from an iterator, in batches ----------------------------------------------------


def streamed(
    rows: list[CityRow], log: StatementLog, pulled_after: list[int]
) -> Iterator[dict[str, Any]]:
    """Yield ``rows`` one at a time, noting how many INSERTs had been sent before each."""
    for row in rows:
        pulled_after.append(len(writes(log, "INSERT")))
        yield city_dicts([row])[0]


def round_robin_cities(count: int, first_id: int) -> list[CityRow]:
    continents = list(CONTINENTS)
    return [
        (first_id + i, continents[i % len(continents)], f"City {first_id + i}")
        for i in range(count)
    ]


@sqlite_only
def test_rows_from_a_generator_are_sent_in_batches(deployment: Deployment) -> None:
    shard_map = deployment.shard_map
    rows = round_robin_cities(35, 1000)
    pulled_after: list[int] = []
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        session.execute(
            insert(WeatherLocation),
            streamed(rows, log, pulled_after),
            execution_options={"bulk_batch_size": 10},
        )
        session.commit()
    assert stored_cities(deployment) == by_shard(rows)
    # 4 batches (10, 10, 10, 5 rows), each with rows of every shard: one INSERT per shard each
    assert writes_per_shard(log, "INSERT") == Counter(dict.fromkeys(SHARDS, 4))
    # consumed lazily: the first batch went out before the last rows were pulled
    assert len(pulled_after) == len(rows)
    assert pulled_after[-1] > 0
    assert sum(1 for sent in pulled_after if sent == 0) <= 10 + 1  # a batch (and a look-ahead)


@sqlite_only
def test_batch_size_as_a_statement_option(deployment: Deployment) -> None:
    shard_map = deployment.shard_map
    rows = [(2000 + i, "Asia", f"A{i}") for i in range(7)]
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        session.execute(
            insert(WeatherLocation).execution_options(bulk_batch_size=3),
            (row for row in city_dicts(rows)),
        )
        session.commit()
    assert stored_cities(deployment) == by_shard(rows)
    assert writes_per_shard(log, "INSERT") == Counter({"asia": 3})  # 3 + 3 + 1


@sqlite_only
@pytest.mark.parametrize("placement", ["tables"])
def test_default_batch_size_is_ten_thousand(deployment: Deployment) -> None:
    shard_map = deployment.shard_map
    count = 20_001
    pulled_after: list[int] = []
    rows = [(10_000 + i, "Europe", "c") for i in range(count)]
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        session.execute(insert(WeatherLocation), streamed(rows, log, pulled_after))
        session.commit()
    assert deployment.count_rows()[("europe", "weather_locations")] == count
    assert writes_per_shard(log, "INSERT") == Counter({"europe": 3})  # 10,000 + 10,000 + 1
    assert sum(1 for sent in pulled_after if sent == 0) <= 10_000 + 1


def test_bad_row_in_a_later_batch_leaves_nothing_of_the_statement(
    deployment: Deployment,
) -> None:
    store_seed(deployment)
    shard_map = deployment.shard_map
    earlier = [(3000, "Asia", "Early")]
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        session.execute(insert(WeatherLocation), city_dicts(earlier))

        # a routing error in the third batch: the first two batches were already sent
        rows = round_robin_cities(35, 3100)
        rows[27] = (3127, "Atlantis", "Lost")
        with pytest.raises(UnknownShardKeyError) as raised:
            session.execute(
                insert(WeatherLocation),
                streamed(rows, log, []),
                execution_options={"bulk_batch_size": 10},
            )
        assert_names_row(raised.value, 27)

        # a duplicate primary key in the fourth batch (Dublin is 5, on europe)
        rows = round_robin_cities(35, 3200)
        rows[33] = (5, "Europe", "Dublin again")
        with pytest.raises(BulkWriteError) as failed:
            session.execute(
                insert(WeatherLocation),
                streamed(rows, log, []),
                execution_options={"bulk_batch_size": 10},
            )
        assert_bulk_write_error(failed.value, 33, "europe", sa.exc.IntegrityError)
        session.commit()
    assert stored_cities(deployment) == by_shard([*SEED, *earlier])


@sqlite_only
def test_duplicate_of_a_row_in_an_earlier_batch_names_the_later_row(
    deployment: Deployment,
) -> None:
    rows = round_robin_cities(25, 4000)
    assert rows[1][:2] == (4001, "Asia")  # in the first batch
    rows[13] = (4001, "Asia", "again")  # same primary key, same shard, in the second batch
    with deployment.shard_map.sessionmaker()() as session:
        with pytest.raises(BulkWriteError) as raised:
            session.execute(
                insert(WeatherLocation),
                (row for row in city_dicts(rows)),
                execution_options={"bulk_batch_size": 10},
            )
        assert_bulk_write_error(raised.value, 13, "asia", sa.exc.IntegrityError)
        session.commit()
    assert deployment.total_rows() == 0


@sqlite_only
def test_bulk_update_with_rows_from_a_generator(deployment: Deployment) -> None:
    store_seed(deployment)
    renamed = {i: f"{city} (renamed)" for i, _, city in SEED}
    with (
        deployment.shard_map.sessionmaker()() as session,
        StatementLog(deployment.shard_map) as log,
    ):
        session.execute(
            update(WeatherLocation),
            ({"id": i, "city": name} for i, name in renamed.items()),
            execution_options={"bulk_batch_size": 3},
        )
        session.commit()
    assert stored_cities(deployment) == by_shard([(i, c, renamed[i]) for i, c, _ in SEED])
    for entry in writes(log, "UPDATE"):
        assert "WHERE" in entry.sql, entry.sql  # by primary key, never the whole table


@sqlite_only
def test_missing_row_in_a_later_update_batch_changes_nothing(deployment: Deployment) -> None:
    store_seed(deployment)
    changes = [{"id": i, "city": f"Renamed {i}"} for i, _, _ in SEED]
    changes.insert(5, {"id": 404, "city": "nowhere"})
    with deployment.shard_map.sessionmaker()() as session:
        with pytest.raises(BulkWriteError) as raised:
            session.execute(
                update(WeatherLocation),
                iter(changes),
                execution_options={"bulk_batch_size": 2},
            )
        assert raised.value.row_index == 5
        assert raised.value.shard is None
        session.commit()
    assert stored_cities(deployment) == by_shard(SEED)


@sqlite_only
def test_bulk_update_may_not_move_rows_between_shards(deployment: Deployment) -> None:
    store_seed(deployment)
    with deployment.shard_map.sessionmaker()() as session:
        with pytest.raises(ShardKeyError) as raised:
            session.execute(
                update(WeatherLocation),
                [{"id": 1, "city": "Edo"}, {"id": 4, "continent": "Asia", "city": "L"}],
            )
        assert_names_row(raised.value, 1)
        assert raised.value.attribute == "continent"
        session.commit()
    assert stored_cities(deployment) == by_shard(SEED)


# -- empty routes, route records ----------------------------------------------------------


NO_ROWS = {
    "no rows": lambda session: session.execute(insert(WeatherLocation), (r for r in [])),
    "no rows, pinned": lambda session: session.execute(
        insert(WeatherLocation).options(set_shard_id("asia")), (r for r in [])
    ),
    "no rows, Core": lambda session: session.execute(
        insert(WeatherLocation.__table__), (r for r in [])
    ),
    "no rows to update": lambda session: session.execute(update(WeatherLocation), (r for r in [])),
    "empty list": lambda session: session.execute(insert(WeatherLocation), []),
}


@sqlite_only
@pytest.mark.parametrize("case", list(NO_ROWS))
def test_no_rows_write_nothing_and_return_an_empty_result(
    deployment: Deployment, case: str
) -> None:
    # an empty file loaded through an iterator is not an error: nothing to write
    with (
        deployment.shard_map.sessionmaker()() as session,
        StatementLog(deployment.shard_map) as log,
    ):
        assert NO_ROWS[case](session).all() == []
        assert [entry for entry in log.entries if entry.sql.startswith(("INSERT", "UPDATE"))] == []
        session.execute(insert(WeatherLocation), city_dicts([(1, "Asia", "Tokyo")]))
        session.commit()
    assert stored_cities(deployment) == by_shard([(1, "Asia", "Tokyo")])


@sqlite_only
def test_a_drop_in_chooser_that_chooses_no_shard_is_a_clear_error(deployment: Deployment) -> None:
    shard_map = deployment.shard_map
    session = ShardedSession(
        shards=shard_map.binds(),
        shard_chooser=lambda mapper, instance, **kw: "asia",
        identity_chooser=lambda *args, **kw: list(SHARDS),
        execute_chooser=lambda context: [],
    )
    with session:
        for statement, rows in [
            (insert(WeatherLocation), city_dicts([(1, "Asia", "Tokyo")])),
            (insert(WeatherLocation).values(id=1, continent="Asia", city="Tokyo"), None),
        ]:
            with pytest.raises(RoutingError, match="chose no shard") as raised:
                session.execute(statement, rows)
            assert not isinstance(raised.value, IndexError)
            session.rollback()
        # pinned, the same chooser's session writes the whole batch to that shard
        session.execute(
            insert(WeatherLocation).options(set_shard_id("asia")),
            city_dicts([(1, "Asia", "Tokyo"), (9, "Asia", "Osaka")]),
        )
        session.commit()
    assert stored_cities(deployment) == by_shard([(1, "Asia", "Tokyo"), (9, "Asia", "Osaka")])


@sqlite_only
def test_recording_routes_of_a_bulk_insert(deployment: Deployment) -> None:
    with deployment.shard_map.sessionmaker()() as session:
        with session.recording_routes() as routes:
            session.execute(insert(WeatherLocation), city_dicts(NEW_CITIES[:3]))
        assert routes, "a bulk INSERT records its route"
        assert {shard for route in routes for shard in route.shards} == shards_of(NEW_CITIES[:3])
        assert all("weather_locations" in route.statement for route in routes)
        session.rollback()


# -- shard-aware IDs ---------------------------------------------------------------------


@pytest.fixture
def id_world(make_database: Any) -> Iterator[tuple[ShardMap, Any, Any, Any]]:
    from shardalchemy.ids import ShardAwareIdGenerator, create_id_tables, mapped_id_column

    continents = {"Asia": "asia", "Europe": "europe", "Africa": "africa"}
    shard_map = ShardMap.databases(
        {shard: make_database("sqlite") for shard in continents.values()}
    )
    store = make_database("sqlite")
    create_id_tables(store)
    ids = ShardAwareIdGenerator(store, shard_map, name="bulk")

    class Base(DeclarativeBase):
        pass

    class City(Base):
        __tablename__ = "bulk_cities"
        __sharding__ = ShardKey("continent", Lookup(continents))
        id: Mapped[int] = mapped_id_column(ids)
        continent: Mapped[str] = mapped_column(String(20))
        name: Mapped[str] = mapped_column(String(20))
        visits: Mapped[list[Visit]] = relationship(back_populates="city")

    class Visit(Base):
        __tablename__ = "bulk_visits"
        __sharding__ = FollowParent("city")
        id: Mapped[int] = mapped_column(primary_key=True)
        city_id: Mapped[int] = mapped_column(ForeignKey("bulk_cities.id"))
        city: Mapped[City] = relationship(back_populates="visits")

    shard_map.create_all(Base.metadata)
    yield shard_map, ids, City, Visit
    ids.close()
    shard_map.dispose()


def test_shard_aware_ids_generated_per_shard_and_followers_routed_by_them(
    id_world: tuple[ShardMap, Any, Any, Any],
) -> None:
    shard_map, ids, City, Visit = id_world
    names = [("Asia", "A0"), ("Europe", "E0"), ("Africa", "F0"), ("Asia", "A1"), ("Europe", "E1")]
    with shard_map.sessionmaker()() as session:
        cities = session.scalars(
            insert(City).returning(City), [{"continent": c, "name": n} for c, n in names]
        ).all()
        assert [(c.continent, c.name) for c in cities] == names
        for city in cities:
            # the ID was issued on the shard the row went to
            assert ids.shard_of(city.id) == city.continent.lower()
            assert inspect(city).key == (City, (city.id,), city.continent.lower())
        city_ids = [c.id for c in cities]
        session.commit()

    with shard_map.sessionmaker()() as session:
        session.execute(insert(Visit), [{"city_id": i} for i in reversed(city_ids)])
        session.commit()
    for shard in ("asia", "europe", "africa"):
        with shard_map.bind(shard).connect() as connection:
            stored = set(connection.execute(sa.text("SELECT city_id FROM bulk_visits")).scalars())
            names_here = set(connection.execute(sa.text("SELECT id FROM bulk_cities")).scalars())
        assert stored == {i for i in city_ids if ids.shard_of(i) == shard}
        assert names_here == stored


# -- helper sanity (no implementation needed) ---------------------------------------------


def test_by_shard_helper() -> None:
    assert by_shard(NEW_CITIES)["asia"] == [
        (102, "Asia", "Seoul"),
        (105, "Asia", "Hanoi"),
        (109, "Asia", "Delhi"),
    ]
    assert shards_of(NEW_CITIES) == set(SHARDS)


# -- several shards written at once (servers only) -----------------------------------------

servers_only = pytest.mark.parametrize("backend", ["postgresql", "mariadb"], indirect=True)


@servers_only
@pytest.mark.parametrize("placement", ["database"], indirect=True)
def test_concurrent_shard_writes_route_and_undo_like_sequential_ones(
    deployment: Deployment,
) -> None:
    continents = list(CONTINENTS)
    rows = [(i, continents[i % 4], f"city {i}") for i in range(1, 4001)]
    concurrently = {"bulk_concurrency": 4}
    threads: set[str] = set()

    def note_thread(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT"):
            threads.add(threading.current_thread().name)

    engines = [deployment.shard_map.bind(shard) for shard in SHARDS]
    for engine in engines:
        sa.event.listen(engine, "before_cursor_execute", note_thread)
    with (
        deployment.shard_map.sessionmaker()() as session,
        StatementLog(deployment.shard_map) as log,
    ):
        returned = session.scalars(
            insert(WeatherLocation).returning(WeatherLocation.id),
            city_dicts(rows),
            execution_options=concurrently,
        ).all()
        assert returned == [row[0] for row in rows]  # the caller's order
        assert len(threads) > 1 and "MainThread" not in threads, threads  # really at once
        assert writes_per_shard(log, "INSERT") == Counter(dict.fromkeys(SHARDS, 1))
        # a duplicate on one shard, found while the others are written at the same time
        later = [(5000 + i, continents[i % 4], "later") for i in range(2000)]
        later[1234] = (4, continents[4 % 4], "again")  # id 4 is on that shard already
        with pytest.raises(BulkWriteError) as raised:
            session.execute(
                insert(WeatherLocation), city_dicts(later), execution_options=concurrently
            )
        assert_names_row(raised.value, 1234)
        assert raised.value.shard == CONTINENTS[continents[0]]
        session.commit()
    for engine in engines:
        sa.event.remove(engine, "before_cursor_execute", note_thread)
    assert stored_cities(deployment) == by_shard(rows)
