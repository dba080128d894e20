"""The router: statement + parameters -> route (shards + reason). Pure, no database."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given
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

from shardalchemy import FollowParent, Hash, Lookup, Route, ShardKey, shard_table
from shardalchemy.models import RuleBook
from shardalchemy.router import route_statement, statement_label

# shard-map order on purpose not alphabetical: routes keep shard-map order
SHARDS = ("europe", "asia", "africa")
CONTINENTS = {"Asia": "asia", "Europe": "europe", "Africa": "africa"}

ALL_SHARDS_NO_KEY = "no shard-key predicate in the WHERE clause; all shards"


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


def test_contradictory_predicates_run_on_every_shard() -> None:
    statement = select(City).where(City.continent == "Asia", City.continent == "Europe")
    result = route(statement)
    assert result.shards == SHARDS
    assert result.reason == (
        "City.continent = 'Asia' -> asia; City.continent = 'Europe' -> europe; "
        "no shard can match, running on all shards"
    )


def test_empty_in_runs_on_every_shard() -> None:
    result = route(select(City).where(City.continent.in_([])))
    assert result.shards == SHARDS
    assert "City.continent IN () -> no shard" in result.reason
    assert "no shard can match" in result.reason


# -- what the router cannot prove goes everywhere -------------------------------------------


def test_no_where_clause() -> None:
    result = route(select(City))
    assert result.shards == SHARDS
    assert result.reason == "no WHERE clause; all shards"


def test_or_is_not_analysed_yet() -> None:
    statement = select(City).where(or_(City.continent == "Asia", City.continent == "Europe"))
    result = route(statement)
    assert result.shards == SHARDS
    assert result.reason == ALL_SHARDS_NO_KEY


def test_text_statement_is_not_analysed() -> None:
    result = route(text("SELECT * FROM cities WHERE continent = 'Asia'"))
    assert result.shards == SHARDS
    assert result.reason == "TextClause is not analysed; all shards"


def test_text_where_clause_is_not_analysed() -> None:
    result = route(select(City).where(text("continent = 'Asia'")))
    assert result.shards == SHARDS
    assert result.reason == ALL_SHARDS_NO_KEY


def test_insert_is_not_analysed() -> None:
    statement = insert(City).values(continent="Asia", name="Tokyo")
    result = route(statement)
    assert result.shards == SHARDS
    assert result.reason == "Insert is not analysed; all shards"
    assert statement_label(statement) == "INSERT cities"


@pytest.mark.parametrize(
    "where",
    [
        City.continent != "Asia",
        ~(City.continent == "Asia"),
        ~City.continent.in_(["Asia"]),
        ~and_(City.continent == "Asia", City.id == 1),
        City.continent > "Asia",
        City.continent.like("As%"),
        City.continent.is_not(None),
        func.lower(City.continent) == "asia",
        City.continent == City.name,
        City.continent == select(Setting.continent).scalar_subquery(),
        City.continent.in_(select(Setting.continent)),
        tuple_(City.continent, City.id).in_([("Asia", 1)]),
    ],
    ids=[
        "not-equal",
        "negated-equal",
        "not-in",
        "negated-and",
        "greater",
        "like",
        "is-not-null",
        "function",
        "column-to-column",
        "scalar-subquery",
        "in-subquery",
        "tuple-in",
    ],
)
def test_other_comparisons_do_not_prune(where: Any) -> None:
    result = route(select(City).where(where))
    assert result.shards == SHARDS
    assert result.reason == ALL_SHARDS_NO_KEY


def test_same_named_column_of_an_unsharded_table_does_not_prune() -> None:
    result = route(select(Setting).where(Setting.continent == "Asia"))
    assert result.shards == SHARDS
    assert result.reason == ALL_SHARDS_NO_KEY


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
    assert result.reason == (
        "City.continent = 'Atlantis': 'Atlantis' is not mapped by the strategy, so it does not "
        "prune; City.continent = 'Africa' -> africa"
    )


def test_equals_none_is_is_null_and_does_not_prune() -> None:
    result = route(select(City).where(City.continent == None))  # noqa: E711
    assert result.shards == SHARDS
    assert result.reason == ALL_SHARDS_NO_KEY


def test_bound_none_matches_no_row_and_runs_everywhere() -> None:
    statement = select(City).where(City.continent == bindparam("where"))
    result = route(statement, {"where": None})
    assert result.shards == SHARDS
    assert result.reason == (
        "City.continent = None -> no shard; no shard can match, running on all shards"
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
    assert result.reason == ALL_SHARDS_NO_KEY


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
    result = route(select(Report).where(Report.city_id == 3))
    assert result.shards == SHARDS
    assert result.reason == ALL_SHARDS_NO_KEY


def test_statement_label_of_subqueries_and_joins_is_readable() -> None:
    inner = select(City.continent).subquery()
    assert statement_label(select(inner).where(inner.c.continent == "Asia")) == "SELECT cities"
    joined = select(Report).join(Report.city).where(City.continent == "Asia")
    assert statement_label(joined) == "SELECT reports, cities"
    assert statement_label(select(City).join(City.reports)) == "SELECT cities, reports"


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
    if not key_specs or not possible:
        assert result.shards == SHARDS
    else:
        assert set(result.shards) == possible
        for kind, argument in key_specs:
            shown = repr(argument) if kind != "in" else repr(tuple(argument))
            assert shown in result.reason
