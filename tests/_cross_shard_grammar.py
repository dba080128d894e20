"""A grammar of multi-shard SELECTs, for ``test_cross_shard_differential.py`` and
``test_differential_shop.py``.

Hypothesis draws *specs*: small frozen dataclasses of plain names and values (so a failing
example prints as something one can read and paste), which :class:`Renderer` turns into a
SQLAlchemy statement over one backend's ``Item`` model. Three families:

- ``rows``: Core ``select()`` of columns and expressions, ``select(Item)``,
  ``select(Item, <column>)`` and legacy ``session.query(Item)``; ORDER BY 0-3 keys (columns
  and expressions, in the select list or not, ASC/DESC, NULLS FIRST/LAST or the dialect's
  default), LIMIT/OFFSET;
- ``distinct``: ``select(...).distinct()`` of 1-3 columns, with and without ORDER BY/LIMIT;
- ``aggregate``: count(*), count(x), sum, min, max, avg, count(DISTINCT x), with and without
  GROUP BY (columns and expressions), HAVING trees, ORDER BY group keys and aggregates (also
  aggregates not in the select list), LIMIT/OFFSET on grouped queries.

Every family draws a WHERE clause that pins one shard, several shards or none. When a spec
has LIMIT or OFFSET, its ORDER BY ends with keys that make the order total (the primary key;
every group key; every DISTINCT column), so both databases must return the same rows in the
same order; ``Spec.total`` says so.

A spec whose ``optional`` is set uses a construct the implementation may refuse with
``CrossShardQueryError`` (expressions over aggregates, sum/avg of DISTINCT values, an untyped
function as a key on MariaDB); every other spec must be answered. ``label`` keeps the
server's default collation (case-insensitive on MariaDB): where the database picks one of
several equal strings (group keys, DISTINCT, min/max), ``collated_positions`` says which
select-list values to compare by ``collation_key``.

Issue 12 adds, with ``specs(family, backend, core=True)``: the same families asked of the Core
``items`` table (``select(items)``, ``items.c.x``, ``select(*items.c)``) and of a subquery
(``select(sub)``, ``sub.c.x``), column-level ``select(distinct(col))``, several aggregates of
one function in one select list, unlabeled (SQLAlchemy's anonymous ``count_1``, ``count_2``)
as well as labeled; and a second schema, the *shop* (customers ``Hash``-sharded by id, orders
following customers, order lines following orders, agents sharded independently), whose
:class:`ShopSpec` statements combine rows: joins, self-joins through ``aliased()``,
subqueries of every kind, eager loads, textual SQL, text sort keys, UNION (see the shop
section below).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import random
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st
from sqlalchemy import (
    Double,
    ForeignKey,
    Integer,
    Numeric,
    String,
    and_,
    bindparam,
    cast,
    distinct,
    func,
    or_,
    select,
    text,
    union,
    union_all,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    aliased,
    contains_eager,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
)
from sqlalchemy.sql import FromClause

from shardalchemy import FollowParent, Hash, ShardKey

SHARDS = ("s0", "s1", "s2", "s3")
ITEM_HASH = Hash(buckets=64, shards=SHARDS)
OTHER_HASH = Hash(buckets=64, shards=SHARDS)  # an independent rule: not co-located with Item

# Binary collations for the string columns the grammar groups, orders and deduplicates by.
# PostgreSQL's test databases use C.UTF-8 (code-point order, like Python's str) and SQLite's
# default BINARY is code-point order too; only MariaDB needs one spelled out.
BINARY_COLLATION: dict[str, str | None] = {
    "sqlite": None,
    "postgresql": None,
    "mariadb": "utf8mb4_bin",
}


def _keys_by_shard(per_shard: int = 3) -> dict[str, tuple[int, ...]]:
    found: dict[str, list[int]] = {shard: [] for shard in SHARDS}
    for key in itertools.count():
        owned = found[ITEM_HASH.shard_for(key)]  # type: ignore[index]
        if len(owned) < per_shard:
            owned.append(key)
        if all(len(keys) == per_shard for keys in found.values()):
            return {shard: tuple(keys) for shard, keys in found.items()}
    raise AssertionError("unreachable")


KEYS_BY_SHARD = _keys_by_shard()
SHARD_OF_KEY = {key: shard for shard, keys in KEYS_BY_SHARD.items() for key in keys}
ALL_KEYS = tuple(sorted(SHARD_OF_KEY))
# the last key of each shard holds no row: WHERE shard_key = <it> routes to a shard, finds nothing
EMPTY_KEYS = tuple(keys[-1] for keys in KEYS_BY_SHARD.values())
DATA_KEYS = tuple(sorted(key for keys in KEYS_BY_SHARD.values() for key in keys[:-1]))

# value pools: NULLs and duplicates on purpose, mixed case strings, negative numbers
GRPS = ("a", "b", "B", "ab", "A", "é", "", None)
# equal in groups under MariaDB's default collation (case-insensitive, PAD SPACE)
LABELS = ("x", "X", "x ", "y", "Y", None)
CATS = (None, 0, 1, 2, 3)
AS = (None, -3, 0, 1, 2, 5, 7, 10)
BS = (None, -1.5, 0.0, 0.25, 2.5, 3.75, 10.0)
PRICES = (None, Decimal("0.00"), Decimal("1.10"), Decimal("-2.50"), Decimal("3.33"))
PRICES += (Decimal("12.34"), Decimal("99.99"))


def fixed_rows(count: int = 96, seed: int = 20240604) -> list[dict[str, Any]]:
    """The module's rows: unique ids, every data key used, skewed shard sizes."""
    rng = random.Random(seed)
    ids = rng.sample(range(1, 1000), count)
    # weights: shard s3 gets few rows, the others many
    weights = [1 if SHARD_OF_KEY[key] == "s3" else 6 for key in DATA_KEYS]
    rows = []
    for position, id_ in enumerate(ids):
        key = DATA_KEYS[position] if position < len(DATA_KEYS) else None
        if key is None:
            key = rng.choices(DATA_KEYS, weights)[0]
        rows.append(
            {
                "id": id_,
                "shard_key": key,
                "grp": rng.choice(GRPS),
                "label": rng.choice(LABELS),
                "cat": rng.choice(CATS),
                "a": rng.choice(AS),
                "b": rng.choice(BS),
                "price": rng.choice(PRICES),
            }
        )
    return rows


def other_rows() -> list[dict[str, Any]]:
    return [{"id": n, "okey": n, "item_cat": n % 4} for n in range(8)]


# -- the models: one declarative base per backend (the collation differs) ---------------------


@dataclasses.dataclass(frozen=True)
class Models:
    base: type[DeclarativeBase]
    item: Any
    other: Any

    @property
    def metadata(self) -> Any:
        return self.base.metadata


@functools.cache
def models(backend: str) -> Models:
    """``Item`` (sharded by ``shard_key`` through :data:`ITEM_HASH`) and ``Other``."""
    collation = BINARY_COLLATION[backend]

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = "items"
        __sharding__ = ShardKey("shard_key", ITEM_HASH)

        id = mapped_column(Integer, primary_key=True, autoincrement=False)
        shard_key = mapped_column(Integer, nullable=False)
        grp = mapped_column(String(20, collation=collation), nullable=True)
        label = mapped_column(String(20), nullable=True)  # the server's default collation
        cat = mapped_column(Integer, nullable=True)
        a = mapped_column(Integer, nullable=True)
        b = mapped_column(Double, nullable=True)
        price = mapped_column(Numeric(10, 2), nullable=True)

        def __repr__(self) -> str:
            return f"Item(id={self.id!r}, shard_key={self.shard_key!r})"

    class Other(Base):
        __tablename__ = "others"
        __sharding__ = ShardKey("okey", OTHER_HASH)

        id = mapped_column(Integer, primary_key=True, autoincrement=False)
        okey = mapped_column(Integer, nullable=False)
        item_cat = mapped_column(Integer, nullable=True)

    return Models(Base, Item, Other)


ENTITY_COLUMNS = ("id", "shard_key", "grp", "label", "cat", "a", "b", "price")

# scalar expressions, by name
EXPRESSIONS: dict[str, Callable[[Any], Any]] = {
    "id": lambda item: item.id,
    "shard_key": lambda item: item.shard_key,
    "grp": lambda item: item.grp,
    "label": lambda item: item.label,
    "cat": lambda item: item.cat,
    "a": lambda item: item.a,
    "b": lambda item: item.b,
    "price": lambda item: item.price,
    "a+b": lambda item: item.a + item.b,
    "coalesce(a,0)": lambda item: func.coalesce(item.a, 0),
    "a-cat": lambda item: item.a - item.cat,
    "coalesce(cat,-1)": lambda item: func.coalesce(item.cat, -1),
    "a is null": lambda item: item.a.is_(None),
    "abs(a)": lambda item: func.abs(item.a),  # a function SQLAlchemy gives no type (NullType)
}
COLUMNS = ("id", "shard_key", "grp", "label", "cat", "a", "b", "price")
SELECTABLE = (*COLUMNS, "a+b", "coalesce(a,0)", "a-cat", "abs(a)")
ORDERABLE = (*SELECTABLE, "a is null")
DISTINCTABLE = ("grp", "label", "cat", "a", "shard_key", "b", "price")
GROUP_KEYS = ("grp", "label", "cat", "a", "shard_key", "coalesce(cat,-1)", "a-cat", "abs(a)")

AGGREGATE_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "count": ("cat", "a", "b", "price", "grp", "label", "a+b"),
    "sum": ("a", "b", "price", "cat", "a+b", "coalesce(a,0)"),
    "avg": ("a", "b", "price", "cat", "a+b"),
    "min": ("a", "b", "price", "grp", "label", "cat", "a+b"),
    "max": ("a", "b", "price", "grp", "label", "cat", "coalesce(a,0)"),
    "count_distinct": ("cat", "a", "grp", "label", "b", "price"),
}

# Under a case-insensitive collation, which of several equal strings stands for a group, a
# DISTINCT value or a min/max is the database's choice: these select-list items are compared
# by their equivalence class where ``label``'s collation is not binary (MariaDB's default).
COLLATED_ITEMS = frozenset({"label", ("min", "label"), ("max", "label")})


def collation_key(value: Any) -> Any:
    """The class of ``value`` under a case-insensitive PAD SPACE collation (for LABELS)."""
    return value.rstrip(" ").lower() if isinstance(value, str) else value


def collated_positions(spec: Spec) -> frozenset[int]:
    """Select-list positions whose value is one of several equal strings, chosen by the database."""
    if spec.family == "rows":
        return frozenset()  # each row shows its own value
    return frozenset(n for n, item in enumerate(spec.select) if item in COLLATED_ITEMS)


