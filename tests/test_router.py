"""The router: statement + parameters -> route (shards + reason). Pure, no database."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    create_engine,
    delete,
    exists,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, aliased, mapped_column, relationship

from shardalchemy import FollowParent, Hash, Lookup, Range, Route, Router, ShardKey, shard_table
from shardalchemy.routing import route_statement, statement_label
from shardalchemy.sharding.rules import RuleBook

# shard-map order on purpose not alphabetical: routes keep shard-map order
SHARDS = ("europe", "asia", "africa")
CONTINENTS = {"Asia": "asia", "Europe": "europe", "Africa": "africa"}


class Base(DeclarativeBase):
    pass


class City(Base):
    __tablename__ = "cities"
    __sharding__ = ShardKey("continent", Lookup(CONTINENTS))
    id: Mapped[int] = mapped_column(primary_key=True)
    continent: Mapped[str | None] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(50))
    reports: Mapped[list[Report]] = relationship(back_populates="city")


class Report(Base):
    __tablename__ = "reports"
    __sharding__ = FollowParent("city")
    id: Mapped[int] = mapped_column(primary_key=True)
    city_id: Mapped[int] = mapped_column(ForeignKey("cities.id"))
    city: Mapped[City] = relationship(back_populates="reports")
    text: Mapped[str] = mapped_column(String(50))


class Setting(Base):
    """Not sharded, but with a column named like City's shard key."""

    __tablename__ = "settings"
    id: Mapped[int] = mapped_column(primary_key=True)
    continent: Mapped[str] = mapped_column(String(20))


core_metadata = MetaData()
events = shard_table(
    Table(
        "events",
        core_metadata,
        Column("id", Integer, primary_key=True),
        Column("tenant", Integer),
        Column("kind", String(20)),
    ),
    ShardKey("tenant", Hash(buckets=16)),
)
# the same split the RuleBook binds events' Hash() to, computed independently
EVENT_SHARDS = Hash(buckets=16, shards=SHARDS)

# a Range strategy on an integer key: (-inf, 100) europe, [100, 200) asia, [200, inf) africa
READING_SHARDS = Range([(None, "europe"), (100, "asia"), (200, "africa")])
readings = shard_table(
    Table(
        "readings",
        core_metadata,
        Column("id", Integer, primary_key=True),
        Column("sensor", Integer),
        Column("value", Integer),
    ),
    ShardKey("sensor", READING_SHARDS),
)

TEAMS = {"t-eu": "europe", "t-as": "asia", "t-af": "africa"}


class Team(Base):
    """A parent whose shard key is the column its followers refer to."""

    __tablename__ = "teams"
    __sharding__ = ShardKey("code", Lookup(TEAMS))
    code: Mapped[str] = mapped_column(String(10), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(20))
    players: Mapped[list[Player]] = relationship(back_populates="team")


class Player(Base):
    __tablename__ = "players"
    __sharding__ = FollowParent("team")
    id: Mapped[int] = mapped_column(primary_key=True)
    team_code: Mapped[str] = mapped_column(ForeignKey("teams.code"))
    score: Mapped[int | None]
    team: Mapped[Team] = relationship(back_populates="players")


class Tenant(Base):
    """Like Team, but sharded by a Hash declared without shards (bound by the RuleBook)."""

    __tablename__ = "tenants"
    __sharding__ = ShardKey("code", Hash(buckets=16))
    code: Mapped[str] = mapped_column(String(10), primary_key=True)
    orders: Mapped[list[Order]] = relationship(back_populates="tenant")


class Order(Base):
    __tablename__ = "orders"
    __sharding__ = FollowParent("tenant")
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_code: Mapped[str] = mapped_column(ForeignKey("tenants.code"))
    tenant: Mapped[Tenant] = relationship(back_populates="orders")


def route(statement: Any, parameters: Any = None) -> Route:
    """Route on a fresh RuleBook, as the first statement of a new session would be."""
    return route_statement(statement, parameters, RuleBook(SHARDS), SHARDS)


# -- equality and IN with literals ----------------------------------------------------------


def test_equality_with_a_literal_pins_one_shard() -> None:
    statement = select(City).where(City.continent == "Asia")
    result = route(statement)
    assert result.shards == ("asia",)
    assert result.reason == "City.continent = 'Asia' -> asia"
    assert statement_label(statement) == "SELECT cities"


def test_in_with_literals_pins_their_shards_in_shard_map_order() -> None:
    result = route(select(City).where(City.continent.in_(["Africa", "Europe"])))
    assert result.shards == ("europe", "africa")
    assert result.reason == "City.continent IN ('Africa', 'Europe') -> africa, europe"


def test_in_with_values_on_one_shard() -> None:
    result = route(select(City.name).where(City.continent.in_(["Asia", "Asia"])))
    assert result.shards == ("asia",)


def test_reversed_literal_equals_column() -> None:
    result = route(select(City).where(literal("Europe") == City.continent))
    assert result.shards == ("europe",)
    assert "City.continent = 'Europe'" in result.reason


def test_core_table_with_a_hash_key() -> None:
    for tenant in (0, 1, 7, 12345):
        result = route(select(events).where(events.c.tenant == tenant))
        expected = EVENT_SHARDS.shard_for(tenant)
        assert result.shards == (expected,)
        assert result.reason == f"events.tenant = {tenant} -> {expected}"


def test_core_table_in_spanning_every_shard() -> None:
    tenants = list(range(40))  # enough tenants to land on every shard
    result = route(select(events.c.id).where(events.c.tenant.in_(tenants)))
    assert {EVENT_SHARDS.shard_for(t) for t in tenants} == set(SHARDS)
    assert result.shards == SHARDS
    assert result.reason.startswith("events.tenant IN (0, 1, 2,")


# -- bound parameters given at execute time -------------------------------------------------


def test_named_bindparam_takes_its_value_from_the_parameters() -> None:
    statement = select(City).where(City.continent == bindparam("where"))
    assert route(statement, {"where": "Africa"}).shards == ("africa",)
    assert route(statement, {"where": "Europe"}).shards == ("europe",)
    assert route(statement, {"where": "Europe"}).reason == "City.continent = 'Europe' -> europe"


def test_named_bindparam_without_a_value_routes_to_every_shard() -> None:
    statement = select(City).where(City.continent == bindparam("where"))
    for parameters in (None, {}, {"other": "Asia"}):
        result = route(statement, parameters)
        assert result.shards == SHARDS
        assert result.reason == (
            "City.continent: its value is not given, so it does not prune; all shards"
        )


def test_expanding_bindparam_in_takes_a_list_from_the_parameters() -> None:
    statement = select(City).where(City.continent.in_(bindparam("places", expanding=True)))
    result = route(statement, {"places": ["Asia", "Africa"]})
    assert result.shards == ("asia", "africa")
    assert result.reason == "City.continent IN ('Asia', 'Africa') -> africa, asia"


