"""A fake Pulumi CLI for the workflow tests: an in-memory backend behind a ``PulumiCommand`` subclass.

The Automation API builds the exact argv it would hand the real ``pulumi`` binary and calls
``PulumiCommand.run``; this fake records that argv, plays the backend's part (stacks, outputs, history, locks)
and streams engine events to the ``--event-log`` endpoint exactly like the CLI does: over gRPC for a
CLI newer than 3.205 (the version we report), else as JSON lines into the file. Failures come back as non-zero
results turned into the SDK's own typed errors (``create_command_error``), so the code under test sees what it
would see from the real CLI.

Config lives where a self-managed (file/S3/GCS) backend keeps it: in ``Pulumi.<stack>.yaml`` in the *working
directory* of the command (``config set-all`` writes it, ``config --json`` reads it, ``stack rm`` deletes it),
not in the backend. Two CI jobs are two checkouts: what one job writes there, the other never sees. What the
backend does keep is the config each ``up``/``destroy`` ran with, in its history (pulumi/pulumi
``pkg/backend/diy/backend.go`` ``apply``: ``UpdateInfo.Config``), and ``config refresh --force`` writes the
latest of those back into the working directory's stack file (``GetLatestConfiguration``).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import yaml
from pulumi.automation import CommandResult, PulumiCommand
from pulumi.automation.errors import create_command_error
from pulumi.runtime.proto import events_pb2, events_pb2_grpc
from semver import VersionInfo

DIGEST = "registry.example.com/rag/service@sha256:" + "ab" * 32
SECRET = "[secret]"
API_KEY = "k" * 40  # the generated service API key a fake `up` exports (secret output apiKeys)


def registry_ref(stack: str, ref: str) -> str:
    """Where a stack deploys a promoted ``ref`` from: its own registry (``registry.example.com/<stack>``), same digest."""
    return f"registry.example.com/{stack}/rag-service@{ref.rsplit('@', 1)[1]}"


def step_event(
    op: str, urn_name: str, type_: str = "kubernetes:apps/v1:Deployment", diffs: list[str] | None = None
):
    """A resourcePreEvent as the engine writes it."""
    urn = f"urn:pulumi:stack::rag::{type_}::{urn_name}"
    return {
        "resourcePreEvent": {
            "metadata": {"op": op, "urn": urn, "type": type_, "provider": "", "diffs": diffs}
        }
    }


def outputs_event(
    op: str, urn_name: str, type_: str = "kubernetes:apps/v1:Deployment", diffs: list[str] | None = None
):
    """A resOutputsEvent as the engine writes it."""
    event = step_event(op, urn_name, type_, diffs)
    return {"resOutputsEvent": event["resourcePreEvent"]}


def policy_event(
    policy: str, message: str, level: str = "mandatory", urn_name: str = "svc"
) -> dict[str, Any]:
    """A policyEvent (a CrossGuard finding)."""
    return {
        "policyEvent": {
            "resourceUrn": f"urn:pulumi:stack::rag::kubernetes:apps/v1:Deployment::{urn_name}",
            "message": message,
            "color": "never",
            "policyName": policy,
            "policyPackName": "rag-policies",
            "policyPackVersion": "0.1.0",
            "enforcementLevel": level,
        }
    }


def stack_file(work_dir: Path, stack: str) -> Path:
    """The stack's config file in a working directory (a checkout)."""
    return Path(work_dir) / f"Pulumi.{stack}.yaml"


def read_config(work_dir: Path, stack: str) -> dict[str, dict[str, Any]]:
    """The stack file's config as ``pulumi config --show-secrets --json`` prints it ({} without a file)."""
    path = stack_file(work_dir, stack)
    if not path.is_file():
        return {}
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries: dict[str, dict[str, Any]] = {}
    for key, raw in (doc.get("config") or {}).items():
        if isinstance(raw, dict) and set(raw) == {"secure"}:
            cipher = str(raw["secure"])
            # Only our own "fake:" ciphertext decrypts; a real one (a committed stack file) stays opaque.
            plain = (
                base64.b64decode(cipher.removeprefix("fake:")).decode()
                if cipher.startswith("fake:")
                else cipher
            )
            entries[key] = {"value": plain, "secret": True}
        elif isinstance(raw, str):
            entries[key] = {"value": raw, "secret": False}
        else:
            entries[key] = {"value": json.dumps(raw), "objectValue": raw, "secret": False}
    return entries