# expressions over aggregates: the implementation may refuse them (CrossShardQueryError)
AGGREGATE_EXPRESSIONS: dict[str, Callable[[Any], Any]] = {
    "sum(a)+count(*)": lambda item: func.sum(item.a) + func.count(),
    "max(a)-min(a)": lambda item: func.max(item.a) - func.min(item.a),
    "coalesce(sum(b),0)": lambda item: func.coalesce(func.sum(item.b), 0),
}

Aggregate = tuple[str, ...]  # ("count*",) | (function, argument) | ("expr", name)


# -- specs --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OrderKey:
    """One ORDER BY key: an expression name or an aggregate, direction, explicit nulls order."""

    key: str | Aggregate
    descending: bool = False
    nulls: str | None = None  # "first", "last", or None for the dialect's default
    by_label: bool = False  # order by the select list's label instead of the expression
    bare: bool = False  # ascending without .asc(): ``order_by(x)``, not ``order_by(x.asc())``


@dataclasses.dataclass(frozen=True)
class Spec:
    family: str  # "rows" | "distinct" | "aggregate"
    select: tuple[Any, ...]  # expression names, "Item" (the entity), aggregates
    where: Any = None
    group_by: tuple[str, ...] = ()
    having: Any = None
    order_by: tuple[OrderKey, ...] = ()
    limit: int | None = None
    offset: int | None = None
    bound_paging: bool = False  # LIMIT/OFFSET as bound parameters, given at execute time
    total: bool = False  # the ORDER BY is a total order: compare as lists
    api: str = "execute"  # "execute" (.all()), "scalars" (.all()) or "query" (legacy Query)
    optional: str | None = None  # a construct the implementation may refuse, else None
    # what the statement selects from (issue 12): "orm" (the Item class), "table" (the Core
    # ``items`` table: ``select(items)``, ``items.c.x``) or "subquery" (``select(items)
    # [.where(inner_where)].subquery()``: ``select(sub)``, ``sub.c.x``); "Item" in ``select``
    # is the entity, the whole table or the whole subquery
    source: str = "orm"
    inner_where: Any = None  # the subquery's own WHERE (source "subquery")
    distinct_form: str = (
        "select"  # "select": ``select(...).distinct()``; "column": ``distinct(col)``
    )
    # expressions and aggregates in the select list carry labels (c0, c1, ...); without, they
    # keep SQLAlchemy's anonymous ones (count_1, count_2: issue 12's shared result slots)
    labeled: bool = True

    @property
    def entity_only(self) -> bool:
        return self.select == ("Item",)

    def orm_twin(self) -> Spec:
        """The same question asked through the ORM model: what issue 12 says is answered."""
        where = self.where
        if self.inner_where is not None:
            where = self.inner_where if where is None else ("and", (self.inner_where, where))
        return dataclasses.replace(
            self, source="orm", inner_where=None, where=where, distinct_form="select", labeled=True
        )


def untyped_keys(backend: str, keys: Any) -> str | None:
    """Why a spec may be refused for ordering or grouping by an untyped function, if it may.

    A function SQLAlchemy gives no type could return text; under MariaDB's default collation
    text is merged by WEIGHT_STRING, which needs a declared length, so refusing is allowed.
    """
    if backend == "mariadb" and "abs(a)" in keys:
        return "untyped function as a key on MariaDB"
    return None


def where_shards(where: Any) -> frozenset[str]:
    """The shards a WHERE clause can match rows on (what a perfect router would pick)."""
    if where is None:
        return frozenset(SHARDS)
    kind = where[0]
    if kind == "key_eq":
        return frozenset({SHARD_OF_KEY[where[1]]})
    if kind == "key_in":
        return frozenset(SHARD_OF_KEY[key] for key in where[1])
    if kind == "and":
        return functools.reduce(frozenset.intersection, map(where_shards, where[1]))
    if kind == "or":
        return functools.reduce(frozenset.union, map(where_shards, where[1]))
    return frozenset(SHARDS)


def route_kind(where: Any) -> str:
    count = len(where_shards(where))
    return "one shard" if count == 1 else "all shards" if count == len(SHARDS) else "some shards"


# -- strategies ---------------------------------------------------------------------------------

_keys = st.sampled_from(ALL_KEYS)
_key_leaves = st.one_of(
    st.tuples(st.just("key_eq"), _keys, st.booleans()),
    st.tuples(
        st.just("key_in"),
        st.lists(_keys, min_size=1, max_size=3, unique=True).map(tuple),
        st.booleans(),
    ),
)
_other_leaves = st.one_of(
    st.tuples(st.just("a_gt"), st.sampled_from([v for v in AS if v is not None])),
    st.tuples(st.just("cat_null")),
    st.tuples(st.just("grp_eq"), st.sampled_from([v for v in GRPS if v is not None])),
    st.tuples(st.just("b_le"), st.sampled_from([v for v in BS if v is not None])),
)
_several_keys = st.tuples(
    st.just("key_in"),
    st.lists(_keys, min_size=2, max_size=4, unique=True).map(tuple),
    st.booleans(),
)
WHERES = st.one_of(
    st.none(),
    st.none(),
    _key_leaves,
    _several_keys,
    _other_leaves,
    st.tuples(st.just("and"), st.tuples(_key_leaves, _other_leaves)),
    st.tuples(st.just("or"), st.tuples(_key_leaves, _key_leaves)),
    st.tuples(st.just("or"), st.tuples(_key_leaves, _other_leaves)),
)


def _nulls(backend: str) -> st.SearchStrategy[str | None]:
    # MariaDB has no NULLS FIRST/LAST syntax (a separate test covers that refusal)
    if backend == "mariadb":
        return st.none()
    return st.sampled_from([None, None, "first", "last"])


def _order_keys(
    draw: Any, backend: str, candidates: tuple[Any, ...], max_size: int
) -> tuple[OrderKey, ...]:
    chosen = draw(st.lists(st.sampled_from(candidates), max_size=max_size, unique=True))
    keys = []
    for key in chosen:
        direction = draw(st.sampled_from(["asc", "desc", "bare"]))
        nulls = draw(_nulls(backend))
        keys.append(OrderKey(key, direction == "desc", nulls, bare=direction == "bare"))
    return tuple(keys)


def _paging(draw: Any) -> tuple[int | None, int | None]:
    shape = draw(st.sampled_from(["none", "none", "limit", "offset", "limit+offset"]))
    limit = draw(st.integers(0, 12)) if "limit" in shape else None
    offset = draw(st.integers(1, 40)) if "offset" in shape else None
    return limit, offset


def _bound_paging(draw: Any, limit: int | None, offset: int | None) -> bool:
    """LIMIT/OFFSET as bound parameters, given at execute time, for some specs."""
    return (limit is not None or offset is not None) and draw(st.sampled_from([False, False, True]))


def _label_some(draw: Any, order: tuple[OrderKey, ...], select: tuple[Any, ...]) -> Any:
    """Order some selected expressions by their label, as ``order_by(label)`` does."""
    return tuple(
        dataclasses.replace(key, by_label=draw(st.booleans())) if key.key in select else key
        for key in order
    )


SOURCES = ("table", "subquery")  # the Core sources issue 12 adds (besides "orm")


def _source(draw: Any, core: bool) -> tuple[str, Any]:
    """The source a spec selects from and, for a subquery, the subquery's own WHERE."""
    if not core:
        return "orm", None
    source = draw(st.sampled_from(("orm", *SOURCES, *SOURCES)))  # the ORM twin now and then
    return source, draw(WHERES) if source == "subquery" else None


@st.composite
def rows_specs(draw: Any, backend: str, core: bool = False) -> Spec:
    source, inner_where = _source(draw, core)
    forms = ["columns", "columns", "entity", "entity+column", "column+entity"]
    if core:
        forms += ["entity", "star"]  # select(table) / select(subquery); select(*table.c)
    form = draw(st.sampled_from(forms))
    select: tuple[Any, ...]
    if form == "star":
        select = COLUMNS
    elif form == "columns":
        select = tuple(
            draw(st.lists(st.sampled_from(SELECTABLE), min_size=1, max_size=4, unique=True))
        )
    elif form == "entity":
        select = ("Item",)
    elif form == "entity+column":
        select = ("Item", draw(st.sampled_from(SELECTABLE)))
    else:
        select = (draw(st.sampled_from(SELECTABLE)), "Item")
    order = _order_keys(draw, backend, ORDERABLE, 3)
    if form != "entity":
        order = _label_some(draw, order, select)
    limit, offset = _paging(draw)
    total = limit is not None or offset is not None or draw(st.booleans())
    if total and not any(key.key == "id" for key in order):
        order += (OrderKey("id"),)
    apis = ["execute", "execute"]
    if len(select) == 1 and (source == "orm" or form != "entity"):
        apis.append("scalars")  # (scalars() of a whole Core table is its first column)
    if form == "entity" and source == "orm":
        apis.append("query")
    if total:
        apis.append("first")
    return Spec(
        "rows",
        select,
        where=draw(WHERES),
        order_by=order,
        limit=limit,
        offset=offset,
        bound_paging=_bound_paging(draw, limit, offset),
        total=total,
        api=draw(st.sampled_from(apis)),
        optional=untyped_keys(backend, [key.key for key in order]),
        source=source,
        inner_where=inner_where,
        labeled=not core or draw(st.booleans()),
    )


@st.composite
def distinct_specs(draw: Any, backend: str, core: bool = False) -> Spec:
    # (nothing is drawn without ``core``: the classic families draw what they always drew)
    source, inner_where = _source(draw, core)
    # column-level DISTINCT, select(distinct(col), ...): SELECT DISTINCT col, ...
    distinct_form = draw(st.sampled_from(["select", "column"])) if core else "select"
    select = tuple(
        draw(st.lists(st.sampled_from(DISTINCTABLE), min_size=1, max_size=3, unique=True))
    )
    order = _order_keys(draw, backend, select, len(select))
    limit, offset = _paging(draw)
    if limit is not None or offset is not None:
        ordered = {key.key for key in order}
        order += tuple(OrderKey(name) for name in select if name not in ordered)
    total = {key.key for key in order} == set(select)
    api = draw(st.sampled_from(["execute", "scalars"])) if len(select) == 1 else "execute"
    return Spec(
        "distinct",
        select,
        where=draw(WHERES),
        order_by=order,
        limit=limit,
        offset=offset,
        bound_paging=_bound_paging(draw, limit, offset),
        total=total,
        api=api,
        source=source,
        inner_where=inner_where,
        distinct_form=distinct_form,
    )


