"""The router's correctness rule, on real databases: a routed statement returns what the
same statement returns run on every shard.

The router may include shards it did not need; it must never leave out a shard holding a
matching row. Hypothesis draws rows and random predicate trees (``==``, ``IN``, tuple IN,
``AND``, ``OR``, ``NOT``, ``IS NULL``, ``BETWEEN``, ``<``/``<=``/``>``/``>=``, ``!=``,
predicates on columns that are not shard keys, values bound at execute time) over:

- ``Reading``: sharded by a ``Range`` strategy on an integer key;
- ``Account``: sharded by a ``Hash`` on a string key, with ``Entry`` following it through a
  foreign key to that key.

Each statement runs through a declarative ``ShardedSession`` over one database per shard,
and is compared with the union of the same statement pinned with ``set_shard_id`` to each
shard in turn. Tables are built once per test; each example reloads its rows with plain
DELETE + executemany on every shard.

The default run keeps each property to 60 examples; ``-m slow`` runs the same properties
with many more.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from _servers import MakeDatabase
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    ForeignKey,
    Integer,
    String,
    and_,
    bindparam,
    delete,
    exists,
    insert,
    literal,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shardalchemy import (
    FollowParent,
    Hash,
    Range,
    ShardKey,
    ShardKeyError,
    ShardMap,
    StatementLog,
    set_shard_id,
)
from shardalchemy.routing import Router
from shardalchemy.sharding import RuleBook

SHARDS = ("s0", "s1", "s2")
DEFAULT_EXAMPLES = 60
SLOW_EXAMPLES = 1000

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]

# (-inf, 100) -> s0, [100, 200) -> s1, [200, inf) -> s2
SENSOR_RANGE = Range([(None, "s0"), (100, "s1"), (200, "s2")])
# declared with its shards, so the follower's rule and the parent's share one strategy
CODE_HASH = Hash(buckets=64, shards=SHARDS)


def _codes_on_every_shard(per_shard: int = 2) -> tuple[str, ...]:
    found: dict[str, list[str]] = {shard: [] for shard in SHARDS}
    for number in itertools.count():
        code = f"acct-{number}"
        owners = found[CODE_HASH.shard_for(code)]  # type: ignore[index]
        if len(owners) < per_shard:
            owners.append(code)
        if all(len(codes) == per_shard for codes in found.values()):
            return tuple(sorted(code for codes in found.values() for code in codes))
    raise AssertionError("unreachable")


CODES = _codes_on_every_shard()


class Base(DeclarativeBase):
    pass


class Reading(Base):
    __tablename__ = "readings"
    __sharding__ = ShardKey("sensor", SENSOR_RANGE)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    sensor: Mapped[int] = mapped_column(Integer)
    value: Mapped[int | None] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(String(10))


class Account(Base):
    __tablename__ = "accounts"
    __sharding__ = ShardKey("code", CODE_HASH)

    code: Mapped[str] = mapped_column(String(20), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(10))
    entries: Mapped[list[Entry]] = relationship(back_populates="account")


class Entry(Base):
    __tablename__ = "entries"
    __sharding__ = FollowParent("account")

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    account_code: Mapped[str | None] = mapped_column(ForeignKey("accounts.code"))
    amount: Mapped[int | None] = mapped_column(Integer)
    account: Mapped[Account] = relationship(back_populates="entries")


# -- the sharded world: built once per test, reloaded per example ------------------------------


@dataclasses.dataclass
class World:
    shard_map: ShardMap
    kind: str

    def session(self) -> Any:
        return self.shard_map.sessionmaker()()

    def load(
        self,
        readings: Sequence[dict[str, Any]] = (),
        accounts: Sequence[dict[str, Any]] = (),
        entries: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Replace every shard's rows with the given ones, each on the shard that owns it."""
        account_shard = {row["code"]: CODE_HASH.shard_for(row["code"]) for row in accounts}
        placed = {
            Reading.__table__: [(SENSOR_RANGE.shard_for(r["sensor"]), r) for r in readings],
            Account.__table__: [(account_shard[a["code"]], a) for a in accounts],
            Entry.__table__: [(account_shard[e["account_code"]], e) for e in entries],
        }
        for shard in SHARDS:
            with self.shard_map.bind(shard).begin() as connection:
                for table in (Entry.__table__, Account.__table__, Reading.__table__):
                    connection.execute(delete(table))
                for table in (Reading.__table__, Account.__table__, Entry.__table__):
                    rows = [row for owner, row in placed[table] if owner == shard]
                    if rows:
                        connection.execute(insert(table), rows)


