"""Multi-shard (scatter) SELECTs over 4 PostgreSQL shards: shardalchemy vs the physical limit.

Usage::

    .venv/bin/python bench/bench_scatter.py --case latency|topk|aggregate|memory|all
        [--rows-per-shard N] [--repeats 7] [--variants sharded,limit,...]
        [--url postgresql+psycopg://postgres@127.0.0.1/postgres] [--keep] [--reuse]

Each case prints ONE JSON line (``--case all`` prints four, in the order
latency, topk, aggregate, memory): the case, its parameters, the median and
every run of each variant, the ratios, whether the answer was right, and the
machine.  Ratios are ``time(variant) / time(limit)``: 1.00 means "as fast as the
driver alone, every shard queried at once"; the variants of a case run
``--repeats`` times interleaved (after one untimed warm-up each) and the medians
are compared.  A short human summary goes to stderr.

The data.  The script creates the databases ``shardalchemy_scatter_s0`` ..
``_s3`` (one per shard, ``ShardMap.databases({...})``) and
``shardalchemy_scatter_one`` (one unsharded database holding every row) on the
server of ``--url``, dropping them first (``DROP DATABASE IF EXISTS ... WITH
(FORCE)``) and again at the end (``--keep`` leaves them; ``--reuse`` takes
tables left by ``--keep`` whose row counts are right instead of loading them
again).  The table ``scatter_items_<rows-per-shard>`` (``id BIGINT`` primary
key, ``g`` a group 0..999, ``x`` a BIGINT with no index, distinct by
construction so a top-k answer is unique, ``v`` a double) holds ids
``1 .. 4 * rows-per-shard``, each on the shard
``Hash(buckets=1024, shards=[...]).shard_for(id)`` chooses (the model's
``ShardKey("id", ...)``), loaded with ``COPY`` and then ``VACUUM ANALYZE``d.
``--rows-per-shard`` defaults to 250,000 for latency/topk/aggregate and to
500,000 for memory; ``--case all`` loads each size once and shares it.

The variants of latency, topk and aggregate:

``sharded``
    shardalchemy: a declarative ``ShardedSession`` from ``shard_map.sessionmaker()``.
``limit``
    the physical limit: the per-shard SQL shardalchemy sends (its plan's
    per-shard statement, given in the JSON as ``limit_sql``) run on every shard
    at once from a pool of one thread per shard, on raw psycopg connections
    (autocommit) opened before timing; rows are fetched and collected in one
    list, nothing is merged.  Where that SQL carries hidden sort columns, the
    least SQL that answers (``minimal_sql``) also runs, as
    ``limit_minimal_sql``: the server time the hidden columns cost.
``extension``
    SQLAlchemy's ``sqlalchemy.ext.horizontal_shard.ShardedSession`` with an
    execute chooser returning every shard: the shards one after another, their
    results concatenated (so its topk and aggregate answers are not merged).
``plain``
    a plain ``Session`` on the unsharded database (the same statement once).

Sessions are opened before timing and reused (``expunge_all()`` after every
run, inside the timing).  Each case first runs the statement once on the
sharded session with :class:`shardalchemy.StatementLog` and an
``after_cursor_execute`` listener attached (untimed): ``sharded_sql`` is what
each shard received and ``rows_fetched_per_shard`` the cursors' ``rowcount``
(``null`` where the driver did not report one, e.g. a server-side cursor).  The
answer is compared with the plain Session's on the unsharded database:
``correct``.

The cases:

``latency``
    ``select(Item.id, Item.x).where(Item.id <= 100,
    select(func.pg_sleep(0.05)).scalar_subquery().is_not(None))``: the
    uncorrelated scalar subquery is a PostgreSQL InitPlan, evaluated once per
    query, so every shard spends 50 ms of server time (standing in for a
    remote server's work) and returns its ~25 rows by primary key.  ``<=`` on a
    Hash shard key cannot be pruned: the route is every shard.  Targets:
    ``sharded_vs_limit <= 1.15``; the sequential extension ~4x.
``topk``
    ``select(Item).order_by(Item.x).limit(10).offset(20)`` (ORM entities).
    The limit runs ``ORDER BY x LIMIT 30`` (limit + offset) on each shard and
    merges nothing.  Target: the right answer, fetching no more than 30 rows
    per shard.
``aggregate``
    ``select(Item.g, func.count(), func.sum(Item.v), func.min(Item.v),
    func.max(Item.v), func.avg(Item.v)).group_by(Item.g)``: 1,000 groups.  The
    limit runs ``SELECT g, count(*), sum(v), min(v), max(v), avg(v), sum(v),
    count(v) FROM ... GROUP BY g`` on each shard (the avg carried as sum and
    count for the merge).  Correct: same groups, counts, min and max; sum and
    avg within 1e-9 relative.
``memory``
    a streamed scatter of every row, ``session.execute(select(Item.id,
    Item.x).execution_options(yield_per=10_000))`` iterated and discarded
    (``sharded``); the same with ORM entities, ``select(Item)``
    (``sharded_orm``); the first on a plain Session on the unsharded database
    (``plain``; ``plain_orm``, the ORM one, only when ``--variants`` names it:
    it adds ~3 minutes at the default size); and the limit, a server-side
    psycopg cursor per shard read ``fetchmany(10_000)`` at a time from one
    thread per shard (``limit``).  Every run is a fresh child process, which
    warms its connections with a small streamed query, then reports the growth
    of its peak RSS across the full stream (``VmHWM``, the process's own peak;
    not ``ru_maxrss``, which a child inherits from its parent across fork +
    exec, see bench_bulk.py) and its rows/s.  Ratios are time ratios as above
    (so ``sharded_vs_plain`` is plain rows/s / sharded rows/s).  Target: every
    sharded variant within 150 MB of its baseline.  Correct: every variant
    streamed exactly ``4 * rows-per-shard`` rows.

Besides ``<variant>_vs_limit``, ``ratios`` has ``extension_vs_sharded``,
``sharded_vs_plain`` and ``sharded_orm_vs_plain_orm`` (same convention: the
first's time over the second's).  ``target.met`` says whether the case's target
was reached (``null`` when a variant it needs was not run).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa
from _databases import create_databases, database_urls, drop_databases, libpq, render
from _machine import machine, peak_rss_kb
from sqlalchemy import BigInteger, Float, Integer, create_engine, event, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.ext import horizontal_shard
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.sql import Select

from shardalchemy import Hash, ShardKey, ShardMap, StatementLog

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1/postgres"
DATABASE_PREFIX = "shardalchemy_scatter"
SHARDS = ["s0", "s1", "s2", "s3"]
STRATEGY = Hash(buckets=1024, shards=SHARDS)
CASES = ("latency", "topk", "aggregate", "memory")
DEFAULT_ROWS_PER_SHARD = {"latency": 250_000, "topk": 250_000, "aggregate": 250_000}
DEFAULT_ROWS_PER_SHARD["memory"] = 500_000
QUERY_VARIANTS = ("sharded", "limit", "extension", "plain")
MEMORY_VARIANTS = ("sharded", "sharded_orm", "plain", "plain_orm", "limit")
# plain_orm only when asked for: 2M ORM objects take ~25 s a run on the 2-core machine
DEFAULT_MEMORY_VARIANTS = ("sharded", "sharded_orm", "plain", "limit")
GROUPS = 1_000
SLEEP_S = 0.05
LATENCY_MAX_ID = 100
LIMIT, OFFSET = 10, 20
YIELD_PER = 10_000
WARMUP_MAX_ID = 1_000
SEED = 20261124
COPY_CHUNK = 50_000
TARGETS = {
    "latency": {"max_sharded_vs_limit": 1.15},
    "topk": {"max_rows_fetched_per_shard": LIMIT + OFFSET},
    "memory": {"max_peak_rss_growth_mb": 150},
}
AVG_REL_TOL = 1e-9


# ---------------------------------------------------------------- model and data


_MODELS: dict[int, type[Any]] = {}


def model_for(rows_per_shard: int) -> type[Any]:
    """The mapped class of the table of ``4 * rows_per_shard`` rows (one per size).

    Each size has a metadata of its own, so creating or dropping one size's
    table leaves the others alone.
    """
    model = _MODELS.get(rows_per_shard)
    if model is not None:
        return model

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = f"scatter_items_{rows_per_shard}"
        __sharding__ = ShardKey("id", STRATEGY)

        id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
        g: Mapped[int] = mapped_column(Integer)
        x: Mapped[int] = mapped_column(BigInteger)  # no index: ORDER BY x scans every row
        v: Mapped[float] = mapped_column(Float)

    _MODELS[rows_per_shard] = Item
    return Item


_MASK = (1 << 62) - 1


def spread(i: int) -> int:
    """A bijection of 62-bit integers that scatters consecutive ids (so ``x`` is distinct)."""
    z = (i * 0x9E3779B97F4A7C15) & _MASK  # odd multiplier: a bijection mod 2**62
    z ^= z >> 31  # xor with a right shift: a bijection too
    z = (z * 0xBF58476D1CE4E5B9) & _MASK
    return z ^ (z >> 29)


@dataclass
class Dataset:
    rows_per_shard: int
    model: type[Any]
    rows_on_shard: dict[str, int]

    @property
    def table(self) -> str:
        return str(self.model.__tablename__)

    @property
    def total(self) -> int:
        return 4 * self.rows_per_shard


def expected_rows_on_shard(total: int) -> dict[str, int]:
    counts = dict.fromkeys(SHARDS, 0)
    for i in range(1, total + 1):
        counts[STRATEGY.shard_for(i)] += 1  # type: ignore[index]
    return counts


# ---------------------------------------------------------------- databases


def row_counts(urls: dict[str, URL], table: str) -> dict[str, int | None]:
    counts: dict[str, int | None] = {}
    for name, url in urls.items():
        with psycopg.connect(libpq(url), autocommit=True) as connection:
            exists = connection.execute("SELECT to_regclass(%s)", (table,)).fetchone()
            if exists is None or exists[0] is None:
                counts[name] = None
                continue
            row = connection.execute(f"SELECT count(*) FROM {table}").fetchone()
            counts[name] = int(row[0]) if row else None
    return counts


def prepare(
    rows_per_shard: int,
    shard_map: ShardMap,
    one_engine: Engine,
    shard_urls: dict[str, URL],
    one_url: URL,
    reuse: bool,
) -> Dataset:
    """Create and fill the table of ``4 * rows_per_shard`` rows: shards and one database."""
    model = model_for(rows_per_shard)
    table = model.__tablename__
    total = 4 * rows_per_shard
    targets = {**shard_urls, "one": one_url}
    if reuse:
        expected = {**expected_rows_on_shard(total), "one": total}
        found = row_counts(targets, table)
        if found == expected:
            log(f"reusing {table}: {total:,} rows")
            return Dataset(rows_per_shard, model, {s: expected[s] for s in SHARDS})
    start = time.perf_counter()
    model.metadata.drop_all(one_engine)
    shard_map.drop_all(model.metadata)
    shard_map.create_all(model.metadata)
    model.metadata.create_all(one_engine)
    rows_on_shard = load(targets, table, total)
    for url in targets.values():
        with psycopg.connect(libpq(url), autocommit=True) as connection:
            connection.execute(f"VACUUM ANALYZE {table}")
    log(f"loaded {table}: {total:,} rows x 2 in {time.perf_counter() - start:.1f} s")
    return Dataset(rows_per_shard, model, rows_on_shard)


def load(targets: dict[str, URL], table: str, total: int) -> dict[str, int]:
    """COPY ids 1..total into their shards and every one into the unsharded database."""
    sql = f"COPY {table} (id, g, x, v) FROM STDIN"
    rng = random.Random(SEED)
    counts = dict.fromkeys(SHARDS, 0)
    shard_for = STRATEGY.shard_for
    with contextlib.ExitStack() as stack:
        copies = {}
        for name, url in targets.items():
            connection = stack.enter_context(psycopg.connect(libpq(url)))  # commits on exit
            cursor = stack.enter_context(connection.cursor())
            copies[name] = stack.enter_context(cursor.copy(sql))
        for first in range(1, total + 1, COPY_CHUNK):
            parts: dict[str, list[str]] = {shard: [] for shard in SHARDS}
            every: list[str] = []
            for i in range(first, min(first + COPY_CHUNK, total + 1)):
                line = f"{i}\t{rng.randrange(GROUPS)}\t{spread(i)}\t{rng.uniform(0, 1000)!r}\n"
                parts[shard_for(i)].append(line)  # type: ignore[index]
                every.append(line)
            for shard, lines in parts.items():
                copies[shard].write("".join(lines))
                counts[shard] += len(lines)
            copies["one"].write("".join(every))
    return counts


# ---------------------------------------------------------------- measuring


def log(message: str) -> None:
    print(f"bench_scatter: {message}", file=sys.stderr, flush=True)


class RawShards:
    """The physical limit: one pre-opened psycopg connection and one thread per shard."""

    def __init__(self, urls: dict[str, URL], *, autocommit: bool = True) -> None:
        self.connections = {
            shard: psycopg.connect(libpq(url), autocommit=autocommit) for shard, url in urls.items()
        }
        self.pool = ThreadPoolExecutor(max_workers=len(urls), thread_name_prefix="raw-shard")
        list(self.pool.map(lambda _: None, range(len(urls))))  # start the threads now

    def fetch_all(self, sql: str) -> list[Any]:
        """Run ``sql`` on every shard at once; every shard's rows in one list, unmerged."""

        def fetch(shard: str) -> list[Any]:
            with self.connections[shard].cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall()

        rows: list[Any] = []
        for future in [self.pool.submit(fetch, shard) for shard in self.connections]:
            rows.extend(future.result())
        return rows

    def close(self) -> None:
        self.pool.shutdown()
        for connection in self.connections.values():
            connection.close()