_aggregates: st.SearchStrategy[Aggregate] = st.one_of(
    st.just(("count*",)),
    *(
        st.tuples(st.just(function), st.sampled_from(arguments))
        for function, arguments in AGGREGATE_ARGUMENTS.items()
    ),
)
_having_leaves = st.one_of(
    st.tuples(st.just(("count*",)), st.just(">"), st.integers(0, 6)),
    st.tuples(st.just(("sum", "a")), st.just(">="), st.sampled_from([0, 5, 10, 20])),
    st.tuples(st.just(("min", "a")), st.just("<"), st.sampled_from([0, 1, 5])),
    st.tuples(st.just(("max", "b")), st.just(">"), st.sampled_from([0.0, 2.5, 5.0])),
    st.tuples(st.just(("avg", "a")), st.just(">"), st.sampled_from([0, 1, 3])),
    st.tuples(st.just(("count", "cat")), st.just(">="), st.integers(1, 4)),
    st.tuples(st.just(("count_distinct", "a")), st.just(">"), st.integers(1, 3)),
)
# integer group keys HAVING may compare (MariaDB resolves only plain columns there)
INTEGER_GROUP_KEYS = ("cat", "a", "shard_key")


def _havings(group_by: tuple[str, ...]) -> st.SearchStrategy[Any]:
    """HAVING trees over aggregates and, when there is one, an integer group key."""
    keys = [key for key in group_by if key in INTEGER_GROUP_KEYS]
    leaves = _having_leaves
    if keys:
        key_leaves = st.tuples(st.sampled_from(keys), st.just(">"), st.integers(-1, 3))
        leaves = st.one_of(_having_leaves, key_leaves)
    return st.one_of(
        st.none(),
        leaves,
        leaves,
        st.tuples(st.just("and"), st.tuples(leaves, leaves)),
        st.tuples(st.just("or"), st.tuples(leaves, leaves)),
    )


# Several aggregates of one function in one select (issue 12: Core aggregates of the same
# function shared one result slot): count(*) with count(x) and count(DISTINCT x), min(a) with
# min(b), sum next to avg, ...
SAME_FUNCTION: dict[str, tuple[Aggregate, ...]] = {
    "count": (
        ("count*",),
        *(("count", name) for name in AGGREGATE_ARGUMENTS["count"]),
        *(("count_distinct", name) for name in AGGREGATE_ARGUMENTS["count_distinct"]),
    ),
    **{
        function: tuple((function, name) for name in AGGREGATE_ARGUMENTS[function])
        for function in ("min", "max", "sum")
    },
    "sum+avg": (
        *(("sum", name) for name in AGGREGATE_ARGUMENTS["sum"]),
        *(("avg", name) for name in AGGREGATE_ARGUMENTS["avg"]),
        ("expr", "coalesce(sum(b),0)"),
    ),
}


@st.composite
def _same_function_aggregates(draw: Any) -> list[Aggregate]:
    pool = SAME_FUNCTION[draw(st.sampled_from(sorted(SAME_FUNCTION)))]
    return draw(st.lists(st.sampled_from(pool), min_size=2, max_size=3, unique=True))


@st.composite
def aggregate_specs(draw: Any, backend: str, core: bool = False) -> Spec:
    # (nothing is drawn without ``core``: the classic families draw what they always drew)
    source, inner_where = _source(draw, core)
    grouped = draw(st.booleans()) or draw(st.booleans())  # three in four
    group_by = (
        tuple(draw(st.lists(st.sampled_from(GROUP_KEYS), min_size=1, max_size=2, unique=True)))
        if grouped
        else ()
    )
    # GROUP BY without aggregates is DISTINCT by another name
    if core and draw(st.booleans()):
        aggregates = draw(_same_function_aggregates())
    else:
        aggregates = draw(
            st.lists(_aggregates, min_size=0 if grouped else 1, max_size=3, unique=True)
        )
    optional = None
    if any(aggregate[0] == "expr" for aggregate in aggregates):
        optional = "expression over aggregates"
    extra = draw(st.sampled_from([None] * 7 + ["expression", "distinct"]))
    if extra == "expression":
        name = draw(st.sampled_from(sorted(AGGREGATE_EXPRESSIONS)))
        if ("expr", name) not in aggregates:
            aggregates.append(("expr", name))
        optional = f"expression over aggregates: {name}"
    elif extra == "distinct":
        # sum/avg of DISTINCT values: the per-shard sums of distinct values do not add up
        function = draw(st.sampled_from(["sum_distinct", "avg_distinct"]))
        aggregate = (function, draw(st.sampled_from(("a", "b", "price", "cat"))))
        if aggregate not in aggregates:
            aggregates.append(aggregate)
        optional = function.replace("_distinct", "(DISTINCT x)")
    # some group keys may stay out of the select list
    shown = group_by
    if aggregates and len(group_by) > 0:
        shown = tuple(key for key in group_by if draw(st.sampled_from([True, True, False])))
    select = tuple(draw(st.permutations([*shown, *aggregates])))
    having = order = None
    limit = offset = None
    total = True  # one row without GROUP BY
    if grouped:
        having = draw(_havings(group_by))
        # order by group keys, selected aggregates, or aggregates not in the select list
        candidates = (*group_by, *aggregates, ("count*",), ("sum", "a"), ("max", "price"))
        order = _order_keys(draw, backend, tuple(dict.fromkeys(candidates)), 2)
        order = _label_some(draw, order, select)
        limit, offset = _paging(draw)
        if limit is not None or offset is not None:
            ordered = {key.key for key in order}
            order += tuple(OrderKey(name) for name in group_by if name not in ordered)
        total = set(group_by) <= {key.key for key in order}
    keys = [*group_by, *(key.key for key in order or ())]
    optional = optional or untyped_keys(backend, keys)
    return Spec(
        "aggregate",
        select,
        where=draw(WHERES),
        group_by=group_by,
        having=having,
        order_by=order or (),
        limit=limit,
        offset=offset,
        bound_paging=_bound_paging(draw, limit, offset),
        total=total,
        api=draw(st.sampled_from(["execute", "scalars"])) if len(select) == 1 else "execute",
        optional=optional,
        source=source,
        inner_where=inner_where,
        labeled=not core or draw(st.booleans()),
    )


def specs(family: str, backend: str, core: bool = False) -> st.SearchStrategy[Spec]:
    """``family``'s specs; with ``core``, also the Core sources and forms of issue 12."""
    strategy = {"rows": rows_specs, "distinct": distinct_specs, "aggregate": aggregate_specs}
    return strategy[family](backend, core)


# -- rendering ----------------------------------------------------------------------------------


class Renderer:
    """Render one spec over one backend's models.

    Each expression and aggregate is built once per statement and reused wherever the spec
    names it again (select list, GROUP BY, HAVING, ORDER BY): PostgreSQL matches GROUP BY
    expressions textually, so ``coalesce(cat, $1)`` and ``coalesce(cat, $2)`` would differ.
    """

    def __init__(self, models: Models, spec: Spec) -> None:
        self.spec = spec
        self.parameters: dict[str, Any] = {}
        self._built: dict[Any, Any] = {}
        self._labels: dict[Any, Any] = {}
        table = models.item.__table__
        # ``source`` is what is selected from; ``item`` is where its columns are found
        self.source: Any
        if spec.source == "orm":
            self.source = self.item = models.item
        elif spec.source == "table":
            self.source, self.item = table, table.c
        else:
            assert spec.source == "subquery", spec.source
            inner = select(table)
            if spec.inner_where is not None:
                self.item = table.c
                inner = inner.where(self.where(spec.inner_where))
            self.source = inner.subquery("sub")
            self.item = self.source.c

    def expression(self, name: str) -> Any:
        if name not in self._built:
            self._built[name] = EXPRESSIONS[name](self.item)
        return self._built[name]

    def aggregate(self, aggregate: Aggregate) -> Any:
        if aggregate not in self._built:
            function, *arguments = aggregate
            if function == "count*":
                built = func.count()
            elif function == "expr":
                built = AGGREGATE_EXPRESSIONS[arguments[0]](self.item)
            elif function.endswith("_distinct"):
                name = function.removesuffix("_distinct")
                built = getattr(func, name)(distinct(self.expression(arguments[0])))
            else:
                built = getattr(func, function)(self.expression(arguments[0]))
            self._built[aggregate] = built
        return self._built[aggregate]

    def term(self, key: Any) -> Any:
        return self.aggregate(key) if isinstance(key, tuple) else self.expression(key)

    def selected(self, position: int, key: Any) -> Any:
        if key == "Item":
            return self.source
        if key in COLUMNS:
            if self.spec.distinct_form == "column" and position == 0:
                return distinct(self.expression(key))
            return self.expression(key)
        if not self.spec.labeled:
            return self.term(key)
        label = self.term(key).label(f"c{position}")
        self._labels[key] = label
        return label

    def where(self, where: Any) -> Any:
        item = self.item
        kind = where[0]
        if kind in ("and", "or"):
            combine = and_ if kind == "and" else or_
            return combine(*(self.where(child) for child in where[1]))
        if kind == "key_eq":
            return item.shard_key == (self.bound(where[1]) if where[2] else where[1])
        if kind == "key_in":
            values = list(where[1])
            return item.shard_key.in_(self.bound(values, expanding=True) if where[2] else values)
        if kind == "a_gt":
            return item.a > where[1]
        if kind == "cat_null":
            return item.cat.is_(None)
        if kind == "grp_eq":
            return item.grp == where[1]
        assert kind == "b_le", kind
        return item.b <= where[1]

    def bound(self, value: Any, **options: Any) -> Any:
        name = f"p{len(self.parameters)}"
        self.parameters[name] = value
        return bindparam(name, **options)

    def having(self, having: Any) -> Any:
        if having[0] in ("and", "or"):
            combine = and_ if having[0] == "and" else or_
            return combine(*(self.having(child) for child in having[1]))
        term, operator, value = having
        built = self.term(term)  # an aggregate, or a group key
        return {">": built > value, ">=": built >= value, "<": built < value}[operator]

    def order_key(self, key: OrderKey) -> Any:
        term = self._labels[key.key] if key.by_label and key.key in self._labels else None
        if term is None:
            term = self.term(key.key)
        if key.descending:
            term = term.desc()
        elif not key.bare:
            term = term.asc()
        if key.nulls == "first":
            term = term.nulls_first()
        elif key.nulls == "last":
            term = term.nulls_last()
        return term

    def clauses(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "where": None if spec.where is None else self.where(spec.where),
            "group_by": [self.term(key) for key in spec.group_by],
            "having": None if spec.having is None else self.having(spec.having),
            "order_by": [self.order_key(key) for key in spec.order_by],
        }

    def statement(self) -> Any:
        """The 2.0-style statement (for ``execute`` and ``scalars``)."""
        spec = self.spec
        columns = [self.selected(position, key) for position, key in enumerate(spec.select)]
        # select_from: an aggregate-only select list names no table of its own
        statement = select(*columns).select_from(self.source)
        if spec.family == "distinct" and spec.distinct_form == "select":
            statement = statement.distinct()
        parts = self.clauses()
        if parts["where"] is not None:
            statement = statement.where(parts["where"])
        if parts["group_by"]:
            statement = statement.group_by(*parts["group_by"])
        if parts["having"] is not None:
            statement = statement.having(parts["having"])
        if parts["order_by"]:
            statement = statement.order_by(*parts["order_by"])
        return self.paged(statement)

    def paged(self, statement: Any) -> Any:
        """``statement`` (a select or a legacy query) with the spec's LIMIT and OFFSET."""
        limit, offset = self.paging()
        if limit is not None:
            statement = statement.limit(limit)
        if offset is not None:
            statement = statement.offset(offset)
        return statement

    def paging(self) -> tuple[Any, Any]:
        spec = self.spec
        if not spec.bound_paging:
            return spec.limit, spec.offset
        return (
            None if spec.limit is None else self.bound(spec.limit),
            None if spec.offset is None else self.bound(spec.offset),
        )

    def query(self, session: Any) -> Any:
        """The legacy ``session.query(Item)`` form of an entity-only spec."""
        spec = self.spec
        assert spec.entity_only and spec.source == "orm", spec
        parts = self.clauses()
        query = session.query(self.item)
        if parts["where"] is not None:
            query = query.filter(parts["where"])
        if parts["order_by"]:
            query = query.order_by(*parts["order_by"])
        query = self.paged(query)
        if self.parameters:
            query = query.params(**self.parameters)
        return query


