"""Shard keys are routed by the value the database stores, on every backend (issue 13, 1-2).

For each common column type, hypothesis draws one value and several Python representations
of it (and of values next to it: "7.5" for an ``Integer``, "Álice" for a string under a
case-insensitive collation).  One representation is written (a flush, or a bulk INSERT);
then every representation is looked up: ``WHERE key = value``, the same with the value bound
at execute time, ``IN``, ``get()`` and a bulk UPDATE by primary key.  The database itself is
the judge: each lookup routed by the session must return what the same lookup returns run
on every shard (pinned with ``set_shard_id``).  A representation whose stored form cannot be
known must be refused (``ShardKeyError``, or the database's own error), never placed where
the lookups above cannot find it.

The default run keeps each (backend, type) property to a few examples; ``-m slow`` draws many
more.  Regressions for the issue's examples follow, then the collations (section 2).
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from _servers import (
    SERVER_KINDS,
    DatabaseFactory,
    MakeDatabase,
    decide_unavailable,
    probe_server,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Integer, String, bindparam, insert, select, text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shardalchemy import (
    Hash,
    Lookup,
    ModelConfigurationError,
    ShardKey,
    ShardKeyError,
    ShardMap,
    set_shard_id,
)
from shardalchemy.sharding import KeyRule
from shardalchemy.sharding.canonical import mysql_fold_proved

SHARDS = ("s0", "s1", "s2")
KEY_HASH = Hash(buckets=64, shards=SHARDS)
DEFAULT_EXAMPLES = 6
SLOW_EXAMPLES = 300

D = decimal.Decimal
UTC = datetime.timezone.utc
PLUS_TWO = datetime.timezone(datetime.timedelta(hours=2))
MINUS_FIVE_THIRTY = datetime.timezone(-datetime.timedelta(hours=5, minutes=30))


class Color(enum.Enum):
    red = "R"
    green = "G"
    blue = "B"


# -- the representations of one value ---------------------------------------------------------


def integer_representations(value: int) -> list[Any]:
    found: list[Any] = [value, str(value), f" {value}\t", f"{value}\n", f"0{value}"]
    found += [f"+{value}" if value >= 0 else f"-0{-value}", D(value), f"{value}.0", f"{value}abc"]
    found += [D(value) + D("0.5"), f"{value}.5", "\u0667" if value == 7 else f"{value} 1"]
    if abs(value) < 2**52:
        found += [float(value), value + 0.5]
    if value in (0, 1):
        found.append(bool(value))
    return found


def string_representations(value: str) -> list[Any]:
    found: list[Any] = [value, value.upper(), value.lower(), value.swapcase(), value + " "]
    found += [value + "  ", " " + value, value + "\t", value.replace("a", "á"), value + "é"]
    if value.isascii() and value.isdigit() and len(value) < 15:
        found.append(int(value))
    return found


def numeric_representations(value: decimal.Decimal) -> list[Any]:
    cents = value.quantize(D("0.01"), rounding=decimal.ROUND_HALF_UP)
    found: list[Any] = [
        value,
        cents,
        str(value),
        str(cents),
        cents + D("0.001"),
        cents + D("0.005"),
    ]
    found += [float(value), float(cents), cents.normalize(), f"{cents}0"]
    if cents == cents.to_integral_value():
        found.append(int(cents))
    return found


def date_representations(value: datetime.date) -> list[Any]:
    midnight = datetime.datetime(value.year, value.month, value.day)
    return [
        value,
        midnight,
        midnight.replace(hour=13, minute=45),
        midnight.replace(tzinfo=PLUS_TWO),
        value.isoformat(),
        f"{value.isoformat()} 00:00:00",
    ]


def datetime_representations(value: datetime.datetime) -> list[Any]:
    return [
        value,
        value.replace(microsecond=0),
        value.replace(microsecond=value.microsecond // 1000 * 1000),
        value + datetime.timedelta(microseconds=1),
        value.replace(tzinfo=UTC),
        value.replace(tzinfo=PLUS_TWO),
        value.date(),
        value.isoformat(" "),
    ]


def aware_representations(value: datetime.datetime) -> list[Any]:
    return [
        value,
        value.astimezone(PLUS_TWO),
        value.astimezone(MINUS_FIVE_THIRTY),
        value.replace(tzinfo=None),
        value.replace(microsecond=0),
        value.date(),
    ]


def uuid_representations(value: uuid.UUID) -> list[Any]:
    return [value, str(value), value.hex, value.hex.upper(), str(value).upper(), f"{{{value}}}"]


def enum_representations(value: Color) -> list[Any]:
    return [value, value.name, value.value, value.name.upper(), value.name + " "]


def boolean_representations(value: bool) -> list[Any]:
    return [value, int(value), float(value), str(int(value)), str(value).lower()]


# -- one model per column type -----------------------------------------------------------------


class Base(DeclarativeBase):
    pass


@dataclasses.dataclass(frozen=True)
class Spec:
    """A column type, the values hypothesis draws for it and their representations."""

    name: str
    column_type: Callable[[], sa.types.TypeEngine[Any]]
    values: st.SearchStrategy[Any]
    representations: Callable[[Any], list[Any]]
    key_model: Any = None  # sharded by the column; primary key id
    primary_model: Any = None  # the column is the primary key (get(), UPDATE by key)


naive_datetimes = st.datetimes(
    min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2100, 1, 1)
)
SPECS = [
    Spec(
        "integer",
        Integer,
        st.integers(min_value=-(2**31), max_value=2**31 - 1) | st.sampled_from([0, 1, 7]),
        integer_representations,
    ),
    Spec(
        "biginteger",
        sa.BigInteger,
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        integer_representations,
    ),
    Spec(
        "string",
        lambda: String(20),
        st.text(alphabet="aAbBzZ09 -_.éÁß😀", max_size=8)
        | st.sampled_from(["Alice", "alice", "Alice ", "Álice", "7", "07", "acct-0"]),
        string_representations,
    ),
    Spec(
        "text",
        sa.Text,
        st.text(alphabet="aAzZ09 -éÁ", max_size=8) | st.sampled_from(["Asia", "ASIA ", "asia"]),
        string_representations,
    ),
    Spec(
        "numeric",
        lambda: sa.Numeric(10, 2),
        st.decimals(min_value=-999999, max_value=999999, places=3)
        | st.sampled_from([D("1.005"), D("-1.005"), D("2.675"), D("7")]),
        numeric_representations,
    ),
    Spec("date", sa.Date, st.dates(), date_representations),
    Spec(
        "datetime",
        sa.DateTime,
        naive_datetimes | naive_datetimes.map(lambda moment: moment.replace(microsecond=0)),
        datetime_representations,
    ),
    Spec(
        "aware",
        lambda: sa.DateTime(timezone=True),
        naive_datetimes.map(lambda moment: moment.replace(tzinfo=UTC)),
        aware_representations,
    ),
    Spec("uuid", sa.Uuid, st.uuids(), uuid_representations),
    Spec("enum", lambda: sa.Enum(Color), st.sampled_from(list(Color)), enum_representations),
    Spec("boolean", sa.Boolean, st.booleans(), boolean_representations),
]
NO_PRIMARY_KEY = {"text", "boolean"}  # MariaDB TEXT cannot be a primary key; two rows at most


def _models(spec: Spec) -> Spec:
    key_model = type(
        f"Key_{spec.name}",
        (Base,),
        {
            "__tablename__": f"key_{spec.name}",
            "__sharding__": ShardKey("key", KEY_HASH),
            "id": mapped_column(Integer, primary_key=True, autoincrement=False),
            "key": mapped_column(spec.column_type()),
            "note": mapped_column(String(10), nullable=True),
            "__annotations__": {},
        },
    )
    primary_model = None
    if spec.name not in NO_PRIMARY_KEY:
        primary_model = type(
            f"Primary_{spec.name}",
            (Base,),
            {
                "__tablename__": f"primary_{spec.name}",
                "__sharding__": ShardKey("key", KEY_HASH),
                "key": mapped_column(spec.column_type(), primary_key=True, autoincrement=False),
                "note": mapped_column(String(10), nullable=True),
                "__annotations__": {},
            },
        )
    return dataclasses.replace(spec, key_model=key_model, primary_model=primary_model)


SPECS = [_models(spec) for spec in SPECS]


class Bulk(Base):
    """The issue's example: an integer key given as strings by a bulk INSERT."""

    __tablename__ = "bulk_accounts"
    __sharding__ = ShardKey("id", KEY_HASH)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(20))


