"""Operators as plain data: what ``explain --json`` prints.

Each operator's ``description(children)`` is one node of the plan's tree: its
name, its parameters as JSON values, and the nodes below it (the rows it
reads), the way Vitess's VEXPLAIN walks its operator tree into JSON.  The
text form (``describe()``) is what ``str(plan)`` prints.

>>> from shardalchemy.merge import Concatenate, Limit
>>> Limit(10, 20).description([Concatenate().description()])
{'operator': 'Limit', 'limit': 10, 'offset': 20, 'children': [{'operator': 'Concatenate',
 'children': []}]}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Description = dict[str, Any]
"""One node of a plan's tree as plain data: ``operator``, its parameters, ``children``."""


def node(operator: str, children: Sequence[Description], **parameters: Any) -> Description:
    """A tree node: the operator's name first, its parameters, the nodes below it last."""
    return {"operator": operator, **parameters, "children": list(children)}