@pytest.fixture
def world_factory(make_database: MakeDatabase) -> Iterator[Callable[[str], World]]:
    worlds: list[World] = []

    def make(kind: str) -> World:
        urls = {shard: make_database(kind) for shard in SHARDS}  # type: ignore[arg-type]
        shard_map = ShardMap.databases(urls)
        if kind == "sqlite":
            for shard in SHARDS:  # the rows are throwaway: skip the fsync of every reload
                sa.event.listen(
                    shard_map.bind(shard),
                    "connect",
                    lambda connection, record: connection.execute("PRAGMA synchronous = OFF"),
                )
        shard_map.create_all(Base.metadata)
        world = World(shard_map, kind)
        worlds.append(world)
        return world

    yield make
    for world in worlds:
        world.shard_map.dispose()


def test_the_loader_places_rows_where_the_session_would(
    world_factory: Callable[[str], World],
) -> None:
    world = world_factory("sqlite")
    with world.session() as session:
        account = Account(code=CODES[-1], owner="x")
        account.entries.append(Entry(id=1, amount=1))
        session.add_all([account, Reading(id=1, sensor=150, value=1)])
        with session.recording_routes() as routes:
            session.flush()
        placed = {route.statement: route.shards for route in routes}
        session.rollback()
    assert placed == {
        "INSERT accounts": (CODE_HASH.shard_for(CODES[-1]),),
        "INSERT entries": (CODE_HASH.shard_for(CODES[-1]),),
        "INSERT readings": (SENSOR_RANGE.shard_for(150),),
    }
    assert {CODE_HASH.shard_for(code) for code in CODES} == set(SHARDS)


# -- random predicate trees ---------------------------------------------------------------------

COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
FLIPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}


@dataclasses.dataclass(frozen=True)
class Columns:
    """The columns a predicate tree compares: a column that places rows, and one that does not."""

    key: Any
    other: Any


@dataclasses.dataclass(frozen=True)
class Pools:
    keys: tuple[Any, ...]  # values predicates compare the key with (None included)
    others: tuple[Any, ...]


SENSORS = (-1, 0, 1, 99, 100, 101, 150, 199, 200, 201, 250, 1000)
READING_POOLS = Pools((*SENSORS, None), (0, 1, 2, None))
CODE_POOLS = Pools((*CODES, "acct-none", None), (0, 1, 2, None))
OWNER_POOLS = Pools((*CODES, "acct-none", None), ("x", "y", None))


@functools.cache
def trees(pools: Pools) -> st.SearchStrategy[Any]:
    value = st.sampled_from(pools.keys)
    known = st.sampled_from([v for v in pools.keys if v is not None])
    other = st.sampled_from(pools.others)
    known_other = st.sampled_from([v for v in pools.others if v is not None])
    order = st.sampled_from(sorted(COMPARISONS))
    leaves = st.one_of(
        st.tuples(st.just("eq"), value),
        st.tuples(st.just("reversed_eq"), known),
        st.tuples(st.just("bound_eq"), value),
        st.tuples(st.just("in"), st.lists(value, max_size=3)),
        st.tuples(st.just("bound_in"), st.lists(known, max_size=3)),
        st.tuples(st.just("tuple_in"), st.lists(st.tuples(known, known_other), max_size=3)),
        st.tuples(st.just("not_in"), st.lists(known, min_size=1, max_size=3)),
        st.tuples(st.just("ne"), known),
        st.tuples(st.just("is_null")),
        st.tuples(st.just("is_not_null")),
        st.tuples(st.just("between"), known, known),
        st.tuples(st.just("bound_between"), known, known),
        st.tuples(st.just("compare"), order, known),
        st.tuples(st.just("reversed_compare"), order, known),
        st.tuples(st.just("bound_compare"), order, known),
        st.tuples(st.just("other_eq"), other),
        st.tuples(st.just("other_ne"), known_other),
        st.tuples(st.just("other_bound"), known_other),
    )
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.tuples(st.just("and"), st.lists(children, min_size=1, max_size=3)),
            st.tuples(st.just("or"), st.lists(children, min_size=1, max_size=3)),
            st.tuples(st.just("not"), children),
        ),
        max_leaves=6,
    )