# == issue 12: a shop — customers, their orders, the orders' lines ==============================
#
# ``Customer`` is sharded by its id (``Hash``), ``Order`` follows its customer, ``Line`` its
# order, and ``Agent`` is sharded independently (by its own id, another rule). Statements over
# them (:class:`ShopSpec`, rendered by :class:`ShopRenderer`) combine rows: joins of parents
# and followers, self-joins through ``aliased()``, on shard keys and on other columns, with
# equalities, ``!=``, ``<``, arithmetic and OR, inner and outer; scalar subqueries
# (correlated or not), ``IN (SELECT ...)``, ``EXISTS``/``NOT EXISTS``, subqueries in FROM;
# eager loads; textual SQL; text sort keys of every length. Each statement is asked through
# the ORM or through Core (``source``). Rule for every one: the answer of one database
# holding every shard's rows, or ``CrossShardQueryError``; ``must_answer`` marks the shapes
# whose refusal is a failure too (co-located on the shard key, nothing else in the way).

CUSTOMER_HASH = Hash(buckets=64, shards=SHARDS)
AGENT_HASH = Hash(buckets=64, shards=SHARDS)  # an independent rule: agents meet no customer

SHOP_CITIES = ("Oslo", "Rome", "Lima", "Kyiv", "Pune", "Bern", "Quito", None)
SHOP_CITY_WEIGHTS = (9, 8, 6, 4, 2, 1, 1, 3)  # Bern and Quito: one or two customers each
# the server's default collation (MariaDB: case-insensitive, PAD SPACE), lengths 0 to 8
SHOP_REGIONS = ("", "n", "N", "ne", "east", "East ", "south", "westward", "northern", None)
SHOP_TIERS = (0, 1, 1, 1, 2, 2, 2, 3, 3, None)  # tier 0 is rare
SHOP_STATUSES = ("NEW", "PAID", "SHIPPED", "open")
SHOP_NOTES = ("a", "A", "a ", "bb", "BB", None)  # default collation, like regions
SHOP_SKUS = ("A1", "B22", "C333", "d4", None)
SHOP_AMOUNTS = (None, Decimal("0.00"), Decimal("5.10"), Decimal("-2.50"), Decimal("19.99"))
SHOP_AMOUNTS += (Decimal("100.00"), Decimal("7.25"))


@dataclasses.dataclass(frozen=True)
class ShopModels:
    base: type[DeclarativeBase]
    customer: Any
    order: Any
    line: Any
    agent: Any

    @property
    def metadata(self) -> Any:
        return self.base.metadata

    def model(self, name: str) -> Any:
        return {"Customer": self.customer, "Order": self.order, "Line": self.line}.get(
            name, self.agent
        )


@functools.cache
def shop_models(backend: str) -> ShopModels:
    """The shop's models for ``backend`` (its binary collation on the binary columns)."""
    collation = BINARY_COLLATION[backend]

    class Base(DeclarativeBase):
        pass

    class Customer(Base):
        __tablename__ = "customers"
        __sharding__ = ShardKey("id", CUSTOMER_HASH)

        id = mapped_column(Integer, primary_key=True, autoincrement=False)
        name = mapped_column(String(12, collation=collation), nullable=False)
        city = mapped_column(String(10, collation=collation), nullable=True)
        region = mapped_column(String(8), nullable=True)  # the server's default collation
        tier = mapped_column(Integer, nullable=True)
        balance = mapped_column(Numeric(10, 2), nullable=True)
        agent_id = mapped_column(Integer, nullable=True)  # an agent: sharded independently
        orders = relationship("Order", back_populates="customer", order_by="Order.id")

        def __repr__(self) -> str:
            return f"Customer(id={self.id!r})"

    class Order(Base):
        __tablename__ = "orders"
        __sharding__ = FollowParent("customer")

        id = mapped_column(Integer, primary_key=True, autoincrement=False)
        customer_id = mapped_column(ForeignKey("customers.id"), nullable=False)
        status = mapped_column(String(8, collation=collation), nullable=False)
        amount = mapped_column(Numeric(10, 2), nullable=True)
        qty = mapped_column(Integer, nullable=True)
        note = mapped_column(String(10), nullable=True)  # the server's default collation
        customer = relationship(Customer, back_populates="orders")
        lines = relationship("Line", back_populates="order", order_by="Line.id")

        def __repr__(self) -> str:
            return f"Order(id={self.id!r}, customer_id={self.customer_id!r})"

    class Line(Base):
        __tablename__ = "order_lines"
        __sharding__ = FollowParent("order")

        id = mapped_column(Integer, primary_key=True, autoincrement=False)
        order_id = mapped_column(ForeignKey("orders.id"), nullable=False)
        sku = mapped_column(String(6, collation=collation), nullable=True)
        qty = mapped_column(Integer, nullable=False)
        price = mapped_column(Numeric(8, 2), nullable=True)
        order = relationship(Order, back_populates="lines")

        def __repr__(self) -> str:
            return f"Line(id={self.id!r}, order_id={self.order_id!r})"

    class Agent(Base):
        __tablename__ = "agents"
        __sharding__ = ShardKey("id", AGENT_HASH)

        id = mapped_column(Integer, primary_key=True, autoincrement=False)
        name = mapped_column(String(12, collation=collation), nullable=False)
        city = mapped_column(String(10, collation=collation), nullable=True)

    return ShopModels(Base, Customer, Order, Line, Agent)


SHOP_COLUMNS: dict[str, tuple[str, ...]] = {
    "Customer": ("id", "name", "city", "region", "tier", "balance", "agent_id"),
    "Order": ("id", "customer_id", "status", "amount", "qty", "note"),
    "Line": ("id", "order_id", "sku", "qty", "price"),
    "Agent": ("id", "name", "city"),
}
# columns compared by their class under the server's default collation (MariaDB: 'a' = 'A ')
SHOP_COLLATED = frozenset({("Customer", "region"), ("Order", "note")})


@dataclasses.dataclass(frozen=True)
class ShopRows:
    customers: list[dict[str, Any]]
    orders: list[dict[str, Any]]
    lines: list[dict[str, Any]]
    agents: list[dict[str, Any]]

    def shard_of(self, model: str, row: Any) -> str:
        """The shard a row of ``model`` lives on (``row``: its column values by name)."""
        if model == "Customer":
            return CUSTOMER_HASH.shard_for(row["id"])  # type: ignore[return-value]
        if model == "Agent":
            return AGENT_HASH.shard_for(row["id"])  # type: ignore[return-value]
        if model == "Order":
            return CUSTOMER_HASH.shard_for(row["customer_id"])  # type: ignore[return-value]
        return self.shard_of("Order", self.order_by_id[row["order_id"]])

    @functools.cached_property
    def order_by_id(self) -> dict[int, dict[str, Any]]:
        return {order["id"]: order for order in self.orders}


@functools.cache
def shop_rows(seed: int = 20261201) -> ShopRows:
    """40 customers with dense ids (arithmetic joins find partners), 100 orders, 200 lines.

    NULLs and duplicates everywhere, rare values (tier 0, two cities) that sit on one or two
    shards only, customers without orders and orders without lines (outer joins, NOT EXISTS).
    """
    rng = random.Random(seed)
    ids = sorted(rng.sample(range(-20, 60), 40))
    customers = [
        {
            "id": id_,
            "name": f"c{id_}",
            "city": rng.choices(SHOP_CITIES, SHOP_CITY_WEIGHTS)[0],
            "region": rng.choice(SHOP_REGIONS),
            "tier": rng.choice(SHOP_TIERS),
            "balance": rng.choice(SHOP_AMOUNTS),
            "agent_id": rng.choice([*range(12), None]),
        }
        for id_ in ids
    ]
    buyers = rng.sample(ids, 32)
    orders = [
        {
            "id": id_,
            "customer_id": rng.choice(buyers),
            "status": rng.choice(SHOP_STATUSES),
            "amount": rng.choice(SHOP_AMOUNTS),
            "qty": rng.choice([None, *range(1, 10)]),
            "note": rng.choice(SHOP_NOTES),
        }
        for id_ in rng.sample(range(1, 150), 100)
    ]
    with_lines = rng.sample([order["id"] for order in orders], 85)
    lines = [
        {
            "id": id_,
            "order_id": rng.choice(with_lines),
            "sku": rng.choice(SHOP_SKUS),
            "qty": rng.randint(1, 5),
            "price": rng.choice(SHOP_AMOUNTS),
        }
        for id_ in rng.sample(range(1, 400), 200)
    ]
    agents = [
        {"id": n, "name": f"agent{n}", "city": rng.choices(SHOP_CITIES, SHOP_CITY_WEIGHTS)[0]}
        for n in range(12)
    ]
    return ShopRows(customers, orders, lines, agents)


def _customers_by_shard() -> dict[str, tuple[int, ...]]:
    found: dict[str, list[int]] = {shard: [] for shard in SHARDS}
    for row in shop_rows().customers:
        found[CUSTOMER_HASH.shard_for(row["id"])].append(row["id"])  # type: ignore[index]
    return {shard: tuple(ids) for shard, ids in found.items()}


CUSTOMERS_BY_SHARD = _customers_by_shard()
CUSTOMER_IDS = tuple(row["id"] for row in shop_rows().customers)
# ids of no customer, one per shard: a pin to a shard that finds nothing
NO_CUSTOMER_IDS = tuple(
    next(n for n in range(1000, 2000) if CUSTOMER_HASH.shard_for(n) == shard) for shard in SHARDS
)
ORDER_IDS = tuple(row["id"] for row in shop_rows().orders)