# -- one sharded world per backend, for the whole module ---------------------------------------

BACKENDS = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.postgresql),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
]


def _require(kind: str) -> None:
    if kind not in SERVER_KINDS:
        return
    reason = probe_server(kind)  # type: ignore[arg-type]
    if reason is not None:
        outcome = decide_unavailable(kind, reason, os.environ)  # type: ignore[arg-type]
        (pytest.fail if outcome.action == "fail" else pytest.skip)(outcome.message)


@dataclasses.dataclass
class World:
    kind: str
    shard_map: ShardMap

    def session(self) -> Any:
        return self.shard_map.sessionmaker()()

    def clear(self, *models: Any) -> None:
        for shard in SHARDS:
            with self.shard_map.bind(shard).begin() as connection:
                for model in models:
                    if model is not None:
                        connection.execute(model.__table__.delete())


@pytest.fixture(scope="module")
def worlds(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[DatabaseFactory, dict[str, World]]]:
    factory = DatabaseFactory(sqlite_dir=tmp_path_factory.mktemp("canonical"))
    built: dict[str, World] = {}
    yield factory, built
    for world in built.values():
        world.shard_map.dispose()
    factory.drop_all()


@pytest.fixture(params=BACKENDS)
def world(
    request: pytest.FixtureRequest, worlds: tuple[DatabaseFactory, dict[str, World]]
) -> World:
    kind: str = request.param
    _require(kind)
    factory, built = worlds
    if kind not in built:
        urls = {shard: factory.create(kind) for shard in SHARDS}  # type: ignore[arg-type]
        # the rows are throwaway: no waiting for the disk at each commit
        options = {"connect_args": {"options": "-c synchronous_commit=off"}}
        shard_map = ShardMap.databases(urls, **(options if kind == "postgresql" else {}))
        if kind == "sqlite":
            for shard in SHARDS:  # the rows are throwaway: skip the fsync of every reload
                sa.event.listen(
                    shard_map.bind(shard),
                    "connect",
                    lambda connection, record: connection.execute("PRAGMA synchronous = OFF"),
                )
        shard_map.create_all(Base.metadata)
        built[kind] = World(kind, shard_map)
    return built[kind]


