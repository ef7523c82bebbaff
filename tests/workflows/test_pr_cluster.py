"""A PR stack built from a cloud (GKE/EKS) dev stack shares dev's cluster, or is refused: it never creates one.

Only the `existing` target shares a cluster; on `gke`/`eks` the program creates a cluster, network and NAT, and
the template's "dev installed cert-manager and CloudNativePG" would be false on it. The PR config is made the way
CI makes it (`ephemeral.up` against the fake backend) and then runs through the real program offline, with the
render checks and deployability analysis `make plan` runs.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import deployability, render
from infra.offline import run_stack
from infra.workflows import ephemeral
from infra.workflows.stacks import REPO_ROOT, Context, UsageError
from tests.workflows.fake_pulumi import FakeBackend

DEV_KUBECONFIG = "apiVersion: v1\nkind: Config\ncurrent-context: gke_rag-dev-123_europe-west1_rag-dev\n"
CLOUD_PACKAGES = ("gcp:", "aws:", "eks:", "awsx:")

CLUSTERS: dict[str, dict[str, Any]] = {
    "gke": {
        "provider": "gke",
        "gke": {
            "project": "rag-dev-123",
            "region": "europe-west1",
            "privateEndpoint": False,
            "masterAuthorizedNetworks": ["0.0.0.0/0"],
            "storageClass": "premium-rwo",
        },
    },
    "eks": {"provider": "eks", "eks": {"region": "eu-west-1", "endpointPublicAccess": False}},
}


def checkout_with_dev_on(tmp_path: Path, provider: str) -> Path:
    """A checkout whose Pulumi.dev.yaml is the committed one moved onto a cloud cluster."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    shutil.copy(REPO_ROOT / "Pulumi.yaml", checkout / "Pulumi.yaml")
    doc = yaml.safe_load((REPO_ROOT / "Pulumi.dev.yaml").read_text(encoding="utf-8"))
    doc["config"]["rag:cluster"] = CLUSTERS[provider]
    if provider == "gke":
        doc["config"]["rag:gateway"]["className"] = "gke-l7-global-external-managed"
    (checkout / "Pulumi.dev.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    return checkout


def context(checkout: Path, backend: FakeBackend) -> Context:
    return Context(
        work_dir=checkout,
        pulumi_command=backend.command(),
        clock=lambda: datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
        actor=lambda: "octocat",
    )


@pytest.mark.parametrize("provider", ["gke", "eks"])
def test_a_pr_stack_from_a_cloud_dev_is_refused_before_any_stack_exists(
    provider: str, tmp_path: Path
) -> None:
    checkout = checkout_with_dev_on(tmp_path, provider)
    backend = FakeBackend(checkout)
    with pytest.raises(UsageError) as info:
        ephemeral.up(context(checkout, backend), "pr-7", "24h", domain="preview.example.com")
    message = str(info.value)
    assert f"Pulumi.dev.yaml targets provider {provider!r}" in message
    assert "ephemeral.template.yaml" in message
    assert "provider: existing" in message
    assert "rag:gateway.className" in message
    assert "pr-7" not in backend.stacks
    assert backend.commands("up") == []


@pytest.mark.parametrize("provider", ["gke", "eks"])
def test_a_template_that_names_devs_cluster_yields_a_pr_stack_that_creates_no_cluster(
    provider: str, tmp_path: Path
) -> None:
    checkout = checkout_with_dev_on(tmp_path, provider)
    template = yaml.safe_load(ephemeral.TEMPLATE.read_text())
    shared = {
        "kubeconfig": DEV_KUBECONFIG,
        "context": "",
        "registry": "europe-west1-docker.pkg.dev/rag-dev-123/rag-dev",
        "storageClass": "standard-rwo",
    }
    template["config"]["rag:cluster"] = {"provider": "existing", "existing": shared}
    template["config"]["rag:gateway"]["className"] = "envoy-gateway"
    path = tmp_path / "template.yaml"
    path.write_text(yaml.safe_dump(template))
    backend = FakeBackend(checkout)
    ephemeral.up(context(checkout, backend), "pr-7", "24h", domain="preview.example.com", template=path)

    stack = backend.stacks["pr-7"]
    pr_config = {key: stack.config_value(key) for key in stack.config}
    assert pr_config["rag:cluster"]["provider"] == "existing"
    assert pr_config["rag:cluster"]["existing"] == shared
    run = run_stack("pr-7", stack_config=pr_config)
    assert [r.type for r in run.resources if r.type.startswith(CLOUD_PACKAGES)] == []
    assert run.by_name("k8s").inputs["kubeconfig"] == DEV_KUBECONFIG
    report = render.render_run(run, tmp_path / "render", environment="dev")
    assert report.problems == []
    assert report.violations == []


def test_a_prerequisite_on_a_cluster_the_same_stack_creates_is_a_finding_not_a_pass(tmp_path: Path) -> None:
    """The reviewer's reproduction: the template's values kept on a GKE target passed `make plan` before."""
    checkout = checkout_with_dev_on(tmp_path, "gke")
    values = ephemeral.template_config(checkout, "pr-7", domain="preview.example.com")
    assert values["rag:cluster"]["provider"] == "gke"  # what share_base_cluster exists to replace
    values[ephemeral.EPHEMERAL_KEY] = {"name": "pr-7", "owner": "o", "expiresAt": "2026-03-02T12:00:00Z"}
    analysis = deployability.analyse(run_stack("pr-7", stack_config=values))
    unmet = {(f.check, f.message.split(" uses API group ")[1].split(",")[0]) for f in analysis.findings}
    assert {("crd-order", "cert-manager.io"), ("crd-order", "postgresql.cnpg.io")} <= unmet
    assert all(
        "creates the cluster in this same update" in f.message
        for f in analysis.findings
        if f.check == "crd-order"
    )


@pytest.mark.parametrize(
    ("provider", "key", "value"),
    [("eks", "aws:allowedAccountIds", ["111122223333"]), ("gke", "gcp:project", "rag-dev-123")],
)
def test_a_cloud_devs_provider_keys_do_not_follow_its_pr_stacks_onto_the_shared_cluster(
    provider: str, key: str, value: Any, tmp_path: Path
) -> None:
    """A cloud dev that pins its account (aws:allowedAccountIds, as docs/infra.md advises) must still have PR
    stacks: they run on `existing`, where the program refuses `aws:*`/`gcp:*` keys as guarding nothing, and the
    template cannot remove a key the base file sets. Keys the template sets itself stay (and are refused)."""
    checkout = checkout_with_dev_on(tmp_path, provider)
    dev = yaml.safe_load((checkout / "Pulumi.dev.yaml").read_text(encoding="utf-8"))
    dev["config"][key] = value
    (checkout / "Pulumi.dev.yaml").write_text(yaml.safe_dump(dev), encoding="utf-8")
    template = yaml.safe_load(ephemeral.TEMPLATE.read_text())
    template["config"]["rag:cluster"] = {
        "provider": "existing",
        "existing": {
            "kubeconfig": DEV_KUBECONFIG,
            "context": "",
            "registry": "r.example.com/rag",
            "storageClass": "gp3",
        },
    }
    template["config"]["rag:gateway"]["className"] = "envoy-gateway"
    path = tmp_path / "template.yaml"
    path.write_text(yaml.safe_dump(template))
    values = ephemeral.template_config(checkout, "pr-7", path, domain="preview.example.com")
    assert key not in values
    values[ephemeral.EPHEMERAL_KEY] = {"name": "pr-7", "owner": "o", "expiresAt": "2026-03-02T12:00:00Z"}
    run_stack("pr-7", stack_config=values)  # the real program accepts it
    # Set by the template itself, the key is the operator's choice: kept, and refused by the program.
    template["config"][key] = value
    path.write_text(yaml.safe_dump(template))
    assert ephemeral.template_config(checkout, "pr-7", path, domain="preview.example.com")[key] == value
