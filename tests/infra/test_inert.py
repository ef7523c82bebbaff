"""`make plan` names the config a stack sets that does nothing for its target (`infra.inert`, E10 of EYES4).

Each reported key is checked against the real program: changed, the recorded resources stay the same; the
same change on the target that reads it changes them. So the plan never calls a working key ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra import render
from infra.offline import StackRun
from tests.infra.conftest import run


def recorded(result: StackRun) -> list[tuple[str, str]]:
    return sorted((r.urn, json.dumps(r.inputs, sort_keys=True, default=str)) for r in result.resources)


def test_the_committed_stacks_report_their_inert_keys() -> None:
    prod = render.ignored_config(run("prod"))
    assert [line.split(" has no effect")[0] for line in prod] == [
        "rag:cluster.gke (12 keys) in Pulumi.prod.yaml",
        "rag:postgres.cloudnative.instances in Pulumi.prod.yaml",
        "rag:postgres.managed.tier in Pulumi.prod.yaml",
        "rag:redis.managed.tier in Pulumi.prod.yaml",
        "rag:redis.managed.memorySizeGb in Pulumi.prod.yaml",
        "rag:service.replicas in Pulumi.prod.yaml",
    ]
    assert any("ElastiCache is sized by redis.managed.nodeType" in line for line in prod)
    staging, replicas = render.ignored_config(run("staging"))
    assert staging.startswith(
        "rag:cluster.eks (9 keys) in Pulumi.staging.yaml has no effect: cluster.provider is gke"
    )
    assert replicas.startswith(
        "rag:service.replicas in Pulumi.staging.yaml has no effect: service.autoscaling.enabled is true"
    )
    assert render.ignored_config(run("dev")) == []


@pytest.mark.parametrize(
    ("overrides", "reader"),
    [
        ({"postgres": {"cloudnative": {"instances": 5}}}, {"postgres": {"mode": "cloudnative"}}),
        ({"postgres": {"managed": {"tier": "db-custom-4-15360"}}}, {"cluster": {"provider": "gke"}}),
        # prod on GKE refuses BASIC: the counterpart is staging's Memorystore.
        ({"redis": {"managed": {"tier": "BASIC"}}}, {"cluster": {"provider": "gke"}, "stack": "staging"}),
        ({"redis": {"managed": {"memorySizeGb": 7}}}, {"cluster": {"provider": "gke"}}),
        ({"cluster": {"gke": {"nodePool": {"maxNodes": 5}}}}, {"cluster": {"provider": "gke"}}),
    ],
    ids=lambda value: json.dumps(value, sort_keys=True),
)
def test_a_reported_key_changes_nothing_here_and_something_where_it_applies(
    overrides: dict, reader: dict
) -> None:
    from infra.config import deep_merge

    assert recorded(run("prod", **overrides)) == recorded(run("prod"))
    reader = dict(reader)
    stack = reader.pop("stack", "prod")
    target = "gke" if reader.get("cluster") else None
    extra = reader if stack == "prod" else {**reader, "redis": {"mode": "managed"}}
    changed = deep_merge(extra, overrides)
    assert recorded(run(stack, target, **changed)) != recorded(run(stack, target, **extra))


def test_service_replicas_is_reported_and_inert_where_the_hpa_sets_the_count() -> None:
    """s21-daytwo: with autoscaling on, the Deployment is sent minReplicas and the HPA owns the count."""
    assert recorded(run("prod", service={"replicas": 5})) == recorded(run("prod"))
    assert recorded(run("staging", service={"replicas": 4})) == recorded(run("staging"))
    scaled = {"service": {"autoscaling": {"enabled": True}}}
    assert any(
        line.startswith("rag:service.replicas in Pulumi.dev.yaml has no effect: service.autoscaling.enabled")
        for line in render.ignored_config(run("dev", **scaled))
    )
    # Without the HPA the count is the Deployment's: reported nowhere, and it changes what is deployed.
    assert not any("service.replicas" in line for line in render.ignored_config(run("dev")))
    assert recorded(run("dev", service={"replicas": 2})) != recorded(run("dev"))


def test_a_redis_patch_version_is_reported_as_not_applied_on_elasticache_only() -> None:
    """s21-daytwo: ElastiCache's engineVersion is major.minor for 7 and above, so a patch pin deploys nothing on
    prod; the plan says so. In-cluster Valkey (staging) runs the exact image tag, so it is not reported there."""
    patch = {"redis": {"version": "8.1.4"}}
    assert recorded(run("prod", **patch)) == recorded(run("prod"))
    (line,) = [line for line in render.ignored_config(run("prod", **patch)) if "redis.version" in line]
    assert line.startswith("rag:redis.version 8.1.4 in ")
    assert "is applied only as 8.1" in line
    assert "patch part .4 is not applied on eks" in line
    assert not any("redis.version" in line for line in render.ignored_config(run("prod")))
    # The minor part does reach ElastiCache; the patch does reach the in-cluster image.
    assert recorded(run("prod", redis={"version": "8.2.0"})) != recorded(run("prod"))
    assert recorded(run("staging", **patch)) != recorded(run("staging"))
    assert not any("redis.version" in line for line in render.ignored_config(run("staging", **patch)))


def test_a_key_from_the_command_line_is_attributed_to_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "--stack",
        "staging",
        "--out",
        str(tmp_path),
        "--set",
        'redis={"managed":{"nodeType":"cache.m7g.xlarge"}}',
    ]
    render.main(args)
    out = capsys.readouterr().out
    assert "  IGNORED rag:redis.managed.nodeType in --set has no effect: redis.mode is incluster" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert (
        "rag:redis.managed.nodeType in --set has no effect: redis.mode is incluster" in plan["ignoredConfig"]
    )
    assert "## Ignored config" in (tmp_path / "plan.md").read_text()


def test_apply_immediately_is_reported_on_gke_and_changes_nothing_there() -> None:
    # Cloud SQL applies every settings change at `pulumi up`: RDS's switch between now and the window is inert there.
    gke = {"cluster": {"provider": "gke"}}
    changed = {"postgres": {"mode": "managed", "managed": {"applyImmediately": True}}}
    assert recorded(run("prod", "gke", **gke, **changed)) == recorded(run("prod", "gke", **gke))
    assert recorded(run("prod", **changed)) != recorded(run("prod"))
    lines = render.ignored_config(run("prod", "gke", **gke, **changed))
    assert any(
        line.startswith("rag:postgres.managed.applyImmediately in ") and "RDS" in line for line in lines
    )


@pytest.mark.parametrize(
    "overrides",
    [{"storageGb": 150}, {"backupRetentionDays": 21}],
    ids=lambda value: json.dumps(value, sort_keys=True),
)
def test_storage_and_backup_retention_change_cloud_sql_and_are_not_reported_there(overrides: dict) -> None:
    # They were RDS-only until Cloud SQL honoured them (disk_size/autoresize limit, retained backups and logs).
    (key,) = overrides
    gke = {"cluster": {"provider": "gke"}}
    changed = {"postgres": {"mode": "managed", "managed": overrides}}
    assert recorded(run("prod", "gke", **gke, **changed)) != recorded(run("prod", "gke", **gke))
    lines = render.ignored_config(run("prod", "gke", **gke, **changed))
    assert not any(line.startswith(f"rag:postgres.managed.{key} ") for line in lines), lines


# EYES6 G8: keys a switch of their own block turns off. Each: (stack, target, the switch as set, the key's change,
# the line's start, the switch turned on so the same change shows).
SWITCHED_OFF = [
    (
        "dev",
        None,
        {},
        {"namespaceQuota": {"pods": 20}},
        "rag:namespaceQuota.pods in --set has no effect: namespaceQuota.enabled is false",
        {"namespaceQuota": {"enabled": True}},
    ),
    (
        "dev",
        None,
        {},
        {"llm": {"maxTokens": 256}},
        "rag:llm.maxTokens in --set has no effect: llm.enabled is false",
        {
            "llm": {
                "enabled": True,
                "baseUrl": "http://llm.ai.svc:8000/v1",
                "model": "org/model",
                "keyless": True,
            }
        },
    ),
    (
        "dev",
        None,
        {"monitoring": {"enabled": True, "mode": "existing"}},
        {"monitoring": {"retention": "30d"}},
        "rag:monitoring.retention in --set has no effect: monitoring.mode is existing",
        {"monitoring": {"enabled": True, "mode": "install"}},
    ),
    (
        "dev",
        None,
        {},
        {"gateway": {"ingress": {"className": "nginx"}}},
        "rag:gateway.ingress.className in --set has no effect: gateway.ingress.enabled is false",
        {"gateway": {"ingress": {"enabled": True}}},
    ),
    (
        "prod",
        None,
        {},
        {"cluster": {"eks": {"publicAccessCidrs": ["203.0.113.0/24"]}}},
        "rag:cluster.eks.publicAccessCidrs in --set has no effect: cluster.eks.endpointPublicAccess is false",
        {"cluster": {"eks": {"endpointPublicAccess": True, "publicAccessCidrs": ["198.51.100.0/24"]}}},
    ),
    (
        "dev",
        None,
        {},
        {"cluster": {"imageRetention": {"neverDeployedDays": 7}}},
        "rag:cluster.imageRetention in --set has no effect: cluster.provider is existing",
        {"cluster": {"provider": "eks"}, "gateway": {"className": "envoy-gateway"}},
    ),
    # An existing ClusterIssuer issues the certificate: the stack's own issuer and its ACME e-mail are not made.
    (
        "staging",
        None,
        {"tls": {"clusterIssuer": "corp-ca"}},
        {"tls": {"issuer": "letsencrypt"}},
        "rag:tls.issuer in Pulumi.staging.yaml has no effect: tls.clusterIssuer is set",
        {"tls": {"clusterIssuer": ""}},
    ),
    (
        "staging",
        None,
        {"tls": {"clusterIssuer": "corp-ca"}},
        {"tls": {"email": "ops@example.com"}},
        "rag:tls.email in Pulumi.staging.yaml has no effect: tls.clusterIssuer is set",
        {"tls": {"clusterIssuer": ""}},
    ),
    (
        "staging",
        None,
        {"tls": {"issuer": "selfSigned"}},
        {"tls": {"email": "ops@example.com"}},
        "rag:tls.email in Pulumi.staging.yaml has no effect: tls.issuer is selfSigned",
        {"tls": {"issuer": "letsencrypt-staging"}},
    ),
    # No webhook, no Slack receiver: its channel goes nowhere.
    (
        "prod",
        None,
        {},
        {"monitoring": {"alerting": {"slack": {"channel": "#rag-alerts"}}}},
        "rag:monitoring.alerting.slack.channel in --set has no effect: the secret rag:slackWebhookUrl is not set",
        {"slackWebhookUrl": "https://hooks.slack.com/services/T0/B0/X"},
    ),
]


@pytest.mark.parametrize(
    ("stack", "target", "switch", "change", "line", "on"),
    SWITCHED_OFF,
    ids=[c[4].split()[0] for c in SWITCHED_OFF],
)
def test_a_key_its_own_switch_turns_off_is_reported_and_inert(
    stack: str, target: str | None, switch: dict, change: dict, line: str, on: dict
) -> None:
    from infra.config import deep_merge

    before, after = run(stack, target, **switch), run(stack, target, **deep_merge(switch, change))
    assert recorded(after) == recorded(before)
    assert any(reported.startswith(line) for reported in render.ignored_config(after)), render.ignored_config(
        after
    )
    # Switched on, the same change changes what is deployed, and is not reported.
    turned_on = deep_merge(switch, on)
    changed = run(stack, target, **deep_merge(turned_on, change))
    assert recorded(changed) != recorded(run(stack, target, **turned_on))
    assert not any(
        reported.startswith(line.split(" in ")[0] + " ") for reported in render.ignored_config(changed)
    )


def test_the_load_balancer_choice_is_reported_and_inert_on_an_existing_cluster() -> None:
    changed = run("dev", gateway={"loadBalancer": "internal"})
    assert recorded(changed) == recorded(run("dev"))
    assert any(
        line.startswith("rag:gateway.loadBalancer in --set has no effect: cluster.provider is existing")
        for line in render.ignored_config(changed)
    )
    # On a cloud target it picks the load balancer's scheme.
    public = run("dev", "eks", gateway={"loadBalancer": "public"})
    assert recorded(run("dev", "eks", gateway={"loadBalancer": "internal"})) != recorded(public)
