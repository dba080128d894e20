"""explain(), no-scatter mode, routed writes and INSERT ... SELECT, on the weather models.

``session.explain(stmt)`` returns the route and its reason tree without running anything;
no-scatter mode refuses statements that would reach every shard; UPDATE and DELETE run on
the routed shards only and report the summed rowcount; INSERT ... SELECT runs only when its
SELECT pins one shard. Where statements went is checked with :class:`StatementLog`; what was
written, with plain engines that bypass shardalchemy.

Besides the weather models, ``visits`` is a Core table sharded independently (by a hash of
its visitor), for statements that combine tables that are not co-located.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from _servers import MakeDatabase
from models_weather import (
    CITIES,
    CONTINENTS,
    SHARDS,
    Base,
    Deployment,
    DeploymentPool,
    Report,
    Tag,
    WeatherLocation,
    new_cities,
)
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    exists,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import joinedload, selectinload

from shardalchemy import (
    CrossShardQueryError,
    Explanation,
    Hash,
    RoutingError,
    ScatterQueryError,
    ShardedSession,
    ShardingError,
    ShardKey,
    ShardKeyChangeError,
    ShardMap,
    StatementLog,
    UnknownShardError,
    set_shard_id,
    shard_table,
)

visits_metadata = MetaData()
visits = shard_table(
    Table(
        "visits",
        visits_metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("visitor", Integer),
        Column("location_id", Integer),
        Column("note", String(20)),
    ),
    ShardKey("visitor", Hash(buckets=32)),
)
VISITS = Hash(buckets=32, shards=SHARDS)  # the split the shard map binds visits' Hash() to

# not sharded: every shard's database has its own notes table
notes_metadata = MetaData()
notes = Table(
    "notes",
    notes_metadata,
    Column("id", Integer, primary_key=True),
    Column("location_id", Integer),
    Column("city", String(50)),
)

INDEPENDENT = re.compile(
    r"reads tables sharded independently of each other \((?P<groups>[^)]*)\): "
    r"each shard can only combine its own rows; all shards"
)


def names_both_shardings(reason: str) -> bool:
    """Whether ``reason`` says the statement reads weather_locations and visits, not co-located."""
    found = INDEPENDENT.search(reason)
    return found is not None and sorted(found["groups"].split("; ")) == [
        "visits",
        "weather_locations",
    ]


DML = ("INSERT", "UPDATE", "DELETE")

# a subquery and a CTE that project the shard key
INNER = select(WeatherLocation.city, WeatherLocation.continent).subquery("inner_places")
PLACES = select(WeatherLocation.city, WeatherLocation.continent).cte("places")


def writes(log: StatementLog) -> list[tuple[str | None, str]]:
    """(shard, verb) of every INSERT/UPDATE/DELETE in the log."""
    return [
        (entry.shard, entry.sql.split()[0].upper())
        for entry in log.entries
        if entry.sql.lstrip().upper().startswith(DML)
    ]


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def shard_map(make_database: MakeDatabase) -> Iterator[ShardMap]:
    """The weather shards as tables of one SQLite file, empty: for explain and refusals."""
    shard_map = ShardMap.tables(make_database("sqlite"), SHARDS)
    shard_map.create_all(Base.metadata)
    shard_map.create_all(visits_metadata)
    yield shard_map
    shard_map.dispose()


@pytest.fixture
def session(shard_map: ShardMap) -> Iterator[ShardedSession]:
    with shard_map.sessionmaker()() as session:
        yield session


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeploymentPool]:
    pool = DeploymentPool(tmp_path_factory.mktemp("shards"))
    yield pool
    pool.close()


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)],
)
def deployment(
    request: pytest.FixtureRequest, pool: DeploymentPool, make_database: MakeDatabase
) -> Deployment:
    """A database per shard holding the seed's seven cities (one report each); no visits."""
    if request.param != "sqlite":
        make_database(request.param)  # skips (fails under CI) when the server is down
    deployment = pool.get(request.param, "database")
    deployment.shard_map.create_all(visits_metadata)
    deployment.shard_map.create_all(notes_metadata)
    for shard in SHARDS:
        with deployment.plain_engine(shard).begin() as connection:
            connection.execute(delete(visits))
            connection.execute(delete(notes))
    with deployment.shard_map.sessionmaker()() as session:
        session.add_all(new_cities())
        session.commit()
    return deployment


def city_names(deployment: Deployment, shard: str) -> list[str]:
    return [city for _, city in deployment.rows(shard, "weather_locations", "id", "city")]


# -- explain: the route and the reason tree -----------------------------------------------------


def test_explain_names_the_predicate_that_pinned_the_shard(session: ShardedSession) -> None:
    statement = select(WeatherLocation).where(
        WeatherLocation.continent == "Asia", WeatherLocation.city == "Tokyo"
    )
    route = session.explain(statement)
    assert route.shards == ("asia",)
    assert route.statement == "SELECT weather_locations"
    assert route.reason == "WeatherLocation.continent = 'Asia' -> asia"
    assert not route.scatter
    assert str(route.explanation) == (
        "AND: intersection -> asia\n"
        "  WeatherLocation.continent = 'Asia' -> asia\n"
        "  weather_locations.city = :city_1 is not on a shard key -> all shards"
    )


