"""PR stacks share dev's cluster: dev plus two ephemeral stacks must not declare the same Kubernetes object twice.

The ephemeral stacks are made the way CI makes them: `ragops ephemeral up` (against the fake Pulumi backend) builds
their config from infra/workflows/ephemeral.template.yaml and writes it to the stack; that config then runs through
the real program offline (`infra.offline.run_stack`). Two stacks declaring one object would fight over it in a real
cluster (the second `pulumi up` fails, or worse, adopts and later deletes the first one's object).
"""

from __future__ import annotations

import shutil
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import render
from infra.offline import StackRun, run_stack
from infra.workflows import ephemeral
from infra.workflows.stacks import REPO_ROOT, Context
from tests.workflows.fake_pulumi import FakeBackend

HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
# Kinds without a namespace: one name per cluster. Every other kind must name its namespace explicitly (an object
# without one lands in whatever namespace the kubeconfig defaults to, shared by every stack).
CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "ClusterIssuer",
        "StorageClass",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "PriorityClass",
        "IngressClass",
        "GatewayClass",
        "PersistentVolume",
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
    }
)
PR_STACKS = ("pr-1", "pr-2")


def cluster_keys(run: StackRun) -> list[tuple[Any, ...]]:
    """What each Kubernetes object and Helm release of a run occupies in the cluster (one key per resource)."""
    keys: list[tuple[Any, ...]] = []
    for resource in run.resources:
        if not resource.custom or not resource.type.startswith("kubernetes:"):
            continue
        inputs = resource.inputs
        if resource.type == HELM_RELEASE:
            keys.append(("helm release", inputs["namespace"], inputs["name"]))
            continue
        kind = inputs["kind"]
        metadata = inputs["metadata"]
        assert metadata.get("name"), f"{resource.urn} has no explicit name"
        if kind in CLUSTER_SCOPED:
            assert "namespace" not in metadata, f"{resource.urn}: a {kind} has no namespace"
            keys.append(("cluster", kind, metadata["name"]))
        else:
            assert metadata.get("namespace"), f"{resource.urn}: a namespaced {kind} must name its namespace"
            keys.append(("namespaced", metadata["namespace"], kind, metadata["name"]))
    return keys


def collisions(*runs: StackRun) -> set[tuple[Any, ...]]:
    """Keys claimed by more than one resource across the runs."""
    counts = Counter(key for run in runs for key in cluster_keys(run))
    return {key for key, n in counts.items() if n > 1}


@pytest.fixture(scope="module")
def pr_configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The config `ragops ephemeral up` writes for pr-1 and pr-2 (template over the real Pulumi.dev.yaml)."""
    # A checkout of its own: `config set-all` writes Pulumi.pr-<n>.yaml into the working directory.
    checkout = tmp_path_factory.mktemp("checkout")
    for name in ("Pulumi.yaml", "Pulumi.dev.yaml"):
        shutil.copy(REPO_ROOT / name, checkout / name)
    backend = FakeBackend(checkout)
    ctx = Context(
        work_dir=checkout,
        pulumi_command=backend.command(),
        clock=lambda: datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
        actor=lambda: "octocat",
        check_build_daemon=lambda: (
            None
        ),  # a module fixture: the conftest's function-scoped no-op does not reach it
    )
    configs = {}
    for name in PR_STACKS:
        ephemeral.up(ctx, name, "24h", domain="preview.example.com")
        stack = backend.stacks[name]
        configs[name] = {key: stack.config_value(key) for key in stack.config}
    return configs


@pytest.fixture(scope="module")
def shared_runs(pr_configs: dict[str, dict[str, Any]]) -> list[StackRun]:
    """dev as committed plus both PR stacks, each through the real program."""
    return [run_stack("dev")] + [run_stack(name, stack_config=pr_configs[name]) for name in PR_STACKS]


def test_dev_and_two_pr_stacks_declare_no_object_twice(shared_runs: list[StackRun]) -> None:
    assert collisions(*shared_runs) == set()
    # Every stack does declare its own copy of the namespaced platform, each in its own namespace.
    namespaces = [{key[1] for key in cluster_keys(run) if key[0] == "namespaced"} for run in shared_runs]
    assert namespaces == [{"rag"}, {"pr-1"}, {"pr-2"}]


def test_pr_stacks_install_nothing_cluster_wide_and_issue_from_their_own_namespace(
    shared_runs: list[StackRun],
) -> None:
    dev, *prs = shared_runs
    assert {key[1] for key in cluster_keys(dev) if key[0] == "helm release"} == {
        "cert-manager",
        "cnpg-system",
    }
    for run in prs:
        keys = cluster_keys(run)
        assert [key for key in keys if key[0] == "helm release"] == []
        assert [key for key in keys if key[0] == "cluster"] == [("cluster", "Namespace", run.stack)]
        issuer = run.by_name("gateway-issuer").inputs
        assert (issuer["kind"], issuer["metadata"]["namespace"]) == ("Issuer", run.stack)
        certificate = run.by_name("gateway-certificate").inputs["spec"]
        assert certificate["issuerRef"]["kind"] == "Issuer"
        assert certificate["issuerRef"]["name"] == issuer["metadata"]["name"]
        assert run.outputs["serviceUrl"] == f"https://{run.stack}.preview.example.com"


def test_a_pr_stack_may_reuse_devs_cluster_issuer_by_name(
    shared_runs: list[StackRun], pr_configs: dict[str, dict[str, Any]]
) -> None:
    dev_issuer = shared_runs[0].by_name("gateway-issuer").inputs
    assert dev_issuer["kind"] == "ClusterIssuer"
    run = run_stack(
        "pr-1",
        stack_config=pr_configs["pr-1"],
        config_overrides={"tls": {"clusterIssuer": dev_issuer["metadata"]["name"]}},
    )
    assert [r for r in run.resources if r.name == "gateway-issuer"] == []
    issuer_ref = run.by_name("gateway-certificate").inputs["spec"]["issuerRef"]
    assert issuer_ref == {"name": "gateway-selfsigned", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert collisions(shared_runs[0], run, shared_runs[2]) == set()


def test_the_check_catches_a_pr_stack_that_installs_the_cluster_wide_pieces(
    shared_runs: list[StackRun], pr_configs: dict[str, dict[str, Any]]
) -> None:
    """Without the template's two switches, the PR stack collides with dev exactly where it should."""
    greedy = run_stack(
        "pr-1",
        stack_config=pr_configs["pr-1"],
        config_overrides={
            "tls": {"installCertManager": True},
            "postgres": {"cloudnative": {"installOperator": True}},
        },
    )
    assert collisions(shared_runs[0], greedy) == {
        ("cluster", "ClusterIssuer", "gateway-selfsigned"),
        ("helm release", "cert-manager", "cert-manager"),
        ("helm release", "cnpg-system", "cnpg"),
    }


