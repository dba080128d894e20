"""What the benchmarks report about the machine they ran on (one JSON object)."""

from __future__ import annotations

import os
import platform
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
