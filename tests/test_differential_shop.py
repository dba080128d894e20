"""Statements that combine rows, proved by difference (issue 12).

The shop of ``_cross_shard_grammar.py``: customers ``Hash``-sharded by id, their orders
following them, the orders' lines following the orders, and agents sharded independently.
Every statement runs on a ``ShardedSession`` over four shards and on a plain ``Session`` over
one reference database holding the same rows, on SQLite, PostgreSQL and MariaDB, in all
three placements (tables, schemas, databases), sync and async. The rule, for every
statement: the reference's answer, or ``CrossShardQueryError``. A different answer, or any
other exception, fails; so does a refusal of a shape marked ``must_answer`` (co-located on
the shard key, or a shape the ORM already answers). Where the reference itself raises (a
joined eager load of a collection consumed without ``.unique()``), the sharded session must
raise the same error.

Two kinds of tests:

- ``test_issue12_example``: the statements issue 12 reports, one test per statement,
  backend and placement. Those that fail today carry ``xfail(strict=True)``: when a fix makes
  one pass, it turns red, and its marker is to be removed (``ISSUE12_FAILING``).
- ``test_shop_statements_match_the_reference`` (and its async twin, and ``-m slow`` ten times
  longer): hypothesis draws statements per family (joins, subqueries, eager loads, textual
  SQL, text sort keys, UNION) and *surveys* them: every statement is run, every outcome
  counted per shape, and the test fails listing each failing class with a reproduction.
  Families that fail today carry a non-strict ``xfail`` (``SHOP_FAILING``).

Set ``SHARDALCHEMY_DIFFERENTIAL_SURVEY=<file>`` to collect the counts as JSON lines.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import gc
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from _cross_shard_grammar import (
    CUSTOMERS_BY_SHARD,
    SHOP_COLLATED,
    SHOP_COLUMNS,
    SHOP_FAMILIES,
    ShopModels,
    ShopRenderer,
    ShopRows,
    ShopSpec,
    collation_key,
    item_collated,
    model_of,
    shop_models,
    shop_rows,
)
from sqlalchemy import (
    String,
    cast,
    distinct,
    func,
    insert,
    or_,
    select,
    text,
    union,
)
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, aliased, contains_eager, joinedload, selectinload
from test_cross_shard_differential import (
    ALL_PLACEMENTS,
    BACKENDS,
    PLACEMENTS,
    SHARED_DATABASES,
    CrossShardQueryError,
    RefusedShape,
    SharedDatabases,
    Survey,
    as_multiset,
    diverse,
    failing,
    mismatch,
    same_rows,
    shard_map_at,
    share_of,
)

from shardalchemy import ShardMap

pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:Dialect sqlite\\+pysqlite does \\*not\\* support Decimal objects natively"
    ),
    pytest.mark.filterwarnings("ignore:Column-expression-level unary distinct"),
    # joins of a model to an alias of itself, on purpose
    pytest.mark.filterwarnings("ignore:.*cartesian product:sqlalchemy.exc.SAWarning"),
]

# Drawn statements per family and backend, shared out over the three placements (each
# placement runs a third of them, so each backend runs them all); -m slow: ten times as many.
SHOP_EXAMPLES = {"join": 60, "subquery": 60, "eager": 18, "text": 12, "sort": 18, "compound": 12}
SLOW_FACTOR = 10
ASYNC_EXAMPLES = 9  # per family and backend, shared out likewise
CASE_INSENSITIVE = frozenset({"mariadb"})  # the default collation of region and note


# -- the worlds ---------------------------------------------------------------------------------


@dataclasses.dataclass
class ShopWorld:
    backend: str
    placement: str
    models: ShopModels
    shard_map: ShardMap
    reference: Engine
    location: Any
    rows: ShopRows

    def sharded_session(self) -> Any:
        return self.shard_map.sessionmaker()()

    def reference_session(self) -> Session:
        return Session(self.reference)

    def close(self) -> None:
        self.shard_map.dispose()
        self.reference.dispose()


def build_shop(databases: SharedDatabases, backend: str, placement: str) -> ShopWorld:
    models = shop_models(backend)
    location = databases.location(backend, placement)
    shard_map = shard_map_at(placement, location)
    reference = sa.create_engine(databases.reference(backend))
    world = ShopWorld(backend, placement, models, shard_map, reference, location, shop_rows())
    tables = (
        (models.customer, world.rows.customers),
        (models.order, world.rows.orders),
        (models.line, world.rows.lines),
        (models.agent, world.rows.agents),
    )
    try:
        shard_map.create_all(models.metadata)
        models.metadata.create_all(reference)
        with reference.begin() as connection:  # one reference per backend, filled once
            if not connection.scalar(select(func.count()).select_from(models.customer.__table__)):
                for model, rows in tables:
                    connection.execute(insert(model.__table__), rows)
        with world.sharded_session() as session:  # each row to its shard, by the session
            for model, rows in tables:
                session.execute(insert(model), rows)
            session.commit()
    except BaseException:
        world.close()
        raise
    return world


@pytest.fixture(scope="session")
def shop_databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedDatabases]:
    """The databases this module shares with ``test_cross_shard_differential.py``."""
    SHARED_DATABASES.start(tmp_path_factory)
    yield SHARED_DATABASES
    SHARED_DATABASES.stop()


@pytest.fixture(scope="module")
def shops(shop_databases: SharedDatabases) -> Iterator[Callable[[str, str], ShopWorld]]:
    """``get(backend, placement) -> ShopWorld``, built on first use, closed after the module."""
    built: dict[tuple[str, str], ShopWorld] = {}

    def get(backend: str, placement: str) -> ShopWorld:
        if (backend, placement) not in built:
            built[backend, placement] = build_shop(shop_databases, backend, placement)
        return built[backend, placement]

    yield get
    for world in built.values():
        world.close()


def world_params(
    names: tuple[str, ...],
    failing: dict[tuple[str, str, str], str],
    strict: bool,
    every_placement: bool = True,
) -> Any:
    """``(name, backend, placement)`` parameters with the servers' marks, and ``xfail`` for
    the combinations ``failing`` lists (``(name, backend, placement) -> reason``). Without
    ``every_placement``, each backend in its own placement only (:data:`PLACEMENTS`)."""
    params = []
    for name in names:
        for backend in BACKENDS:
            placements = ALL_PLACEMENTS if every_placement else (PLACEMENTS[backend],)
            for placement in placements:
                marks: list[Any] = [] if backend == "sqlite" else [getattr(pytest.mark, backend)]
                reason = failing.get((name, backend, placement))
                if reason is not None:
                    marks.append(pytest.mark.xfail(strict=strict, reason=reason))
                params.append(
                    pytest.param(
                        name, backend, placement, marks=marks, id=f"{name}-{backend}-{placement}"
                    )
                )
    return pytest.mark.parametrize(("name", "backend", "placement"), params, indirect=["backend"])


# -- answers ------------------------------------------------------------------------------------


class TokenChecker:
    """Each loaded object's identity token must be the shard its row lives on."""

    def __init__(self, world: ShopWorld, active: bool) -> None:
        self.world, self.active = world, active
        self.wrong: list[tuple[str, Any, Any]] = []

    def __call__(self, model: str, obj: Any) -> None:
        if not self.active:
            return
        values = {name: getattr(obj, name) for name in SHOP_COLUMNS[model]}
        token = sa.inspect(obj).identity_token
        if token != self.world.rows.shard_of(model, values):
            self.wrong.append((model, values["id"], token))