# The entities a statement may name: ``c`` is the model itself (``Customer`` / the
# ``customers`` table); ``c2``, ``c3`` are ``aliased(Customer, name=...)`` /
# ``customers.alias(...)``; ``cs`` is a subquery in FROM over customers.
SHOP_ENTITIES: dict[str, tuple[str, str | None]] = {
    "c": ("Customer", None),
    "c2": ("Customer", "c2"),
    "c3": ("Customer", "c3"),
    "o": ("Order", None),
    "o2": ("Order", "o2"),
    "o3": ("Order", "o3"),
    "l": ("Line", None),
    "l2": ("Line", "l2"),
    "a": ("Agent", None),
    "cs": ("Customer", "cs"),  # a subquery of customers in FROM
}
# the column that routes each model's rows: the shard key, or the parent's key
SHOP_PIN_COLUMNS = {"Customer": "id", "Order": "customer_id"}


def model_of(entity: str) -> str:
    return SHOP_ENTITIES[entity][0]


# text sort keys: columns and expressions, some longer than their declared VARCHAR
SHOP_TEXT_KEYS: dict[str, Callable[[Callable[[str], Any]], Any]] = {
    "region": lambda col: col("region"),
    "name": lambda col: col("name"),
    "city": lambda col: col("city"),
    # typed VARCHAR(8) by SQLAlchemy (region's type); values up to 8 + 1 + 3 characters
    "region+'/'+id": lambda col: col("region") + "/" + cast(col("id"), String(12)),
    # typed VARCHAR(8); the literal alone is 12 characters long
    "coalesce(region,'zzzzzzzzzzzz')": lambda col: func.coalesce(col("region"), "zzzzzzzzzzzz"),
    "region+region": lambda col: col("region") + col("region"),  # VARCHAR(8), up to 16
    "cast(region+city,String(30))": lambda col: cast(col("region") + col("city"), String(30)),
    "lower(name)": lambda col: func.lower(col("name")),
}
SHOP_TEXT_KEYS_COLLATED = frozenset(
    {"region", "region+'/'+id", "coalesce(region,'zzzzzzzzzzzz')", "region+region"}
)
SHOP_TEXT_KEYS_COLLATED |= {"cast(region+city,String(30))"}


@dataclasses.dataclass(frozen=True)
class JoinSpec:
    """``JOIN <right> ON <condition>`` (``outer``: LEFT OUTER JOIN)."""

    right: str
    condition: Any
    outer: bool = False


@dataclasses.dataclass(frozen=True)
class SubSpec:
    """A subquery: ``SELECT <select> FROM <entity> WHERE <where...>`` (AND of ``where``)."""

    entity: str
    select: Any  # an item; None for EXISTS
    where: tuple[Any, ...] = ()


@dataclasses.dataclass(frozen=True)
class ShopOrderKey:
    item: Any
    descending: bool = False


@dataclasses.dataclass(frozen=True)
class ShopSpec:
    """One statement over the shop.

    Items: ``("col", entity, column)``, ``("text", entity, key)`` (a text sort key of
    :data:`SHOP_TEXT_KEYS`), ``("entity", entity)``, ``("agg", function, item | None)``,
    ``("scalar", SubSpec)``. Predicates: ``("pin", entity, id, bound)``,
    ``("pin_in", entity, ids, bound)``, ``("cmp", item, operator, value)``,
    ``("cmp2", item, operator, item, addend)``, ``("and" | "or", (predicates...))``,
    ``("not", predicate)``, ``("in", item, SubSpec, negated)``, ``("exists", SubSpec,
    negated)``, ``("scalar_cmp", item, operator, SubSpec)``.
    """

    family: str  # "join" | "subquery" | "eager" | "text" | "sort" | "compound"
    shape: str  # what the survey counts it under
    base: str = "c"
    source: str = "orm"  # "orm" | "core"
    joins: tuple[JoinSpec, ...] = ()
    select: tuple[Any, ...] = ()
    where: tuple[Any, ...] = ()
    group_by: tuple[Any, ...] = ()
    order_by: tuple[ShopOrderKey, ...] = ()
    limit: int | None = None
    distinct: bool = False
    total: bool = False  # the ORDER BY is a total order: compare as lists
    labeled: bool = True
    api: str = "execute"
    from_where: tuple[Any, ...] = ()  # the WHERE of the FROM subquery "cs"
    loads: tuple[str, ...] = ()  # eager loads (family "eager")
    text: str = ""  # family "text": the SQL; family "compound": "union" / "union_all"
    pinned: str | None = None  # a shard the statement is pinned to (text)
    must_answer: bool = False  # a refusal fails too


# -- rendering the shop -------------------------------------------------------------------------

AGGREGATE_FUNCTIONS: dict[str, Callable[[Any], Any]] = {
    "count": func.count,
    "count_distinct": lambda x: func.count(distinct(x)),
    "sum": func.sum,
    "min": func.min,
    "max": func.max,
    "avg": func.avg,
    "coalesce_sum": lambda x: func.coalesce(func.sum(x), 0),
}


class ShopRenderer:
    """Render one :class:`ShopSpec` over one backend's shop models, ORM or Core."""

    def __init__(self, models: ShopModels, spec: ShopSpec) -> None:
        self.models = models
        self.spec = spec
        self.parameters: dict[str, Any] = {}
        self._entities: dict[str, Any] = {}
        self._built: dict[Any, Any] = {}

    # entities and columns

    def entity(self, name: str) -> Any:
        if name not in self._entities:
            model_name, alias = SHOP_ENTITIES[name]
            model = self.models.model(model_name)
            if name == "cs":
                inner = self.entity("c")
                subquery = select(inner)
                if self.spec.from_where:
                    subquery = subquery.where(*map(self.predicate, self.spec.from_where))
                built = subquery.subquery("cs")
            elif self.spec.source == "orm":
                built = model if alias is None else aliased(model, name=alias)
            else:
                built = model.__table__ if alias is None else model.__table__.alias(alias)
            self._entities[name] = built
        return self._entities[name]

    def column(self, entity: str, name: str) -> Any:
        namespace = self.entity(entity)
        if isinstance(namespace, FromClause):
            return namespace.c[name]
        return getattr(namespace, name)

    def item(self, item: Any) -> Any:
        """The expression of an item, built once per statement (GROUP BY matches it)."""
        key = item
        if key in self._built:
            return self._built[key]
        kind = item[0]
        if kind == "col":
            built = self.column(item[1], item[2])
        elif kind == "text":
            built = SHOP_TEXT_KEYS[item[2]](lambda name: self.column(item[1], name))
        elif kind == "entity":
            built = self.entity(item[1])
        elif kind == "agg":
            function, argument = item[1], item[2]
            built = (
                func.count()
                if argument is None
                else AGGREGATE_FUNCTIONS[function](self.item(argument))
            )
        else:
            assert kind == "scalar", item
            built = self.subquery(item[1]).scalar_subquery()
        self._built[key] = built
        return built

    def selected(self, position: int, item: Any) -> Any:
        built = self.item(item)
        if self.spec.labeled and item[0] in ("agg", "scalar", "text"):
            return built.label(f"c{position}")
        return built

    # predicates

    def bound(self, value: Any, **options: Any) -> Any:
        name = f"p{len(self.parameters)}"
        self.parameters[name] = value
        return bindparam(name, **options)

    def predicate(self, predicate: Any) -> Any:
        kind = predicate[0]
        if kind in ("and", "or"):
            return (and_ if kind == "and" else or_)(*map(self.predicate, predicate[1]))
        if kind == "not":
            return ~self.predicate(predicate[1])
        if kind in ("pin", "pin_in"):
            _, entity, value, bound = predicate
            column = self.column(entity, SHOP_PIN_COLUMNS[model_of(entity)])
            if kind == "pin":
                return column == (self.bound(value) if bound else value)
            values = list(value)
            return column.in_(self.bound(values, expanding=True) if bound else values)
        if kind == "cmp":
            _, item, operator, value = predicate
            return compare(self.item(item), operator, value)
        if kind == "cmp2":
            _, left, operator, right, addend = predicate
            other = self.item(right)
            return compare(self.item(left), operator, other + addend if addend else other)
        if kind == "in":
            _, item, sub, negated = predicate
            test = self.item(item).in_(self.subquery(sub))
            return ~test if negated else test
        if kind == "exists":
            _, sub, negated = predicate
            test = self.subquery(sub).exists()
            return ~test if negated else test
        assert kind == "scalar_cmp", predicate
        _, item, operator, sub = predicate
        return compare(self.item(item), operator, self.subquery(sub).scalar_subquery())

    def subquery(self, sub: SubSpec) -> Any:
        selected = sub.select if sub.select is not None else ("col", sub.entity, "id")
        statement = select(self.item(selected)).select_from(self.entity(sub.entity))
        if sub.where:
            statement = statement.where(*map(self.predicate, sub.where))
        return statement

    # the statement

    def statement(self) -> Any:
        spec = self.spec
        if spec.family == "text":
            return text(spec.text)
        if spec.family == "compound":
            return self.compound()
        columns = [self.selected(position, item) for position, item in enumerate(spec.select)]
        statement = select(*columns).select_from(self.entity(spec.base))
        for join in spec.joins:
            statement = statement.join(
                self.entity(join.right), self.predicate(join.condition), isouter=join.outer
            )
        if spec.where:
            statement = statement.where(*map(self.predicate, spec.where))
        if spec.group_by:
            statement = statement.group_by(*map(self.item, spec.group_by))
        if spec.distinct:
            statement = statement.distinct()
        if spec.order_by:
            statement = statement.order_by(
                *(
                    self.item(key.item).desc() if key.descending else self.item(key.item)
                    for key in spec.order_by
                )
            )
        if spec.loads:
            statement = statement.options(*self.loads())
        if spec.limit is not None:
            statement = statement.limit(spec.limit)
        return statement

    def compound(self) -> Any:
        spec = self.spec
        parts = [
            select(self.item(item))
            .select_from(self.entity(item[1]))
            .where(*map(self.predicate, where))
            for item, where in zip(spec.select, spec.where, strict=True)
        ]
        statement = (union if spec.text == "union" else union_all)(*parts)
        if spec.limit is not None:
            # order by the compound's own (first) column, as SQLAlchemy names it
            statement = statement.order_by(statement.selected_columns[0]).limit(spec.limit)
        return statement

    def loads(self) -> list[Any]:
        models = self.models
        customer, order = models.customer, models.order
        options = {
            "joinedload(orders)": lambda: joinedload(customer.orders),
            "selectinload(orders)": lambda: selectinload(customer.orders),
            "joinedload(orders.lines)": lambda: joinedload(customer.orders).joinedload(order.lines),
            "selectinload(orders.lines)": lambda: selectinload(customer.orders).selectinload(
                order.lines
            ),
            "contains_eager(orders)": lambda: contains_eager(customer.orders),
            "joinedload(customer)": lambda: joinedload(order.customer),
            "selectinload(lines)": lambda: selectinload(order.lines),
            "contains_eager(customer)": lambda: contains_eager(order.customer),
        }
        return [options[name]() for name in self.spec.loads]


