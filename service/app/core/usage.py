"""`--help` for the service's commands that take no arguments (`python -m service`, `python -m service.worker`,
`python -m service.tools.serve_prod`): they are configured by environment variables only, so any argument is a
usage error, and `--help` prints what the command does and exits 0 instead of starting servers (EYES9 L1)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def parse_no_arguments(prog: str, description: str, epilog: str, argv: Sequence[str] | None = None) -> None:
    """Handle `argv` (default: sys.argv[1:]) for a command that takes none: `-h`/`--help` prints the usage and
    exits 0; anything else is a usage error (exit 2)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
