"""Each CrossGuard rule passes a well-formed resource and names the problem in every broken variant.

The rules run exactly as the analyzer runs them: ``infra.policy.evaluate`` builds the real pulumi-policy
``ResourceValidationArgs``/``StackValidationArgs`` (inputs behind the unknown-checking proxy) from recorded
resources and collects the ``report_violation`` calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pulumi
import pytest
from policy_builders import (
    API_LABELS,
    DIGEST,
    HTTP_LISTENER,
    HTTPS_LISTENER,
    container,
    gateway,
    hpa,
    pdb,
    qdrant_statefulset,
    recorded,
    workload,
)
from pulumi.runtime.config import set_all_config
from pulumi_policy import EnforcementLevel, ResourceValidationPolicy, StackValidationPolicy

from infra.offline import RecordedResource
from infra.policy import POLICIES, environment_of, run_policies
from infra.policy.evaluate import resource_args
from infra.policy.rules import image_problem, repository_of

K8s = Callable[..., RecordedResource]
WORKER_LABELS = {"app.kubernetes.io/name": "rag", "app.kubernetes.io/component": "worker"}


def messages(resources: list[RecordedResource], policy: str, environment: str = "prod") -> list[str]:
    selected = [p for p in POLICIES if p.name == policy]
    assert selected, f"no policy named {policy}"
    return [v.message for v in run_policies(resources, environment=environment, policies=selected)]


def test_pack_lists_every_rule_as_mandatory() -> None:
    names = {p.name for p in POLICIES}
    assert names == {
        "container-resources",
        "health-probes",
        "run-as-non-root",
        "pinned-images",
        "qdrant-api-key",
        "tls-outside-dev",
        "protect-stateful-in-prod",
        "pdb-for-replicated-workloads",
        "tls-entry-point-outside-dev",
    }
    assert all(p.enforcement_level is EnforcementLevel.MANDATORY for p in POLICIES)
    stack_level = {"pdb-for-replicated-workloads", "tls-entry-point-outside-dev"}
    assert all(isinstance(p, StackValidationPolicy) for p in POLICIES if p.name in stack_level)
    assert all(isinstance(p, ResourceValidationPolicy) for p in POLICIES if p.name not in stack_level)


def test_well_formed_stack_passes_every_policy(k8s: K8s) -> None:
    service = workload(replicas=3)
    stack = [
        k8s(service),
        k8s(pdb("rag-service", API_LABELS)),
        k8s(qdrant_statefulset(), protect=True),
        k8s(pdb("qdrant", {"app.kubernetes.io/name": "qdrant"})),
        k8s(gateway([HTTP_LISTENER, HTTPS_LISTENER])),
    ]
    assert run_policies(stack, environment="prod") == []


# ------------------------------------------------------------------------------------------- container-resources
@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c.pop("resources"), "requests.cpu, requests.memory, limits.cpu, limits.memory"),
        (lambda c: c["resources"].pop("limits"), "limits.cpu, limits.memory"),
        (lambda c: c["resources"]["requests"].pop("memory"), "requests.memory"),
        (lambda c: c["resources"]["limits"].pop("cpu"), "limits.cpu"),
    ],
)
def test_container_resources_violations(k8s: K8s, mutate: Callable[[dict], Any], expected: str) -> None:
    c = container()
    mutate(c)
    found = messages([k8s(workload(containers=[c]))], "container-resources")
    assert found == [f"Deployment rag/rag-service: container 'api' must set resources {expected}."]


def test_container_resources_cover_init_containers_and_cronjobs(k8s: K8s) -> None:
    init = container("migrate")
    del init["resources"]["requests"]
    deployment = workload()
    deployment["spec"]["template"]["spec"]["initContainers"] = [init]
    cron = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "backup", "namespace": "rag"},
        "spec": {
            "schedule": "0 3 * * *",
            "jobTemplate": {
                "spec": {"template": {"spec": {"containers": [{"name": "snap", "image": DIGEST}]}}}
            },
        },
    }
    found = messages([k8s(deployment), k8s(cron)], "container-resources")
    assert found == [
        "Deployment rag/rag-service: init container 'migrate' must set resources requests.cpu, requests.memory.",
        "CronJob rag/backup: container 'snap' must set resources requests.cpu, requests.memory, "
        "limits.cpu, limits.memory.",
    ]


def test_container_resources_pass(k8s: K8s) -> None:
    assert messages([k8s(workload()), k8s(qdrant_statefulset())], "container-resources") == []


# ------------------------------------------------------------------------------------------- health-probes
@pytest.mark.parametrize(
    ("drop", "expected"),
    [
        (["livenessProbe"], "has no livenessProbe."),
        (["readinessProbe"], "has no readinessProbe."),
        (["livenessProbe", "readinessProbe"], "has no livenessProbe and no readinessProbe."),
    ],
)
def test_probe_violations(k8s: K8s, drop: list[str], expected: str) -> None:
    service = container()
    for key in drop:
        del service[key]
    found = messages([k8s(workload(containers=[service]))], "health-probes")
    assert found == [f"Deployment rag/rag-service: container 'api' {expected}"]


def test_qdrant_needs_probes_too(k8s: K8s) -> None:
    sts = qdrant_statefulset()
    del sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert messages([k8s(sts)], "health-probes") == [
        "StatefulSet rag/qdrant: container 'qdrant' has no readinessProbe."
    ]


def test_probes_not_required_of_the_worker(k8s: K8s) -> None:
    worker = container("worker")
    del worker["livenessProbe"], worker["readinessProbe"]
    assert (
        messages(
            [k8s(workload(name="rag-worker", containers=[worker], labels=WORKER_LABELS))], "health-probes"
        )
        == []
    )
    assert messages([k8s(workload()), k8s(qdrant_statefulset())], "health-probes") == []


# ------------------------------------------------------------------------------------------- run-as-non-root
def test_non_root_at_container_level_is_enough(k8s: K8s) -> None:
    deployment = workload()
    deployment["spec"]["template"]["spec"]["securityContext"] = {}
    assert messages([k8s(deployment)], "run-as-non-root") == []


@pytest.mark.parametrize(
    ("pod_ctx", "container_ctx", "expected"),
    [
        (
            {},
            {},
            "Deployment rag/rag-service: container 'api' may run as root: "
            "set runAsNonRoot true on the pod or the container.",
        ),
        (
            {"runAsNonRoot": True},
            {"runAsNonRoot": False},
            "Deployment rag/rag-service: container 'api' sets runAsNonRoot false.",
        ),
        (
            {"runAsNonRoot": True},
            {"runAsUser": 0},
            "Deployment rag/rag-service: container 'api' sets runAsUser 0 (root).",
        ),
        (
            {"runAsNonRoot": True, "runAsUser": 0},
            {},
            "Deployment rag/rag-service: pod securityContext sets runAsUser 0 (root).",
        ),
    ],
)
def test_non_root_violations(k8s: K8s, pod_ctx: dict, container_ctx: dict, expected: str) -> None:
    c = container()
    c["securityContext"] = container_ctx
    deployment = workload(containers=[c])
    deployment["spec"]["template"]["spec"]["securityContext"] = pod_ctx
    assert messages([k8s(deployment)], "run-as-non-root") == [expected]


# ------------------------------------------------------------------------------------------- pinned-images
@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("qdrant/qdrant", "uses the untagged image 'qdrant/qdrant'"),
        ("qdrant/qdrant:latest", "uses the mutable tag in 'qdrant/qdrant:latest'"),
        ("localhost:5000/rag/service", "uses the untagged image 'localhost:5000/rag/service'"),
        ("rag/service@sha256:abc", "has a malformed digest 'rag/service@sha256:abc'"),
        ("", "has no image"),
    ],
)
def test_image_violations(k8s: K8s, image: str, expected: str) -> None:
    assert messages([k8s(workload(containers=[container(image=image)]))], "pinned-images") == [
        f"Deployment rag/rag-service: container 'api' {expected}."
    ]


@pytest.mark.parametrize(
    "image",
    [
        DIGEST,
        "qdrant/qdrant:v1.15.4",
        "localhost:5000/rag/service:1.2.3",
        "valkey/valkey:8.1@" + DIGEST[-71:],
    ],
)
def test_pinned_images_pass(image: str) -> None:
    assert image_problem(image) is None


def test_helm_releases_pin_chart_and_image_versions() -> None:
    good = recorded(
        "kubernetes:helm.sh/v3:Release",
        "monitoring",
        {
            "chart": "kube-prometheus-stack",
            "version": "77.0.0",
            "values": {"grafana": {"image": {"tag": "12.1.0"}}},
        },
    )
    assert messages([good], "pinned-images") == []
    bad = recorded(
        "kubernetes:helm.sh/v3:Release",
        "monitoring",
        {
            "chart": "kube-prometheus-stack",
            "values": {"grafana": {"image": {"tag": "latest"}}, "sidecars": [{"image": "busybox:latest"}]},
        },
    )
    assert messages([bad], "pinned-images") == [
        "Helm release monitoring: chart 'kube-prometheus-stack' has no pinned version.",
        "Helm release monitoring: values.grafana.image.tag selects the mutable tag 'latest'.",
        "Helm release monitoring: values.sidecars[0].image selects the mutable tag 'latest'.",
    ]


# ------------------------------------------------------------------------------------------- qdrant-api-key
def test_qdrant_api_key_from_secret_passes(k8s: K8s) -> None:
    assert messages([k8s(qdrant_statefulset())], "qdrant-api-key") == []


def test_qdrant_without_api_key_fails(k8s: K8s) -> None:
    sts = qdrant_statefulset()
    del sts["spec"]["template"]["spec"]["containers"][0]["env"]
    assert messages([k8s(sts)], "qdrant-api-key") == [
        "StatefulSet rag/qdrant: Qdrant container 'qdrant' has no QDRANT__SERVICE__API_KEY."
    ]


def test_qdrant_api_key_as_literal_fails(k8s: K8s) -> None:
    sts = qdrant_statefulset()
    sts["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "QDRANT__SERVICE__API_KEY", "value": "hunter2"}
    ]
    assert messages([k8s(sts)], "qdrant-api-key") == [
        "StatefulSet rag/qdrant: Qdrant container 'qdrant' must take QDRANT__SERVICE__API_KEY from a Secret "
        "(valueFrom.secretKeyRef), not a literal value."
    ]


def test_qdrant_helm_release_needs_api_key() -> None:
    release = recorded(
        "kubernetes:helm.sh/v3:Release",
        "qdrant",
        {"chart": "qdrant", "version": "1.15.4", "values": {"replicaCount": 3}},
    )
    assert messages([release], "qdrant-api-key") == [
        "Helm release qdrant: the qdrant chart has no values.apiKey."
    ]
    good = recorded(
        "kubernetes:helm.sh/v3:Release", "qdrant", {"chart": "qdrant", "values": {"apiKey": True}}
    )
    assert messages([good], "qdrant-api-key") == []


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("qdrant/qdrant:v1.15.4", "qdrant/qdrant"),
        ("docker.io/qdrant/qdrant@sha256:" + "b" * 64, "docker.io/qdrant/qdrant"),
        ("registry:5000/qdrant/qdrant", "registry:5000/qdrant/qdrant"),
        (
            "registry:5000/mirror/qdrant/qdrant:v1.15.4@sha256:" + "c" * 64,
            "registry:5000/mirror/qdrant/qdrant",
        ),
        ("busybox", "busybox"),
    ],
)
def test_repository_of(image: str, repository: str) -> None:
    assert repository_of(image) == repository


def test_qdrant_is_recognised_from_a_mirror(k8s: K8s) -> None:
    sts = qdrant_statefulset()
    qdrant = sts["spec"]["template"]["spec"]["containers"][0]
    qdrant["image"] = "registry:5000/mirror/qdrant/qdrant:v1.15.4"
    del qdrant["env"]
    assert messages([k8s(sts)], "qdrant-api-key") == [
        "StatefulSet rag/qdrant: Qdrant container 'qdrant' has no QDRANT__SERVICE__API_KEY."
    ]


def test_other_workloads_need_no_qdrant_key(k8s: K8s) -> None:
    assert messages([k8s(workload())], "qdrant-api-key") == []


# ------------------------------------------------------------------------------------------- tls-outside-dev
def test_https_gateway_passes_everywhere(k8s: K8s) -> None:
    for env in ("dev", "staging", "prod"):
        assert messages([k8s(gateway([HTTP_LISTENER, HTTPS_LISTENER]))], "tls-outside-dev", env) == []


def test_http_only_gateway_is_fine_in_dev_only(k8s: K8s) -> None:
    plain = [k8s(gateway([HTTP_LISTENER]))]
    assert messages(plain, "tls-outside-dev", "dev") == []
    assert messages(plain, "tls-outside-dev", "staging") == [
        "Gateway rag/rag: staging requires an HTTPS listener; it has only plain HTTP."
    ]
    assert messages(plain, "tls-outside-dev", "prod") == [
        "Gateway rag/rag: prod requires an HTTPS listener; it has only plain HTTP."
    ]


def test_https_listener_without_certificate_fails(k8s: K8s) -> None:
    listener = {**HTTPS_LISTENER, "tls": {"mode": "Terminate"}}
    assert messages([k8s(gateway([listener]))], "tls-outside-dev") == [
        "Gateway rag/rag: HTTPS listener 'https' has no tls.certificateRefs."
    ]


def test_ingress_fallback_needs_tls_outside_dev(k8s: K8s) -> None:
    ingress = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "rag", "namespace": "rag"},
        "spec": {"rules": [{"host": "rag.example.com"}]},
    }
    assert messages([k8s(ingress)], "tls-outside-dev") == [
        "Ingress rag/rag: prod requires spec.tls with hosts and a secretName."
    ]
    ingress["spec"]["tls"] = [{"hosts": ["rag.example.com"], "secretName": "rag-tls"}]
    assert messages([k8s(ingress)], "tls-outside-dev") == []


def test_stack_without_tls_entry_point_fails_outside_dev(k8s: K8s) -> None:
    expected = (
        "{env} has no TLS entry point: declare a Gateway with an HTTPS listener (certificateRefs) "
        "or an Ingress with spec.tls."
    )
    only_workloads = [k8s(workload())]
    assert messages(only_workloads, "tls-entry-point-outside-dev", "dev") == []
    assert messages(only_workloads, "tls-entry-point-outside-dev", "staging") == [
        expected.format(env="staging")
    ]
    plain = [*only_workloads, k8s(gateway([HTTP_LISTENER]))]
    assert messages(plain, "tls-entry-point-outside-dev", "prod") == [expected.format(env="prod")]
    https = [*only_workloads, k8s(gateway([HTTP_LISTENER, HTTPS_LISTENER]))]
    assert messages(https, "tls-entry-point-outside-dev", "prod") == []
    ingress = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "rag", "namespace": "rag"},
        "spec": {"tls": [{"hosts": ["rag.example.com"], "secretName": "rag-tls"}]},
    }
    assert messages([*only_workloads, k8s(ingress)], "tls-entry-point-outside-dev", "prod") == []


# ------------------------------------------------------------------------------------------- protect-stateful
def test_unprotected_state_fails_in_prod_only(k8s: K8s) -> None:
    sts = [k8s(qdrant_statefulset())]
    assert messages(sts, "protect-stateful-in-prod", "staging") == []
    assert messages(sts, "protect-stateful-in-prod", "prod") == [
        "kubernetes:apps/v1:StatefulSet qdrant holds data and must be protected in prod "
        "(ResourceOptions(protect=True))."
    ]
    assert messages([k8s(qdrant_statefulset(), protect=True)], "protect-stateful-in-prod") == []


@pytest.mark.parametrize(
    "type_",
    [
        "aws:rds/instance:Instance",
        "aws:elasticache/replicationGroup:ReplicationGroup",
        "aws:s3/bucket:Bucket",
        "gcp:sql/databaseInstance:DatabaseInstance",
        "gcp:redis/instance:Instance",
        "gcp:storage/bucket:Bucket",
        "kubernetes:postgresql.cnpg.io/v1:Cluster",
        "kubernetes:core/v1:PersistentVolumeClaim",
    ],
)
def test_managed_state_must_be_protected_in_prod(type_: str) -> None:
    assert messages([recorded(type_, "data", {})], "protect-stateful-in-prod") == [
        f"{type_} data holds data and must be protected in prod (ResourceOptions(protect=True))."
    ]
    assert messages([recorded(type_, "data", {}, protect=True)], "protect-stateful-in-prod") == []


def test_stateless_resources_need_no_protection(k8s: K8s) -> None:
    sts = qdrant_statefulset()
    del sts["spec"]["volumeClaimTemplates"]
    assert messages([k8s(sts), k8s(workload())], "protect-stateful-in-prod") == []


# ------------------------------------------------------------------------------------------- pdb
def test_replicated_workload_without_pdb_fails(k8s: K8s) -> None:
    found = run_policies(
        [k8s(workload(replicas=3))],
        environment="prod",
        policies=[p for p in POLICIES if p.name == "pdb-for-replicated-workloads"],
    )
    assert [v.message for v in found] == [
        "Deployment rag/rag-service runs 3 replicas but no PodDisruptionBudget selects its pods."
    ]
    assert (
        found[0].urn == "urn:pulumi:prod::rag::rag:test:Component$kubernetes:apps/v1:Deployment::rag-service"
    )


def test_hpa_minimum_counts_as_replicas(k8s: K8s) -> None:
    stack = [k8s(workload(replicas=1)), k8s(hpa("rag-service", 3))]
    assert messages(stack, "pdb-for-replicated-workloads") == [
        "Deployment rag/rag-service runs 3 replicas but no PodDisruptionBudget selects its pods."
    ]
    stack.append(k8s(pdb("rag-service", API_LABELS)))
    assert messages(stack, "pdb-for-replicated-workloads") == []


def test_pdb_must_select_the_pods_in_the_same_namespace(k8s: K8s) -> None:
    wrong_labels = k8s(pdb("rag-service", {"app.kubernetes.io/name": "other"}))
    wrong_namespace = k8s(pdb("rag-service", API_LABELS, namespace="default"))
    expected = ["StatefulSet rag/qdrant runs 3 replicas but no PodDisruptionBudget selects its pods."]
    assert messages([k8s(qdrant_statefulset()), wrong_labels], "pdb-for-replicated-workloads") == expected
    assert messages([k8s(qdrant_statefulset()), wrong_namespace], "pdb-for-replicated-workloads") == expected


def test_single_replica_needs_no_pdb(k8s: K8s) -> None:
    assert (
        messages([k8s(workload(replicas=1)), k8s(qdrant_statefulset(1))], "pdb-for-replicated-workloads")
        == []
    )


# ------------------------------------------------------------------------------------------- configuration
def test_probed_workloads_come_from_policy_config(k8s: K8s) -> None:
    worker = container("worker")
    del worker["livenessProbe"], worker["readinessProbe"]
    resource = k8s(workload(name="rag-worker", containers=[worker], labels=WORKER_LABELS))
    policy = next(p for p in POLICIES if p.name == "health-probes")
    reported: list[str] = []
    config = {"probedWorkloads": [{"app.kubernetes.io/component": "worker"}]}
    policy.validate(resource_args(resource, config), lambda message, urn=None: reported.append(message))
    assert reported == [
        "Deployment rag/rag-worker: container 'worker' has no livenessProbe and no readinessProbe."
    ]


def test_environment_falls_back_to_stack_config_then_stack_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert environment_of({"environment": "Staging"}) == "staging"
    try:
        set_all_config({"rag:environment": "prod"})
        assert environment_of({}) == "prod"
        set_all_config({})
        monkeypatch.setattr(pulumi, "get_stack", lambda: "Dev")
        assert environment_of({}) == "dev"
    finally:
        set_all_config({})
