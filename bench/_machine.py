"""What the benchmarks report about the machine they ran on (one JSON object)."""

from __future__ import annotations

import os
import platform
import resource
from pathlib import Path
from typing import Any

import sqlalchemy as sa


def machine() -> dict[str, Any]:
    """Cores, CPU model, Python, SQLAlchemy and OS of this machine.

    Example::

        print(json.dumps({"qps": 1234, "machine": machine()}))
    """
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "sqlalchemy": sa.__version__,
        "platform": platform.platform(),
    }


def peak_rss_kb() -> int:
    """Peak RSS of this process in KB: VmHWM on Linux, else ru_maxrss.

    Not ru_maxrss on Linux: a child started by fork/vfork + exec inherits its
    parent's ru_maxrss (the kernel folds the old memory map's peak into it at
    exec), so a child of a parent holding a million rows would report their
    size as its own peak.  VmHWM belongs to the child's own memory map.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