def test_explain_tree_of_an_or_is_the_union_of_its_branches(session: ShardedSession) -> None:
    statement = select(WeatherLocation).where(
        or_(
            WeatherLocation.continent == "Asia",
            WeatherLocation.continent.in_(["Europe", "Asia"]),
        )
    )
    route = session.explain(statement)
    assert route.shards == ("asia", "europe")
    tree = route.explanation
    assert tree == Explanation(
        "OR: union",
        frozenset({"asia", "europe"}),
        [
            Explanation("WeatherLocation.continent = 'Asia'", frozenset({"asia"})),
            Explanation(
                "WeatherLocation.continent IN ('Europe', 'Asia')", frozenset({"asia", "europe"})
            ),
        ],
    )


def test_explain_says_why_a_shard_could_not_be_pruned(session: ShardedSession) -> None:
    statement = select(WeatherLocation).where(
        or_(WeatherLocation.continent == "Asia", WeatherLocation.city == "London")
    )
    route = session.explain(statement)
    assert route.shards == SHARDS
    assert route.scatter
    assert route.reason == (
        "WeatherLocation.continent = 'Asia' -> asia; "
        "weather_locations.city = :city_1 is not on a shard key; all shards"
    )
    assert str(route.explanation) == (
        "OR: union -> all shards\n"
        "  WeatherLocation.continent = 'Asia' -> asia\n"
        "  weather_locations.city = :city_1 is not on a shard key -> all shards"
    )


def test_explain_of_a_nested_tree(session: ShardedSession) -> None:
    statement = select(WeatherLocation).where(
        WeatherLocation.city != "x",
        or_(
            WeatherLocation.continent == "Europe",
            WeatherLocation.continent == bindparam("where"),
        ),
    )
    route = session.explain(statement, {"where": "South America"})
    assert route.shards == ("europe", "south_america")
    assert str(route.explanation) == (
        "AND: intersection -> europe, south_america\n"
        "  weather_locations.city != :city_1 is not a shard-key comparison -> all shards\n"
        "  OR: union -> europe, south_america\n"
        "    WeatherLocation.continent = 'Europe' -> europe\n"
        "    WeatherLocation.continent = 'South America' -> south_america"
    )
    assert route.reason == (
        "WeatherLocation.continent = 'Europe' -> europe; "
        "WeatherLocation.continent = 'South America' -> south_america"
    )


def test_explain_of_a_contradiction(session: ShardedSession) -> None:
    statement = select(WeatherLocation.id).where(
        WeatherLocation.continent == "Asia", WeatherLocation.continent.in_(["Europe"])
    )
    route = session.explain(statement)
    assert route.shards == (SHARDS[0],)
    assert route.explanation is not None
    assert route.explanation.shards == frozenset()
    assert str(route.explanation).splitlines()[0] == "AND: intersection -> no shard"
    assert route.reason.endswith(f"; no shard can match, running on {SHARDS[0]} alone")


def test_explain_without_where(session: ShardedSession) -> None:
    route = session.explain(select(WeatherLocation))
    assert route.shards == SHARDS
    assert route.scatter
    assert route.reason == "no WHERE clause; all shards"
    assert route.explanation == Explanation("no WHERE clause", None)
    assert str(route.explanation) == "no WHERE clause -> all shards"


def test_explain_of_a_statement_pinned_with_set_shard_id(session: ShardedSession) -> None:
    statement = select(WeatherLocation).options(set_shard_id("europe"))
    route = session.explain(statement.where(WeatherLocation.continent == "Asia"))
    assert route.shards == ("europe",)
    assert route.reason == "set_shard_id('europe')"
    assert str(route.explanation) == "set_shard_id('europe') -> europe"
    with pytest.raises(UnknownShardError, match="atlantis"):
        session.explain(select(WeatherLocation).options(set_shard_id("atlantis")))


def test_explain_of_the_seeds_follower_join(session: ShardedSession) -> None:
    statement = select(Report).join(Report.location).where(WeatherLocation.continent == "Asia")
    route = session.explain(statement)
    assert route.shards == ("asia",)
    assert route.statement == "SELECT weather_reports, weather_locations"
    assert route.reason == "WeatherLocation.continent = 'Asia' -> asia"


def test_explain_of_text_goes_everywhere_with_a_reason(session: ShardedSession) -> None:
    route = session.explain(text("SELECT * FROM weather_locations WHERE continent = 'Asia'"))
    assert route.shards == SHARDS
    assert route.scatter
    assert route.reason == "TextClause cannot be analysed; all shards"