def compare(left: Any, operator: str, right: Any) -> Any:
    if operator == "is_null":
        return left.is_(None)
    return {
        "=": left == right,
        "!=": left != right,
        "<": left < right,
        ">": left > right,
        ">=": left >= right,
        "<=": left <= right,
    }[operator]


def item_collated(item: Any) -> bool:
    """Whether an item's value is one of several equal strings under MariaDB's default
    collation (a text column or key of the default collation, or min/max of one)."""
    kind = item[0]
    if kind == "col":
        return (model_of(item[1]), item[2]) in SHOP_COLLATED
    if kind == "text":
        return item[2] in SHOP_TEXT_KEYS_COLLATED
    if kind == "agg":
        return item[1] in ("min", "max") and item[2] is not None and item_collated(item[2])
    return False


# -- drawing the shop's statements --------------------------------------------------------------

_customer_ids = st.sampled_from(CUSTOMER_IDS + NO_CUSTOMER_IDS)
_bound = st.booleans()


def _filters(entity: str) -> list[Any]:
    """Predicates on one entity's other columns (not its shard key)."""

    def col(name: str) -> Any:
        return ("col", entity, name)

    model = model_of(entity)
    if model == "Customer":
        return [
            ("cmp", col("tier"), ">", 1),
            ("cmp", col("city"), "is_null", None),
            ("cmp", col("city"), "=", "Rome"),
            ("cmp", col("tier"), "=", 0),
        ]
    if model == "Order":
        return [("cmp", col("status"), "=", "PAID"), ("cmp", col("qty"), "<", 4)]
    if model == "Line":
        return [("cmp", col("qty"), ">", 2), ("cmp", col("sku"), "=", "B22")]
    return [("cmp", col("city"), "=", "Oslo")]


@st.composite
def _pin(draw: Any, entity: str) -> Any:
    if draw(st.booleans()):
        return ("pin", entity, draw(_customer_ids), draw(_bound))
    ids = draw(st.lists(_customer_ids, min_size=2, max_size=3, unique=True))
    return ("pin_in", entity, tuple(ids), draw(_bound))


@st.composite
def _where(draw: Any, entities: tuple[str, ...]) -> tuple[Any, ...]:
    """0-2 conjuncts: pins on a side that has a shard key (or a parent's), filters, ORs."""
    pinnable = [e for e in entities if model_of(e) in SHOP_PIN_COLUMNS]
    filters = [f for e in entities for f in _filters(e)]
    choices = ["filter"] + ["pin", "pin", "or pins", "or pin filter"] * bool(pinnable)
    conjuncts = []
    for kind in draw(st.lists(st.sampled_from(choices), max_size=2)):
        if kind == "filter":
            conjuncts.append(draw(st.sampled_from(filters)))
        elif kind == "pin":
            conjuncts.append(draw(_pin(draw(st.sampled_from(pinnable)))))
        elif kind == "or pins":
            left, right = draw(st.sampled_from(pinnable)), draw(st.sampled_from(pinnable))
            conjuncts.append(("or", (draw(_pin(left)), draw(_pin(right)))))
        else:
            pin = draw(_pin(draw(st.sampled_from(pinnable))))
            conjuncts.append(("or", (pin, draw(st.sampled_from(filters)))))
    return tuple(conjuncts)


def _where_label(where: tuple[Any, ...]) -> str:
    kinds = {p[0] for p in where} | {c[0] for p in where if p[0] == "or" for c in p[1]}
    if "pin" in kinds or "pin_in" in kinds:
        return " +pin"
    return ""


def _eq(left: Any, right: Any, addend: int = 0, operator: str = "=") -> Any:
    return ("cmp2", left, operator, right, addend)


def _join_atoms(left: str, right: str) -> dict[str, tuple[Any, bool]]:
    """Join conditions between ``left`` and ``right``: name -> (predicate, co-locating)."""
    lm, r = model_of(left), model_of(right)

    def col(entity: str, name: str) -> Any:
        return ("col", entity, name)

    if {lm, r} == {"Customer", "Order"}:
        c, o = (left, right) if lm == "Customer" else (right, left)
        key, other = col(o, "customer_id"), col(c, "id")
        return {
            "K": (_eq(key, other), True),
            "N": (_eq(col(o, "qty"), col(c, "tier")), False),
            "A": (_eq(key, other, 1), False),
            "L": (_eq(key, other, 0, "<"), False),
            "NE": (_eq(key, other, 0, "!="), False),
        }
    if {lm, r} == {"Order", "Line"}:
        o, li = (left, right) if lm == "Order" else (right, left)
        key, other = col(li, "order_id"), col(o, "id")
        return {
            "K": (_eq(key, other), True),
            "N": (_eq(col(li, "qty"), col(o, "qty")), False),
            "A": (_eq(key, other, 1), False),
            "L": (_eq(key, other, 0, "<"), False),
            "NE": (_eq(key, other, 0, "!="), False),
        }
    if lm == r == "Customer":
        return {
            "K": (_eq(col(right, "id"), col(left, "id")), True),
            "N": (_eq(col(right, "city"), col(left, "city")), False),
            "T": (_eq(col(right, "tier"), col(left, "tier")), False),
            "A": (_eq(col(right, "id"), col(left, "id"), 1), False),
            "L": (_eq(col(right, "id"), col(left, "id"), 0, "<"), False),
            "NE": (_eq(col(right, "id"), col(left, "id"), 0, "!="), False),
        }
    if lm == r == "Order":
        return {
            # siblings: both follow one customer (the followers' keys to their parent)
            "K": (_eq(col(right, "customer_id"), col(left, "customer_id")), True),
            "P": (_eq(col(right, "id"), col(left, "id")), False),  # the primary key
            "N": (_eq(col(right, "qty"), col(left, "qty")), False),
            "A": (_eq(col(right, "id"), col(left, "id"), 1), False),
            "L": (_eq(col(right, "customer_id"), col(left, "customer_id"), 0, "<"), False),
            "NE": (_eq(col(right, "customer_id"), col(left, "customer_id"), 0, "!="), False),
        }
    if lm == r == "Line":
        return {
            "K": (_eq(col(right, "order_id"), col(left, "order_id")), True),
            "A": (_eq(col(right, "id"), col(left, "id"), 1), False),
            "N": (_eq(col(right, "qty"), col(left, "qty")), False),
            "L": (_eq(col(right, "order_id"), col(left, "order_id"), 0, "<"), False),
        }
    assert {lm, r} == {"Customer", "Agent"}, (lm, r)
    c, a = (left, right) if lm == "Customer" else (right, left)
    return {
        "K": (_eq(col(a, "id"), col(c, "agent_id")), False),  # independent rules
        "N": (_eq(col(a, "city"), col(c, "city")), False),
    }


# FROM templates: base entity, then (right entity, the entity it joins to, conditions)
# Conditions are atom names joined by "&" (AND) or "|" (OR); small results only (the
# non-equi ones come with an equality or on small tables).
JOIN_TEMPLATES: dict[str, tuple[str, tuple[tuple[str, str, tuple[str, ...]], ...]]] = {
    "customer-order": ("c", (("o", "c", ("K", "K&N", "N", "A", "L", "N&NE", "K|N", "K|A")),)),
    "order-line": ("o", (("l", "o", ("K", "K&N", "N", "A", "N&L", "K|A")),)),
    "customer-order-line": ("c", (("o", "c", ("K", "K&N")), ("l", "o", ("K", "N", "A")))),
    "line-order-customer": ("l", (("o", "l", ("K",)), ("c", "o", ("K", "N", "K|A")))),
    "self-join customer": (
        "c",
        (("c2", "c", ("K", "K&T", "N", "T", "A", "L", "N&L", "N&NE", "K|A", "K|N")),),
    ),
    "self-join order": ("o", (("o2", "o", ("K", "K&N", "P", "N", "A", "N&L", "K|A")),)),
    "self-join line": ("l", (("l2", "l", ("K", "A", "K|A")),)),
    "customer-agent": ("c", (("a", "c", ("K", "N")),)),
}
# joins whose co-location on the shard key the README promises: a refusal fails them too
MUST_ANSWER_TEMPLATES = frozenset(
    {"customer-order", "order-line", "customer-order-line", "line-order-customer"}
) | {"self-join customer"}


def _condition(atoms: dict[str, tuple[Any, bool]], name: str) -> tuple[Any, bool]:
    """The predicate of a condition name, and whether it proves co-location."""
    if "|" in name:
        parts = [atoms[part][0] for part in name.split("|")]
        return ("or", tuple(parts)), False  # an OR proves nothing
    parts = [atoms[part] for part in name.split("&")]
    predicate = parts[0][0] if len(parts) == 1 else ("and", tuple(p for p, _ in parts))
    return predicate, any(colocating for _, colocating in parts)


def _columns_of(entities: tuple[str, ...]) -> list[Any]:
    return [("col", e, name) for e in entities for name in SHOP_COLUMNS[model_of(e)]]


NUMERIC_COLUMNS = frozenset(
    {
        ("Customer", "id"),
        ("Customer", "tier"),
        ("Customer", "balance"),
        ("Order", "amount"),
        ("Order", "qty"),
        ("Line", "qty"),
        ("Line", "price"),
    }
)


@st.composite
def _aggregate_item(draw: Any, entities: tuple[str, ...]) -> Any:
    columns = _columns_of(entities)
    numeric = [c for c in columns if (model_of(c[1]), c[2]) in NUMERIC_COLUMNS]
    function = draw(
        st.sampled_from(
            ["count*", "count", "count_distinct", "sum", "min", "max", "avg", "coalesce_sum"]
        )
    )
    if function == "count*":
        return ("agg", "count", None)
    pool = numeric if function in ("sum", "avg", "coalesce_sum") else columns
    return ("agg", function, draw(st.sampled_from(pool)))


def _pks(entities: tuple[str, ...]) -> tuple[ShopOrderKey, ...]:
    return tuple(ShopOrderKey(("col", e, "id")) for e in entities)