def fold(world: ShopWorld, model: str, column: str, value: Any) -> Any:
    if world.backend in CASE_INSENSITIVE and (model, column) in SHOP_COLLATED:
        return collation_key(value)
    return value


def entity_value(world: ShopWorld, model: str, obj: Any, tokens: TokenChecker) -> Any:
    if obj is None:
        return None
    tokens(model, obj)
    return (model, *(fold(world, model, c, getattr(obj, c)) for c in SHOP_COLUMNS[model]))


def normalized_rows(
    world: ShopWorld, spec: ShopSpec, raw: list[tuple[Any, ...]], tokens: TokenChecker
) -> list[tuple[Any, ...]]:
    """Rows as comparable tuples: entities (ORM objects, or a whole Core table's columns)
    as ``(model, *columns)``, values of the default collation folded on MariaDB."""
    if spec.family in ("text",) or not spec.select:
        return [tuple(row) for row in raw]
    items = spec.select if spec.api != "scalars" else spec.select[:1]
    if spec.family == "compound":
        items = spec.select[:1]
    rows = []
    for row in raw:
        values: list[Any] = []
        position = 0
        for item in items:
            if item[0] == "entity" and spec.source == "core":
                model = model_of(item[1])
                width = len(SHOP_COLUMNS[model])
                part = row[position : position + width]
                values.append(
                    (
                        model,
                        *(
                            fold(world, model, c, v)
                            for c, v in zip(SHOP_COLUMNS[model], part, strict=False)
                        ),
                    )
                )
                position += width
                continue
            value = row[position] if position < len(row) else "<missing>"
            position += 1
            if item[0] == "entity":
                values.append(entity_value(world, model_of(item[1]), value, tokens))
            elif world.backend in CASE_INSENSITIVE and (
                item_collated(item) or spec.family == "compound"
            ):
                values.append(collation_key(value))
            else:
                values.append(value)
        if position < len(row):
            values.append(("<extra values>", *row[position:]))
        rows.append(tuple(values))
    return rows


