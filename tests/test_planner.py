"""The planner, without a database: per-shard statements, merge steps, and what it refuses."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    cast,
    create_engine,
    desc,
    distinct,
    except_,
    exists,
    func,
    intersect,
    literal,
    literal_column,
    select,
    text,
    union,
    union_all,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    aliased,
    mapped_column,
    relationship,
    selectinload,
)

from shardalchemy import CrossShardQueryError, FollowParent, Hash, ShardKey
from shardalchemy._sqlalchemy import results as results_api
from shardalchemy.merge import (
    Aggregate,
    Concatenate,
    Distinct,
    Filter,
    Limit,
    MergeSort,
    Sort,
    as_is,
    pad_space,
)
from shardalchemy.planning import WEIGHT, DatabaseFacts, Plan, plan_select
from shardalchemy.sharding.rules import RuleBook

SHARDS = ("s0", "s1")
SQLITE = DatabaseFacts("sqlite", nulls_high=False)
POSTGRESQL = DatabaseFacts("postgresql", nulls_high=True, default_collation="c.utf-8")
MARIADB = DatabaseFacts("mariadb", nulls_high=False, default_collation="utf8mb4_general_ci")


class Base(DeclarativeBase):
    pass


class City(Base):
    __tablename__ = "cities"
    __sharding__ = ShardKey("id", Hash(buckets=16, shards=list(SHARDS)))
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    code: Mapped[str] = mapped_column(String(10, collation="utf8mb4_bin"))
    population: Mapped[int | None]
    reports: Mapped[list[Report]] = relationship(back_populates="city")


class Report(Base):
    __tablename__ = "reports"
    __sharding__ = FollowParent("city")
    id: Mapped[int] = mapped_column(primary_key=True)
    city_id: Mapped[int] = mapped_column(ForeignKey("cities.id"))
    temperature: Mapped[float | None]
    city: Mapped[City] = relationship(back_populates="reports")


class Visit(Base):  # sharded on its own: not co-located with cities
    __tablename__ = "visits"
    __sharding__ = ShardKey("visitor", Hash(buckets=16, shards=list(SHARDS)))
    id: Mapped[int] = mapped_column(primary_key=True)
    visitor: Mapped[int]
    city_id: Mapped[int]


RULES = RuleBook(SHARDS)
for mapper in Base.registry.mappers:
    RULES.for_mapper(mapper)


def plan(statement: Any, facts: DatabaseFacts = SQLITE, **parameters: Any) -> Plan:
    return plan_select(statement, facts, RULES, parameters)


def sql(plan_: Plan) -> str:
    return " ".join(str(plan_.statement.compile(dialect=postgresql.dialect())).split())


def test_top_k_pushes_limit_plus_offset_down_and_offsets_after_the_merge() -> None:
    planned = plan(select(City).order_by(City.population.desc()).limit(10).offset(20))
    assert "LIMIT %(param_1)s" in sql(planned) and "OFFSET" not in sql(planned)
    assert planned.statement._limit == 30
    assert isinstance(planned.combiner, MergeSort)
    assert planned.steps == (Limit(10, 20),)
    assert planned.visible == 1 and planned.single_entity
    # the entity's sort key is read from the rows its objects are loaded from, not
    # selected twice; the fallback selects it as a hidden column, stripped from the result
    assert "_shardalchemy" not in sql(planned)
    assert planned.row_columns == (City.__table__.c.population,)
    assert planned.combiner.keys[0].index == 1  # after the one (entity) result column
    assert planned.fallback is not None
    assert "AS _shardalchemy_sort_0" in sql(planned.fallback)


def test_keys_of_loader_options_or_expressions_are_selected() -> None:
    with_options = select(City).options(selectinload(City.reports)).order_by(City.name)
    assert plan(with_options).row_columns == () and plan(with_options).fallback is None
    expression = plan(select(City).order_by(City.population + 1, City.id))
    assert expression.row_columns == (City.__table__.c.id,)
    assert "population + %(population_1)s::INTEGER AS _shardalchemy_sort_0" in sql(expression)
    # MariaDB's weight strings come from SQL
    assert plan(select(City).order_by(City.name), MARIADB).row_columns == ()


def test_limit_given_at_execute_time_is_read_from_the_parameters() -> None:
    statement = select(City.id).order_by(City.id).limit(bindparam("n")).offset(bindparam("m"))
    planned = plan(statement, n=5, m=2)
    assert planned.steps == (Limit(5, 2),)
    assert planned.statement._limit == 7


def test_null_ordering_follows_the_dialect_unless_it_is_explicit() -> None:
    ascending = select(City.id).order_by(City.population)
    ((low,),) = [plan(ascending, SQLITE).combiner.keys]
    ((high,),) = [plan(ascending, POSTGRESQL).combiner.keys]
    assert low.nulls_first and not high.nulls_first  # SQLite: NULL is low; PostgreSQL: high
    explicit = select(City.id).order_by(City.population.desc().nulls_last())
    assert not plan(explicit, POSTGRESQL).combiner.keys[0].nulls_first


def test_a_sort_key_in_the_select_list_is_not_selected_twice() -> None:
    planned = plan(select(City.name, City.id).order_by(City.id.desc()))
    assert planned.visible is None
    assert planned.combiner.keys[0].index == 1


def test_aggregates_are_decomposed_and_re_aggregated() -> None:
    statement = (
        select(City.name, func.count(), func.avg(City.population))
        .group_by(City.name)
        .having(func.sum(City.population) > 10)
        .order_by(func.count().desc())
        .limit(3)
    )
    planned = plan(statement, POSTGRESQL)
    text = sql(planned)
    assert "HAVING" not in text and "LIMIT" not in text and "ORDER BY" not in text
    assert "sum(cities.population) AS _shardalchemy_sum" in text
    assert "count(cities.population) AS _shardalchemy_count" in text
    kinds = [type(step) for step in planned.steps]
    assert kinds == [Aggregate, Filter, Sort, Limit]
    assert planned.steps[2].top == 3
    assert planned.visible == 3


def test_expressions_over_aggregates_are_computed_after_the_merge() -> None:
    statement = (
        select(City.name, func.sum(City.population) - func.min(City.population) + 1)
        .group_by(City.name)
        .order_by(func.coalesce(func.max(City.population), 0).desc())
    )
    planned = plan(statement)
    assert [type(step).__name__ for step in planned.steps] == ["Aggregate", "Compute", "Sort"]
    # two shards' partials of the groups "a" (populations 1, 5 | 2) and "b" (NULL | 4)
    # layout: name, expression, sum, min, computed sort key, max
    shard_rows = [
        [("a", None, 6, 1, None, 5), ("b", None, None, None, None, None)],
        [("a", None, 2, 2, None, 2), ("b", None, 4, 4, None, 4)],
    ]
    merged = list(planned.merge([iter(rows) for rows in shard_rows]))
    assert [row[:2] for row in merged] == [("a", 8 - 1 + 1), ("b", 4 - 4 + 1)]


def test_an_aggregate_selected_twice_is_merged_in_both_places() -> None:
    planned = plan(select(func.count(), func.min(City.population) - 1, func.count()))
    merged = list(planned.merge([iter([(2, None, 2, 5)]), iter([(3, None, 3, 4)])]))
    assert merged[0][:3] == (5, 3, 5)


def test_count_distinct_is_pushed_down_as_a_group_key() -> None:
    planned = plan(select(func.count(City.name.distinct())), POSTGRESQL)
    assert "GROUP BY cities.name" in sql(planned)
    (aggregate,) = planned.steps
    assert aggregate.slots[0].kind == "count_distinct"


def test_distinct_rows_are_made_distinct_again_after_the_merge() -> None:
    planned = plan(select(City.name).distinct().order_by(City.name))
    assert [type(step) for step in planned.steps] == [Distinct]


def test_union_is_distinct_again_and_union_all_is_not() -> None:
    first, second = select(City.id), select(Report.city_id)
    assert [type(s) for s in plan(union(first, second)).steps] == [Distinct]
    assert plan(union_all(first, second).order_by("id")).steps == ()


def test_a_plain_scatter_concatenates() -> None:
    planned = plan(select(City).where(City.population > 3))
    assert isinstance(planned.combiner, Concatenate) and not planned.merges


def test_a_correlated_count_of_co_located_rows_runs_per_shard() -> None:
    reports = select(func.count(Report.id)).where(Report.city_id == City.id).scalar_subquery()
    planned = plan(select(City.name, reports).order_by(City.name))
    assert isinstance(planned.combiner, MergeSort)


def test_select_exists_is_true_if_it_is_on_any_shard() -> None:
    planned = plan(select(exists().where(City.population > 5)))
    (aggregate,) = planned.steps
    assert aggregate.slots[0].kind == "any"
    rows = [(False,), (True,), (False,)]
    assert list(planned.merge([iter([row]) for row in rows])) == [(True,)]


_TOP_CITIES = select(City.id).order_by(City.population.desc()).limit(3).subquery("top")
_TOP_CITIES_CTE = select(City.id).order_by(City.population.desc()).limit(3).cte("top")


@pytest.mark.parametrize(
    ("statement", "construct"),
    [
        (select(func.row_number().over(order_by=City.id)), "window function"),
        (select(func.string_agg(City.name, ",")), "aggregate string_agg()"),
        (select(func.sum(City.population) / func.count()), "the expression"),
        (select(func.abs(func.sum(City.population))), "the expression"),
        (select(City, func.count()).group_by(City.id), "an ORM entity"),
        (select(City).with_for_update(), "FOR UPDATE"),
        (intersect(select(City.id), select(Report.city_id)), "INTERSECT"),
        (except_(select(City.id), select(Report.city_id)), "EXCEPT"),
        (select(City.id).join(Visit, Visit.city_id == City.id), "visits"),
        # a subquery in an expression, not correlated on the shard key: not co-located
        # (routing/colocation.py); its aggregate or LIMIT would be computed per shard
        (
            select(City).where(
                City.population == select(func.max(City.population)).scalar_subquery()
            ),
            "not correlated on the shard key",
        ),
        (
            select(City.id).where(City.id.in_(select(City.id).limit(3))),
            "not correlated on the shard key",
        ),
        # a subquery in FROM (or a CTE) that aggregates or limits one shard's rows
        (
            select(literal_column("n")).select_from(
                select(func.count(City.id).label("n")).subquery()
            ),
            "a subquery with an aggregate",
        ),
        (select(City.id).join(_TOP_CITIES, _TOP_CITIES.c.id == City.id), "LIMIT/OFFSET"),
        (select(_TOP_CITIES_CTE.c.id), "LIMIT/OFFSET"),
        (select(City.name, func.count()), "outside an aggregate"),
        (select(func.count()).select_from(City).having(func.count() / 2 > 1), "HAVING"),
        (select(City.id).ext(postgresql.distinct_on(City.name)), "DistinctOnClause"),
        (select(City.id).order_by(City.id).limit(literal_column("3")), "LIMIT"),
        (select(select(City.id).where(City.id == 3).scalar_subquery()), "without FROM"),
    ],
)
def test_what_cannot_be_answered_exactly_is_refused(statement: Any, construct: str) -> None:
    with pytest.raises(CrossShardQueryError) as caught:
        plan(statement, POSTGRESQL)
    assert construct in caught.value.construct
    assert "cross_shard='concatenate'" in str(caught.value)


def test_text_keys_need_a_collation_python_can_reproduce() -> None:
    by_name = select(City.id).order_by(City.name)
    plan(by_name, POSTGRESQL)  # C.UTF-8: code-point order
    with pytest.raises(CrossShardQueryError, match=r"en_US\.UTF-8"):
        plan(by_name, DatabaseFacts("postgresql", nulls_high=True, default_collation="en_US.UTF-8"))
    with pytest.raises(CrossShardQueryError, match="NOCASE"):
        plan(select(City.id).order_by(City.name.collate("NOCASE")), SQLITE)
    # binary collations compare in Python, by code point (PAD SPACE: trailing blanks ignored)
    for binary in (City.name.collate("utf8mb4_bin"), City.code):
        assert "weight_string" not in sql(plan(select(City.id).order_by(binary), MARIADB))


def test_mariadb_text_under_other_collations_is_compared_by_its_weight_string() -> None:
    planned = plan(select(City.id).order_by(City.name.desc()).limit(2), MARIADB)
    # the collation's own sort key, padded as PAD SPACE compares: 'a' = 'a '
    assert "ORDER BY cities.name DESC" in sql(planned)  # each shard sorts as it always does
    assert "weight_string(rpad(cities.name, " in sql(planned)
    key = planned.combiner.keys[0]
    assert "weight_string" in str(planned.statement.selected_columns[key.index])
    assert planned.visible == 1
    grouped = plan(select(City.name, func.count()).group_by(City.name), MARIADB)
    (aggregate,) = grouped.steps
    assert aggregate.group == (2,)  # grouped by the weight, shown as the first row's name
    highest = plan(select(func.max(City.name)), MARIADB)
    assert highest.steps[0].slots[0].sources == (0, 1)
    with pytest.raises(CrossShardQueryError, match="no declared length"):
        plan(select(City.id).order_by(literal_column("name")), MARIADB)


@pytest.mark.parametrize(
    ("facts", "collation", "outcome"),
    [
        (SQLITE, None, "python"),
        (SQLITE, "NOCASE", "refused"),
        (POSTGRESQL, None, "python"),
        (POSTGRESQL, "C", "python"),
        (POSTGRESQL, "de_DE", "refused"),
        (MARIADB, None, "weight_string"),
        (MARIADB, "utf8mb4_bin", "python"),
        (MARIADB, "utf8mb4_nopad_bin", "python"),
        (MARIADB, "utf8mb4_unicode_ci", "weight_string"),
    ],
)
def test_how_each_collation_is_compared(
    facts: DatabaseFacts, collation: str | None, outcome: str
) -> None:
    transform = facts.text_transform(collation)
    got = "refused" if transform is None else "weight_string" if transform is WEIGHT else "python"
    assert got == outcome


def test_the_plan_prints_as_an_operator_tree() -> None:
    statement = select(City.name, func.count()).group_by(City.name).order_by(City.name).limit(2)
    lines = str(plan(statement)).splitlines()
    assert lines[0] == "Limit 2 offset 0"
    assert lines[1].startswith("└── Sort cities.name ASC NULLS FIRST")
    assert lines[2].strip().startswith("└── Aggregate count(*) GROUP BY cities.name")
    assert lines[-1].strip().startswith("└── each shard: SELECT cities.name, count(*)")


# -- the plan as a tree of operators, as plain data (explain --json) ----------------------------

COLUMNS = {"name": City.name, "code": City.code, "population": City.population, "id": City.id}
AGGREGATES = {
    "count": func.count(),
    "sum": func.sum(City.population),
    "avg": func.avg(City.population),
    "max": func.max(City.code),
    "count_distinct": func.count(City.name.distinct()),
    "spread": func.max(City.population) - func.min(City.population),
}


@st.composite
def statements(draw: Any) -> Any:
    """Statements of every shape the planner merges: rows, entities, groups, UNION, EXISTS."""
    shape = draw(st.sampled_from(["rows", "entity", "grouped", "union", "exists"]))
    if shape == "exists":
        return select(exists().where(City.population > draw(st.integers(0, 9))))
    if shape == "union":
        compound = draw(st.sampled_from([union, union_all]))
        statement = compound(select(City.id), select(Report.city_id))
        if draw(st.booleans()):
            statement = statement.order_by("id")
    elif shape == "entity":
        statement = select(City)
        keys = draw(st.lists(st.sampled_from(sorted(COLUMNS)), max_size=2, unique=True))
        statement = statement.order_by(*[COLUMNS[key].desc() for key in keys])
    elif shape == "rows":
        chosen = draw(st.lists(st.sampled_from(sorted(COLUMNS)), min_size=1, unique=True))
        statement = select(*[COLUMNS[key] for key in chosen])
        keys = draw(st.lists(st.sampled_from(sorted(COLUMNS)), max_size=2, unique=True))
        statement = statement.order_by(*[COLUMNS[key] for key in keys])
        if draw(st.booleans()):
            statement = statement.distinct()
    else:
        groups = draw(st.lists(st.sampled_from(["name", "code"]), max_size=2, unique=True))
        chosen = draw(st.lists(st.sampled_from(sorted(AGGREGATES)), min_size=1, unique=True))
        statement = select(*[COLUMNS[key] for key in groups], *[AGGREGATES[a] for a in chosen])
        statement = statement.select_from(City).group_by(*[COLUMNS[key] for key in groups])
        if draw(st.booleans()):
            statement = statement.having(func.count() > draw(st.integers(0, 3)))
        order = draw(st.lists(st.sampled_from(sorted(AGGREGATES)), max_size=1))
        statement = statement.order_by(*[AGGREGATES[a].desc() for a in order])
    limit, offset = draw(st.none() | st.integers(0, 9)), draw(st.none() | st.integers(0, 9))
    return statement.limit(limit).offset(offset)


def walk(tree: dict[str, Any]) -> list[dict[str, Any]]:
    """The nodes of a described plan, top down (each operator reads one input)."""
    nodes = [tree]
    while nodes[-1]["children"]:
        (child,) = nodes[-1]["children"]
        nodes.append(child)
    return nodes


@settings(max_examples=150, deadline=None)
@given(statements(), st.sampled_from([SQLITE, POSTGRESQL, MARIADB]))
def test_the_described_plan_is_the_printed_tree_as_plain_data(
    statement: Any, facts: DatabaseFacts
) -> None:
    try:
        planned = plan(statement, facts)
    except CrossShardQueryError:
        return  # (text keys under a collation neither Python nor WEIGHT_STRING reproduces)
    described = planned.describe(SHARDS)
    assert json.loads(json.dumps(described)) == described
    nodes = walk(described)
    # one node per printed line, in the same order: the operators, then the route leaf
    printed = [line.lstrip(" └─") for line in str(planned).splitlines()]
    assert len(nodes) == len(printed)
    assert [node["operator"] for node in nodes[:-1]] == [text.split()[0] for text in printed[:-1]]
    route = nodes[-1]
    assert route["operator"] == "Route" and route["shards"] == list(SHARDS)
    assert printed[-1] == f"each shard: {route['sql']}"
    assert route["visible"] == planned.visible
    assert [node["operator"] for node in nodes[:-1]] == [
        type(step).__name__ for step in reversed(planned.steps)
    ] + [type(planned.combiner).__name__]


def test_the_described_plan_of_a_top_k_of_groups() -> None:
    statement = (
        select(City.name, func.count(), func.avg(City.population))
        .group_by(City.name)
        .having(func.count() > 2)
        .order_by(func.count().desc())
        .limit(5)
    )
    described = plan(statement, POSTGRESQL).describe(["s0", "s1"])
    limit, sort, having, aggregate, concatenate, route = walk(described)
    assert (limit["operator"], limit["limit"], limit["offset"]) == ("Limit", 5, 0)
    assert sort["operator"] == "Sort" and sort["top"] == 5
    assert sort["keys"] == [
        {
            "column": 1,
            "label": "count(*)",
            "descending": True,
            "nulls_first": True,
            "compare": "as_is",
        }
    ]
    assert having == {
        "operator": "Filter",
        "predicate": "HAVING count(*) > 2",
        "children": [aggregate],
    }
    assert [slot["kind"] for slot in aggregate["aggregates"]] == ["count", "avg"]
    assert aggregate["aggregates"][1]["sources"] == [3, 4, 2]  # SUM and COUNT, hidden
    assert aggregate["group_by"] == [{"column": 0, "label": "cities.name", "compare": "as_is"}]
    assert concatenate["operator"] == "Concatenate"
    assert route["shards"] == ["s0", "s1"]
    assert route["sql"].startswith("SELECT cities.name, count(*) AS count_1")
    assert "sum(cities.population) AS _shardalchemy_sum_0" in route["sql"]
    assert route["visible"] == 3 and route["children"] == []


def test_an_entity_plan_describes_the_sort_keys_read_from_the_loaded_rows() -> None:
    planned = plan(select(City).order_by(City.population.desc()).limit(3))
    route = walk(planned.describe())[-1]
    assert route["row_columns"] == ["cities.population"]
    assert route["shards"] == []  # no shards given: a plan alone does not know its route
    assert walk(planned.fallback.describe())[-1]["row_columns"] == []


# -- the rewrites ------------------------------------------------------------------------------


def test_every_rewrite_module_is_in_a_list_and_runs_its_own_example() -> None:
    """A rewrite is one module of planning/rewrites/, listed where it applies, documented."""
    import doctest
    import importlib
    import pkgutil

    from shardalchemy.planning import REWRITES, rewrites
    from shardalchemy.planning.aggregates import AGGREGATE_REWRITES

    listed = {function.__name__: function for function in (*REWRITES, *AGGREGATE_REWRITES)}
    modules = [info.name for info in pkgutil.iter_modules(rewrites.__path__)]
    assert sorted(modules) == sorted(listed)  # each module one rewrite, each rewrite listed
    for name in modules:
        module = importlib.import_module(f"shardalchemy.planning.rewrites.{name}")
        function = getattr(module, name)
        assert listed[name] is function
        examples = doctest.DocTestParser().get_examples(function.__doc__ or "")
        assert examples, f"{name} has no example"


def test_a_union_of_text_compared_by_weight_strings_is_refused_not_crashed() -> None:
    """A UNION cannot carry MariaDB's WEIGHT_STRING columns: refused (it once failed merging)."""
    names = union(select(City.name), select(Report.city_id.cast(String(50))))
    for statement in (names, union_all(select(City.name), select(City.code)).order_by("name")):
        with pytest.raises(CrossShardQueryError, match="WEIGHT_STRING") as caught:
            plan(statement, MARIADB)
        assert caught.value.construct.startswith("a UNION ordered or made distinct by text")
    # binary collations compare in Python: nothing hidden, the UNION is merged
    binary = union(select(City.code), select(City.name.collate("utf8mb4_bin")))
    planned = plan(binary.order_by("code"), MARIADB)
    assert [type(step) for step in planned.steps] == [Distinct]
    assert list(planned.merge([iter([("a",), ("b",)]), iter([("a ",), ("c",)])])) == [
        ("a",),
        ("b",),
        ("c",),
    ]


