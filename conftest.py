"""The names every docstring example of ``src/shardalchemy`` may use, for the doctests.

Docstring examples run as doctests (``pytest`` collects ``src/shardalchemy`` with
``--doctest-modules``). Examples that need a sharded store share one: the weather
scenario of the README, on a throwaway SQLite file in the ``tables`` placement:

- ``City`` (``continent`` is the shard key, a ``Lookup``; ``name``, ``population``) and
  ``Report`` (follows its city, ``temperature``), on ``Base.metadata``;
- ``shard_map`` (shards ``asia``, ``europe``, ``north_america``, ``south_america``), its tables
  created; ``Session`` (its sessionmaker) and an open ``session`` holding Tokyo (Asia),
  London and Dublin (Europe) and one report of each;
- ``select``, ``func``, ``insert``, ``update``, ``delete``, ``text``, ``bindparam`` from
  SQLAlchemy, and ``shardalchemy`` itself;
- in the examples of ``shardalchemy.ids`` only: ``ids_url``, a SQLite file of its own holding
  the ID tables (a shard map's SQLite shards in one file share a connection, so they cannot),
  ``ids`` (a ``ShardAwareIdGenerator`` there, numbering ``shard_map``'s shards; it leases a
  worker number at its first ID) and ``order_ids`` (the ``HiLoSequence`` "orders" there).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import ForeignKey, String, bindparam, delete, func, insert, select, text, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

import shardalchemy
from shardalchemy import FollowParent, Lookup, ShardKey, ShardMap
from shardalchemy.ids import HiLoSequence, ShardAwareIdGenerator, create_id_tables

CONTINENTS = {
    "Asia": "asia",
    "Europe": "europe",
    "North America": "north_america",
    "South America": "south_america",
}


class Base(DeclarativeBase):
    pass


class City(Base):
    __tablename__ = "cities"
    __sharding__ = ShardKey("continent", Lookup(CONTINENTS))

    id: Mapped[int] = mapped_column(primary_key=True)
    continent: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(50))
    population: Mapped[int] = mapped_column(default=0)
    reports: Mapped[list[Report]] = relationship(back_populates="city")

    def __repr__(self) -> str:
        return f"City({self.name!r})"


class Report(Base):
    __tablename__ = "reports"
    __sharding__ = FollowParent("city")

    id: Mapped[int] = mapped_column(primary_key=True)
    city_id: Mapped[int] = mapped_column(ForeignKey("cities.id"))
    temperature: Mapped[float]
    city: Mapped[City] = relationship(back_populates="reports")


@pytest.fixture(autouse=True)
def docstring_examples(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """Fill the doctest namespace (doctests only; other tests are left alone)."""
    if not isinstance(request.node, pytest.DoctestItem):
        yield
        return
    namespace: dict[str, Any] = request.getfixturevalue("doctest_namespace")
    shard_map = ShardMap.tables(f"sqlite:///{tmp_path / 'cities.db'}", list(CONTINENTS.values()))
    shard_map.create_all(Base.metadata)
    Session = shard_map.sessionmaker()
    with Session() as setup:
        tokyo = City(id=1, continent="Asia", name="Tokyo", population=37_400_000)
        london = City(id=2, continent="Europe", name="London", population=9_000_000)
        dublin = City(id=3, continent="Europe", name="Dublin", population=1_200_000)
        tokyo.reports.append(Report(id=1, temperature=21.5))
        london.reports.append(Report(id=2, temperature=12.0))
        setup.add_all([tokyo, london, dublin])
        setup.commit()
    session = Session()
    namespace.update(
        Base=Base,
        City=City,
        Report=Report,
        shard_map=shard_map,
        Session=Session,
        session=session,
        select=select,
        func=func,
        insert=insert,
        update=update,
        delete=delete,
        text=text,
        bindparam=bindparam,
        shardalchemy=shardalchemy,
    )
    generators: list[Any] = []
    if request.node.name.split(".")[:2] == ["shardalchemy", "ids"]:  # only they need them
        ids_url = f"sqlite:///{tmp_path / 'ids.db'}"
        create_id_tables(ids_url)
        ids = ShardAwareIdGenerator(ids_url, shard_map)
        order_ids = HiLoSequence("orders", ids_url)
        generators += [ids, order_ids]
        namespace.update(ids_url=ids_url, ids=ids, order_ids=order_ids)
    yield
    for generator in generators:
        generator.close()
    session.close()
    shard_map.dispose()
