"""Shard-aware IDs route by themselves: get(), WHERE id = / IN, and followers by parent ID."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import ForeignKey, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shardalchemy import FollowParent, Lookup, ShardKey, ShardMap, StatementLog
from shardalchemy.ids import ShardAwareIdGenerator, create_id_tables, mapped_id_column

SHARDS = ["asia", "europe", "africa"]
CONTINENTS = {"Asia": "asia", "Europe": "europe", "Africa": "africa"}


@pytest.fixture
def world(make_database: Any, backend: str) -> Iterator[tuple[ShardMap, Any, Any, Any]]:
    shard_map = ShardMap.databases({shard: make_database(backend) for shard in SHARDS})
    store = make_database(backend)
    create_id_tables(store)
    ids = ShardAwareIdGenerator(store, shard_map, name="routing")

    class Base(DeclarativeBase):
        pass

    class City(Base):
        __tablename__ = "id_cities"
        __sharding__ = ShardKey("continent", Lookup(CONTINENTS))
        id: Mapped[int] = mapped_id_column(ids)
        continent: Mapped[str] = mapped_column(String(20))
        name: Mapped[str] = mapped_column(String(20))
        visits: Mapped[list[Visit]] = relationship(back_populates="city")

    class Visit(Base):
        __tablename__ = "id_visits"
        __sharding__ = FollowParent("city")
        id: Mapped[int] = mapped_column(primary_key=True)
        city_id: Mapped[int] = mapped_column(ForeignKey("id_cities.id"))
        city: Mapped[City] = relationship(back_populates="visits")

    shard_map.create_all(Base.metadata)
    with shard_map.sessionmaker()() as session:
        for continent in CONTINENTS:
            for index in range(3):
                city = City(continent=continent, name=f"{continent}{index}")
                city.visits.append(Visit())
                session.add(city)
        session.commit()
    yield shard_map, ids, City, Visit
    ids.close()
    shard_map.dispose()


def test_get_by_shard_aware_id_touches_exactly_one_shard(world: Any) -> None:
    shard_map, ids, City, _ = world
    with shard_map.sessionmaker()() as session:
        all_ids = session.scalars(select(City.id).execution_options(no_scatter=False)).all()
    assert len(all_ids) == 9
    for city_id in all_ids:
        with shard_map.sessionmaker()() as session, StatementLog(shard_map) as log:
            city = session.get(City, city_id)
            assert city is not None and CONTINENTS[city.continent] == ids.shard_of(city_id)
        assert log.shards() == [ids.shard_of(city_id)]
        assert len(log.entries) == 1


def test_where_id_and_in_list_route_to_the_owning_shards(world: Any) -> None:
    shard_map, _, City, _ = world
    with shard_map.sessionmaker()() as session:
        by_shard = {c.id: CONTINENTS[c.continent] for c in session.scalars(select(City))}
    some = list(by_shard)[:1] + [i for i, s in by_shard.items() if s == "africa"][:1]
    with shard_map.sessionmaker(no_scatter=True)() as session, StatementLog(shard_map) as log:
        found = session.scalars(select(City).where(City.id.in_(some))).all()
        assert sorted(c.id for c in found) == sorted(some)
        route = session.explain(select(City).where(City.id == some[0]))
    assert set(log.shards()) == {by_shard[i] for i in some}
    assert route.shards == (by_shard[some[0]],)
    assert "shard-aware ID" in route.reason or "City.id" in route.reason


def test_follower_filtered_by_its_parents_id_goes_to_the_parents_shard(world: Any) -> None:
    shard_map, _, City, Visit = world
    with shard_map.sessionmaker()() as session:
        city = session.scalars(select(City).where(City.continent == "Europe")).first()
        city_id = city.id
    with shard_map.sessionmaker(no_scatter=True)() as session, StatementLog(shard_map) as log:
        visits = session.scalars(select(Visit).where(Visit.city_id == city_id)).all()
        route = session.explain(select(Visit).where(Visit.city_id == city_id))
    assert len(visits) == 1
    assert log.shards() == ["europe"]
    assert route.shards == ("europe",)
    assert "shard-aware ID" in route.reason


def test_a_value_that_is_not_an_id_is_not_pruned(world: Any) -> None:
    shard_map, _, City, _ = world
    with shard_map.sessionmaker()() as session:
        route = session.explain(select(City).where(City.id == -5))
        assert route.shards == tuple(SHARDS)
        assert session.scalars(select(City).where(City.id == -5)).all() == []