def eager_signature(
    world: ShopWorld, spec: ShopSpec, obj: Any, tokens: TokenChecker
) -> tuple[Any, ...]:
    """An object and the related objects its load populated, as plain values (no references)."""
    load = spec.loads[0]
    if model_of(spec.base) == "Customer":
        orders: Any = ()
        if "orders" in load:
            orders = tuple(
                (
                    entity_value(world, "Order", order, tokens),
                    tuple(entity_value(world, "Line", line, tokens) for line in order.lines)
                    if "lines" in load
                    else (),
                )
                for order in obj.orders
            )
        return (entity_value(world, "Customer", obj, tokens), orders)
    related: Any = ()
    if "customer" in load:
        related = entity_value(world, "Customer", obj.customer, tokens)
    elif "lines" in load:
        related = tuple(entity_value(world, "Line", line, tokens) for line in obj.lines)
    return (entity_value(world, "Order", obj, tokens), related)


def eager_rows(
    world: ShopWorld,
    session: Any,
    spec: ShopSpec,
    statement: Any,
    parameters: dict[str, Any],
    tokens: TokenChecker,
) -> list[tuple[Any, ...]]:
    api = spec.api
    if parameters:
        statement = statement.params(**parameters)

    def sign(obj: Any) -> tuple[Any, ...]:
        return (eager_signature(world, spec, obj, tokens),)

    if api == "scalars().all()":
        return [sign(obj) for obj in session.scalars(statement).all()]
    if api == "scalars().unique().all()":
        return [sign(obj) for obj in session.scalars(statement).unique().all()]
    if api == "execute().unique().all()":
        return [sign(row[0]) for row in session.execute(statement).unique().all()]
    if api == "count scalars().unique()":
        # no reference kept to any object: issue 12's unique filter forgot collected ones
        return [(sum(1 for _ in session.scalars(statement).unique()),)]
    if api == "walk scalars().unique()":
        return [sign(obj) for obj in session.scalars(statement).unique()]
    assert api == "walk scalars()", api
    return [sign(obj) for obj in session.scalars(statement)]


def shop_answer(
    world: ShopWorld, session: Any, spec: ShopSpec, sharded: bool
) -> tuple[list[tuple[Any, ...]], list[Any]]:
    """Run ``spec``; its normalized rows, and the objects whose identity token is wrong."""
    tokens = TokenChecker(world, sharded)
    renderer = ShopRenderer(world.models, spec)
    statement, parameters = renderer.statement(), renderer.parameters
    if spec.family == "eager":
        rows = eager_rows(world, session, spec, statement, parameters, tokens)
        return rows, tokens.wrong
    bind = {"shard_id": spec.pinned} if sharded and spec.pinned else None
    if spec.api == "from_statement":
        entity = select(world.models.customer).from_statement(statement)
        raw = [(obj,) for obj in session.scalars(entity, bind_arguments=bind)]
        return [(entity_value(world, "Customer", obj, tokens),) for (obj,) in raw], tokens.wrong
    if spec.api == "scalars":
        raw = [(value,) for value in session.scalars(statement, parameters, bind_arguments=bind)]
    else:
        result = session.execute(statement, parameters, bind_arguments=bind)
        raw = [tuple(row) for row in result]
    return normalized_rows(world, spec, raw, tokens), tokens.wrong