def test_explain_of_tables_sharded_independently_names_both(session: ShardedSession) -> None:
    statement = (
        select(WeatherLocation.city, visits.c.note)
        .join(visits, visits.c.location_id == WeatherLocation.id)
        .where(WeatherLocation.continent == "Asia", visits.c.visitor == 7)
    )
    route = session.explain(statement)
    assert route.shards == SHARDS
    assert route.scatter
    assert INDEPENDENT.fullmatch(route.reason)
    assert names_both_shardings(route.reason)
    # their rows meet on no shard: running it would be refused, and explain says so
    assert route.plan is None
    assert isinstance(route.plan_error, CrossShardQueryError)
    assert "not co-located" in str(route.plan_error)


@pytest.mark.parametrize(
    ("statement", "shards", "reason"),
    [
        pytest.param(
            select(INNER).where(INNER.c.continent == "Europe"),
            ("europe",),
            "WeatherLocation.continent = 'Europe' -> europe",
            id="subquery",
        ),
        pytest.param(
            select(PLACES).where(PLACES.c.continent.in_(["Asia", "Europe"])),
            ("asia", "europe"),
            "WeatherLocation.continent IN ('Asia', 'Europe') -> asia, europe",
            id="cte",
        ),
        pytest.param(
            select(WeatherLocation).where(
                WeatherLocation.continent == "Europe",
                exists().where(Report.location_id == WeatherLocation.id),
            ),
            ("europe",),
            "WeatherLocation.continent = 'Europe' -> europe",
            id="exists",
        ),
        pytest.param(
            select(WeatherLocation).where(
                WeatherLocation.continent == "Asia",
                WeatherLocation.id.in_(select(visits.c.location_id)),
            ),
            SHARDS,
            None,
            id="subquery-of-another-sharding",
        ),
    ],
)
def test_explain_of_subqueries_ctes_and_exists(
    session: ShardedSession, statement: Any, shards: tuple[str, ...], reason: str | None
) -> None:
    route = session.explain(statement)
    assert route.shards == shards
    if reason is None:
        assert names_both_shardings(route.reason) and INDEPENDENT.fullmatch(route.reason)
    else:
        assert route.reason == reason


def test_explain_runs_no_sql(shard_map: ShardMap, session: ShardedSession) -> None:
    statements = [
        select(WeatherLocation).where(WeatherLocation.continent == "Asia"),
        select(WeatherLocation),
        update(WeatherLocation).where(WeatherLocation.continent == "Asia").values(city="x"),
        delete(Report).where(Report.temperature > 0),
        insert(Tag).from_select(
            ["location_id", "tags"],
            select(WeatherLocation.id, WeatherLocation.city).where(
                WeatherLocation.continent == "Asia"
            ),
        ),
        text("SELECT 1"),
        select(WeatherLocation).options(set_shard_id("asia")),
    ]
    with StatementLog(shard_map) as log:
        routes = [session.explain(statement) for statement in statements]
        assert log.entries == []
        session.execute(statements[0]).all()  # the log does see statements that run
        assert log.shards() == ["asia"]
    assert [route.shards for route in routes] == [
        ("asia",),
        SHARDS,
        ("asia",),
        SHARDS,
        SHARDS,  # INSERT ... SELECT into a sharded table is not routed row by row
        SHARDS,
        ("asia",),
    ]


def test_explain_agrees_with_where_statements_run(deployment: Deployment) -> None:
    statements = [
        select(WeatherLocation.city).where(WeatherLocation.continent.in_(["Asia", "Europe"])),
        select(WeatherLocation.city).where(WeatherLocation.city == "Quito"),
        select(Report.id).join(Report.location).where(WeatherLocation.continent == "Europe"),
    ]
    with deployment.shard_map.sessionmaker()() as session:
        for statement in statements:
            explained = session.explain(statement)
            with (
                session.recording_routes() as routes,
                StatementLog(deployment.shard_map) as log,
            ):
                session.execute(statement).all()
            assert [route.shards for route in routes] == [explained.shards]
            assert [route.reason for route in routes] == [explained.reason]
            assert set(log.shards()) == set(explained.shards)


# -- no-scatter mode ----------------------------------------------------------------------------


def test_no_scatter_session_refuses_a_statement_that_reaches_every_shard(
    shard_map: ShardMap,
) -> None:
    with shard_map.sessionmaker(no_scatter=True)() as session, StatementLog(shard_map) as log:
        statement = select(WeatherLocation).where(WeatherLocation.city == "Tokyo")
        with pytest.raises(ScatterQueryError) as caught:
            session.scalars(statement).all()
    error = caught.value
    assert isinstance(error, RoutingError)
    assert isinstance(error, ShardingError)
    assert error.tables == ["weather_locations"]
    assert error.missing == ["WeatherLocation.continent"]
    assert str(error) == (
        "SELECT weather_locations would run on every shard (weather_locations.city = :city_1 "
        "is not on a shard key; all shards), and scatter queries are refused (no_scatter); add "
        "a predicate on WeatherLocation.continent (= or IN), pin it with set_shard_id(...), or "
        "allow this one with .execution_options(no_scatter=False)"
    )
    assert log.entries == []  # refused before anything ran


