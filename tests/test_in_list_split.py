"""A shard-key ``IN`` list is split by shard, and into batches past the bind limit (issue 13 §7).

Proved by difference: the same statement on a sharded session (four databases) and on one
reference database holding the same rows must give the same answer.  Hypothesis draws the
list (values of every shard, duplicates, NULLs, representations of the canonical-form classes
of an ``Integer`` key: ``"7"``, ``" 7"``, ``Decimal(7)``, ``7.0``, and ``7.5``, whose form is
not known), the statement (ordered rows with LIMIT, ``count(*)``, ``GROUP BY`` counts,
``DISTINCT``, entities, an UPDATE and a DELETE), whether the list is in the statement or
given at execute time, and a small injected bind limit (the ``bind_limit`` execution option),
so that most draws cut some shard's list into several statements.  A refusal
(``CrossShardQueryError``) is allowed only for a list past the limit holding a value whose
canonical form is not known; an error of the reference must be an error of the sharded
session too.

Then the real limits: more than 65,535 values on one PostgreSQL shard, and more than SQLite's
``SQLITE_LIMIT_VARIABLE_NUMBER`` (set to its compiled-in default, 32,766, on each connection)
on one SQLite shard: the statement sent whole fails on that shard, and the session answers it.
"""

from __future__ import annotations

import decimal
import re
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from _servers import Backend, MakeDatabase
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import ForeignKey, Integer, bindparam, delete, func, select, update
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
)

from shardalchemy import (
    CrossShardQueryError,
    FollowParent,
    Hash,
    ShardingError,
    ShardKey,
    ShardMap,
    set_shard_id,
)
from shardalchemy.planning.in_lists import in_list_batches

SHARDS = ("s0", "s1", "s2", "s3")
KEYS = 40
EXAMPLES = 60
D = decimal.Decimal


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = "split_rows"
    __sharding__ = ShardKey("key", Hash(buckets=16, shards=SHARDS))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    key: Mapped[int] = mapped_column(Integer)
    grp: Mapped[int | None] = mapped_column(Integer, nullable=True)
    v: Mapped[int] = mapped_column(Integer)


class Child(Base):
    __tablename__ = "split_children"
    __sharding__ = FollowParent("row")
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    row_id: Mapped[int] = mapped_column(ForeignKey("split_rows.id"))
    row: Mapped[Row] = relationship(back_populates="children")


Row.children = relationship(Child, back_populates="row", order_by=Child.id)


def rows() -> list[dict[str, Any]]:
    return [
        {"id": n, "key": n % KEYS, "grp": None if n % 5 == 0 else n % 3, "v": n * 7 % 11}
        for n in range(3 * KEYS)
    ]


class World:
    def __init__(self, make_database: MakeDatabase, backend: Backend) -> None:
        self.backend = backend
        self.shard_map = ShardMap.databases({shard: make_database(backend) for shard in SHARDS})
        self.reference = sa.create_engine(make_database(backend))
        self.shard_map.create_all(Base.metadata)
        Base.metadata.create_all(self.reference)
        with self.reference.begin() as connection:
            connection.execute(sa.insert(Row.__table__), rows())
        with self.session() as session:
            session.execute(sa.insert(Row), rows())
            session.commit()

    def session(self) -> Any:
        return self.shard_map.sessionmaker()()

    def close(self) -> None:
        self.shard_map.dispose()
        self.reference.dispose()


@pytest.fixture
def world(make_database: MakeDatabase, backend: Backend) -> Iterator[World]:
    built = World(make_database, backend)
    yield built
    built.close()


# -- the statements ---------------------------------------------------------------------------

SHAPES = ("ordered", "count", "grouped", "distinct", "entities", "core", "update", "delete")


def statement(shape: str, keys: Any, limit: int) -> Any:
    """The statement of ``shape`` over ``key IN keys`` (and another conjunct, sometimes)."""
    where = [Row.key.in_(keys)]
    if shape in ("ordered", "grouped", "update"):
        where.append(Row.v < 9)
    if shape == "ordered":
        return select(Row.id, Row.key).where(*where).order_by(Row.v.desc(), Row.id).limit(limit)
    if shape == "count":
        return select(func.count(), func.sum(Row.v)).where(*where)
    if shape == "grouped":
        return select(Row.grp, func.count()).where(*where).group_by(Row.grp)
    if shape == "distinct":
        return select(Row.grp).distinct().where(*where)
    if shape == "entities":
        return select(Row).where(*where).order_by(Row.id)
    if shape == "core":
        table = Row.__table__
        return select(table.c.id, table.c.grp).where(table.c.key.in_(keys))
    if shape == "update":
        return update(Row).where(*where).values(v=Row.v + 100)
    assert shape == "delete"
    return delete(Row).where(*where)


