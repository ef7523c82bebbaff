"""A destroy deletes what routes to the API's Service before the Service (REVIEW9 R9).

The engine deletes in reverse wait-for order (pulumi/pulumi `pkg/resource/graph`), and pulumi-kubernetes waits
until a deleted object is gone (await.go `Deletion`): the Gateway goes only once GKE's Gateway controller has torn
its load balancer down (its finalizer). The HTTPRoute and GKE's HealthCheckPolicy name the Service by string and
the Gateway not at all, so nothing ordered them: a destroy could delete the Service while the load balancer's
backend service still used its NEGs, and GKE's NEG controller retried their deletion until the load balancer was
gone (or the cluster went first: docs/operations.md "NEGs left in the network"). The TLS entry is declared before
the service (the registry needs its cert-manager), so the program hands it the Service as an awaitable
(`stack.declared_later`), which a failing program must settle so that the SDK does not wait for it forever.
"""

from __future__ import annotations

import pytest

from infra import stack
from infra.deployability import Graph
from infra.offline import StackRun, run_stack
from tests.infra.conftest import run, target_overrides

SERVICE = "rag-service"
ROUTING = {"gateway-gateway", "gateway-route", "gateway-redirect-route", "gateway-health-check-policy"}


def _routing(result: StackRun) -> list:
    return [r for r in result.resources if r.name in ROUTING or r.name == "gateway-ingress"]


@pytest.mark.parametrize(
    ("stack_name", "target"),
    [
        ("dev", "gke"),
        ("staging", "gke"),
        ("prod", "gke"),
        ("dev", "eks"),
        ("prod", "eks"),
        ("dev", "existing"),
    ],
)
def test_everything_that_routes_to_the_service_is_deleted_before_it(stack_name: str, target: str) -> None:
    result = run(stack_name, target)
    service = result.by_name(SERVICE)
    graph = Graph(result)
    routing = _routing(result)
    names = {r.name for r in routing}
    assert {"gateway-gateway", "gateway-route"} <= names
    if target == "gke":
        # It targets the Service (GKE's health check of its NEGs).
        assert "gateway-health-check-policy" in names
    for resource in routing:
        # A wait-for edge: the engine deletes `resource` (and waits for it to be gone) before the Service.
        assert service.urn in graph.closure(resource.urn), resource.name
    # The direct edges the recorded state carries (what a `pulumi destroy`, which runs no program, reads).
    for name in ("gateway-gateway", "gateway-route"):
        assert service.urn in result.by_name(name).depends_on, name
    # Nothing the Service waits for routes to it (no cycle: the Service is created first).
    assert not {r.urn for r in routing} & graph.closure(service.urn)


def test_the_ingress_entry_is_deleted_before_the_service_too() -> None:
    result = run("dev", "gke", gateway={"ingress": {"enabled": True}})
    ingress, service = result.by_name("gateway-ingress"), result.by_name(SERVICE)
    assert service.urn in ingress.depends_on


def test_a_program_failing_after_the_gateway_ends_with_its_own_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry's registration waits for the Service the program declares later; the SDK waits for every pending
    registration after a failure (`run_pulumi_func`), so an unsettled wait hung the `up`, and a settled-with-error
    one replaced the program's message."""

    class Refused(RuntimeError):
        pass

    def refused(*_args: object, **_kwargs: object) -> None:
        raise Refused("refused here on purpose")

    monkeypatch.setattr(stack, "RagService", refused)
    with pytest.raises(Refused, match="refused here on purpose"):
        run_stack("dev", config_overrides=target_overrides("dev", "gke"))
