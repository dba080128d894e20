"""A grammar of multi-shard SELECTs, for ``test_cross_shard_differential.py``.

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
    Integer,
    Numeric,
    String,
    and_,
    bindparam,
    distinct,
    func,
    or_,
    select,
)
from sqlalchemy.orm import DeclarativeBase, mapped_column

from shardalchemy import Hash, ShardKey

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

    @property
    def entity_only(self) -> bool:
        return self.select == ("Item",)


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


@st.composite
def rows_specs(draw: Any, backend: str) -> Spec:
    form = draw(st.sampled_from(["columns", "columns", "entity", "entity+column", "column+entity"]))
    select: tuple[Any, ...]
    if form == "columns":
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
    if len(select) == 1:
        apis.append("scalars")
    if form == "entity":
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
    )


@st.composite
def distinct_specs(draw: Any, backend: str) -> Spec:
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


@st.composite
def aggregate_specs(draw: Any, backend: str) -> Spec:
    grouped = draw(st.booleans()) or draw(st.booleans())  # three in four
    group_by = (
        tuple(draw(st.lists(st.sampled_from(GROUP_KEYS), min_size=1, max_size=2, unique=True)))
        if grouped
        else ()
    )
    # GROUP BY without aggregates is DISTINCT by another name
    aggregates = draw(st.lists(_aggregates, min_size=0 if grouped else 1, max_size=3, unique=True))
    optional = None
    extra = draw(st.sampled_from([None] * 7 + ["expression", "distinct"]))
    if extra == "expression":
        name = draw(st.sampled_from(sorted(AGGREGATE_EXPRESSIONS)))
        aggregates.append(("expr", name))
        optional = f"expression over aggregates: {name}"
    elif extra == "distinct":
        # sum/avg of DISTINCT values: the per-shard sums of distinct values do not add up
        function = draw(st.sampled_from(["sum_distinct", "avg_distinct"]))
        aggregates.append((function, draw(st.sampled_from(("a", "b", "price", "cat")))))
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
    )


def specs(family: str, backend: str) -> st.SearchStrategy[Spec]:
    return {"rows": rows_specs, "distinct": distinct_specs, "aggregate": aggregate_specs}[family](
        backend
    )


# -- rendering ----------------------------------------------------------------------------------


class Renderer:
    """Render one spec over one backend's models.

    Each expression and aggregate is built once per statement and reused wherever the spec
    names it again (select list, GROUP BY, HAVING, ORDER BY): PostgreSQL matches GROUP BY
    expressions textually, so ``coalesce(cat, $1)`` and ``coalesce(cat, $2)`` would differ.
    """

    def __init__(self, models: Models, spec: Spec) -> None:
        self.item = models.item
        self.spec = spec
        self.parameters: dict[str, Any] = {}
        self._built: dict[Any, Any] = {}
        self._labels: dict[Any, Any] = {}

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
            return self.item
        if key in COLUMNS:
            return self.expression(key)
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
        statement = select(*columns).select_from(self.item)
        if spec.family == "distinct":
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
        assert spec.entity_only, spec
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
