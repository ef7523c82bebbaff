"""Run the Pulumi program the way the CLI's Python language host does, against the offline mocks.

`pulumi up` starts `pulumi-language-python-exec` (pulumi/pulumi sdk/python/cmd/pulumi-language-python-exec), which:
reads the stack's config from $PULUMI_CONFIG / $PULUMI_CONFIG_SECRET_KEYS (`set_all_config`), builds a
`pulumi.runtime.Settings` and `configure`s the runtime with it, then runs
`loop.run_until_complete(pulumi.runtime.run_in_stack(lambda: runpy.run_path(PROGRAM, run_name="__main__")))`,
and reports a failure in one of two ways: a `pulumi.RunError` is logged as `str(e)` alone (exit 1); any other
exception is logged as "Program failed with an unhandled exception:" and the traceback (exit 32).

This script does the same, with the offline monitor (infra/offline.py's, so the program's invokes answer as the
mocks do) in place of the engine's gRPC one and no engine (so `pulumi.log` writes `error: ...` to stderr, as the
CLI's display shows it). Unlike `infra.offline.run_stack`, it does not look for the root cause of an error: what
this prints is what the language host would print.

    PULUMI_CONFIG='{"rag:...": "..."}' python tests/infra/exec_program.py --stack prod [--dry_run true] \
        [--live live.json] infra/__main__.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import runpy
import sys
import traceback
from pathlib import Path

import pulumi
import pulumi.runtime
from pulumi.runtime import settings

REPO_ROOT = Path(__file__).resolve().parents[2]
# The language host's exit status after it showed the user an actionable message (an unhandled exception).
UNHANDLED_EXIT = 32


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", required=True)
    parser.add_argument("--dry_run", default="false")
    parser.add_argument(
        "--live", help="a JSON file: what the cloud already runs (infra.offline.PlatformMocks)"
    )
    parser.add_argument("PROGRAM")
    args = parser.parse_args()

    sys.path.insert(0, str(REPO_ROOT))
    from infra.offline import PROJECT, PlatformMocks, _RecordingMonitor

    live = json.loads(Path(args.live).read_text()) if args.live else None
    pulumi.runtime.set_all_config(
        pulumi.runtime.get_config_env(), pulumi.runtime.get_config_secret_keys_env()
    )
    pulumi.runtime.configure(
        pulumi.runtime.Settings(
            project=PROJECT,
            stack=args.stack,
            monitor=_RecordingMonitor(PlatformMocks(live)),
            engine=None,
            parallel=8,
            dry_run=args.dry_run == "true",
            root_directory=str(REPO_ROOT),
        )
    )
    settings.ROOT.set(None)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    program = str(Path(args.PROGRAM).resolve())
    exit_code = 1
    try:
        loop.run_until_complete(
            pulumi.runtime.run_in_stack(lambda: runpy.run_path(program, run_name="__main__"))
        )
        exit_code = 0
    except pulumi.RunError as exc:
        pulumi.log.error(str(exc))
    except Exception:  # as the language host: anything else is a traceback
        pulumi.log.error("Program failed with an unhandled exception:\n" + traceback.format_exc())
        exit_code = UNHANDLED_EXIT
    finally:
        loop.close()
        sys.stdout.flush()
        sys.stderr.flush()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