def describe_shop(world: ShopWorld, spec: ShopSpec) -> str:
    """The spec and the SQL the reference ran: a reproduction."""
    try:
        renderer = ShopRenderer(world.models, spec)
        statement = renderer.statement()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                sql = str(
                    statement.params(**renderer.parameters).compile(
                        world.reference, compile_kwargs={"literal_binds": True}
                    )
                )
            except Exception:
                sql = str(statement.compile(world.reference))
    except Exception as error:  # a description must not hide the real failure
        sql = f"<cannot render: {error!r}>"
    return (
        f"backend: {world.backend} ({world.placement} placement)\n"
        f"spec: {spec!r}\nSQL (parameters inlined):\n{sql}"
    )


def compare_rows(spec: ShopSpec, expected: list[Any], got: list[Any]) -> None:
    if spec.total:
        assert same_rows(expected, got), mismatch("as lists", expected, got)
    else:
        want, have = as_multiset(expected), as_multiset(got)
        assert same_rows(want, have), mismatch("as multisets", want, have)


def check_shop(world: ShopWorld, spec: ShopSpec) -> str:
    """Run ``spec`` on both sides and compare; the outcome's name, or an exception."""
    if spec.pinned and world.placement != "databases":
        # textual SQL names the tables as they are in one database of their own
        return "not run: pinned text needs the databases placement"
    expected_error: Exception | None = None
    try:
        with world.reference_session() as session:
            expected, _ = shop_answer(world, session, spec, sharded=False)
    except Exception as error:  # the statement is wrong on one database too
        expected_error = error
    try:
        with world.sharded_session() as session:
            got, wrong_tokens = shop_answer(world, session, spec, sharded=True)
    except CrossShardQueryError as error:
        if spec.must_answer and expected_error is None:
            raise RefusedShape(
                f"refused a shape that must be answered: "
                f"{getattr(error, 'construct', '?')!r}: {error}"
            ) from error
        return "refused"
    except Exception as error:
        if expected_error is not None and type(error) is type(expected_error):
            return "answered"  # the same error as the reference's
        raise
    if expected_error is not None:
        raise AssertionError(
            f"the reference raised {expected_error!r}; the sharded session answered {got[:3]!r}"
        )
    assert not wrong_tokens, f"identity tokens are not the rows' shards: {wrong_tokens[:5]}"
    compare_rows(spec, expected, got)
    return "answered"


def survey_shop(world: ShopWorld, test: str, cases: list[ShopSpec]) -> Survey:
    survey = Survey(test)
    for spec in cases:
        survey.record(
            f"{spec.family}: {spec.shape}",
            lambda spec=spec: check_shop(world, spec),
            lambda spec=spec: describe_shop(world, spec),
        )
    return survey


# -- the drawn statements -----------------------------------------------------------------------

SHOP_FAMILY_NAMES = tuple(SHOP_FAMILIES)


def _everywhere(family: str, backends: tuple[str, ...] = BACKENDS) -> str:
    """``failing()`` keys "family/backend/placement" for ``family`` in every placement: a
    backend's draws are shared out over its placements, so which placement meets a failing
    shape depends on the share as much as on the placement."""
    return " ".join(f"{family}/{b}/{p}" for b in backends for p in ALL_PLACEMENTS)


# (family, backend, placement) -> why the drawn statements of that family fail today; not
# strict: each family's draws mix shapes that pass and shapes that fail
SHOP_FAILING = failing()


@functools.cache
def _strategy(family: str) -> Any:
    return SHOP_FAMILIES[family]()


def shop_cases(family: str, count: int, placement: str | None = None) -> list[ShopSpec]:
    """``count`` specs of ``family``, of as many shapes as may be; with ``placement``, its
    third of them."""
    cases = diverse(_strategy(family), count, lambda spec: spec.shape)
    return cases if placement is None else share_of(cases, placement)


@world_params(SHOP_FAMILY_NAMES, SHOP_FAILING, strict=False)
def test_shop_statements_match_the_reference(
    shops: Callable[[str, str], ShopWorld], name: str, backend: str, placement: str
) -> None:
    world = shops(backend, placement)
    cases = shop_cases(name, SHOP_EXAMPLES[name], placement)
    survey_shop(world, f"shop {name} {backend}/{placement}", cases).assert_held()


SHOP_SLOW_FAILING = SHOP_FAILING  # the same at length