def answer(
    session: Any, shape: str, values: list[Any], given: bool, options: dict[str, Any]
) -> Any:
    """What ``session`` answers, comparable across databases (DML: rowcount and what is left)."""
    keys = bindparam("keys", expanding=True) if given else values
    parameters = {"keys": values} if given else {}
    built = statement(shape, keys, limit=7).execution_options(**options)
    result = session.execute(built, parameters)
    if shape in ("update", "delete"):
        count = result.rowcount
        left = session.execute(select(Row.id, Row.v).order_by(Row.id)).all()
        session.rollback()
        return count, [tuple(row) for row in left]
    if shape == "entities":
        return [(row.id, row.key, row.grp, row.v) for row in result.scalars()]
    found = [tuple(row) for row in result]
    if shape == "ordered":
        return found
    return sorted(found, key=repr)


def known(world: World, value: Any) -> bool:
    rule = world.shard_map.rules.for_mapper(Row.__mapper__)
    if value is None:
        return True
    try:
        rule.form.compared(value)
    except ShardingError:
        return False
    return True


# what each backend's driver binds in an IN list of an integer column: pysqlite has no
# Decimal, and psycopg sends text as VARCHAR, which PostgreSQL does not compare with integer
REFUSED_BY_DRIVER = {"sqlite": (D,), "postgresql": (str,), "mariadb": ()}


def representations(key: int, backend: str) -> list[Any]:
    """``key`` as given, as text, with spaces, as a float and a Decimal; NULL; and, rarely,
    a value next to it whose form is not known (no list holding one can be cut)."""
    common = [key, key, key, str(key), f" {key}\t", float(key), D(key), None]
    bound = [value for value in common if not isinstance(value, REFUSED_BY_DRIVER[backend])]
    return [*bound * 3, key + 0.5]


def most_representations(values: list[Any]) -> int:
    """The most distinct representations of one key among ``values`` (NULLs left out)."""
    by_key: dict[int, set[Any]] = {}
    for value in values:
        if value is not None:
            by_key.setdefault(int(float(str(value).strip())), set()).add((type(value), str(value)))
    return max((len(forms) for forms in by_key.values()), default=0)


def lists_of(keys: list[int], backend: str) -> st.SearchStrategy[list[Any]]:
    choices = [value for key in keys for value in representations(key, backend)]
    return st.lists(st.sampled_from(choices), max_size=45)


def values_of(backend: str) -> st.SearchStrategy[list[Any]]:
    """Values of every shard; or a few keys in many representations, which a batch must not
    cut (the rows of one key would come twice)."""
    keys = st.integers(-2, KEYS + 3)
    anywhere = st.lists(
        keys.flatmap(lambda key: st.sampled_from(representations(key, backend))), max_size=45
    )
    few = st.lists(keys, min_size=1, max_size=6, unique=True).flatmap(
        lambda chosen: lists_of(chosen, backend)
    )
    return anywhere | few


def differential(world: World, examples: int) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        values=values_of(world.backend),
        shape=st.sampled_from(SHAPES),
        given_at_execute=st.booleans(),
        limit=st.integers(4, 12),  # the statements' other binds are 2 at most
    )
    def check(values: list[Any], shape: str, given_at_execute: bool, limit: int) -> None:
        note(f"{shape} IN {values!r} bind_limit={limit} given={given_at_execute}")
        try:
            with Session(world.reference) as session:
                expected = answer(session, shape, values, given_at_execute, {})
        except sa.exc.DBAPIError:
            expected = "error"
        options = {"bind_limit": limit}
        try:
            with world.session() as session:
                got = answer(session, shape, values, given_at_execute, options)
        except CrossShardQueryError as error:
            assert "limit" in str(error)
            unknown = [value for value in values if not known(world, value)]
            room = re.search(r"room for (\d+) values", str(error))
            if not unknown:
                # exact only if no batch cuts one key's representations: refused rightly when
                # one key has more of them than a statement has room for
                assert room is not None, (
                    f"refused a list whose every value has a known form: {error}"
                )
                assert most_representations(values) > int(room.group(1)), str(error)
            return
        except (sa.exc.DBAPIError, ShardingError):
            got = "error"
        assert got == expected

    check()


def test_in_lists_split_by_shard_and_batch_answer_like_one_database(world: World) -> None:
    differential(world, EXAMPLES)