def test_bindparam_default_is_overridden_by_the_parameters() -> None:
    statement = select(City).where(City.continent == bindparam("where", "Asia"))
    assert route(statement).shards == ("asia",)
    assert route(statement, {"where": "Europe"}).shards == ("europe",)


def test_bindparam_with_a_callable_value() -> None:
    statement = select(City).where(City.continent == bindparam("where", callable_=lambda: "Africa"))
    assert route(statement).shards == ("africa",)


def test_executemany_parameters_route_to_the_union_of_their_shards() -> None:
    statement = update(City).where(City.continent == bindparam("where")).values(name="x")
    result = route(statement, [{"where": "Asia"}, {"where": "Europe"}])
    assert result.shards == ("europe", "asia")
    assert result.reason == "City.continent = 'Asia' -> asia; City.continent = 'Europe' -> europe"


def test_executemany_with_a_parameter_set_missing_the_key_routes_to_every_shard() -> None:
    statement = update(City).where(City.continent == bindparam("where")).values(name="x")
    result = route(statement, [{"where": "Asia"}, {}])
    assert result.shards == SHARDS
    assert result.reason == (
        "City.continent = 'Asia' -> asia; "
        "City.continent: its value is not given, so it does not prune; all shards"
    )


def test_executemany_parameters_override_a_bindparam_default() -> None:
    statement = update(City).where(City.continent == bindparam("where", "Asia")).values(name="x")
    result = route(statement, [{"where": "Europe"}, {"where": "Africa"}])
    # every row gives its own value: the default's shard (asia) is not needed
    assert result.shards == ("europe", "africa")


def test_executemany_row_without_the_key_uses_the_bindparam_default() -> None:
    statement = update(City).where(City.continent == bindparam("where", "Asia")).values(name="x")
    result = route(statement, [{"where": "Europe"}, {}])
    assert result.shards == ("europe", "asia")


# -- AND groupings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where",
    [
        and_(City.name == "Tokyo", and_(City.id > 1, City.continent == "Asia")),
        (City.continent == "Asia") & (City.id > 0),
        and_(and_(and_(City.continent == "Asia"), City.id < 5), City.name.like("T%")),
        and_(City.continent == "Asia", or_(City.id == 1, City.id == 2)),
    ],
    ids=["nested", "operator", "deep", "with-or-sibling"],
)
def test_shard_key_inside_nested_and_groupings(where: Any) -> None:
    result = route(select(City).where(where))
    assert result.shards == ("asia",)
    assert result.reason == "City.continent = 'Asia' -> asia"


def test_several_where_calls_are_one_and() -> None:
    statement = select(City).where(City.id > 3).where(City.continent.in_(["Asia", "Europe"]))
    assert route(statement).shards == ("europe", "asia")


def test_two_predicates_intersect() -> None:
    statement = (
        select(City)
        .where(City.continent.in_(["Asia", "Europe"]))
        .where(City.continent.in_(["Europe", "Africa"]))
    )
    result = route(statement)
    assert result.shards == ("europe",)
    assert result.reason == (
        "City.continent IN ('Asia', 'Europe') -> asia, europe; "
        "City.continent IN ('Europe', 'Africa') -> africa, europe"
    )


def test_contradictory_predicates_run_on_the_first_shard_alone() -> None:
    # no row can match: one shard gives the (empty) answer, with the right columns
    statement = select(City).where(City.continent == "Asia", City.continent == "Europe")
    result = route(statement)
    assert result.shards == ("europe",)
    assert not result.scatter
    assert result.reason == (
        "City.continent = 'Asia' -> asia; City.continent = 'Europe' -> europe; "
        "no shard can match, running on europe alone"
    )


def test_empty_in_runs_on_the_first_shard_alone() -> None:
    result = route(select(City).where(City.continent.in_([])))
    assert result.shards == ("europe",)
    assert result.reason == (
        "City.continent IN () -> no shard; no shard can match, running on europe alone"
    )


def test_empty_expanding_in_runs_on_the_first_shard_alone() -> None:
    statement = select(City).where(City.continent.in_(bindparam("places", expanding=True)))
    result = route(statement, {"places": []})
    assert result.shards == ("europe",)
    assert result.reason == (
        "City.continent IN () -> no shard; no shard can match, running on europe alone"
    )


# -- what the router cannot prove goes everywhere -------------------------------------------


def test_no_where_clause() -> None:
    result = route(select(City))
    assert result.shards == SHARDS
    assert result.reason == "no WHERE clause; all shards"


def test_or_of_shard_key_predicates_is_the_union() -> None:
    statement = select(City).where(or_(City.continent == "Asia", City.continent == "Europe"))
    result = route(statement)
    assert result.shards == ("europe", "asia")
    assert not result.scatter
    assert result.reason == "City.continent = 'Asia' -> asia; City.continent = 'Europe' -> europe"


def test_or_with_a_branch_that_cannot_prune_goes_everywhere() -> None:
    result = route(select(City).where(or_(City.continent == "Asia", City.name == "Paris")))
    assert result.shards == SHARDS
    assert result.scatter
    assert result.reason == (
        "City.continent = 'Asia' -> asia; cities.name = :name_1 is not on a shard key; all shards"
    )


def test_and_or_at_any_depth() -> None:
    where = or_(
        and_(City.continent == "Asia", City.id > 1),
        and_(City.name == "x", or_(City.continent == "Africa", City.continent.in_(["Asia"]))),
    )
    result = route(select(City).where(where))
    assert result.shards == ("asia", "africa")
    assert result.reason == (
        "City.continent = 'Asia' -> asia; City.continent = 'Africa' -> africa; "
        "City.continent IN ('Asia',) -> asia"
    )


def test_and_inside_or_intersects_before_the_union() -> None:
    where = or_(
        and_(City.continent.in_(["Asia", "Europe"]), City.continent == "Europe"),
        City.continent == "Africa",
    )
    assert route(select(City).where(where)).shards == ("europe", "africa")


def test_double_negation_is_the_predicate_itself() -> None:
    result = route(select(City).where(~~and_(City.continent == "Asia", City.id > 0)))
    assert result.shards == ("asia",)
    assert result.reason == "City.continent = 'Asia' -> asia"


def test_text_statement_is_not_analysed() -> None:
    result = route(text("SELECT * FROM cities WHERE continent = 'Asia'"))
    assert result.shards == SHARDS
    assert result.scatter
    assert result.reason == "TextClause cannot be analysed; all shards"


def test_text_where_clause_is_not_analysed() -> None:
    result = route(select(City).where(text("continent = 'Asia'")))
    assert result.shards == SHARDS
    assert result.reason == "continent = 'Asia' is not a shard-key comparison; all shards"


