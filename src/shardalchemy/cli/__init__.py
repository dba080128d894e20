"""The ``shardalchemy`` command: ``demo`` and ``explain`` (see :mod:`.main`)."""

from .main import build_demo_shard_map, main, run_demo, run_explain

__all__ = ["build_demo_shard_map", "main", "run_demo", "run_explain"]
