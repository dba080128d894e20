"""Routing: statement + parameters -> route (the shards to run on, and why).

Pure and cached per statement shape.  :class:`Router` is built from one
evaluator (:mod:`.predicates`) from which :meth:`Router.route`,
:meth:`Router.explain` and the fast path (:mod:`.fast_path`) all come;
:mod:`.tables` tells which tables a statement reads and whether they are
co-located.
"""

from .route import Explanation, Route
from .router import Router, route_statement
from .tables import colocation_groups, shard_key_hints, statement_label, tables_of

__all__ = [
    "Explanation",
    "Route",
    "Router",
    "colocation_groups",
    "route_statement",
    "shard_key_hints",
    "statement_label",
    "tables_of",
]
