"""A follower may not be moved to a parent on another shard, by any path (issue 12, 3b).

A follower's row lives on its parent's shard.  Assigning its foreign key
(``task.project_id = other``) used to run the UPDATE on the old shard: the row silently
misplaced, or a raw ``ForeignKeyViolation``; only assigning the relationship was refused.
Now every write that would put a follower on another shard than its (new) parent's raises
:class:`ShardKeyChangeError` before any SQL, whether the new parent is loaded or not, found
by its shard key, by its shard-aware ID, in the session (added, not flushed yet) or looked up
on the shards; a change that keeps the shard is written.

Hypothesis draws a follower (a ``Project`` following its ``Tenant`` by the tenant's shard
key, a ``Task`` following its ``Project`` by an ID that does not carry the shard, a ``Visit``
following its ``City`` by a shard-aware ID), a new parent (on the same shard or another;
loaded, expired, or new in the session) and the path of the write: the flush after assigning
the foreign key or the relationship, ORM bulk UPDATE by primary key,
``bulk_update_mappings``, ``bulk_save_objects``, Core/ORM ``update().where().values()``,
unpinned or pinned with ``set_shard_id``.  Whatever happens, every row must stay on its
parent's shard (checked with plain SQL on every shard); a move must be refused with nothing
written; a write that keeps the shard must succeed where the path can prove it (flush, bulk,
pinned and shard-key-routed UPDATE statements) and be written.  SQLite, PostgreSQL, MariaDB.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from _servers import Backend, MakeDatabase
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import ForeignKey, Integer, String, insert, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shardalchemy import (
    FollowParent,
    Hash,
    Lookup,
    ShardKey,
    ShardKeyChangeError,
    ShardMap,
    StatementLog,
    set_shard_id,
)
from shardalchemy.ids import ShardAwareIdGenerator, create_id_tables

EXAMPLES = 40
SHARDS = ("s0", "s1", "s2")
TENANTS = range(1, 13)  # spread over the three shards by Hash(id)


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    __tablename__ = "mv_tenants"
    __sharding__ = ShardKey("id", Hash(buckets=16))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(20), default="")


class Project(Base):
    """Follows its tenant by the tenant's shard key: the shard is decided by the value."""

    __tablename__ = "mv_projects"
    __sharding__ = FollowParent("tenant")
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("mv_tenants.id"))
    title: Mapped[str] = mapped_column(String(20), default="")
    tenant: Mapped[Tenant] = relationship()


class Task(Base):
    """Follows its project by an ID that does not carry the shard: the parent is looked up."""

    __tablename__ = "mv_tasks"
    __sharding__ = FollowParent("project")
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    project_id: Mapped[int] = mapped_column(ForeignKey("mv_projects.id"))
    title: Mapped[str] = mapped_column(String(20), default="")
    project: Mapped[Project] = relationship()


CITY_SHARDS = {"A": "s0", "B": "s1", "C": "s2"}


@dataclasses.dataclass
class World:
    shard_map: ShardMap
    City: Any
    Visit: Any
    ids: ShardAwareIdGenerator
    cities: dict[int, str]  # city id -> shard

    def session(self) -> Any:
        return self.shard_map.sessionmaker()()

    def shard_of_tenant(self, tenant: int) -> str:
        rule = self.shard_map.rules.for_mapper(sa.inspect(Tenant))
        assert rule is not None
        return rule.strategy.shard_for(tenant)  # type: ignore[union-attr]

    def reset(self) -> None:
        """Tenants, one project per tenant (id 100 + tenant), one task per project, visits."""
        with self.session() as session:
            for model in (Task, Project, Tenant):
                for shard in SHARDS:
                    session.execute(sa.delete(model).options(set_shard_id(shard)))
            for shard in SHARDS:
                session.execute(sa.delete(self.Visit).options(set_shard_id(shard)))
            session.execute(insert(Tenant), [{"id": t} for t in TENANTS])
            session.execute(insert(Project), [{"id": 100 + t, "tenant_id": t} for t in TENANTS])
            session.execute(
                insert(Task), [{"id": 1000 + t, "project_id": 100 + t} for t in TENANTS]
            )
            cities = list(self.cities)
            session.execute(
                insert(self.Visit),
                [{"id": 5000 + i, "city_id": cities[i % len(cities)]} for i in range(6)],
            )
            session.commit()

    def placement_holds(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row on its parent's shard (plain SQL, shard by shard); the rows, by table."""
        rows: dict[str, list[tuple[Any, ...]]] = {"projects": [], "tasks": [], "visits": []}
        for shard in SHARDS:
            with self.shard_map.bind(shard).connect() as connection:

                def here(table: Any, *columns: str) -> list[tuple[Any, ...]]:
                    found = connection.execute(select(*(table.c[c] for c in columns)))
                    return [tuple(row) for row in found]

                tenants = {t for (t,) in here(Tenant.__table__, "id")}
                projects = here(Project.__table__, "id", "tenant_id")
                tasks = here(Task.__table__, "id", "project_id")
                visits = here(self.Visit.__table__, "id", "city_id")
                cities = {c for (c,) in here(self.City.__table__, "id")}
            assert all(self.shard_of_tenant(t) == shard for t in tenants)
            assert all(tenant in tenants for _, tenant in projects), (shard, projects)
            assert all(project in {p for p, _ in projects} for _, project in tasks), (shard, tasks)
            assert all(city in cities for _, city in visits), (shard, visits)
            rows["projects"] += projects
            rows["tasks"] += tasks
            rows["visits"] += visits
        return {name: sorted(found) for name, found in rows.items()}


@pytest.fixture
def world(make_database: MakeDatabase, backend: Backend) -> Iterator[World]:
    shard_map = ShardMap.databases({shard: make_database(backend) for shard in SHARDS})
    store = make_database(backend)
    create_id_tables(store)
    ids = ShardAwareIdGenerator(store, shard_map, name="moves")

    class CityBase(DeclarativeBase):
        pass

    class City(CityBase):
        __tablename__ = "mv_cities"
        __sharding__ = ShardKey("region", Lookup(CITY_SHARDS))
        id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, default=ids.column_default)
        region: Mapped[str] = mapped_column(String(4))

    class Visit(CityBase):
        """Follows its city by the city's shard-aware ID: the shard is read from the ID."""

        __tablename__ = "mv_visits"
        __sharding__ = FollowParent("city")
        id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
        city_id: Mapped[int] = mapped_column(ForeignKey("mv_cities.id"))
        city: Mapped[City] = relationship()

    shard_map.create_all(Base.metadata)
    shard_map.create_all(CityBase.metadata)
    with shard_map.sessionmaker()() as session:
        made = [City(region=region) for region in CITY_SHARDS for _ in range(2)]
        session.add_all(made)
        session.commit()
        cities = {city.id: CITY_SHARDS[city.region] for city in made}
    built = World(shard_map, City, Visit, ids, cities)
    yield built
    ids.close()
    shard_map.dispose()