def test_pr_stacks_render_validate_and_pass_the_policies(shared_runs: list[StackRun], tmp_path: Path) -> None:
    for run in shared_runs[1:]:
        report = render.render_run(run, tmp_path / run.stack, environment="dev")
        assert report.problems == []
        assert report.violations == []
        # As on dev, every custom kind (the CloudNativePG Cluster too) is validated against its vendored schema.
        assert [entry for entry in report.not_validated if entry.startswith("k8s/")] == []
        assert "postgresql.cnpg.io/cluster_v1.yaml" in " ".join(report.validated_custom.values())
        # The namespaced Issuer is checked against its vendored CRD schema like every other custom kind.
        assert "cert-manager.io/issuer_v1.yaml" in " ".join(report.validated_custom.values())


GATEWAY_TYPE = "kubernetes:gateway.networking.k8s.io/v1:Gateway"


def _merged_gateways_prerequisite() -> list[dict[str, Any]]:
    """The EnvoyProxy + GatewayClass docs/delivery.md tells operators to create (the block after its marker)."""
    text = (REPO_ROOT / "docs" / "delivery.md").read_text(encoding="utf-8")
    block = (
        text.split("<!-- merged-gateways-prerequisite -->", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    )
    return [doc for doc in yaml.safe_load_all(block) if doc]


def test_dev_and_pr_gateways_merge_onto_one_envoy_fleet(shared_runs: list[StackRun]) -> None:
    """PR stacks are reached through dev's address only if Envoy Gateway merges their Gateways with dev's: one
    class, and (port, protocol, hostname) unique across every listener of every Gateway (Envoy Gateway docs,
    Deployment Mode, "Merged Gateways onto a single EnvoyProxy fleet")."""
    gateways = [r.inputs for run in shared_runs for r in run.of_type(GATEWAY_TYPE)]
    assert len(gateways) == len(shared_runs)  # one per stack, each in its own namespace
    classes = {g["spec"]["gatewayClassName"] for g in gateways}
    assert len(classes) == 1
    listeners = [
        (listener["port"], listener["protocol"], listener.get("hostname"))
        for g in gateways
        for listener in g["spec"]["listeners"]
    ]
    assert all(
        hostname for _port, _protocol, hostname in listeners
    )  # a catch-all listener would shadow the rest
    assert len(set(listeners)) == len(listeners), Counter(listeners).most_common(3)
    hostnames = {hostname for _port, _protocol, hostname in listeners}
    assert {f"{name}.preview.example.com" for name in PR_STACKS} <= hostnames

    # The class all of them name is the one the documented prerequisite puts in merged mode ...
    envoy_proxy, gateway_class = _merged_gateways_prerequisite()
    assert gateway_class["metadata"]["name"] in classes
    assert envoy_proxy["spec"]["mergeGateways"] is True
    ref = gateway_class["spec"]["parametersRef"]
    assert (ref["kind"], ref["name"], ref["namespace"]) == (
        envoy_proxy["kind"],
        envoy_proxy["metadata"]["name"],
        envoy_proxy["metadata"]["namespace"],
    )
    # ... valid against the pinned CRD schemas, and exactly what .ci/e2e applies on its kind cluster.
    for manifest in (envoy_proxy, gateway_class):
        source, errors = render.validate_manifest(manifest)
        assert source, manifest["kind"]
        assert errors == [], (manifest["kind"], errors)
    e2e = (REPO_ROOT / ".ci" / "e2e").read_text(encoding="utf-8")
    applied = [
        doc for part in e2e.split("<< EOF\n")[1:] for doc in yaml.safe_load_all(part.split("\nEOF", 1)[0])
    ]
    assert envoy_proxy in applied
    assert gateway_class in applied


def test_pr_stacks_as_ci_makes_them_pass_the_policy_pack_their_up_runs(
    shared_runs: list[StackRun], pr_configs: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """`ragops ephemeral up` runs `pulumi up --policy-pack infra/policy` (as `up`, `promote` and `rollback` do):
    the committed template's PR stacks must pass it, in the environment the pack reads (`rag:environment`, dev's
    from the base file: the TLS and prod-protection rules do not apply; resources, non-root, pinned images, the
    Qdrant key and PDBs do). Even the TLS rules pass: a PR stack serves HTTPS from its own Issuer."""
    for run in shared_runs[1:]:
        environment = pr_configs[run.stack].get("rag:environment", run.stack)
        assert environment == "dev"
        for checked_as in (environment, "staging"):
            report = render.render_run(run, tmp_path / run.stack / checked_as, environment=checked_as)
            assert report.violations == [], (run.stack, checked_as)
            assert report.problems == [], (run.stack, checked_as)
