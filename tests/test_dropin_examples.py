"""Drop-in acceptance: SQLAlchemy's own sharding examples run on ``shardalchemy``.

The examples are not vendored. At test time they are taken from the source
distribution of the installed SQLAlchemy version, which pip downloads once into
pytest's cache. Each example is copied with exactly one line changed, its
``ShardedSession`` import, and run to completion in a subprocess.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import NoReturn

import pytest

EXAMPLES = ("separate_tables", "separate_databases", "separate_schema_translates", "asyncio")
UPSTREAM = "sqlalchemy.ext.horizontal_shard"
IMPORT_LINE = f"from {UPSTREAM} import ShardedSession"
DOWNLOAD_TIMEOUT = 300
RUN_TIMEOUT = 120

# Runs a file as __main__, then checks which module its ShardedSession came from.
RUNNER = """\
import runpy, sys
path, expected, pkg_root = sys.argv[1:]
if pkg_root not in sys.path:
    sys.path.insert(0, pkg_root)
module = runpy.run_path(path, run_name="__main__")["ShardedSession"].__module__
if module != expected and not module.startswith(expected + "."):
    sys.exit(f"ShardedSession came from {module!r}, not {expected!r}")
"""


def _tail(text: str | bytes | None, lines: int = 40) -> str:
    """The last *lines* lines of a process's captured output."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join((text or "").splitlines()[-lines:])


def _unavailable(reason: str) -> NoReturn:
    """Skip when the examples cannot be had, but fail on CI."""
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(reason)
    pytest.skip(reason)


def _find_sdist(directory: Path) -> Path | None:
    return next(iter(sorted(directory.glob("*.tar.gz"))), None)


def _download_sdist(version: str, dest: Path) -> Path:
    """Download SQLAlchemy *version*'s sdist into *dest* with pip."""
    cmd = [
        *(sys.executable, "-m", "pip", "download", "--no-deps", "--no-input"),
        # Only SQLAlchemy itself as source; pip reads its metadata with the build
        # requirements, which may come only as wheels. Nothing is compiled.
        *("--only-binary=:all:", "--no-binary=sqlalchemy"),
        *("--dest", str(dest), f"sqlalchemy=={version}"),
    ]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        _unavailable(
            f"pip download of the SQLAlchemy {version} sdist timed out:\n{_tail(exc.stderr)}"
        )
    sdist = _find_sdist(dest)
    if proc.returncode != 0 or sdist is None:
        _unavailable(f"could not download the SQLAlchemy {version} sdist:\n{_tail(proc.stderr)}")
    return sdist


def _extract_sharding_examples(sdist: Path, dest: Path) -> None:
    """Extract only ``*/examples/sharding/*.py`` from *sdist* into *dest*."""
    staging = Path(tempfile.mkdtemp(dir=dest.parent))
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            path = PurePosixPath(member.name)
            if member.isfile() and path.match("*/examples/sharding/*.py"):
                data = tar.extractfile(member)
                assert data is not None
                (staging / path.name).write_bytes(data.read())
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)


@pytest.fixture(scope="session")
def sharding_examples(
    pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Directory holding the installed SQLAlchemy version's sharding examples."""
    version = importlib.metadata.version("sqlalchemy")
    cache = getattr(pytestconfig, "cache", None)
    base = cache.mkdir("sqlalchemy-sdist") if cache else tmp_path_factory.mktemp("sdist")
    root = base / version
    root.mkdir(parents=True, exist_ok=True)
    examples = root / "sharding"
    if not all((examples / f"{name}.py").is_file() for name in EXAMPLES):
        _extract_sharding_examples(_find_sdist(root) or _download_sdist(version, root), examples)
    missing = [name for name in EXAMPLES if not (examples / f"{name}.py").is_file()]
    if missing:
        pytest.fail(f"SQLAlchemy {version}'s sdist lacks sharding examples {missing}")
    return examples


def swap_sharded_session_import(source: str, module: str) -> str:
    """Return *source* with its single ``ShardedSession`` import taken from *module*."""
    lines = source.splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == IMPORT_LINE]
    if len(hits) != 1:
        raise ValueError(f"expected exactly one {IMPORT_LINE!r} line, found {len(hits)}")
    lines[hits[0]] = lines[hits[0]].replace(UPSTREAM, module, 1)
    return "".join(lines)


def _package_root(module: str) -> Path:
    """The sys.path entry this process imports *module*'s top-level package from."""
    spec = importlib.util.find_spec(module.partition(".")[0])
    if spec is None:
        pytest.fail(f"{module} is not importable; install the project first")
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).parent
    assert spec.origin is not None
    return Path(spec.origin).parent


def _run(script: Path, module: str) -> subprocess.CompletedProcess[str]:
    """Run *script* as ``__main__``, then require its ShardedSession from *module*."""
    cmd = [sys.executable, "-c", RUNNER, script.name, module, str(_package_root(module))]
    try:
        return subprocess.run(
            cmd, cwd=script.parent, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{script.name} ran over {RUN_TIMEOUT}s; stderr tail:\n{_tail(exc.stderr)}")


def run_example(examples: Path, name: str, module: str, workdir: Path) -> None:
    """Run example *name* with ShardedSession imported from *module*; fail on any error."""
    source = (examples / f"{name}.py").read_text()
    # Not named asyncio.py: the example's own ``import asyncio`` would import itself.
    script = workdir / f"example_{name}.py"
    script.write_text(swap_sharded_session_import(source, module))
    proc = _run(script, module)
    assert proc.returncode == 0, (
        f"example {name} on {module} exited {proc.returncode}\n"
        f"--- stdout tail ---\n{_tail(proc.stdout, 10)}\n--- stderr tail ---\n{_tail(proc.stderr)}"
    )


@pytest.mark.parametrize("name", EXAMPLES, ids=EXAMPLES)
def test_example_runs_on_shardalchemy(name: str, sharding_examples: Path, tmp_path: Path) -> None:
    """The example passes with only its import switched to shardalchemy."""
    run_example(sharding_examples, name, "shardalchemy", tmp_path)


@pytest.mark.parametrize("name", EXAMPLES, ids=EXAMPLES)
def test_example_runs_on_upstream_control(
    name: str, sharding_examples: Path, tmp_path: Path
) -> None:
    """Control: the unmodified example passes on SQLAlchemy's own class."""
    run_example(sharding_examples, name, UPSTREAM, tmp_path)


def test_swap_requires_exactly_one_import_line() -> None:
    """A file without the import line, or with two, is refused."""
    line = IMPORT_LINE + "\n"
    assert swap_sharded_session_import("x = 1\n" + line, "pkg") == (
        "x = 1\nfrom pkg import ShardedSession\n"
    )
    for source in ("x = 1\n", line * 2, f"# {IMPORT_LINE}\n"):
        with pytest.raises(ValueError, match="exactly one"):
            swap_sharded_session_import(source, "pkg")


def test_runner_rejects_a_session_from_the_wrong_module(tmp_path: Path) -> None:
    """The harness notices when the script's ShardedSession is not the expected one."""
    script = tmp_path / "wrong.py"
    script.write_text(IMPORT_LINE + "\n")
    proc = _run(script, "sqlalchemy.orm")
    assert proc.returncode != 0
    assert "not 'sqlalchemy.orm'" in proc.stderr