def test_no_scatter_error_of_a_follower_join_names_its_tables_and_the_parents_key(
    shard_map: ShardMap,
) -> None:
    statement = select(Report).join(Report.location).where(WeatherLocation.city == "Quito")
    with (
        shard_map.sessionmaker(no_scatter=True)() as session,
        pytest.raises(ScatterQueryError) as caught,
    ):
        session.execute(statement)
    assert caught.value.tables == ["weather_reports", "weather_locations"]
    assert caught.value.missing == ["WeatherLocation.continent"]
    assert str(caught.value).startswith(
        "SELECT weather_reports, weather_locations would run on every shard"
    )


def test_no_scatter_error_names_a_table_joined_through_a_relationship(
    shard_map: ShardMap,
) -> None:
    statement = select(Report).join(Report.location).where(Report.temperature > 50)
    with (
        shard_map.sessionmaker(no_scatter=True)() as session,
        pytest.raises(ScatterQueryError) as caught,
    ):
        session.execute(statement)
    assert caught.value.tables == ["weather_reports", "weather_locations"]


def test_no_scatter_error_for_tables_sharded_independently_names_both(
    shard_map: ShardMap,
) -> None:
    statement = (
        select(WeatherLocation.city)
        .join(visits, visits.c.location_id == WeatherLocation.id)
        .where(WeatherLocation.continent == "Asia", visits.c.visitor == 7)
    )
    with (
        shard_map.sessionmaker(no_scatter=True)() as session,
        pytest.raises(ScatterQueryError) as caught,
    ):
        session.execute(statement)
    assert sorted(caught.value.tables) == ["visits", "weather_locations"]
    assert sorted(caught.value.missing) == ["WeatherLocation.continent", "visits.visitor"]
    assert names_both_shardings(str(caught.value))


def test_no_scatter_per_statement_on_a_normal_session(deployment: Deployment) -> None:
    statement = select(WeatherLocation.city).where(WeatherLocation.city != "x")
    with deployment.shard_map.sessionmaker()() as session:
        assert len(session.execute(statement).all()) == 7  # scatter is allowed by default
        with pytest.raises(ScatterQueryError):
            session.execute(statement.execution_options(no_scatter=True))
        with pytest.raises(ScatterQueryError):
            session.execute(statement, execution_options={"no_scatter": True})


def test_no_scatter_session_allows_one_statement_with_no_scatter_false(
    deployment: Deployment,
) -> None:
    statement = select(WeatherLocation.city).order_by(WeatherLocation.id)
    with deployment.shard_map.sessionmaker(no_scatter=True)() as session:
        with pytest.raises(ScatterQueryError):
            session.execute(statement)
        cities = session.scalars(statement.execution_options(no_scatter=False)).all()
    assert sorted(cities) == sorted(city for _, _, city in _seed())


def _seed() -> list[tuple[int, str, str]]:
    return [(c.id, c.continent, c.city) for c in new_cities()]


def test_no_scatter_session_runs_routed_and_pinned_statements(deployment: Deployment) -> None:
    with deployment.shard_map.sessionmaker(no_scatter=True)() as session:
        one = select(WeatherLocation.city).where(WeatherLocation.continent == "Europe")
        assert sorted(session.scalars(one)) == ["Dublin", "London"]
        two = select(WeatherLocation.city).where(
            WeatherLocation.continent.in_(["Asia", "North America"])
        )
        assert sorted(session.scalars(two)) == ["New York", "Tokyo", "Toronto"]
        pinned = select(WeatherLocation.city).options(set_shard_id("south_america"))
        assert sorted(session.scalars(pinned)) == ["Brasilia", "Quito"]
        nothing = select(WeatherLocation.city).where(
            WeatherLocation.continent == "Asia", WeatherLocation.continent == "Europe"
        )
        assert session.scalars(nothing).all() == []
        joined = (
            select(Report.temperature)
            .join(Report.location)
            .where(WeatherLocation.continent == "Asia")
        )
        assert session.scalars(joined).all() == [80.0]


def test_no_scatter_allows_an_in_that_covers_every_shard(deployment: Deployment) -> None:
    # a pruned route that happens to reach every shard is not a scatter
    statement = select(WeatherLocation).where(WeatherLocation.continent.in_(list(CONTINENTS)))
    with (
        deployment.shard_map.sessionmaker(no_scatter=True)() as session,
        session.recording_routes() as routes,
    ):
        found = session.scalars(statement).all()
    assert sorted((city.id, city.city) for city in found) == [
        (id_, city) for id_, _, city in CITIES
    ]
    assert [set(route.shards) for route in routes] == [set(SHARDS)]
    assert [route.scatter for route in routes] == [False]
    assert routes[0].reason.startswith("WeatherLocation.continent IN (")


def test_no_scatter_refuses_get_by_a_primary_key_that_does_not_carry_the_shard(
    deployment: Deployment,
) -> None:
    with deployment.shard_map.sessionmaker(no_scatter=True)() as session:
        with pytest.raises(ScatterQueryError, match=r"weather_locations\.id = :pk_1"):
            session.get(WeatherLocation, 4)
        pinned = session.get(WeatherLocation, 4, options=[set_shard_id("europe")])
        assert pinned is not None and pinned.city == "London"


