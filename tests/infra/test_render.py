"""``python -m infra.render``: every stack renders, validates and passes the policies; breakage exits non-zero.

Each stack's program runs once under mocks per test session (``runs``); the tests render those recorded runs into
``tmp_path``. The CLI itself (``main``) is exercised in-process for exit codes and once as a real subprocess.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import jsonschema
import pytest
import yaml

from infra import render
from infra.clusters.eks import ENVOY_GATEWAY_CHART, envoy_proxy_spec
from infra.offline import RecordedResource, StackRun
from infra.policy import run_policies
from tests.infra.conftest import STACKS
from tests.infra.conftest import run as cached_run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def runs() -> dict[str, StackRun]:
    """Each real stack file run through the real program under mocks (the session cache of tests/infra/conftest)."""
    return {stack: cached_run(stack) for stack in STACKS}


@pytest.fixture(scope="session")
def rendered(runs: dict[str, StackRun], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Each stack rendered once: ``{stack: (report, out_dir)}``."""
    result = {}
    for stack, run in runs.items():
        out = tmp_path_factory.mktemp(f"render-{stack}")
        result[stack] = (render.render_run(run, out, environment=stack), out)
    return result


def k8s_objects(run: StackRun) -> list[RecordedResource]:
    return [r for r in run.resources if render.is_kubernetes_object(r)]


def only(run: StackRun, *resources: RecordedResource) -> StackRun:
    """The run cut down to these resources: a render of just them is fast and its findings are theirs alone."""
    return dataclasses.replace(run, resources=list(resources))


def variant(resource: RecordedResource, name: str, inputs: dict) -> RecordedResource:
    """A sibling of ``resource`` recording the manifest ``inputs`` under its own type token."""
    api_version = inputs["apiVersion"]
    type_ = f"kubernetes:{api_version if '/' in api_version else 'core/' + api_version}:{inputs['kind']}"
    return dataclasses.replace(
        resource, type=type_, name=name, urn=f"{resource.urn}-{name}", inputs=inputs, protect=False
    )


@pytest.mark.parametrize("stack", STACKS)
def test_every_stack_renders_validates_and_passes_policies(
    runs: dict[str, StackRun], rendered: dict[str, tuple], stack: str
) -> None:
    run = runs[stack]
    report, tmp_path = rendered[stack]

    assert report.problems == []
    assert report.violations == []
    assert report.ok
    objects = k8s_objects(run)
    written = sorted(tmp_path.glob("k8s/*/*.yaml"))
    assert len(written) == len(objects) > 0
    for path in written:
        doc = yaml.safe_load(path.read_text())
        assert path.name == f"{doc['kind'].lower()}--{doc['metadata']['name']}.yaml"
    assert report.validated_builtin + len(report.validated_custom) + sum(
        1 for n in report.not_validated if n.startswith("k8s/")
    ) == len(objects)

    plan = json.loads((tmp_path / "plan.json").read_text())
    counted = Counter(r.type for r in run.resources if r.type != "pulumi:pulumi:Stack")
    assert plan["byType"] == dict(counted)
    assert plan["resources"] == sum(counted.values())
    assert plan["ok"] is True
    assert plan["validation"]["kubernetesVersion"] == render.KUBERNETES_VERSION
    assert plan["outputs"]["kubeconfig"] == "[secret]"
    assert "PASS" in (tmp_path / "plan.md").read_text()


def test_every_cluster_target_validates_and_passes_policies(target_run: StackRun, tmp_path: Path) -> None:
    """Each stack moved onto each cluster target (existing, GKE, EKS) renders clean too."""
    report = render.render_run(target_run, tmp_path, environment=render.environment_for(target_run.stack, {}))
    assert report.problems == []
    assert report.violations == []
    assert report.validated_builtin > 0
    # Every custom resource the program renders is validated against a vendored schema of the pinned CRD.
    assert [n for n in report.not_validated if n.startswith("k8s/")] == []


def test_prod_protects_its_state(runs: dict[str, StackRun], rendered: dict[str, tuple]) -> None:
    report, tmp_path = rendered["prod"]
    protected = sorted(f"{r.type}::{r.name}" for r in runs["prod"].resources if r.protect)
    assert protected, "prod protects nothing"
    assert report.summary["protected"] == protected
    plan_md = (tmp_path / "plan.md").read_text()
    assert all(f"`{entry}`" in plan_md for entry in protected)


