"""rag:llm and rag:llmApiKey: what answer generation deploys (ConfigMap, Secret, egress, alerts) and refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.components.monitoring import AlertThresholds, MonitoringArgs, alert_rules
from infra.config import ConfigError
from infra.offline import run_stack
from tests.infra.conftest import run

REPO_ROOT = Path(__file__).resolve().parents[2]

PROVIDER = {"enabled": True, "baseUrl": "https://api.openai.com/v1", "model": "gpt-4o-mini"}
KEY = "sk-offline-llm-key-0123456789"
PRIVATE = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"]


def test_disabled_by_default_the_service_answers_extractively() -> None:
    result = run("dev")
    data = result.by_name("rag-config").inputs["data"]
    assert data["ANSWER_MIN_SCORE"] == "0.3"
    assert not any(name.startswith("LLM_") for name in data)
    assert "LLM_API_KEY" not in result.by_name("rag-secrets").inputs["stringData"]
    assert "0.0.0.0/0" not in str(result.by_name("rag-api-netpol").inputs["spec"]["egress"])


def test_a_configured_provider_reaches_the_configmap_and_its_key_the_secret_as_a_secret() -> None:
    result = run("dev", llm={**PROVIDER, "tokenBudget": "200000/hour", "maxTokens": 700}, llmApiKey=KEY)
    data = result.by_name("rag-config").inputs["data"]
    assert data["LLM_BASE_URL"] == "https://api.openai.com/v1"
    assert data["LLM_MODEL"] == "gpt-4o-mini"
    assert data["LLM_TOKEN_BUDGET"] == "200000/hour"
    assert data["LLM_MAX_TOKENS"] == "700"
    assert KEY not in str(data)
    secret = result.by_name("rag-secrets")
    assert secret.inputs["stringData"]["LLM_API_KEY"] == KEY
    assert "stringData" in secret.secret_keys


def test_only_the_api_may_reach_the_provider_and_not_the_private_ranges() -> None:
    result = run("dev", llm=PROVIDER, llmApiKey=KEY)
    egress = result.by_name("rag-api-netpol").inputs["spec"]["egress"]
    (rule,) = [r for r in egress if {"protocol": "TCP", "port": 443} in r["ports"]]
    assert rule["to"] == [{"ipBlock": {"cidr": "0.0.0.0/0", "except": PRIVATE}}]
    worker = str(result.by_name("rag-worker-netpol").inputs["spec"]["egress"])
    assert "0.0.0.0/0" not in worker


def test_an_in_cluster_provider_gets_its_own_port_and_range() -> None:
    llm = {
        **PROVIDER,
        "baseUrl": "http://vllm.models.svc:8000/v1",
        "keyless": True,
        "egressCidrs": ["10.96.0.0/12"],
        "egressExcept": [],
    }
    result = run("dev", llm=llm)
    egress = result.by_name("rag-api-netpol").inputs["spec"]["egress"]
    rules = [r for r in egress if {"protocol": "TCP", "port": 8000} in r.get("ports", [])]
    (rule,) = [r for r in rules if "ipBlock" in r["to"][0]]
    assert rule["to"] == [{"ipBlock": {"cidr": "10.96.0.0/12"}}]
    assert len(rules) == 2  # and the namespace rule, on the same port
    assert "LLM_API_KEY" not in result.by_name("rag-secrets").inputs["stringData"]


IN_CLUSTER = {**PROVIDER, "baseUrl": "http://vllm.models.svc.cluster.local:8000/v1", "keyless": True}


def _namespace_rules(egress: list[dict]) -> list[dict]:
    return [r for r in egress if any("namespaceSelector" in peer for peer in r.get("to", []))]


def test_an_in_cluster_provider_named_by_its_service_is_admitted_by_namespace() -> None:
    # The default ranges exclude the private ones, and a ClusterIP is rewritten to a backend pod's IP and
    # targetPort (DNAT) before a CNI evaluates the policy: only a rule naming the server's pods lets it through.
    result = run("prod", llm=IN_CLUSTER)
    (rule,) = _namespace_rules(result.by_name("rag-api-netpol").inputs["spec"]["egress"])
    assert rule == {
        "ports": [{"protocol": "TCP", "port": 8000}],  # baseUrl's port, not any port of that namespace
        "to": [
            {
                "podSelector": {"matchLabels": {}},
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "models"}},
            }
        ],
    }
    assert _namespace_rules(result.by_name("rag-worker-netpol").inputs["spec"]["egress"]) == []
    # A bare service name resolves in the stack's own namespace; an external host gets no such rule.
    bare = run("dev", llm={**IN_CLUSTER, "baseUrl": "http://ollama:11434/v1"})
    (rule,) = _namespace_rules(bare.by_name("rag-api-netpol").inputs["spec"]["egress"])
    assert rule["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "rag"
    sidecar = run("dev", llm={**IN_CLUSTER, "baseUrl": "http://localhost:8080/v1"})
    assert _namespace_rules(sidecar.by_name("rag-api-netpol").inputs["spec"]["egress"]) == []
    external = run("dev", llm=PROVIDER, llmApiKey=KEY)
    assert _namespace_rules(external.by_name("rag-api-netpol").inputs["spec"]["egress"]) == []
    # No internet range is needed for an in-cluster server.
    narrow = run("prod", llm={**IN_CLUSTER, "egressCidrs": []})
    egress = narrow.by_name("rag-api-netpol").inputs["spec"]["egress"]
    assert "0.0.0.0/0" not in str(egress)
    assert len(_namespace_rules(egress)) == 1


def test_the_traffic_check_requires_the_in_cluster_provider_to_be_reachable() -> None:
    import dataclasses

    from infra import traffic

    result = run("prod", llm=IN_CLUSTER)
    assert traffic.blocked(result) == []
    # Without the namespace rule (what main rendered), make plan's traffic check now fails on the API only.
    policy = result.by_name("rag-api-netpol")
    spec = dict(policy.inputs["spec"])
    spec["egress"] = [r for r in spec["egress"] if r not in _namespace_rules(spec["egress"])]
    stripped = dataclasses.replace(policy, inputs={**policy.inputs, "spec": spec})
    old = dataclasses.replace(result, resources=[stripped if r is policy else r for r in result.resources])
    ((flow, where),) = traffic.blocked(old)
    assert flow.why == "LLM_BASE_URL connects to vllm.models:8000"
    assert flow.source.labels["app.kubernetes.io/component"] == "api"
    assert where.startswith("the egress of Deployment rag ")


@pytest.mark.parametrize(
    ("llm", "key"),
    [
        ({**IN_CLUSTER, "baseUrl": "http://10.4.0.7:8000/v1"}, "rag:llm.egressExcept"),
        ({**IN_CLUSTER, "baseUrl": "http://192.168.1.20:11434/v1"}, "rag:llm.egressExcept"),
        (
            {
                **IN_CLUSTER,
                "baseUrl": "http://10.4.0.7:8000/v1",
                "egressCidrs": ["172.16.0.0/12"],
                "egressExcept": [],
            },
            "rag:llm.egressCidrs",
        ),
        ({**PROVIDER, "egressCidrs": [], "keyless": True}, "rag:llm.egressCidrs"),
    ],
)
def test_an_llm_address_the_policy_would_drop_is_refused(llm: dict, key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        run_stack("prod", config_overrides={"llm": llm})
    assert raised.value.key == key
    assert raised.value.stack_file == "Pulumi.prod.yaml"
    # Carved out of the exceptions, the same address is accepted.
    if key == "rag:llm.egressExcept":
        run_stack(
            "prod",
            config_overrides={
                "llm": {**llm, "egressCidrs": ["10.4.0.0/16", "192.168.1.0/24"], "egressExcept": []}
            },
        )


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"llm": PROVIDER}, "rag:llmApiKey"),
        ({"llm": {**PROVIDER, "baseUrl": ""}, "llmApiKey": KEY}, "rag:llm.baseUrl"),
        ({"llm": {**PROVIDER, "model": ""}, "llmApiKey": KEY}, "rag:llm.model"),
        ({"llm": {**PROVIDER, "baseUrl": "ftp://x"}, "llmApiKey": KEY}, "rag:llm.baseUrl"),
        ({"llm": {**PROVIDER, "egressCidrs": ["10.0.0.1/8"]}, "llmApiKey": KEY}, "rag:llm.egressCidrs"),
        ({"llm": {**PROVIDER, "tokenBudget": "lots"}, "llmApiKey": KEY}, "rag:llm.tokenBudget"),
        ({"llm": {**PROVIDER, "maxTokens": 8000}, "llmApiKey": KEY}, "rag:llm.maxTokens"),
    ],
)
def test_bad_llm_config_names_the_key_and_the_stack_file(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        run_stack("dev", config_overrides=overrides)
    assert raised.value.key == key
    assert raised.value.stack_file == "Pulumi.dev.yaml"


def test_llm_alerts_watch_the_llm_series_with_the_configured_thresholds() -> None:
    args = MonitoringArgs(
        service_namespace="rag",
        grafana_admin_password="x",
        service_job="rag",
        thresholds=AlertThresholds(llm_error_ratio=0.25, llm_p95_latency_seconds=12.5),
    )
    rules = {r["alert"]: r for r in alert_rules(args)}
    errors = rules["RagLlmErrorRate"]["expr"]
    assert 'rag_llm_requests_total{namespace="rag", job="rag", outcome="error"}[10m]' in errors
    assert 'outcome=~"ok|error"' in errors  # cancelled streams are not failures
    assert errors.endswith("> 0.25")
    latency = rules["RagLlmLatencyP95"]["expr"]
    assert 'rag_llm_request_duration_seconds_bucket{namespace="rag", job="rag", outcome="ok"}' in latency
    assert latency.endswith("> 12.5")


def test_llm_alert_thresholds_come_from_the_stack() -> None:
    result = run("dev", monitoring={"enabled": True}, llm={"alerts": {"errorRatePercent": 20}})
    (rule,) = list(result.of_type("kubernetes:monitoring.coreos.com/v1:PrometheusRule"))
    exprs = {r["alert"]: r["expr"] for r in rule.inputs["spec"]["groups"][0]["rules"]}
    assert exprs["RagLlmErrorRate"].endswith("> 0.2")


def test_the_llm_error_alert_and_its_runbook_name_every_cause_the_service_counts() -> None:
    """The on-call reads the description and the runbook to act on rag_llm_errors_total{cause}: a cause added
    to the service (bad_response, empty_response, protocol were missing) must be explained in both."""
    from service.app.answer.llm import classify
    from service.app.core.metrics import LLM_ERRORS

    causes = {sample.labels["cause"] for metric in LLM_ERRORS.collect() for sample in metric.samples}
    assert classify(RuntimeError("anything else")) in causes  # the fallback is pre-registered too
    assert {"timeout", "bad_response", "empty_response", "protocol"} <= causes
    args = MonitoringArgs(service_namespace="rag", grafana_admin_password="x", service_job="rag")
    rules = {r["alert"]: r for r in alert_rules(args)}
    description = rules["RagLlmErrorRate"]["annotations"]["description"]
    runbook = (REPO_ROOT / "docs" / "runbooks.md").read_text(encoding="utf-8")
    section = runbook[runbook.index("## ragllmerrorrate") :]
    section = section[: section.index("\n## ", 1)]
    for cause in causes:
        assert cause in description, cause
        assert f"`{cause}`" in section, cause


def test_an_in_cluster_provider_behind_another_service_port_is_reached_on_its_pods_port() -> None:
    """A Service mapping port 80 to vLLM's 8000: the policy sees the pod's port (the ClusterIP is rewritten to the
    pod's IP and targetPort before it is evaluated), so the rule opens `llm.targetPort`, and nothing else."""
    from infra import traffic

    mapped = {**IN_CLUSTER, "baseUrl": "http://vllm.models.svc:80/v1"}
    plain = run("prod", llm=mapped)
    ((rule,),) = [_namespace_rules(plain.by_name("rag-api-netpol").inputs["spec"]["egress"])]
    assert rule["ports"] == [{"protocol": "TCP", "port": 80}]
    ported = run("prod", llm={**mapped, "targetPort": 8000})
    (rule,) = _namespace_rules(ported.by_name("rag-api-netpol").inputs["spec"]["egress"])
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert ported.by_name("rag-config").inputs["data"]["LLM_BASE_URL"] == "http://vllm.models.svc:80/v1"
    # make plan's traffic check follows the pod's port: the API reaches the server, on 8000.
    assert traffic.blocked(ported) == []
    (flow,) = [f for f in traffic.flows(ported) if f.why.startswith("LLM_BASE_URL")]
    assert flow.port == 8000


def test_the_pods_port_of_an_external_provider_is_reported_as_ignored() -> None:
    from infra import render

    external = run("dev", llm={**PROVIDER, "targetPort": 8000}, llmApiKey=KEY)
    assert recorded_egress(external) == recorded_egress(run("dev", llm=PROVIDER, llmApiKey=KEY))
    assert any(
        line.startswith("rag:llm.targetPort in --set has no effect: llm.baseUrl names no in-cluster Service")
        for line in render.ignored_config(external)
    )


def recorded_egress(result) -> object:
    return result.by_name("rag-api-netpol").inputs["spec"]["egress"]