# -- the property ---------------------------------------------------------------------------


def _outcome(world: World, run: Callable[[Any], Any]) -> Any:
    """What ``run(session)`` returns, or "error" for any error (each in a session of its own)."""
    with world.session() as session:
        try:
            return run(session)
        except Exception:
            return "error"


def _rows(statement: Any, parameters: Any = None) -> Callable[[Any], Any]:
    return lambda session: sorted(tuple(row) for row in session.execute(statement, parameters))


def _everywhere(world: World, statement: Any, parameters: Any = None) -> Any:
    """The rows ``statement`` returns on every shard, pinned one by one ("error" if any fails)."""
    found: list[Any] = []
    for shard in SHARDS:
        rows = _outcome(world, _rows(statement.options(set_shard_id(shard)), parameters))
        if rows == "error":
            return "error"
        found += rows
    return sorted(found)


def _homes(world: World, model: Any, column: Any, value: Any) -> list[str]:
    """The shards holding a row of ``model`` whose ``column`` is ``value``."""
    statement = select(sa.func.count()).select_from(model).where(column == value)
    return [
        shard
        for shard in SHARDS
        if _outcome(world, _rows(statement.options(set_shard_id(shard))))[0][0]
    ]


def _check_lookups(world: World, model: Any, column: Any, queries: list[Any]) -> None:
    """Every lookup of every representation finds, routed, what the shards hold.

    ``key = value`` (the bind takes the value's type where it differs from the column's, as
    SQLAlchemy does), the same bound at execute time (the column's type, as ``get()`` binds)
    and ``key IN (value)`` (which SQL defines as ``key = value``).
    """
    for query in queries:
        equal = select(model.id).where(column == query)
        everywhere = _everywhere(world, equal)
        for statement in (equal, select(model.id).where(column.in_([query]))):
            routed = _outcome(world, _rows(statement))
            assert routed == everywhere, (query, str(statement), routed, everywhere)
        bound = select(model.id).where(column == bindparam("k"))
        everywhere = _everywhere(world, bound, {"k": query})
        routed = _outcome(world, _rows(bound, {"k": query}))
        assert routed == everywhere, (query, str(bound), routed, everywhere)