def test_unknown_field_in_a_manifest_fails_strict_validation(
    runs: dict[str, StackRun], tmp_path: Path
) -> None:
    run = runs["dev"]
    target = k8s_objects(run)[0]
    inputs = copy.deepcopy(target.inputs)
    inputs["metadata"]["labelz"] = {"typo": "yes"}
    broken = only(run, dataclasses.replace(target, inputs=inputs))

    report = render.render_run(broken, tmp_path, environment="dev")

    assert not report.ok
    manifest = render.manifest_of(target)
    rel = render.file_for(manifest, target)
    assert [str(p) for p in report.problems] == [
        f"{rel}: Additional properties are not allowed ('labelz' was unexpected) (at metadata)"
    ]
    assert json.loads((tmp_path / "plan.json").read_text())["ok"] is False


def test_wrong_type_and_removed_api_fail(runs: dict[str, StackRun], tmp_path: Path) -> None:
    run = runs["dev"]
    base = k8s_objects(run)[0]
    bad_replicas = variant(
        base,
        "api",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "api", "namespace": "rag"},
            "spec": {"replicas": "three", "selector": {}, "template": {}},
        },
    )
    removed = variant(
        base,
        "old-pdb",
        {
            "apiVersion": "policy/v1beta1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "old", "namespace": "rag"},
        },
    )
    report = render.render_run(only(run, bad_replicas, removed), tmp_path, environment="dev")
    problems = {p.file: p.message for p in report.problems}
    assert (
        problems["k8s/rag/deployment--api.yaml"]
        == "'three' is not of type 'integer', 'null' (at spec.replicas)"
    )
    assert problems["k8s/rag/poddisruptionbudget--old.yaml"].startswith(
        "Couldn't find schema for kind PodDisruptionBudget with api version policy/v1beta1"
    )


def test_policy_violation_fails_the_render(runs: dict[str, StackRun], tmp_path: Path) -> None:
    run = runs["dev"]
    base = k8s_objects(run)[0]
    pvc = variant(
        base,
        "data",
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "rag"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        },
    )
    report = render.render_run(only(run, pvc), tmp_path, environment="prod")
    assert report.problems == []
    assert not report.ok
    assert [(v.policy, v.message, v.urn) for v in report.violations] == [
        (
            "protect-stateful-in-prod",
            "kubernetes:core/v1:PersistentVolumeClaim data holds data and must be protected in prod "
            "(ResourceOptions(protect=True)).",
            pvc.urn,
        ),
        (
            "tls-entry-point-outside-dev",
            "prod has no TLS entry point: declare a Gateway with an HTTPS listener (certificateRefs) "
            "or an Ingress with spec.tls.",
            None,
        ),
    ]
    plan_md = (tmp_path / "plan.md").read_text()
    assert "[mandatory] protect-stateful-in-prod: kubernetes:core/v1:PersistentVolumeClaim data" in plan_md
    assert "**FAIL**" in plan_md


def test_secret_values_are_redacted_on_disk(runs: dict[str, StackRun], tmp_path: Path) -> None:
    run = runs["dev"]
    base = k8s_objects(run)[0]
    secret = variant(
        base,
        "creds",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds", "namespace": "rag"},
            "stringData": {"DATABASE_URL": "postgresql://u:hunter2@db/rag"},
        },
    )
    report = render.render_run(only(run, secret), tmp_path, environment="dev")
    assert report.ok
    text = (tmp_path / "k8s/rag/secret--creds.yaml").read_text()
    assert "hunter2" not in text
    assert "DATABASE_URL: <redacted>" in text


def test_inputs_marked_secret_are_redacted_on_disk(runs: dict[str, StackRun], tmp_path: Path) -> None:
    base = k8s_objects(runs["dev"])[0]
    config = variant(
        base,
        "settings",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "rag"},
            "data": {"DSN": "postgresql://u:hunter2@db/rag", "LOG_LEVEL": "INFO"},
        },
    )
    config = dataclasses.replace(config, secret_keys=frozenset({"data"}))
    report = render.render_run(only(runs["dev"], config), tmp_path, environment="dev")
    assert report.ok
    written = yaml.safe_load((tmp_path / "k8s/rag/configmap--settings.yaml").read_text())
    assert written["data"] == {"DSN": "<redacted>", "LOG_LEVEL": "<redacted>"}
    assert written["metadata"]["name"] == "settings"