# -- issue 12, section 2: the planner's classes of wrong answers ------------------------------

CITIES, REPORTS = City.__table__, Report.__table__


def _sources() -> st.SearchStrategy[Any]:
    """A FROM selected whole: a Core table, an alias of one, or a subquery of either."""
    tables = st.sampled_from([CITIES, REPORTS])
    return st.one_of(
        tables,
        tables.map(lambda table: table.alias()),
        tables.map(lambda table: select(table).subquery()),
        tables.map(lambda table: select(*list(table.c)[:2]).subquery()),
    )


@settings(max_examples=60, deadline=None)
@given(
    source=_sources(),
    parts=st.lists(st.integers(min_value=-1, max_value=3), min_size=1, max_size=4),
    sort=st.integers(min_value=0, max_value=20),
    descending=st.booleans(),
    limit=st.none() | st.integers(min_value=1, max_value=5),
)
def test_a_core_table_or_subquery_selected_whole_is_all_of_its_columns(
    source: Any, parts: list[int], sort: int, descending: bool, limit: int | None
) -> None:
    """Class A: ``select(table)`` / ``select(subquery)`` is as many result columns as the FROM
    has, and every sort key reads its own column (it once read the second of seven)."""
    own = list(source.c)
    # -1: the FROM selected whole; else one of its columns (a select list like (t, t.id))
    statement = select(*(source if part < 0 else own[part % len(own)] for part in parts))
    selected = list(statement.selected_columns)
    numbers = [i for i, column in enumerate(selected) if isinstance(column.type, Integer)]
    assume(numbers)
    key = selected[numbers[sort % len(numbers)]]  # (text keys need a collation: not here)
    statement = statement.order_by(key.desc() if descending else key).limit(limit)
    planned = plan(statement)
    assert planned.visible is None  # the sort key is selected: nothing hidden
    (sort_key,) = planned.combiner.keys
    assert selected[sort_key.index].compare(key) and sort_key.descending is descending
    # rows of two shards, each column the value of its column of the FROM: the merge keeps
    # every column and is sorted by the key
    positions = [next(i for i, c in enumerate(own) if c.key == col.key) for col in selected]
    rows = [tuple(10 * n + p for p in positions) for n in range(6)]
    rows.sort(key=lambda row: row[sort_key.index], reverse=descending)
    merged = list(planned.merge([iter(rows[0::2]), iter(rows[1::2])]))
    assert merged == rows[: limit or len(rows)]