def test_text_next_to_a_shard_key_predicate_does_not_stop_it_pruning() -> None:
    result = route(select(City).where(text("name = 'x'"), City.continent == "Asia"))
    assert result.shards == ("asia",)
    assert result.reason == "City.continent = 'Asia' -> asia"


def test_insert_is_not_analysed() -> None:
    statement = insert(City).values(continent="Asia", name="Tokyo")
    result = route(statement)
    assert result.shards == SHARDS
    assert result.reason == "INSERT is routed by its rows, not analysed here; all shards"
    assert statement_label(statement) == "INSERT cities"


@pytest.mark.parametrize(
    ("where", "why"),
    [
        (
            City.continent != "Asia",
            "cities.continent != :continent_1 is not a shard-key comparison",
        ),
        (
            ~(City.continent == "Asia"),
            "cities.continent != :continent_1 is not a shard-key comparison",
        ),
        (
            ~City.continent.in_(["Asia"]),
            "(cities.continent NOT IN (__[POSTCOMPILE_continent_1])) is not a shard-key comparison",
        ),
        (
            ~and_(City.continent == "Asia", City.id == 1),
            "NOT ...: rows with other values may be on any shard",
        ),
        (
            ~or_(City.continent == "Asia", City.continent == "Europe"),
            "NOT ...: rows with other values may be on any shard",
        ),
        (
            City.continent > "Asia",
            "City.continent > 'Asia': string order depends on the collation, so it does not prune",
        ),
        (
            City.continent.between("Africa", "Europe"),
            "City.continent BETWEEN 'Africa' AND 'Europe': string order depends on the collation, "
            "so it does not prune",
        ),
        (
            City.continent.like("As%"),
            "cities.continent LIKE :continent_1 is not a shard-key comparison",
        ),
        (City.continent.is_not(None), "cities.continent IS NOT NULL is not a shard-key comparison"),
        (
            func.lower(City.continent) == "asia",
            "lower(cities.continent) = :lower_1 is not on a shard key",
        ),
        (
            City.continent == City.name,
            "cities.continent = cities.name does not compare with a value",
        ),
        (
            City.continent == select(Setting.continent).scalar_subquery(),
            "cities.continent = (SELECT settings.continent FROM settings) "
            "does not compare with a value",
        ),
        (
            City.continent.in_(select(Setting.continent)),
            "City.continent IN (subquery) does not prune",
        ),
        (
            tuple_(City.id, City.name).in_([(1, "x")]),
            "(cities.id, cities.name) IN (__[POSTCOMPILE_param_1]): no shard key in the tuple",
        ),
    ],
    ids=[
        "not-equal",
        "negated-equal",
        "not-in",
        "negated-and",
        "negated-or",
        "greater",
        "between",
        "like",
        "is-not-null",
        "function",
        "column-to-column",
        "scalar-subquery",
        "in-subquery",
        "tuple-in-without-key",
    ],
)
def test_other_comparisons_do_not_prune(where: Any, why: str) -> None:
    result = route(select(City).where(where))
    assert result.shards == SHARDS
    assert result.scatter
    assert result.reason == f"{why}; all shards"


def test_same_named_column_of_an_unsharded_table_does_not_prune() -> None:
    result = route(select(Setting).where(Setting.continent == "Asia"))
    assert result.shards == SHARDS
    assert result.reason == "settings.continent = :continent_1 is not on a shard key; all shards"


def test_shard_key_predicate_inside_exists_does_not_prune() -> None:
    statement = select(Setting).where(exists().where(City.continent == "Asia"))
    assert route(statement).shards == SHARDS


# -- unmapped values and NULL ---------------------------------------------------------------


@pytest.mark.parametrize(
    "where",
    [City.continent == "Atlantis", City.continent.in_(["Asia", "Atlantis"])],
    ids=["equal", "in"],
)
def test_unmapped_values_do_not_prune(where: Any) -> None:
    # the database may compare differently (collations): an unmapped value proves nothing
    result = route(select(City).where(where))
    assert result.shards == SHARDS


def test_reason_for_an_unmapped_value_names_the_predicate() -> None:
    result = route(select(City).where(City.continent == "Atlantis"))
    assert "Atlantis" in result.reason


def test_unmapped_value_does_not_stop_another_predicate_from_pruning() -> None:
    statement = select(City).where(City.continent == "Atlantis", City.continent == "Africa")
    result = route(statement)
    assert result.shards == ("africa",)
    # under an AND that prunes, the predicate that could not prune is left out of the reason
    assert result.reason == "City.continent = 'Africa' -> africa"
    tree = Router(RuleBook(SHARDS), SHARDS).explain(statement).explanation
    assert tree is not None
    assert [child.text for child in tree.children] == [
        "City.continent = 'Atlantis': 'Atlantis' is not mapped by the strategy, so it does not "
        "prune",
        "City.continent = 'Africa'",
    ]


def test_equals_none_is_is_null_and_no_row_has_a_null_shard_key() -> None:
    # the session refuses rows without a shard key, so IS NULL on the key matches nothing
    result = route(select(City).where(City.continent == None))  # noqa: E711
    assert result.shards == ("europe",)
    assert result.reason == (
        "City.continent IS NULL: no row has a NULL shard key -> no shard; "
        "no shard can match, running on europe alone"
    )


def test_is_null_or_a_key_value_routes_to_that_value() -> None:
    result = route(select(City).where(or_(City.continent.is_(None), City.continent == "Asia")))
    assert result.shards == ("asia",)


def test_is_null_on_the_outer_side_of_an_outer_join_does_not_prune() -> None:
    statement = select(Report).select_from(
        Report.__table__.outerjoin(City.__table__, Report.city_id == City.id)
    )
    result = route(statement.where(City.continent.is_(None)))
    assert result.shards == SHARDS
    assert result.reason == (
        "City.continent IS NULL: an outer join can produce NULL keys; all shards"
    )


def test_bound_none_matches_no_row_and_runs_on_the_first_shard_alone() -> None:
    statement = select(City).where(City.continent == bindparam("where"))
    result = route(statement, {"where": None})
    assert result.shards == ("europe",)
    assert result.reason == (
        "City.continent = None -> no shard; no shard can match, running on europe alone"
    )


def test_none_inside_in_is_ignored() -> None:
    result = route(select(City).where(City.continent.in_(["Europe", None])))
    assert result.shards == ("europe",)
    assert result.reason == "City.continent IN ('Europe', None) -> europe"


def test_string_compared_with_an_integer_hash_key_does_not_miss_its_row() -> None:
    tenant = next(
        t for t in range(100) if EVENT_SHARDS.shard_for(t) != EVENT_SHARDS.shard_for(str(t))
    )
    result = route(select(events).where(events.c.tenant == str(tenant)))
    assert EVENT_SHARDS.shard_for(tenant) in result.shards