def write_config(work_dir: Path, stack: str, entries: Mapping[str, Mapping[str, Any]]) -> None:
    """Write config entries (the ``--json`` shape) into the stack file, keeping its other top-level keys."""
    path = stack_file(work_dir, stack)
    doc = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}
    config: dict[str, Any] = {}
    for key, entry in entries.items():
        if entry.get("secret"):
            config[key] = {"secure": "fake:" + base64.b64encode(str(entry["value"]).encode()).decode()}
        elif "objectValue" in entry:
            config[key] = entry["objectValue"]
        else:
            config[key] = entry["value"]
    doc["config"] = config
    path.write_text(yaml.safe_dump(doc, sort_keys=True), encoding="utf-8")


def _entry(value: Any, secret: bool = False) -> dict[str, Any]:
    if isinstance(value, str):
        return {"value": value, "secret": secret}
    return {"value": json.dumps(value), "objectValue": value, "secret": secret}


@dataclass
class FakeStack:
    """One stack in the fake backend. ``config`` is its stack file in the backend's default checkout."""

    name: str
    work_dir: Path
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)
    resources: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The lock files of a self-managed backend: (user, host, pid, RFC 3339 time). The running operation's is added
    # while it holds `lock`; a killed one's stays behind until `pulumi cancel` deletes every file.
    lock_files: list[tuple[str, str, int, str]] = field(default_factory=list)
    # URNs of the resources `stack export` shows (the count above is what a history entry reports).
    urns: list[str] = field(default_factory=list)
    # Of those, the read-only ones (`ResourceOptions(id=...)`), which the state marks `"external": true`.
    external_urns: set[str] = field(default_factory=set)
    # Of those, the outputs `stack export` shows for some (URN -> outputs; the others export none).
    resource_outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, dict[str, Any]]:
        """The stack file's config in the default checkout (a copy: write through ``set_config``)."""
        return read_config(self.work_dir, self.name)

    def set_config(self, key: str, value: Any, secret: bool = False) -> None:
        """Store a value in the default checkout's stack file the way ``config set`` does."""
        entries = read_config(self.work_dir, self.name)
        entries[key] = _entry(value, secret)
        write_config(self.work_dir, self.name, entries)

    def config_value(self, key: str, work_dir: Path | None = None) -> Any:
        """The natural value of a config key in a checkout's stack file (the default checkout unless given)."""
        entry = read_config(work_dir or self.work_dir, self.name)[key]
        return entry["objectValue"] if "objectValue" in entry else entry["value"]

    def deployed_config(self) -> dict[str, dict[str, Any]]:
        """The config the latest update ran with (what ``config refresh`` restores); {} when never deployed."""
        return dict(self.history[-1]["config"]) if self.history else {}


@dataclass
class Script:
    """Scripted behaviour of one stack's engine operations."""

    preview_events: list[dict[str, Any]] = field(default_factory=list)
    preview_summary: dict[str, int] = field(default_factory=lambda: {"same": 12})
    preview_stdout: str = (
        "Previewing update (stack):\n  pulumi:pulumi:Stack rag-stack\nResources:\n    12 unchanged"
    )
    preview_error: str | None = None  # stderr of a failing preview
    up_error: str | None = None  # stderr of a failing up
    up_stdout: str = "Updating (stack)"  # stdout of a failing up (the display: a program's errors are here)
    up_interrupt: bool = False  # raise KeyboardInterrupt mid-up (Ctrl-C)
    up_sigterm: bool = False  # the process receives SIGTERM mid-up (a cancelled CI job)
    up_resources: int = 12
    up_outputs: dict[str, Any] = field(default_factory=dict)  # outputs to export beyond the defaults below
    destroy_error: str | None = None
    # The CLI is killed mid-destroy (a cancelled/timed-out CI step: SIGKILL of the process tree): its lock file
    # stays behind with this (host, pid), the resources stay, and the caller sees the process die.
    destroy_killed: tuple[str, int] | None = None
    refresh_events: list[dict[str, Any]] = field(default_factory=list)
    refresh_summary: dict[str, int] = field(default_factory=lambda: {"same": 12})
    refresh_error: str | None = None  # a refresh that fails for reasons other than drift
    # Read-only resources whose live object changed since the last update (a controller's status or annotation
    # write): the engine compares them by outputs and counts an `update` for each, unless `--exclude`d
    # (pulumi/pulumi pkg/resource/deploy/step.go `RefreshStep.ResultOp`).
    refresh_changed_reads: list[str] = field(default_factory=list)