def _canonical(world: World, model: Any, value: Any) -> bool:
    """Whether ``value`` has a known canonical form as a lookup of ``model``'s shard key."""
    rule = world.shard_map.rules.for_mapper(model.__mapper__)
    assert isinstance(rule, KeyRule)
    try:
        rule.form.compared(value)
    except ShardKeyError:
        return False
    return True


def _write(world: World, model: Any, values: dict[str, Any], bulk: bool) -> bool:
    """Write one row by a flush or a bulk INSERT; False when it was refused."""
    with world.session() as session:
        try:
            if bulk:
                session.execute(insert(model), [values])
            else:
                session.add(model(**values))
            session.commit()
        except ShardKeyError:
            return False
        except Exception as error:  # the database refused it on its merits (type, length)
            assert not isinstance(error, AttributeError | TypeError), repr(error)
            return False
    return True


def canonical_property(world: World, spec: Spec, examples: int) -> None:
    key_model, primary_model = spec.key_model, spec.primary_model
    counter = itertools.count()

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        database=None,
    )
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        value = data.draw(spec.values, label="value")
        representations = spec.representations(value)
        written = data.draw(st.sampled_from(representations), label="written")
        bulk = data.draw(st.booleans(), label="bulk")
        queries = data.draw(
            st.lists(st.sampled_from(representations), min_size=1, max_size=2, unique_by=repr),
            label="looked up",
        )
        world.clear(key_model, primary_model)
        row_id = next(counter)
        stored = _write(world, key_model, {"id": row_id, "key": written}, bulk)
        if stored:
            homes = _homes(world, key_model, key_model.id, row_id)
            assert len(homes) == 1
            # the value read back finds its row, routed
            read_back = _everywhere(world, select(key_model.key).where(key_model.id == row_id))
            queries = [*queries, read_back[0][0]]
        _check_lookups(world, key_model, key_model.key, queries)
        if primary_model is None:
            return
        if not _write(world, primary_model, {"key": written}, bulk):
            return
        column = primary_model.key
        for query in queries:
            # get() binds the value with the column's type: the truth is that lookup, pinned
            truth = _everywhere(world, select(column).where(column == bindparam("k")), {"k": query})
            if truth == "error":
                continue
            found = _outcome(world, lambda session, q=query: session.get(primary_model, q))
            assert (found not in (None, "error")) == bool(truth), (query, found, truth)
            updated = _outcome(
                world,
                lambda session, q=query: (
                    session.execute(update(primary_model), [{"key": q, "note": "updated"}]),
                    session.commit(),
                ),
            )
            notes = _everywhere(world, select(primary_model.note))
            if not truth:
                assert updated == "error" and notes == [(None,)], (query, "updated another row")
                continue
            if updated == "error":
                # refused: only a representation whose comparison cannot be known may be
                assert not _canonical(world, primary_model, query), (
                    query,
                    "the UPDATE missed its row",
                )
                continue
            assert notes == [("updated",)], (query, notes)
            world.clear(primary_model)
            assert _write(world, primary_model, {"key": written}, bulk)

    check()


@pytest.mark.parametrize("spec", SPECS, ids=[spec.name for spec in SPECS])
def test_every_representation_of_a_stored_key_is_found_where_it_was_placed(
    world: World, spec: Spec
) -> None:
    canonical_property(world, spec, DEFAULT_EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS, ids=[spec.name for spec in SPECS])
def test_every_representation_of_a_stored_key_is_found_many_examples(
    world: World, spec: Spec
) -> None:
    canonical_property(world, spec, SLOW_EXAMPLES)


# -- the examples ---------------------------------------------------------------------


