"""Canonical forms of shard-key values, without a database (sharding/canonical.py).

What each form returns was checked on the real servers (the module docstring says how, and
``test_canonical_keys.py`` checks it again against them); these tests pin the forms down,
and check with hypothesis the properties the rest of the library relies on:

- a canonical form is a fixed point: looking it up gives it back (so the rule's strategy,
  the Lookup keys and a value read back all agree);
- where both accept a value, the stored form and the compared form agree;
- the fast path and ``route()`` agree on values that need canonicalizing.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, Integer, MetaData, String, Table, select
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shardalchemy import (
    Function,
    Hash,
    Lookup,
    ModelConfigurationError,
    Range,
    ShardKey,
    ShardKeyError,
    shard_table,
)
from shardalchemy.routing import Router
from shardalchemy.sharding import KeyRule, RuleBook
from shardalchemy.sharding.canonical import canonical_form, dialect_names, mysql_fold_proved

D = decimal.Decimal
UTC = datetime.timezone.utc
PLUS_TWO = datetime.timezone(datetime.timedelta(hours=2))
DIALECTS = ("sqlite", "postgresql", "mariadb", "mysql")
SHARDS = ("s0", "s1", "s2", "s3")


def stored(column_type: Any, dialect: str, value: Any) -> Any:
    return canonical_form(column_type, dialect, model="M", attribute="k").stored(value)


def compared(column_type: Any, dialect: str, value: Any) -> Any:
    return canonical_form(column_type, dialect, model="M", attribute="k").compared(value)


class Color(enum.Enum):
    red = "R"
    green = "G"


# -- the examples -------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_an_integer_given_as_text_is_its_integer(dialect: str) -> None:
    for value in ("7", " 7", "7\n", "+7", "07", 7.0, D("7.00"), 7):
        assert stored(Integer(), dialect, value) == 7
        assert type(stored(Integer(), dialect, value)) is int
    assert stored(Integer(), dialect, True) == 1


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("value", ["7.5", 7.5, D("7.5"), "7abc", "0x10", "\u0667", "", "7 7"])
def test_a_non_integer_for_an_integer_is_refused(dialect: str, value: Any) -> None:
    with pytest.raises(ShardKeyError) as raised:
        stored(Integer(), dialect, value)
    assert raised.value.column_type == "Integer()"
    assert (raised.value.model, raised.value.attribute, raised.value.value) == ("M", "k", value)


def test_integer_ranges_follow_the_column_type() -> None:
    assert stored(sa.SmallInteger(), "sqlite", 40000) == 40000  # every SQLite integer is 64-bit
    with pytest.raises(ShardKeyError, match="range"):
        stored(sa.SmallInteger(), "postgresql", 40000)
    with pytest.raises(ShardKeyError, match="range"):
        stored(mysql.INTEGER(unsigned=True), "mariadb", -1)
    assert stored(mysql.INTEGER(unsigned=True), "mariadb", 2**32 - 1) == 2**32 - 1
    with pytest.raises(ShardKeyError, match="range"):
        stored(sa.BigInteger(), "sqlite", "9" * 30)


def test_a_datetime_for_a_date_stores_its_date() -> None:
    for dialect in DIALECTS:
        assert stored(sa.Date(), dialect, datetime.datetime(2024, 1, 2, 23, 59)) == datetime.date(
            2024, 1, 2
        )
        with pytest.raises(ShardKeyError, match="time zone"):
            stored(sa.Date(), dialect, datetime.datetime(2024, 1, 2, tzinfo=PLUS_TWO))
    with pytest.raises(ShardKeyError):
        stored(sa.Date(), "sqlite", "2024-01-02")  # SQLAlchemy's SQLite Date takes dates only
    assert stored(sa.Date(), "postgresql", "2024-01-02") == datetime.date(2024, 1, 2)


def test_numeric_rounds_half_away_from_zero_where_the_server_does() -> None:
    for dialect in ("postgresql", "mariadb", "mysql"):
        assert stored(sa.Numeric(10, 2), dialect, D("1.005")) == D("1.01")
        assert stored(sa.Numeric(10, 2), dialect, D("-1.005")) == D("-1.01")
        assert stored(sa.Numeric(10, 2), dialect, 2.675) == D("2.68")  # as the servers store it
        assert stored(sa.Numeric(10, 2), dialect, "1.005") == D("1.01")
        with pytest.raises(ShardKeyError, match="too large"):
            stored(sa.Numeric(10, 2), dialect, D("123456789"))
    # SQLAlchemy sends SQLite float(value), and SQLite stores that double
    assert stored(sa.Numeric(10, 2), "sqlite", D("1.005")) == D("1.005")
    assert stored(sa.Numeric(10, 2), "sqlite", D("1.0050000000000000001")) == D("1.005")
    # MariaDB's bare NUMERIC is DECIMAL(10, 0); PostgreSQL's keeps every digit
    assert stored(sa.Numeric(), "mariadb", D("2.5")) == 3
    assert stored(sa.Numeric(), "postgresql", D("2.5")) == D("2.5")
    with pytest.raises(ShardKeyError, match="15 digits"):
        stored(sa.Numeric(10, 2), "postgresql", 0.1 + 0.2)


def test_an_int_for_a_string_is_stored_as_its_text_but_not_compared_so_on_mariadb() -> None:
    for dialect in DIALECTS:
        assert stored(String(10), dialect, 7) == "7"
    assert compared(String(10), "postgresql", 7) == "7"
    for dialect in ("mariadb", "mysql"):  # MariaDB compares '07' = 7: numbers
        with pytest.raises(ShardKeyError, match="as numbers"):
            compared(String(10), dialect, 7)
    for dialect in DIALECTS:
        with pytest.raises(ShardKeyError):
            stored(String(10), dialect, True)


def test_string_lengths_and_padding() -> None:
    assert stored(String(3), "postgresql", "abc   ") == "abc"  # the server drops the spaces
    with pytest.raises(ShardKeyError, match="longer"):
        stored(String(3), "postgresql", "abcd")
    assert stored(String(3), "sqlite", "abcd  ") == "abcd  "  # SQLite keeps any length
    assert stored(sa.CHAR(5), "postgresql", "ab ") == "ab"  # bpchar ignores trailing spaces
    assert stored(sa.CHAR(5), "sqlite", "ab ") == "ab "
    assert stored(String(10, collation="RTRIM"), "sqlite", "ab ") == "ab"
    assert stored(String(10, collation="NOCASE"), "sqlite", "ÀbC") == "Àbc"  # ASCII only


def test_mariadb_collations() -> None:
    default = String(20)
    assert {stored(default, "mariadb", name) for name in ("Alice", "alice", "Alice ")} == {"alice"}
    with pytest.raises(ShardKeyError, match="utf8mb4_bin"):
        stored(default, "mariadb", "Álice")
    binary = String(20, collation="utf8mb4_bin")
    assert stored(binary, "mariadb", "Álice ") == "Álice"  # PAD SPACE
    assert stored(binary, "mariadb", "alice") != stored(binary, "mariadb", "Alice")
    assert stored(String(20, collation="utf8mb4_nopad_bin"), "mariadb", "a ") == "a "
    with pytest.raises(ModelConfigurationError, match="utf8mb4_bin"):
        canonical_form(
            String(20, collation="utf8mb4_roman_ci"), "mariadb", model="M", attribute="k"
        )
    assert mysql_fold_proved("utf8mb4_uca1400_ai_ci") and mysql_fold_proved("uca1400_as_cs")
    assert not mysql_fold_proved("utf8mb4_uca1400_lithuanian_ai_ci")
    assert not mysql_fold_proved("swe7_swedish_ci")


def test_postgresql_and_sqlite_collations() -> None:
    for name in ("C", "POSIX", "en_US", "en_US.utf8", "C.UTF-8", "und-x-icu", "en-US-x-icu"):
        assert stored(String(20, collation=name), "postgresql", "Ab ") == "Ab "
    with pytest.raises(ModelConfigurationError, match="deterministic"):
        canonical_form(
            String(20, collation="case_insensitive"), "postgresql", model="M", attribute="k"
        )
    with pytest.raises(ModelConfigurationError, match="BINARY, NOCASE or RTRIM"):
        canonical_form(String(20, collation="unicode61"), "sqlite", model="M", attribute="k")
    assert stored(postgresql.CITEXT(), "postgresql", "AbC") == "abc"
    with pytest.raises(ShardKeyError):
        stored(postgresql.CITEXT(), "postgresql", "ÀbC")


def test_datetimes() -> None:
    moment = datetime.datetime(2024, 1, 2, 3, 4, 5, 678901)
    assert stored(sa.DateTime(), "postgresql", moment) == moment
    assert stored(sa.DateTime(), "mariadb", moment) == moment.replace(microsecond=0)
    assert stored(mysql.DATETIME(fsp=3), "mariadb", moment) == moment.replace(microsecond=678000)
    with pytest.raises(ShardKeyError, match="MySQL rounds"):
        stored(sa.DateTime(), "mysql", moment)
    assert stored(sa.DateTime(), "mysql", moment.replace(microsecond=0)) == moment.replace(
        microsecond=0
    )
    assert stored(sa.DateTime(), "sqlite", datetime.date(2024, 1, 2)) == datetime.datetime(
        2024, 1, 2
    )
    for dialect in ("postgresql", "mariadb", "sqlite"):
        with pytest.raises(ShardKeyError, match="aware"):
            stored(sa.DateTime(), dialect, moment.replace(tzinfo=UTC))
    aware = sa.DateTime(timezone=True)
    assert stored(aware, "postgresql", moment.replace(tzinfo=PLUS_TWO)) == stored(
        aware, "postgresql", (moment - datetime.timedelta(hours=2)).replace(tzinfo=UTC)
    )
    with pytest.raises(ShardKeyError, match="naive"):
        stored(aware, "postgresql", moment)
    # SQLAlchemy's SQLite DATETIME stores the wall clock, dropping the offset
    assert stored(aware, "sqlite", moment.replace(tzinfo=PLUS_TWO)) == moment


T = datetime.datetime


@pytest.mark.parametrize(
    ("precision", "written", "expected"),
    [  # what PostgreSQL 15 stored for each
        (0, T(2024, 1, 2, 3, 4, 5, 500000), T(2024, 1, 2, 3, 4, 6)),
        (0, T(2024, 1, 2, 3, 4, 5, 499999), T(2024, 1, 2, 3, 4, 5)),
        (0, T(1999, 12, 31, 23, 59, 59, 500000), T(1999, 12, 31, 23, 59, 59)),
        (0, T(1970, 1, 1, 0, 0, 0, 500000), T(1970, 1, 1)),
        (3, T(2024, 1, 2, 3, 4, 5, 123500), T(2024, 1, 2, 3, 4, 5, 124000)),
        (3, T(2024, 1, 2, 3, 4, 5, 124500), T(2024, 1, 2, 3, 4, 5, 125000)),
        (3, T(1999, 1, 2, 3, 4, 5, 123500), T(1999, 1, 2, 3, 4, 5, 123000)),
    ],
)
def test_postgresql_timestamp_precision_rounds_half_away_from_2000(
    precision: int, written: datetime.datetime, expected: datetime.datetime
) -> None:
    assert stored(postgresql.TIMESTAMP(precision=precision), "postgresql", written) == expected


def test_uuids() -> None:
    value = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    for dialect in ("postgresql", "mariadb"):
        for spelling in (value, str(value), value.hex, value.hex.upper()):
            assert stored(sa.Uuid(), dialect, spelling) == value
    with pytest.raises(ShardKeyError, match=r"uuid\.UUID"):
        stored(sa.Uuid(), "sqlite", str(value))  # SQLAlchemy would call str.hex
    assert compared(sa.Uuid(), "sqlite", str(value)) == value
    with pytest.raises(ShardKeyError, match="takes str"):
        stored(sa.Uuid(as_uuid=False), "sqlite", value)
    for spelling in ("not a uuid", f"{{{value}}}", 7):
        with pytest.raises(ShardKeyError):
            stored(sa.Uuid(), "postgresql", spelling)


def test_enums_booleans_floats_binary() -> None:
    for dialect in DIALECTS:
        assert stored(sa.Enum(Color), dialect, Color.red) == "red"
        assert stored(sa.Enum(Color), dialect, "red") == "red"
        for spelling in ("R", "RED", "red "):
            with pytest.raises(ShardKeyError):
                stored(sa.Enum(Color), dialect, spelling)
        assert stored(sa.Boolean(), dialect, 1) is True
        with pytest.raises(ShardKeyError):
            stored(sa.Boolean(), dialect, "1")
        assert stored(sa.LargeBinary(), dialect, bytearray(b"ab")) == b"ab"
    assert stored(sa.Double(), "postgresql", 0.1 + 0.2) == D("0.30000000000000004")
    assert stored(sa.Float(), "mariadb", 1.1) == D(repr(1.100000023841858))  # FLOAT: float32
    assert stored(sa.Float(), "postgresql", -0.0) == 0
    with pytest.raises(ShardKeyError):
        stored(sa.Float(), "sqlite", float("nan"))
    with pytest.raises(ModelConfigurationError, match="BINARY"):
        canonical_form(sa.BINARY(16), "mariadb", model="M", attribute="k")


def test_types_without_a_canonical_form_are_refused_as_shard_keys() -> None:
    for column_type in (sa.JSON(), postgresql.ARRAY(Integer), sa.Interval()):
        with pytest.raises(ModelConfigurationError, match="canonical form is unknown"):
            canonical_form(column_type, "postgresql", model="M", attribute="k")
    with pytest.raises(ModelConfigurationError, match="TIMESTAMP"):
        canonical_form(mysql.TIMESTAMP(), "mariadb", model="M", attribute="k")


class Lowered(sa.types.TypeDecorator[str]):
    """Stores strings lower-cased."""

    impl = String(20)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return value.lower() if value is not None else None


def test_a_type_decorator_is_canonical_as_its_impl_after_process_bind_param() -> None:
    form = canonical_form(Lowered(), "postgresql", model="M", attribute="k")
    assert form.stored("ALICE") == form.stored("alice") == "alice"
    with pytest.raises(ShardKeyError, match="process_bind_param"):
        form.stored(7)  # int has no .lower()


def test_mixed_backends_accept_only_values_they_store_alike() -> None:
    form = canonical_form(sa.Numeric(10, 2), ["sqlite", "postgresql"], model="M", attribute="k")
    assert form.stored(D("1.01")) == D("1.01")
    with pytest.raises(ShardKeyError, match="mixing backends"):
        form.stored(D("1.005"))  # 1.005 on SQLite, 1.01 on PostgreSQL
    assert dialect_names(["postgresql", "mssql"]) == ("postgresql", "sqlite")


# -- hypothesis: fixed points and agreement ---------------------------------------------------

COLUMN_TYPES = [
    Integer(),
    sa.SmallInteger(),
    sa.BigInteger(),
    String(8),
    sa.Text(),
    sa.CHAR(4),
    String(8, collation="utf8mb4_bin"),
    sa.Numeric(10, 2),
    sa.Numeric(),
    sa.Float(),
    sa.Double(),
    sa.Date(),
    sa.DateTime(),
    sa.DateTime(timezone=True),
    sa.Time(),
    sa.Uuid(),
    sa.Uuid(as_uuid=False),
    sa.Enum(Color),
    sa.Boolean(),
    sa.LargeBinary(),
]

ANY_VALUE = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.text(alphabet="aAzZ09 -.é\tÁ", max_size=10),
    st.integers(min_value=-(10**6), max_value=10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(
        places=4, allow_nan=False, allow_infinity=False, max_value=10**12, min_value=-(10**12)
    ),
    st.dates(),
    st.datetimes(),
    st.datetimes(timezones=st.sampled_from([UTC, PLUS_TWO])),
    st.times(),
    st.uuids(),
    st.uuids().map(str),
    st.sampled_from(list(Color)),
    st.sampled_from(["red", "green", "RED"]),
    st.booleans(),
    st.binary(max_size=4),
)


def _try(function: Any, value: Any) -> Any:
    try:
        return ("ok", function(value))
    except ShardKeyError:
        return ("refused",)


@settings(max_examples=400, deadline=None)
@given(
    column_type=st.sampled_from(COLUMN_TYPES),
    dialect=st.sampled_from(DIALECTS),
    value=ANY_VALUE,
)
def test_canonical_forms_are_fixed_points_and_the_two_forms_agree(
    column_type: Any, dialect: str, value: Any
) -> None:
    if dialect not in ("mariadb", "mysql") and getattr(column_type, "collation", None):
        return  # utf8mb4_bin is a MariaDB collation
    form = canonical_form(column_type, dialect, model="M", attribute="k")
    written, looked_up = _try(form.stored, value), _try(form.compared, value)
    if written[0] == "ok":  # what a row holds (a Lookup key, a value read back) is looked up
        hash(written[1])  # a shard key is hashed
        assert form.compared(written[1]) == written[1], (value, written)
        # written again, it is itself (or refused for its Python type: SQLite's Uuid, Date)
        assert _try(form.stored, written[1]) in (written, ("refused",)), (value, written)
    if looked_up[0] == "ok":
        hash(looked_up[1])
        assert form.compared(looked_up[1]) == looked_up[1], (value, looked_up)
    if written[0] == looked_up[0] == "ok":
        assert written[1] == looked_up[1], (value, written, looked_up)


# -- rules, strategies and the router ----------------------------------------------------------

EVENT_HASH = Hash(buckets=64, shards=SHARDS)
events = shard_table(
    Table(
        "canonical_events",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("tenant", Integer),
        Column("day", sa.Date),
        Column("amount", sa.Numeric(10, 2)),
    ),
    ShardKey("tenant", EVENT_HASH),
)
by_day = shard_table(
    Table(
        "canonical_days",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("day", sa.Date),
    ),
    ShardKey("day", Range([(None, "s0"), (datetime.date(2024, 1, 1), "s1")])),
)
by_amount = shard_table(
    Table(
        "canonical_amounts",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("amount", sa.Numeric(10, 2)),
    ),
    ShardKey("amount", Range([(None, "s0"), (D("1.01"), "s1")])),
)


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql", "mariadb"])
def test_the_router_routes_by_the_canonical_form(dialect: str) -> None:
    router = Router(RuleBook(SHARDS, dialect=dialect), SHARDS)
    home = EVENT_HASH.shard_for(7)
    for value in (7, "7", " 7", 7.0, D("7")):
        statement = select(events).where(events.c.tenant == value)
        assert router.route(statement).shards == (home,), value
        assert router.single_shard(statement) == home, value
        assert router.route(select(events).where(events.c.tenant.in_([value]))).shards == (home,)
    for value in ("7.5", 7.5, "7abc"):  # compared as another value: all shards, never too few
        statement = select(events).where(events.c.tenant == value)
        assert router.route(statement).shards == SHARDS, value
        assert router.single_shard(statement) is None
    explained = router.explain(select(events).where(events.c.tenant == "7.5")).reason
    assert "'7.5' is not compared as one stored value (not an integer literal" in explained


def test_ranges_prune_only_on_bounds_the_column_stores_exactly() -> None:
    router = Router(RuleBook(SHARDS, dialect="postgresql"), SHARDS)
    assert router.route(select(by_day).where(by_day.c.day >= datetime.date(2024, 1, 1))).shards == (
        "s1",
    )
    # a datetime bound on a date column compares as a timestamp: no proof
    late = datetime.datetime(2023, 12, 31, 10)
    assert router.route(select(by_day).where(by_day.c.day < late)).shards == SHARDS
    # equality: a datetime at midnight is the date, on the date's shard
    midnight = datetime.datetime(2024, 1, 1)
    assert router.route(select(by_day).where(by_day.c.day == midnight)).shards == ("s1",)
    # 1.005 > 1.004 but stored values are cents: no rounding of bounds
    assert router.route(select(by_amount).where(by_amount.c.amount > D("1.005"))).shards == SHARDS
    assert router.route(select(by_amount).where(by_amount.c.amount >= D("1.01"))).shards == ("s1",)


def test_lookup_keys_and_range_bounds_are_canonicalized_at_resolution() -> None:
    class Base(DeclarativeBase):
        pass

    class Tenant(Base):
        __tablename__ = "tenants"
        __sharding__ = ShardKey("number", Lookup({"7": "s1", 8: "s2"}))
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        number: Mapped[int] = mapped_column(Integer)

    class Word(Base):
        __tablename__ = "words"
        __sharding__ = ShardKey("word", Lookup({"Asia": "s0", "ASIA ": "s1"}))
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        word: Mapped[str] = mapped_column(String(20))

    class Bounded(Base):
        __tablename__ = "bounded"
        __sharding__ = ShardKey("amount", Range([(None, "s0"), (D("1.005"), "s1")]))
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        amount: Mapped[decimal.Decimal] = mapped_column(sa.Numeric(10, 2))

    rules = RuleBook(SHARDS, dialect="postgresql")
    rule = rules.for_mapper(Tenant.__mapper__)
    assert isinstance(rule, KeyRule)
    assert rule.shard_for_value(7) == rule.shard_for_value("7") == "s1"
    assert rule.strategy.shard_for(" 8") == "s2"
    assert rule.shard_of_key("7.5") is None
    assert rules.for_mapper(Word.__mapper__) is not None  # two keys on PostgreSQL
    with pytest.raises(ModelConfigurationError, match="one value in the database"):
        RuleBook(SHARDS, dialect="mariadb").for_mapper(Word.__mapper__)
    with pytest.raises(ModelConfigurationError, match=r"stored as Decimal\('1.01'\)"):
        rules.for_mapper(Bounded.__mapper__)


def test_a_function_strategy_receives_the_canonical_form() -> None:
    seen: list[Any] = []

    def choose(value: Any) -> str:
        seen.append(value)
        return "s0"

    table = shard_table(
        Table(
            "function_keyed",
            MetaData(),
            Column("id", Integer, primary_key=True),
            Column("k", Integer),
        ),
        ShardKey("k", Function(choose)),
    )
    rule = RuleBook(SHARDS, dialect="sqlite").for_table(table)
    assert isinstance(rule, KeyRule)
    rule.shard_for_value(" 42")
    assert seen == [42]


def test_a_hand_built_key_rule_canonicalizes_like_a_rule_book_without_dialect() -> None:
    table = Table("t", MetaData(), Column("k", Integer))
    rule = KeyRule("T", table, table.c.k, "k", Lookup({0: "zero"}))
    assert rule.shard_for_value("0") == "zero"
    assert rule.form.dialect == "sqlite+postgresql"
    assert repr(rule.strategy) == repr(rule.key_strategy)
