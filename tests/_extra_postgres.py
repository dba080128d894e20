"""Throwaway PostgreSQL servers for fault tests: started on free ports, stopped by pid.

A test that needs a server to misbehave (locked, stopped with SIGSTOP, killed mid-statement)
cannot do it to the shared server on 5432, so it starts its own::

    with ExtraPostgres.started() as server:
        engine = sa.create_engine(server.url)
        ...
        server.pause()     # SIGSTOP: the server takes connections and answers nothing
        server.resume()    # SIGCONT
        server.kill()      # SIGKILL: every connection to it breaks at once
        server.start()     # up again, same data and port

The data directory lives under a fresh directory in the system's temporary folder (the
``postgres`` user must be able to reach it, and pytest's ``tmp_path`` is private to root).
``initdb`` runs once per process: later servers copy that cluster, which is much faster.  As
root, the server runs as ``postgres`` (``runuser``), which PostgreSQL requires; as anyone else,
as that user.  This module knows nothing about pytest: ``unavailable()`` says why no server can
be started here, and the tests turn it into a skip (or a failure under ``CI=true``).  Servers
of a test process that was killed before its teardown are stopped and removed by the next
process that starts one (``reap_orphans``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import URL

START_TIMEOUT_SECONDS = 30
# fast and disposable: nothing here must survive a crash of the test machine
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "40",
    "shared_buffers": "16MB",
    "max_prepared_transactions": "10",
}


@functools.cache
def _bindir() -> Path | None:
    """Where ``initdb``/``pg_ctl`` live: ``pg_config --bindir``, else the PATH."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        found = subprocess.run(
            ["pg_config", "--bindir"], check=True, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if found and (Path(found) / "initdb").exists():
            return Path(found)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_server_user() -> list[str]:
    """The prefix that runs a command as the server's user (PostgreSQL refuses to run as root)."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def unavailable() -> str | None:
    """Why no extra server can be started here (``None``: one can)."""
    if _bindir() is None:
        return "initdb not found (install PostgreSQL's server binaries; pg_config --bindir)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser, cannot start PostgreSQL as postgres"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(command: list[str], timeout: float = START_TIMEOUT_SECONDS) -> None:
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if completed.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({completed.returncode}): "
            f"{(completed.stderr or completed.stdout).strip()[-2000:]}"
        )


def _chown_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


OWNER_FILE = "owner.pid"  # the pid of the process that made a directory, to reap orphans


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphans() -> None:
    """Stop and remove the servers (and templates) of test processes that were killed.

    A run killed before its teardown leaves its servers running; each directory names the
    process that made it, and one whose process is gone is stopped and removed.
    """
    for root in Path(tempfile.gettempdir()).glob("shardalchemy-pg-*"):
        try:
            owner = int((root / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        bindir = _bindir()
        if bindir is not None and (root / "data" / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                _run([*_as_server_user(), str(bindir / "pg_ctl"), "-D", str(root / "data"),
                      "stop", "-m", "immediate", "-w", "-t", "10"])  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def _own(root: Path) -> None:
    root.chmod(0o755)
    (root / OWNER_FILE).write_text(str(os.getpid()))


@functools.cache
def _template_cluster() -> Path:
    """One ``initdb`` per process; every server starts from a copy of it."""
    reap_orphans()
    root = Path(tempfile.mkdtemp(prefix="shardalchemy-pg-template-"))
    _own(root)
    data = root / "data"
    data.mkdir(mode=0o700)
    _chown_to_server_user(data)
    bindir = _bindir()
    assert bindir is not None
    _run(
        [
            *_as_server_user(),
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ],
        timeout=120,
    )
    return data


def _remove_template() -> None:
    if _template_cluster.cache_info().currsize:
        shutil.rmtree(_template_cluster().parent, ignore_errors=True)


class ExtraPostgres:
    """One throwaway PostgreSQL server on its own port and data directory."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="shardalchemy-pg-"))
        _own(self.root)
        self.data = self.root / "data"
        self.port = free_port()
        self.paused = False
        shutil.copytree(_template_cluster(), self.data, symlinks=True)
        if os.geteuid() == 0:
            _run(["chown", "-R", "postgres:postgres", str(self.data)])
        self.data.chmod(0o700)
        with (self.data / "postgresql.conf").open("a") as conf:
            for name, value in {
                **SERVER_SETTINGS,
                "port": str(self.port),
                "unix_socket_directories": str(self.data),
            }.items():
                conf.write(f"{name} = '{value}'\n")

    @classmethod
    @contextlib.contextmanager
    def started(cls) -> Iterator[ExtraPostgres]:
        """A running server, removed (data and all) when the block ends."""
        server = cls()
        try:
            server.start()
            yield server
        finally:
            server.close()

    @property
    def url(self) -> URL:
        return URL.create(
            "postgresql+psycopg", username="postgres", host="127.0.0.1", port=self.port,
            database="postgres",
        )  # fmt: skip

    def _pg_ctl(self, *arguments: str) -> None:
        bindir = _bindir()
        assert bindir is not None
        log = self.root / "server.log"
        if os.geteuid() == 0 and not log.exists():
            log.touch()
            _chown_to_server_user(log)
        _run([*_as_server_user(), str(bindir / "pg_ctl"), "-D", str(self.data), "-l", str(log),
              *arguments])  # fmt: skip

    def start(self) -> None:
        """Start the server (again, after :meth:`kill`) and wait until it takes connections."""
        try:
            self._pg_ctl("start", "-w", "-t", str(START_TIMEOUT_SECONDS))
        except RuntimeError as error:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{error}\nserver log:\n{tail}") from None
        self.paused = False

    def pids(self) -> list[int]:
        """The postmaster's pid and its children's (backends and background workers)."""
        pid_file = self.data / "postmaster.pid"
        try:
            postmaster = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        children = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == postmaster:
                    children.append(int(entry.name))
        return [postmaster, *children]

    def _signal(self, number: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, number)

    def pause(self) -> None:
        """SIGSTOP every process of the server: connections open, but nothing answers."""
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT: the server goes on where it stopped."""
        self._signal(signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        """SIGKILL every process of the server (a crash): connections to it break."""
        pids = self.pids()
        self._signal(signal.SIGKILL)
        self.paused = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
            time.sleep(0.02)
        (self.data / "postmaster.pid").unlink(missing_ok=True)

    def close(self) -> None:
        """Stop the server (immediately: its data is thrown away) and remove its directory."""
        with contextlib.suppress(Exception):
            if self.paused:
                self.resume()
            if self.pids():
                self._pg_ctl("stop", "-m", "immediate", "-w", "-t", "10")
        with contextlib.suppress(Exception):
            if self.pids():
                self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def cleanup() -> None:
    """Remove the template cluster (call once at the end of the test run)."""
    _remove_template()
