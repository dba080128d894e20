"""Co-location is proved from the statement (routing/colocation.py), never assumed.

Pure: statements over a multi-tenant schema (tenants Hash-sharded; users and projects
following their tenant; tasks following their project), a customers -> orders chain, an
independently sharded table and an unsharded one. Each statement is either proven
co-located (and says by which equality) or not (and says why): the router then refuses to
prune it to fewer shards than all, and the planner refuses it on several shards.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import ForeignKey, String, Update, and_, exists, func, or_, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, aliased, joinedload, mapped_column, relationship

from shardalchemy import FollowParent, Hash, ShardKey
from shardalchemy.routing import Router
from shardalchemy.routing.colocation import colocation
from shardalchemy.sharding import RuleBook

SHARDS = ("s0", "s1", "s2", "s3")


class Base(DeclarativeBase):
    pass


class Plan(Base):  # not sharded
    __tablename__ = "co_plans"
    name: Mapped[str] = mapped_column(String(20), primary_key=True)


class Tenant(Base):
    __tablename__ = "co_tenants"
    __sharding__ = ShardKey("id", Hash(buckets=64))
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(20))
    plan: Mapped[str] = mapped_column(String(20))


class User(Base):
    __tablename__ = "co_users"
    __sharding__ = FollowParent("tenant")
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("co_tenants.id"))
    name: Mapped[str] = mapped_column(String(20))
    tenant: Mapped[Tenant] = relationship()


class Project(Base):
    __tablename__ = "co_projects"
    __sharding__ = FollowParent("tenant")
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("co_tenants.id"))
    name: Mapped[str] = mapped_column(String(20))
    tenant: Mapped[Tenant] = relationship()
    tasks: Mapped[list[Task]] = relationship(back_populates="project")


class Task(Base):
    __tablename__ = "co_tasks"
    __sharding__ = FollowParent("project")
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("co_projects.id"))
    tenant_id: Mapped[int]  # a copy of the project's tenant: not what places the task
    title: Mapped[str] = mapped_column(String(20))
    project: Mapped[Project] = relationship(back_populates="tasks")


class Other(Base):  # sharded by a rule of its own: not co-located with tenants
    __tablename__ = "co_others"
    __sharding__ = ShardKey("id", Hash(buckets=64))
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int]


RULES = RuleBook(SHARDS)
RULES.check(Base.metadata)
ROUTER = Router(RULES, SHARDS)

twin = aliased(Tenant)
other_project = aliased(Project)
orders_per_tenant = (
    select(User.tenant_id, func.count(User.id).label("n")).group_by(User.tenant_id).subquery()
)

PROVEN: dict[str, Any] = {
    "a relationship join": select(Task.title, Project.name).join(Task.project),
    "a follower joined to its parent by key": select(User.name, Tenant.name).join(
        Tenant, User.tenant_id == Tenant.id
    ),
    "two followers of one parent, on their foreign keys": select(Project.name, User.name).join(
        User, User.tenant_id == Project.tenant_id
    ),
    "follower chain": select(Task.title, Tenant.name).join(Task.project).join(Project.tenant),
    "where equality instead of ON": select(User.name, Tenant.name).where(
        User.tenant_id == Tenant.id, Tenant.plan == "free"
    ),
    "a self-join on the key": select(Tenant.id, twin.name).join(twin, twin.id == Tenant.id),
    "key equality next to other conditions": select(Tenant.id).join(
        twin, and_(twin.id == Tenant.id, twin.plan != Tenant.plan)
    ),
    "a correlated scalar subquery on the key": select(
        Tenant.id,
        select(func.count(User.id)).where(User.tenant_id == Tenant.id).scalar_subquery(),
    ),
    "a correlated EXISTS": select(Tenant.id).where(
        exists(select(User.id).where(User.tenant_id == Tenant.id, User.name == "x"))
    ),
    "the key IN (SELECT a follower's key)": select(Tenant.id).where(
        Tenant.id.in_(select(User.tenant_id).where(User.name == "x"))
    ),
    "a follower's key IN (SELECT another follower's key)": select(Project.id).where(
        Project.tenant_id.in_(select(User.tenant_id))
    ),
    "a correlated NOT EXISTS": select(Tenant.id).where(
        ~exists(select(User.id).where(User.tenant_id == Tenant.id))
    ),
    "a subquery in FROM joined on its projected key": select(
        Tenant.name, orders_per_tenant.c.n
    ).join(orders_per_tenant, orders_per_tenant.c.tenant_id == Tenant.id),
    "an outer join on the key": select(Project.name, Task.title).outerjoin(Project.tasks),
    "joined eager loading": select(Project).options(joinedload(Project.tasks)),
    "an unsharded table joined to sharded rows": select(Tenant.name, Plan.name).join(
        Plan, Plan.name == Tenant.plan
    ),
    "a UNION of independent tables": select(Tenant.id).union_all(select(Other.id)),
    "one sharded table": select(Tenant.id).where(Tenant.plan == "free"),
    "an UPDATE correlated on the key": update(User)
    .where(User.tenant_id == select(Tenant.id).where(Tenant.id == User.tenant_id).scalar_subquery())
    .values(name="x"),
}

NOT_PROVEN: dict[str, Any] = {
    "an uncorrelated scalar subquery": select(Tenant.id).where(
        Tenant.plan == select(Tenant.plan).where(Tenant.id == 1).scalar_subquery()
    ),
    "an uncorrelated IN subquery": select(Tenant.id).where(
        Tenant.name.in_(select(Tenant.name).where(Tenant.plan == "free"))
    ),
    "the key IN (SELECT a key ... LIMIT)": select(Tenant.id).where(
        Tenant.id.in_(select(User.tenant_id).limit(3))
    ),
    "the key IN (SELECT another column)": select(Tenant.id).where(
        Tenant.id.in_(select(User.id).where(User.name == "x"))
    ),
    "an uncorrelated EXISTS": select(Tenant.id).where(
        exists(select(User.id).where(User.name == "x"))
    ),
    "a subquery correlated on another column": select(Tenant.id).where(
        exists(select(User.id).where(User.name == Tenant.name))
    ),
    "a self-join on a non-key column, pinned on one side": select(Tenant.id)
    .join(twin, twin.plan == Tenant.plan)
    .where(twin.id == 5),
    "followers joined on a non-key column": select(Task.title).join(
        Project, Task.title == Project.name
    ),
    "a follower joined on a copied column": select(Task.title).join(
        Project, Task.tenant_id == Project.tenant_id
    ),
    "two projects of one tenant... not: joined by name": select(Project.id).join(
        other_project, other_project.name == Project.name
    ),
    "a non-equi join": select(Tenant.id).join(twin, twin.id != Tenant.id),
    "a range join": select(Tenant.id).join(twin, twin.id < Tenant.id),
    "arithmetic on the key": select(Tenant.id).join(twin, twin.id == Tenant.id + 1),
    "a key equality under OR": select(Tenant.id).join(
        twin, or_(twin.id == Tenant.id, twin.plan == Tenant.plan)
    ),
    "tables sharded independently": select(Tenant.id, Other.id).join(Other, Other.id == Tenant.id),
    "an outer join keeping every unsharded row": select(Plan.name).outerjoin(
        Tenant, Tenant.plan == Plan.name
    ),
    "sharded rows only inside a subquery": select(Plan.name).where(
        exists(select(Tenant.id).where(Tenant.plan == Plan.name))
    ),
    "an UPDATE with an uncorrelated subquery": update(User)
    .where(User.name.in_(select(User.name).where(User.id == 1)))
    .values(name="x"),
}


@pytest.mark.parametrize("statement", PROVEN.values(), ids=PROVEN.keys())
def test_proven_colocated(statement: Any) -> None:
    found = colocation(statement, RULES)
    assert found.proven, found
    if found.sharded and "one sharded" not in str(found) and "UNION" not in str(statement):
        pass  # the proof names an equality where two sources were tied
    assert "not co-located" not in found.describe()


@pytest.mark.parametrize("statement", NOT_PROVEN.values(), ids=NOT_PROVEN.keys())
def test_not_colocated_is_said_and_named(statement: Any) -> None:
    found = colocation(statement, RULES)
    assert not found.proven, found
    assert found.problem and found.construct
    assert found.describe().startswith("not co-located: ")


@pytest.mark.parametrize("statement", NOT_PROVEN.values(), ids=NOT_PROVEN.keys())
def test_a_pin_on_one_side_does_not_prune_what_is_not_colocated(statement: Any) -> None:
    """The router runs what is not co-located on every shard (the planner then refuses it)."""
    # a pin on the outer query (where adding one keeps the statement valid SQL)
    if isinstance(statement, Update):
        pinned = statement.where(User.tenant_id == 5)
    elif Plan.__table__ in statement.get_final_froms():
        pinned = statement
    else:
        pinned = statement.where(Tenant.id == 5)
    route = ROUTER.route(pinned)
    assert route.shards == SHARDS
    assert route.colocation is not None and not route.colocation.proven
    assert route.colocation.problem in route.reason
    assert ROUTER.single_shard(pinned) is None


def test_the_proof_names_the_equality() -> None:
    found = colocation(select(Task.title, Project.name).join(Task.project), RULES)
    assert found.proofs == ("co_projects.id = co_tasks.project_id (Task follows Project)",)
    found = colocation(
        select(Project.name, User.name).join(User, User.tenant_id == Project.tenant_id), RULES
    )
    assert found.proofs == ("co_users.tenant_id = co_projects.tenant_id (shard keys)",)


def test_a_colocated_join_pinned_on_one_side_still_prunes() -> None:
    statement = select(Task.title, Project.name).join(Task.project).where(Project.tenant_id == 5)
    assert ROUTER.route(statement).shards == (
        Tenant.__sharding__.strategy.bind(SHARDS).shard_for(5),
    )


# -- on a database: what is not co-located is refused, never answered per shard -------------


@pytest.fixture
def tenants(tmp_path: Any) -> Any:
    from shardalchemy import ShardMap

    shard_map = ShardMap.tables(f"sqlite:///{tmp_path / 'tenants.db'}", list(SHARDS))
    shard_map.create_all(Base.metadata)
    with shard_map.sessionmaker()() as session:
        for number in range(1, 13):
            tenant = Tenant(id=number, name=f"t{number}", plan="free" if number % 3 else "pro")
            session.add_all([tenant, User(id=number, tenant_id=number, name=f"u{number % 4}")])
        session.commit()
    yield shard_map
    shard_map.dispose()


def test_a_multi_shard_update_that_is_not_colocated_is_refused_and_changes_nothing(
    tenants: Any,
) -> None:
    from shardalchemy import CrossShardQueryError

    statement = (
        update(User)
        .where(User.name.in_(select(User.name).where(User.id == 1)))
        .values(name="changed")
    )
    with tenants.sessionmaker()() as session:
        with pytest.raises(CrossShardQueryError, match="not tied to the outer query"):
            session.execute(statement)
        session.rollback()
        assert session.scalar(select(func.count()).where(User.name == "changed")) == 0
        # the same, co-located (correlated on the key), runs on every shard
        correlated = (
            update(User)
            .where(
                exists(select(Tenant.id).where(Tenant.id == User.tenant_id, Tenant.plan == "pro"))
            )
            .values(name="pro user")
        )
        assert session.execute(correlated).rowcount == 4
        # and concatenation, asked for, runs it shard by shard
        session.execute(statement.execution_options(cross_shard="concatenate"))


def test_the_issue_examples_are_refused_not_answered_wrongly(tenants: Any) -> None:
    from shardalchemy import CrossShardQueryError

    with tenants.sessionmaker()() as session:
        for statement in (
            select(Tenant.id).where(
                Tenant.plan == select(Tenant.plan).where(Tenant.id == 3).scalar_subquery()
            ),
            select(Tenant.id).where(
                Tenant.name.in_(select(Tenant.name).where(Tenant.plan == "pro"))
            ),
            select(Tenant.id).join(twin, twin.plan == Tenant.plan).where(twin.id == 5),
        ):
            with pytest.raises(CrossShardQueryError):
                session.execute(statement).all()
        # co-located shapes are answered, as one database would
        counts = session.execute(
            select(
                Tenant.id,
                select(func.count(User.id)).where(User.tenant_id == Tenant.id).scalar_subquery(),
            ).order_by(Tenant.id)
        ).all()
        assert counts == [(number, 1) for number in range(1, 13)]
        explained = session.explain(select(Tenant.id).join(twin, twin.plan == Tenant.plan))
        assert explained.colocation is not None and not explained.colocation.proven
        assert "nothing equates the shard keys" in explained.colocation.describe()