def test_a_sort_key_outside_a_whole_table_is_hidden_after_all_of_its_columns() -> None:
    other = CITIES.alias("other")
    statement = select(CITIES).outerjoin(other, other.c.id == CITIES.c.id)
    planned = plan(statement.order_by(CITIES.c.id, other.c.id))
    width = len(CITIES.c)
    assert planned.visible == width
    assert [key.index for key in planned.combiner.keys] == [0, width]


def _aggregate_calls() -> list[Any]:
    n = _NUMBERS.c
    return [
        func.count(),
        func.count(n.x),
        func.sum(n.x),
        func.sum(n.id),
        func.min(n.x),
        func.max(n.id),
        func.avg(n.x),
        func.count(distinct(n.g)),
        func.sum(distinct(n.x)),
        func.coalesce(func.sum(n.x), 0),
        func.min(n.label),
        func.max(n.label),
    ]


_NUMBERS = Table(
    "numbers",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("g", Integer),
    Column("x", Integer),
    Column("label", String(8)),
)


@functools.cache
def _numbers_databases() -> tuple[Any, list[Any]]:
    """One reference SQLite database and two shards holding its rows between them."""
    rows = [
        {"id": i, "g": i % 3, "x": None if i % 5 == 0 else (i * 7) % 11, "label": f"L{i % 4}"}
        for i in range(1, 30)
    ]
    reference = create_engine("sqlite://")
    shards = [create_engine("sqlite://"), create_engine("sqlite://")]
    for engine, part in [(reference, rows), (shards[0], rows[0::2]), (shards[1], rows[1::2])]:
        _NUMBERS.metadata.create_all(engine)
        with engine.begin() as connection:
            connection.execute(_NUMBERS.insert(), part)
    return reference, shards