# -- aliases, subqueries, unions, joins -----------------------------------------------------


def test_predicate_on_an_aliased_entity() -> None:
    city = aliased(City)
    result = route(select(city).where(city.continent == "Africa"))
    assert result.shards == ("africa",)
    assert result.reason == "City.continent = 'Africa' -> africa"


def test_predicate_on_an_aliased_core_table() -> None:
    alias = events.alias("e")
    result = route(select(alias).where(alias.c.tenant == 3))
    assert result.shards == (EVENT_SHARDS.shard_for(3),)
    assert "events.tenant = 3" in result.reason


def test_subquery_column_that_projects_the_shard_key() -> None:
    inner = select(City.id, City.continent.label("where")).subquery()
    result = route(select(inner).where(inner.c["where"] == "Europe"))
    assert result.shards == ("europe",)
    assert result.reason == "City.continent = 'Europe' -> europe"


def test_subquery_column_that_projects_another_column_does_not_prune() -> None:
    inner = select(City.id, City.name.label("where")).subquery()
    assert route(select(inner).where(inner.c["where"] == "Europe")).shards == SHARDS


def test_union_mixing_the_shard_key_with_another_column_does_not_prune() -> None:
    mixed = union_all(
        select(City.continent.label("place")), select(City.name.label("place"))
    ).subquery()
    result = route(select(mixed).where(mixed.c.place == "Europe"))
    assert result.shards == SHARDS
    assert result.reason == "anon_1.place = :place_1 is not on a shard key; all shards"


def test_union_mixing_the_shard_key_with_an_unsharded_column_does_not_prune() -> None:
    mixed = union_all(
        select(City.continent.label("place")), select(Setting.continent.label("place"))
    ).subquery()
    assert route(select(mixed).where(mixed.c.place == "Europe")).shards == SHARDS


def test_union_of_the_shard_key_with_itself_prunes() -> None:
    same = union_all(
        select(City.continent.label("place")).where(City.id < 10),
        select(City.continent.label("place")).where(City.id > 100),
    ).subquery()
    assert route(select(same).where(same.c.place == "Europe")).shards == ("europe",)


@pytest.mark.parametrize(
    "other",
    [
        func.lower(City.name),
        literal_column("'Europe'"),
        literal("Europe"),
    ],
    ids=["function", "literal-column", "literal"],
)
def test_union_mixing_the_shard_key_with_an_expression_does_not_prune(other: Any) -> None:
    # rows whose place is 'Europe' because of the second branch exist on every shard
    mixed = union_all(
        select(City.continent.label("place")),
        select(other.label("place")).select_from(City),
    ).subquery()
    assert route(select(mixed).where(mixed.c.place == "Europe")).shards == SHARDS


def test_join_from_a_follower_filtered_on_its_parents_key_prunes() -> None:
    statement = select(Report).join(Report.city).where(City.continent == "Asia")
    result = route(statement)
    assert result.shards == ("asia",)
    assert result.reason == "City.continent = 'Asia' -> asia"


def test_join_from_the_parent_filtered_on_its_key_prunes() -> None:
    statement = (
        select(City.name, Report.text)
        .join(City.reports)
        .where(City.continent.in_(["Asia", "Europe"]), Report.text != "")
    )
    assert route(statement).shards == ("europe", "asia")


def test_follower_filtered_on_its_own_columns_goes_everywhere() -> None:
    # reports.city_id refers to cities.id, which does not determine the shard
    result = route(select(Report).where(Report.city_id == 3))
    assert result.shards == SHARDS
    assert result.reason == "reports.city_id = :city_id_1 is not on a shard key; all shards"


def test_statement_label_of_subqueries_and_joins_is_readable() -> None:
    inner = select(City.continent).subquery()
    assert statement_label(select(inner).where(inner.c.continent == "Asia")) == "SELECT cities"
    joined = select(Report).join(Report.city).where(City.continent == "Asia")
    assert statement_label(joined) == "SELECT reports, cities"
    assert statement_label(select(City).join(City.reports)) == "SELECT cities, reports"


# -- tuple IN, ranges, followers by foreign key ---------------------------------------------


def test_tuple_in_prunes_on_the_shard_key_position() -> None:
    statement = select(City).where(
        tuple_(City.id, City.continent).in_([(1, "Asia"), (2, "Europe")])
    )
    result = route(statement)
    assert result.shards == ("europe", "asia")
    assert result.reason == "City.continent IN ('Asia', 'Europe') -> asia, europe"


def test_tuple_in_with_an_expanding_bindparam() -> None:
    statement = select(City).where(
        tuple_(City.continent, City.id).in_(bindparam("pairs", expanding=True))
    )
    result = route(statement, {"pairs": [("Africa", 1), ("Africa", 2)]})
    assert result.shards == ("africa",)
    assert result.reason == "City.continent IN ('Africa', 'Africa') -> africa"


def test_tuple_in_with_an_unmapped_key_value_does_not_prune() -> None:
    result = route(select(City).where(tuple_(City.continent, City.id).in_([("Atlantis", 1)])))
    assert result.shards == SHARDS
    assert result.reason == (
        "City.continent IN ('Atlantis',): 'Atlantis' is not mapped by the strategy, so it does "
        "not prune; all shards"
    )


@pytest.mark.parametrize(
    ("where", "shards", "reason"),
    [
        (
            readings.c.sensor.between(50, 150),
            ("europe", "asia"),
            "readings.sensor BETWEEN 50 AND 150 -> asia, europe",
        ),
        (readings.c.sensor < 100, ("europe",), "readings.sensor < 100 -> europe"),
        (readings.c.sensor <= 100, ("europe", "asia"), "readings.sensor <= 100 -> asia, europe"),
        (readings.c.sensor > 199, ("asia", "africa"), "readings.sensor > 199 -> africa, asia"),
        (readings.c.sensor >= 200, ("africa",), "readings.sensor >= 200 -> africa"),
        (literal(200) <= readings.c.sensor, ("africa",), "readings.sensor >= 200 -> africa"),
        (literal(100) > readings.c.sensor, ("europe",), "readings.sensor < 100 -> europe"),
        (
            and_(readings.c.sensor >= 100, readings.c.sensor < 200),
            ("asia",),
            "readings.sensor >= 100 -> africa, asia; readings.sensor < 200 -> asia, europe",
        ),
        (
            or_(readings.c.sensor < 0, readings.c.sensor == 250),
            ("europe", "africa"),
            "readings.sensor < 0 -> europe; readings.sensor = 250 -> africa",
        ),
        (
            and_(readings.c.sensor > 300, readings.c.sensor < 10),
            ("europe",),
            "readings.sensor > 300 -> africa; readings.sensor < 10 -> europe; "
            "no shard can match, running on europe alone",
        ),
        (
            readings.c.sensor.between(150, 120),
            ("europe",),
            "readings.sensor BETWEEN 150 AND 120 -> no shard; "
            "no shard can match, running on europe alone",
        ),
    ],
    ids=[
        "between",
        "lt",
        "le-on-a-bound",
        "gt",
        "ge",
        "reversed-le",
        "reversed-gt",
        "and-of-ranges",
        "or-of-ranges",
        "disjoint-ranges",
        "empty-between",
    ],
)
def test_range_strategy_prunes_ranges(where: Any, shards: tuple[str, ...], reason: str) -> None:
    result = route(select(readings).where(where))
    assert result.shards == shards
    assert result.reason == reason