@st.composite
def _select_and_order(draw: Any, entities: tuple[str, ...], source: str) -> dict[str, Any]:
    """A select list (columns, entities, aggregates or DISTINCT columns) over ``entities``,
    its GROUP BY, ORDER BY and LIMIT; ``total`` when the order is total."""
    columns = _columns_of(entities)
    form = draw(st.sampled_from(["columns", "columns", "entities", "aggregate", "distinct"]))
    parts: dict[str, Any] = {"form": form}
    directions = st.booleans()
    if form in ("columns", "entities"):
        if form == "columns":
            select = tuple(
                draw(st.lists(st.sampled_from(columns), min_size=1, max_size=4, unique=True))
            )
        else:
            chosen = draw(st.lists(st.sampled_from(entities), min_size=1, max_size=2, unique=True))
            select = tuple(("entity", e) for e in chosen)
        texts = [("text", e, "region") for e in entities if model_of(e) == "Customer"]
        keys = draw(st.lists(st.sampled_from(columns + texts), max_size=2, unique=True))
        order = tuple(ShopOrderKey(key, draw(directions)) for key in keys)
        limit = draw(st.sampled_from([None, None, 3, 10]))
        total = limit is not None or draw(st.booleans())
        if total:
            order += _pks(entities)
        parts.update(select=select, order_by=order, limit=limit, total=total)
    elif form == "distinct":
        select = tuple(
            draw(st.lists(st.sampled_from(columns), min_size=1, max_size=2, unique=True))
        )
        limit = draw(st.sampled_from([None, None, 4]))
        order = tuple(ShopOrderKey(key, draw(directions)) for key in select)
        if limit is None and draw(st.booleans()):
            order = ()
        parts.update(select=select, distinct=True, order_by=order, limit=limit, total=bool(order))
    else:
        group_by = tuple(draw(st.lists(st.sampled_from(columns), max_size=2, unique=True)))
        aggregates = draw(st.lists(_aggregate_item(entities), min_size=1, max_size=3, unique=True))
        # same-named columns of different models: count(c.id), count(o.id)
        if len(entities) > 1 and draw(st.booleans()):
            extra = [("agg", "count", ("col", e, "id")) for e in entities]
            aggregates += [a for a in extra if a not in aggregates]
        select = tuple(draw(st.permutations([*group_by, *aggregates])))
        order: tuple[ShopOrderKey, ...] = ()
        limit = None
        total = not group_by
        if group_by and draw(st.booleans()):
            keys = draw(st.permutations(list(group_by)))
            order = tuple(ShopOrderKey(key, draw(directions)) for key in keys)
            total = True
            limit = draw(st.sampled_from([None, 2, 5]))
        parts.update(select=select, group_by=group_by, order_by=order, limit=limit, total=total)
    parts["labeled"] = draw(st.booleans())
    parts["api"] = "scalars" if len(parts["select"]) == 1 and draw(st.booleans()) else "execute"
    return parts


def _form_label(parts: dict[str, Any]) -> str:
    return f"[{parts['form']}]"


@st.composite
def join_specs(draw: Any) -> ShopSpec:
    template = draw(st.sampled_from(sorted(JOIN_TEMPLATES)))
    base, steps = JOIN_TEMPLATES[template]
    joins = []
    colocated_all = True
    names = []
    for right, left, conditions in steps:
        name = draw(st.sampled_from(conditions))
        condition, colocated = _condition(_join_atoms(left, right), name)
        outer = draw(st.sampled_from([False, False, True]))
        joins.append(JoinSpec(right, condition, outer))
        colocated_all = colocated_all and colocated
        names.append(name + (" outer" if outer else ""))
    entities = (base, *(join.right for join in joins))
    source = draw(st.sampled_from(["orm", "core"]))
    parts = draw(_select_and_order(entities, source))
    where = draw(_where(entities))
    parts.pop("form")
    shape = f"{template} on {', '.join(names)}{_where_label(where)}"
    return ShopSpec(
        "join",
        shape,
        base=base,
        source=source,
        joins=tuple(joins),
        where=where,
        must_answer=colocated_all and template in MUST_ANSWER_TEMPLATES,
        **parts,
    )


def _customer_subqueries(draw: Any) -> list[tuple[str, Any, bool]]:
    """(label, predicate over the outer ``c``, must be answered) for the subquery family."""
    k, b = draw(_customer_ids), draw(_bound)
    negated = draw(st.booleans())
    status = draw(st.sampled_from(SHOP_STATUSES))
    by_key = ("cmp2", ("col", "o3", "customer_id"), "=", ("col", "c", "id"), 0)
    not_ = "NOT " if negated else ""
    return [
        (
            "scalar = (SELECT pinned row)",
            (
                "scalar_cmp",
                ("col", "c", "tier"),
                "=",
                SubSpec("c3", ("col", "c3", "tier"), (("pin", "c3", k, b),)),
            ),
            False,
        ),
        (
            "scalar = (SELECT pinned row), same model",
            (
                "scalar_cmp",
                ("col", "c", "tier"),
                "=",
                SubSpec("c", ("col", "c", "tier"), (("pin", "c", k, b),)),
            ),
            False,
        ),
        (
            "scalar >= (SELECT max())",
            (
                "scalar_cmp",
                ("col", "c", "tier"),
                ">=",
                SubSpec(
                    "c3",
                    ("agg", "max", ("col", "c3", "tier")),
                    (("cmp", ("col", "c3", "city"), "=", "Rome"),),
                ),
            ),
            False,
        ),
        (
            f"{not_}IN (SELECT non-key)",
            (
                "in",
                ("col", "c", "city"),
                SubSpec("c3", ("col", "c3", "city"), (("cmp", ("col", "c3", "tier"), "=", 0),)),
                negated,
            ),
            False,
        ),
        (
            f"{not_}IN (SELECT non-key), same model",
            (
                "in",
                ("col", "c", "city"),
                SubSpec("c", ("col", "c", "city"), (("cmp", ("col", "c", "tier"), "=", 0),)),
                negated,
            ),
            False,
        ),
        (
            f"{not_}IN (SELECT follower's key)",
            (
                "in",
                ("col", "c", "id"),
                SubSpec(
                    "o3",
                    ("col", "o3", "customer_id"),
                    (("cmp", ("col", "o3", "status"), "=", status),),
                ),
                negated,
            ),
            False,
        ),
        (
            f"{not_}IN (SELECT follower non-key)",
            (
                "in",
                ("col", "c", "tier"),
                SubSpec(
                    "o3", ("col", "o3", "qty"), (("cmp", ("col", "o3", "status"), "=", "open"),)
                ),
                negated,
            ),
            False,
        ),
        (
            f"{not_}IN (SELECT independent table)",
            (
                "in",
                ("col", "c", "agent_id"),
                SubSpec("a", ("col", "a", "id"), (("cmp", ("col", "a", "city"), "=", "Oslo"),)),
                negated,
            ),
            False,
        ),
        (
            f"{not_}EXISTS correlated on key",
            (
                "exists",
                SubSpec("o3", None, (by_key, ("cmp", ("col", "o3", "status"), "=", status))),
                negated,
            ),
            True,
        ),
        (
            f"{not_}EXISTS correlated non-key",
            (
                "exists",
                SubSpec(
                    "c3",
                    None,
                    (
                        ("cmp2", ("col", "c3", "city"), "=", ("col", "c", "city"), 0),
                        ("cmp2", ("col", "c3", "id"), "!=", ("col", "c", "id"), 0),
                    ),
                ),
                negated,
            ),
            False,
        ),
        (
            f"{not_}EXISTS correlated on follower non-key",
            (
                "exists",
                SubSpec(
                    "o3", None, (("cmp2", ("col", "o3", "qty"), "=", ("col", "c", "tier"), 0),)
                ),
                negated,
            ),
            False,
        ),
        (
            f"{not_}EXISTS uncorrelated",
            (
                "exists",
                SubSpec(
                    "o3",
                    None,
                    (
                        ("cmp", ("col", "o3", "status"), "=", "open"),
                        ("cmp", ("col", "o3", "qty"), ">", 7),
                    ),
                ),
                negated,
            ),
            False,
        ),
        (
            "scalar < (SELECT count() correlated on key)",
            (
                "scalar_cmp",
                ("col", "c", "tier"),
                "<",
                SubSpec("o3", ("agg", "count", ("col", "o3", "id")), (by_key,)),
            ),
            True,
        ),
        (
            "scalar < (SELECT count() correlated non-key)",
            (
                "scalar_cmp",
                ("col", "c", "tier"),
                "<",
                SubSpec(
                    "c3",
                    ("agg", "count", ("col", "c3", "id")),
                    (("cmp2", ("col", "c3", "city"), "=", ("col", "c", "city"), 0),),
                ),
            ),
            False,
        ),
    ]


def _order_subqueries(draw: Any) -> list[tuple[str, Any, bool]]:
    """(label, predicate over the outer ``o``, must be answered)."""
    order_id = draw(st.sampled_from(ORDER_IDS))
    negated = draw(st.booleans())
    not_ = "NOT " if negated else ""
    return [
        (
            "scalar = (SELECT row by non-key id)",
            (
                "scalar_cmp",
                ("col", "o", "qty"),
                "=",
                SubSpec("o3", ("col", "o3", "qty"), (("cmp", ("col", "o3", "id"), "=", order_id),)),
            ),
            False,
        ),
        (
            f"{not_}IN (SELECT parent's key)",
            (
                "in",
                ("col", "o", "customer_id"),
                SubSpec("c3", ("col", "c3", "id"), (("cmp", ("col", "c3", "tier"), "=", 0),)),
                negated,
            ),
            False,
        ),
        (
            f"{not_}EXISTS lines correlated on key",
            (
                "exists",
                SubSpec(
                    "l", None, (("cmp2", ("col", "l", "order_id"), "=", ("col", "o", "id"), 0),)
                ),
                negated,
            ),
            True,
        ),
        (
            f"{not_}EXISTS parent correlated on key",
            (
                "exists",
                SubSpec(
                    "c3",
                    None,
                    (
                        ("cmp2", ("col", "c3", "id"), "=", ("col", "o", "customer_id"), 0),
                        ("cmp", ("col", "c3", "tier"), "=", 0),
                    ),
                ),
                negated,
            ),
            True,
        ),
    ]


def _scalar_columns(draw: Any) -> list[tuple[str, Any, bool]]:
    """(label, scalar subquery in the select list of ``c``, must be answered)."""
    k, b = draw(_customer_ids), draw(_bound)
    by_key = ("cmp2", ("col", "o3", "customer_id"), "=", ("col", "c", "id"), 0)
    return [
        (
            "SELECT (count() correlated on key)",
            ("scalar", SubSpec("o3", ("agg", "count", ("col", "o3", "id")), (by_key,))),
            True,
        ),
        (
            "SELECT (sum() correlated on key)",
            ("scalar", SubSpec("o3", ("agg", "sum", ("col", "o3", "amount")), (by_key,))),
            True,
        ),
        (
            "SELECT (count() correlated non-key)",
            (
                "scalar",
                SubSpec(
                    "c3",
                    ("agg", "count", ("col", "c3", "id")),
                    (("cmp2", ("col", "c3", "city"), "=", ("col", "c", "city"), 0),),
                ),
            ),
            False,
        ),
        (
            "SELECT (pinned row, uncorrelated)",
            ("scalar", SubSpec("c3", ("col", "c3", "name"), (("pin", "c3", k, b),))),
            False,
        ),
    ]