def test_100_rows_bulk_inserted_with_string_ids_are_all_found_by_get(world: World) -> None:
    world.clear(Bulk)
    with world.session() as session:
        session.execute(insert(Bulk), [{"id": str(n), "name": f"n{n}"} for n in range(100)])
        session.commit()
    with world.session() as session:
        assert sum(session.get(Bulk, n) is not None for n in range(100)) == 100
    with world.session() as session:
        assert sum(session.get(Bulk, str(n)) is not None for n in range(100)) == 100
    # a second row with the same key lands on the first one's shard, where the database refuses it
    with world.session() as session, pytest.raises(Exception) as raised:
        session.execute(insert(Bulk), [{"id": 7, "name": "again"}])
        session.commit()
    assert "IntegrityError" in type(raised.value.__cause__ or raised.value).__name__


def test_an_integer_key_given_as_a_string_is_found_by_its_integer(world: World) -> None:
    spec = next(spec for spec in SPECS if spec.name == "integer")
    world.clear(spec.key_model, spec.primary_model)
    with world.session() as session:
        session.add(spec.primary_model(key="7"))
        session.commit()
    with world.session() as session:
        assert session.get(spec.primary_model, 7) is not None
        assert session.scalars(
            select(spec.primary_model.key).where(spec.primary_model.key == 7)
        ).all() == [7]


def test_a_non_integral_value_for_an_integer_key_is_refused_naming_the_column(world: World) -> None:
    spec = next(spec for spec in SPECS if spec.name == "integer")
    with world.session() as session, pytest.raises(ShardKeyError) as raised:
        session.add(spec.key_model(id=1, key="7.5"))
        session.flush()
    error = raised.value
    assert (error.model, error.attribute, error.value) == ("Key_integer", "key", "7.5")
    assert error.column_type == "Integer()"
    assert "Key_integer.key = '7.5'" in str(error) and "Integer()" in str(error)


def test_a_numeric_key_is_routed_by_its_rounded_value(world: World) -> None:
    spec = next(spec for spec in SPECS if spec.name == "numeric")
    world.clear(spec.key_model, spec.primary_model)
    with world.session() as session:
        session.add(spec.key_model(id=1, key=D("1.005")))
        session.commit()
    stored = _everywhere(world, select(spec.key_model.key))
    routed = _outcome(
        world, _rows(select(spec.key_model.key).where(spec.key_model.key == stored[0][0]))
    )
    assert routed == _everywhere(
        world, select(spec.key_model.key).where(spec.key_model.key == stored[0][0])
    )
    if world.kind == "sqlite":
        # SQLAlchemy binds float(value) on SQLite, which stores 1.005: found by what was given
        assert _outcome(
            world, _rows(select(spec.key_model.id).where(spec.key_model.key == D("1.005")))
        ) == [(1,)]
    else:
        assert stored == [(D("1.01"),)] and routed == [(D("1.01"),)]


def test_a_date_key_given_a_datetime_is_stored_as_its_date(world: World) -> None:
    spec = next(spec for spec in SPECS if spec.name == "date")
    world.clear(spec.key_model, spec.primary_model)
    with world.session() as session:
        session.add(spec.primary_model(key=datetime.datetime(2024, 1, 2, 23, 59)))
        session.commit()
    with world.session() as session:
        assert session.get(spec.primary_model, datetime.date(2024, 1, 2)) is not None


def test_aware_and_naive_datetimes_the_column_cannot_store_exactly_are_refused(
    world: World,
) -> None:
    naive = next(spec for spec in SPECS if spec.name == "datetime")
    aware = next(spec for spec in SPECS if spec.name == "aware")
    with world.session() as session, pytest.raises(ShardKeyError, match="aware datetime"):
        session.add(naive.key_model(id=1, key=datetime.datetime(2024, 1, 2, tzinfo=PLUS_TWO)))
        session.flush()
    if world.kind == "postgresql":
        with world.session() as session, pytest.raises(ShardKeyError, match="naive datetime"):
            session.add(aware.key_model(id=1, key=datetime.datetime(2024, 1, 2)))
            session.flush()


def test_a_uuid_key_given_as_a_string(world: World) -> None:
    spec = next(spec for spec in SPECS if spec.name == "uuid")
    world.clear(spec.key_model, spec.primary_model)
    value = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    if world.kind == "sqlite":
        # SQLAlchemy's Uuid on SQLite calls value.hex: a clear refusal, not an AttributeError
        with world.session() as session, pytest.raises(ShardKeyError, match=r"uuid\.UUID"):
            session.add(spec.primary_model(key=str(value)))
            session.flush()
        return
    with world.session() as session:
        session.add(spec.primary_model(key=str(value)))
        session.commit()
    with world.session() as session:
        assert session.get(spec.primary_model, value) is not None
        assert session.get(spec.primary_model, value.hex.upper()) is not None


