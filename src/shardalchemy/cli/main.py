"""The ``shardalchemy`` command.

``shardalchemy demo`` runs the weather scenario on embedded SQLite (no server
needed) and prints, step by step, which shards each statement touched and why.
``shardalchemy explain MODELS STATEMENT`` shows where a statement would run
(``--json``: as one JSON document, the merge plan as a tree of operators).
``--placement`` and ``--url`` run the demo on PostgreSQL or MariaDB::

    shardalchemy demo
    shardalchemy demo --placement schema --url postgresql+psycopg://postgres@127.0.0.1/demo
    shardalchemy demo --placement database \
        --url 'mysql+pymysql://root@127.0.0.1/weather_{shard}'
    shardalchemy explain myapp.models "select(City).where(City.continent == 'Asia')"
    shardalchemy explain --json myapp.models "select(City).order_by(City.name).limit(5)"
    shardalchemy recover myapp.models            # resolve in-doubt transactions
    shardalchemy recover --list --json myapp.models

Exits 0 when every check passes, 1 when one fails, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError

from ..errors import ShardingError
from ..topology.shard_map import ShardMap
from ..transactions import recover
from . import demo
from .render import explain_document, reason_tree, render_step


def _ensure_server_database(url: str) -> None:
    """Create the database of a PostgreSQL/MariaDB URL if it does not exist."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    name = parsed.database
    if backend == "sqlite" or not name:
        return
    admin_db = "postgres" if backend == "postgresql" else None
    # URL.set() ignores None, so build the URL again to connect without a database
    admin_url = URL.create(
        parsed.drivername,
        parsed.username,
        parsed.password,
        parsed.host,
        parsed.port,
        admin_db,
        parsed.query,
    )
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            quoted = engine.dialect.identifier_preparer.quote(name)
            if backend == "postgresql":
                exists = connection.scalar(
                    text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
                )
                if not exists:
                    connection.execute(text(f"CREATE DATABASE {quoted}"))
            else:
                connection.execute(text(f"CREATE DATABASE IF NOT EXISTS {quoted}"))
    finally:
        engine.dispose()


def build_demo_shard_map(placement: str, url: str | None, workdir: Path) -> ShardMap:
    """The demo's shard map for a placement, on ``url`` or on SQLite files in ``workdir``."""
    if placement == "database":
        template = url or f"sqlite:///{workdir / 'weather_{shard}.db'}"
        if "{shard}" not in template:
            raise ShardingError(
                "--placement database needs one database per shard: put {shard} in the URL, "
                "e.g. postgresql+psycopg://user@host/weather_{shard}"
            )
        urls = {shard: template.format(shard=shard) for shard in demo.SHARDS}
        for shard_url in urls.values():
            _ensure_server_database(shard_url)
        return ShardMap.databases(urls)
    url = url or f"sqlite:///{workdir / 'weather.db'}"
    if placement == "schema":
        return ShardMap.schemas(url, demo.SHARDS)
    return ShardMap.tables(url, demo.SHARDS)


def run_demo(args: argparse.Namespace, console: Console) -> int:
    """Run the weather scenario and print it; the process exit code."""
    with tempfile.TemporaryDirectory(prefix="shardalchemy-demo-") as workdir:
        shard_map = build_demo_shard_map(args.placement, args.url, Path(workdir))
        console.print(
            f"[bold]shardalchemy demo[/bold]: {len(shard_map.shard_names)} shards, "
            f"placement [bold]{shard_map.placement}[/bold]"
        )
        for shard in shard_map.shard_names:
            console.print(f"  {shard}: {shard_map.location(shard)}")
        console.print()
        counter = iter(range(1, 1000))
        try:
            steps = demo.run(
                shard_map, on_step=lambda step: render_step(console, next(counter), step)
            )
            if not args.keep:
                shard_map.drop_all(demo.Base.metadata)
        finally:
            shard_map.dispose()
    failed = [check for step in steps for check in step.checks if not check.passed]
    total = sum(len(step.checks) for step in steps)
    if failed:
        console.print(f"[bold red]{len(failed)} of {total} checks failed[/bold red]")
        return 1
    console.print(f"[bold green]all {total} checks passed[/bold green]")
    return 0


_EXPLAIN_NAMES = (
    "and_",
    "bindparam",
    "delete",
    "exists",
    "func",
    "insert",
    "literal",
    "not_",
    "or_",
    "select",
    "text",
    "tuple_",
    "union",
    "union_all",
    "update",
)