def test_range_bounds_given_at_execute_time() -> None:
    statement = select(readings).where(
        readings.c.sensor.between(bindparam("low"), bindparam("high"))
    )
    result = route(statement, {"low": 150, "high": 250})
    assert result.shards == ("asia", "africa")
    assert result.reason == "readings.sensor BETWEEN 150 AND 250 -> africa, asia"
    assert route(statement, {"low": 150}).shards == SHARDS


def test_range_compared_with_another_type_does_not_prune() -> None:
    result = route(select(readings).where(readings.c.sensor < 99.5))
    assert result.shards == SHARDS
    assert result.reason == (
        "readings.sensor < 99.5: 99.5 is not a int, so it does not prune; all shards"
    )


def test_range_on_a_hash_key_does_not_prune() -> None:
    result = route(select(events).where(events.c.tenant > 3))
    assert result.shards == SHARDS
    assert result.reason == "events.tenant > 3: hash (16 buckets) cannot prune a range; all shards"


def test_follower_filtered_by_its_foreign_key_to_the_parents_shard_key() -> None:
    result = route(select(Player).where(Player.team_code == "t-as"))
    assert result.shards == ("asia",)
    assert result.reason == "Player.team_code (= Team.code) = 't-as' -> asia"
    result = route(select(Player.id).where(Player.team_code.in_(["t-af", "t-eu"])))
    assert result.shards == ("europe", "africa")
    assert result.reason == "Player.team_code (= Team.code) IN ('t-af', 't-eu') -> africa, europe"


def test_follower_joined_to_its_parent_filtered_on_the_parents_key() -> None:
    statement = select(Player, Team).join(Player.team).where(Team.code == "t-eu")
    result = route(statement)
    assert result.shards == ("europe",)
    assert result.reason == "Team.code = 't-eu' -> europe"


def test_follower_filtered_by_its_foreign_key_inside_a_join() -> None:
    statement = select(Team.name).join(Team.players).where(Player.team_code == "t-af")
    assert route(statement).shards == ("africa",)


def test_cte_column_that_projects_the_shard_key() -> None:
    cte = select(City.id, City.continent).where(City.name != "x").cte("places")
    result = route(select(cte).where(cte.c.continent.in_(["Asia", "Africa"])))
    assert result.shards == ("asia", "africa")
    assert result.reason == "City.continent IN ('Asia', 'Africa') -> africa, asia"


def test_exists_next_to_a_shard_key_predicate_routes_by_the_outer_predicate() -> None:
    statement = select(City).where(
        City.continent == "Asia", exists().where(Report.city_id == City.id)
    )
    result = route(statement)
    assert result.shards == ("asia",)
    assert result.reason == "City.continent = 'Asia' -> asia"


def test_exists_alone_does_not_prune() -> None:
    statement = select(City).where(exists().where(Report.city_id == City.id))
    result = route(statement)
    assert result.shards == SHARDS
    assert result.reason == "EXISTS (...) does not restrict the outer shard key; all shards"


@pytest.mark.parametrize(
    "statement",
    [
        select(City).where(City.continent == "Asia", City.id.in_(select(events.c.tenant))),
        select(City)
        .join(events, events.c.tenant == City.id)
        .where(City.continent == "Asia", events.c.tenant == 1),
        select(City).where(City.continent == "Asia", exists().where(events.c.tenant == City.id)),
    ],
    ids=["in-subquery", "join", "exists"],
)
def test_tables_sharded_independently_scatter_and_the_reason_names_both(statement: Any) -> None:
    result = route(statement)
    assert result.shards == SHARDS
    assert result.scatter
    assert result.reason == (
        "reads tables sharded independently of each other (cities; events): each shard can "
        "only combine its own rows; all shards"
    )


def test_union_routes_to_the_union_of_its_selects() -> None:
    statement = union_all(
        select(City.id).where(City.continent == "Asia"),
        select(City.id).where(City.continent == "Europe"),
    )
    result = route(statement)
    assert result.shards == ("europe", "asia")
    assert result.reason == "City.continent = 'Asia' -> asia; City.continent = 'Europe' -> europe"


def test_union_with_a_select_without_where_goes_everywhere() -> None:
    statement = union_all(select(City.id).where(City.continent == "Asia"), select(City.id))
    result = route(statement)
    assert result.shards == SHARDS
    assert result.reason == "a SELECT of the UNION has no WHERE clause; all shards"


def test_insert_from_select_into_an_unsharded_table_routes_like_its_select() -> None:
    source = select(City.id, City.name).where(City.continent == "Asia")
    result = route(insert(Setting).from_select(["id", "continent"], source))
    assert result.shards == ("asia",)
    assert not result.scatter
    assert result.reason == "City.continent = 'Asia' -> asia"
    everywhere = route(insert(Setting).from_select(["id", "continent"], select(City.id, City.name)))
    assert everywhere.shards == SHARDS
    assert everywhere.scatter
    assert everywhere.reason == "INSERT ... SELECT: no WHERE clause; all shards"


@pytest.mark.parametrize("where", [City.continent == "Asia", None], ids=["one-shard", "no-where"])
def test_insert_from_select_into_a_sharded_table_is_not_routed_by_its_select(where: Any) -> None:
    source = select(City.id, City.name)
    if where is not None:
        source = source.where(where)
    result = route(insert(Report).from_select(["city_id", "text"], source))
    assert result.shards == SHARDS
    assert result.scatter
    assert result.reason == (
        "INSERT ... SELECT into the sharded table reports: its rows are not routed one by one; "
        "all shards"
    )


def test_route_equality_compares_shards_reason_and_statement() -> None:
    first = Route(("asia",), "why")
    assert first == Route(("asia",), lambda: "why")
    assert first != Route(("asia",), "other")
    assert first != Route(("europe",), "why")
    assert first.labelled("SELECT cities") != first
    assert first.__eq__("asia") is NotImplemented
    with pytest.raises(TypeError):
        hash(first)