def test_no_scatter_allows_relationship_loads_of_co_located_rows(deployment: Deployment) -> None:
    europe = WeatherLocation.continent == "Europe"
    two = WeatherLocation.continent.in_(["Asia", "Europe"])
    with deployment.shard_map.sessionmaker(no_scatter=True)() as session:
        with StatementLog(deployment.shard_map) as log:
            london = session.scalars(select(WeatherLocation).where(europe).order_by("id")).first()
            assert london is not None
            assert [r.temperature for r in london.reports] == [80.0]  # lazy load
            assert london.tags == []
            session.expunge_all()
            eager = session.scalars(
                select(WeatherLocation).where(two).options(selectinload(WeatherLocation.reports))
            ).all()
            assert sorted(len(city.reports) for city in eager) == [1, 1, 1]
            session.expunge_all()
            joined = (
                session.scalars(
                    select(WeatherLocation).where(two).options(joinedload(WeatherLocation.tags))
                )
                .unique()
                .all()
            )
            assert len(joined) == 3
            session.expunge_all()
            reports = session.scalars(select(Report).join(Report.location).where(europe)).all()
            assert sorted(report.location.city for report in reports) == ["Dublin", "London"]
        assert set(log.shards()) == {"asia", "europe"}


def test_no_scatter_refuses_writes_that_reach_every_shard(shard_map: ShardMap) -> None:
    with shard_map.sessionmaker(no_scatter=True)() as session, StatementLog(shard_map) as log:
        with pytest.raises(ScatterQueryError) as caught:
            session.execute(update(WeatherLocation).values(city="x"))
        assert str(caught.value).startswith(
            "UPDATE weather_locations would run on every shard (no WHERE clause; all shards)"
        )
        with pytest.raises(ScatterQueryError) as caught:
            session.execute(delete(visits).where(visits.c.note == "x"))
        assert caught.value.tables == ["visits"]
        assert caught.value.missing == ["visits.visitor"]
    assert log.entries == []


def test_no_scatter_refuses_text(shard_map: ShardMap) -> None:
    with (
        shard_map.sessionmaker(no_scatter=True)() as session,
        pytest.raises(ScatterQueryError, match=r"TextClause cannot be analysed; all shards"),
    ):
        session.execute(text("SELECT 1"))


def test_no_scatter_refuses_a_subquery_over_a_table_sharded_independently(
    shard_map: ShardMap,
) -> None:
    statement = select(WeatherLocation).where(
        WeatherLocation.continent == "Asia",
        WeatherLocation.id.in_(select(visits.c.location_id)),
    )
    with (
        shard_map.sessionmaker(no_scatter=True)() as session,
        pytest.raises(ScatterQueryError) as caught,
    ):
        session.execute(statement)
    assert sorted(caught.value.tables) == ["visits", "weather_locations"]
    assert names_both_shardings(str(caught.value))


# -- writes: routed shards only, summed rowcount ------------------------------------------------


@pytest.mark.parametrize("synchronize", ["auto", "fetch", False])
def test_orm_bulk_update_runs_on_routed_shards_and_sums_rowcount(
    deployment: Deployment, synchronize: Any
) -> None:
    statement = (
        update(WeatherLocation)
        .where(WeatherLocation.continent.in_(["Asia", "Europe"]))
        .values(city="renamed")
        .execution_options(synchronize_session=synchronize)
    )
    with deployment.shard_map.sessionmaker()() as session:
        tokyo = session.scalars(
            select(WeatherLocation).where(WeatherLocation.continent == "Asia")
        ).one()
        with StatementLog(deployment.shard_map) as log:
            result = session.execute(statement)
        assert result.rowcount == 3
        assert sorted(writes(log)) == [("asia", "UPDATE"), ("europe", "UPDATE")]
        if synchronize is not False:
            assert tokyo.city == "renamed"  # the session saw the change
        session.commit()
    assert city_names(deployment, "asia") == ["renamed"]
    assert city_names(deployment, "europe") == ["renamed", "renamed"]
    assert city_names(deployment, "north_america") == ["New York", "Toronto"]


def test_orm_bulk_delete_scatters_and_sums_rowcount_then_routes(deployment: Deployment) -> None:
    with deployment.shard_map.sessionmaker()() as session:
        with StatementLog(deployment.shard_map) as log:
            deleted_reports = session.execute(delete(Report).where(Report.temperature > 50))
        assert deleted_reports.rowcount == 7
        assert sorted(writes(log)) == [(shard, "DELETE") for shard in sorted(SHARDS)]
        with StatementLog(deployment.shard_map) as log:
            deleted = session.execute(
                delete(WeatherLocation).where(
                    WeatherLocation.continent.in_(["South America", "Europe"])
                )
            )
        assert deleted.rowcount == 4
        assert sorted(writes(log)) == [("europe", "DELETE"), ("south_america", "DELETE")]
        session.commit()
    counts = deployment.count_rows()
    assert {shard: counts[(shard, "weather_locations")] for shard in SHARDS} == {
        "north_america": 2,
        "asia": 1,
        "europe": 0,
        "south_america": 0,
    }
    assert sum(counts[(shard, "weather_reports")] for shard in SHARDS) == 0