@settings(max_examples=40, deadline=None)
@given(
    calls=st.lists(st.integers(min_value=0, max_value=11), min_size=2, max_size=4),
    grouped=st.booleans(),
)
def test_core_aggregates_of_one_function_each_keep_their_own_value(
    calls: list[int], grouped: bool
) -> None:
    """Class B: unlabeled Core aggregates (``count_1``, ``count_2``; ``sum_1`` next to an AVG's
    hidden partials) are each their own result column.  SQLAlchemy's cursor keymap maps the
    name ``count_1`` to the second ``count``; the merged result reads its columns by position.
    """
    reference, shards = _numbers_databases()
    every = _aggregate_calls()
    statement = select(*(every[i] for i in calls)).select_from(_NUMBERS)
    if grouped:
        statement = statement.add_columns(_NUMBERS.c.g).group_by(_NUMBERS.c.g)
    with reference.connect() as connection:
        answer = connection.execute(statement)
        expected_keys, expected = list(answer.keys()), [tuple(row) for row in answer]
    planned = plan_select(statement, SQLITE)
    connections = [engine.connect() for engine in shards]
    try:
        results = [connection.execute(planned.statement) for connection in connections]
        rows = planned.merge([results_api.processed_rows(result) for result in results])
        merged = results_api.merged_result(
            results[0], rows, results, planned.visible, planned.single_entity
        )
        assert list(merged.keys()) == expected_keys
        got = [tuple(row) for row in merged]
    finally:
        for connection in connections:
            connection.close()
    assert len(got) == len(expected)
    for want, have in zip(sorted(expected, key=repr), sorted(got, key=repr), strict=True):
        assert have == pytest.approx(want)