def _load_models(target: str) -> tuple[dict[str, Any], ShardMap]:
    """Import ``module[:shard_map_name]`` (a dotted name or a .py path) and find its shard map."""
    module_name, _, attribute = target.partition(":")
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name).resolve()
        sys.path.insert(0, str(path.parent))  # so it can import its neighbours
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise ShardingError(f"cannot import {module_name}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, str(Path.cwd()))
        module = importlib.import_module(module_name)
    namespace = dict(vars(module))
    if attribute:
        shard_map = namespace.get(attribute)
        if not isinstance(shard_map, ShardMap):
            raise ShardingError(f"{module_name}.{attribute} is not a shardalchemy.ShardMap")
        return namespace, shard_map
    maps = {name: value for name, value in namespace.items() if isinstance(value, ShardMap)}
    if len(maps) != 1:
        found = ", ".join(sorted(maps)) or "none"
        raise ShardingError(
            f"{module_name} must define exactly one ShardMap (found: {found}); "
            f"name it as {module_name}:NAME"
        )
    return namespace, next(iter(maps.values()))


def run_explain(args: argparse.Namespace, console: Console) -> int:
    """Explain where a statement written in Python would run; nothing is executed."""
    import sqlalchemy

    from ..orm.session import ShardedSession

    namespace, shard_map = _load_models(args.models)
    for name in _EXPLAIN_NAMES:
        namespace.setdefault(name, getattr(sqlalchemy, name))
    try:
        statement = eval(args.statement, namespace)  # the user's own expression, as in a REPL
    except Exception as error:
        raise ShardingError(f"cannot evaluate {args.statement!r}: {error}") from None
    parameters = json.loads(args.params) if args.params else None
    session = ShardedSession(shard_map=shard_map)
    try:
        route = session.explain(statement, parameters, connect=False)
    finally:
        session.close()
    if args.json:
        print(json.dumps(explain_document(route, " ".join(str(statement).split())), indent=2))
        return 0
    console.print(f"[bold]{route.statement}[/bold]")
    console.print(Text(str(statement), style="dim"))
    console.print(f"shards: [magenta]{', '.join(map(str, route.shards))}[/magenta]")
    console.print(f"why: {route.reason}")
    if route.explanation is not None:
        console.print(reason_tree(route.explanation))
    if route.plan is not None:
        console.print("[bold]plan[/bold] (how the shards' rows are merged):")
        console.print(Text(str(route.plan)))
    if route.plan_error is not None:
        console.print(f"[bold red]refused[/bold red]: {route.plan_error}")
    return 0


def run_recover(args: argparse.Namespace, console: Console) -> int:
    """List (``--list``) or resolve the in-doubt transactions of a models module's shards."""
    _, shard_map = _load_models(args.models)
    found = recover(shard_map.binds(), resolve_them=not args.list)
    if args.json:
        print(json.dumps([entry.as_dict() for entry in found], indent=2))
    elif not found:
        console.print("no in-doubt transactions")
    else:
        for entry in found:
            shards = ", ".join(sorted(entry.prepared))
            outcome = entry.outcome or "in doubt"
            console.print(
                f"transaction {entry.transaction_id} (decider {entry.decider}): "
                f"prepared on {shards}: {outcome}"
            )
    return (
        1 if any(entry.outcome not in (None, "committed", "rolled back") for entry in found) else 0
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``shardalchemy`` command."""
    parser = argparse.ArgumentParser(prog="shardalchemy", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="run the weather sharding scenario")
    demo_parser.add_argument(
        "--placement",
        choices=["tables", "schema", "database"],
        default="tables",
        help="where shards live (default: tables, in one SQLite file)",
    )
    demo_parser.add_argument(
        "--url",
        help="database URL (default: a temporary SQLite file); with --placement database "
        "it must contain {shard}",
    )
    demo_parser.add_argument(
        "--keep", action="store_true", help="leave the demo's tables and rows in place"
    )
    explain_parser = commands.add_parser(
        "explain",
        help="show which shards a statement would reach, and why (runs nothing)",
        description="Explain the route of a statement over the shard map of a models module.",
    )
    explain_parser.add_argument(
        "models",
        help="the module defining your models and one ShardMap: a dotted name or a .py path, "
        "optionally :NAME of the shard map",
    )
    explain_parser.add_argument(
        "statement",
        help="a Python expression building the statement, e.g. "
        "\"select(City).where(City.continent == 'Asia')\"",
    )
    explain_parser.add_argument("--params", help="execute-time parameters, as a JSON object")
    explain_parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document: the route, its reason tree and the merge plan's "
        "operator tree (or the refusal)",
    )
    recover_parser = commands.add_parser(
        "recover",
        help="list and resolve in-doubt transactions (prepared, their coordinator gone)",
        description="Commit every in-doubt transaction whose decision was recorded, roll back "
        "the others; a transaction whose coordinator is still at work is left to it.",
    )
    recover_parser.add_argument("models", help="the module defining one ShardMap (as explain)")
    recover_parser.add_argument("--list", action="store_true", help="list only, resolve nothing")
    recover_parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    console = Console()
    as_json = getattr(args, "json", False)
    try:
        if args.command == "explain":
            return run_explain(args, console)
        if args.command == "recover":
            return run_recover(args, console)
        return run_demo(args, console)
    except ShardingError as error:
        if as_json:  # still one JSON document, for whatever reads it
            print(json.dumps({"error": str(error)}, indent=2))
        else:
            console.print(f"[bold red]error:[/bold red] {error}")
        return 2
    except SQLAlchemyError as error:
        if as_json:
            print(json.dumps({"error": f"database error: {error}"}, indent=2))
        else:
            console.print(f"[bold red]database error:[/bold red] {error}")
        return 2