def test_core_update_and_delete_run_on_routed_shards(deployment: Deployment) -> None:
    table = WeatherLocation.__table__
    with deployment.shard_map.sessionmaker()() as session:
        with StatementLog(deployment.shard_map) as log:
            updated = session.execute(
                update(table)
                .where(table.c.continent.in_(["North America", "South America"]))
                .values(city="core")
            )
        assert updated.rowcount == 4
        assert sorted(writes(log)) == [("north_america", "UPDATE"), ("south_america", "UPDATE")]
        with StatementLog(deployment.shard_map) as log:
            deleted = session.execute(delete(Report.__table__).where(Report.location_id == 1))
        assert deleted.rowcount == 1  # a follower's own columns: every shard is asked
        assert sorted(writes(log)) == [(shard, "DELETE") for shard in sorted(SHARDS)]
        session.commit()
    assert city_names(deployment, "south_america") == ["core", "core"]
    assert city_names(deployment, "europe") == ["London", "Dublin"]


def test_core_writes_to_a_hash_sharded_table_run_on_its_visitors_shards(
    deployment: Deployment,
) -> None:
    visitors = [v for v in range(100) if VISITS.shard_for(v) in ("asia", "europe")][:4]
    assert {VISITS.shard_for(v) for v in visitors} == {"asia", "europe"}
    for number, visitor in enumerate(visitors):
        with deployment.plain_engine(VISITS.shard_for(visitor)).begin() as connection:  # type: ignore[arg-type]
            connection.execute(
                insert(visits), {"id": number, "visitor": visitor, "location_id": 1, "note": "a"}
            )
    with deployment.shard_map.sessionmaker()() as session:
        with StatementLog(deployment.shard_map) as log:
            updated = session.execute(
                update(visits).where(visits.c.visitor.in_(visitors)).values(note="b")
            )
            deleted = session.execute(delete(visits).where(visits.c.visitor == visitors[0]))
        assert updated.rowcount == len(visitors)
        assert deleted.rowcount == 1
        assert sorted(writes(log)) == sorted(
            [("asia", "UPDATE"), ("europe", "UPDATE"), (VISITS.shard_for(visitors[0]), "DELETE")]
        )
        session.commit()


@pytest.mark.parametrize(
    "statement",
    [
        update(WeatherLocation)
        .where(WeatherLocation.continent == "Asia")
        .values(continent="Europe"),
        update(WeatherLocation)
        .where(WeatherLocation.id == 1)
        .values({WeatherLocation.continent: "Europe"}),
        update(WeatherLocation.__table__)
        .where(WeatherLocation.__table__.c.id == 1)
        .values(continent="Europe"),
        update(WeatherLocation)
        .where(WeatherLocation.continent == "Asia")
        .ordered_values((WeatherLocation.city, "x"), (WeatherLocation.continent, "Europe")),
    ],
    ids=["orm", "orm-column-key", "core", "ordered-values"],
)
def test_update_assigning_the_shard_key_is_refused(shard_map: ShardMap, statement: Any) -> None:
    with (
        shard_map.sessionmaker()() as session,
        StatementLog(shard_map) as log,
        pytest.raises(ShardKeyChangeError) as caught,
    ):
        session.execute(statement)
    error = caught.value
    assert (error.model, error.attribute, error.value) == ("WeatherLocation", "continent", "Europe")
    assert str(error) == (
        "UPDATE of WeatherLocation sets its shard key continent to 'Europe', which would move "
        "rows between shards; that is not supported (delete the rows and insert new ones instead)"
    )
    assert log.entries == []


def test_update_assigning_a_core_tables_shard_key_is_refused(shard_map: ShardMap) -> None:
    with (
        shard_map.sessionmaker()() as session,
        pytest.raises(ShardKeyChangeError, match="UPDATE of visits sets its shard key visitor"),
    ):
        session.execute(update(visits).where(visits.c.visitor == 1).values(visitor=2))


def test_update_assigning_the_shard_key_through_execute_parameters_is_refused(
    deployment: Deployment,
) -> None:
    with deployment.shard_map.sessionmaker()() as session:
        statement = update(WeatherLocation).where(WeatherLocation.continent == "Asia")
        try:
            with pytest.raises(ShardKeyChangeError):
                session.execute(statement, {"continent": "Europe"})
        finally:
            session.rollback()


def test_update_moving_followers_to_a_parent_on_another_shard_is_refused(
    deployment: Deployment,
) -> None:
    if deployment.backend != "sqlite":
        pytest.skip(
            "here each shard's foreign key refuses the update itself (London is not on asia)"
        )
    london = 4  # europe; Tokyo (1) is on asia
    with deployment.shard_map.sessionmaker()() as session:
        statement = update(Report).where(Report.location_id == 1).values(location_id=london)
        try:
            with pytest.raises(ShardingError):
                session.execute(statement)
        finally:
            session.rollback()