@pytest.mark.slow
@world_params(SHOP_FAMILY_NAMES, SHOP_SLOW_FAILING, strict=False)
def test_shop_statements_match_the_reference_at_length(
    shops: Callable[[str, str], ShopWorld], name: str, backend: str, placement: str
) -> None:
    world = shops(backend, placement)
    cases = shop_cases(name, SLOW_FACTOR * SHOP_EXAMPLES[name], placement)
    survey_shop(world, f"shop (slow) {name} {backend}/{placement}", cases).assert_held()


# -- async: the same statements through AsyncSession --------------------------------------------


async def shop_answer_async(
    world: ShopWorld, session: AsyncSession, spec: ShopSpec
) -> tuple[list[tuple[Any, ...]], list[Any]]:
    tokens = TokenChecker(world, True)
    renderer = ShopRenderer(world.models, spec)
    statement, parameters = renderer.statement(), renderer.parameters
    bind = {"shard_id": spec.pinned} if spec.pinned else None
    if spec.family == "eager":
        # AsyncSession buffers the result; the objects are then walked as the sync API does
        result = await session.execute(statement, parameters)
        if "unique" in spec.api:
            result = result.unique()
        objects = [row[0] for row in result]
        rows = [(eager_signature(world, spec, obj, tokens),) for obj in objects]
        if spec.api == "count scalars().unique()":
            rows = [(len(rows),)]
        return rows, tokens.wrong
    if spec.api == "from_statement":
        entity = select(world.models.customer).from_statement(statement)
        objects = (await session.scalars(entity, bind_arguments=bind)).all()
        return [(entity_value(world, "Customer", obj, tokens),) for obj in objects], tokens.wrong
    if spec.api == "scalars":
        values = (await session.scalars(statement, parameters, bind_arguments=bind)).all()
        raw = [(value,) for value in values]
    else:
        result = await session.execute(statement, parameters, bind_arguments=bind)
        raw = [tuple(row) for row in result.all()]
    return normalized_rows(world, spec, raw, tokens), tokens.wrong


SHOP_ASYNC_FAILING = failing()


@world_params(("async",), SHOP_ASYNC_FAILING, strict=False)
def test_shop_async_session_matches_the_reference(
    shops: Callable[[str, str], ShopWorld], name: str, backend: str, placement: str
) -> None:
    """A sample of every family through ``AsyncSession`` (the executor's async path)."""
    world = shops(backend, placement)
    cases = [
        spec
        for family in SHOP_FAMILY_NAMES
        for spec in shop_cases(family, ASYNC_EXAMPLES, placement)
        if not (spec.pinned and placement != "databases")
    ]
    expected: dict[ShopSpec, Any] = {}
    with world.reference_session() as session:
        for spec in cases:
            try:
                expected[spec] = shop_answer(world, session, spec, sharded=False)[0]
            except Exception as error:
                expected[spec] = error

    async def main() -> Survey:
        survey = Survey(f"shop async {backend}/{placement}")
        shard_map = shard_map_at(placement, world.location, asynchronous=True)
        try:
            Session = shard_map.async_sessionmaker()
            for spec in cases:
                try:
                    async with Session() as session:
                        got: Any = await shop_answer_async(world, session, spec)
                except Exception as error:
                    got = error

                def outcome(spec: ShopSpec = spec, got: Any = got) -> str:
                    want = expected[spec]
                    if isinstance(got, CrossShardQueryError):
                        if spec.must_answer and not isinstance(want, Exception):
                            raise RefusedShape(f"refused a shape that must be answered: {got}")
                        return "refused"
                    if isinstance(got, Exception):
                        if isinstance(want, Exception) and type(want) is type(got):
                            return "answered"
                        raise got
                    if isinstance(want, Exception):
                        raise AssertionError(f"the reference raised {want!r}; got {got[0][:3]}")
                    rows, wrong_tokens = got
                    assert not wrong_tokens, f"identity tokens wrong: {wrong_tokens[:5]}"
                    compare_rows(spec, want, rows)
                    return "answered"

                survey.record(
                    f"{spec.family}: {spec.shape}",
                    outcome,
                    lambda spec=spec: describe_shop(world, spec),
                )
        finally:
            await shard_map.dispose_async()
        return survey

    asyncio.run(main()).assert_held()


# -- issue 12's own statements, one test each ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Example:
    """One of issue 12's statements: how to build it, how to consume it, what it must do."""

    build: Callable[[ShopModels], Any]
    consume: str = "rows"  # "rows" | "scalars" | "count unique" | "walk unique"
    must_answer: bool = False  # else refusing (CrossShardQueryError) is fine
    total: bool = False  # ordered: compare as lists
    lines: bool = False  # a walk signs each order's lines too


