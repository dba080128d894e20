"""The process's worker threads: a job never waits for a thread while another job runs.

One cached pool for the whole process runs every shard's statement of a fan-out and every
background cancellation.  It starts a new thread whenever no thread is idle, reuses idle ones
(the most recently idle first) and lets a thread that stayed idle for ``IDLE_SECONDS`` end.

Why not ``concurrent.futures.ThreadPoolExecutor``:

- a bounded pool queues a shard's statement behind other statements' (three scatters stuck
  on a locked shard would hold every worker, and a statement to healthy shards would wait
  for them, then miss its deadline and blame the healthy shards);
- its threads are joined at interpreter exit, so one statement stuck on a server that never
  answers would keep the process from exiting; these threads are daemons;
- its idle threads never end.

The thread budget: one thread per shard statement in flight, plus one per cancellation in
flight (each bounded by its own timeout).  There is no cap, on purpose: a cap is a queue, and a
queue is what lets one sick shard stall the others.  The number is bounded by the callers
instead: each caller waits for its shards, so it is at most the callers' threads times the
shards they reach at once (``shard_concurrency`` lowers the second), plus threads blocked on a
shard that stopped answering, which a deadline (``shard_timeout``) frees.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

IDLE_SECONDS = 30.0
"""How long a thread waits for its next job before it ends."""


class Workers:
    """A cached pool of daemon threads: ``submit()`` never waits for a free thread.

    Jobs start in the order they were submitted (one queue, as ``ThreadPoolExecutor``'s):
    every submission either reserves an idle thread or starts one, so the queue never holds
    more jobs than there are threads free to take them.

    Example:

    >>> workers = Workers("example")
    >>> workers.submit(sum, [1, 2, 3]).result()
    6
    """

    def __init__(self, name: str, idle_seconds: float = IDLE_SECONDS) -> None:
        self.name = name
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._idle = 0  # threads waiting for a job that no submission has reserved
        self._numbers = itertools.count(1)
        self.threads = 0
        """Threads alive now (running a job or idle)."""

    def submit(
        self, function: Callable[..., Any], *arguments: Any
    ) -> concurrent.futures.Future[Any]:
        """Run ``function(*arguments)`` on an idle thread, or on a new one if none is idle."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            self._jobs.put((future, function, arguments))
            if self._idle:
                self._idle -= 1
                return future
            self.threads += 1
            number = next(self._numbers)
        try:
            threading.Thread(target=self._work, name=f"{self.name}-{number}", daemon=True).start()
        except BaseException:
            with self._lock:
                self.threads -= 1
            raise
        return future

    def _work(self) -> None:
        while True:
            try:
                future, function, arguments = self._jobs.get(timeout=self.idle_seconds)
            except queue.Empty:
                with self._lock:
                    if self._idle:  # not reserved by a submission: this thread may end
                        self._idle -= 1
                        self.threads -= 1
                        return
                continue  # reserved: its job is in the queue
            if future.set_running_or_notify_cancel():
                try:
                    result = function(*arguments)
                except BaseException as error:  # KeyboardInterrupt too: result() re-raises it
                    future.set_exception(error)
                else:
                    future.set_result(result)
            # drop the job's references before waiting (a result may hold a connection)
            future = function = arguments = result = None
            with self._lock:
                self._idle += 1

    def _forget_threads(self) -> None:
        # a forked child has none of its parent's threads
        self._lock = threading.Lock()
        self._jobs = queue.SimpleQueue()
        self._idle = 0
        self.threads = 0


WORKERS = Workers("shardalchemy-worker")
"""The one pool of the process: shard statements of fan-outs and background cancellations."""

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=WORKERS._forget_threads)
