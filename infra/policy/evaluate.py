"""Run the policy list on recorded resources, the way the Pulumi CLI's analyzer would.

``infra.offline.run_stack`` records every resource the program registers; this module turns each into the same
``ResourceValidationArgs`` / ``StackValidationArgs`` objects pulumi-policy's analyzer builds (inputs wrapped in its
unknown-checking proxy, options in ``PolicyResourceOptions``) and collects what the rules report. Nothing here
starts the gRPC policy server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pulumi_policy import (
    EnforcementLevel,
    PolicyCustomTimeouts,
    PolicyProviderResource,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import unknown_checking_proxy

from infra.policy.rules import POLICIES


class Recorded(Protocol):
    """The fields of ``infra.offline.RecordedResource`` the policies read."""

    type: str
    name: str
    urn: str
    inputs: dict[str, Any]
    parent: str | None
    protect: bool
    provider: str | None
    depends_on: tuple[str, ...]


@dataclass(frozen=True)
class Violation:
    """One reported policy violation."""

    policy: str
    message: str
    urn: str | None
    enforcement: str

    def __str__(self) -> str:
        return f"[{self.enforcement}] {self.policy}: {self.message}"


def _options(resource: Recorded) -> PolicyResourceOptions:
    return PolicyResourceOptions(
        protect=resource.protect,
        ignore_changes=[],
        delete_before_replace=None,
        aliases=[],
        custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
        additional_secret_outputs=[],
        parent=resource.parent,
    )


def _provider(resource: Recorded) -> PolicyProviderResource | None:
    # A provider reference is "<provider URN>::<id>"; a URN is "urn:pulumi:<stack>::<project>::<type>::<name>".
    if not resource.provider:
        return None
    parts = resource.provider.split("::")
    if len(parts) < 4:
        return PolicyProviderResource("pulumi:providers:unknown", {}, resource.provider, resource.provider)
    return PolicyProviderResource(parts[2].rsplit("$", 1)[-1], {}, "::".join(parts[:4]), parts[3])


def resource_args(resource: Recorded, config: Mapping[str, Any] | None = None) -> ResourceValidationArgs:
    """The ``ResourceValidationArgs`` the analyzer would pass a resource policy for this resource."""
    return ResourceValidationArgs(
        resource.type,
        unknown_checking_proxy(dict(resource.inputs)),
        resource.urn,
        resource.name,
        _options(resource),
        _provider(resource),
        dict(config or {}),
    )


def stack_args(resources: Sequence[Recorded], config: Mapping[str, Any] | None = None) -> StackValidationArgs:
    """The ``StackValidationArgs`` the analyzer would pass a stack policy, parents and dependencies linked."""
    policy_resources = {
        r.urn: PolicyResource(
            r.type,
            unknown_checking_proxy(dict(r.inputs)),
            r.urn,
            r.name,
            _options(r),
            _provider(r),
            None,
            [],
            {},
        )
        for r in resources
    }
    for r in resources:
        pr = policy_resources[r.urn]
        if r.parent in policy_resources:
            pr.parent = policy_resources[r.parent]
        pr.dependencies.extend(policy_resources[d] for d in r.depends_on if d in policy_resources)
    return StackValidationArgs(list(policy_resources.values()), dict(config or {}))


def _level(policy: ResourceValidationPolicy | StackValidationPolicy) -> str:
    return (policy.enforcement_level or EnforcementLevel.ADVISORY).value


def run_policies(
    resources: Iterable[Recorded],
    *,
    environment: str,
    policies: Sequence[ResourceValidationPolicy | StackValidationPolicy] = POLICIES,
) -> list[Violation]:
    """Every violation the policies report for these resources in ``environment``."""
    resources = [r for r in resources if r.urn]
    config = {"environment": environment}
    violations: list[Violation] = []
    for policy in policies:
        if isinstance(policy, StackValidationPolicy):
            policy.validate(stack_args(resources, config), _collector(violations, policy, None))
            continue
        for resource in resources:
            policy.validate(resource_args(resource, config), _collector(violations, policy, resource.urn))
    return violations


def _collector(
    into: list[Violation], policy: ResourceValidationPolicy | StackValidationPolicy, default_urn: str | None
) -> Callable[..., None]:
    """A ``report_violation`` that records into ``into``, attributing resource-policy reports to the resource."""

    def report_violation(message: str, urn: str | None = None) -> None:
        into.append(Violation(policy.name, message, urn or default_urn, _level(policy)))

    return report_violation
