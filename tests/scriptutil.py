"""Scripts run in a fresh interpreter (exit, crashes, signals, several processes): the checkout's
sources on the path, and only the flowtrace settings a test gives (none inherited)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: A generous bound on a script that should finish promptly (a busy CI machine).
SCRIPT_TIMEOUT_S = 120.0


def script_env(**settings: object) -> dict[str, str]:
    """The environment of a script: this one's, without FLOWTRACE_* settings, plus `settings`
    as FLOWTRACE_<NAME> variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWTRACE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    for name, value in settings.items():
        env[f"FLOWTRACE_{name.upper()}"] = str(value)
    return env


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str
    elapsed_s: float


def run_script(
    code: str, env: dict[str, str], *args: str, timeout: float = SCRIPT_TIMEOUT_S
) -> Done:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Done(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def start_script(code: str, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_line(process: subprocess.Popen[str], timeout: float = SCRIPT_TIMEOUT_S) -> str:
    """The next line the script prints (it says when it reached a point), or fail."""
    import select

    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError("the script said nothing")
    return process.stdout.readline().strip()