def test_custom_kind_without_schema_is_listed_not_validated(
    runs: dict[str, StackRun], tmp_path: Path
) -> None:
    run = runs["dev"]
    base = k8s_objects(run)[0]
    scheduled = variant(
        base,
        "nightly",
        {
            "apiVersion": "postgresql.cnpg.io/v1",
            "kind": "Pooler",
            "metadata": {"name": "nightly", "namespace": "rag"},
            "spec": {"cluster": {"name": "pg"}, "pgbouncer": {"poolMode": "session"}},
        },
    )
    # A partial program: the deployability analysis (what installs the CRD) is not the point here.
    report = render.render_run(only(run, scheduled), tmp_path, environment="dev", deployability=False)
    assert report.ok
    assert report.not_validated == [
        "k8s/rag/pooler--nightly.yaml (no vendored schema for postgresql.cnpg.io/v1 Pooler)"
    ]
    assert "pooler--nightly" in (tmp_path / "plan.md").read_text()


def test_parse_overrides_nests_dotted_keys() -> None:
    assert render.parse_overrides(["qdrant.replicas=1", "rag:tls.enabled=false", "image=abc"]) == {
        "qdrant": {"replicas": 1},
        "tls": {"enabled": False},
        "image": "abc",
    }


def test_main_renders_dev(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert render.main(["--stack", "dev", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "stack dev (dev)" in out
    assert out.rstrip().splitlines()[-1].startswith("PASS")
    assert (tmp_path / "plan.md").is_file()


def test_staging_without_tls_is_a_config_error_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Staging without TLS used to pass the config and fail only the policy pack (tls-entry-point-outside-dev),
    whose message names neither the key nor the file; now the config refuses it, naming the key."""
    assert render.main(["--stack", "staging", "--out", str(tmp_path), "--set", "tls.enabled=false"]) == 2
    err = capsys.readouterr().err
    assert "config error: rag:tls.enabled in --set: staging requires TLS" in err


def test_config_error_exits_2_naming_the_key(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "infra.render",
            "--stack",
            "prod",
            "--out",
            str(tmp_path),
            "--set",
            "qdrant.replicas=2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "rag:qdrant.replicas in --set" in proc.stderr  # a --set value is blamed on --set (cae243f)
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "plan.json").exists()


def test_unknown_stack_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert render.main(["--stack", "nope", "--out", str(tmp_path)]) == 2
    assert "Pulumi.nope.yaml" in capsys.readouterr().err


def test_whole_number_floats_are_written_as_ints(rendered: dict[str, tuple]) -> None:
    assert render.integral({"a": 5.0, "b": [1.5, 2.0], "c": "3.0"}) == {"a": 5, "b": [1.5, 2], "c": "3.0"}
    assert type(render.integral({"a": 5.0})["a"]) is int
    _, tmp_path = rendered["staging"]
    assert list(tmp_path.glob("k8s/*/horizontalpodautoscaler--*.yaml"))
    for path in tmp_path.glob("k8s/*/horizontalpodautoscaler--*.yaml"):
        spec = yaml.safe_load(path.read_text())["spec"]
        assert type(spec["maxReplicas"]) is int, path


def test_a_component_regression_is_caught_by_the_policies(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real program with the API's PDB switched off: staging's HPA minimum of 2 then has no budget."""
    from infra.components import rag_service

    monkeypatch.setattr(rag_service, "wants_pdb", lambda *_args: False)
    assert render.main(["--stack", "staging", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert (
        "POLICY  [mandatory] pdb-for-replicated-workloads: Deployment rag/rag runs 2 replicas "
        "but no PodDisruptionBudget selects its pods." in out
    )
    assert out.rstrip().splitlines()[-1].startswith("FAIL")
    assert json.loads((tmp_path / "plan.json").read_text())["ok"] is False


SCHEMA_FILES = sorted(render.SCHEMA_DIR.glob("*/*.yaml"))

CUSTOM_OBJECTS = {
    "ServiceMonitor": {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "rag", "namespace": "rag", "labels": {"release": "monitoring"}},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "rag"}},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "30s"}],
        },
    },
    "PodMonitor": {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": "postgres", "namespace": "rag"},
        "spec": {
            "selector": {"matchLabels": {"cnpg.io/cluster": "postgres"}},
            "podMetricsEndpoints": [{"port": "metrics", "interval": "30s"}],
        },
    },
    "PrometheusRule": {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "rag", "namespace": "rag"},
        "spec": {
            "groups": [{"name": "rag", "rules": [{"alert": "QdrantDown", "expr": "up == 0", "for": "5m"}]}]
        },
    },
    "Gateway": {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "rag", "namespace": "rag"},
        "spec": {
            "gatewayClassName": "eg",
            "listeners": [
                {"name": "http", "protocol": "HTTP", "port": 80, "hostname": "rag.example.com"},
                {
                    "name": "https",
                    "protocol": "HTTPS",
                    "port": 443,
                    "hostname": "rag.example.com",
                    "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": "rag-tls"}]},
                },
            ],
        },
    },
    "HTTPRoute": {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "rag", "namespace": "rag"},
        "spec": {
            "parentRefs": [{"name": "rag", "sectionName": "https"}],
            "hostnames": ["rag.example.com"],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [{"name": "rag", "port": 80}],
                    "timeouts": {"request": "30s"},
                }
            ],
        },
    },
    "ClusterIssuer": {
        "apiVersion": "cert-manager.io/v1",
        "kind": "ClusterIssuer",
        "metadata": {"name": "letsencrypt"},
        "spec": {
            "acme": {
                "server": "https://acme-v02.api.letsencrypt.org/directory",
                "email": "platform@example.com",
                "privateKeySecretRef": {"name": "letsencrypt-account-key"},
                "solvers": [
                    {
                        "http01": {
                            "gatewayHTTPRoute": {
                                "parentRefs": [{"name": "rag", "namespace": "rag", "sectionName": "http"}],
                                "podTemplate": {"spec": {"nodeSelector": {"pool": "system"}}},
                            }
                        }
                    }
                ],
            }
        },
    },
    "Issuer": {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Issuer",
        "metadata": {"name": "selfsigned", "namespace": "pr-1"},
        "spec": {"selfSigned": {}},
    },
    "Certificate": {
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {"name": "rag", "namespace": "rag"},
        "spec": {
            "secretName": "rag-tls",
            "dnsNames": ["rag.example.com"],
            "issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer", "group": "cert-manager.io"},
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
        },
    },
}