def clause(tree: Any, columns: Columns, parameters: dict[str, Any]) -> Any:
    """Build the SQL of a tree; values bound at execute time go into ``parameters``."""
    kind, *arguments = tree
    key, other = columns.key, columns.other

    def bound(value: Any, **options: Any) -> Any:
        name = f"p{len(parameters)}"
        parameters[name] = value
        return bindparam(name, **options)

    if kind in ("and", "or"):
        combine = and_ if kind == "and" else or_
        return combine(*(clause(child, columns, parameters) for child in arguments[0]))
    if kind == "not":
        return ~clause(arguments[0], columns, parameters)
    if kind == "eq":
        return key == arguments[0]  # == None is IS NULL
    if kind == "reversed_eq":
        return literal(arguments[0], key.type) == key
    if kind == "bound_eq":
        return key == bound(arguments[0])  # None stays "= NULL": no row
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
    if kind == "compare":
        return COMPARISONS[arguments[0]](key, arguments[1])
    if kind == "reversed_compare":
        symbol, value = arguments
        return COMPARISONS[FLIPPED[symbol]](literal(value, key.type), key)
    if kind == "bound_compare":
        return COMPARISONS[arguments[0]](key, bound(arguments[1]))
    if kind == "other_eq":
        return other == arguments[0]
    if kind == "other_ne":
        return other != arguments[0]
    assert kind == "other_bound", kind
    return other == bound(arguments[0])


# -- statements over the two sharded families ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """A statement to route, and how to read its answer."""

    statement: Any
    parameters: dict[str, Any]
    write: bool = False  # answer with the summed rowcount
    entities: bool = False  # answer with the ids of the loaded Reading objects


def reading_case(shape: str, tree: Any) -> Case:
    parameters: dict[str, Any] = {}
    if shape in ("columns", "update", "delete", "entities"):
        where = clause(tree, Columns(Reading.sensor, Reading.value), parameters)
        if shape == "columns":
            statement: Any = select(Reading.id, Reading.sensor, Reading.value).where(where)
        elif shape == "entities":
            statement = select(Reading).where(where)
        elif shape == "update":
            statement = update(Reading).where(where).values(label="u")
        else:
            statement = delete(Reading).where(where)
        if shape in ("update", "delete"):
            statement = statement.execution_options(synchronize_session=False)
            return Case(statement, parameters, write=True)
        return Case(statement, parameters, entities=shape == "entities")
    inner = select(Reading.id, Reading.sensor, Reading.value)
    source = inner.subquery("inner_readings") if shape == "subquery" else inner.cte("readings_cte")
    where = clause(tree, Columns(source.c.sensor, source.c.value), parameters)
    return Case(select(source.c.id, source.c.value).where(where), parameters)


def account_case(shape: str, tree: Any, second: Any) -> Case:
    parameters: dict[str, Any] = {}
    if shape == "entries":
        where = clause(tree, Columns(Entry.account_code, Entry.amount), parameters)
        return Case(select(Entry.id, Entry.account_code, Entry.amount).where(where), parameters)
    if shape == "accounts":
        where = clause(tree, Columns(Account.code, Account.owner), parameters)
        return Case(select(Account.code, Account.owner).where(where), parameters)
    if shape == "join":
        # a predicate on the parent's key and one on the follower's foreign key, together
        where = and_(
            clause(tree, Columns(Account.code, Account.owner), parameters),
            clause(second, Columns(Entry.account_code, Entry.amount), parameters),
        )
        statement = select(Entry.id, Account.code, Account.owner).join(Entry.account)
        return Case(statement.where(where), parameters)
    if shape == "exists":
        where = clause(tree, Columns(Account.code, Account.owner), parameters)
        has_entries = exists().where(
            Entry.account_code == Account.code,
            clause(second, Columns(Entry.account_code, Entry.amount), parameters),
        )
        return Case(select(Account.code).where(where, has_entries), parameters)
    if shape == "in_subquery":
        where = clause(tree, Columns(Account.code, Account.owner), parameters)
        spenders = select(Entry.account_code).where(Entry.amount > 0)
        return Case(select(Account.code).where(where, Account.code.in_(spenders)), parameters)
    where = clause(tree, Columns(Entry.account_code, Entry.amount), parameters)
    statement = update(Entry) if shape == "update" else delete(Entry)
    if shape == "update":
        statement = statement.values(amount=Entry.amount)
    statement = statement.where(where).execution_options(synchronize_session=False)
    return Case(statement, parameters, write=True)


