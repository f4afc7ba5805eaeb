"""`python -m flowtrace.server serve ...`: the serve command without the rest of the CLI."""

from __future__ import annotations

import argparse
import sys

from ._command import add_serve_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flowtrace.server")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_serve_command(subparsers)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
