"""Benchmark: IDs per second of each ID generator vs a database sequence fetched per row.

One command, one JSON line on stdout::

    .venv/bin/python bench/bench_ids.py [--runs 5] [--seconds 1.0] [--backends sqlite,postgresql]

For each backend, in the same run and the same process, it measures (single thread):

``per_row_sequence``
    the physical baseline, one database round trip per ID: PostgreSQL
    ``SELECT nextval(...)`` on one autocommit connection (no BEGIN/COMMIT, the
    cheapest per-row fetch there is); SQLite a counter ``UPDATE ... RETURNING``
    in its own transaction per ID, on a file.
``hilo``
    :class:`~shardalchemy.ids.HiLoSequence` (block size 1000), leases included.
``shard_aware``
    :class:`~shardalchemy.ids.ShardAwareIdGenerator` (default layout), worker lease included.
``uuid7``
    :class:`~shardalchemy.ids.UUIDv7Generator` (no database; measured per backend for symmetry).

Each figure is the median of ``--runs`` runs of about ``--seconds`` each; ``ratios`` divide
each generator's median by the per-row median.  The target of the issue is a ratio of at
least 50 for ``hilo`` and ``shard_aware``.  PostgreSQL comes from
``SHARDALCHEMY_BENCH_POSTGRESQL_URL`` (else ``SHARDALCHEMY_TEST_POSTGRESQL_URL``, else the
local server); the benchmark creates a scratch database there and drops it afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from _machine import machine
from sqlalchemy.engine import URL, make_url

from shardalchemy.ids import (
    HiLoSequence,
    ShardAwareIdGenerator,
    UUIDv7Generator,
    create_id_tables,
)

TARGET_RATIO = 50
DEFAULT_POSTGRESQL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def measure(call: Callable[[], Any], seconds: float, chunk: int) -> float:
    """Calls per second of ``call``, run in chunks until ``seconds`` have passed."""
    calls = 0
    start = time.perf_counter()
    while True:
        for _ in range(chunk):
            call()
        calls += chunk
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls / elapsed


@contextmanager
def sqlite_database() -> Iterator[tuple[URL, Callable[[], Callable[[], Any]]]]:
    with tempfile.TemporaryDirectory(prefix="bench_ids_") as directory:
        url = make_url(f"sqlite:///{directory}/bench.db")
        engine = sa.create_engine(url)
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE counter (id INTEGER PRIMARY KEY, value INT)")
            connection.exec_driver_sql("INSERT INTO counter VALUES (1, 0)")
        statement = sa.text("UPDATE counter SET value = value + 1 WHERE id = 1 RETURNING value")

        def per_row() -> Callable[[], Any]:
            def fetch() -> Any:
                with engine.begin() as connection:
                    return connection.execute(statement).scalar_one()

            return fetch

        try:
            yield url, per_row
        finally:
            engine.dispose()


@contextmanager
def postgresql_database() -> Iterator[tuple[URL, Callable[[], Callable[[], Any]]]]:
    server = make_url(
        os.environ.get("SHARDALCHEMY_BENCH_POSTGRESQL_URL")
        or os.environ.get("SHARDALCHEMY_TEST_POSTGRESQL_URL")
        or DEFAULT_POSTGRESQL
    )
    name = f"shardalchemy_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = server.set(database=name)
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    connection = engine.connect()
    connection.exec_driver_sql("CREATE SEQUENCE bench_sequence")
    statement = sa.text("SELECT nextval('bench_sequence')")

    def per_row() -> Callable[[], Any]:
        return lambda: connection.execute(statement).scalar_one()

    try:
        yield url, per_row
    finally:
        connection.close()
        engine.dispose()
        with admin.connect() as admin_connection:
            admin_connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


BACKENDS = {"sqlite": sqlite_database, "postgresql": postgresql_database}


def bench_backend(backend: str, runs: int, seconds: float) -> dict[str, Any]:
    with BACKENDS[backend]() as (url, per_row):
        create_id_tables(url)
        hilo = HiLoSequence("bench", url, block_size=1000)
        shard_aware = ShardAwareIdGenerator(url, ["s0", "s1", "s2", "s3"])
        uuids = UUIDv7Generator()
        shard_aware.start()
        hilo.next_id()
        cases: dict[str, tuple[Callable[[], Any], int]] = {
            "per_row_sequence": (per_row(), 10),
            "hilo": (hilo.next_id, 1000),
            "shard_aware": (lambda: shard_aware.next_id("s1"), 1000),
            "uuid7": (uuids.next_id, 1000),
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        try:
            for _ in range(runs):  # interleaved, so drift hits every case alike
                for name, (call, chunk) in cases.items():
                    samples[name].append(measure(call, seconds, chunk))
        finally:
            hilo.close()
            shard_aware.close()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    baseline = medians["per_row_sequence"]
    return {
        "ids_per_second": {name: round(value) for name, value in medians.items()},
        "ratios": {
            name: round(value / baseline, 1)
            for name, value in medians.items()
            if name != "per_row_sequence"
        },
        "spread": {  # min/max of the runs, to judge the noise
            name: [round(min(values)), round(max(values))] for name, values in samples.items()
        },
        "per_row_method": (
            "SELECT nextval() per ID, one autocommit connection"
            if backend == "postgresql"
            else "UPDATE counter ... RETURNING per ID, one transaction each, file database"
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--backends", default="sqlite,postgresql")
    options = parser.parse_args(argv)
    result: dict[str, Any] = {
        "benchmark": "ids",
        "unit": "ids/s, single thread, median of runs",
        "runs": options.runs,
        "machine": machine(),
        "target": {"min_ratio": TARGET_RATIO, "generators": ["hilo", "shard_aware"]},
    }
    met = True
    for backend in options.backends.split(","):
        try:
            figures = bench_backend(backend, options.runs, options.seconds)
        except Exception as error:  # a server that is down: say so, measure the rest
            result[backend] = {"skipped": f"{type(error).__name__}: {error}".splitlines()[0]}
            met = False
            continue
        result[backend] = figures
        met = met and all(
            figures["ratios"][name] >= TARGET_RATIO for name in ("hilo", "shard_aware")
        )
    result["target"]["met"] = met
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