def answer(session: Any, case: Case, shard: str | None) -> Any:
    """The statement's answer, routed (``shard=None``) or pinned to one shard."""
    statement = case.statement
    parameters = case.parameters or None
    if case.write:
        bind_arguments = {"shard_id": shard} if shard is not None else None
        result = session.execute(statement, parameters, bind_arguments=bind_arguments)
        count = result.rowcount
        session.rollback()
        return count
    if shard is not None:
        statement = statement.options(set_shard_id(shard))
    result = session.execute(statement, parameters)
    if case.entities:
        return collections.Counter(reading.id for reading in result.scalars())
    return collections.Counter(tuple(row) for row in result)


def check_routed_equals_all_shards(world: World, case: Case) -> None:
    with world.session() as session:
        route = session.explain(case.statement, case.parameters)
        with session.recording_routes() as routes:
            routed = answer(session, case, None)
        assert [r.shards for r in routes] == [route.shards], "explain() differs from the route"
        # again as production runs it: not recording, so the single-shard fast path is on;
        # what reaches the shards is observed from the outside
        with StatementLog(world.shard_map) as log:
            fast = answer(session, case, None)
        assert fast == routed, "the fast path answers differently"
        assert set(log.shards()) == set(route.shards), f"the fast path ran elsewhere: {route!r}"
        pinned = {shard: answer(session, case, shard) for shard in SHARDS}
    if case.write:
        total: Any = sum(pinned.values())
        needed = {shard for shard, count in pinned.items() if count}
    else:
        total = sum(pinned.values(), collections.Counter())
        needed = {shard for shard, rows in pinned.items() if rows}
    event(f"routed to {len(route.shards)} of {len(SHARDS)} shards")
    assert needed <= set(route.shards), f"under-included: {route!r}"
    assert routed == total, route


row_strategy = st.fixed_dictionaries(
    {
        "sensor": st.sampled_from(SENSORS),
        "value": st.sampled_from(READING_POOLS.others),
        "label": st.sampled_from(["a", "b", None]),
    }
)


def readings_property(world: World, examples: int) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        rows=st.lists(row_strategy, max_size=10),
        shape=st.sampled_from(["columns", "entities", "subquery", "cte", "update", "delete"]),
        tree=trees(READING_POOLS),
    )
    def routed_equals_all_shards(rows: list[dict[str, Any]], shape: str, tree: Any) -> None:
        world.load(readings=[dict(row, id=number) for number, row in enumerate(rows)])
        check_routed_equals_all_shards(world, reading_case(shape, tree))

    routed_equals_all_shards()


ACCOUNT_SHAPES = ["entries", "accounts", "join", "exists", "in_subquery", "update", "delete"]


def accounts_property(world: World, examples: int) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        owners=st.dictionaries(
            st.sampled_from(CODES), st.sampled_from(OWNER_POOLS.others), max_size=len(CODES)
        ),
        entries=st.lists(
            st.tuples(st.sampled_from(CODES), st.sampled_from(CODE_POOLS.others)), max_size=10
        ),
        shape=st.sampled_from(ACCOUNT_SHAPES),
        data=st.data(),
    )
    def routed_equals_all_shards(
        owners: dict[str, Any], entries: list[tuple[str, Any]], shape: str, data: st.DataObject
    ) -> None:
        # the first tree compares Account.owner (strings) where the shape reads accounts
        on_accounts = shape in ("accounts", "join", "exists", "in_subquery")
        tree = data.draw(trees(OWNER_POOLS if on_accounts else CODE_POOLS), label="tree")
        second = data.draw(trees(CODE_POOLS), label="second tree")
        world.load(
            accounts=[{"code": code, "owner": owner} for code, owner in owners.items()],
            entries=[
                {"id": number, "account_code": code, "amount": amount}
                for number, (code, amount) in enumerate(entries)
                if code in owners
            ],
        )
        check_routed_equals_all_shards(world, account_case(shape, tree, second))

    routed_equals_all_shards()


# -- the fast path, without a database -------------------------------------------------------


@functools.cache
def pure_router() -> Router:
    rules = RuleBook(SHARDS)
    rules.check(Base.metadata)
    return Router(rules, SHARDS)


def check_fast_path_agrees(case: Case) -> None:
    """``single_shard()`` is ``None`` ("ask route()") or exactly route()'s only shard."""
    router = pure_router()
    route = router.route(case.statement, case.parameters)
    single = router.single_shard(case.statement, case.parameters)
    # a second call takes the remembered shape: the same answer
    assert router.single_shard(case.statement, case.parameters) == single
    if single is not None:
        assert route.shards == (single,), (single, route)
    event("fast path decided" if single is not None else "fast path deferred to route()")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.sampled_from(["columns", "entities", "subquery", "cte"]), tree=trees(READING_POOLS))
