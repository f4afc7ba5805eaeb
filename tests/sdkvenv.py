"""Virtual environments for real SDKs whose pins clash with ours (the Humanloop SDK pins its
own pydantic, OpenTelemetry instrumentors...): one venv per SDK version, built on first use
and cached under the system temp dir (`flowtrace-test-venvs/`).

Locally, a venv that cannot be built (no network) skips the tests that need it, saying why;
in CI (`CI` set, as .ci/run does) it fails them instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

__all__ = ["VENV_ROOT", "sdk_python"]

VENV_ROOT = Path(tempfile.gettempdir()) / "flowtrace-test-venvs"
_INSTALL_TIMEOUT_S = 600


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI needs this venv: {reason}", pytrace=False)
    pytest.skip(reason)


def sdk_python(name: str, requirements: list[str]) -> Path:
    """The python of a venv named `name` holding `requirements` (built once, then reused)."""
    venv = VENV_ROOT / name
    python = venv / "bin" / "python"
    ready = venv / ".ready"
    wanted = "\n".join(requirements)
    if ready.exists() and ready.read_text() == wanted and python.exists():
        return python
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120
        )
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                *requirements,
            ],
            check=True,
            capture_output=True,
            timeout=_INSTALL_TIMEOUT_S,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
        output = getattr(error, "stderr", b"") or b""
        _unavailable(
            f"cannot build the venv {name} ({' '.join(requirements)}): {error}; "
            f"{output.decode(errors='replace')[-500:]}"
        )
    ready.write_text(wanted)
    return python