def test_reason_is_computed_lazily_and_once() -> None:
    calls: list[int] = []

    def why() -> str:
        calls.append(1)
        return "computed"

    lazy = Route(("asia",), why)
    assert calls == []
    assert lazy.reason == lazy.reason == "computed"
    assert calls == [1]


# -- regressions: bugs found while testing, now fixed ----------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        select(Team).outerjoin(Team.players).where(Player.team_code.is_(None)),
        select(Team.code)
        .outerjoin(Player, Player.team_code == Team.code)
        .where(Player.team_code.is_(None)),
    ],
    ids=["relationship", "onclause"],
)
def test_is_null_under_select_outerjoin_does_not_prune(statement: Any) -> None:
    # teams without players exist on every shard
    assert route(statement).shards == SHARDS


def test_between_symmetric_is_not_an_empty_range() -> None:
    result = route(select(readings).where(readings.c.sensor.between(200, 100, symmetric=True)))
    assert result.shards == SHARDS
    assert result.reason == "readings.sensor BETWEEN SYMMETRIC is not pruned; all shards"


def test_execute_time_value_of_an_anonymous_bind_by_its_compiled_name() -> None:
    statement = select(events).where(events.c.tenant == 1)
    other = next(t for t in range(2, 100) if EVENT_SHARDS.shard_for(t) != EVENT_SHARDS.shard_for(1))
    assert EVENT_SHARDS.shard_for(other) in route(statement, {"tenant_1": other}).shards


def test_follower_joined_to_a_parent_sharded_by_an_unbound_hash_prunes() -> None:
    statement = select(Order).join(Order.tenant).where(Tenant.code == "acme")
    expected = Hash(buckets=16, shards=SHARDS).shard_for("acme")
    assert route(statement).shards == (expected,)


def test_reason_for_a_range_bound_not_given_is_readable() -> None:
    statement = select(readings).where(
        readings.c.sensor.between(bindparam("low"), bindparam("high"))
    )
    result = route(statement, {"low": 150})
    assert result.shards == SHARDS
    assert result.reason == (
        "readings.sensor BETWEEN 150 AND '?': a bound is not given, so it does not prune; "
        "all shards"
    )


# a Range strategy on a string key: its order is the database collation's, not Python's
names = shard_table(
    Table(
        "names",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("name", String(20)),
    ),
    ShardKey("name", Range([(None, "europe"), ("m", "asia")])),
)


@pytest.mark.parametrize(
    ("where", "described"),
    [
        (names.c.name < "c", "names.name < 'c'"),
        (names.c.name.between("n", "p"), "names.name BETWEEN 'n' AND 'p'"),
    ],
    ids=["less", "between"],
)
def test_string_range_on_a_range_strategy_does_not_prune(where: Any, described: str) -> None:
    result = route(select(names).where(where))
    assert result.shards == SHARDS
    assert result.scatter
    assert result.reason == (
        f"{described}: string order depends on the collation, so it does not prune; all shards"
    )


# -- UPDATE and DELETE ----------------------------------------------------------------------


def test_orm_update_filtered_on_the_shard_key() -> None:
    statement = update(City).where(City.continent == "Europe").values(name="Paris")
    result = route(statement)
    assert result.shards == ("europe",)
    assert result.reason == "City.continent = 'Europe' -> europe"
    assert statement_label(statement) == "UPDATE cities"


def test_orm_delete_filtered_on_the_shard_key_with_a_bindparam() -> None:
    statement = delete(City).where(City.continent.in_(bindparam("places", expanding=True)))
    result = route(statement, {"places": ["Africa"]})
    assert result.shards == ("africa",)
    assert statement_label(statement) == "DELETE cities"


def test_core_update_and_delete() -> None:
    target = EVENT_SHARDS.shard_for(42)
    update_statement = update(events).where(events.c.tenant == 42).values(kind="x")
    updated = route(update_statement)
    deleted = route(delete(events).where(events.c.tenant == 42))
    assert updated.shards == deleted.shards == (target,)
    assert statement_label(update_statement) == "UPDATE events"
    assert deleted.reason == f"events.tenant = 42 -> {target}"


def test_update_and_delete_without_where_go_everywhere() -> None:
    for statement in (update(City).values(name="x"), delete(events)):
        result = route(statement)
        assert result.shards == SHARDS
        assert result.reason == "no WHERE clause; all shards"


# -- Route ----------------------------------------------------------------------------------


def test_route_iterates_over_its_shards() -> None:
    result = route(select(City).where(City.continent.in_(["Asia", "Africa"])))
    assert list(result) == ["asia", "africa"]
    assert len(result) == 2


def test_rulebook_cache_gives_the_same_answer_twice() -> None:
    rules = RuleBook(SHARDS)
    statement = select(City).where(City.continent == "Asia")
    first = route_statement(statement, {}, rules, SHARDS)
    second = route_statement(statement, {}, rules, SHARDS)
    assert first == second
    assert first.shards == ("asia",)


# -- properties -----------------------------------------------------------------------------

VALUES = ["Asia", "Europe", "Africa", "Atlantis", None]
NAMES = ["Tokyo", "Paris"]

predicate_specs = st.one_of(
    st.tuples(st.just("eq"), st.sampled_from(VALUES)),
    st.tuples(st.just("reversed"), st.sampled_from(VALUES[:4])),
    st.tuples(st.just("bound"), st.sampled_from(VALUES)),
    st.tuples(st.just("in"), st.lists(st.sampled_from(VALUES), max_size=4)),
    st.tuples(st.just("bound_in"), st.lists(st.sampled_from(VALUES[:4]), max_size=4)),
    st.tuples(st.just("ne"), st.sampled_from(VALUES[:4])),
    st.tuples(st.just("or"), st.tuples(st.sampled_from(VALUES[:4]), st.sampled_from(VALUES[:4]))),
    st.tuples(st.just("or_name"), st.tuples(st.sampled_from(VALUES[:4]), st.sampled_from(NAMES))),
    st.tuples(st.just("name"), st.sampled_from(NAMES)),
)


def _build(specs: Sequence[tuple[str, Any]]) -> tuple[list[Any], dict[str, Any]]:
    clauses: list[Any] = []
    parameters: dict[str, Any] = {}
    for number, (kind, argument) in enumerate(specs):
        key = f"p{number}"
        if kind == "eq":
            clauses.append(City.continent == argument)
        elif kind == "reversed":
            clauses.append(literal(argument) == City.continent)
        elif kind == "bound":
            clauses.append(City.continent == bindparam(key))
            parameters[key] = argument
        elif kind == "in":
            clauses.append(City.continent.in_(argument))
        elif kind == "bound_in":
            clauses.append(City.continent.in_(bindparam(key, expanding=True)))
            parameters[key] = argument
        elif kind == "ne":
            clauses.append(City.continent != argument)
        elif kind == "or":
            clauses.append(or_(City.continent == argument[0], City.continent == argument[1]))
        elif kind == "or_name":
            clauses.append(or_(City.continent == argument[0], City.name == argument[1]))
        else:
            clauses.append(City.name == argument)
    return clauses, parameters


