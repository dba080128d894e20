"""Two gaps in routing by the stored value (issue 13, section 1), closed.

- A bulk UPDATE by primary key whose key does not decide the shard asks every shard which of
  the keys it holds; the database answers with the key as it stores it (``7`` for ``"7"``,
  ``'alice'`` for ``'Alice '`` under MariaDB's case-insensitive default collation).  The rows
  found must be matched to the keys asked by canonical form, not by the value as passed.
- A follower placed by a foreign key that names a parent added to the session and not
  flushed yet (``parent_id="7"`` for the pending parent ``id=7``) must find that parent.

Hypothesis draws the representations from the canonical-form classes
``tests/test_canonical_keys.py`` uses (integers as text with spaces, signs, zeros, Decimals,
floats, non-integral values; strings in other cases, with trailing spaces, accents).  The
database is the judge: the routed UPDATE must change exactly the row that the same key finds
when looked up on every shard pinned, and refuse (never update another row) when none does;
the follower must land on its parent's shard, or be refused.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from _servers import Backend, MakeDatabase
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import ForeignKey, Integer, String, bindparam, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from test_canonical_keys import integer_representations, string_representations

from shardalchemy import FollowParent, Hash, ShardingError, ShardKey, ShardMap, set_shard_id

SHARDS = ("s0", "s1", "s2")
EXAMPLES = 25


class Base(DeclarativeBase):
    pass


class Account(Base):
    """Sharded by ``region``; the integer primary key does not tell the shard."""

    __tablename__ = "gap_accounts"
    __sharding__ = ShardKey("region", Hash(buckets=16, shards=SHARDS))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    region: Mapped[int] = mapped_column(Integer)
    note: Mapped[str | None] = mapped_column(String(10), nullable=True)


class Member(Base):
    """A string primary key (the server's default collation) that does not tell the shard."""

    __tablename__ = "gap_members"
    __sharding__ = ShardKey("region", Hash(buckets=16, shards=SHARDS))
    name: Mapped[str] = mapped_column(String(20), primary_key=True)
    region: Mapped[int] = mapped_column(Integer)
    note: Mapped[str | None] = mapped_column(String(10), nullable=True)


class Visit(Base):
    """Follows its account by the account's id, which is not the account's shard key."""

    __tablename__ = "gap_visits"
    __sharding__ = FollowParent("account")
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    account_id: Mapped[int] = mapped_column(ForeignKey("gap_accounts.id"))
    account: Mapped[Account] = relationship()


@pytest.fixture
def shard_map(make_database: MakeDatabase, backend: Backend) -> Iterator[ShardMap]:
    shard_map = ShardMap.databases({shard: make_database(backend) for shard in SHARDS})
    shard_map.create_all(Base.metadata)
    yield shard_map
    shard_map.dispose()


def clear(shard_map: ShardMap) -> None:
    for shard in SHARDS:
        with shard_map.bind(shard).begin() as connection:
            for table in reversed(Base.metadata.sorted_tables):
                connection.execute(table.delete())


def holders(shard_map: ShardMap, column: Any, value: Any) -> list[tuple[str, Any]] | None:
    """(shard, stored key) of the rows ``column = value`` finds on each shard, pinned.

    ``None`` when the database refuses the comparison (PostgreSQL: ``'7.5'`` for an integer).
    """
    statement = select(column).where(column == bindparam("k", type_=column.type))
    found = []
    for shard in SHARDS:
        with shard_map.sessionmaker()() as session:
            try:
                rows = session.execute(statement.options(set_shard_id(shard)), {"k": value})
                found += [(shard, row[0]) for row in rows]
            except sa.exc.DBAPIError:
                return None
    return found


def notes(shard_map: ShardMap, model: Any) -> dict[Any, Any]:
    key = model.__mapper__.primary_key[0]
    found = {}
    for shard in SHARDS:
        with shard_map.sessionmaker()() as session:
            rows = session.execute(select(key, model.note).options(set_shard_id(shard)))
            found.update({row[0]: row[1] for row in rows})
    return found


def update_by_key(shard_map: ShardMap, model: Any, key_name: str, value: Any) -> str:
    with shard_map.sessionmaker()() as session:
        try:
            session.execute(update(model), [{key_name: value, "note": "updated"}])
            session.commit()
        except (ShardingError, sa.exc.DBAPIError, sa.exc.StatementError):
            return "refused"
    return "updated"


PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def check_update(
    shard_map: ShardMap, model: Any, key_name: str, rows: list[dict[str, Any]], asked: Any
) -> None:
    clear(shard_map)
    with shard_map.sessionmaker()() as session:
        session.execute(sa.insert(model), rows)
        session.commit()
    column = getattr(model, key_name)
    truth = holders(shard_map, column, asked)
    outcome = update_by_key(shard_map, model, key_name, asked)
    after = notes(shard_map, model)
    changed = sorted(key for key, note in after.items() if note == "updated")
    if truth is None or not truth:
        # no row is that key, or the database refuses the comparison: nothing changes
        assert outcome == "refused" and changed == [], (asked, truth, outcome, changed)
        return
    if len(truth) > 1:
        # several rows are that key (MariaDB compares a string column with 0 as numbers):
        # refused as ambiguous, or the rows of the one shard holding them all updated
        found_on = {shard for shard, _ in truth}
        expected = [] if len(found_on) > 1 else sorted(key for _, key in truth)
        assert changed == expected, (asked, truth, outcome, changed)
        return
    ((_, stored),) = truth
    if outcome == "refused":
        # only a representation whose comparison cannot be known may be refused (MariaDB
        # finds '0 1' = 0 in a SELECT, with a warning its strict mode makes an UPDATE's error)
        assert not known(shard_map, column, asked), (asked, truth, "refused a key it knows")
        assert changed == [], (asked, changed)
        return
    assert changed == [stored], (asked, truth, changed)


def stores_as(shard_map: ShardMap, column: Any, value: Any, stored: Any) -> bool:
    """Whether ``column`` is known to store ``value`` as ``stored``."""
    form = shard_map.rules.canonical_form(column.property.columns[0], "?")
    assert form is not None
    try:
        return bool(form.stored(value) == stored)
    except ShardingError:
        return False


def known(shard_map: ShardMap, column: Any, value: Any) -> bool:
    """Whether ``value`` has a known canonical form as a lookup of ``column``."""
    form = shard_map.rules.canonical_form(column.property.columns[0], "?")
    assert form is not None
    try:
        form.compared(value)
    except ShardingError:
        return False
    return True


@given(
    data=st.data(),
    value=st.integers(min_value=-(2**31), max_value=2**31 - 1) | st.sampled_from([0, 1, 7]),
)
@PROPERTY
def _integer_keys(shard_map: ShardMap, data: st.DataObject, value: int) -> None:
    asked = data.draw(st.sampled_from(integer_representations(value)), label="asked")
    neighbours = [value + 1, value - 1] if abs(value) < 2**31 - 1 else []
    rows = [{"id": key, "region": n, "note": None} for n, key in enumerate([value, *neighbours])]
    check_update(shard_map, Account, "id", rows, asked)


def test_an_update_by_key_finds_the_row_the_database_stores_under_another_form(
    shard_map: ShardMap,
) -> None:
    _integer_keys(shard_map)


STRING_VALUES = st.text(alphabet="aAbBzZ09 -_.éÁ", min_size=1, max_size=8).filter(
    lambda text: text.strip(" ") != ""
) | st.sampled_from(["Alice", "alice ", "Bob", "7"])


@given(data=st.data(), value=STRING_VALUES)
@PROPERTY
def _string_keys(shard_map: ShardMap, data: st.DataObject, value: str) -> None:
    asked = data.draw(st.sampled_from(string_representations(value)), label="asked")
    rows = [{"name": value, "region": 1, "note": None}, {"name": value + "x", "region": 2}]
    check_update(shard_map, Member, "name", rows, asked)


def test_an_update_by_a_string_key_finds_the_row_under_the_collation(shard_map: ShardMap) -> None:
    _string_keys(shard_map)


@pytest.mark.parametrize(
    "backend", [pytest.param("mariadb", marks=pytest.mark.mariadb)], indirect=True
)
def test_the_issue_example_alice_under_a_case_insensitive_collation(shard_map: ShardMap) -> None:
    check_update(shard_map, Member, "name", [{"name": "alice", "region": 5}], "Alice ")
    assert notes(shard_map, Member) == {"alice": "updated"}


counter = itertools.count(1)


@given(
    data=st.data(),
    value=st.integers(min_value=-(2**31), max_value=2**31 - 1) | st.sampled_from([0, 1, 7]),
)
@PROPERTY
def _pending_parents(shard_map: ShardMap, data: st.DataObject, value: int) -> None:
    clear(shard_map)
    given_as = data.draw(st.sampled_from(integer_representations(value)), label="foreign key")
    region = data.draw(st.integers(0, 50), label="region")
    with shard_map.sessionmaker()() as session:
        session.add(Account(id=value, region=region))
        session.add(Visit(id=next(counter), account_id=given_as))
        try:
            session.commit()
        except ShardingError:
            refused = True
        except (sa.exc.DBAPIError, sa.exc.StatementError):
            refused = False  # the driver's or the database's own refusal (pysqlite: Decimal)
            session.rollback()
            assert holders(shard_map, Account.id, value) == []
            return
        else:
            refused = False
    parent = holders(shard_map, Account.id, value)
    visits = []
    for shard in SHARDS:
        with shard_map.sessionmaker()() as session:
            statement = select(Visit.account_id).options(set_shard_id(shard))
            visits += [(shard, key) for key in session.scalars(statement)]
    if refused:
        # only a foreign key whose stored value is not known to be the parent's may be refused
        assert not stores_as(shard_map, Account.id, given_as, value), (given_as, "refused")
        assert visits == [], (given_as, visits)
        return
    # stored: the visit is on its account's shard, and refers to it
    assert parent is not None and len(parent) == 1
    assert visits == [(parent[0][0], value)], (given_as, parent, visits)


def test_a_follower_finds_its_pending_parent_by_the_canonical_form_of_its_key(
    shard_map: ShardMap,
) -> None:
    _pending_parents(shard_map)


def test_the_issue_example_a_string_foreign_key_of_a_pending_parent(shard_map: ShardMap) -> None:
    with shard_map.sessionmaker()() as session:
        session.add(Account(id=7, region=3))
        session.add(Visit(id=1, account_id="7"))
        session.commit()
    (home,) = holders(shard_map, Account.id, 7) or [None]
    with shard_map.sessionmaker()() as session:
        visit = session.scalars(select(Visit).options(set_shard_id(home[0]))).one()
        assert visit.account_id == 7
