"""Text keys across shards compare as the database's collation does.

PostgreSQL (C.UTF-8 here) and SQLite compare text by code point, which Python reproduces.
MariaDB's default collation is case-insensitive and ignores trailing spaces; there the
shards are asked for each value's ``WEIGHT_STRING()``, the collation's own sort key.
Each statement runs on four shards and on one reference database holding the same rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from _servers import Backend, MakeDatabase
from sqlalchemy import String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from shardalchemy import Hash, ShardKey, ShardMap

SHARDS = ["t0", "t1", "t2", "t3"]
NAMES = ["apple", "Apple", "APPLE ", "banana", "Banana", "s", "ß", "a\t", "a", "b", None, "Zebra"]


class Base(DeclarativeBase):
    pass


class Word(Base):
    __tablename__ = "words"
    __sharding__ = ShardKey("id", Hash(buckets=64, shards=SHARDS))

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str | None] = mapped_column(String(20))


def words() -> list[dict[str, Any]]:
    return [{"id": index, "name": name} for index, name in enumerate(NAMES * 3)]


@pytest.fixture
def worlds(make_database: MakeDatabase, backend: Backend) -> Iterator[tuple[Any, Any]]:
    shard_map = ShardMap.databases({shard: make_database(backend) for shard in SHARDS})
    shard_map.create_all(Base.metadata)
    reference = sa.create_engine(make_database(backend))
    Base.metadata.create_all(reference)
    with shard_map.sessionmaker()() as session, Session(reference) as plain:
        session.execute(sa.insert(Word), words())
        plain.execute(sa.insert(Word), words())
        session.commit()
        plain.commit()
    yield shard_map.sessionmaker(), lambda: Session(reference)
    shard_map.dispose()
    reference.dispose()


STATEMENTS = {
    "order by name, id": select(Word.id, Word.name).order_by(Word.name, Word.id),
    "order by name desc, id, limit": select(Word.id).order_by(Word.name.desc(), Word.id).limit(7),
    "entities by name": select(Word).order_by(Word.name, Word.id.desc()).offset(3).limit(9),
    "count distinct": select(func.count(Word.name.distinct())),
    "grouped, by name": select(func.count(Word.id)).group_by(Word.name).order_by(Word.name),
}


@pytest.mark.parametrize("name", list(STATEMENTS))
def test_text_order_matches_one_database(worlds: Any, name: str) -> None:
    sharded, plain = worlds
    statement = STATEMENTS[name]
    with sharded() as session, plain() as reference:
        got = session.execute(statement).all()
        expected = reference.execute(statement).all()
    if name == "entities by name":
        got = [(row[0].id,) for row in got]
        expected = [(row[0].id,) for row in expected]
    assert got == expected


def test_distinct_rows_match_one_database(worlds: Any) -> None:
    sharded, plain = worlds
    statement = select(Word.name).distinct()
    with sharded() as session, plain() as reference:
        assert len(session.execute(statement).all()) == len(reference.execute(statement).all())


def test_groups_min_and_max_match_one_database(worlds: Any) -> None:
    sharded, plain = worlds
    grouped = select(Word.name, func.count()).group_by(Word.name)
    extremes = select(func.min(Word.name), func.max(Word.name))
    with sharded() as session, plain() as reference:
        got_groups = session.execute(grouped).all()
        expected_groups = reference.execute(grouped).all()
        got_extremes = session.execute(extremes).one()
        expected_extremes = reference.execute(extremes).one()

    # under a case-insensitive collation, which spelling names a group is the database's
    # choice; compare spellings in the collation's terms, and counts exactly
    def fold(value: Any) -> Any:  # utf8mb4_general_ci's equality, for these words
        return value if value is None else value.lower().rstrip(" ").replace("ß", "s")

    assert sorted(((fold(n), c) for n, c in got_groups), key=str) == sorted(
        ((fold(n), c) for n, c in expected_groups), key=str
    )
    assert [fold(value) for value in got_extremes] == [fold(value) for value in expected_extremes]
