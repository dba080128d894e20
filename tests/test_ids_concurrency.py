"""No duplicate IDs across processes and threads, including when a process is killed mid-block.

4 processes x 4 threads draw IDs from all three generators at once (each process builds
its own generators, as separate application processes would), writing every ID to a file
as it goes.  The union must hold no duplicate.  In the kill test one process is killed
with SIGKILL while it hands out values from a leased block and holds a worker number;
the survivors continue, and a replacement process starts, which must wait for the dead
process's worker lease to expire and take that very number over (the layout has only 4).

Each thread draws 10,000 IDs (4 x 4 x 10,000 per generator) on SQLite (a file) and
PostgreSQL, 1,000 on MariaDB; a few seconds per test.  Processes are started with
``spawn``, so nothing is inherited from the test process.
"""

from __future__ import annotations

import array
import faulthandler
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from shardalchemy.ids import (
    HiLoSequence,
    IdLayout,
    ShardAwareIdGenerator,
    UUIDv7Generator,
    create_id_tables,
)

PROCESSES = 4
THREADS = 4
SHARDS = ("s0", "s1", "s2")
GENERATORS = ("hilo", "shard_aware", "uuid7")
SPAWN = multiprocessing.get_context("spawn")
TIMEOUT = 240
HANG_SECONDS = int(os.environ.get("SHARDALCHEMY_TEST_HANG_SECONDS", 180))


def build(kind: str, url: str, options: dict[str, Any]) -> Any:
    if kind == "hilo":
        return HiLoSequence("concurrency", url, **options)
    if kind == "shard_aware":
        layout = IdLayout(**options.pop("layout", {}))
        return ShardAwareIdGenerator(url, SHARDS, layout=layout, **options)
    return UUIDv7Generator()