class FakeBackend:
    """State shared by every FakePulumi that talks to it (like one file/S3 backend shared by machines)."""

    def __init__(self, work_dir: Path | None = None) -> None:
        # The default checkout: where `add_stack` writes a stack's file and `FakeStack.config` reads it.
        self.work_dir = (
            Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="fake-pulumi-"))
        )
        self.stacks: dict[str, FakeStack] = {}
        self.scripts: dict[str, Script] = {}
        self.calls: list[list[str]] = []
        self.mutex = threading.RLock()
        # What the backend stamps on a new lock file (a test pins it next to its Context clock).
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        # Called with (operation, stack) while an operation holds the stack's lock: lets tests interleave
        # concurrent reapers deterministically.
        self.during: Callable[[str, str], None] | None = None
        # What `pulumi whoami --json` answers as the backend's URL (pkg/cmd/pulumi/whoami.go).
        self.url = f"file://{self.work_dir}/.pulumi-state"

    def add_stack(
        self,
        name: str,
        config: Mapping[str, Any] | None = None,
        outputs: Mapping[str, Any] | None = None,
        resources: int = 12,
    ) -> FakeStack:
        """Create a stack as if it had been deployed before from the default checkout, with `config` in its file."""
        stack = FakeStack(name=name, work_dir=self.work_dir, outputs=dict(outputs or {}), resources=resources)
        if config is not None:
            write_config(self.work_dir, name, {key: _entry(value) for key, value in config.items()})
        entries = read_config(self.work_dir, name)
        if resources:
            stack.history.append(_history("update", {"create": resources}, config=entries))
        self.stacks[name] = stack
        return stack

    def script(self, name: str) -> Script:
        """The (mutable) script for a stack's engine operations."""
        return self.scripts.setdefault(name, Script())

    def commands(self, verb: str | None = None) -> list[list[str]]:
        """Recorded argv lists, minus the leading --non-interactive, event-log endpoints normalised."""
        out = []
        for argv in self.calls:
            args = [a for a in argv if a != "--non-interactive"]
            if "--event-log" in args:
                i = args.index("--event-log")
                args[i + 1] = "<event-log>"
            if verb is None or args[0] == verb:
                out.append(args)
        return out

    def command(
        self, version: VersionInfo | None = None, credentials: Collection[str] | None = None
    ) -> FakePulumi:
        """A PulumiCommand bound to this backend (a CLI <= 3.205 gets its events through a log file). With
        `credentials`, the job holds those stacks' credentials only (one GitHub environment's passphrase, cluster
        and cloud identity): a command on any other stack fails as the real CLI does with another stack's
        passphrase."""
        return FakePulumi(self, version, credentials)