CUSTOM_OBJECTS.update(
    {
        "EnvoyProxy": {
            "apiVersion": "gateway.envoyproxy.io/v1alpha1",
            "kind": "EnvoyProxy",
            "metadata": {"name": "rag-proxy", "namespace": "envoy-gateway-system"},
            "spec": envoy_proxy_spec(internal=True),
        },
        "GatewayClass": {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": "eg"},
            "spec": {
                "controllerName": "gateway.envoyproxy.io/gatewayclass-controller",
                "parametersRef": {
                    "group": "gateway.envoyproxy.io",
                    "kind": "EnvoyProxy",
                    "name": "rag-proxy",
                    "namespace": "envoy-gateway-system",
                },
            },
        },
        "Cluster": {
            "apiVersion": "postgresql.cnpg.io/v1",
            "kind": "Cluster",
            "metadata": {"name": "postgres", "namespace": "rag"},
            "spec": {
                "instances": 2,
                "imageName": "ghcr.io/cloudnative-pg/postgresql:17.5",
                "storage": {"size": "10Gi"},
                "bootstrap": {"initdb": {"database": "rag", "owner": "rag"}},
                "affinity": {"enablePodAntiAffinity": True, "topologyKey": "kubernetes.io/hostname"},
            },
        },
        "ScheduledBackup": {
            "apiVersion": "postgresql.cnpg.io/v1",
            "kind": "ScheduledBackup",
            "metadata": {"name": "postgres", "namespace": "rag"},
            "spec": {
                "schedule": "0 0 3 * * *",
                "cluster": {"name": "postgres"},
                "method": "barmanObjectStore",
            },
        },
        "HealthCheckPolicy": {
            "apiVersion": "networking.gke.io/v1",
            "kind": "HealthCheckPolicy",
            "metadata": {"name": "rag", "namespace": "rag"},
            "spec": {
                "default": {
                    "config": {"type": "HTTP", "httpHealthCheck": {"requestPath": "/readyz", "port": 8000}}
                },
                "targetRef": {"group": "", "kind": "Service", "name": "rag"},
            },
        },
    }
)