def literal_sql(statement: Any) -> str:
    """The SQL PostgreSQL receives for ``statement``, its parameters rendered inline."""
    compiled = statement.compile(
        dialect=postgresql.psycopg.dialect(), compile_kwargs={"literal_binds": True}
    )
    return str(compiled)


@contextlib.contextmanager
def watching(shard_map: ShardMap) -> Iterator[tuple[StatementLog, dict[str, list[int]]]]:
    """StatementLog, plus the ``rowcount`` of each shard's cursors right after execute.

    Read there because psycopg forgets it when the cursor closes, and only a
    client-side cursor knows it (a server-side one reports -1: unknown).
    """
    counts: dict[str, list[int]] = {shard: [] for shard in SHARDS}
    lock = threading.Lock()
    listeners = []
    for shard in SHARDS:

        def after(conn: Any, cursor: Any, *args: Any, shard: str = shard) -> None:
            with lock:
                counts[shard].append(getattr(cursor, "rowcount", -1))

        engine = shard_map.bind(shard)
        event.listen(engine, "after_cursor_execute", after)
        listeners.append((engine, after))
    try:
        with StatementLog(shard_map) as statements:
            yield statements, counts
    finally:
        for engine, after in listeners:
            event.remove(engine, "after_cursor_execute", after)