def run_process(
    specs: list[tuple[str, str, dict[str, Any]]],
    label: str,
    role: str,
    out_dir: str,
    count: int,
) -> None:
    """One process: ``THREADS`` threads each draw ``count`` IDs from every generator.

    ``role``: ``normal`` runs straight through; ``survivor`` stops halfway until the
    parent says ``resume``, and keeps its worker number until the parent says ``release``
    (so a newcomer cannot get a released one); ``victim`` signals halfway and keeps going
    until killed; ``replacement`` signals halfway and runs through.  Signals are marker
    files: a process killed while holding a multiprocessing queue's or event's lock would
    leave it locked for everyone else.
    """
    # a process that hangs prints every thread's stack and exits, instead of stalling the test
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    generators = [(kind, build(kind, url, dict(options))) for kind, url, options in specs]
    at_halfway = threading.Barrier(THREADS)

    def work(thread: int) -> None:
        shard = SHARDS[thread % len(SHARDS)]
        files = {
            kind: open(  # noqa: SIM115 - closed below
                Path(out_dir) / f"{kind}-{shard}-{label}-t{thread}.bin", "wb", buffering=0
            )
            for kind, _ in generators
        }
        buffers: dict[str, list[Any]] = {kind: [] for kind, _ in generators}

        def flush() -> None:
            for kind, buffer in buffers.items():
                if buffer:
                    data = b"".join(buffer) if kind == "uuid7" else array.array("q", buffer)
                    files[kind].write(data)
                    buffer.clear()

        drawn = 0
        while drawn < count or role == "victim":
            for kind, generator in generators:
                if kind == "hilo":
                    buffers[kind].append(generator.next_id())
                elif kind == "shard_aware":
                    buffers[kind].append(generator.next_id(shard))
                else:
                    buffers[kind].append(generator.next_id().bytes)
            drawn += 1
            if drawn % 100 == 0:
                flush()
            if drawn == count // 2 and role != "normal":
                flush()
                if at_halfway.wait() == 0:
                    (Path(out_dir) / f"signal-halfway-{label}").touch()
                if role == "survivor":
                    wait_for_file(Path(out_dir) / "signal-resume")
        flush()
        for file in files.values():
            file.close()

    def guarded(thread: int) -> None:
        try:
            work(thread)
        except BaseException:
            traceback.print_exc()
            os._exit(3)  # a failed thread fails the process, visibly

    threads = [threading.Thread(target=guarded, args=(index,)) for index in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if role == "survivor":
        wait_for_file(Path(out_dir) / "signal-release")
    for _, generator in generators:
        if hasattr(generator, "close"):
            generator.close()


def wait_for_file(path: Path) -> None:
    while not path.exists():
        time.sleep(0.01)


def read_ids(out_dir: Path, kind: str) -> dict[str, list[Any]]:
    """Every ID written for ``kind``, by file name."""
    found: dict[str, list[Any]] = {}
    for path in sorted(out_dir.glob(f"{kind}-*.bin")):
        data = path.read_bytes()
        if kind == "uuid7":
            found[path.name] = [data[i : i + 16] for i in range(0, len(data) - 15, 16)]
        else:
            values = array.array("q")
            values.frombytes(data[: len(data) - len(data) % 8])
            found[path.name] = list(values)
    return found


def specs_for(url: URL, *, takeover: bool) -> list[tuple[str, str, dict[str, Any]]]:
    text = url.render_as_string(hide_password=False)
    shard_aware: dict[str, Any] = {"lease_timeout": 30.0}
    if takeover:  # 4 worker numbers for 4 live processes: a newcomer must take one over
        shard_aware.update(layout={"worker_bits": 2}, lease_seconds=2.0)
    return [
        ("hilo", text, {"block_size": 50}),
        ("shard_aware", text, shard_aware),
        ("uuid7", text, {}),
    ]


def check_no_duplicates(
    out_dir: Path, minimum_per_kind: int, layout: IdLayout
) -> dict[str, dict[str, list[Any]]]:
    everything = {}
    for kind in GENERATORS:
        by_file = read_ids(out_dir, kind)
        values = [value for ids in by_file.values() for value in ids]
        assert len(values) >= minimum_per_kind, (kind, len(values))
        duplicates = len(values) - len(set(values))
        assert duplicates == 0, f"{kind}: {duplicates} duplicate IDs among {len(values)}"
        everything[kind] = by_file
    decoder = ShardAwareIdGenerator("sqlite:///unused.db", SHARDS, layout=layout)
    for name, ids in everything["shard_aware"].items():
        shard = name.split("-")[1]
        assert all(decoder.shard_of(value) == shard for value in ids), name
    return everything


def start(specs: list[Any], label: str, role: str, out_dir: Path, count: int) -> Any:
    process = SPAWN.Process(
        target=run_process,
        args=(specs, label, role, str(out_dir), count),
        name=f"ids-{label}",
    )
    process.start()
    return process


def wait_halfway(out_dir: Path, label: str, processes: list[Any]) -> None:
    """Wait until process ``label`` is halfway; fail at once if a process died instead."""
    deadline = time.monotonic() + TIMEOUT
    while not (out_dir / f"signal-halfway-{label}").exists():
        ended = [p for p in processes if p.exitcode not in (None, 0, -signal.SIGKILL)]
        assert not ended, f"{[p.name for p in ended]} failed (see the captured stderr)"
        assert time.monotonic() < deadline, f"{label} did not reach halfway in time"
        time.sleep(0.02)


def finish(processes: list[Any]) -> None:
    try:
        for process in processes:
            process.join(TIMEOUT)
            assert process.exitcode is not None, f"{process.name} did not finish"
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()


def concurrency(url: URL, out_dir: Path, count: int) -> None:
    create_id_tables(url)
    specs = specs_for(url, takeover=False)
    processes = [start(specs, f"p{index}", "normal", out_dir, count) for index in range(PROCESSES)]
    finish(processes)
    assert [process.exitcode for process in processes] == [0] * PROCESSES
    check_no_duplicates(out_dir, PROCESSES * THREADS * count, IdLayout())


def kill_mid_block(url: URL, out_dir: Path, count: int) -> None:
    create_id_tables(url)
    specs = specs_for(url, takeover=True)
    roles = ["victim"] + ["survivor"] * (PROCESSES - 1)
    processes = [
        start(specs, f"p{index}", role, out_dir, count) for index, role in enumerate(roles)
    ]
    try:
        for index in range(PROCESSES):
            wait_halfway(out_dir, f"p{index}", processes)
        victim = processes[0]
        os.kill(victim.pid, signal.SIGKILL)  # while its threads hand out a leased block
        victim.join(TIMEOUT)
        assert victim.exitcode == -signal.SIGKILL
        processes.append(start(specs, "p9", "replacement", out_dir, count))
        (out_dir / "signal-resume").touch()  # the survivors continue
        wait_halfway(out_dir, "p9", processes)  # it has a worker number
    finally:
        (out_dir / "signal-resume").touch()
        (out_dir / "signal-release").touch()  # now the survivors may release theirs
        finish(processes)
    assert [process.exitcode for process in processes[1:]] == [0] * PROCESSES
    layout = IdLayout(worker_bits=2)
    everything = check_no_duplicates(out_dir, PROCESSES * THREADS * count, layout)
    decoder = ShardAwareIdGenerator("sqlite:///unused.db", SHARDS, layout=layout)
    workers: dict[str, set[int]] = defaultdict(set)
    for name, ids in everything["shard_aware"].items():
        workers[name.split("-")[2]].update(decoder.decode(value).worker for value in ids)
    assert all(len(numbers) == 1 for numbers in workers.values()), workers
    # the replacement could only get the killed process's number, after its lease expired
    assert workers["p9"] == workers["p0"]
    victim_last = max(v for n, ids in everything["shard_aware"].items() if "-p0-" in n for v in ids)
    replacement_first = min(
        v for n, ids in everything["shard_aware"].items() if "-p9-" in n for v in ids
    )
    assert decoder.decode(replacement_first).tick > decoder.decode(victim_last).tick
    victim_hilo = sum(len(ids) for n, ids in everything["hilo"].items() if "-p0-" in n)
    assert victim_hilo >= THREADS * count // 2


MakeDatabase = Callable[[str], URL]
# IDs per thread: the full size where it takes a few seconds; MariaDB, checked
# besides, at a tenth of it
COUNTS = {"sqlite": 10_000, "postgresql": 10_000, "mariadb": 1_000}


def test_no_duplicates_across_processes_and_threads(
    make_database: MakeDatabase, backend: str, tmp_path: Path
) -> None:
    concurrency(make_database(backend), tmp_path, count=COUNTS[backend])


def test_no_duplicates_when_a_process_is_killed_mid_block(
    make_database: MakeDatabase, backend: str, tmp_path: Path
) -> None:
    kill_mid_block(make_database(backend), tmp_path, count=COUNTS[backend])
