"""Physical collisions are refused, and shard map settings are checked (issue 13, 4 and 7).

Two shards that share a database, a schema or a physical table name would share their rows
(``count(*)`` doubles, rows of one shard appear in the other's answers): refused with
``ShardMapError`` at construction, or at ``create_all`` where only the server can tell.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _servers import MakeDatabase
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, func, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shardalchemy import Lookup, ShardKey, ShardMap, ShardMapError, shard_table


class Base(DeclarativeBase):
    pass


class WestOrder(Base):
    __tablename__ = "west_orders"
    __sharding__ = ShardKey("region", Lookup({"eu": "eu", "eu-west": "eu_west"}))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    region: Mapped[str] = mapped_column(String(10))


class Order(Base):
    __tablename__ = "orders"
    __sharding__ = ShardKey("region", Lookup({"eu": "eu", "eu-west": "eu_west"}))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    region: Mapped[str] = mapped_column(String(10))


def test_two_shards_in_one_schema_are_refused() -> None:
    with pytest.raises(ShardMapError, match=r"shards 'a' and 'b' name the same schema 'x'"):
        ShardMap.schemas("sqlite://", {"a": "x", "b": "x"})
    with pytest.raises(ShardMapError, match="same schema"):
        ShardMap.schemas("sqlite://", {"a": "Sales", "b": "sales"})  # one name on MariaDB


def test_two_shards_given_one_database_url_are_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    with pytest.raises(ShardMapError, match=r"shards 'a' and 'b' are given the same database"):
        ShardMap.databases({"a": url, "b": url})
    with pytest.raises(ShardMapError, match="same database"):  # another spelling of the driver
        ShardMap.databases({"a": url, "b": url.replace("sqlite://", "sqlite+pysqlite://")})
    engine = create_engine(url)
    with pytest.raises(ShardMapError, match="same database"):
        ShardMap.databases({"a": engine, "b": engine})
    engine.dispose()
    # in-memory databases are each their own
    ShardMap.databases({"a": "sqlite://", "b": "sqlite://"})


def test_two_urls_that_reach_one_file_are_refused_at_create_all(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    shard_map = ShardMap.databases(
        {
            "eu": f"sqlite:///{tmp_path / 'one.db'}",
            "eu_west": f"sqlite:///{tmp_path / 'sub/../one.db'}",
        }
    )
    with pytest.raises(ShardMapError, match="reach the same database"):
        shard_map.create_all(Base.metadata)
    shard_map.dispose()


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_two_urls_that_reach_one_server_database_are_refused_at_create_all(
    make_database: MakeDatabase, kind: str, request: pytest.FixtureRequest
) -> None:
    request.applymarker(getattr(pytest.mark, kind))
    url = make_database(kind)  # type: ignore[arg-type]
    other = url.set(host="localhost") if url.host == "127.0.0.1" else url.set(host="127.0.0.1")
    shard_map = ShardMap.databases({"eu": url, "eu_west": other})
    try:
        with pytest.raises(ShardMapError, match="reach the same database"):
            shard_map.create_all(Base.metadata)
    finally:
        shard_map.dispose()


def test_table_names_that_coincide_in_the_tables_placement_are_refused(tmp_path: Path) -> None:
    # eu + west_orders and eu_west + orders are both eu_west_orders
    shard_map = ShardMap.tables(f"sqlite:///{tmp_path / 't.db'}", ["eu", "eu_west"])
    with pytest.raises(ShardMapError, match="would both be the table 'eu_west_orders'"):
        shard_map.create_all(Base.metadata)
    shard_map.dispose()
    # a naming with a separator the names do not contain keeps them apart
    shard_map = ShardMap.tables(
        f"sqlite:///{tmp_path / 'u.db'}", ["eu", "eu_west"], naming="{shard}__{table}"
    )
    shard_map.create_all(Base.metadata)
    with shard_map.sessionmaker()() as session:
        session.add_all([WestOrder(id=1, region="eu"), Order(id=1, region="eu-west")])
        session.commit()
        assert session.scalar(select(func.count()).select_from(WestOrder)) == 1
        assert session.scalar(select(func.count()).select_from(Order)) == 1
    shard_map.dispose()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"placement": "tables", "url": "sqlite://", "shards": "ab"}, "must be a list"),
        ({"placement": "tables", "url": "sqlite://", "shards": 3}, "must be a list"),
        (
            {"placement": "tables", "url": "sqlite://", "shards": ["a"], "engine_options": 1},
            "'engine_options' must be a mapping",
        ),
        ({"placement": "tables", "url": "sqlite://", "shards": ["a"], "nam": "x"}, "unknown"),
        (["a", "b"], "a mapping of settings"),
    ],
)
def test_from_config_refuses_settings_of_the_wrong_shape(config: Any, message: str) -> None:
    with pytest.raises(ShardMapError, match=message):
        ShardMap.from_config(config)


@pytest.mark.parametrize("schema", ['odd"name', "50%off", "with space"])
def test_schema_names_that_need_quoting_work_on_sqlite(tmp_path: Path, schema: str) -> None:
    shard_map = ShardMap.schemas(
        f"sqlite:///{tmp_path / 'main.db'}", {"eu": schema, "eu_west": "plain"}
    )
    shard_map.create_all(Base.metadata)
    with shard_map.sessionmaker()() as session:
        session.add(Order(id=1, region="eu"))
        session.commit()
        assert session.scalars(select(Order.id)).all() == [1]
    shard_map.dispose()


@pytest.mark.postgresql
@pytest.mark.parametrize("schema", ["50%off", 'odd"name'])
def test_schema_names_that_need_escaping_work_on_postgresql(
    postgresql_url: Any, schema: str
) -> None:
    shard_map = ShardMap.schemas(postgresql_url, {"eu": schema, "eu_west": "plain"})
    try:
        shard_map.create_all(Base.metadata)
        with shard_map.sessionmaker()() as session:
            session.add(Order(id=1, region="eu"))
            session.commit()
            assert session.scalars(select(Order.id)).all() == [1]
            assert session.scalar(select(func.count()).select_from(Order)) == 1
    finally:
        shard_map.dispose()


NAME = st.from_regex(r"[ab](_?[ab]){0,2}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(
    shards=st.lists(NAME, min_size=2, max_size=3, unique=True),
    tables=st.lists(NAME, min_size=1, max_size=3, unique=True),
)
def test_tables_placement_refuses_exactly_the_names_that_coincide(
    shards: list[str], tables: list[str]
) -> None:
    """Generated shard and table names: refused iff two ``{shard}_{table}`` coincide; else
    every shard's rows of every table stay apart (one row each, counted on every shard)."""
    metadata = MetaData()
    for name in tables:
        shard_table(
            Table(name, metadata, Column("id", Integer, primary_key=True), Column("k", String(5))),
            ShardKey("k", Lookup({shard: shard for shard in shards})),
        )
    physical = [f"{shard}_{table}" for shard in shards for table in tables]
    shard_map = ShardMap.tables("sqlite://", shards)
    try:
        if len(set(physical)) < len(physical):
            with pytest.raises(ShardMapError, match="would both be the table"):
                shard_map.create_all(metadata)
            return
        shard_map.create_all(metadata)
        with shard_map.sessionmaker()() as session:
            for table in metadata.sorted_tables:
                session.execute(insert(table), [{"id": 1, "k": shard} for shard in shards])
            for table in metadata.sorted_tables:
                for shard in shards:
                    counted = session.scalar(
                        select(func.count()).select_from(table).where(table.c.k == shard)
                    )
                    assert counted == 1, (table.name, shard)
            session.rollback()
    finally:
        shard_map.dispose()