class FakePulumi(PulumiCommand):
    """The injected ``pulumi_command``: records argv and answers like the CLI."""

    def __init__(
        self,
        backend: FakeBackend,
        version: VersionInfo | None = None,
        credentials: Collection[str] | None = None,
    ) -> None:
        # No super().__init__: it would run `pulumi version`.
        self.command = "pulumi"
        self.version = version or VersionInfo(3, 272, 0)
        self.backend = backend
        self.credentials = None if credentials is None else frozenset(credentials)

    def run(
        self,
        args: list[str],
        cwd: str,
        additional_env: Mapping[str, str],
        on_output: Callable[[str], Any] | None = None,
        on_error: Callable[[str], Any] | None = None,
    ) -> CommandResult:
        sep = args.index("--") if "--" in args else len(args)
        if "--non-interactive" not in args[:sep]:
            args.insert(0, "--non-interactive")  # what the real PulumiCommand.run does
        with self.backend.mutex:
            self.backend.calls.append(list(args))
        stack = args[args.index("--stack") + 1] if "--stack" in args[:sep] else None
        if self.credentials is not None and stack is not None and stack not in self.credentials:
            # pkg/secrets/passphrase: the stack's salt does not verify with this environment's passphrase.
            raise create_command_error(
                CommandResult(
                    stdout="",
                    stderr="error: incorrect passphrase, please set PULUMI_CONFIG_PASSPHRASE to the correct "
                    "passphrase or set PULUMI_CONFIG_PASSPHRASE_FILE to a file containing the passphrase\n",
                    code=255,
                )
            )
        handler = _Handler(self.backend, [a for a in args if a != "--non-interactive"], Path(cwd))
        stdout, stderr, code = handler.handle()
        for line in stdout.splitlines():
            if on_output:
                on_output(line)
        result = CommandResult(stdout=stdout, stderr=stderr, code=code)
        if code != 0:
            raise create_command_error(result)
        return result


def _history(
    kind: str,
    changes: Mapping[str, int],
    result: str = "succeeded",
    config: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "kind": kind,
        "startTime": stamp,
        "endTime": stamp,
        "message": "",
        "environment": {},
        "config": {key: dict(entry) for key, entry in (config or {}).items()},
        "result": result,
        "resourceChanges": dict(changes),
        "version": 1,
    }


def _embedding_output(config: Mapping[str, Any], natural: Callable[[str], Any]) -> dict[str, Any]:
    """The program's `embedding` output (infra/stack.py `embedding_output`) for a stack that sets rag:embedding."""
    embedding = natural("rag:embedding")
    if config.get("rag:image", {}).get("value"):
        promotion = natural("rag:promotion") if "rag:promotion" in config else {}
        image_models = promotion.get("models")
    else:
        image_models = [embedding["model"], *embedding.get("extraModels", [])]
    return {"model": embedding["model"], "imageModels": image_models}


def _config_diff(
    local: Mapping[str, Mapping[str, Any]], deployed: Mapping[str, Mapping[str, Any]]
) -> set[str]:
    """Keys whose value differs between a checkout's stack file and the deployed config (absent = empty)."""

    def natural(entries: Mapping[str, Mapping[str, Any]], key: str) -> Any:
        entry = entries.get(key) or {}
        value = entry.get("objectValue", entry.get("value", ""))
        return "" if value is None else value

    return {key for key in set(local) | set(deployed) if natural(local, key) != natural(deployed, key)}


def _not_found(name: str) -> tuple[str, str, int]:
    return "", f"error: no stack named '{name}' found", 255


def _locked(stack: FakeStack) -> tuple[str, str, int]:
    """pulumi/pulumi pkg/backend/diy/lock.go checkForLock's error, one line per lock file."""
    lines = "".join(
        f"\n  file:///state/.pulumi/locks/rag/{stack.name}/{i}.json: created by {user}@{host} (pid {pid}) at {at}"
        for i, (user, host, pid, at) in enumerate(stack.lock_files)
    )
    return (
        "",
        f"error: the stack is currently locked by {len(stack.lock_files)} lock(s). Either wait for the other "
        f"process(es) to end or delete the lock file with `pulumi cancel`.{lines}",
        255,
    )