# -- INSERT ... SELECT --------------------------------------------------------------------------


def tags_from(where: Any) -> Any:
    """INSERT INTO tags (location_id, tags) SELECT id, city FROM weather_locations WHERE ..."""
    source = select(WeatherLocation.id, WeatherLocation.city)
    if where is not None:
        source = source.where(where)
    return insert(Tag).from_select(["location_id", "tags"], source)


def notes_from(where: Any) -> Any:
    """INSERT INTO notes (location_id, city) SELECT id, city FROM weather_locations WHERE ..."""
    source = select(WeatherLocation.id, WeatherLocation.city)
    if where is not None:
        source = source.where(where)
    return insert(notes).from_select(["location_id", "city"], source)


def all_notes(deployment: Deployment) -> dict[str, list[tuple[Any, ...]]]:
    """The rows of the unsharded notes table in each shard's database, by plain SQL."""
    return {shard: deployment.rows(shard, "notes", "location_id", "city") for shard in SHARDS}


INSERT_SELECT_ADVICE = (
    "; it runs on one shard only: add a shard-key predicate to its SELECT or pin it with "
    "set_shard_id(...)"
)


def test_insert_select_into_an_unsharded_table_on_one_shard_runs_there(
    deployment: Deployment,
) -> None:
    with deployment.shard_map.sessionmaker()() as session:
        with session.recording_routes() as routes, StatementLog(deployment.shard_map) as log:
            session.execute(notes_from(WeatherLocation.continent == "Europe"))
        session.commit()
    assert [route.shards for route in routes] == [("europe",)]
    assert [route.reason for route in routes] == ["WeatherLocation.continent = 'Europe' -> europe"]
    assert writes(log) == [("europe", "INSERT")]
    assert all_notes(deployment) == {
        shard: [(4, "London"), (5, "Dublin")] if shard == "europe" else [] for shard in SHARDS
    }


@pytest.mark.parametrize(
    ("where", "shards"),
    [
        (WeatherLocation.continent.in_(["Asia", "Europe"]), "asia, europe"),
        (None, ", ".join(SHARDS)),
        (WeatherLocation.city == "Tokyo", ", ".join(SHARDS)),
    ],
    ids=["two-shards", "no-where", "no-shard-key"],
)
def test_insert_select_into_an_unsharded_table_reaching_several_shards_is_refused(
    deployment: Deployment, where: Any, shards: str
) -> None:
    with deployment.shard_map.sessionmaker()() as session:
        with StatementLog(deployment.shard_map) as log, pytest.raises(RoutingError) as caught:
            session.execute(notes_from(where))
        session.commit()
    assert not isinstance(caught.value, ScatterQueryError)
    assert str(caught.value).startswith(f"INSERT ... SELECT reaches shards {shards} (")
    assert str(caught.value).endswith(INSERT_SELECT_ADVICE)
    assert writes(log) == []
    assert all_notes(deployment) == {shard: [] for shard in SHARDS}


@pytest.mark.parametrize(
    "where",
    [
        WeatherLocation.continent == "Europe",
        WeatherLocation.continent.in_(["Asia", "Europe"]),
        None,
        WeatherLocation.city == "Tokyo",
    ],
    ids=["one-shard", "two-shards", "no-where", "no-shard-key"],
)
def test_insert_select_into_a_sharded_table_is_refused(deployment: Deployment, where: Any) -> None:
    with deployment.shard_map.sessionmaker()() as session:
        with StatementLog(deployment.shard_map) as log, pytest.raises(RoutingError) as caught:
            session.execute(tags_from(where))
        session.commit()
    reason = (
        "INSERT ... SELECT into the sharded table tags: its rows are not routed one by one; "
        "all shards"
    )
    assert not isinstance(caught.value, ScatterQueryError)
    assert str(caught.value) == (
        f"INSERT ... SELECT reaches shards {', '.join(SHARDS)} ({reason}){INSERT_SELECT_ADVICE}"
    )
    assert writes(log) == []
    counts = deployment.count_rows()
    assert sum(counts[(shard, "tags")] for shard in SHARDS) == 0


def test_insert_select_into_a_sharded_table_pinned_with_set_shard_id_runs_there(
    deployment: Deployment,
) -> None:
    statement = tags_from(WeatherLocation.continent == "Europe").options(set_shard_id("europe"))
    with deployment.shard_map.sessionmaker()() as session:
        with session.recording_routes() as routes, StatementLog(deployment.shard_map) as log:
            session.execute(statement)
        session.commit()
    assert [(route.shards, route.reason) for route in routes] == [
        (("europe",), "set_shard_id('europe')")
    ]
    assert writes(log) == [("europe", "INSERT")]
    assert deployment.rows("europe", "tags", "location_id", "tags") == [
        (4, "London"),
        (5, "Dublin"),
    ]
    counts = deployment.count_rows()
    assert sum(counts[(shard, "tags")] for shard in SHARDS) == 2