#: One typo'd field per kind, at a nested path, and the error it must produce.
TYPOS = {
    "EnvoyProxy": (
        ("spec", "provider", "kubernetes", "envoyService"),
        "anotations",
        "spec.provider.kubernetes.envoyService",
    ),
    "GatewayClass": (("spec", "parametersRef"), "namespce", "spec.parametersRef"),
    "Cluster": (("spec", "storage"), "sise", "spec.storage"),
    "ScheduledBackup": (("spec", "cluster"), "nam", "spec.cluster"),
    "HealthCheckPolicy": (
        ("spec", "default", "config", "httpHealthCheck"),
        "path",
        "spec.default.config.httpHealthCheck",
    ),
    "ServiceMonitor": (("spec", "endpoints", 0), "intervall", "spec.endpoints.0"),
    "PodMonitor": (("spec", "podMetricsEndpoints", 0), "targetPorts", "spec.podMetricsEndpoints.0"),
    "PrometheusRule": (("spec", "groups", 0, "rules", 0), "severity", "spec.groups.0.rules.0"),
    "Gateway": (("spec", "listeners", 1, "tls"), "certificateRef", "spec.listeners.1.tls"),
    "HTTPRoute": (("spec", "rules", 0, "backendRefs", 0), "weigth", "spec.rules.0.backendRefs.0"),
    "Certificate": (("spec", "privateKey"), "bits", "spec.privateKey"),
    "Issuer": (("spec", "selfSigned"), "isCA", "spec.selfSigned"),
    "ClusterIssuer": (
        ("spec", "acme", "solvers", 0, "http01", "gatewayHTTPRoute"),
        "parentRef",
        "spec.acme.solvers.0.http01.gatewayHTTPRoute",
    ),
}


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda p: p.name)
def test_vendored_schemas_name_their_source_and_compile(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert set(doc) >= {"kind", "apiVersion", "version", "source", "schema"}
    assert doc["source"].startswith("https://github.com/")
    assert "/blob/" in doc["source"]
    assert path.name == f"{doc['kind'].lower()}_{doc['apiVersion'].rsplit('/', 1)[1]}.yaml"
    strict = render.strict_schema(doc["schema"])
    jsonschema.Draft202012Validator(
        strict, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).check_schema(strict)
    assert strict["properties"]["spec"]["additionalProperties"] is False


def _declared_default(key: str) -> dict:
    declared = yaml.safe_load((Path(__file__).resolve().parents[2] / "Pulumi.yaml").read_text())["config"]
    return declared[key]["default"]


def test_vendored_schemas_are_those_of_the_pinned_versions() -> None:
    """A schema from another release than the one the stack installs would pass fields the cluster refuses (or
    refuse fields it takes): each vendored file names the version the program pins, and comes from that tag."""
    from infra.components.postgres import BARMAN_CLOUD_CHART_VERSION, CNPG_CHART_VERSION

    versions = {
        path.relative_to(render.SCHEMA_DIR).as_posix(): yaml.safe_load(path.read_text())
        for path in SCHEMA_FILES
    }
    cert_manager = _declared_default("tls")["certManagerVersion"]
    chart = _declared_default("monitoring")["chartVersion"]
    envoy_gateway = ENVOY_GATEWAY_CHART[1]
    expected = {
        "cert-manager.io/": f"cert-manager {cert_manager}",
        "monitoring.coreos.com/": f"(kube-prometheus-stack {chart})",
        "gateway.envoyproxy.io/": f"Envoy Gateway {envoy_gateway}",
        # The Gateway API bundle Envoy Gateway's chart installs on EKS (charts/gateway-helm/charts/crds at its tag);
        # the standard channel, the subset GKE's managed CRDs and any conformant implementation serve.
        "gateway.networking.k8s.io/": "Gateway API v1.6.1, standard channel",
        "postgresql.cnpg.io/": f"(cloudnative-pg chart {CNPG_CHART_VERSION})",
        "barmancloud.cnpg.io/": f"(plugin-barman-cloud chart {BARMAN_CLOUD_CHART_VERSION})",
        "networking.gke.io/": "gke-gateway-api",
    }
    for name, doc in versions.items():
        (want,) = [v for prefix, v in expected.items() if name.startswith(prefix)]
        assert want in doc["version"], (name, doc["version"])
        assert "main" not in doc["source"].split("/blob/")[1].split("/")[0]  # a commit, not a branch
        assert "partial" not in doc["version"]


@pytest.mark.parametrize("kind", sorted(CUSTOM_OBJECTS))
def test_custom_resources_validate_strictly(kind: str) -> None:
    good = copy.deepcopy(CUSTOM_OBJECTS[kind])
    validated_by, errors = render.validate_manifest(good)
    assert errors == []
    group, version = good["apiVersion"].rsplit("/", 1)
    assert validated_by.startswith(f"{group}/{kind.lower()}_{version}.yaml (")

    path, field, where = TYPOS[kind]
    bad = copy.deepcopy(good)
    target = bad
    for step in path:
        target = target[step]
    target[field] = "x"
    bad["metadata"]["labelz"] = {}
    _, errors = render.validate_manifest(bad)
    assert errors == [
        "Additional properties are not allowed ('labelz' was unexpected) (at metadata)",
        f"Additional properties are not allowed ('{field}' was unexpected) (at {where})",
    ]


def test_custom_resource_required_fields_and_bounds() -> None:
    gateway = copy.deepcopy(CUSTOM_OBJECTS["Gateway"])
    gateway["spec"]["listeners"][0]["port"] = 0
    del gateway["spec"]["gatewayClassName"]
    _, errors = render.validate_manifest(gateway)
    assert errors == [
        "'gatewayClassName' is a required property (at spec)",
        "0 is less than the minimum of 1 (at spec.listeners.0.port)",
    ]


def test_re2_inline_flags_work_in_python() -> None:
    rule = copy.deepcopy(CUSTOM_OBJECTS["PrometheusRule"])
    rule["spec"]["groups"][0]["partial_response_strategy"] = "ABORT"
    assert render.validate_manifest(rule)[1] == []
    rule["spec"]["groups"][0]["partial_response_strategy"] = "retry"
    assert render.validate_manifest(rule)[1] == [
        "'retry' does not match '(?i)^(abort|warn)?$' (at spec.groups.0.partial_response_strategy)"
    ]


def _workload(run: StackRun, kind: str, predicate) -> RecordedResource:
    matches = [r for r in k8s_objects(run) if r.inputs.get("kind") == kind and predicate(r)]
    assert len(matches) == 1, [r.name for r in matches]
    return matches[0]


def test_policies_are_in_scope_for_the_real_api_and_qdrant_workloads(runs: dict[str, StackRun]) -> None:
    """Guards the policies' defaults (API pod labels, Qdrant image) against drift in the components."""
    run = runs["staging"]
    api = _workload(
        run,
        "Deployment",
        lambda r: (
            r.inputs["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == "api"
        ),
    )
    qdrant = _workload(
        run,
        "StatefulSet",
        lambda r: any(
            "qdrant/qdrant" in c["image"] for c in r.inputs["spec"]["template"]["spec"]["containers"]
        ),
    )
    api_inputs = copy.deepcopy(api.inputs)
    for c in api_inputs["spec"]["template"]["spec"]["containers"]:
        c.pop("readinessProbe", None)
    qdrant_inputs = copy.deepcopy(qdrant.inputs)
    for c in qdrant_inputs["spec"]["template"]["spec"]["containers"]:
        c["env"] = [e for e in c.get("env", []) if e["name"] != "QDRANT__SERVICE__API_KEY"]
    broken = only(
        run,
        dataclasses.replace(api, inputs=api_inputs),
        dataclasses.replace(qdrant, inputs=qdrant_inputs),
    )
    found = {(v.policy, v.urn) for v in run_policies(broken.resources, environment="staging")}
    assert ("health-probes", api.urn) in found
    assert ("qdrant-api-key", qdrant.urn) in found
    resource_rules = {
        "health-probes",
        "qdrant-api-key",
        "container-resources",
        "run-as-non-root",
        "pinned-images",
    }
    unmodified = {v.policy for v in run_policies([api, qdrant], environment="staging")}
    assert not unmodified & resource_rules


def test_helm_values_are_redacted_when_secret() -> None:
    release = RecordedResource(
        type="kubernetes:helm.sh/v3:Release",
        name="monitoring",
        urn="urn:pulumi:dev::rag::kubernetes:helm.sh/v3:Release::monitoring",
        custom=True,
        inputs={
            "chart": "kube-prometheus-stack",
            "version": "77.0.0",
            "repositoryOpts": {"repo": "https://prometheus-community.github.io/helm-charts"},
            "values": {"grafana": {"adminPassword": "hunter2", "replicas": 2.0, "ingress": {"host": "g"}}},
        },
        secret_keys=frozenset(),
        parent=None,
        protect=False,
        provider=None,
        depends_on=(),
    )
    doc = render.helm_document(release)
    assert doc["chart"] == "kube-prometheus-stack"
    assert doc["version"] == "77.0.0"
    assert doc["repository"] == "https://prometheus-community.github.io/helm-charts"
    assert doc["values"] == {
        "grafana": {"adminPassword": "<redacted>", "replicas": 2, "ingress": {"host": "g"}}
    }
    secret = dataclasses.replace(release, secret_keys=frozenset({"values"}))
    assert render.helm_document(secret)["values"]["grafana"]["ingress"] == {"host": "<redacted>"}


def test_plan_warns_when_alerts_reach_nobody(rendered: dict[str, tuple]) -> None:
    report, out = rendered["staging"]  # monitoring on, no receiver configured
    assert report.ok
    assert any(w.startswith("alerts reach nobody") for w in report.warnings)
    assert "alerts reach nobody" in (out / "plan.md").read_text()
    assert json.loads((out / "plan.json").read_text())["warnings"] == report.warnings
    dev_report, _ = rendered["dev"]  # no monitoring: nothing to warn about
    assert dev_report.warnings == []


def test_a_configured_receiver_silences_the_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--stack", "staging", "--out", str(tmp_path), "--set", "pagerdutyRoutingKey=abc123"]
    assert render.main(args) == 0
    assert "alerts reach nobody" not in capsys.readouterr().out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert not [w for w in plan["warnings"] if w.startswith("alerts reach nobody")]
    assert plan["outputs"]["alertReceivers"] == ["pagerduty"]


def test_main_prints_the_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert render.plan_warnings(cached_run("staging"))
    report = render.Report(stack="staging", environment="staging", warnings=["alerts reach nobody: x"])
    report.summary = render.summarize(cached_run("dev"), "staging")
    render.print_report(report, tmp_path)
    assert "  WARNING alerts reach nobody: x" in capsys.readouterr().out


def test_plan_warns_when_alert_runbook_links_are_not_urls(tmp_path: Path) -> None:
    """The default rag:monitoring.runbookUrl is the relative path docs/runbooks.md: every alert's runbook_url in
    Slack, PagerDuty or e-mail is then a link nobody paged can open. A published URL silences the warning."""
    warnings = render.plan_warnings(cached_run("staging"))
    assert any(
        w.startswith(
            "alert runbook links are not URLs: every alert's runbook_url starts with 'docs/runbooks.md'"
        )
        for w in warnings
    ), warnings
    args = ["--stack", "staging", "--out", str(tmp_path), "--set", "pagerdutyRoutingKey=abc123"]
    url = "https://github.com/acme/rag/blob/main/docs/runbooks.md"
    assert render.main([*args, "--set", f"monitoring.runbookUrl={url}"]) == 0
    assert json.loads((tmp_path / "plan.json").read_text())["warnings"] == []


def test_plan_warns_while_prod_pins_the_example_aws_account() -> None:
    """The committed Pulumi.prod.yaml pins AWS's example account 111122223333 (a real account must replace it): a
    real `up` stops at the provider, so the plan says so in review rather than on the first deploy."""
    warnings = render.plan_warnings(cached_run("prod"))
    assert any(
        w.startswith("aws:allowedAccountIds in Pulumi.prod.yaml holds 111122223333") for w in warnings
    ), warnings
    assert not [
        w for w in render.plan_warnings(cached_run("staging")) if w.startswith("aws:allowedAccountIds")
    ]
