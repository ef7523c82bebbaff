"""A fake Pulumi CLI for the workflow tests: an in-memory backend behind a ``PulumiCommand`` subclass.

The Automation API builds the exact argv it would hand the real ``pulumi`` binary and calls
``PulumiCommand.run``; this fake records that argv, plays the backend's part (stacks, config, outputs, history,
locks) and streams engine events to the ``--event-log`` endpoint exactly like the CLI does: over gRPC for a
CLI newer than 3.205 (the version we report), else as JSON lines into the file. Failures come back as non-zero
results turned into the SDK's own typed errors (``create_command_error``), so the code under test sees what it
would see from the real CLI.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from pulumi.automation import CommandResult, PulumiCommand
from pulumi.automation.errors import create_command_error
from pulumi.runtime.proto import events_pb2, events_pb2_grpc
from semver import VersionInfo

DIGEST = "registry.example.com/rag/service@sha256:" + "ab" * 32
SECRET = "[secret]"
API_KEY = "k" * 40  # the generated service API key a fake `up` exports (secret output apiKeys)


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


@dataclass
class FakeStack:
    """One stack in the fake backend."""

    name: str
    config: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    secret_outputs: set[str] = field(default_factory=set)
    resources: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set_config(self, key: str, value: Any, secret: bool = False) -> None:
        """Store a value the way the CLI reports it (objects carry objectValue)."""
        if isinstance(value, str):
            self.config[key] = {"value": value, "secret": secret}
        else:
            self.config[key] = {"value": json.dumps(value), "objectValue": value, "secret": secret}

    def config_value(self, key: str) -> Any:
        """The natural value of a config key."""
        entry = self.config[key]
        return entry["objectValue"] if "objectValue" in entry else entry["value"]


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
    up_interrupt: bool = False  # raise KeyboardInterrupt mid-up (Ctrl-C)
    up_sigterm: bool = False  # the process receives SIGTERM mid-up (a cancelled CI job)
    up_resources: int = 12
    up_outputs: dict[str, Any] = field(default_factory=dict)  # outputs to export beyond the defaults below
    destroy_error: str | None = None
    refresh_events: list[dict[str, Any]] = field(default_factory=list)
    refresh_summary: dict[str, int] = field(default_factory=lambda: {"same": 12})
    refresh_error: str | None = None  # a refresh that fails for reasons other than drift


class FakeBackend:
    """State shared by every FakePulumi that talks to it (like one file/S3 backend shared by machines)."""

    def __init__(self) -> None:
        self.stacks: dict[str, FakeStack] = {}
        self.scripts: dict[str, Script] = {}
        self.calls: list[list[str]] = []
        self.mutex = threading.RLock()
        # Called with (operation, stack) while an operation holds the stack's lock: lets tests interleave
        # concurrent reapers deterministically.
        self.during: Callable[[str, str], None] | None = None

    def add_stack(
        self,
        name: str,
        config: Mapping[str, Any] | None = None,
        outputs: Mapping[str, Any] | None = None,
        resources: int = 12,
    ) -> FakeStack:
        """Create a stack as if it had been deployed before."""
        stack = FakeStack(name=name, outputs=dict(outputs or {}), resources=resources)
        for key, value in (config or {}).items():
            stack.set_config(key, value)
        if resources:
            stack.history.append(_history("update", {"create": resources}))
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

    def command(self, version: VersionInfo | None = None) -> FakePulumi:
        """A PulumiCommand bound to this backend (a CLI <= 3.205 gets its events through a log file)."""
        return FakePulumi(self, version)


class FakePulumi(PulumiCommand):
    """The injected ``pulumi_command``: records argv and answers like the CLI."""

    def __init__(self, backend: FakeBackend, version: VersionInfo | None = None) -> None:
        # No super().__init__: it would run `pulumi version`.
        self.command = "pulumi"
        self.version = version or VersionInfo(3, 272, 0)
        self.backend = backend

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
        stdout, stderr, code = _Handler(self.backend, [a for a in args if a != "--non-interactive"]).handle()
        for line in stdout.splitlines():
            if on_output:
                on_output(line)
        result = CommandResult(stdout=stdout, stderr=stderr, code=code)
        if code != 0:
            raise create_command_error(result)
        return result


def _history(kind: str, changes: Mapping[str, int], result: str = "succeeded") -> dict[str, Any]:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "kind": kind,
        "startTime": stamp,
        "endTime": stamp,
        "message": "",
        "environment": {},
        "config": {},
        "result": result,
        "resourceChanges": dict(changes),
        "version": 1,
    }


def _not_found(name: str) -> tuple[str, str, int]:
    return "", f"error: no stack named '{name}' found", 255


def _locked(name: str) -> tuple[str, str, int]:
    return (
        "",
        f"error: the stack is currently locked by 1 lock(s). Either wait for the other process(es) to end or "
        f"delete the lock file with `pulumi cancel`.\n  file:///state/.pulumi/locks/rag/{name}/x.json: "
        "created by reaper@ci (pid 4242) at 2026-01-01T00:00:00Z",
        255,
    )


class _Handler:
    def __init__(self, backend: FakeBackend, args: list[str]) -> None:
        self.b = backend
        self.args = args
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
        if a[:2] == ["config", "set-all"]:
            return lambda stack: self._set_all(stack, json.loads(str(self._opt("--json"))))
        if a[0] == "config" and "--json" in a:
            return self._config
        if a[0] == "preview":
            return self._preview
        if a[0] in ("up", "destroy"):
            return lambda stack: self._engine_op(stack, a[0])
        if a[0] == "refresh":
            return self._refresh
        raise AssertionError(f"the fake pulumi does not know {a}")

    def _stack(self) -> FakeStack | None:
        with self.b.mutex:
            return self.b.stacks.get(str(self.stack_name))

    def _init(self, name: str) -> tuple[str, str, int]:
        with self.b.mutex:
            if name in self.b.stacks:
                return "", f"error: stack '{name}' already exists", 255
            self.b.stacks[name] = FakeStack(name=name)
        return f"Created stack '{name}'", "", 0

    def _rm(self, name: str, force: bool) -> tuple[str, str, int]:
        with self.b.mutex:
            stack = self.b.stacks.get(name)
            if stack is None:
                return _not_found(name)
            if stack.resources and not force:
                return "", f"error: '{name}' still has resources; removal rejected", 255
            if stack.lock.locked():
                return _locked(name)
            del self.b.stacks[name]
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
        return json.dumps(list(reversed(stack.history))[:1]), "", 0

    def _config(self, stack: FakeStack) -> tuple[str, str, int]:
        return json.dumps(stack.config), "", 0

    def _set_all(self, stack: FakeStack, entries: Mapping[str, Mapping[str, Any]]) -> tuple[str, str, int]:
        with self.b.mutex:
            for key, entry in entries.items():
                stack.config[key] = dict(entry)
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
        summary = {
            "summaryEvent": {
                "maybeCorrupt": False,
                "durationSeconds": 1,
                "resourceChanges": script.preview_summary,
            }
        }
        if script.preview_error is not None:
            self._emit(script.preview_events)
            return script.preview_stdout, script.preview_error, 255
        self._emit([*script.preview_events, summary])
        return script.preview_stdout, "", 0

    def _refresh(self, stack: FakeStack) -> tuple[str, str, int]:
        script = self.b.script(stack.name)
        if script.refresh_error is not None:
            return "", script.refresh_error, 255
        summary = {"summaryEvent": {"resourceChanges": script.refresh_summary}}
        self._emit([*script.refresh_events, summary])
        drifted = any(n for op, n in script.refresh_summary.items() if op != "same")
        if drifted and "--expect-no-changes" in self.args:
            return "Refreshing (stack)", "error: no changes were expected but changes were proposed", 255
        return "Refreshing (stack)", "", 0

    def _engine_op(self, stack: FakeStack, op: str) -> tuple[str, str, int]:
        if not stack.lock.acquire(blocking=False):
            return _locked(stack.name)
        try:
            if self.b.during is not None:
                self.b.during(op, stack.name)
            script = self.b.script(stack.name)
            if op == "up":
                return self._up(stack, script)
            return self._destroy(stack, script)
        finally:
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
        if script.up_error is not None:
            stack.history.append(_history("update", {"create": 3}, "failed"))
            return "Updating (stack)", script.up_error, 255
        stack.resources = script.up_resources
        image = stack.config.get("rag:image", {}).get("value") or DIGEST
        stack.outputs = {
            "serviceUrl": f"https://{stack.name}.rag.example.com",
            "imageDigest": image,
            "kubeconfig": "apiVersion: v1",
            "promotion": stack.config_value("rag:promotion") if "rag:promotion" in stack.config else None,
            "ephemeral": stack.config_value("rag:ephemeral") if "rag:ephemeral" in stack.config else None,
            "apiKeys": json.dumps({API_KEY: "default"}),
            "tlsIssuer": "selfSigned",
            **script.up_outputs,
        }
        stack.secret_outputs = {"kubeconfig", "apiKeys", "grafanaAdminPassword"}
        stack.history.append(_history("update", {"create": script.up_resources}))
        return "Updating (stack)\nResources:\n    + 12 created", "", 0

    def _destroy(self, stack: FakeStack, script: Script) -> tuple[str, str, int]:
        self._emit([step_event("delete", "ns", "kubernetes:core/v1:Namespace")])
        if script.destroy_error is not None:
            return "Destroying (stack)", script.destroy_error, 255
        stack.history.append(_history("destroy", {"delete": stack.resources}))
        stack.resources = 0
        stack.outputs = {}
        return "Destroying (stack)\nResources:\n    - deleted", "", 0