@st.composite
def subquery_specs(draw: Any) -> ShopSpec:
    source = draw(st.sampled_from(["orm", "core"]))
    kind = draw(st.sampled_from(["customer", "customer", "order", "select list", "from"]))
    if kind == "from":
        return draw(_from_subquery_spec(source))
    base = "o" if kind == "order" else "c"
    if kind == "select list":
        label, scalar, must = draw(st.sampled_from(_scalar_columns(draw)))
        select: tuple[Any, ...] = (("col", "c", "id"), scalar)
        where = draw(_where(("c",)))
        order = (ShopOrderKey(("col", "c", "id")),)
        return ShopSpec(
            "subquery",
            label + _where_label(where),
            base,
            source,
            select=select,
            where=where,
            order_by=order,
            total=True,
            labeled=draw(st.booleans()),
            must_answer=must,
        )
    candidates = _order_subqueries(draw) if base == "o" else _customer_subqueries(draw)
    label, predicate, must = draw(st.sampled_from(candidates))
    combine = draw(st.sampled_from(["alone", "alone", "and", "or"]))
    where: tuple[Any, ...] = (predicate,)
    if combine != "alone":
        other = draw(st.sampled_from([*_filters(base), draw(_pin(base))]))
        where = (predicate, other) if combine == "and" else (("or", (predicate, other)),)
        label += " AND ..." if combine == "and" else " under OR"
    form = draw(st.sampled_from(["columns", "count", "entity"]))
    order: tuple[ShopOrderKey, ...] = ()
    limit = None
    if form == "count":
        select = (("agg", "count", None),)
        total = True
    else:
        if form == "entity":
            select = (("entity", base),)
        else:
            names = SHOP_COLUMNS[model_of(base)]
            chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
            select = tuple(("col", base, name) for name in chosen)
        total = draw(st.booleans())
        if total:
            order = (ShopOrderKey(("col", base, "id"), draw(st.booleans())),)
            limit = draw(st.sampled_from([None, 5]))
    return ShopSpec(
        "subquery",
        label,
        base,
        source,
        select=select,
        where=where,
        order_by=order,
        limit=limit,
        total=total,
        must_answer=must,
        api="scalars" if len(select) == 1 and draw(st.booleans()) else "execute",
    )


@st.composite
def _from_subquery_spec(draw: Any, source: str) -> ShopSpec:
    """``SELECT ... FROM (SELECT customers.* WHERE ...) AS cs [JOIN orders ON key]``."""
    from_where = draw(_where(("c",)))
    joined = draw(st.booleans())
    joins: tuple[JoinSpec, ...] = ()
    entities: tuple[str, ...] = ("cs",)
    if joined:
        condition = ("cmp2", ("col", "o", "customer_id"), "=", ("col", "cs", "id"), 0)
        joins = (JoinSpec("o", condition, draw(st.booleans())),)
        entities = ("cs", "o")
    where = tuple(p for p in draw(_where(("c",))) if p[0] != "or")
    where = tuple(_on_entity(p, "cs") for p in where)
    if draw(st.booleans()):
        select = (("agg", "count", None), ("agg", "sum", ("col", "cs", "tier")))
        if joined:
            select += (("agg", "count", ("col", "o", "id")),)
        parts: dict[str, Any] = {"select": select, "total": True}
        label = "FROM (subquery) aggregate"
    else:
        select = (("col", "cs", "id"), ("col", "cs", "city"))
        if joined:
            select += (("col", "o", "id"),)
        parts = {
            "select": select,
            "total": True,
            "order_by": _pks(entities),
            "limit": draw(st.sampled_from([None, 4])),
        }
        label = "FROM (subquery) rows"
    if joined:
        label += " JOIN follower on key" + (" outer" if joins[0].outer else "")
    return ShopSpec(
        "subquery",
        label + _where_label(from_where) + _where_label(where),
        "cs",
        source,
        joins=joins,
        where=where,
        from_where=from_where,
        must_answer=True,
        **parts,
    )


def _on_entity(predicate: Any, entity: str) -> Any:
    """``predicate`` (over ``c``) moved onto ``entity``."""
    if isinstance(predicate, tuple):
        if len(predicate) == 3 and predicate[0] == "col" and predicate[1] == "c":
            return ("col", entity, predicate[2])
        if predicate and predicate[0] in ("pin", "pin_in") and predicate[1] == "c":
            return (predicate[0], entity, *predicate[2:])
        return tuple(_on_entity(part, entity) for part in predicate)
    return predicate


CUSTOMER_LOADS = (
    "joinedload(orders)",
    "selectinload(orders)",
    "joinedload(orders.lines)",
    "selectinload(orders.lines)",
    "contains_eager(orders)",
)
ORDER_LOADS = ("joinedload(customer)", "selectinload(lines)", "contains_eager(customer)")
# how the loaded objects are consumed: a list kept, or one object at a time, dropped
EAGER_APIS = (
    "scalars().all()",
    "scalars().unique().all()",
    "execute().unique().all()",
    "count scalars().unique()",
    "walk scalars().unique()",
    "walk scalars()",
)


@st.composite
def eager_specs(draw: Any) -> ShopSpec:
    base = draw(st.sampled_from(["c", "c", "o"]))
    load = draw(st.sampled_from(CUSTOMER_LOADS if base == "c" else ORDER_LOADS))
    joins: tuple[JoinSpec, ...] = ()
    if load.startswith("contains_eager"):
        other = "o" if base == "c" else "c"
        joins = (JoinSpec(other, _join_atoms(base, other)["K"][0], draw(st.booleans())),)
    where = draw(_where((base,)))
    ordered = draw(st.booleans())
    limit = draw(st.sampled_from([None, 3])) if ordered and not joins else None
    api = draw(st.sampled_from(EAGER_APIS))
    return ShopSpec(
        "eager",
        f"{load} {api}" + (" LIMIT" if limit else "") + _where_label(where),
        base,
        select=(("entity", base),),
        joins=joins,
        where=where,
        order_by=_pks((base, *(j.right for j in joins))) if ordered else (),
        limit=limit,
        total=ordered,
        loads=(load,),
        api=api,
        must_answer=limit is None,
    )


TEXT_STATEMENTS = {
    "count(*)": ("SELECT count(*) FROM customers", True),
    "count(*) WHERE": ("SELECT count(*) FROM orders WHERE status = 'PAID'", True),
    "rows ORDER BY": ("SELECT id, city FROM customers ORDER BY id", True),
    "GROUP BY": ("SELECT city, count(*) AS n FROM customers GROUP BY city", False),
    "sum()": ("SELECT sum(amount) FROM orders", True),
    "join": (
        "SELECT c.id, o.id FROM customers c JOIN orders o ON o.customer_id = c.id ORDER BY o.id",
        True,
    ),
}


@st.composite
def text_specs(draw: Any) -> ShopSpec:
    """Textual SQL on every shard (must be refused or right) or pinned to one shard."""
    name = draw(st.sampled_from(sorted(TEXT_STATEMENTS)))
    sql, total = TEXT_STATEMENTS[name]
    api = draw(st.sampled_from(["execute", "execute", "from_statement"]))
    if api == "from_statement":
        name, sql, total = "ORM from_statement", "SELECT * FROM customers ORDER BY id", True
    pinned = draw(st.sampled_from([None, None, *SHARDS]))
    if pinned is not None:
        # the shard's own rows only, so that the reference's answer is the shard's
        ids = ", ".join(map(str, CUSTOMERS_BY_SHARD[pinned]))
        table = "orders" if "FROM orders" in sql else "customers"
        column = "customer_id" if table == "orders" else "id"
        sql = sql.replace(
            f"FROM {table}" if name != "join" else "JOIN orders o",
            f"FROM (SELECT * FROM {table} WHERE {column} IN ({ids})) AS {table}"
            if name != "join"
            else f"JOIN (SELECT * FROM orders WHERE customer_id IN ({ids})) AS o",
        )
    return ShopSpec(
        "text",
        f"text {name}" + (" pinned" if pinned else " on every shard"),
        total=total,
        text=sql,
        pinned=pinned,
        api=api,
        must_answer=pinned is not None,
    )


@st.composite
def sort_specs(draw: Any) -> ShopSpec:
    """Text sort keys of every length (MariaDB: WEIGHT_STRING of the declared length)."""
    joined = draw(st.booleans())
    keys = draw(
        st.lists(st.sampled_from(sorted(SHOP_TEXT_KEYS)), min_size=1, max_size=2, unique=True)
    )
    order = [ShopOrderKey(("text", "c", key), draw(st.booleans())) for key in keys]
    select: tuple[Any, ...] = (("col", "c", "id"), *(key.item for key in order))
    joins: tuple[JoinSpec, ...] = ()
    entities: tuple[str, ...] = ("c",)
    if joined:  # ORDER BY columns of two models
        joins = (JoinSpec("o", _join_atoms("c", "o")["K"][0]),)
        entities = ("c", "o")
        other = draw(st.sampled_from(["status", "note"]))
        order.insert(
            draw(st.integers(0, len(order))), ShopOrderKey(("col", "o", other), draw(st.booleans()))
        )
        select += (("col", "o", "id"), ("col", "o", other))
    plain = all(key in ("region", "name", "city") for key in keys)
    return ShopSpec(
        "sort",
        ("two models: " if joined else "") + " , ".join(keys),
        source=draw(st.sampled_from(["orm", "core"])),
        select=select,
        joins=joins,
        where=draw(_where(entities)) if draw(st.booleans()) else (),
        order_by=(*order, *_pks(entities)),
        limit=draw(st.sampled_from([3, 7, 50])),
        total=True,
        labeled=draw(st.booleans()),
        must_answer=plain,
    )


@st.composite
def compound_specs(draw: Any) -> ShopSpec:
    """UNION / UNION ALL of text (or integer) columns of two models."""
    pairs = [
        (("col", "c", "region"), ("col", "o", "note")),
        (("col", "c", "city"), ("col", "a", "city")),
        (("col", "c", "name"), ("col", "c", "city")),
        (("col", "c", "tier"), ("col", "o", "qty")),
    ]
    first, second = draw(st.sampled_from(pairs))
    keyword = draw(st.sampled_from(["union", "union_all"]))
    wheres = (draw(_where((first[1],))), draw(_where((second[1],))))
    limit = draw(st.sampled_from([None, 4]))
    return ShopSpec(
        "compound",
        f"{keyword.upper().replace('_', ' ')} {first[1]}.{first[2]}, {second[1]}.{second[2]}"
        + (" LIMIT" if limit else ""),
        source=draw(st.sampled_from(["orm", "core"])),
        select=(first, second),
        where=wheres,
        limit=limit,
        total=limit is not None,
        text=keyword,
        # may be refused: rows of independently sharded tables (they meet in no row of a
        # UNION, but the rule is the rule), and text of the server's default collation (on
        # MariaDB, case-insensitive: UNION's de-duplication is the collation's)
        must_answer=second[1] != "a" and first[2] != "region",
    )


SHOP_FAMILIES: dict[str, Callable[[], st.SearchStrategy[ShopSpec]]] = {
    "join": join_specs,
    "subquery": subquery_specs,
    "eager": eager_specs,
    "text": text_specs,
    "sort": sort_specs,
    "compound": compound_specs,
}