def _tier_two_customer() -> int:
    """A customer whose tier many customers share, on every shard."""
    return next(row["id"] for row in shop_rows().customers if row["tier"] == 2)


def _customer_on(shard: str) -> int:
    return CUSTOMERS_BY_SHARD[shard][0]


def _core(m: ShopModels, name: str) -> Any:
    return getattr(m, name).__table__


ISSUE12_EXAMPLES: dict[str, Example] = {
    # 1. co-location assumed from the table family, never proved from the statement
    "uncorrelated scalar subquery": Example(
        lambda m: select(m.customer.id).where(
            m.customer.tier
            == select(m.customer.tier)
            .where(m.customer.id == _tier_two_customer())
            .scalar_subquery()
        )
    ),
    "IN (SELECT non-key)": Example(
        lambda m: select(m.customer.id).where(
            m.customer.city.in_(select(m.customer.city).where(m.customer.tier == 0))
        )
    ),
    "uncorrelated EXISTS": Example(
        lambda m: select(m.customer.id).where(
            select(m.order.id).where(m.order.status == "open", m.order.qty > 7).exists()
        )
    ),
    "self-join aliased non-key, pin on one side": Example(
        lambda m: (
            lambda c2: (
                select(m.customer.id, c2.id)
                .join(c2, m.customer.city == c2.city)
                .where(c2.id == _customer_on("s1"))
            )
        )(aliased(m.customer, name="c2"))
    ),
    "self-join aliased on key": Example(
        lambda m: (lambda c2: select(m.customer.id, c2.city).join(c2, m.customer.id == c2.id))(
            aliased(m.customer, name="c2")
        ),
        must_answer=True,
    ),
    "followers joined on non-key": Example(
        lambda m: (
            select(m.order.id, m.line.id)
            .join(m.line, m.line.qty == m.order.qty)
            .where(m.order.customer_id == _customer_on("s2"))
        )
    ),
    "followers joined on key": Example(
        lambda m: select(m.order.id, m.line.id).join(m.line, m.line.order_id == m.order.id),
        must_answer=True,
    ),
    "join on !=": Example(
        lambda m: (
            select(m.customer.id, m.order.id)
            .join(m.order, m.order.customer_id != m.customer.id)
            .where(m.customer.id == _customer_on("s0"))
        )
    ),
    "self-join on <": Example(
        lambda m: (lambda c2: select(m.customer.id, c2.id).join(c2, c2.id < m.customer.id))(
            aliased(m.customer, name="c2")
        )
    ),
    "self-join on arithmetic": Example(
        lambda m: (lambda c2: select(m.customer.id, c2.id).join(c2, c2.id == m.customer.id + 1))(
            aliased(m.customer, name="c2")
        )
    ),
    "join under OR": Example(
        lambda m: select(m.customer.id, m.order.id).join(
            m.order, or_(m.order.customer_id == m.customer.id, m.order.qty == m.customer.tier)
        )
    ),
    "outer self-join on non-key": Example(
        lambda m: (
            lambda c2: select(m.customer.id, c2.id).outerjoin(
                c2, (c2.tier == m.customer.tier) & (c2.id != m.customer.id)
            )
        )(aliased(m.customer, name="c2"))
    ),
    "EXISTS correlated non-key": Example(
        lambda m: (
            lambda c3: select(m.customer.id).where(
                select(c3.id).where(c3.city == m.customer.city, c3.id != m.customer.id).exists()
            )
        )(aliased(m.customer, name="c3"))
    ),
    "EXISTS correlated on key": Example(
        lambda m: select(m.customer.id).where(
            select(m.order.id)
            .where(m.order.customer_id == m.customer.id, m.order.status == "PAID")
            .exists()
        ),
        must_answer=True,
    ),
    "NOT EXISTS correlated on key": Example(
        lambda m: select(m.customer.id).where(
            ~select(m.order.id).where(m.order.customer_id == m.customer.id).exists()
        ),
        must_answer=True,
    ),
    "scalar subquery correlated on key": Example(
        lambda m: select(
            m.customer.id,
            select(func.count(m.order.id))
            .where(m.order.customer_id == m.customer.id)
            .scalar_subquery(),
        ),
        must_answer=True,
    ),
    "scalar subquery correlated non-key": Example(
        lambda m: (
            lambda c3: select(
                m.customer.id,
                select(func.count(c3.id)).where(c3.city == m.customer.city).scalar_subquery(),
            )
        )(aliased(m.customer, name="c3"))
    ),
    "IN (SELECT follower's key)": Example(
        lambda m: select(m.customer.id).where(
            m.customer.id.in_(select(m.order.customer_id).where(m.order.status == "open"))
        )
    ),
    "subquery in FROM joined on key": Example(
        lambda m: (
            lambda cs: select(cs.c.id, m.order.id).join(m.order, m.order.customer_id == cs.c.id)
        )(select(m.customer).where(m.customer.tier > 1).subquery("cs")),
        must_answer=True,
    ),
    # 2. Core selects and aggregates
    "select(table).order_by.limit": Example(
        lambda m: select(_core(m, "customer")).order_by(_core(m, "customer").c.id).limit(2),
        must_answer=True,
        total=True,
    ),
    "select(subquery).order_by.limit": Example(
        lambda m: (lambda sub: select(sub).order_by(sub.c.id).limit(3))(
            select(_core(m, "customer")).subquery()
        ),
        must_answer=True,
        total=True,
    ),
    "select(*table.c).order_by.limit": Example(
        lambda m: select(*_core(m, "customer").c).order_by(_core(m, "customer").c.id).limit(2),
        must_answer=True,
        total=True,
    ),
    "Core count(*) with count(DISTINCT)": Example(
        lambda m: select(func.count(), func.count(distinct(_core(m, "customer").c.city))),
        must_answer=True,
    ),
    "Core min with count(DISTINCT) and text min": Example(
        lambda m: (
            lambda orders: select(
                func.min(orders.c.id),
                func.count(distinct(orders.c.note)),
                func.min(orders.c.status),
            )
        )(_core(m, "order")),
        must_answer=True,
    ),
    "Core coalesce(sum) next to two sums": Example(
        lambda m: (
            lambda orders: select(
                func.coalesce(func.sum(orders.c.amount), 0),
                func.sum(orders.c.qty),
                func.sum(orders.c.id),
            )
        )(_core(m, "order")),
        must_answer=True,
    ),
    "Core avg between two sums": Example(
        lambda m: (
            lambda orders: select(
                func.sum(orders.c.qty), func.avg(orders.c.amount), func.sum(orders.c.id)
            )
        )(_core(m, "order")),
        must_answer=True,
    ),
    "Core min next to a text min": Example(
        lambda m: (lambda orders: select(func.min(orders.c.qty), func.min(orders.c.note)))(
            _core(m, "order")
        ),
        must_answer=True,
    ),
    "ORM two sums next to avg": Example(
        lambda m: select(func.sum(m.order.qty), func.avg(m.order.amount), func.sum(m.order.id)),
        must_answer=True,
    ),
    "ORM count(*) with count(DISTINCT)": Example(
        lambda m: select(func.count(), func.count(distinct(m.customer.city))),
        must_answer=True,
    ),
    "select(distinct(col))": Example(lambda m: select(distinct(m.customer.city)), must_answer=True),
    "same-named aggregates of two models": Example(
        lambda m: select(func.count(m.customer.id), func.count(m.order.id)).join_from(
            m.customer, m.order
        ),
        must_answer=True,
    ),
    "ORDER BY columns of two models": Example(
        lambda m: (
            select(m.customer.id, m.order.id)
            .join_from(m.customer, m.order)
            .order_by(m.customer.region, m.order.status, m.order.id)
            .limit(12)
        ),
        must_answer=True,
        total=True,
    ),
    "UNION of text columns": Example(
        lambda m: union(select(m.customer.region), select(m.order.note))
    ),
    "text sort key longer than its VARCHAR": Example(
        lambda m: (
            select(m.customer.id)
            .order_by(
                (m.customer.region + "/" + cast(m.customer.id, String(12))).desc(), m.customer.id
            )
            .limit(5)
        ),
        total=True,
    ),
    "ORDER BY text() of a grouped label": Example(
        lambda m: (
            select(m.customer.city, func.count().label("n"))
            .group_by(m.customer.city)
            .order_by(text("n DESC"), m.customer.city)
        ),
        total=True,
    ),
    # 3. ORM loading
    "joinedload .unique() without references": Example(
        lambda m: select(m.customer).options(joinedload(m.customer.orders)),
        consume="count unique",
        must_answer=True,
    ),
    "joinedload nested .unique() walked": Example(
        lambda m: select(m.customer).options(
            joinedload(m.customer.orders).joinedload(m.order.lines)
        ),
        consume="walk unique",
        must_answer=True,
        lines=True,
    ),
    "contains_eager .unique() without references": Example(
        lambda m: (
            select(m.customer).join(m.customer.orders).options(contains_eager(m.customer.orders))
        ),
        consume="count unique",
        must_answer=True,
    ),
    "selectinload walked without references": Example(
        lambda m: select(m.customer).options(selectinload(m.customer.orders)),
        consume="walk",
        must_answer=True,
    ),
    # 4. textual SQL
    "text count(*) on several shards": Example(lambda m: text("SELECT count(*) FROM customers")),
}