def test_each_shard_is_sent_only_its_own_values(world: World) -> None:
    keys = [*range(KEYS), None, 3, "7"]
    statement = select(Row.id).where(Row.key.in_(keys))
    route = world.shard_map.router.route(statement)
    rule = world.shard_map.rules.for_mapper(Row.__mapper__)
    batches = in_list_batches(route.in_list, route.shards, limit=1000, backend=world.backend)
    assert batches is not None and not batches.batched
    sent = {
        shard: [value for batch in sent for value in batch]
        for shard, sent in batches.batches.items()
    }
    for shard, values in sent.items():
        assert values and all(rule.shard_of_key(value) == shard for value in values)
    # every value once, NULL dropped, "7" with 7 on its shard
    assert sorted(map(int, (v for values in sent.values() for v in values))) == sorted(
        [*range(KEYS), 7]
    )
    with world.session() as session:  # and the rows are those of the whole list
        assert sorted(session.scalars(statement)) == list(range(3 * KEYS))


def test_representations_of_one_value_stay_in_one_batch(world: World) -> None:
    keys = [7, "7", D(7), 7.0, " 7", 8, 9, 10, 11, 12]
    route = world.shard_map.router.route(select(Row.id).where(Row.key.in_(keys)))
    batches = in_list_batches(route.in_list, route.shards, limit=5, backend=world.backend)
    assert batches is not None
    (holding,) = [batch for shard in batches.batches.values() for batch in shard if 7 in batch]
    assert {repr(value) for value in holding} >= {repr(v) for v in (7, "7", D(7), " 7")}


def test_a_list_that_cannot_be_split_past_the_limit_is_refused_naming_it(world: World) -> None:
    keys = [1, 2, 3, 2.5, 4, 5]  # 2.5 has no integer form: it may match rows anywhere
    with world.session() as session, pytest.raises(CrossShardQueryError, match="limit of 3"):
        session.execute(select(Row.id).where(Row.key.in_(keys)).execution_options(bind_limit=3))
    with world.session() as session, pytest.raises(CrossShardQueryError, match="limit of 3"):
        # not a top-level conjunct: the OR lets rows of other values through
        stmt = select(Row.id).where(sa.or_(Row.key.in_([1, 2, 3, 4]), Row.v == 1))
        session.execute(stmt.execution_options(bind_limit=3))
    with world.session() as session:  # within the limit it runs, sent whole, as before
        found = session.scalars(select(Row.id).where(Row.key.in_(keys))).all()
        assert sorted(found) == sorted(n for n in range(3 * KEYS) if n % KEYS in (1, 2, 3, 4, 5))


def test_selectinload_over_many_parents_loads_every_child(world: World) -> None:
    with world.session() as session:
        for n in range(3 * KEYS):
            session.add(Child(id=n, row_id=n))
            session.add(Child(id=1000 + n, row_id=n))
        session.commit()
    with world.session() as session:
        parents = session.scalars(
            select(Row).where(Row.key.in_(list(range(KEYS)))).options(selectinload(Row.children))
        ).all()
        assert len(parents) == 3 * KEYS
        assert all(
            [c.id for c in parent.children] == [parent.id, 1000 + parent.id] for parent in parents
        )


# -- the real limits --------------------------------------------------------------------------


def keys_on(world: World, shard: str, count: int, start: int = 10_000) -> list[int]:
    rule = world.shard_map.rules.for_mapper(Row.__mapper__)
    found: list[int] = []
    key = start
    while len(found) < count:
        if rule.shard_of_key(key) == shard:
            found.append(key)
        key += 1
    return found


def past_the_real_limit(world: World, count: int) -> None:
    shard = world.shard_map.rules.for_mapper(Row.__mapper__).shard_of_key(3)
    keys = [3, *keys_on(world, shard, count)]
    wanted = sorted(n for n in range(3 * KEYS) if n % KEYS == 3)
    whole = select(Row.id).where(Row.key.in_(keys))
    with world.session() as session, pytest.raises(sa.exc.DBAPIError):
        session.execute(whole.options(set_shard_id(shard))).all()  # the shard refuses it whole
    with world.session() as session:
        assert sorted(session.scalars(whole)) == wanted
        ordered = select(Row.id).where(Row.key.in_(keys)).order_by(Row.id.desc()).limit(2)
        assert session.scalars(ordered).all() == wanted[::-1][:2]
        assert session.scalar(select(func.count()).where(Row.key.in_([*keys, 5]))) == 6
        deleted = session.execute(delete(Row).where(Row.key.in_(keys)))
        assert deleted.rowcount == len(wanted)
        session.rollback()


@pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", marks=pytest.mark.postgresql)], indirect=True
)
def test_more_than_65535_values_on_one_postgresql_shard(world: World) -> None:
    past_the_real_limit(world, 70_000)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_more_values_than_sqlite_allows_on_one_shard(world: World) -> None:
    for shard in SHARDS:
        engine = world.shard_map.bind(shard)
        engine.dispose()
        sa.event.listen(
            engine,
            "connect",
            lambda connection, record: connection.setlimit(
                sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32_766
            ),
        )
    past_the_real_limit(world, 40_000)