# -- what is drawn -----------------------------------------------------------------------------

PATHS = (
    "flush: foreign key",
    "flush: foreign key, row expired",  # its old value is not loaded
    "flush: relationship",
    "orm bulk update",
    "bulk_update_mappings",
    "bulk_save_objects",
    "update statement",
    "update statement pinned",
)
KINDS = ("project", "task", "visit")
PARENTS = ("stored, loaded", "stored, not loaded", "new in the session")


@dataclasses.dataclass(frozen=True)
class Move:
    kind: str
    child: int  # which follower (modulo how many)
    parent: int  # which new parent (modulo how many)
    parent_state: str
    path: str


moves = st.builds(
    Move,
    kind=st.sampled_from(KINDS),
    child=st.integers(0, 20),
    parent=st.integers(0, 20),
    parent_state=st.sampled_from(PARENTS),
    path=st.sampled_from(PATHS),
)


def plan(world: World, move: Move) -> tuple[Any, int, str, str, str, Any]:
    """(model, child id, foreign-key attribute, current shard, new shard, new parent spec)."""
    if move.kind == "project":
        tenant = list(TENANTS)[move.child % len(TENANTS)]
        new = list(TENANTS)[move.parent % len(TENANTS)]
        if move.parent_state == "new in the session":
            new = 50 + move.parent  # a tenant not stored yet
        return (
            Project,
            100 + tenant,
            "tenant_id",
            world.shard_of_tenant(tenant),
            world.shard_of_tenant(new),
            new,
        )
    if move.kind == "task":
        tenant = list(TENANTS)[move.child % len(TENANTS)]
        new_tenant = list(TENANTS)[move.parent % len(TENANTS)]
        new = 100 + new_tenant
        if move.parent_state == "new in the session":
            new = 300 + move.parent  # a project not stored yet, of that tenant
        return (
            Task,
            1000 + tenant,
            "project_id",
            world.shard_of_tenant(tenant),
            world.shard_of_tenant(new_tenant),
            (new, new_tenant),
        )
    visit = 5000 + move.child % 6
    cities = list(world.cities)
    current = cities[(visit - 5000) % len(cities)]
    new = cities[move.parent % len(cities)]
    return (world.Visit, visit, "city_id", world.cities[current], world.cities[new], new)


def new_parent(world: World, session: Any, move: Move, spec: Any) -> tuple[Any, Any]:
    """(the new parent object or None, the foreign-key value that names it)."""
    if move.kind == "project":
        key = spec
        if move.parent_state == "new in the session":
            parent = Tenant(id=key)
            session.add(parent)
            return parent, key
        parent = session.get(Tenant, key) if move.parent_state == "stored, loaded" else None
        return parent, key
    if move.kind == "task":
        key, tenant = spec
        if move.parent_state == "new in the session":
            parent = Project(id=key, tenant_id=tenant)
            session.add(parent)
            return parent, key
        parent = session.get(Project, key) if move.parent_state == "stored, loaded" else None
        return parent, key
    if move.parent_state == "new in the session":
        return None, spec  # a city's ID is made at flush: only stored cities are drawn
    parent = session.get(world.City, spec) if move.parent_state == "stored, loaded" else None
    return parent, spec


