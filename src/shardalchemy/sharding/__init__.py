"""Sharding: what users declare, and the rules it resolves into.

- :mod:`.declarations`: ``ShardKey``, ``FollowParent``, ``shard_table``;
- :mod:`.strategies`: value -> shard (``Lookup``, ``Hash``, ``Range``,
  ``Function``, and ``IdStrategy`` for shard-aware IDs);
- :mod:`.rules`: one resolved rule per kind of table (key, follower,
  unsharded), and the :class:`~.rules.RuleBook` that hands them out.

Pure: no connection, no session.
"""

from .declarations import FollowParent, ShardKey, shard_table
from .rules import FollowRule, KeyRule, Rule, RuleBook, UnshardedRule
from .strategies import Function, Hash, IdStrategy, Lookup, Range, ShardName, Strategy

__all__ = [
    "FollowParent",
    "FollowRule",
    "Function",
    "Hash",
    "IdStrategy",
    "KeyRule",
    "Lookup",
    "Range",
    "Rule",
    "RuleBook",
    "ShardKey",
    "ShardName",
    "Strategy",
    "UnshardedRule",
    "shard_table",
]
