"""ShardedSession on every backend x placement: the weather scenario, routing, errors.

Where statements went is checked with :class:`shardalchemy.StatementLog`; what was written
is checked with plain engines that bypass shardalchemy (``Deployment.count_rows``/``rows``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from models_weather import (
    CONTINENTS,
    SHARDS,
    Base,
    Deployment,
    Report,
    Tag,
    WeatherLocation,
    deploy,
    new_cities,
)
from sqlalchemy import inspect, select, update
from sqlalchemy.orm import Session, selectinload, sessionmaker

import shardalchemy
from shardalchemy import (
    MissingParentError,
    MissingShardKeyError,
    RoutingError,
    ShardedSession,
    ShardingError,
    ShardKeyChangeError,
    StatementLog,
    UnknownShardError,
    UnknownShardKeyError,
    set_shard_id,
)
from shardalchemy.inspection import ExecutedStatement

DML = ("INSERT", "UPDATE", "DELETE")


def writes(log: StatementLog) -> list[ExecutedStatement]:
    return [e for e in log.entries if e.sql.lstrip().upper().startswith(DML)]


def selects(log: StatementLog) -> list[ExecutedStatement]:
    return [e for e in log.entries if e.sql.lstrip().upper().startswith("SELECT")]


def expected_counts(**per_table: dict[str, int]) -> dict[tuple[str, str], int]:
    counts = {
        (shard, table): 0
        for shard in SHARDS
        for table in ("weather_locations", "weather_reports", "tags")
    }
    for table, by_shard in per_table.items():
        for shard, count in by_shard.items():
            counts[(shard, table)] = count
    return counts


SEED_COUNTS = {"north_america": 2, "asia": 1, "europe": 2, "south_america": 2}


def store_seed(shard_map: shardalchemy.ShardMap) -> None:
    with shard_map.sessionmaker()() as session:
        session.add_all(new_cities())
        session.commit()


# -- the seed's scenario -----------------------------------------------------------------


def test_seed_scenario(deployment: Deployment) -> None:
    shard_map = deployment.shard_map
    Session = shard_map.sessionmaker()
    cities = new_cities()
    tokyo_id = cities[0].id

    with Session() as session, StatementLog(shard_map) as log:
        session.add_all(cities)
        session.commit()
    # every row went to its continent's shard: checked outside shardalchemy
    assert deployment.count_rows() == expected_counts(
        weather_locations=SEED_COUNTS, weather_reports=SEED_COUNTS
    )
    assert deployment.rows("asia", "weather_locations", "id", "continent", "city") == [
        (1, "Asia", "Tokyo")
    ]
    assert deployment.rows("europe", "weather_reports", "id", "location_id") == [(1, 4), (2, 5)]
    inserts = writes(log)
    assert {e.shard for e in inserts} == set(SHARDS)
    for entry in inserts:
        if deployment.placement == "tables":
            assert f"INTO {entry.shard}_" in entry.sql

    with Session() as session, StatementLog(shard_map) as log:
        t = session.get(WeatherLocation, tokyo_id)
        assert t is not None
        assert t.city == "Tokyo"
        assert inspect(t).identity_token == "asia"
        assert "asia" in log.shards()

        # a lazy load stays on the parent's shard
        log.clear()
        assert t.reports[0].temperature == 80.0
        assert log.shards() == ["asia"]
        assert len(selects(log)) == 1

        # set_shard_id pins the query, and the lazy loads of what it loads
        log.clear()
        north_american_cities = session.execute(
            select(WeatherLocation).options(set_shard_id("north_america"))
        ).scalars()
        by_city = {c.city: c for c in north_american_cities}
        assert set(by_city) == {"New York", "Toronto"}
        assert [r.temperature for r in by_city["Toronto"].reports] == [80.0]
        assert log.shards() == ["north_america"]

        # IN on the shard key runs on those two shards only
        log.clear()
        asia_and_europe = session.execute(
            select(WeatherLocation).filter(WeatherLocation.continent.in_(["Europe", "Asia"]))
        ).scalars()
        assert {c.city for c in asia_and_europe} == {"London", "Dublin", "Tokyo"}
        assert sorted(log.shards()) == ["asia", "europe"]
        assert len(selects(log)) == 2

        # the same Report primary key on two shards: two identities
        newyork_report = by_city["New York"].reports[0]
        tokyo_report = t.reports[0]
        assert inspect(newyork_report).identity_key == (Report, (1,), "north_america")
        assert inspect(tokyo_report).identity_key == (Report, (1,), "asia")
        assert inspect(newyork_report).identity_token == "north_america"
        assert inspect(tokyo_report).identity_token == "asia"
        assert newyork_report is not tokyo_report
        assert newyork_report.location is by_city["New York"]
        assert tokyo_report.location is t

    # many-to-one lazy load (session.get via the relationship) stays on the child's shard
    with Session() as session, StatementLog(shard_map) as log:
        (report,) = session.scalars(select(Report).where(Report.location_id == tokyo_id)).all()
        assert len(log.shards()) == len(SHARDS)  # no shard key in the WHERE clause
        log.clear()
        assert report.location.city == "Tokyo"
        assert log.shards() == ["asia"]
        assert len(selects(log)) == 1


def test_equality_on_shard_key_runs_on_one_shard(deployment: Deployment) -> None:
    store_seed(deployment.shard_map)
    with (
        deployment.shard_map.sessionmaker()() as session,
        StatementLog(deployment.shard_map) as log,
    ):
        cities = session.scalars(
            select(WeatherLocation).where(WeatherLocation.continent == "South America")
        ).all()
        assert sorted(c.city for c in cities) == ["Brasilia", "Quito"]
        assert log.shards() == ["south_america"]
        # an identity token is a shard name: refresh goes back to that shard only
        log.clear()
        session.refresh(cities[0])
        assert log.shards() == ["south_america"]


def test_same_primary_key_on_two_shards_is_two_identities(deployment: Deployment) -> None:
    store_seed(deployment.shard_map)
    with deployment.shard_map.sessionmaker()() as session:
        reports = session.scalars(select(Report).where(Report.id == 1)).all()
        assert len(reports) == len(SHARDS)  # one Report 1 per shard
        assert {inspect(r).identity_key for r in reports} == {
            (Report, (1,), shard) for shard in SHARDS
        }
        assert {r.location.city for r in reports} == {"Tokyo", "New York", "London", "Brasilia"}
        # get() with an identity token picks one of them
        asia_report = session.get(Report, 1, identity_token="asia")
        europe_report = session.get(Report, 1, identity_token="europe")
        assert asia_report is not None and europe_report is not None
        assert asia_report.location.city == "Tokyo"
        assert europe_report.location.city == "London"
        assert asia_report in reports and europe_report in reports


def test_follower_with_only_the_foreign_key_goes_to_its_parents_shard(
    deployment: Deployment,
) -> None:
    store_seed(deployment.shard_map)
    with (
        deployment.shard_map.sessionmaker()() as session,
        StatementLog(deployment.shard_map) as log,
    ):
        quito_report = Report(location_id=7, temperature=12.5)
        tokyo_tag = Tag(location_id=1, tags="fk only")
        session.add_all([quito_report, tokyo_tag])
        session.commit()
        assert inspect(quito_report).identity_token == "south_america"
        assert inspect(tokyo_tag).identity_token == "asia"
        assert {e.shard for e in writes(log)} == {"south_america", "asia"}
    assert deployment.rows("south_america", "weather_reports", "location_id", "temperature") == [
        (6, 80.0),
        (7, 12.5),
        (7, 80.0),
    ]
    assert deployment.rows("asia", "tags", "location_id", "tags") == [(1, "fk only")]


def test_follower_of_a_pending_parent_goes_with_it(deployment: Deployment) -> None:
    with deployment.shard_map.sessionmaker()() as session:
        lima = WeatherLocation(id=20, continent="South America", city="Lima")
        session.add(Report(location=lima, temperature=18.0))  # the parent arrives by cascade
        session.commit()
    assert deployment.rows("south_america", "weather_reports", "location_id") == [(20,)]
    assert deployment.total_rows() == 2


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("placement", ["tables"])
def test_selectinload_stays_on_the_parents_shard(deployment: Deployment) -> None:
    store_seed(deployment.shard_map)
    with (
        deployment.shard_map.sessionmaker()() as session,
        StatementLog(deployment.shard_map) as log,
    ):
        cities = session.scalars(
            select(WeatherLocation)
            .where(WeatherLocation.continent == "Europe")
            .options(selectinload(WeatherLocation.reports))
        ).all()
        assert sorted(len(c.reports) for c in cities) == [1, 1]
        assert log.shards() == ["europe"]


# -- tables placement renames at compile time, never by text replacement -----------------

TRICKY = (
    "weather_locations",
    "_prefix_",
    "asia_weather_locations",
    "north_america_weather_locations",
    "asia",
    "europe_tags",
    "tags",
    '"weather_locations"',
    "weather_locations.city",
)


def test_literals_and_columns_named_like_tables_are_never_renamed(
    deployment: Deployment,
) -> None:
    shard_map = deployment.shard_map
    continents = list(CONTINENTS)
    with shard_map.sessionmaker()() as session:
        for number, text in enumerate(TRICKY, start=1):
            location = WeatherLocation(
                id=number, continent=continents[number % len(continents)], city=text
            )
            location.tags.append(
                Tag(tags=text, weather_locations=text, asia_weather_locations=text)
            )
            session.add(location)
        session.commit()

    # stored as given (read back with plain SQL, outside shardalchemy)
    stored = [
        row
        for shard in SHARDS
        for row in deployment.rows(
            shard, "tags", "tags", "weather_locations", "asia_weather_locations"
        )
    ]
    assert sorted(stored) == sorted((text, text, text) for text in TRICKY)

    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        # literals in parameters: the value arrives untouched, and matches the stored row;
        # the SQL text is the same whatever the literal is
        session.scalars(select(WeatherLocation).where(WeatherLocation.city == "neutral")).all()
        neutral_sql = [(entry.shard, entry.sql) for entry in log.entries]
        for text in TRICKY:
            log.clear()
            (found,) = session.scalars(
                select(WeatherLocation).where(WeatherLocation.city == text)
            ).all()
            assert found.city == text
            assert [(entry.shard, entry.sql) for entry in log.entries] == neutral_sql
            assert all(_parameters_contain(entry.parameters, text) for entry in log.entries)
            assert [t.weather_locations for t in found.tags] == [text]

        # a literal rendered into the SQL text is left exactly as written
        log.clear()
        rows = session.execute(
            select(WeatherLocation.city, sa.literal_column("'asia_weather_locations'")).where(
                WeatherLocation.city == "weather_locations"
            )
        ).all()
        assert rows == [("weather_locations", "asia_weather_locations")]
        for entry in log.entries:
            assert "'asia_weather_locations'" in entry.sql
            assert f"'{entry.shard}_asia_weather_locations'" not in entry.sql

        log.clear()
        rows = session.execute(
            select(Tag.tags, Tag.weather_locations, Tag.asia_weather_locations).where(
                Tag.weather_locations == sa.literal("_prefix_", literal_execute=True)
            )
        ).all()
        assert rows == [("_prefix_", "_prefix_", "_prefix_")]
        for entry in log.entries:
            assert "'_prefix_'" in entry.sql
            if deployment.placement == "tables":
                shard = entry.shard
                # the table is renamed; its columns named like tables are not
                columns = (
                    f"{shard}_tags.tags, {shard}_tags.weather_locations, "
                    f"{shard}_tags.asia_weather_locations"
                )
                assert columns in " ".join(entry.sql.split())
                assert f"{shard}_tags.{shard}_tags" not in entry.sql
                assert f"{shard}_{shard}_" not in entry.sql
                assert f"_{shard}_weather_locations" not in entry.sql


def _parameters_contain(parameters: Any, text: str) -> bool:
    if isinstance(parameters, dict):
        values = list(parameters.values())
    elif isinstance(parameters, list | tuple):
        values = list(parameters)
    else:
        return False
    return any(v == text or (isinstance(v, list | tuple) and text in v) for v in values)


# -- errors: nothing written, the session still usable -------------------------------------


def _assert_usable_and_only_good_rows(session: Session, deployment: Deployment) -> None:
    """After rollback: a good flush works and writes exactly its rows."""
    session.rollback()
    session.add(WeatherLocation(id=99, continent="Europe", city="Oslo"))
    session.commit()
    counts = deployment.count_rows()
    assert counts[("europe", "weather_locations")] == 1
    assert sum(counts.values()) == 1


BAD_NEW_OBJECTS: dict[str, tuple[Callable[[], Any], type[ShardingError], tuple[str, ...]]] = {
    "unknown continent": (
        lambda: WeatherLocation(id=50, continent="Atlantis", city="Atlantis"),
        UnknownShardKeyError,
        ("WeatherLocation", "continent", "'Atlantis'"),
    ),
    "None continent": (
        lambda: WeatherLocation(id=50, continent=None, city="Nowhere"),
        MissingShardKeyError,
        ("WeatherLocation", "continent", "None"),
    ),
    "report without location": (
        lambda: Report(temperature=1.0),
        MissingParentError,
        ("Report", "location", "None"),
    ),
    "report of a missing location": (
        lambda: Report(location_id=12345, temperature=1.0),
        MissingParentError,
        ("Report", "location", "12345"),
    ),
    "report of a location on an unknown continent": (
        lambda: Report(
            location=WeatherLocation(id=51, continent="Atlantis", city="X"), temperature=1.0
        ),
        UnknownShardKeyError,
        ("WeatherLocation", "continent", "'Atlantis'"),
    ),
}


@pytest.mark.parametrize("case", list(BAD_NEW_OBJECTS))
def test_bad_new_object_mixed_with_good_ones_writes_nothing(
    deployment: Deployment, case: str
) -> None:
    make_bad, error_class, words = BAD_NEW_OBJECTS[case]
    shard_map = deployment.shard_map
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        good = new_cities()
        session.add_all([*good[:3], make_bad(), *good[3:]])
        with pytest.raises(error_class) as raised:
            session.commit()
        assert writes(log) == []
        message = str(raised.value)
        for word in words:
            assert word in message, (word, message)
        session.rollback()
        assert deployment.total_rows() == 0
        _assert_usable_and_only_good_rows(session, deployment)


def test_shard_key_error_attributes(deployment: Deployment) -> None:
    with deployment.shard_map.sessionmaker()() as session:
        session.add(WeatherLocation(id=50, continent="Atlantis", city="Atlantis"))
        with pytest.raises(UnknownShardKeyError) as raised:
            session.flush()
        assert (raised.value.model, raised.value.attribute, raised.value.value) == (
            "WeatherLocation",
            "continent",
            "Atlantis",
        )
        session.rollback()
        session.add(Report(temperature=3.0))
        with pytest.raises(MissingParentError) as missing:
            session.flush()
        assert (missing.value.model, missing.value.relationship) == ("Report", "location")
    assert deployment.total_rows() == 0


def test_changing_the_shard_key_of_a_stored_row_is_refused(deployment: Deployment) -> None:
    store_seed(deployment.shard_map)
    before = deployment.count_rows()
    shard_map = deployment.shard_map
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        tokyo = session.get(WeatherLocation, 1)
        assert tokyo is not None
        tokyo.continent = "Europe"
        tokyo.city = "Tokyo (moved)"
        log.clear()
        with pytest.raises(ShardKeyChangeError) as raised:
            session.commit()
        assert writes(log) == []
        error = raised.value
        assert (error.model, error.attribute, error.value) == (
            "WeatherLocation",
            "continent",
            "Europe",
        )
        for word in ("WeatherLocation.continent", "'Asia'", "'Europe'", "'asia'", "'europe'"):
            assert word in str(error), (word, str(error))
        session.rollback()
        assert deployment.count_rows() == before
        assert deployment.rows("asia", "weather_locations", "continent", "city") == [
            ("Asia", "Tokyo")
        ]
        # usable afterwards; a change that keeps the shard is fine
        tokyo = session.get(WeatherLocation, 1)
        assert tokyo is not None
        tokyo.city = "Edo"
        session.commit()
    assert deployment.rows("asia", "weather_locations", "continent", "city") == [("Asia", "Edo")]


def test_moving_a_follower_to_a_parent_on_another_shard_is_refused(
    deployment: Deployment,
) -> None:
    store_seed(deployment.shard_map)
    before = deployment.count_rows()
    shard_map = deployment.shard_map
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        tokyo = session.get(WeatherLocation, 1)
        london = session.get(WeatherLocation, 4)
        assert tokyo is not None and london is not None
        report = tokyo.reports[0]
        report.location = london
        log.clear()
        with pytest.raises(ShardKeyChangeError) as raised:
            session.flush()
        assert writes(log) == []
        assert raised.value.model == "Report"
        assert raised.value.attribute == "location"
        assert "'asia'" in str(raised.value) and "'europe'" in str(raised.value)
        session.rollback()
    assert deployment.count_rows() == before
    assert deployment.rows("asia", "weather_reports", "id", "location_id") == [(1, 1)]


def test_update_statement_assigning_the_shard_key_is_refused(deployment: Deployment) -> None:
    store_seed(deployment.shard_map)
    before = {
        shard: deployment.rows(shard, "weather_locations", "id", "continent") for shard in SHARDS
    }
    shard_map = deployment.shard_map
    statements = [
        update(WeatherLocation).where(WeatherLocation.id == 1).values(continent="Europe"),
        update(WeatherLocation)
        .where(WeatherLocation.continent == "Asia")
        .values({WeatherLocation.continent: "Europe"}),
        update(WeatherLocation.__table__).values(continent="Europe"),
    ]
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        for statement in statements:
            with pytest.raises(ShardKeyChangeError) as raised:
                session.execute(statement)
            assert writes(log) == []
            error = raised.value
            assert (error.model, error.attribute, error.value) == (
                "WeatherLocation",
                "continent",
                "Europe",
            )
            for word in ("WeatherLocation", "continent", "'Europe'"):
                assert word in str(error), (word, str(error))
            session.rollback()
        # an UPDATE that leaves the shard key alone runs
        session.execute(update(WeatherLocation).where(WeatherLocation.id == 1).values(city="Edo"))
        session.commit()
    after = {
        shard: deployment.rows(shard, "weather_locations", "id", "continent") for shard in SHARDS
    }
    assert after == before
    assert deployment.rows("asia", "weather_locations", "city") == [("Edo",)]


def test_unknown_shard_in_set_shard_id_or_bind_arguments(deployment: Deployment) -> None:
    store_seed(deployment.shard_map)
    before = deployment.count_rows()
    shard_map = deployment.shard_map
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        with pytest.raises(UnknownShardError) as raised:
            session.execute(select(WeatherLocation).options(set_shard_id("mars"))).all()
        message = str(raised.value)
        assert "'mars'" in message
        assert all(repr(shard) in message for shard in SHARDS)
        assert raised.value.shard == "mars"
        assert isinstance(raised.value, KeyError)
        with pytest.raises(UnknownShardError, match="'mars'"):
            session.execute(select(WeatherLocation), bind_arguments={"shard_id": "mars"})
        with pytest.raises(UnknownShardError, match="'mars'"):
            session.execute(update(WeatherLocation).values(city="x").options(set_shard_id("mars")))
        assert log.entries == []  # refused before anything reached a shard
        session.rollback()
        # usable afterwards
        cities = session.scalars(select(WeatherLocation).options(set_shard_id("asia"))).all()
        assert [c.city for c in cities] == ["Tokyo"]
    assert deployment.count_rows() == before


# -- session construction -------------------------------------------------------------------


def test_sessionmaker_factory(deployment: Deployment) -> None:
    shard_map = deployment.shard_map
    Session = shard_map.sessionmaker(expire_on_commit=False)
    assert isinstance(Session, sessionmaker)
    with Session.begin() as session:
        assert isinstance(session, ShardedSession)
        assert session.shard_map is shard_map
        assert session.shard_names == SHARDS
        session.add_all(new_cities())
    assert deployment.count_rows()[("asia", "weather_locations")] == 1
    with Session() as session:
        tokyo = WeatherLocation(id=30, continent="Asia", city="Osaka")
        session.add(tokyo)
        session.commit()
        # expire_on_commit=False was passed through: reading needs no SQL after commit
        with StatementLog(shard_map) as log:
            assert tokyo.city == "Osaka"
        assert log.entries == []

    # SQLAlchemy's own sessionmaker works too
    Plain = sessionmaker(class_=ShardedSession, shard_map=shard_map)
    with Plain() as session, StatementLog(shard_map) as log:
        cities = session.scalars(
            select(WeatherLocation).where(WeatherLocation.continent == "Europe")
        ).all()
        assert sorted(c.city for c in cities) == ["Dublin", "London"]
        assert log.shards() == ["europe"]


def _seed_choosers() -> dict[str, Any]:
    """The seed's chooser functions, as a user of SQLAlchemy's extension writes them."""

    def shard_chooser(mapper: Any, instance: Any, clause: Any = None) -> str:
        if isinstance(instance, WeatherLocation):
            return CONTINENTS[instance.continent]
        return shard_chooser(mapper, instance.location)

    def identity_chooser(
        mapper: Any, primary_key: Any, *, lazy_loaded_from: Any, **kw: Any
    ) -> list[str]:
        if lazy_loaded_from:
            return [lazy_loaded_from.identity_token]
        return list(SHARDS)

    def execute_chooser(context: Any) -> list[str]:
        ids: list[str] = []
        where = getattr(context.statement, "whereclause", None)
        if where is not None:
            for binary in sa.sql.visitors.iterate(where):
                if getattr(binary, "__visit_name__", None) != "binary":
                    continue
                column, value = binary.left, binary.right
                if not (
                    hasattr(column, "shares_lineage")
                    and column.shares_lineage(WeatherLocation.__table__.c.continent)
                ):
                    continue
                if binary.operator is sa.sql.operators.eq:
                    ids.append(CONTINENTS[value.effective_value])
                elif binary.operator is sa.sql.operators.in_op:
                    ids.extend(CONTINENTS[v] for v in value.effective_value)
        return ids or list(SHARDS)

    return {
        "shard_chooser": shard_chooser,
        "identity_chooser": identity_chooser,
        "execute_chooser": execute_chooser,
    }


def test_drop_in_construction_runs_the_seed(deployment: Deployment) -> None:
    shard_map = deployment.shard_map
    Session = sessionmaker(class_=ShardedSession, shards=shard_map.binds(), **_seed_choosers())
    with Session() as session:
        session.add_all(new_cities())
        session.commit()
    assert deployment.count_rows() == expected_counts(
        weather_locations=SEED_COUNTS, weather_reports=SEED_COUNTS
    )
    with Session() as session, StatementLog(shard_map) as log:
        tokyo = session.get(WeatherLocation, 1)
        assert tokyo is not None and tokyo.reports[0].temperature == 80.0
        north = session.scalars(
            select(WeatherLocation).options(set_shard_id("north_america"))
        ).all()
        assert {c.city for c in north} == {"New York", "Toronto"}
        log.clear()
        asia_and_europe = session.scalars(
            select(WeatherLocation).filter(WeatherLocation.continent.in_(["Europe", "Asia"]))
        ).all()
        assert {c.city for c in asia_and_europe} == {"London", "Dublin", "Tokyo"}
        assert sorted(log.shards()) == ["asia", "europe"]
        newyork_report = next(c for c in north if c.city == "New York").reports[0]
        assert inspect(newyork_report).identity_key == (Report, (1,), "north_america")
        assert inspect(tokyo.reports[0]).identity_key == (Report, (1,), "asia")


def test_drop_in_execute_chooser_returning_nothing_or_unknown(deployment: Deployment) -> None:
    shard_map = deployment.shard_map
    store_seed(shard_map)
    choosers = _seed_choosers()
    with StatementLog(shard_map) as log:
        session = ShardedSession(
            shards=shard_map.binds(),
            shard_chooser=choosers["shard_chooser"],
            identity_chooser=choosers["identity_chooser"],
            execute_chooser=lambda context: [],
        )
        with session:
            with pytest.raises(RoutingError, match="at least one shard"):
                session.scalars(select(WeatherLocation)).all()
            session.rollback()
        session = ShardedSession(
            shards=shard_map.binds(),
            shard_chooser=choosers["shard_chooser"],
            identity_chooser=choosers["identity_chooser"],
            execute_chooser=lambda context: ["asia", "mars"],
        )
        with session:
            with pytest.raises(UnknownShardError) as raised:
                session.scalars(select(WeatherLocation)).all()
            assert "'mars'" in str(raised.value)
            session.rollback()
            # a chooser pinned by set_shard_id still works in the same session
            cities = session.scalars(select(WeatherLocation).options(set_shard_id("asia"))).all()
            assert [c.city for c in cities] == ["Tokyo"]
    assert [e.shard for e in log.entries] == ["asia"]


# -- rule resolution does not depend on the first statement (fresh shard maps) ---------


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[tuple[Deployment, shardalchemy.ShardMap]]:
    """The seed stored, and a second shard map over it whose rules nothing resolved yet."""

    def make(kind: Any) -> sa.URL:
        return sa.URL.create("sqlite", database=str(tmp_path / "fresh.db"))

    deployment = deploy(make, "sqlite", "tables")
    deployment.shard_map.create_all(Base.metadata)
    store_seed(deployment.shard_map)
    shard_map = shardalchemy.ShardMap.tables(deployment.url, SHARDS)
    yield deployment, shard_map
    shard_map.dispose()
    deployment.close()


def test_first_statement_update_of_shard_key_is_refused(
    fresh: tuple[Deployment, shardalchemy.ShardMap],
) -> None:
    deployment, shard_map = fresh
    with shard_map.sessionmaker()() as session:
        with pytest.raises(ShardKeyChangeError):
            session.execute(
                update(WeatherLocation).where(WeatherLocation.id == 1).values(continent="Europe")
            )
        session.rollback()
    assert deployment.rows("asia", "weather_locations", "continent") == [("Asia",)]


def test_first_statement_select_routes_by_shard_key(
    fresh: tuple[Deployment, shardalchemy.ShardMap],
) -> None:
    _, shard_map = fresh
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        for _ in range(2):
            log.clear()
            cities = session.scalars(
                select(WeatherLocation).where(WeatherLocation.continent == "Asia")
            ).all()
            assert [c.city for c in cities] == ["Tokyo"]
            assert log.shards() == ["asia"]


def test_a_chooser_assigned_later_replaces_the_router(deployment: Deployment) -> None:
    # plain single-shard SELECTs skip the do_orm_execute hook only while the session's
    # own router chooses; a chooser set on the session afterwards must decide instead
    shard_map = deployment.shard_map
    store_seed(shard_map)
    asian = select(WeatherLocation).where(WeatherLocation.continent == "Asia")
    with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
        assert [c.city for c in session.scalars(asian)] == ["Tokyo"]
        assert log.shards() == ["asia"]
        session.execute_chooser = lambda context: ["europe"]
        log.clear()
        assert session.scalars(asian).all() == []  # the chooser sent it to europe
        assert log.shards() == ["europe"]