# example -> (why it fails today, on which backends); strict: a fixed one turns red, and its
# entry is to be removed (the examples run in each backend's own placement, PLACEMENTS)
ISSUE12_FAILING_EXAMPLES: dict[str, tuple[str, tuple[str, ...]]] = {}  # none today
ISSUE12_FAILING = {
    (name, backend, PLACEMENTS[backend]): reason
    for name, (reason, backends) in ISSUE12_FAILING_EXAMPLES.items()
    for backend in backends
}


def example_rows(world: ShopWorld, session: Any, example: Example) -> list[Any]:
    statement = example.build(world.models)
    tokens = TokenChecker(world, False)
    if example.consume == "count unique":
        count = sum(1 for _ in session.scalars(statement).unique())
        return [(count,)]
    if example.consume in ("walk unique", "walk"):
        result = session.scalars(statement)
        if example.consume == "walk unique":
            result = result.unique()
        signatures = []
        for obj in result:  # no reference kept
            gc.collect(0)
            orders = tuple(
                (order.id, tuple(line.id for line in order.lines) if example.lines else ())
                for order in obj.orders
            )
            signatures.append((entity_value(world, "Customer", obj, tokens), orders))
        return signatures
    result = session.execute(statement)
    rows = [tuple(row) for row in result]
    if world.backend in CASE_INSENSITIVE:  # strings of the default collation: by class
        rows = [tuple(collation_key(v) for v in row) for row in rows]
    return rows