def test_fast_path_agrees_with_route_on_range_keys(shape: str, tree: Any) -> None:
    check_fast_path_agrees(reading_case(shape, tree))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.sampled_from([s for s in ACCOUNT_SHAPES if s not in ("update", "delete")]),
    tree=trees(CODE_POOLS),
    second=trees(CODE_POOLS),
)
def test_fast_path_agrees_with_route_on_hashed_keys_and_followers(
    shape: str, tree: Any, second: Any
) -> None:
    check_fast_path_agrees(account_case(shape, tree, second))


@settings(max_examples=200, deadline=None)
@given(
    value=st.one_of(
        st.sampled_from(SENSORS),
        st.integers(),
        st.text(max_size=3),
        st.floats(allow_nan=False),
        st.none(),
        st.booleans(),
    ),
    given_at=st.sampled_from(["statement", "execute", "missing"]),
)
def test_fast_path_agrees_with_route_for_any_value_of_key_equals(value: Any, given_at: str) -> None:
    """``key = :value`` with values of other types, given in the statement, at execute, or not."""
    if given_at == "statement":
        case = Case(select(Reading.id).where(Reading.sensor == value), {})
    else:
        parameters = {"v": value} if given_at == "execute" else {}
        case = Case(select(Reading.id).where(Reading.sensor == bindparam("v")), parameters)
    check_fast_path_agrees(case)


@pytest.mark.parametrize("kind", BACKENDS)
def test_range_sharded_rows_routed_equal_all_shards(
    world_factory: Callable[[str], World], kind: str
) -> None:
    readings_property(world_factory(kind), DEFAULT_EXAMPLES)