def _matches(row: Mapping[str, str], kind: str, argument: Any) -> bool:
    """SQL semantics of one conjunct for a stored row (NULL compares to nothing)."""
    continent = row["continent"]
    if kind in ("eq", "reversed", "bound"):
        return argument is not None and continent == argument
    if kind in ("in", "bound_in"):
        return continent in [value for value in argument if value is not None]
    if kind == "ne":
        return continent != argument
    if kind == "or":
        return continent in argument
    if kind == "or_name":
        return continent == argument[0] or row["name"] == argument[1]
    return row["name"] == argument


# every row a shard can hold: its continent maps to a shard
ROWS = [
    {"continent": continent, "name": name}
    for continent, name in itertools.product(CONTINENTS, NAMES)
]


@given(specs=st.lists(predicate_specs, min_size=1, max_size=4))
def test_route_never_misses_a_matching_row(specs: list[tuple[str, Any]]) -> None:
    clauses, parameters = _build(specs)
    result = route(select(City).where(*clauses), parameters)
    assert result.shards, "a route always has shards"
    assert set(result.shards) <= set(SHARDS)
    assert list(result.shards) == [s for s in SHARDS if s in result.shards]
    for row in ROWS:
        if all(_matches(row, kind, argument) for kind, argument in specs):
            assert CONTINENTS[row["continent"]] in result.shards, (row, result)


@given(
    specs=st.lists(
        st.one_of(
            st.tuples(st.just("eq"), st.sampled_from(list(CONTINENTS))),
            st.tuples(
                st.just("in"), st.lists(st.sampled_from(list(CONTINENTS)), min_size=1, max_size=3)
            ),
            st.tuples(st.just("bound"), st.sampled_from(list(CONTINENTS))),
            st.tuples(st.just("name"), st.sampled_from(NAMES)),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_route_is_exact_for_mapped_equalities(specs: list[tuple[str, Any]]) -> None:
    clauses, parameters = _build(specs)
    result = route(select(City).where(*clauses), parameters)
    key_specs = [(kind, argument) for kind, argument in specs if kind != "name"]
    possible = {
        CONTINENTS[continent]
        for continent in CONTINENTS
        if all(_matches({"continent": continent, "name": ""}, k, a) for k, a in key_specs)
    }
    if not key_specs:
        assert result.shards == SHARDS
        assert result.scatter
    elif not possible:
        # a contradiction: no row matches, so the first shard alone answers
        assert result.shards == SHARDS[:1]
        assert result.reason.endswith(f"; no shard can match, running on {SHARDS[0]} alone")
    else:
        assert set(result.shards) == possible
    for kind, argument in key_specs:
        shown = repr(argument) if kind != "in" else repr(tuple(argument))
        assert shown in result.reason


@given(
    alternatives=st.lists(
        st.lists(st.sampled_from(list(CONTINENTS)), min_size=1, max_size=2), min_size=1, max_size=3
    )
)
def test_route_of_an_or_of_mapped_equalities_is_exact(alternatives: list[list[str]]) -> None:
    where = or_(*(City.continent.in_(values) for values in alternatives))
    result = route(select(City).where(where))
    expected = {CONTINENTS[value] for values in alternatives for value in values}
    assert set(result.shards) == expected


# Predicate trees with AND, OR, NOT, NULLs, ranges and bound parameters, over every kind of
# shard key in this module, checked against SQL's three-valued logic on every row a shard can
# hold: each row the WHERE clause accepts must be on a routed shard.


@dataclasses.dataclass(frozen=True)
class Target:
    """A sharded table for the tree property: where its rows live and what to compare."""

    name: str
    source: Any  # what to select from
    key: Any  # the column whose value places a row (a shard key or a follower's foreign key)
    other: Any  # a column that does not place rows
    keys: tuple[Any, ...]  # shard-key values rows can have
    probes: tuple[Any, ...]  # extra values predicates compare with (unmapped, NULL)
    others: tuple[Any, ...]
    shard_of: Callable[[Any], str]


TARGETS = {
    "lookup": Target(
        "lookup",
        City,
        City.continent,
        City.name,
        tuple(CONTINENTS),
        ("Atlantis", None),
        ("Tokyo", "Paris", None),
        CONTINENTS.__getitem__,
    ),
    "hash": Target(
        "hash",
        events,
        events.c.tenant,
        events.c.kind,
        (0, 1, 2, 3, 4, 5, 6, 7),
        (-1, None),
        ("a", "b", None),
        EVENT_SHARDS.shard_for,  # type: ignore[arg-type]
    ),
    "range": Target(
        "range",
        readings,
        readings.c.sensor,
        readings.c.value,
        (-5, 0, 99, 100, 101, 150, 199, 200, 250),
        (None,),
        (1, 2, None),
        READING_SHARDS.shard_for,  # type: ignore[arg-type]
    ),
    "follower": Target(
        "follower",
        Player,
        Player.team_code,
        Player.score,
        tuple(TEAMS),
        ("t-xx", None),
        (1, 2, None),
        TEAMS.__getitem__,
    ),
}

_DEFAULT_NAMES = itertools.count()  # bindparams with a default value need distinct names

COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "=": operator.eq,
    "!=": operator.ne,
}


@functools.cache
def _trees(target: Target) -> st.SearchStrategy[Any]:
    value = st.sampled_from(target.keys + target.probes)
    known = st.sampled_from(target.keys + tuple(p for p in target.probes if p is not None))
    other = st.sampled_from(target.others)
    order = st.sampled_from(["<", "<=", ">", ">="])
    leaves = st.one_of(
        st.tuples(st.just("eq"), value),
        st.tuples(st.just("reversed_eq"), known),
        st.tuples(st.just("bound_eq"), value),
        st.tuples(st.just("default_eq"), value),
        st.tuples(st.just("in"), st.lists(value, max_size=3)),
        st.tuples(st.just("bound_in"), st.lists(value, max_size=3)),
        st.tuples(st.just("tuple_in"), st.lists(st.tuples(value, other), max_size=3)),
        st.tuples(st.just("not_in"), st.lists(known, max_size=3)),
        st.tuples(st.just("ne"), known),
        st.tuples(st.just("is_null")),
        st.tuples(st.just("is_not_null")),
        st.tuples(st.just("between"), known, known),
        st.tuples(st.just("bound_between"), known, known),
        st.tuples(st.just("compare"), order, known),
        st.tuples(st.just("reversed_compare"), order, known),
        st.tuples(st.just("bound_compare"), order, known),
        st.tuples(st.just("other_eq"), other),
        st.tuples(st.just("other_ne"), other),
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.tuples(st.just("and"), st.lists(children, min_size=1, max_size=3)),
            st.tuples(st.just("or"), st.lists(children, min_size=1, max_size=3)),
            st.tuples(st.just("not"), children),
        ),
        max_leaves=8,
    )


def _clause(tree: Any, target: Target, parameters: dict[str, Any]) -> Any:
    """The SQLAlchemy clause of a tree; bound values go into ``parameters``."""
    kind, *arguments = tree
    key, other = target.key, target.other

    def bound(value: Any, **options: Any) -> Any:
        name = f"p{len(parameters)}"
        parameters[name] = value
        return bindparam(name, **options)

    if kind == "and":
        return and_(*(_clause(child, target, parameters) for child in arguments[0]))
    if kind == "or":
        return or_(*(_clause(child, target, parameters) for child in arguments[0]))
    if kind == "not":
        return ~_clause(arguments[0], target, parameters)
    if kind == "eq":
        return key == arguments[0]  # == None is IS NULL
    if kind == "reversed_eq":
        return literal(arguments[0]) == key
    if kind == "bound_eq":
        return key == bound(arguments[0])  # None stays "= NULL"
    if kind == "default_eq":
        return key == bindparam(f"d{next(_DEFAULT_NAMES)}", arguments[0], type_=key.type)
    if kind == "in":
        return key.in_(arguments[0])
    if kind == "bound_in":
        return key.in_(bound(arguments[0], expanding=True))
    if kind == "tuple_in":
        return tuple_(key, other).in_(arguments[0])
    if kind == "not_in":
        return key.not_in(arguments[0])
    if kind == "ne":
        return key != arguments[0]
    if kind == "is_null":
        return key.is_(None)
    if kind == "is_not_null":
        return key.is_not(None)
    if kind == "between":
        return key.between(arguments[0], arguments[1])
    if kind == "bound_between":
        return key.between(bound(arguments[0]), bound(arguments[1]))
    if kind in ("compare", "reversed_compare", "bound_compare"):
        symbol, value = arguments
        compare = COMPARISONS[symbol]
        if kind == "compare":
            return compare(key, value)
        if kind == "bound_compare":
            return compare(key, bound(value))
        flipped = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}[symbol]
        return COMPARISONS[flipped](literal(value), key)  # value <flipped> key
    if kind == "other_eq":
        return other == arguments[0]
    assert kind == "other_ne", kind
    return other != arguments[0]