# one placement per backend: the drawn statements cover the placements
@world_params(tuple(ISSUE12_EXAMPLES), ISSUE12_FAILING, strict=True, every_placement=False)
def test_issue12_example(
    shops: Callable[[str, str], ShopWorld], name: str, backend: str, placement: str
) -> None:
    world = shops(backend, placement)
    example = ISSUE12_EXAMPLES[name]
    with world.reference_session() as session:
        expected = example_rows(world, session, example)
    assert expected and expected != [(0,)], "the example must find rows"
    with world.sharded_session() as session:
        try:
            got = example_rows(world, session, example)
        except CrossShardQueryError as error:
            if example.must_answer:
                raise RefusedShape(f"refused: {error}") from error
            return
    spec = ShopSpec("example", name, total=example.total)
    compare_rows(spec, expected, got)


def test_shop_rows_sit_on_their_shards(shops: Callable[[str, str], ShopWorld]) -> None:
    """The world is what the tests assume: rows on their parents' shards, rare values rare."""
    world = shops("sqlite", "databases")
    counts: collections.Counter[str] = collections.Counter()
    for shard in CUSTOMERS_BY_SHARD:
        with world.shard_map.bind(shard).connect() as connection:
            for model in ("customer", "order", "line"):
                table = getattr(world.models, model).__table__
                ids = connection.execute(select(table.c.id)).scalars().all()
                counts[model] += len(ids)
                key = {"customer": "Customer", "order": "Order", "line": "Line"}[model]
                rows = {
                    "Customer": world.rows.customers,
                    "Order": world.rows.orders,
                    "Line": world.rows.lines,
                }[key]
                by_id = {row["id"]: row for row in rows}
                assert {world.rows.shard_of(key, by_id[i]) for i in ids} <= {shard}
    assert counts == {"customer": 40, "order": 100, "line": 200}
    tier_zero = {world.rows.shard_of("Customer", r) for r in world.rows.customers if r["tier"] == 0}
    assert 0 < len(tier_zero) < len(CUSTOMERS_BY_SHARD)  # IN/EXISTS over it differ by shard