def attempt(world: World, move: Move) -> tuple[str, bool]:
    """Run ``move``; (outcome, whether the path must succeed when the shard is kept)."""
    model, child_id, attribute, current, _, spec = plan(world, move)
    relationship_name = {"project": "tenant", "task": "project", "visit": "city"}[move.kind]
    with world.session() as session, StatementLog(world.shard_map) as log:
        parent, key = new_parent(world, session, move, spec)
        if move.parent_state == "new in the session" and move.path not in (
            "flush: foreign key",
            "flush: relationship",
        ):
            session.flush()  # the statement paths see stored rows only
        log.entries.clear()
        certain = True
        try:
            if move.path.startswith("flush"):
                child = session.get(model, child_id)
                if move.path == "flush: foreign key, row expired":
                    session.expire(child)
                if move.path == "flush: relationship":
                    if parent is None:
                        parent = session.get(
                            sa.inspect(model).relationships[relationship_name].mapper, key
                        )
                    setattr(child, relationship_name, parent)
                else:
                    setattr(child, attribute, key)
                session.flush()
            elif move.path == "orm bulk update":
                session.execute(update(model), [{"id": child_id, attribute: key}])
            elif move.path == "bulk_update_mappings":
                session.bulk_update_mappings(model, [{"id": child_id, attribute: key}])
            elif move.path == "bulk_save_objects":
                child = session.get(model, child_id)
                setattr(child, attribute, key)
                session.bulk_save_objects([child])
            else:
                statement = update(model).where(model.id == child_id).values({attribute: key})
                if move.path == "update statement pinned":
                    statement = statement.options(set_shard_id(current))
                else:
                    certain = False  # where id = ... reaches every shard: refusing is fine
                session.execute(statement)
            session.commit()
        except ShardKeyChangeError as error:
            note(f"refused: {error}")
            writes = [e for e in log.entries if e.sql.lstrip().upper().startswith("UPDATE")]
            assert writes == [], writes  # refused before any UPDATE
            return "refused", certain
    return "written", certain


def check(world: World, move: Move) -> str:
    world.reset()
    before = world.placement_holds()
    _, child_id, _, current, target, spec = plan(world, move)
    note(f"{move}: {current} -> {target}")
    result, certain = attempt(world, move)
    after = world.placement_holds()  # whatever happened, no row is misplaced
    if target != current:
        assert result == "refused", move
        assert after == before
    elif result == "written":
        key = spec[0] if isinstance(spec, tuple) else spec
        table = {"project": "projects", "task": "tasks", "visit": "visits"}[move.kind]
        assert (child_id, key) in after[table]
    else:
        assert not certain, f"{move} keeps the shard but was refused"
        assert after == before
    return result


FIXED = [
    Move("task", 0, 5, "stored, not loaded", "flush: foreign key"),  # the issue's
    Move("task", 0, 5, "stored, loaded", "flush: foreign key"),
    Move("project", 0, 1, "stored, not loaded", "orm bulk update"),
    Move("project", 0, 1, "stored, not loaded", "update statement"),
]


def test_followers_stay_on_their_parents_shard_whatever_the_write(world: World) -> None:
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(move=moves)
    def prop(move: Move) -> None:
        check(world, move)

    for fixed in FIXED:
        prop = example(move=fixed)(prop)
    prop()


# -- the examples ---------------------------------------------------------------------


def test_assigning_a_foreign_key_to_a_parent_on_another_shard_is_refused(world: World) -> None:
    world.reset()
    before = world.placement_holds()
    here = world.shard_of_tenant(1)
    other = next(t for t in TENANTS if world.shard_of_tenant(t) != here)
    same = next(t for t in TENANTS if t != 1 and world.shard_of_tenant(t) == here)
    with world.session() as session:
        task = session.get(Task, 1001)
        task.project_id = 100 + other  # the new project is not loaded
        with pytest.raises(ShardKeyChangeError) as caught:
            session.flush()
        assert (caught.value.model, caught.value.attribute) == ("Task", "project_id")
        assert repr(here) in str(caught.value)
        session.rollback()
        with pytest.raises(ShardKeyChangeError):
            session.execute(update(Task), [{"id": 1001, "project_id": 100 + other}])
        session.rollback()
        with pytest.raises(ShardKeyChangeError):
            session.execute(update(Project).where(Project.tenant_id == 1).values(tenant_id=other))
        session.rollback()
    assert world.placement_holds() == before
    with world.session() as session:  # the same shard: written
        session.get(Task, 1001).project_id = 100 + same
        session.execute(update(Project).where(Project.tenant_id == 1).values(tenant_id=same))
        session.commit()
    after = world.placement_holds()
    assert (1001, 100 + same) in after["tasks"]
    assert (101, same) in after["projects"]