@pytest.mark.filterwarnings("ignore:Column-expression-level unary distinct")
@settings(max_examples=40, deadline=None)
@given(
    first=st.sampled_from(["name", "population", "id"]),
    others=st.lists(st.sampled_from(["name", "population", "id"]), max_size=2),
    labeled=st.booleans(),
    core=st.booleans(),
    facts=st.sampled_from([SQLITE, POSTGRESQL, MARIADB]),
)
def test_a_column_level_distinct_makes_the_rows_distinct_across_shards(
    first: str, others: list[str], labeled: bool, core: bool, facts: DatabaseFacts
) -> None:
    """Class C: ``select(distinct(x), ...)`` renders ``SELECT DISTINCT x, ...``: the rows are made
    distinct again after the merge, as ``select(x, ...).distinct()`` is (they were
    concatenated), and ``x`` compares as its column does."""

    def named(name: str) -> Any:
        return CITIES.c[name] if core else getattr(City, name)

    column = named(first)
    leading = distinct(column).label("first") if labeled else distinct(column)
    statement = select(leading, *map(named, others))
    twin = select(column.label("first") if labeled else column, *map(named, others))
    planned, expected = plan(statement, facts), plan(twin.distinct(), facts)
    assert [type(step) for step in planned.steps] == [Distinct]
    assert planned.steps[0].indices == expected.steps[0].indices
    assert sql(planned).startswith("SELECT DISTINCT")
    width = 1 + len(others)
    row = tuple("a" if i == 0 and first == "name" else i for i in range(width))
    hidden = ("w",) * (len(planned.statement.selected_columns) - width)  # weight strings
    shard = [(*row, *hidden), (*row, *hidden)]
    assert [r[:width] for r in planned.merge([iter(shard), iter(shard)])] == [row]