@pytest.mark.mariadb
def test_mariadb_datetime_drops_microseconds_and_the_read_back_value_finds_the_row(
    make_database: MakeDatabase,
) -> None:
    spec = next(spec for spec in SPECS if spec.name == "datetime")
    urls = {shard: make_database("mariadb").set(drivername="mariadb+pymysql") for shard in SHARDS}
    shard_map = ShardMap.databases(urls)  # a mariadb:// URL: truncation, not MySQL's rounding
    try:
        shard_map.create_all(spec.key_model.metadata)
        moment = datetime.datetime(2024, 1, 2, 3, 4, 5, 678901)
        with shard_map.sessionmaker()() as session:
            session.add(spec.key_model(id=1, key=moment))
            session.commit()
        with shard_map.sessionmaker()() as session:
            stored = session.scalars(select(spec.key_model.key)).all()
            assert stored == [moment.replace(microsecond=0)]
            found = session.scalars(
                select(spec.key_model.id).where(spec.key_model.key == stored[0])
            )
            assert found.all() == [1]
    finally:
        shard_map.dispose()
    mysql_map = ShardMap.databases(
        {shard: url.set(drivername="mysql+pymysql") for shard, url in urls.items()}
    )
    try:
        with (
            mysql_map.sessionmaker()() as session,
            pytest.raises(ShardKeyError, match="MySQL rounds"),
        ):
            session.add(spec.key_model(id=2, key=moment))
            session.flush()
    finally:
        mysql_map.dispose()


# -- collations (section 2) -------------------------------------------------------------------


class CollatedBase(DeclarativeBase):
    pass


class Member(CollatedBase):
    """A hashed string key in the database's default collation (MariaDB: utf8mb4_general_ci)."""

    __tablename__ = "members"
    __sharding__ = ShardKey("name", KEY_HASH)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(20))


class BinaryMember(CollatedBase):
    """The same key declared with MariaDB's binary collation: every string routes exactly."""

    __tablename__ = "binary_members"
    __sharding__ = ShardKey("name", KEY_HASH)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(20, collation="utf8mb4_bin"))


