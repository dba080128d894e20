"""The weather demo: ``shardalchemy demo`` passes every check on every placement and backend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from shardalchemy import ShardMap, cli
from shardalchemy.cli import demo

PLACEMENTS = ["tables", "schema", "database"]


def demo_shard_map(placement: str, backend: str, make_database) -> ShardMap:
    if placement == "database":
        urls = {shard: make_database(backend) for shard in demo.SHARDS}
        return ShardMap.databases(urls)
    url: URL = make_database(backend)
    if placement == "schema":
        return ShardMap.schemas(url, demo.SHARDS)
    return ShardMap.tables(url, demo.SHARDS)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_demo_scenario_passes_every_check(placement: str, backend: str, make_database) -> None:
    shard_map = demo_shard_map(placement, backend, make_database)
    try:
        steps = demo.run(shard_map)
    finally:
        shard_map.dispose()
    failed = [(s.title, c.description, c.detail) for s in steps for c in s.checks if not c.passed]
    assert failed == []
    assert sum(len(step.checks) for step in steps) == 20
    merged = steps[-1]  # ORDER BY ... LIMIT and aggregates over every shard, merged
    assert [len(touch.shards) for touch in merged.touches] == [len(demo.SHARDS)]
    # every step that ran statements says where they went and why
    saved = steps[1]
    assert {shard for touch in saved.touches for shard in touch.shards} == set(demo.SHARDS)
    in_query = steps[4]
    assert [touch.shards for touch in in_query.touches] == [["asia", "europe"]]
    assert "continent IN" in in_query.touches[0].reason


def test_demo_command_prints_routes_and_exits_zero(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # so rich does not wrap the reasons
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "placement tables" in out
    assert "set_shard_id('north_america')" in out
    assert "WeatherLocation.reports loads rows of the parent's shard asia" in out
    assert "all 20 checks passed" in out
    assert "FAIL" not in out


def test_installed_console_script_runs_the_demo() -> None:
    script = Path(sys.executable).with_name("shardalchemy")
    assert script.exists(), "install the project (pip install -e .) to get the console script"
    done = subprocess.run([str(script), "demo"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "all 20 checks passed" in done.stdout


def test_demo_exits_nonzero_when_a_check_fails(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    real_run = demo.run

    def run_with_a_broken_check(shard_map, *, on_step=None):
        steps = real_run(shard_map, on_step=on_step)
        steps[-1].check("a check that fails", False, "wrong")
        return steps

    monkeypatch.setattr(demo, "run", run_with_a_broken_check)
    assert cli.main(["demo"]) == 1
    assert "1 of 21 checks failed" in capsys.readouterr().out


def test_database_placement_url_must_name_each_shard(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--placement", "database", "--url", "sqlite:///one.db"]) == 2
    assert "{shard}" in capsys.readouterr().out


def test_demo_reports_an_unreachable_database_without_a_traceback(capsys) -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2"
    assert cli.main(["demo", "--url", url]) == 2
    out = capsys.readouterr().out
    assert "database error" in out
    assert "Traceback" not in out
