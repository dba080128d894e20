"""Bulk INSERT rows/s into PostgreSQL shards: ShardedSession vs a plain Session vs raw psycopg.

Usage::

    .venv/bin/python bench/bench_bulk.py [--rows 1000000] [--repeats 3] [--shards 4]
        [--url postgresql+psycopg://postgres@127.0.0.1/postgres]
        [--variants sharded,sharded_generator,plain,raw] [--concurrency 1]

It creates the databases ``shardalchemy_bulk_s0`` .. ``shardalchemy_bulk_s{N-1}``
(one per shard) and ``shardalchemy_bulk_one`` (the unsharded reference) on the
server of ``--url`` (dropping them first with ``DROP DATABASE IF EXISTS ... WITH
(FORCE)``), and drops them again at the end.  The table has five columns (id
BIGINT primary key, name, city, amount, created); the model is sharded with
``ShardKey("id", Hash(buckets=1024, shards=[...]))``.  The ``--rows`` row dicts
are built once before any timing, and every variant inserts exactly those rows
(ids 1..rows):

``sharded``
    ``session.execute(insert(Model), rows)`` then ``session.commit()`` on a
    declarative :class:`shardalchemy.ShardedSession` from
    ``ShardMap.databases({...}).sessionmaker()``; shardalchemy routes every row
    to its shard.
``sharded_generator``
    the same, but ``rows`` is a generator that builds each dict on demand, so
    its time includes building the dicts.  It runs in a fresh child process
    (which never holds the list of rows) and reports the growth of its peak RSS
    across the insert (``VmHWM``: the child's own peak, which ``ru_maxrss`` is
    not after fork + exec).  It should stay a few MB whatever ``--rows`` is,
    i.e. shardalchemy consumes the iterator in batches instead of
    materialising a million dicts; ``rows_list_rss_mb`` is, for comparison,
    what holding the list of rows costs the parent process.  The child's rows/s
    and peak RSS growth are ``rows_per_s.sharded_generator`` and
    ``memory.generator_peak_rss_growth_mb`` (the largest of the repeats).
``plain``
    ``session.execute(insert(Model), rows)`` then ``commit()`` on a plain
    SQLAlchemy ``Session`` bound to the one unsharded database.
``raw``
    the physical limit: rows pre-split per shard (as tuples, before timing),
    one psycopg connection per shard opened before timing, the shards written
    concurrently from one thread each with ``cursor.executemany`` followed by
    ``commit()``; the time runs from starting the writes to the last commit.

The table is truncated and a ``CHECKPOINT`` issued before every timed run (not
timed), and after every run the row count and ``sum(id)`` of every shard is
checked (not timed) against what the Hash strategy assigns; a mismatch aborts
the benchmark.  Each variant runs ``--repeats`` times, interleaved, after one
small warm-up run each; the medians are reported.

Prints one JSON line: rows/s of every variant (``rows_per_s``), their min/max
(``spread``), and the ratios

``sharded_vs_plain``
    sharded rows/s / plain-Session rows/s (target >= 0.8): what sharding costs,
    or gains by writing several databases, against the same bulk INSERT
    through SQLAlchemy into one database;
``sharded_vs_raw``
    sharded rows/s / raw rows/s (target >= 0.6): how close shardalchemy comes to
    the hardware and driver limit of writing every shard at once.

``target.met`` says whether both targets were reached.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import sqlalchemy as sa
from _databases import create_databases, database_urls, drop_databases, libpq, render
from _machine import machine, peak_rss_kb
from sqlalchemy import BigInteger, Float, Integer, String, create_engine, insert
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from shardalchemy import Hash, ShardKey, ShardMap

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1/postgres"
DATABASE_PREFIX = "shardalchemy_bulk"
TABLE = "bulk_rows"
TARGETS = {"sharded_vs_plain": 0.8, "sharded_vs_raw": 0.6}
VARIANTS = ("sharded", "sharded_generator", "plain", "raw")
WARMUP_ROWS = 2_000
CITIES = ("Oslo", "Lisbon", "Kyoto", "Quito", "Accra", "Perth", "Tromsø", "Lima")
COLUMNS = ("id", "name", "city", "amount", "created")


def make_model(shards: list[str]) -> tuple[type[Any], Hash]:
    strategy = Hash(buckets=1024, shards=shards)

    class Base(DeclarativeBase):
        pass

    class BulkRow(Base):
        __tablename__ = TABLE
        __sharding__ = ShardKey("id", strategy)

        id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
        name: Mapped[str] = mapped_column(String(50))
        city: Mapped[str] = mapped_column(String(50))
        amount: Mapped[int] = mapped_column(Integer)
        created: Mapped[float] = mapped_column(Float)

    return BulkRow, strategy


def make_row(i: int) -> dict[str, Any]:
    """Row ``i``: deterministic, so the list and the generator carry the same data."""
    return {
        "id": i,
        "name": f"user-{i:08d}",
        "city": CITIES[i % len(CITIES)],
        "amount": (i * 7919) % 100_000,
        "created": 1_700_000_000.0 + i / 1000,
    }


def generate_rows(first: int, last: int) -> Iterator[dict[str, Any]]:
    for i in range(first, last + 1):
        yield make_row(i)


def shard_names(count: int) -> list[str]:
    return [f"s{i}" for i in range(count)]


def machine_with_server(engine: Engine) -> dict[str, Any]:
    with engine.connect() as connection:
        server = connection.exec_driver_sql("SHOW server_version").scalar_one()
    return {
        **machine(),
        "psycopg": f"{psycopg.__version__} ({psycopg.pq.__impl__})",
        "postgresql": server,
    }


# ---------------------------------------------------------------- child process


def child_generator(options: argparse.Namespace) -> None:
    """The sharded_generator variant, in a process that never holds the list of rows."""
    shards = shard_names(options.shards)
    model, _ = make_model(shards)
    urls, _ = database_urls(make_url(options.url), DATABASE_PREFIX, shards)
    shard_map = ShardMap.databases({shard: render(url) for shard, url in urls.items()})
    factory = shard_map.sessionmaker()
    statement = insert(model)
    write_options = {"bulk_concurrency": options.concurrency}
    # warm up connections and caches with ids outside 1..rows, then clear them
    first = options.rows + 1
    with factory() as session:
        session.execute(
            statement,
            generate_rows(first, first + WARMUP_ROWS - 1),
            execution_options=write_options,
        )
        session.commit()
    truncate({shard: shard_map.bind(shard) for shard in shards})
    gc.collect()
    before = peak_rss_kb()
    start = time.perf_counter()
    with factory() as session:
        session.execute(statement, generate_rows(1, options.rows), execution_options=write_options)
        session.commit()
    elapsed = time.perf_counter() - start
    growth = peak_rss_kb() - before
    shard_map.dispose()
    print(json.dumps({"rows_per_s": options.rows / elapsed, "peak_rss_growth_kb": growth}))


# ---------------------------------------------------------------- setup and checks


def truncate(engines: dict[str, Engine]) -> None:
    for engine in engines.values():
        with engine.begin() as connection:
            connection.exec_driver_sql(f"TRUNCATE {TABLE}")


def checkpoint(admin: Engine) -> None:
    with admin.connect() as connection:
        connection.exec_driver_sql("CHECKPOINT")


def contents(engines: dict[str, Engine]) -> dict[str, tuple[int, int]]:
    """(count, sum of ids) of the table in every database."""
    found = {}
    for name, engine in engines.items():
        with engine.connect() as connection:
            count, total = connection.exec_driver_sql(
                f"SELECT count(*), coalesce(sum(id), 0) FROM {TABLE}"
            ).one()
        found[name] = (int(count), int(total))
    return found


def verify(variant: str, engines: dict[str, Engine], expected: dict[str, tuple[int, int]]) -> None:
    found = contents(engines)
    if found != expected:
        raise SystemExit(
            f"bench_bulk: {variant} left wrong rows (count, sum of ids) per database: "
            f"expected {expected}, found {found}"
        )


# ---------------------------------------------------------------- variants


def bulk_session(
    factory: Callable[[], Session], model: type[Any], options: dict[str, Any] | None = None
) -> Callable[[Any], None]:
    statement = insert(model)

    def run(rows: Any) -> None:
        with factory() as session:
            session.execute(statement, rows, execution_options=options or {})
            session.commit()

    return run


def raw_limit(
    urls: dict[str, URL], sql: str
) -> tuple[Callable[[dict[str, list[tuple[Any, ...]]]], None], Callable[[], None]]:
    """Concurrent executemany + commit, one pre-opened connection and thread per shard."""
    connections = {shard: psycopg.connect(libpq(url)) for shard, url in urls.items()}

    def write(shard: str, rows: list[tuple[Any, ...]], errors: list[BaseException]) -> None:
        try:
            connection = connections[shard]
            with connection.cursor() as cursor:
                cursor.executemany(sql, rows)
            connection.commit()
        except BaseException as error:  # re-raised in the main thread
            connections[shard].rollback()
            errors.append(error)

    def run(split: dict[str, list[tuple[Any, ...]]]) -> None:
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=write, args=(shard, rows, errors))
            for shard, rows in split.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    def close() -> None:
        for connection in connections.values():
            connection.close()

    return run, close


def run_child(options: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child-generator",
        f"--rows={options.rows}",
        f"--shards={options.shards}",
        f"--url={options.url}",
        f"--concurrency={options.concurrency}",
    ]
    completed = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def expected_contents(
    rows: int, first: int, shards: list[str], strategy: Hash
) -> dict[str, tuple[int, int]]:
    expected = {shard: (0, 0) for shard in shards}
    for i in range(first, first + rows):
        shard = strategy.shard_for(i)
        count, total = expected[shard]
        expected[shard] = (count + 1, total + i)
    return expected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--url", default=DEFAULT_URL, help="base PostgreSQL URL (any database)")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated subset of {','.join(VARIANTS)}",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="shardalchemy's bulk_concurrency: shards written at once (default 1)",
    )
    parser.add_argument("--child-generator", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.child_generator:
        child_generator(options)
        return 0
    variants = [name for name in options.variants.split(",") if name]
    unknown = set(variants) - set(VARIANTS)
    if unknown or not variants:
        parser.error(f"--variants must be a subset of {','.join(VARIANTS)}")

    shards = shard_names(options.shards)
    model, strategy = make_model(shards)
    base = make_url(options.url)
    shard_urls, one_url = database_urls(base, DATABASE_PREFIX, shards)
    names = [url.database for url in [*shard_urls.values(), one_url]]
    admin = create_engine(base, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    info = machine_with_server(admin)
    create_databases(admin, names)  # type: ignore[arg-type]
    try:
        result = measure(options, variants, shards, model, strategy, shard_urls, one_url, admin)
    finally:
        drop_databases(admin, names)  # type: ignore[arg-type]
        admin.dispose()
    result["machine"] = info
    print(json.dumps(result))
    return 0


def measure(
    options: argparse.Namespace,
    variants: list[str],
    shards: list[str],
    model: type[Any],
    strategy: Hash,
    shard_urls: dict[str, URL],
    one_url: URL,
    admin: Engine,
) -> dict[str, Any]:
    shard_map = ShardMap.databases({shard: render(url) for shard, url in shard_urls.items()})
    shard_map.create_all(model.metadata)
    shard_engines = {shard: shard_map.bind(shard) for shard in shards}
    one_engine = create_engine(one_url)
    model.metadata.create_all(one_engine)
    one_engines = {"one": one_engine}

    # the rows, built before any timing; the RSS they take is the yardstick of the generator
    gc.collect()
    rss_before = peak_rss_kb()
    start = time.perf_counter()
    rows = [make_row(i) for i in range(1, options.rows + 1)]
    row_build_s = time.perf_counter() - start
    rows_list_rss_kb = peak_rss_kb() - rss_before
    split: dict[str, list[tuple[Any, ...]]] = {shard: [] for shard in shards}
    for row in rows:
        split[strategy.shard_for(row["id"])].append(tuple(row[c] for c in COLUMNS))
    expected_sharded = expected_contents(options.rows, 1, shards, strategy)
    expected_one = {"one": (options.rows, options.rows * (options.rows + 1) // 2)}

    sql = f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
    raw_run, raw_close = raw_limit(shard_urls, sql)
    sharded_run = bulk_session(
        shard_map.sessionmaker(), model, {"bulk_concurrency": options.concurrency}
    )
    plain_run = bulk_session(lambda: Session(bind=one_engine), model)
    child: dict[str, Any] = {}

    def timed(run: Callable[[Any], None], data: Any) -> float:
        start = time.perf_counter()
        run(data)
        return options.rows / (time.perf_counter() - start)

    def run_generator() -> float:
        figures = run_child(options)
        child.setdefault("growth_kb", []).append(figures["peak_rss_growth_kb"])
        return float(figures["rows_per_s"])

    # name -> (timed run, databases it writes, expected contents, warm-up)
    cases: dict[str, tuple[Callable[[], float], dict[str, Engine], Any, Callable[[], None]]] = {
        "sharded": (
            lambda: timed(sharded_run, rows),
            shard_engines,
            expected_sharded,
            lambda: sharded_run(rows[:WARMUP_ROWS]),
        ),
        "sharded_generator": (run_generator, shard_engines, expected_sharded, lambda: None),
        "plain": (
            lambda: timed(plain_run, rows),
            one_engines,
            expected_one,
            lambda: plain_run(rows[:WARMUP_ROWS]),
        ),
        "raw": (
            lambda: timed(raw_run, split),
            shard_engines,
            expected_sharded,
            lambda: raw_run({shard: part[:WARMUP_ROWS] for shard, part in split.items()}),
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for name in variants:  # warm up connections and statement caches
            cases[name][3]()
            truncate(cases[name][1])
        for _ in range(options.repeats):  # interleaved, so drift hits every variant alike
            for name in variants:
                run, engines, expected, _ = cases[name]
                truncate(engines)
                checkpoint(admin)
                gc.collect()
                samples[name].append(run())
                verify(name, engines, expected)
        truncate(shard_engines)
        truncate(one_engines)
    finally:
        raw_close()
        shard_map.dispose()
        one_engine.dispose()

    medians = {name: statistics.median(values) for name, values in samples.items()}
    result: dict[str, Any] = {
        "benchmark": "bulk_insert",
        "unit": "rows/s, median of repeats, timing includes commit",
        "rows": options.rows,
        "shards": options.shards,
        "bulk_concurrency": options.concurrency,
        "columns": len(COLUMNS),
        "repeats": options.repeats,
        "rows_per_s": {name: round(value) for name, value in medians.items()},
        "spread": {
            name: [round(min(values)), round(max(values))] for name, values in samples.items()
        },
    }
    ratios = {}
    if "sharded" in medians and "plain" in medians:
        ratios["sharded_vs_plain"] = round(medians["sharded"] / medians["plain"], 3)
    if "sharded" in medians and "raw" in medians:
        ratios["sharded_vs_raw"] = round(medians["sharded"] / medians["raw"], 3)
    if "sharded_generator" in medians and "plain" in medians:
        ratios["sharded_generator_vs_plain"] = round(
            medians["sharded_generator"] / medians["plain"], 3
        )
    result["ratios"] = ratios
    result["target"] = {
        **{f"min_{name}": value for name, value in TARGETS.items()},
        "met": (
            all(ratios[name] >= value for name, value in TARGETS.items())
            if all(name in ratios for name in TARGETS)
            else None
        ),
    }
    result["memory"] = {
        "rows_list_rss_mb": round(rows_list_rss_kb / 1024, 1),
        "row_build_s": round(row_build_s, 3),
    }
    if child:
        result["memory"]["generator_peak_rss_growth_mb"] = round(max(child["growth_kb"]) / 1024, 1)
    return result


if __name__ == "__main__":
    sys.exit(main())
