"""Project-wide test setup: internal errors of flowtrace fail the test that caused them."""

from __future__ import annotations

import compileall
import os
import sys
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import settings

import flowtrace
from flowtrace import _guard

pytest_plugins = ["pytester"]

# The suite starts hundreds of interpreters that import flowtrace. Where bytecode is not cached
# (PYTHONDONTWRITEBYTECODE, as on this project's machines) each would compile the package from
# source again: it is compiled once, here. Python checks a cached file against its source, so
# an edited module is never run stale.
if sys.dont_write_bytecode:
    compileall.compile_dir(os.path.dirname(flowtrace.__file__), quiet=1)

# The suite is deterministic: hypothesis draws the same examples on every run (explore more
# with `--hypothesis-profile=explore`, which draws new ones, many more).
settings.register_profile("deterministic", derandomize=True, deadline=None)
settings.register_profile("explore", max_examples=2000, deadline=None)
settings.load_profile("deterministic")

# Logs recorded by tests go to a throwaway embedded store, never into the working directory.
_TEST_DIR = tempfile.mkdtemp(prefix="flowtrace-tests-")
os.environ.setdefault("FLOWTRACE_DB_PATH", os.path.join(_TEST_DIR, "tests.db"))
# ... and so do the spools of the destinations tests deliver to (never the user's state dir).
os.environ.setdefault("FLOWTRACE_SPOOL_DIR", os.path.join(_TEST_DIR, "spool"))
flowtrace.configure()  # the pytest plugin imported flowtrace before this file set the path


@pytest.fixture(autouse=True)
def fail_on_internal_errors() -> Iterator[list[tuple[str, BaseException | None]]]:
    errors: list[tuple[str, BaseException | None]] = []

    def hook(kind: str, exc: BaseException | None) -> None:
        errors.append((kind, exc))

    _guard.add_hook(hook)
    try:
        yield errors
    finally:
        _guard.remove_hook(hook)
    if errors:
        kind, exc = errors[0]
        pytest.fail(f"flowtrace internal error [{kind}]: {exc!r}", pytrace=False)


# The throwaway PostgreSQL cluster and the store targets (SQLite, PostgreSQL) tests run over.
from tests.pgutil import (  # noqa: E402, F401
    migrated_schemas,
    postgres_cluster,
    postgres_url,
    store_target,
)

# The in-process servers a module's tests share (each test serving a store of its own).
from tests.serverutil import shared_servers  # noqa: E402, F401