_REPORTS_AGAIN = aliased(Report, name="again")
_SOURCES_OF_NAMES = {
    "cities": City,
    "reports": Report,
    "again": _REPORTS_AGAIN,
    "core cities": CITIES.c,
    "core reports": REPORTS.c,
}


@settings(max_examples=60, deadline=None)
@given(
    picks=st.lists(
        st.tuples(
            st.sampled_from(sorted(_SOURCES_OF_NAMES)),
            st.sampled_from(["count", "sum", "min", "max", "avg"]),
        ),
        min_size=2,
        max_size=4,
    ),
    ordered=st.booleans(),
)
def test_same_named_expressions_of_two_models_are_each_their_own(
    picks: list[tuple[str, str]], ordered: bool
) -> None:
    """Class D: ``count(Customer.id)`` and ``count(Order.id)`` (one name, two mappers) are told
    apart; comparing them once raised AttributeError ('Mapper' object has no attribute
    '__visit_name__') as SQLAlchemy's compare() walked the mappers that made them."""
    statement = select(
        *(getattr(func, name)(_SOURCES_OF_NAMES[source].id) for source, name in picks)
    )
    statement = (
        statement.select_from(City)
        .join(Report, Report.city_id == City.id)
        .join(_REPORTS_AGAIN, _REPORTS_AGAIN.city_id == City.id)
    )
    if ordered:
        statement = statement.order_by(
            *(getattr(func, name)(_SOURCES_OF_NAMES[source].id) for source, name in reversed(picks))
        )
    planned = plan(statement)
    (aggregate, *_) = planned.steps
    assert [slot.index for slot in aggregate.slots[: len(picks)]] == list(range(len(picks)))
    for position, (_, name) in enumerate(picks):
        assert aggregate.slots[position].kind == name
        assert position in aggregate.slots[position].sources