@pytest.mark.parametrize(
    ("statement", "label"),
    [
        (
            tags_from(WeatherLocation.continent == "Europe").options(set_shard_id("europe")),
            "INSERT tags",
        ),
        (notes_from(WeatherLocation.continent == "Europe"), "INSERT notes"),
    ],
    ids=["sharded-pinned", "unsharded-routed"],
)
def test_route_label_of_an_insert_select(
    deployment: Deployment, statement: Any, label: str
) -> None:
    with deployment.shard_map.sessionmaker()() as session:
        with session.recording_routes() as routes:
            session.execute(statement)
        session.rollback()
    assert [route.statement for route in routes] == [label]


def test_insert_select_pinned_with_bind_arguments_runs_on_that_shard(
    deployment: Deployment,
) -> None:
    with deployment.shard_map.sessionmaker()() as session:
        with StatementLog(deployment.shard_map) as log:
            session.execute(
                tags_from(WeatherLocation.city.like("T%")),
                bind_arguments={"shard_id": "north_america"},
            )
        session.commit()
    assert writes(log) == [("north_america", "INSERT")]
    assert deployment.rows("north_america", "tags", "location_id", "tags") == [(3, "Toronto")]


def test_insert_select_into_a_table_sharded_independently_is_refused(
    deployment: Deployment,
) -> None:
    source = select(WeatherLocation.id, literal(1), WeatherLocation.id, literal("x")).where(
        WeatherLocation.continent == "Asia"
    )
    statement = insert(visits).from_select(["id", "visitor", "location_id", "note"], source)
    with deployment.shard_map.sessionmaker()() as session:
        try:
            with pytest.raises(RoutingError):
                session.execute(statement)
        finally:
            session.rollback()


# -- text() and statements the router cannot analyse ---------------------------------------------


def test_text_runs_on_every_shard_with_a_reason(deployment: Deployment) -> None:
    with (
        deployment.shard_map.sessionmaker()() as session,
        session.recording_routes() as routes,
        StatementLog(deployment.shard_map) as log,
    ):
        # concatenated when asked for: on several shards text is refused otherwise
        # (tests/test_textual_sql.py)
        statement = text("SELECT city FROM weather_locations")
        cities = session.scalars(statement.execution_options(cross_shard="concatenate")).all()
    assert sorted(cities) == sorted(city for _, _, city in _seed())
    assert [route.reason for route in routes] == ["TextClause cannot be analysed; all shards"]
    assert sorted(log.shards()) == sorted(SHARDS)


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        pytest.param(
            select(INNER.c.city).where(INNER.c.continent == "Europe"),
            ["Dublin", "London"],
            id="subquery",
        ),
        pytest.param(
            select(PLACES.c.city).where(PLACES.c.continent.in_(["Asia", "South America"])),
            ["Brasilia", "Quito", "Tokyo"],
            id="cte",
        ),
        pytest.param(
            select(WeatherLocation.city).where(
                WeatherLocation.continent == "North America",
                exists().where(Report.location_id == WeatherLocation.id, Report.temperature > 50),
            ),
            ["New York", "Toronto"],
            id="exists",
        ),
    ],
)
def test_subqueries_ctes_and_exists_run_on_the_routed_shards(
    deployment: Deployment, statement: Any, expected: list[str]
) -> None:
    with deployment.shard_map.sessionmaker(no_scatter=True)() as session:
        explained = session.explain(statement)
        with StatementLog(deployment.shard_map) as log:
            cities = session.execute(statement).scalars().all()
    assert sorted(cities) == expected
    assert not explained.scatter
    assert set(log.shards()) == set(explained.shards)


def test_subquery_over_a_table_sharded_independently_scatters_when_allowed(
    deployment: Deployment,
) -> None:
    statement = select(WeatherLocation.city).where(
        WeatherLocation.continent == "Asia",
        WeatherLocation.id.in_(select(visits.c.location_id)),
    )
    # per shard, the subquery would see that shard's visits only: refused
    with (
        deployment.shard_map.sessionmaker()() as session,
        pytest.raises(CrossShardQueryError, match="not co-located"),
    ):
        session.scalars(statement).all()
    concatenated = statement.execution_options(cross_shard="concatenate")
    with (
        deployment.shard_map.sessionmaker()() as session,
        session.recording_routes() as routes,
        StatementLog(deployment.shard_map) as log,
    ):
        assert session.scalars(concatenated).all() == []  # no visits anywhere
    assert len(routes) == 1
    assert names_both_shardings(routes[0].reason)
    assert sorted(log.shards()) == sorted(SHARDS)


def test_statement_label_of_text_in_the_scatter_error(shard_map: ShardMap) -> None:
    with (
        shard_map.sessionmaker(no_scatter=True)() as session,
        pytest.raises(ScatterQueryError) as caught,
    ):
        session.execute(text("SELECT 1"))
    assert caught.value.missing == []
    assert caught.value.tables == ["TEXTCLAUSE"]
