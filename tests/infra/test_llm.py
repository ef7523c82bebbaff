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
    (rule,) = [r for r in egress if {"protocol": "TCP", "port": 8000} in r["ports"]]
    assert rule["to"] == [{"ipBlock": {"cidr": "10.96.0.0/12"}}]
    assert "LLM_API_KEY" not in result.by_name("rag-secrets").inputs["stringData"]


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