class Place(CollatedBase):
    __tablename__ = "places"
    __sharding__ = ShardKey("continent", Lookup({"Asia": "s0", "Europe": "s1"}, default="s2"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    continent: Mapped[str] = mapped_column(String(20))


@pytest.fixture
def mariadb_map(make_database: MakeDatabase) -> Iterator[ShardMap]:
    shard_map = ShardMap.databases({shard: make_database("mariadb") for shard in SHARDS})
    shard_map.create_all(CollatedBase.metadata)
    yield shard_map
    shard_map.dispose()


def _routed_and_everywhere(shard_map: ShardMap, statement: Any) -> tuple[list[Any], list[Any]]:
    with shard_map.sessionmaker()() as session:
        routed = sorted(session.execute(statement).all())
        everywhere = sorted(
            row
            for shard in SHARDS
            for row in session.execute(statement.options(set_shard_id(shard)))
        )
    return routed, everywhere


@pytest.mark.mariadb
def test_names_one_key_under_a_case_insensitive_collation_route_to_one_shard(
    mariadb_map: ShardMap,
) -> None:
    with mariadb_map.sessionmaker()() as session:
        session.add_all([Member(id=1, name="Alice"), Member(id=2, name="bob ")])
        session.commit()
    for name in ("Alice", "alice", "ALICE", "Alice ", "Álice", "álice"):
        routed, everywhere = _routed_and_everywhere(
            mariadb_map, select(Member.id).where(Member.name == name)
        )
        assert everywhere == [(1,)], name  # one key in SQL...
        assert routed == everywhere, name  # ... found by the router
    routed, everywhere = _routed_and_everywhere(
        mariadb_map, select(Member.id).where(Member.name.in_(["BOB", "alice  "]))
    )
    assert routed == everywhere == [(1,), (2,)]
    # a name beyond printable ASCII cannot be placed: the collation may equal it to others
    with mariadb_map.sessionmaker()() as session, pytest.raises(ShardKeyError) as raised:
        session.add(Member(id=3, name="Álice"))
        session.flush()
    assert "utf8mb4_bin" in str(raised.value)


@pytest.mark.mariadb
def test_a_binary_collation_routes_every_string_exactly(mariadb_map: ShardMap) -> None:
    with mariadb_map.sessionmaker()() as session:
        session.add_all([BinaryMember(id=1, name="Álice"), BinaryMember(id=2, name="alice")])
        session.commit()
    for name, expected in (("Álice", [(1,)]), ("Álice ", [(1,)]), ("alice", [(2,)]), ("Alice", [])):
        routed, everywhere = _routed_and_everywhere(
            mariadb_map, select(BinaryMember.id).where(BinaryMember.name == name)
        )
        assert everywhere == expected, name
        assert routed == everywhere, name


@pytest.mark.mariadb
def test_lookup_default_under_a_case_insensitive_collation(mariadb_map: ShardMap) -> None:
    with mariadb_map.sessionmaker()() as session:
        session.add_all([Place(id=1, continent="asia"), Place(id=2, continent="ASIA ")])
        session.add(Place(id=3, continent="Oceania"))
        session.commit()
    homes = {row_id: shard for shard in SHARDS for row_id in _outcome_ids(mariadb_map, shard)}
    assert homes == {1: "s0", 2: "s0", 3: "s2"}  # 'asia' and 'ASIA ' are Asia, not the default
    routed, everywhere = _routed_and_everywhere(
        mariadb_map, select(Place.id).where(Place.continent == "Asia")
    )
    assert routed == everywhere == [(1,), (2,)]


def _outcome_ids(shard_map: ShardMap, shard: str) -> list[int]:
    with shard_map.sessionmaker()() as session:
        return list(session.scalars(select(Place.id).options(set_shard_id(shard))))


@pytest.mark.mariadb
def test_create_all_refuses_a_string_key_in_a_collation_without_a_proved_form(
    make_database: MakeDatabase,
) -> None:
    urls = {shard: make_database("mariadb") for shard in SHARDS}
    engine = sa.create_engine(urls["s1"])
    with engine.begin() as connection:  # 'i' = 'j' and 'u' = 'v' in this collation
        connection.execute(text(f"ALTER DATABASE `{urls['s1'].database}` COLLATE utf8mb4_roman_ci"))
    engine.dispose()
    shard_map = ShardMap.databases(urls)
    try:
        with pytest.raises(ModelConfigurationError) as raised:
            shard_map.create_all(CollatedBase.metadata)
        message = str(raised.value)
        assert "Member.name" in message and "'s1'" in message and "utf8mb4_roman_ci" in message
        assert "utf8mb4_bin" in message
    finally:
        shard_map.dispose()


def test_a_declared_collation_without_a_proved_form_is_refused() -> None:
    class Base(DeclarativeBase):
        pass

    class Roman(Base):
        __tablename__ = "romans"
        __sharding__ = ShardKey("name", KEY_HASH)
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        name: Mapped[str] = mapped_column(String(20, collation="utf8mb4_roman_ci"))

    shard_map = ShardMap.databases(
        {shard: "mysql+pymysql://root@127.0.0.1/x" for shard in SHARDS[:1]}
    )
    with pytest.raises(ModelConfigurationError, match="utf8mb4_bin"):
        shard_map.check(Base.metadata)


def fold_proof(url: Any, only: set[str] | None) -> tuple[list[str], list[str]]:
    """Check the fold on the server for its collations (``only`` those): (checked, refused).

    Every 1- and 2-character printable-ASCII string a collation calls equal to another
    (GROUP BY groups by the collation's equality) must fold to the same form.
    """
    engine = sa.create_engine(url)
    printable = [chr(code) for code in range(0x20, 0x7F)]
    strings = printable + [a + b for a in printable for b in printable]
    checked, refused = [], []
    with engine.begin() as connection:
        connection.execute(
            text("CREATE TABLE ascii (id INT PRIMARY KEY, v VARCHAR(4) COLLATE utf8mb4_bin)")
        )
        connection.execute(
            text("INSERT INTO ascii VALUES (:id, :v)"),
            [{"id": i, "v": s} for i, s in enumerate(strings)],
        )
        collations = connection.execute(
            text("SELECT COLLATION_NAME, CHARACTER_SET_NAME FROM information_schema.COLLATIONS")
        ).all()
        for collation, charset in collations:
            if charset is None:  # MariaDB names its UCA 14 collations without a character set
                collation, charset = f"utf8mb4_{collation}", "utf8mb4"
            if only is not None and collation not in only:
                continue
            if charset == "binary" or not mysql_fold_proved(collation):
                refused.append(collation)
                continue
            groups = connection.execute(
                text(
                    "SELECT GROUP_CONCAT(HEX(v) SEPARATOR ',') FROM (SELECT v, CONVERT(v USING "
                    f"{charset}) COLLATE {collation} AS k FROM ascii) x GROUP BY k "
                    "HAVING COUNT(*) > 1"
                )
            ).scalars()
            for group in groups:
                members = [bytes.fromhex(item).decode() for item in group.split(",")]
                folded = {member.lower().rstrip(" ") for member in members}
                assert len(folded) == 1, (collation, members)
            checked.append(collation)
    engine.dispose()
    return checked, refused


COMMON_COLLATIONS = {
    "utf8mb4_general_ci",
    "utf8mb4_unicode_ci",
    "utf8mb4_unicode_520_ci",
    "utf8mb4_uca1400_ai_ci",
    "utf8mb4_uca1400_as_cs",
    "utf8mb4_bin",
    "utf8mb4_nopad_bin",
    "utf8mb4_general_nopad_ci",
    "utf8mb4_turkish_ci",
    "latin1_swedish_ci",
    "utf8mb4_roman_ci",
    "swe7_swedish_ci",
}


@pytest.mark.mariadb
def test_the_ascii_fold_is_coarser_than_the_common_collations(make_database: MakeDatabase) -> None:
    checked, refused = fold_proof(make_database("mariadb"), COMMON_COLLATIONS)
    assert sorted(refused) == ["swe7_swedish_ci", "utf8mb4_roman_ci"]
    assert len(checked) == len(COMMON_COLLATIONS) - 2


@pytest.mark.slow
@pytest.mark.mariadb
def test_the_ascii_fold_is_coarser_than_each_collation_it_is_used_for(
    make_database: MakeDatabase,
) -> None:
    """The proof behind routing by the fold, for every collation of the server."""
    checked, refused = fold_proof(make_database("mariadb"), None)
    assert len(checked) > 400, len(checked)
    assert "utf8mb4_uca1400_lithuanian_ai_ci" in refused


# -- PostgreSQL non-deterministic collations ----------------------------------------------------


@pytest.mark.postgresql
def test_a_non_deterministic_collation_is_refused(make_database: MakeDatabase) -> None:
    urls = {shard: make_database("postgresql") for shard in SHARDS}
    for url in urls.values():
        engine = sa.create_engine(url)
        with engine.begin() as connection:
            for name in ("case_insensitive", "ci"):
                connection.execute(
                    text(
                        f'CREATE COLLATION "{name}" (provider = icu, locale = '
                        "'und-u-ks-level2', deterministic = false)"
                    )
                )
        engine.dispose()

    class Base(DeclarativeBase):
        pass

    class Declared(Base):  # a name shardalchemy cannot tell is deterministic: refused
        __tablename__ = "declared"
        __sharding__ = ShardKey("name", KEY_HASH)
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        name: Mapped[str] = mapped_column(String(20, collation="case_insensitive"))

    class Other(DeclarativeBase):
        pass

    class Shadowed(Other):  # a libc-like name: create_all reads the server's pg_collation
        __tablename__ = "shadowed"
        __sharding__ = ShardKey("name", KEY_HASH)
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        name: Mapped[str] = mapped_column(String(20, collation="ci"))

    shard_map = ShardMap.databases(urls)
    try:
        with pytest.raises(ModelConfigurationError, match="non-deterministic"):
            shard_map.check(Base.metadata)
        with pytest.raises(ModelConfigurationError, match="non-deterministic") as raised:
            shard_map.create_all(Other.metadata)
        assert "Shadowed.name" in str(raised.value)
    finally:
        shard_map.dispose()
