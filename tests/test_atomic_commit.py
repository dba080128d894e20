"""Atomic commits across shards (the ``database`` placement, PostgreSQL): all or nothing.

Proved by injecting the faults: the coordinator process killed (SIGKILL) at each step of
the protocol, a participant's backend terminated, concurrent transfers with kills; after
recovery every transaction is all or nothing, every acknowledged commit is committed and
no prepared transaction is left behind.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _extra_postgres import ExtraPostgres, unavailable
from atomic_commit_world import Account, Base, Entry, shard_map_of, transfer
from sqlalchemy import create_engine, select, text

import shardalchemy
from shardalchemy import (
    CommitError,
    ConfigurationError,
    ShardedSession,
    TwoPhaseUnavailableError,
    transactions,
)
from shardalchemy.transactions import Recoverer, failpoints, recover

HARNESS = Path(__file__).parent / "atomic_commit_world.py"


@pytest.fixture
def urls(make_database: Any) -> dict[str, str]:
    return {
        shard: make_database("postgresql").render_as_string(hide_password=False)
        for shard in ("a", "b")
    }


@pytest.fixture
def shard_map(urls: dict[str, str]) -> Any:
    shard_map = shard_map_of(urls)
    shard_map.create_all(Base.metadata)
    with shard_map.sessionmaker()() as session:
        for shard in urls:
            session.add_all([Account(shard=shard, id=i, balance=100) for i in (1, 2)])
        session.commit()
    yield shard_map
    shard_map.dispose()


def _count(url: str, sql: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text(sql)).scalar() or 0)
    finally:
        engine.dispose()


def entries(urls: dict[str, str], transaction: int) -> dict[str, int]:
    return {
        s: _count(u, f"SELECT count(*) FROM entries WHERE id = {transaction}")
        for s, u in urls.items()
    }


def total(urls: dict[str, str]) -> int:
    return sum(_count(url, "SELECT sum(balance) FROM accounts") for url in urls.values())


def prepared_left(urls: dict[str, str]) -> int:
    return sum(
        _count(url, "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()")
        for url in urls.values()
    )


def run_harness(urls: dict[str, str], transaction: int, step: str | None) -> bool:
    env = {**os.environ, "SHARDALCHEMY_FAILPOINT": step or ""}
    done = subprocess.run(
        [sys.executable, str(HARNESS), urls["a"], urls["b"], str(transaction)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if step is None:
        assert done.returncode == 0, done.stderr
    else:
        assert done.returncode in (0, -9), done.stderr
    return "COMMITTED" in done.stdout


@pytest.mark.parametrize("step", [None, *failpoints.STEPS])
def test_coordinator_killed_at_each_step_is_all_or_nothing(
    shard_map: Any, urls: dict[str, str], step: str | None
) -> None:
    acknowledged = run_harness(urls, 7, step)
    assert acknowledged == (step is None)  # killed before returning at every step
    # until the server has seen the dead coordinator go, its lock says "alive": a recoverer
    # leaves the transaction alone then, and looks again later
    assert _until(lambda: prepared_left(urls) == 0, 10.0, then=lambda: recover(shard_map.binds()))
    found = entries(urls, 7)
    assert set(found.values()) in ({0}, {1}), found  # all or nothing
    # decided (the decider's commit) means committed, before it means rolled back
    decided = step in (None, "after_decision", "after_commit_prepared")
    assert found == ({"a": 1, "b": 1} if decided else {"a": 0, "b": 0})
    assert total(urls) == 400
    assert prepared_left(urls) == 0
    assert recover(shard_map.binds()) == []


def test_recovery_leaves_a_live_coordinators_transaction_alone(
    shard_map: Any, urls: dict[str, str]
) -> None:
    seen: list[Any] = []

    def recover_meanwhile(step: str, participants: Any) -> None:
        if step == "after_prepare":
            seen.extend(recover(shard_map.binds()))

    failpoints.set_hook(recover_meanwhile)
    try:
        with shard_map.sessionmaker()() as session:
            session.add_all([Entry(shard="a", id=8), Entry(shard="b", id=8)])
            session.commit()
    finally:
        failpoints.set_hook(None)
    assert [entry.outcome for entry in seen] == ["coordinator alive"]
    assert entries(urls, 8) == {"a": 1, "b": 1}
    assert prepared_left(urls) == 0


@pytest.mark.parametrize("step", ["before_prepare", "after_prepare", "before_decision_commit"])
def test_participant_backend_terminated(shard_map: Any, urls: dict[str, str], step: str) -> None:
    def terminate(at: str, participants: Any) -> None:
        if at == step:
            for participant in participants:
                pid = participant.driver.info.backend_pid
                engine = create_engine(urls[participant.shard])
                with engine.connect() as connection:
                    connection.execute(text(f"SELECT pg_terminate_backend({pid})"))
                engine.dispose()

    failpoints.set_hook(terminate)
    try:
        with shard_map.sessionmaker()() as session:
            session.add_all([Entry(shard="a", id=9), Entry(shard="b", id=9)])
            transfer(session, "a", "b", 1, 10)
            with pytest.raises(CommitError) as raised:
                session.commit()
            session.rollback()
    finally:
        failpoints.set_hook(None)
    error = raised.value
    assert set(error.outcomes) == {"a", "b"}
    assert error.transaction_id is not None and error.transaction_id in str(error)
    recover(shard_map.binds())
    assert set(entries(urls, 9).values()) == {0}
    assert total(urls) == 400 and prepared_left(urls) == 0


def test_deferred_constraint_at_prepare_names_its_cause(
    shard_map: Any, urls: dict[str, str]
) -> None:
    with shard_map.sessionmaker()() as session:
        session.add_all([Entry(shard="a", id=10), Entry(shard="b", id=10, parent=999)])
        with pytest.raises(CommitError) as raised:
            session.commit()
        session.rollback()
    assert "foreign key" in str(raised.value)
    assert raised.value.outcomes == {"a": "rolled back", "b": "rolled back"}
    assert entries(urls, 10) == {"a": 0, "b": 0} and prepared_left(urls) == 0


def test_single_shard_and_read_only_participants_commit_in_one_phase(
    shard_map: Any, urls: dict[str, str]
) -> None:
    with shard_map.sessionmaker()() as session:
        session.scalars(select(Account).where(Account.shard == "b")).all()
        session.add(Entry(shard="a", id=11))
        session.commit()
    assert entries(urls, 11) == {"a": 1, "b": 0}
    # no decision recorded: nothing was prepared
    assert _count(
        urls["a"], "SELECT count(*) FROM pg_tables WHERE tablename = 'shardalchemy_decisions'"
    ) in (0, 1)
    decisions_before = _count(urls["a"], "SELECT count(*) FROM shardalchemy_decisions")
    with shard_map.sessionmaker()() as session:
        session.add(Entry(shard="a", id=12))
        session.scalars(select(Account).where(Account.shard == "b")).all()
        session.commit()
    assert _count(urls["a"], "SELECT count(*) FROM shardalchemy_decisions") == decisions_before


def test_best_effort_mode_and_bad_mode(shard_map: Any, urls: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        ShardedSession(shard_map=shard_map, commit="sometimes")
    with shard_map.sessionmaker(commit="best_effort")() as session:
        session.add_all([Entry(shard="a", id=13), Entry(shard="b", id=13)])
        session.commit()
    assert entries(urls, 13) == {"a": 1, "b": 1}
    assert issubclass(shardalchemy.TwoPhaseUnavailableError, shardalchemy.CommitError)


def test_a_server_that_cannot_prepare_says_how_to_enable_it() -> None:
    if unavailable():
        pytest.skip(unavailable())
    server = ExtraPostgres()
    try:
        with (server.data / "postgresql.conf").open("a") as conf:
            conf.write("max_prepared_transactions = '0'\n")
        server.start()
        admin = create_engine(server.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            for name in ("pa", "pb"):
                connection.execute(text(f"CREATE DATABASE {name}"))
        admin.dispose()
        urls = {s: server.url.set(database=f"p{s}").render_as_string(False) for s in "ab"}
        shard_map = shard_map_of(urls)
        shard_map.create_all(Base.metadata)
        with shard_map.sessionmaker()() as session:
            session.add_all([Entry(shard="a", id=1), Entry(shard="b", id=1)])
            with pytest.raises(TwoPhaseUnavailableError) as raised:
                session.commit()
            session.rollback()
        message = str(raised.value)
        assert "max_prepared_transactions = 64" in message and "best_effort" in message
        assert entries(urls, 1) == {"a": 0, "b": 0}
        with shard_map.sessionmaker(commit="best_effort")() as session:
            session.add_all([Entry(shard="a", id=2), Entry(shard="b", id=2)])
            session.commit()
        assert entries(urls, 2) == {"a": 1, "b": 1}
        shard_map.dispose()
    finally:
        server.close()


def _bank(shard_map: Any, urls: dict[str, str], transfers: int, seed: int) -> None:
    rng = random.Random(seed)
    acknowledged: list[int] = []

    failures: list[BaseException] = []
    steps = [rng.choice([None, None, *failpoints.STEPS]) for _ in range(transfers)]

    def one(transaction: int, step: str | None) -> None:
        try:
            if run_harness(urls, transaction, step):
                acknowledged.append(transaction)
        except BaseException as error:  # reported on the test's thread
            failures.append(error)

    # a killed coordinator's prepared participant holds its row locks until it is resolved:
    # the process's background recoverer lets the transfers waiting on them go on
    background = Recoverer(shard_map.binds(), interval=0.5)
    threads = [threading.Thread(target=one, args=(100 + i, step)) for i, step in enumerate(steps)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        background.stop()
    assert not failures, failures[0]
    outcomes: list[Any] = []
    recoverers = [
        threading.Thread(target=lambda: outcomes.extend(recover(shard_map.binds())))
        for _ in range(2)
    ]
    for thread in recoverers:
        thread.start()
    for thread in recoverers:
        thread.join()
    resolved = [e.transaction_id for e in outcomes if e.outcome in ("committed", "rolled back")]
    assert len(resolved) == len(set(resolved))  # each in-doubt transaction resolved once
    assert total(urls) == 400
    assert prepared_left(urls) == 0
    for transaction in range(100, 100 + transfers):
        found = entries(urls, transaction)
        assert set(found.values()) in ({0}, {1}), (transaction, found)
        if transaction in acknowledged:
            assert found == {"a": 1, "b": 1}
    moved = sum(1 for t in range(100, 100 + transfers) if entries(urls, t)["a"])
    assert _count(urls["b"], "SELECT balance FROM accounts WHERE id = 1") == 100 + 10 * moved


def test_bank_transfers_with_kills_keep_the_sum(shard_map: Any, urls: dict[str, str]) -> None:
    _bank(shard_map, urls, transfers=6, seed=1)


@pytest.mark.slow
def test_bank_transfers_with_kills_keep_the_sum_many(shard_map: Any, urls: dict[str, str]) -> None:
    _bank(shard_map, urls, transfers=40, seed=2)


def _until(condition: Any, seconds: float, then: Any = None) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        if then is not None:
            then()
        time.sleep(0.2)
    return bool(condition())


@pytest.mark.parametrize(
    ("step", "expected"), [("after_prepare", 0), ("after_decision", 1)]
)  # fmt: skip
def test_background_recoverer_resolves_a_killed_coordinators_transaction(
    shard_map: Any, urls: dict[str, str], step: str, expected: int
) -> None:
    assert not run_harness(urls, 20, step)  # killed: a participant left prepared
    assert prepared_left(urls) == 1
    recoverer = Recoverer(shard_map.binds(), interval=60.0)  # only its wake() makes it look
    try:
        # woken again while the server has not yet seen the dead coordinator's lock go
        assert _until(lambda: prepared_left(urls) == 0, 5.0, then=recoverer.wake)
    finally:
        recoverer.stop()
    assert recoverer.rounds >= 1
    assert entries(urls, 20) == {"a": expected, "b": expected}
    assert total(urls) == 400


def test_reading_a_shard_with_our_in_doubt_transactions_resolves_them_first(
    shard_map: Any, urls: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not run_harness(urls, 21, "after_decision")  # decided, a participant prepared
    assert prepared_left(urls) == 1
    # the fixture's session checked these engines moments ago: look again at the next begin
    monkeypatch.setattr(transactions, "CHECK_EVERY_SECONDS", -1.0)
    with shard_map.sessionmaker()() as session:
        found = session.scalars(select(Entry).where(Entry.id == 21)).all()
        balances = {
            a.shard: a.balance for a in session.scalars(select(Account).where(Account.id == 1))
        }
    # the read saw the transaction whole: resolved before the session's first statement
    assert sorted(entry.shard for entry in found) == ["a", "b"]
    assert balances == {"a": 90, "b": 110}
    assert prepared_left(urls) == 0