def _compare3(left: Any, symbol: str, right: Any) -> bool | None:
    if left is None or right is None:
        return None
    return bool(COMPARISONS[symbol](left, right))


def _and3(values: Sequence[bool | None]) -> bool | None:
    if any(value is False for value in values):
        return False
    return None if any(value is None for value in values) else True


def _or3(values: Sequence[bool | None]) -> bool | None:
    if any(value is True for value in values):
        return True
    return None if any(value is None for value in values) else False


def _in3(left: Any, values: Sequence[Any]) -> bool | None:
    return _or3([_compare3(left, "=", value) for value in values])  # IN () is false


def _truth(tree: Any, row: tuple[Any, Any]) -> bool | None:
    """SQL's three-valued truth of a tree for a row (key, other)."""
    kind, *arguments = tree
    key, other = row
    if kind == "and":
        return _and3([_truth(child, row) for child in arguments[0]])
    if kind == "or":
        return _or3([_truth(child, row) for child in arguments[0]])
    if kind == "not":
        inner = _truth(arguments[0], row)
        return None if inner is None else not inner
    if kind == "eq":
        return key is None if arguments[0] is None else _compare3(key, "=", arguments[0])
    if kind in ("reversed_eq", "bound_eq", "default_eq"):
        return _compare3(key, "=", arguments[0])
    if kind in ("in", "bound_in"):
        return _in3(key, arguments[0])
    if kind == "tuple_in":
        return _or3(
            [
                _and3([_compare3(key, "=", pair[0]), _compare3(other, "=", pair[1])])
                for pair in arguments[0]
            ]
        )
    if kind == "not_in":
        inside = _in3(key, arguments[0])
        return None if inside is None else not inside
    if kind == "ne":
        return _compare3(key, "!=", arguments[0])
    if kind == "is_null":
        return key is None
    if kind == "is_not_null":
        return key is not None
    if kind in ("between", "bound_between"):
        return _and3([_compare3(key, ">=", arguments[0]), _compare3(key, "<=", arguments[1])])
    if kind in ("compare", "reversed_compare", "bound_compare"):
        return _compare3(key, arguments[0], arguments[1])
    if kind == "other_eq":
        return other is None if arguments[0] is None else _compare3(other, "=", arguments[0])
    return other is not None if arguments[0] is None else _compare3(other, "!=", arguments[0])


@pytest.mark.parametrize("target", list(TARGETS.values()), ids=list(TARGETS))
@given(data=st.data())
def test_route_of_any_predicate_tree_never_misses_a_matching_row(
    target: Target, data: st.DataObject
) -> None:
    tree = data.draw(_trees(target), label="tree")
    parameters: dict[str, Any] = {}
    where = _clause(tree, target, parameters)
    result = route(select(target.source).where(where), parameters)
    assert result.shards, "a route always has shards"
    assert list(result.shards) == [s for s in SHARDS if s in result.shards]
    if result.scatter:
        assert result.shards == SHARDS
    for row in itertools.product(target.keys, target.others):
        if _truth(tree, row) is True:
            assert target.shard_of(row[0]) in result.shards, (row, result.reason)


def test_tree_semantics_agree_with_sqlite() -> None:
    """The tree evaluator above is SQL's three-valued logic: checked on a real database."""
    engine = create_engine("sqlite://")
    core_metadata.create_all(engine, tables=[readings])
    target = TARGETS["range"]
    rows = list(itertools.product(target.keys, target.others))
    with engine.begin() as connection:
        connection.execute(
            insert(readings),
            [{"id": n, "sensor": key, "value": other} for n, (key, other) in enumerate(rows)],
        )

    @settings(max_examples=60, deadline=None)
    @given(tree=_trees(target))
    def agree(tree: Any) -> None:
        parameters: dict[str, Any] = {}
        statement = select(readings.c.id).where(_clause(tree, target, parameters))
        with engine.connect() as connection:
            found = set(connection.scalars(statement, parameters))
        expected = {n for n, row in enumerate(rows) if _truth(tree, row) is True}
        assert found == expected

    try:
        agree()
    finally:
        engine.dispose()