@pytest.mark.parametrize("kind", BACKENDS)
def test_hash_sharded_rows_and_followers_routed_equal_all_shards(
    world_factory: Callable[[str], World], kind: str
) -> None:
    accounts_property(world_factory(kind), DEFAULT_EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("kind", BACKENDS)
def test_range_sharded_rows_routed_equal_all_shards_many_examples(
    world_factory: Callable[[str], World], kind: str
) -> None:
    readings_property(world_factory(kind), SLOW_EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("kind", BACKENDS)
def test_hash_sharded_rows_and_followers_routed_equal_all_shards_many_examples(
    world_factory: Callable[[str], World], kind: str
) -> None:
    accounts_property(world_factory(kind), SLOW_EXAMPLES)


# -- bugs found by difference (regressions once fixed; strict xfail while still open) ----------


def routed_and_everywhere(
    world: World, statement: Any, parameters: dict[str, Any] | None = None
) -> tuple[list[Any], list[Any]]:
    """(rows of the routed statement, rows of the statement run on every shard), sorted."""
    with world.session() as session:
        routed = sorted(tuple(row) for row in session.execute(statement, parameters))
        everywhere = sorted(
            tuple(row)
            for shard in SHARDS
            for row in session.execute(statement.options(set_shard_id(shard)), parameters)
        )
    return routed, everywhere


def codes_off_the_first_shard() -> list[str]:
    return [code for code in CODES if CODE_HASH.shard_for(code) != SHARDS[0]]


@pytest.mark.parametrize("kind", BACKENDS)
def test_followers_orphaned_by_deleting_their_parent_are_found(
    world_factory: Callable[[str], World], kind: str
) -> None:
    world = world_factory(kind)
    code = codes_off_the_first_shard()[0]
    world.load(
        accounts=[{"code": code, "owner": "x"}],
        entries=[{"id": 1, "account_code": code, "amount": 5}],
    )
    with world.session() as session:
        account = session.get(Account, code)
        assert account is not None and len(account.entries) == 1
        session.delete(account)  # the ORM sets entries.account_code to NULL
        session.commit()
    routed, everywhere = routed_and_everywhere(
        world, select(Entry.id).where(Entry.account_code.is_(None))
    )
    assert everywhere == [(1,)]
    assert routed == everywhere


@pytest.mark.parametrize("kind", BACKENDS)
def test_anti_join_finds_parents_without_followers_on_every_shard(
    world_factory: Callable[[str], World], kind: str
) -> None:
    world = world_factory(kind)
    world.load(accounts=[{"code": code, "owner": None} for code in CODES])
    statement = select(Account.code).outerjoin(Account.entries).where(Entry.account_code.is_(None))
    routed, everywhere = routed_and_everywhere(world, statement)
    assert everywhere == [(code,) for code in sorted(CODES)]
    assert routed == everywhere


@pytest.mark.postgresql
def test_between_symmetric_finds_its_rows(world_factory: Callable[[str], World]) -> None:
    world = world_factory("postgresql")
    world.load(readings=[{"id": 1, "sensor": 150, "value": 1, "label": None}])
    statement = select(Reading.id).where(Reading.sensor.between(250, 120, symmetric=True))
    routed, everywhere = routed_and_everywhere(world, statement)
    assert everywhere == [(1,)]
    assert routed == everywhere


@pytest.mark.parametrize("kind", BACKENDS)
def test_value_given_under_an_anonymous_binds_compiled_name(
    world_factory: Callable[[str], World], kind: str
) -> None:
    world = world_factory(kind)
    world.load(readings=[{"id": 1, "sensor": 250, "value": 1, "label": None}])
    statement = select(Reading.id).where(Reading.sensor == 5)
    routed, everywhere = routed_and_everywhere(world, statement, {"sensor_1": 250})
    assert everywhere == [(1,)]
    assert routed == everywhere


class CollatedBase(DeclarativeBase):
    pass


class Word(CollatedBase):
    """A Range on strings in a linguistic collation, where 'Zebra' > 'm' (Python: 'Zebra' < 'm')."""

    __tablename__ = "words"
    __sharding__ = ShardKey("word", Range([(None, "s0"), ("m", "s1")]))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    word: Mapped[str] = mapped_column(String(20, collation="en-US-x-icu"))


class CaseInsensitiveBase(DeclarativeBase):
    pass


class Member(CaseInsensitiveBase):
    """A Hash on strings; MariaDB's default collation compares them case-insensitively."""

    __tablename__ = "members"
    __sharding__ = ShardKey("name", CODE_HASH)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(20))


@pytest.mark.postgresql
def test_string_range_in_a_linguistic_collation(make_database: MakeDatabase) -> None:
    shard_map = ShardMap.databases({shard: make_database("postgresql") for shard in ("s0", "s1")})
    try:
        with shard_map.bind("s0").connect() as connection:
            if not connection.scalar(
                sa.text("SELECT count(*) FROM pg_collation WHERE collname = 'en-US-x-icu'")
            ):
                pytest.skip("this PostgreSQL has no ICU collation en-US-x-icu")
        shard_map.create_all(CollatedBase.metadata)
        with shard_map.sessionmaker()() as session:
            session.add(Word(id=1, word="Zebra"))  # Python: 'Zebra' < 'm' -> s0
            session.commit()
            statement = select(Word.id).where(Word.word >= "m")
            everywhere = [
                row
                for shard in ("s0", "s1")
                for row in session.execute(statement.options(set_shard_id(shard)))
            ]
            assert everywhere == [(1,)]
            assert session.execute(statement).all() == everywhere
    finally:
        shard_map.dispose()


@pytest.mark.mariadb
def test_hashed_string_key_under_a_case_insensitive_collation(make_database: MakeDatabase) -> None:
    """MariaDB's default collation calls 'acct-0', 'ACCT-0' and 'acct-0 ' one value: the key is
    routed by a form proved coarser than that equality (sharding/canonical.py), so every
    spelling reaches the row's shard; a key the form cannot place is refused, not misplaced."""
    name = next(
        code for code in CODES if CODE_HASH.shard_for(code) != CODE_HASH.shard_for(code.upper())
    )
    shard_map = ShardMap.databases({shard: make_database("mariadb") for shard in SHARDS})
    try:
        shard_map.create_all(CaseInsensitiveBase.metadata)
        with shard_map.sessionmaker()() as session:
            session.add(Member(id=1, name=name))
            session.commit()
            for spelling in (name.upper(), name, f"{name} ", name.capitalize()):
                statement = select(Member.id).where(Member.name == spelling)
                everywhere = [
                    row
                    for shard in SHARDS
                    for row in session.execute(statement.options(set_shard_id(shard)))
                ]
                assert everywhere == [(1,)], spelling
                assert session.execute(statement).all() == everywhere, spelling
            with pytest.raises(ShardKeyError, match="utf8mb4_bin"):
                session.add(Member(id=2, name=f"{name}é"))  # may equal 'acct-0e' here
                session.flush()
    finally:
        shard_map.dispose()