class _Handler:
    def __init__(self, backend: FakeBackend, args: list[str], cwd: Path) -> None:
        self.b = backend
        self.args = args
        self.cwd = cwd
        self.stack_name = self._opt("--stack")

    def _opt(self, flag: str) -> str | None:
        if flag in self.args:
            return self.args[self.args.index(flag) + 1]
        return None

    def handle(self) -> tuple[str, str, int]:
        a = self.args
        if a[:2] == ["stack", "select"]:
            return ("", "", 0) if self.stack_name in self.b.stacks else _not_found(str(self.stack_name))
        if a[:2] == ["stack", "init"]:
            return self._init(a[2])
        if a[:2] == ["stack", "rm"]:
            return self._rm(a[-1], force="--force" in a)
        if a[:2] == ["stack", "ls"]:
            return self._ls()
        if a[0] == "whoami":
            return json.dumps({"user": "tester", "organizations": [], "url": self.b.url}), "", 0
        on_stack = self._on_stack(a)
        stack = self._stack()
        if stack is None:
            return _not_found(str(self.stack_name))
        return on_stack(stack)

    def _on_stack(self, a: list[str]) -> Callable[[FakeStack], tuple[str, str, int]]:
        """The handler of a command that acts on the existing `--stack` (the CLI fails the same way without it)."""
        if a[:2] == ["stack", "output"]:
            return lambda stack: self._outputs(stack, show_secrets="--show-secrets" in a)
        if a[:2] == ["stack", "history"]:
            return self._history
        if a[:2] == ["stack", "export"]:
            return self._export
        if a[:2] == ["config", "set-all"]:
            return lambda stack: self._set_all(stack, json.loads(str(self._opt("--json"))))
        if a[:2] == ["config", "refresh"]:
            return self._refresh_config
        if a[0] == "config" and "--json" in a:
            return self._config
        if a[0] == "preview":
            return self._preview
        if a[0] in ("up", "destroy"):
            return lambda stack: self._engine_op(stack, a[0])
        if a[0] == "refresh":
            return self._refresh
        if a[0] == "cancel":
            return self._cancel
        raise AssertionError(f"the fake pulumi does not know {a}")

    def _stack(self) -> FakeStack | None:
        with self.b.mutex:
            return self.b.stacks.get(str(self.stack_name))

    def _init(self, name: str) -> tuple[str, str, int]:
        with self.b.mutex:
            if name in self.b.stacks:
                return "", f"error: stack '{name}' already exists", 255
            self.b.stacks[name] = FakeStack(name=name, work_dir=self.b.work_dir)
        return f"Created stack '{name}'", "", 0

    def _rm(self, name: str, force: bool) -> tuple[str, str, int]:
        with self.b.mutex:
            stack = self.b.stacks.get(name)
            if stack is None:
                return _not_found(name)
            if stack.resources and not force:
                return "", f"error: '{name}' still has resources; removal rejected", 255
            if stack.lock_files:
                return _locked(stack)
            del self.b.stacks[name]
        # `pulumi stack rm` also deletes the stack's config file in the working directory.
        stack_file(self.cwd, name).unlink(missing_ok=True)
        return f"Stack '{name}' has been removed!", "", 0

    def _ls(self) -> tuple[str, str, int]:
        with self.b.mutex:
            rows = [
                {
                    "name": s.name,
                    "current": False,
                    "updateInProgress": s.lock.locked(),
                    "resourceCount": s.resources,
                }
                for s in self.b.stacks.values()
            ]
        return json.dumps(rows), "", 0

    def _outputs(self, stack: FakeStack, show_secrets: bool) -> tuple[str, str, int]:
        out = {
            k: (v if show_secrets or k not in stack.secret_outputs else SECRET)
            for k, v in stack.outputs.items()
        }
        return json.dumps(out), "", 0

    def _history(self, stack: FakeStack) -> tuple[str, str, int]:
        # Newest first, numbered from 1 (the oldest), a page at a time like `pulumi stack history --json`.
        entries = [{**entry, "version": i} for i, entry in enumerate(stack.history, start=1)][::-1]
        size = self._opt("--page-size")
        if size is not None:
            page = int(self._opt("--page") or 1)
            entries = entries[(page - 1) * int(size) : page * int(size)]
        return json.dumps(entries), "", 0

    def _export(self, stack: FakeStack) -> tuple[str, str, int]:
        resources = [
            {
                "urn": urn,
                # The resource's own type: the URN's type part ends with it (after the parents' types, `$`).
                "type": urn.split("::")[-2].rsplit("$", 1)[-1],
                **({"external": True} if urn in stack.external_urns else {}),
                **({"outputs": stack.resource_outputs[urn]} if urn in stack.resource_outputs else {}),
            }
            for urn in stack.urns
        ]
        return json.dumps({"version": 3, "deployment": {"manifest": {}, "resources": resources}}), "", 0

    def _config(self, stack: FakeStack) -> tuple[str, str, int]:
        return json.dumps(read_config(self.cwd, stack.name)), "", 0

    def _set_all(self, stack: FakeStack, entries: Mapping[str, Mapping[str, Any]]) -> tuple[str, str, int]:
        with self.b.mutex:
            config = read_config(self.cwd, stack.name)
            for key, entry in entries.items():
                config[key] = {k: v for k, v in entry.items() if k in ("value", "objectValue", "secret")}
            write_config(self.cwd, stack.name, config)
        return "", "", 0

    def _refresh_config(self, stack: FakeStack) -> tuple[str, str, int]:
        if "--force" not in self.args and stack_file(self.cwd, stack.name).is_file():
            return "", "error: config file already exists; use --force to overwrite", 255
        if not stack.history:
            return "", "error: no previous deployment", 255
        write_config(self.cwd, stack.name, stack.deployed_config())
        return "", "", 0

    def _emit(self, events: list[dict[str, Any]]) -> None:
        target = self._opt("--event-log")
        if target is None:
            return
        numbered = [
            {"sequence": i, "timestamp": 0, **e} for i, e in enumerate([*events, {"cancelEvent": {}}])
        ]
        if target.startswith("tcp://"):
            with grpc.insecure_channel(target.removeprefix("tcp://")) as channel:
                stub = events_pb2_grpc.EventsStub(channel)
                stub.StreamEvents(iter([events_pb2.EventRequest(event=json.dumps(e)) for e in numbered]))
        else:
            with open(target, "a", encoding="utf-8") as fh:
                fh.writelines(json.dumps(e) + "\n" for e in numbered)

    def _preview(self, stack: FakeStack) -> tuple[str, str, int]:
        script = self.b.script(stack.name)
        events, changes = script.preview_events, script.preview_summary
        drifted = _config_diff(read_config(self.cwd, stack.name), stack.deployed_config())
        if stack.history and drifted and not events:
            # The program runs with this checkout's stack file: config that differs from what the last update
            # ran with changes what is declared (an empty rag:image even builds), so the preview is not empty.
            events = [step_event("update", "rag", diffs=sorted(drifted))]
            changes = {"update": 1, "same": max(changes.get("same", 1) - 1, 0)}
        summary = {
            "summaryEvent": {
                "maybeCorrupt": False,
                "durationSeconds": 1,
                "resourceChanges": changes,
            }
        }
        if script.preview_error is not None:
            self._emit(events)
            return script.preview_stdout, script.preview_error, 255
        self._emit([*events, summary])
        return script.preview_stdout, "", 0

    def _refresh(self, stack: FakeStack) -> tuple[str, str, int]:
        script = self.b.script(stack.name)
        if script.refresh_error is not None:
            return "", script.refresh_error, 255
        excluded = {v for flag, v in zip(self.args, self.args[1:]) if flag == "--exclude"}
        reads = [urn for urn in script.refresh_changed_reads if urn not in excluded]
        changes = dict(script.refresh_summary)
        if reads:
            changes["update"] = changes.get("update", 0) + len(reads)
        read_events = [
            {
                "resourcePreEvent": {
                    "metadata": {"op": "refresh", "urn": urn, "type": urn.split("::")[-2], "provider": ""}
                }
            }
            for urn in reads
        ]
        summary = {"summaryEvent": {"resourceChanges": changes}}
        self._emit([*script.refresh_events, *read_events, summary])
        drifted = any(n for op, n in changes.items() if op != "same")
        if drifted and "--expect-no-changes" in self.args:
            return "Refreshing (stack)", "error: no changes were expected but changes were proposed", 255
        return "Refreshing (stack)", "", 0

    def _cancel(self, stack: FakeStack) -> tuple[str, str, int]:
        # pkg/backend/diy/backend.go CancelCurrentUpdate: delete every lock file of the stack (a live operation's
        # too: it would then finish without its lock, which is why ragops cancels only stale ones).
        assert "--yes" in self.args, "pulumi cancel asks for confirmation without --yes"
        with self.b.mutex:
            stack.lock_files = []
        return "The currently running update for 'stack' has been canceled!", "", 0

    def _engine_op(self, stack: FakeStack, op: str) -> tuple[str, str, int]:
        with self.b.mutex:
            if stack.lock_files or not stack.lock.acquire(blocking=False):
                return _locked(stack)
            mine = (
                "runner",
                socket.gethostname(),
                os.getpid(),
                self.b.clock().strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            stack.lock_files.append(mine)
        killed = False
        try:
            if self.b.during is not None:
                self.b.during(op, stack.name)
            script = self.b.script(stack.name)
            if op == "up":
                return self._up(stack, script)
            if script.destroy_killed is not None:
                killed = True
                host, pid = script.destroy_killed
                self._emit([step_event("delete", "ns", "kubernetes:core/v1:Namespace")])
                with self.b.mutex:
                    stack.lock_files[stack.lock_files.index(mine)] = ("runner", host, pid, mine[3])
                return "Destroying (stack)", "", -9
            return self._destroy(stack, script)
        finally:
            with self.b.mutex:
                if not killed and mine in stack.lock_files:
                    stack.lock_files.remove(mine)
                stack.lock.release()

    def _up(self, stack: FakeStack, script: Script) -> tuple[str, str, int]:
        # Resources appear before the failure/interrupt: a half-done update leaves something to tear down.
        stack.resources = max(stack.resources, 3)
        self._emit([step_event("create", "ns", "kubernetes:core/v1:Namespace")])
        if script.up_interrupt:
            raise KeyboardInterrupt
        if script.up_sigterm:
            # Without a handler SIGTERM would end the test run itself.
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None), (
                "no SIGTERM handler installed"
            )
            signal.raise_signal(signal.SIGTERM)
        config = read_config(self.cwd, stack.name)  # what this checkout's stack file says
        if script.up_error is not None:
            stack.history.append(_history("update", {"create": 3}, "failed", config))
            return script.up_stdout, script.up_error, 255
        stack.resources = script.up_resources
        promoted = config.get("rag:image", {}).get("value")
        # As the program does: a build's ref (in this stack's registry), or the promoted digest copied into this
        # stack's own registry (ServiceImage's copy): same digest, the target's repository.
        image = registry_ref(stack.name, promoted) if promoted else DIGEST

        def natural(key: str) -> Any:
            entry = config[key]
            return entry["objectValue"] if "objectValue" in entry else entry["value"]

        stack.outputs = {
            "serviceUrl": f"https://{stack.name}.rag.example.com",
            "imageDigest": image,
            "kubeconfig": "apiVersion: v1",
            "promotion": natural("rag:promotion") if "rag:promotion" in config else None,
            "ephemeral": natural("rag:ephemeral") if "rag:ephemeral" in config else None,
            "apiKeys": json.dumps({API_KEY: "default"}),
            "tlsIssuer": "selfSigned",
            **({"embedding": _embedding_output(config, natural)} if "rag:embedding" in config else {}),
            **script.up_outputs,
        }
        stack.secret_outputs = {"kubeconfig", "apiKeys", "grafanaAdminPassword"}
        stack.history.append(_history("update", {"create": script.up_resources}, config=config))
        stack.history[-1]["message"] = self._opt("--message") or ""
        return "Updating (stack)\nResources:\n    + 12 created", "", 0

    def _destroy(self, stack: FakeStack, script: Script) -> tuple[str, str, int]:
        self._emit([step_event("delete", "ns", "kubernetes:core/v1:Namespace")])
        if script.destroy_error is not None:
            return "Destroying (stack)", script.destroy_error, 255
        stack.history.append(
            _history("destroy", {"delete": stack.resources}, config=read_config(self.cwd, stack.name))
        )
        stack.resources = 0
        stack.outputs = {}
        return "Destroying (stack)\nResources:\n    - deleted", "", 0
