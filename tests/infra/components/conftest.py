"""Fixtures for the component tests: run a few components under Pulumi mocks and record every registration.

`run_components(build)` calls `build()` inside a mocked Pulumi program and returns a `Program` holding each
registered resource (type, name, parent URN, protect flag, dependencies, inputs, secret input paths) plus whatever
`build` returned, with helpers to resolve Outputs and check whether they are secret.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pytest
from google.protobuf import json_format
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from infra.offline import kubernetes_id, kubernetes_read_target, parse_fq_name

SECRET_SIG = rpc._special_sig_key
SECRET_VALUE = rpc._special_secret_sig


@dataclass
class Registered:
    """One resource registration seen by the mock monitor."""

    type: str
    name: str
    urn: str
    custom: bool
    parent: str
    protect: bool
    depends_on: tuple[str, ...]
    provider: str
    inputs: dict[str, Any]
    secret_paths: frozenset[str]


@dataclass
class Program:
    """What one mocked run registered, and what `build` returned."""

    resources: list[Registered] = field(default_factory=list)
    result: Any = None

    def by_type(self, type_: str) -> list[Registered]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, name: str | None = None) -> Registered:
        found = [r for r in self.by_type(type_) if name is None or r.name == name]
        assert len(found) == 1, f"expected one {type_} {name or ''}, got {[r.name for r in found]}"
        return found[0]

    def named(self, name: str) -> Registered:
        found = [r for r in self.resources if r.name == name]
        assert len(found) == 1, f"expected one resource named {name}, got {len(found)}"
        return found[0]

    def urn_of(self, name: str) -> str:
        return self.named(name).urn

    def types(self) -> set[str]:
        return {r.type for r in self.resources}


def _unwrap(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get(SECRET_SIG) == SECRET_VALUE:
            return _unwrap(value.get("value"))
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def _secret_paths(value: Any, path: str = "") -> Iterator[str]:
    if isinstance(value, dict):
        if value.get(SECRET_SIG) == SECRET_VALUE:
            yield path or "."
            return
        for key, item in value.items():
            yield from _secret_paths(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _secret_paths(item, f"{path}[{index}]")


class _Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        state = dict(args.inputs)
        # Cloud resources whose outputs the components read: give them plausible values.
        if args.typ == "aws:rds/instance:Instance":
            state.setdefault("address", f"{args.name}.abc.eu-west-1.rds.amazonaws.com")
            state.setdefault("port", 5432)
        if args.typ == "aws:elasticache/replicationGroup:ReplicationGroup":
            state.setdefault("primaryEndpointAddress", f"master.{args.name}.cache.amazonaws.com")
        if args.typ == "gcp:redis/instance:Instance":
            state.setdefault("host", "10.0.0.5")
            state.setdefault("port", 6379)
            state.setdefault("authString", "memorystore-auth")
        if args.typ == "gcp:sql/databaseInstance:DatabaseInstance":
            state.setdefault("privateIpAddress", "10.0.0.7")
            state.setdefault("connectionName", f"proj:region:{args.name}")
        if args.typ == "docker-build:index:Image":
            state.setdefault("digest", "sha256:" + "ab" * 32)
        if args.typ == "random:index/randomPassword:RandomPassword":
            state.setdefault("result", f"random-{args.name}"[: int(state.get("length", 32))])
        if args.typ in ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2"):
            state.setdefault("bucket", state.get("bucket") or f"{args.name}-bucket")
            state.setdefault("arn", f"arn:aws:s3:::{state['bucket']}")
        if args.resource_id:
            # A read: resolved and refused where pulumi-kubernetes would (REVIEW10 F0), as the stack runs do.
            if args.typ.startswith("kubernetes:"):
                namespace, object_name = kubernetes_read_target(state, args.resource_id)
                id_namespace = parse_fq_name(args.resource_id)[0]
                if id_namespace and (namespace or "default") != id_namespace:
                    raise RuntimeError(
                        f"resource '{args.resource_id}' does not exist: pulumi-kubernetes looks for {object_name} "
                        f"in `{namespace or 'default'}`"
                    )
            return args.resource_id, state
        # Kubernetes objects get pulumi-kubernetes' ids (`<namespace>/<name>`), as in infra/offline.py.
        return kubernetes_id(args.typ, state) or f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        return {}


class RecordingMonitor(MockMonitor):
    """A mock monitor that keeps every registration request (parent, protect, dependencies, secrets)."""

    def __init__(self) -> None:
        super().__init__(_Mocks())
        self.registered: list[Registered] = []

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            return response
        raw = json_format.MessageToDict(request.object)
        self.registered.append(
            Registered(
                type=request.type,
                name=request.name,
                urn=response.urn,
                custom=bool(request.custom),
                parent=request.parent,
                protect=bool(request.protect),
                depends_on=tuple(request.dependencies),
                provider=request.provider,
                inputs=_unwrap(rpc.deserialize_properties(request.object)),
                secret_paths=frozenset(_secret_paths(raw)),
            )
        )
        return response


def run_components(build: Callable[[], Any], *, stack: str = "dev") -> Program:
    """Run `build()` as a Pulumi program under mocks; return the recorded registrations and its result."""
    monitor = RecordingMonitor()
    # The SDK schedules on the thread's current event loop; `infra.offline.run_stack` closes and unsets its own
    # after each run, so a component test that runs after a stack test needs a loop of its own (and one that
    # already has a loop keeps it: Outputs it made before this call live on it).
    try:
        loop = asyncio.get_event_loop_policy().get_event_loop()
        if loop.is_closed():
            raise RuntimeError("closed")
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    pulumi.runtime.set_mocks(_Mocks(), project="rag", stack=stack, preview=False, monitor=monitor)
    program = Program()

    def body() -> None:
        program.result = build()

    _sync_await(run_pulumi_func(body))
    program.resources = list(monitor.registered)
    return program


def resolve(output: Any) -> Any:
    """The resolved value of an Output (or a plain value) after a mocked run."""
    return _sync_await(pulumi.Output.from_input(output).future())


def is_secret(output: Any) -> bool:
    """Whether an Output is marked secret."""
    return bool(_sync_await(pulumi.Output.from_input(output).is_secret()))


@pytest.fixture
def run() -> Callable[..., Program]:
    """The `run_components` helper as a fixture."""
    return run_components


def assert_all_parented(program: Program, component_type: str) -> Registered:
    """Exactly one component of `component_type` exists and every other resource is its descendant."""
    component = program.one(component_type)
    urns = {r.urn for r in program.resources}
    for res in program.resources:
        if res is component:
            continue
        assert res.parent in urns, f"{res.type} {res.name} is not parented inside the component"
        assert res.name.startswith(f"{component.name}-"), f"{res.name} does not start with {component.name}-"
    return component


def _ints(value: Any) -> Any:
    # The mock runtime decodes every number as float; manifests carry integers.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


def manifest(res: Registered) -> dict[str, Any]:
    """The Kubernetes manifest a recorded resource applies."""
    return _ints({k: v for k, v in res.inputs.items() if not k.startswith("__")})


def validate_manifests(program: Program, version: str = "1.33.0") -> int:
    """Validate every built-in Kubernetes resource strictly (CRD kinds are checked by their own tests)."""
    import kubernetes_validate

    count = 0
    for res in program.resources:
        if (
            not res.custom
            or not res.type.startswith("kubernetes:")
            or res.type.startswith("kubernetes:helm.sh")
        ):
            continue
        doc = manifest(res)
        if "." in doc["apiVersion"].split("/")[0] and not doc["apiVersion"].startswith(
            ("apps/", "policy/", "batch/", "autoscaling/", "networking.k8s.io/", "rbac.authorization.k8s.io/")
        ):
            continue  # a CustomResource
        kubernetes_validate.validate(doc, version, strict=True)
        count += 1
    return count