def rows_fetched(counts: dict[str, list[int]]) -> dict[str, int | None]:
    """Rows each shard returned, or None if a shard ran nothing or a count is unknown."""
    return {
        shard: sum(found) if found and all(n >= 0 for n in found) else None
        for shard, found in counts.items()
    }


def shard_sql(statements: StatementLog) -> dict[str, list[list[Any]]]:
    """Every statement each shard received: [[sql, parameters], ...] per shard."""
    sent: dict[str, list[list[Any]]] = {}
    for entry in statements.entries:
        sent.setdefault(str(entry.shard), []).append([entry.sql, entry.parameters])
    return sent


def interleaved(
    variants: dict[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Seconds of every run of every variant, interleaved; and each warm-up's result."""
    answers = {name: run() for name, run in variants.items()}  # warm-up, untimed
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            gc.collect()
            start = time.perf_counter()
            run()
            samples[name].append(time.perf_counter() - start)
    return samples, answers


def summarize_times(samples: dict[str, list[float]]) -> dict[str, Any]:
    medians = {name: statistics.median(values) for name, values in samples.items()}
    result: dict[str, Any] = {
        "unit": "ms per query; median of the interleaved repeats",
        "median_ms": {name: round(value * 1000, 2) for name, value in medians.items()},
        "runs_ms": {name: [round(v * 1000, 2) for v in values] for name, values in samples.items()},
    }
    result["ratios"] = time_ratios(medians)
    return result


def time_ratios(medians: dict[str, float]) -> dict[str, float]:
    """time(variant) / time(limit); and extension / sharded, sharded / plain (same unit)."""
    ratios: dict[str, float] = {}
    if "limit" in medians:
        for name, value in medians.items():
            if name != "limit":
                ratios[f"{name}_vs_limit"] = round(value / medians["limit"], 3)
    pairs = [
        ("extension", "sharded"),
        ("sharded", "plain"),
        ("sharded_orm", "plain_orm"),
        ("sharded", "limit_minimal_sql"),
    ]
    for name, other in pairs:
        if name in medians and other in medians:
            ratios[f"{name}_vs_{other}"] = round(medians[name] / medians[other], 3)
    return ratios


@dataclass
class Bench:
    """What every case needs: the shard map, the unsharded database, the raw connections."""

    options: argparse.Namespace
    shard_map: ShardMap
    one_engine: Engine
    shard_urls: dict[str, URL]
    one_url: URL
    raw: RawShards
    info: dict[str, Any]

    def sessions(self) -> dict[str, Session]:
        return {
            "sharded": self.shard_map.sessionmaker()(),
            "extension": horizontal_shard.ShardedSession(
                shards=self.shard_map.binds(),
                shard_chooser=lambda mapper, instance, clause=None: SHARDS[0],
                identity_chooser=lambda *args, **kw: SHARDS,
                execute_chooser=lambda context: SHARDS,
            ),
            "plain": Session(bind=self.one_engine),
        }

    def variants_of(self, names: tuple[str, ...], default: tuple[str, ...]) -> list[str]:
        """The variants of a case: those of ``--variants`` it has, else ``default``."""
        wanted = self.options.variants
        return [name for name in names if name in (default if wanted is None else wanted)]


def common_parameters(bench: Bench, dataset: Dataset, names: list[str]) -> dict[str, Any]:
    """The parameters every case reports: shards, rows, repeats, variants."""
    return {
        "shards": len(SHARDS),
        "rows_per_shard": dataset.rows_per_shard,
        "rows_total": dataset.total,
        "rows_on_shard": dataset.rows_on_shard,
        "repeats": bench.options.repeats,
        "variants": names,
    }


def run_query_case(
    bench: Bench,
    case: str,
    dataset: Dataset,
    statement: Select[Any],
    described: str,
    limit_sql: str,
    fetch: Callable[[Session, Select[Any]], list[Any]],
    check: Callable[[list[Any], list[Any]], bool],
) -> dict[str, Any]:
    """Time ``fetch(session, statement)`` on every session and the limit, side by side."""
    names = bench.variants_of(QUERY_VARIANTS, QUERY_VARIANTS)
    if not names:
        raise SystemExit(f"bench_scatter: --variants names no variant of {case}")
    sessions = bench.sessions()
    try:
        sharded = sessions["sharded"]
        route = sharded.explain(statement)  # type: ignore[attr-defined]
        # the reference answer, and what shardalchemy sends and fetches (untimed)
        reference = fetch(sessions["plain"], statement)
        sessions["plain"].expunge_all()
        with watching(bench.shard_map) as (statements, cursors):
            answer = fetch(sharded, statement)
        sharded.expunge_all()
        correct = check(answer, reference)

        def session_run(session: Session) -> Callable[[], Any]:
            def run() -> Any:
                rows = fetch(session, statement)
                session.expunge_all()
                return rows

            return run

        # the limit runs exactly what shardalchemy sends each shard (its plan's
        # per-shard statement); where that differs from the least SQL that could
        # answer (hidden sort columns cost server time), that one runs too
        plan_sql = literal_sql(route.plan.statement) if route.plan is not None else limit_sql
        runs: dict[str, Callable[[], Any]] = {}
        for name in names:
            if name == "limit":
                runs[name] = lambda: bench.raw.fetch_all(plan_sql)
                if " ".join(plan_sql.split()) != " ".join(limit_sql.split()):
                    runs["limit_minimal_sql"] = lambda: bench.raw.fetch_all(limit_sql)
            else:
                runs[name] = session_run(sessions[name])
        samples, _ = interleaved(runs, bench.options.repeats)
    finally:
        for session in sessions.values():
            session.close()
    result: dict[str, Any] = {
        "benchmark": "scatter_select",
        "case": case,
        "parameters": {
            "statement": described,
            "limit_sql": plan_sql,
            "minimal_sql": limit_sql,
            **common_parameters(bench, dataset, names),
        },
        **summarize_times(samples),
        "correct": correct,
        "route": {"shards": list(route.shards), "reason": route.reason},
        "sharded_sql": shard_sql(statements),
        "rows_fetched_per_shard": rows_fetched(cursors),
        "rows_returned": {"sharded": len(answer), "plain": len(reference)},
    }
    return result


# ---------------------------------------------------------------- the cases


def case_latency(bench: Bench, dataset: Dataset) -> dict[str, Any]:
    item = dataset.model
    # an uncorrelated scalar subquery is an InitPlan: pg_sleep runs once per query,
    # not once per row, so every shard spends SLEEP_S of server time
    sleep = select(func.pg_sleep(SLEEP_S)).scalar_subquery()
    statement = select(item.id, item.x).where(item.id <= LATENCY_MAX_ID, sleep.is_not(None))
    result = run_query_case(
        bench,
        "latency",
        dataset,
        statement,
        f"select(Item.id, Item.x).where(Item.id <= {LATENCY_MAX_ID}, "
        f"select(func.pg_sleep({SLEEP_S})).scalar_subquery().is_not(None))",
        literal_sql(statement),
        lambda session, statement: list(session.execute(statement).all()),
        lambda answer, reference: sorted(map(tuple, answer)) == sorted(map(tuple, reference)),
    )
    result["parameters"]["server_time_per_shard_s"] = SLEEP_S
    ratio = result["ratios"].get("sharded_vs_limit")
    limit = TARGETS["latency"]["max_sharded_vs_limit"]
    result["target"] = {
        "max_sharded_vs_limit": limit,
        "extension_vs_limit_about": float(len(SHARDS)),
        "met": None if ratio is None else bool(ratio <= limit and result["correct"]),
    }
    return result


def case_topk(bench: Bench, dataset: Dataset) -> dict[str, Any]:
    item = dataset.model
    statement = select(item).order_by(item.x).limit(LIMIT).offset(OFFSET)
    per_shard = select(item).order_by(item.x).limit(LIMIT + OFFSET)
    result = run_query_case(
        bench,
        "topk",
        dataset,
        statement,
        f"select(Item).order_by(Item.x).limit({LIMIT}).offset({OFFSET})",
        literal_sql(per_shard),
        lambda session, statement: list(session.scalars(statement).all()),
        lambda answer, reference: [o.id for o in answer] == [o.id for o in reference],
    )
    fetched = result["rows_fetched_per_shard"]
    most = TARGETS["topk"]["max_rows_fetched_per_shard"]
    known = [n for n in fetched.values() if n is not None]
    result["target"] = {
        "max_rows_fetched_per_shard": most,
        "met": (
            bool(result["correct"] and max(known) <= most) if len(known) == len(SHARDS) else None
        ),
    }
    return result


def case_aggregate(bench: Bench, dataset: Dataset) -> dict[str, Any]:
    item = dataset.model
    statement = select(
        item.g,
        func.count(),
        func.sum(item.v),
        func.min(item.v),
        func.max(item.v),
        func.avg(item.v),
    ).group_by(item.g)
    limit_sql = (
        "SELECT g, count(*), sum(v), min(v), max(v), avg(v), sum(v), count(v) "
        f"FROM {dataset.table} GROUP BY g"
    )
    result = run_query_case(
        bench,
        "aggregate",
        dataset,
        statement,
        "select(Item.g, func.count(), func.sum(Item.v), func.min(Item.v), "
        "func.max(Item.v), func.avg(Item.v)).group_by(Item.g)",
        limit_sql,
        lambda session, statement: list(session.execute(statement).all()),
        same_groups,
    )
    result["parameters"]["groups"] = GROUPS
    result["target"] = {"correct": True, "met": result["correct"]}
    return result


def same_groups(answer: list[Any], reference: list[Any]) -> bool:
    """One row per group, equal counts/min/max, sum and avg within AVG_REL_TOL relative."""
    found = {row[0]: row for row in answer}
    expected = {row[0]: row for row in reference}
    if len(found) != len(answer) or found.keys() != expected.keys():
        return False
    for group, row in expected.items():
        other = found[group]
        if int(other[1]) != int(row[1]) or float(other[3]) != row[3] or float(other[4]) != row[4]:
            return False
        for index in (2, 5):
            if not math.isclose(float(other[index]), float(row[index]), rel_tol=AVG_REL_TOL):
                return False
    return True


def case_memory(bench: Bench, dataset: Dataset) -> dict[str, Any]:
    names = bench.variants_of(MEMORY_VARIANTS, DEFAULT_MEMORY_VARIANTS)
    if not names:
        raise SystemExit("bench_scatter: --variants names no variant of memory")
    figures: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    # warm the servers' buffers and the OS page cache (each child warms its own connections)
    for url in [*bench.shard_urls.values(), bench.one_url]:
        with psycopg.connect(libpq(url), autocommit=True) as connection:
            connection.execute(f"SELECT count(x) FROM {dataset.table}").fetchall()
    for _ in range(bench.options.repeats):
        for name in names:
            figures[name].append(run_memory_child(bench.options, name, dataset.rows_per_shard))
    seconds = {name: [f["seconds"] for f in runs] for name, runs in figures.items()}
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    growth = {
        name: round(max(f["peak_rss_growth_kb"] for f in runs) / 1024, 1)
        for name, runs in figures.items()
    }
    most = TARGETS["memory"]["max_peak_rss_growth_mb"]
    sharded = [growth[name] for name in ("sharded", "sharded_orm") if name in growth]
    correct = all(f["rows"] == dataset.total for runs in figures.values() for f in runs)
    return {
        "benchmark": "scatter_select",
        "case": "memory",
        "parameters": {
            "statement": (
                f"select(Item.id, Item.x).execution_options(yield_per={YIELD_PER}); "
                f"orm: select(Item).execution_options(yield_per={YIELD_PER})"
            ),
            "limit_sql": literal_sql(select(dataset.model.id, dataset.model.x)),
            "limit_fetchmany": YIELD_PER,
            **common_parameters(bench, dataset, names),
        },
        "unit": "rows/s and s per full stream (median of repeats, each in a fresh process)",
        "rows_per_s": {name: round(dataset.total / value) for name, value in medians.items()},
        "median_s": {name: round(value, 3) for name, value in medians.items()},
        "runs_s": {name: [round(v, 3) for v in values] for name, values in seconds.items()},
        "ratios": time_ratios(medians),
        "peak_rss_growth_mb": growth,
        "peak_rss_growth_runs_mb": {
            name: [round(f["peak_rss_growth_kb"] / 1024, 1) for f in runs]
            for name, runs in figures.items()
        },
        "baseline_rss_mb": {
            name: round(statistics.median(f["baseline_kb"] for f in runs) / 1024, 1)
            for name, runs in figures.items()
        },
        "correct": correct,
        "target": {
            "max_peak_rss_growth_mb": most,
            "met": bool(correct and max(sharded) <= most) if sharded else None,
        },
    }


# ---------------------------------------------------------------- memory child


def run_memory_child(options: argparse.Namespace, variant: str, rows_per_shard: int) -> Any:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        f"--child-memory={variant}",
        f"--rows-per-shard={rows_per_shard}",
        f"--url={options.url}",
    ]
    completed = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def child_memory(options: argparse.Namespace) -> None:
    """One streamed scatter of every row, in this fresh process: its time and peak RSS growth."""
    variant = options.child_memory
    model = model_for(options.rows_per_shard)
    shard_urls, one_url = database_urls(make_url(options.url), DATABASE_PREFIX, SHARDS)
    closers: list[Callable[[], None]] = []
    stream: Callable[[Any], int]
    if variant == "limit":
        raw = RawShards(shard_urls, autocommit=False)  # server-side cursors need a transaction
        closers.append(raw.close)

        def stream(statement: Any) -> int:
            sql = literal_sql(statement)

            def read(shard: str) -> int:
                connection = raw.connections[shard]
                count = 0
                with connection.cursor(name="scatter_stream") as cursor:
                    cursor.execute(sql)
                    while rows := cursor.fetchmany(YIELD_PER):
                        count += len(rows)
                connection.commit()
                return count

            futures = [raw.pool.submit(read, shard) for shard in SHARDS]
            return sum(future.result() for future in futures)

    else:
        if variant.startswith("sharded"):
            shard_map = ShardMap.databases(
                {shard: render(url) for shard, url in shard_urls.items()}
            )
            session: Session = shard_map.sessionmaker()()
            closers.append(shard_map.dispose)
        else:
            engine = create_engine(one_url)
            session = Session(bind=engine)
            closers.append(engine.dispose)
        closers.insert(0, session.close)
        orm = variant.endswith("_orm")

        def stream(statement: Any) -> int:
            statement = statement.execution_options(yield_per=YIELD_PER)
            result = session.scalars(statement) if orm else session.execute(statement)
            return sum(1 for _ in result)

    entity: Any = model if variant.endswith("_orm") else None
    statement = select(entity) if entity is not None else select(model.id, model.x)
    # warm up connections, the dialect and the code paths with a small stream (small,
    # so that its own peak does not hide the full stream's growth)
    stream(statement.where(model.id <= WARMUP_MAX_ID))
    gc.collect()
    before = peak_rss_kb()
    start = time.perf_counter()
    rows = stream(statement)
    elapsed = time.perf_counter() - start
    growth = peak_rss_kb() - before
    for close in closers:
        close()
    print(
        json.dumps(
            {"rows": rows, "seconds": elapsed, "baseline_kb": before, "peak_rss_growth_kb": growth}
        )
    )


# ---------------------------------------------------------------- main


def machine_with_server(engine: Engine) -> dict[str, Any]:
    settings = ("shared_buffers", "work_mem", "max_parallel_workers_per_gather", "jit")
    with engine.connect() as connection:
        server = connection.exec_driver_sql("SHOW server_version").scalar_one()
        values = {
            name: connection.exec_driver_sql(f"SHOW {name}").scalar_one() for name in settings
        }
    return {
        **machine(),
        "psycopg": f"{psycopg.__version__} ({psycopg.pq.__impl__})",
        "postgresql": server,
        "postgresql_settings": values,
    }


CASE_FUNCTIONS: dict[str, Callable[[Bench, Dataset], dict[str, Any]]] = {
    "latency": case_latency,
    "topk": case_topk,
    "aggregate": case_aggregate,
    "memory": case_memory,
}


def summary(result: dict[str, Any]) -> str:
    if result["case"] == "memory":
        figures = ", ".join(
            f"{name} {rate:,} rows/s +{result['peak_rss_growth_mb'][name]} MB"
            for name, rate in result["rows_per_s"].items()
        )
    else:
        figures = ", ".join(f"{name} {ms} ms" for name, ms in result["median_ms"].items())
    ratios = ", ".join(f"{name} {value}" for name, value in result["ratios"].items())
    return (
        f"{result['case']}: {figures}; {ratios}; correct={result['correct']}; "
        f"target met={result['target']['met']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=[*CASES, "all"])
    parser.add_argument(
        "--rows-per-shard",
        type=int,
        help="rows per shard (4 shards); default 250000, and 500000 for memory",
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--url", default=DEFAULT_URL, help="base PostgreSQL URL (any database)")
    parser.add_argument(
        "--variants",
        help=(
            f"comma-separated subset of {','.join(QUERY_VARIANTS)} "
            f"(memory: {','.join(MEMORY_VARIANTS)}); default all but plain_orm"
        ),
    )
    parser.add_argument("--keep", action="store_true", help="leave the databases at the end")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse tables left by --keep if their counts match"
    )
    parser.add_argument("--child-memory", choices=MEMORY_VARIANTS, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.child_memory:
        child_memory(options)
        return 0
    if options.case is None:
        parser.error("--case is required")
    if options.variants is not None:
        options.variants = {name for name in options.variants.split(",") if name}
        unknown = options.variants - {*QUERY_VARIANTS, *MEMORY_VARIANTS}
        if unknown or not options.variants:
            parser.error(f"unknown --variants {sorted(unknown)}")
    cases = list(CASES) if options.case == "all" else [options.case]
    sizes = {case: options.rows_per_shard or DEFAULT_ROWS_PER_SHARD[case] for case in cases}

    base = make_url(options.url)
    shard_urls, one_url = database_urls(base, DATABASE_PREFIX, SHARDS)
    names = [str(url.database) for url in [*shard_urls.values(), one_url]]
    admin = create_engine(base, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    info = machine_with_server(admin)
    create_databases(admin, names, options.reuse)
    shard_map = ShardMap.databases({shard: render(url) for shard, url in shard_urls.items()})
    one_engine = create_engine(one_url)
    raw = RawShards(shard_urls)
    bench = Bench(options, shard_map, one_engine, shard_urls, one_url, raw, info)
    try:
        datasets: dict[int, Dataset] = {}
        for size in dict.fromkeys(sizes.values()):
            datasets[size] = prepare(
                size, shard_map, one_engine, shard_urls, one_url, options.reuse
            )
        for case in cases:
            result = CASE_FUNCTIONS[case](bench, datasets[sizes[case]])
            result["machine"] = info
            print(json.dumps(result, default=str), flush=True)
            log(summary(result))
    finally:
        raw.close()
        shard_map.dispose()
        one_engine.dispose()
        if not options.keep:
            drop_databases(admin, names)
        admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
