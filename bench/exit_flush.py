"""Exit flush (issue 4): how much longer a script that records 1,000 logs and never calls
flush takes to exit than one that only imports flowtrace, delivering to a local `flowtrace
serve` (HTTP) and to the embedded store.

    PYTHONPATH=src:. python bench/exit_flush.py [--python PATH] [--runs 9]

`--python` runs the scripts with another interpreter, e.g. a clean virtual environment with
only flowtrace's core dependencies (`python -m venv /tmp/v && /tmp/v/bin/pip install -e .`):
httpx imports more (and so an exit costs more) where optional packages such as trio or rich
are installed, as in the dev environment.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.serverutil import start_server

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
from flowtrace import flow
for i in range(1000):
    with flow("bench/exit"):
        pass
"""


def median_s(python: str, code: str, env: dict[str, str], runs: int) -> float:
    full = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **env}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([python, "-c", code], env=full, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, start_server(Path(tmp) / "server.db") as server:
        http = {"FLOWTRACE_BASE_URL": server.base_url, "FLOWTRACE_API_KEY": server.api_key or ""}
        embedded = {"FLOWTRACE_DB_PATH": str(Path(tmp) / "embedded.db")}
        bare = median_s(args.python, "import flowtrace", http, args.runs)
        to_server = median_s(args.python, SCRIPT, http, args.runs)
        to_store = median_s(args.python, SCRIPT, embedded, args.runs)
    print(f"python: {args.python}; medians of {args.runs} runs")
    print(f"import flowtrace and exit:            {bare * 1000:6.0f} ms")
    print(f"1,000 logs, exit flush to the server: +{(to_server - bare) * 1000:5.0f} ms")
    print(f"1,000 logs, exit flush to the store:  +{(to_store - bare) * 1000:5.0f} ms")


if __name__ == "__main__":
    main()
