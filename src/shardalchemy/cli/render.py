"""Rendering: demo steps and reason trees for the terminal (rich); explain as plain data."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ..errors import CrossShardQueryError
from ..routing.route import Explanation, Route
from . import demo


def render_step(console: Console, number: int, step: demo.Step) -> None:
    table = Table(title=f"Step {number}: {step.title}", title_justify="left", expand=True)
    table.add_column("statement", style="cyan", no_wrap=True)
    table.add_column("shards", style="magenta")
    table.add_column("why")
    for touch in step.touches:
        table.add_row(touch.statement, ", ".join(touch.shards), touch.reason)
    console.print(table)
    for route in step.explanations:
        if route.explanation is not None:
            console.print(Text(f"  explain {route.statement}:", style="bold"))
            console.print(Padding(reason_tree(route.explanation), (0, 0, 0, 4)))
        if route.plan is not None:
            console.print(Text(f"  plan of {route.statement} (merged in Python):", style="bold"))
            plan = Text(str(route.plan), no_wrap=True, overflow="ellipsis")
            console.print(Padding(plan, (0, 0, 0, 4)))
    if step.sql_counts:
        sent = ", ".join(f"{shard} x{count}" for shard, count in step.sql_counts.items())
        console.print(Text(f"  SQL sent: {sent}", style="dim"))
    for check in step.checks:
        mark = (
            Text("  PASS ", style="bold green")
            if check.passed
            else Text("  FAIL ", style="bold red")
        )
        line = mark + Text(check.description)
        if check.detail and not check.passed:
            line += Text(f"  (got {check.detail})", style="red")
        console.print(line)
    console.print()


def reason_tree(explanation: Explanation, tree: Tree | None = None) -> Tree:
    allowed = (
        "all shards"
        if explanation.shards is None
        else ", ".join(sorted(map(str, explanation.shards))) or "no shard"
    )
    label = Text(explanation.text) + Text(f"  -> {allowed}", style="magenta")
    node = Tree(label) if tree is None else tree.add(label)
    for child in explanation.children:
        reason_tree(child, node)
    return node


def explanation_data(explanation: Explanation) -> dict[str, Any]:
    """A reason tree as plain data: ``text``, ``shards`` (``None``: all shards), ``children``."""
    return {
        "text": explanation.text,
        "shards": None if explanation.shards is None else sorted(map(str, explanation.shards)),
        "children": [explanation_data(child) for child in explanation.children],
    }


def explain_document(route: Route, sql: str) -> dict[str, Any]:
    """What ``shardalchemy explain --json`` prints: a route and its plan (or refusal) as data.

    ``sql`` is the statement's SQL on one line (the plan's ``Route`` shows
    each shard's, with its values).  ``explanation`` is the reason
    tree (``text``, the ``shards`` it allows or ``None`` for all, ``children``).
    ``plan`` is the operator tree (:meth:`~shardalchemy.Plan.describe`) when
    the statement runs on several shards and is merged, ``refusal`` the
    ``CrossShardQueryError`` running it would raise; both ``None`` otherwise.
    """
    error = route.plan_error
    refusal = None
    if error is not None:
        construct = error.construct if isinstance(error, CrossShardQueryError) else ""
        refusal = {"construct": construct, "message": str(error)}
    return {
        "statement": route.statement,
        "sql": sql,
        "shards": [str(shard) for shard in route.shards],
        "reason": route.reason,
        "explanation": None if route.explanation is None else explanation_data(route.explanation),
        "plan": None if route.plan is None else route.plan.describe(route.shards),
        "refusal": refusal,
    }
