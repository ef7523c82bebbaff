"""`python -m service.reindex`: start, watch and roll back a blue/green re-index of a running service.

    python -m service.reindex start --url URL --chunk-size 128 --wait     # progress bar until it switches
    python -m service.reindex start --url URL --model BAAI/bge-small-en-v1.5
    python -m service.reindex status --url URL [--wait]
    python -m service.reindex rollback --url URL

The admin key comes from --key or ADMIN_API_KEY (not needed when the service runs with AUTH_DISABLED=true and
no ADMIN_API_KEY of its own: a key the service has set is checked, auth off or not).
Exit status: 0 when the command did what it says (with --wait: the re-index switched), 1 when the service
refused it, the re-index failed (the reason is printed) or --wait gave up after --timeout, 2 for a usage error.

``start --wait`` through a load balancer polls several replicas, each with its own job status (one may still
show an earlier re-index's ``switched``, or ``idle`` before it saw the new build): it judges by the index pointer
every replica shares (``serving``), as ``ragops reindex`` does: done once the pointer names the new settings and
has left the collection it named at the start, and the answering replica is not running. How the re-index works:
service.app.jobs.reindex. Client-side tool (rich): the development install.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

RUNNING = {"waiting", "building", "catching_up", "switching"}  # waiting: another replica builds
ROUTE = "/v1/admin/reindex"
INDEX_FIELDS = ("model", "chunk_size", "chunk_overlap")


class CommandFailed(Exception):
    """The service refused the command or the re-index failed; the message says why."""


def _check(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:300]
        raise CommandFailed(f"{response.status_code}: {message}")
    return response.json()


def _settings(value: dict[str, Any] | None) -> dict[str, Any] | None:
    return {name: value.get(name) for name in INDEX_FIELDS} if value else None


def _switched(status: dict[str, Any], wanted: dict[str, Any], before: str | None) -> bool:
    """The pointer names ``wanted``, has left ``before``, and the answering replica is not running."""
    serving = status.get("serving") or {}
    return (
        _settings(serving) == wanted
        and serving.get("collection") != before
        and status["state"] not in RUNNING
    )


def _started(status: dict[str, Any]) -> datetime | None:
    value = status.get("started_at")
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def is_this_builds_failure(status: dict[str, Any], wanted: dict[str, Any], since: datetime | None) -> bool:
    """Whether ``status`` reports that the build towards ``wanted`` which started at ``since`` (the start's own
    answer; None: unknown) failed or was interrupted. Behind a load balancer a replica may still show an EARLIER
    build's failure towards the same settings (the one the operator fixed and started again): its start time is
    before ``since``, and it says nothing of this one."""
    if status["state"] not in ("failed", "interrupted") or _settings(status.get("target")) != wanted:
        return False
    started = _started(status)
    return since is None or started is None or started >= since


def _ended(
    status: dict[str, Any], wanted: dict[str, Any] | None, before: str | None, since: datetime | None = None
) -> bool:
    """Whether a watch is over: without ``wanted``, once the answering replica is not running; with it (a
    start's target), once it has switched (``_switched``) or a replica reports that this build failed
    (``is_this_builds_failure``)."""
    if wanted is None:
        return status["state"] not in RUNNING
    if _switched(status, wanted, before):
        return True
    return is_this_builds_failure(status, wanted, since)


def watch(
    client: httpx.Client,
    console: Console,
    interval: float,
    *,
    wanted: dict[str, Any] | None = None,
    before: str | None = None,
    since: datetime | None = None,
    timeout: float = 3600.0,
) -> dict[str, Any]:
    """Poll the status with a progress bar until the re-index has ended (see ``_ended``); the last status.
    CommandFailed after ``timeout`` seconds (the re-index goes on in the service)."""
    deadline = time.monotonic() + timeout
    status = _check(client.get(ROUTE))
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(status["state"], total=status["documents_total"] or None)
        while True:
            progress.update(
                task,
                description=status["state"],
                completed=status["documents_done"],
                total=status["documents_total"] or None,
            )
            if _ended(status, wanted, before, since):
                return status
            if time.monotonic() >= deadline:
                raise CommandFailed(
                    f"still {status['state']} after {timeout:.0f}s (it goes on in the service: `status --wait`)"
                )
            time.sleep(interval)
            status = _check(client.get(ROUTE))


def summary(status: dict[str, Any]) -> str:
    current = status.get("current") or {}
    line = (
        f"{status['state']}: serving {current.get('collection')} ({current.get('model')}, chunk "
        f"{current.get('chunk_size')}/{current.get('chunk_overlap')}); documents {status['documents_done']}/"
        f"{status['documents_total']}, replayed {status['documents_replayed']}"
    )
    if status.get("documents_without_text"):
        line += f", without kept text {status['documents_without_text']} (e.g. {', '.join(status['without_text'][:3])})"
    if status.get("resumed_from") and status["state"] != "interrupted":
        line += f"; resumes the build {status['resumed_from']} left when it died (attempt {status.get('attempt')})"
    if status.get("error"):
        line += f"; error: {status['error']}"
    if status.get("chosen_by") and status["chosen_by"] != "config":
        pinned = status.get("pinned_settings") or {}
        line += (
            f"; chosen by an operator ({status['chosen_by']}) against the deployed chunk "
            f"{pinned.get('chunk_size')}/{pinned.get('chunk_overlap')}: kept until the settings change"
        )
    if status.get("startup"):
        line += f"; at start-up: {status['startup']}"
    return line


def run(args: argparse.Namespace, client: httpx.Client, console: Console) -> int:
    wanted = before = since = None
    if args.command == "start":
        body: dict[str, Any] = {"allow_missing": args.allow_missing}
        for key in ("model", "chunk_size", "chunk_overlap"):
            if getattr(args, key) is not None:
                body[key] = getattr(args, key)
        # With --wait: the collection the pointer names now, which the switch moves it off (even for a
        # re-index of the same settings).
        if args.wait:
            before = (_check(client.get(ROUTE)).get("serving") or {}).get("collection")
        status = _check(client.post(ROUTE, json=body))
        wanted = _settings(status.get("target"))
        since = _started(status)
    elif args.command == "rollback":
        status = _check(client.post(f"{ROUTE}/rollback"))
    else:
        status = _check(client.get(ROUTE))
    if getattr(args, "wait", False):
        status = watch(
            client, console, args.interval, wanted=wanted, before=before, since=since, timeout=args.timeout
        )
    console.print(summary(status))
    if wanted is not None and getattr(args, "wait", False):
        return 0 if _switched(status, wanted, before) else 1
    return 1 if status["state"] in ("failed", "interrupted") else 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m service.reindex", description=__doc__.splitlines()[0])
    root.add_argument("--url", default=os.environ.get("SERVICE_URL", "http://127.0.0.1:8000"))
    root.add_argument(
        "--key", default=os.environ.get("ADMIN_API_KEY"), help="admin key (default $ADMIN_API_KEY)"
    )
    root.add_argument("--interval", type=float, default=2.0, help="seconds between status polls with --wait")
    root.add_argument("--timeout", type=float, default=3600.0, help="seconds --wait follows before giving up")
    # The same options after the sub-command (`start --url URL`, as `ragops reindex` takes them): SUPPRESS keeps a
    # sub-command that does not repeat them from overwriting the values given (or defaulted) before it.
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument("--url", default=argparse.SUPPRESS, help="the service's URL ($SERVICE_URL)")
    connection.add_argument("--key", default=argparse.SUPPRESS, help="admin key (default $ADMIN_API_KEY)")
    connection.add_argument("--interval", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    connection.add_argument("--timeout", type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = root.add_subparsers(dest="command", required=True)
    start = commands.add_parser(
        "start", parents=[connection], help="build the index for a new model/chunking, then switch"
    )
    start.add_argument("--model")
    start.add_argument("--chunk-size", type=int)
    start.add_argument("--chunk-overlap", type=int)
    start.add_argument("--allow-missing", action="store_true", help="switch even if some texts are not kept")
    start.add_argument("--wait", action="store_true", help="show progress until it switches or fails")
    status = commands.add_parser("status", parents=[connection], help="state and progress")
    status.add_argument("--wait", action="store_true", help="follow a running re-index to its end")
    commands.add_parser("rollback", parents=[connection], help="serve from the previous index again")
    return root


def main(argv: list[str] | None = None, client: httpx.Client | None = None) -> int:
    args = parser().parse_args(argv)
    console = Console(stderr=False)
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    owned = client is None
    http = client or httpx.Client(base_url=args.url, headers=headers, timeout=60)
    try:
        return run(args, http, console)
    except CommandFailed as exc:
        console.print(f"[red]error[/red]: {exc}")
        return 1
    except httpx.HTTPError as exc:
        console.print(f"[red]error[/red]: cannot reach {args.url}: {exc}")
        return 1
    finally:
        if owned:
            http.close()


if __name__ == "__main__":
    sys.exit(main())