def test_columns_of_two_models_sort_a_join_by_their_own_values() -> None:
    statement = (
        select(City.id, Report.id)
        .join(Report, Report.city_id == City.id)
        .order_by(City.name, Report.temperature, Report.id)
    )
    planned = plan(statement, MARIADB)
    labels = [key.label for key in planned.combiner.keys]
    assert labels == ["cities.name", "reports.temperature", "reports.id"]
    assert planned.combiner.keys[-1].index == 1


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(
        st.tuples(
            st.sampled_from(["n", "total", "name"]),
            st.sampled_from(["", " ASC", " desc", " DESC"]),
            st.sampled_from(["plain", "upper", "quoted"]),
        ),
        min_size=1,
        max_size=3,
        unique_by=lambda key: key[0],
    ),
    grouped=st.booleans(),
    facts=st.sampled_from([SQLITE, POSTGRESQL]),
)
def test_a_textual_order_by_naming_labels_sorts_by_those_columns(
    keys: list[tuple[str, str, str]], grouped: bool, facts: DatabaseFacts
) -> None:
    """Class E: ``ORDER BY text("n DESC")`` names a column of the select list: a sort on that
    column (it once raised a bare NotImplementedError)."""
    if grouped:
        statement = select(
            City.name, func.count().label("n"), func.sum(City.population).label("total")
        ).group_by(City.name)
    else:
        statement = select(City.name, City.id.label("n"), City.population.label("total"))
    spelled = {
        "plain": lambda name: name,
        "upper": lambda name: name.upper(),
        "quoted": lambda name: f'"{name}"',
    }
    order = ", ".join(spelled[style](name) + direction for name, direction, style in keys)
    planned = plan(statement.order_by(text(order)), facts)
    sort = planned.steps[-1] if grouped else planned.combiner
    positions = {"name": 0, "n": 1, "total": 2}
    assert [(key.index, key.descending) for key in sort.keys] == [
        (positions[name], direction.strip().upper() == "DESC") for name, direction, _ in keys
    ]
    assert all(key.nulls_first is (key.descending is facts.nulls_high) for key in sort.keys)


@pytest.mark.parametrize(
    "order",
    ["random()", "n + 1", "population DESC", "n DESC DESC", ":value", "count_1", "id, n"],
)
def test_a_textual_order_by_of_anything_but_columns_is_refused(order: str) -> None:
    statement = (
        select(City.name, func.count().label("n"), func.count())
        .group_by(City.name)
        .order_by(text(order))
    )
    with pytest.raises(CrossShardQueryError) as caught:
        plan(statement)
    assert caught.value.construct.startswith("ORDER BY")
    # the direction given twice, or NULLS FIRST where it is not SQL
    for twice, facts in ((desc(text("n DESC")), SQLITE), (text("n NULLS FIRST"), MARIADB)):
        with pytest.raises(CrossShardQueryError):
            plan(statement.order_by(None).order_by(twice), facts)


@settings(max_examples=50, deadline=None)
@given(
    aliased_=st.booleans(),
    what=st.sampled_from(["count", "sum", "max", "limit", "distinct"]),
    where=st.sampled_from(["select", "where", "exists"]),
    on_key=st.booleans(),
)
def test_a_subquery_correlated_on_the_shard_key_is_answered_whatever_it_computes(
    aliased_: bool, what: str, where: str, on_key: bool
) -> None:
    """Class H: a subquery of followers correlated to their parent on the shard key reads only
    the outer row's shard, aliased() or not; it was refused over an alias.  Correlated on
    anything else, it is refused (co-location is proved, routing/colocation.py)."""
    reports = aliased(Report, name="r3") if aliased_ else Report
    correlation = reports.city_id == City.id if on_key else reports.id == City.population
    if what == "limit":
        inner = select(reports.temperature).where(correlation).order_by(reports.id).limit(1)
    elif what == "distinct":
        inner = select(reports.city_id).where(correlation).distinct()
    else:
        inner = select(getattr(func, what)(reports.temperature)).where(correlation)
    if where == "select":
        statement = select(City.id, inner.scalar_subquery())
    elif where == "where":
        statement = select(City.id).where(City.population > inner.scalar_subquery())
    else:
        statement = select(City.id).where(inner.exists())
    if on_key:
        planned = plan(statement.order_by(City.id))
        assert isinstance(planned.combiner, MergeSort)
        assert "FROM reports" in sql(planned)
    else:
        with pytest.raises(CrossShardQueryError) as caught:
            plan(statement)
        assert "not correlated on the shard key" in caught.value.construct


_TEXT_PARTS: dict[str, tuple[Any, int | None]] = {
    # part -> (expression, its longest value; None: of a NO PAD/binary collation)
    "name": (City.name, 50),
    "code": (City.code, 10),  # utf8mb4_bin: binary order, PAD SPACE
    "slash": (literal("/"), 1),
    "id as text": (cast(City.id, String(12)), 12),
    "lower(name)": (func.lower(City.name, type_=String(50)), 50),
    "code collated binary": (City.code.collate("binary"), None),
}


@settings(max_examples=60, deadline=None)
@given(
    parts=st.lists(st.sampled_from(sorted(_TEXT_PARTS)), min_size=2, max_size=3),
    cast_to=st.none() | st.integers(min_value=1, max_value=40),
    descending=st.booleans(),
)
def test_mariadb_text_expressions_sort_by_their_own_weight_strings_at_their_full_length(
    parts: list[str], cast_to: int | None, descending: bool
) -> None:
    """Class G: an expression of text on MariaDB sorts by WEIGHT_STRING(RPAD(x, n)) with ``n``
    its longest value (it was its type's declared length, which a concatenation exceeds),
    under the collation MariaDB derives for it (a CAST takes the connection's, a mix of
    a case-insensitive and a _bin column is _bin): never guessed from a column's type.
    With binary or NO PAD text in it, padding would change the order: refused."""
    expression = _TEXT_PARTS[parts[0]][0]
    for part in parts[1:]:
        expression = expression + _TEXT_PARTS[part][0]
    lengths = [_TEXT_PARTS[part][1] for part in parts]
    if cast_to is not None:
        expression = cast(expression, String(cast_to))
    statement = select(City.id).order_by(expression.desc() if descending else expression)
    if None in lengths:
        with pytest.raises(CrossShardQueryError) as caught:
            plan(statement, MARIADB)
        assert "binary or NO PAD" in str(caught.value)
        return
    planned = plan(statement, MARIADB)
    longest = cast_to if cast_to is not None else sum(length or 0 for length in lengths)
    key = planned.combiner.keys[0]
    assert key.transform is as_is and key.descending is descending  # bytes of the weights
    weight = planned.statement.selected_columns[key.index]
    assert weight.name.startswith("_shardalchemy_weight")
    rendered = str(weight.element.compile(compile_kwargs={"literal_binds": True}))
    assert rendered.startswith("weight_string(rpad(") and rendered.endswith(f", {longest}, ' '))")


def test_mariadb_text_columns_keep_the_collation_of_their_type() -> None:
    # a column's own collation is known: compared in Python where it can be
    planned = plan(select(City.id).order_by(City.code), MARIADB)
    assert planned.combiner.keys[0].transform is pad_space
    planned = plan(select(City.id).order_by(City.name.collate("utf8mb4_bin")), MARIADB)
    assert planned.combiner.keys[0].transform is pad_space


@pytest.mark.parametrize("collation", ["utf8mb4_nopad_general_ci", "utf8mb4_0900_ai_ci"])
def test_mariadb_text_of_a_no_pad_collation_is_refused_not_padded(collation: str) -> None:
    """WEIGHT_STRING(RPAD(x, n)) makes 'a' and 'a ' equal, which NO PAD collations keep apart."""
    for key in (City.name.collate(collation), City.name.collate(collation) + City.code):
        with pytest.raises(CrossShardQueryError):
            plan(select(City.id).order_by(key), MARIADB)
    no_pad = DatabaseFacts("mariadb", nulls_high=False, default_collation=collation)
    with pytest.raises(CrossShardQueryError, match="NO PAD"):
        plan(select(City.id).order_by(City.name), no_pad)
