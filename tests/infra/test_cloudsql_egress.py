"""The service's way to Cloud SQL: its NetworkPolicy admits port 5432 in the private services range only.

Cloud SQL with a private IP takes its address from the range the private services connection reserves
(infra/clusters/gke.py PRIVATE_SERVICES_CIDR, `reserved_peering_ranges`); an egress rule with ports and no peers
(`to` absent) admits every destination (networking.k8s.io/v1 NetworkPolicyEgressRule: "If this field is empty or
missing, this rule matches all destinations"), the internet included.
"""

from __future__ import annotations

import pytest

from infra.clusters.gke import PRIVATE_SERVICES_CIDR
from tests.infra.conftest import run


def postgres_rules(result, policy: str) -> list[dict]:
    egress = result.by_name(policy).inputs["spec"]["egress"]
    return [rule for rule in egress if {"protocol": "TCP", "port": 5432} in rule.get("ports", [])]


@pytest.mark.parametrize("policy", ["rag-api-netpol", "rag-worker-netpol"])
def test_cloud_sql_is_reached_in_the_private_services_range_only(policy: str) -> None:
    result = run("prod", "gke")
    assert result.by_name("postgres-instance").type == "gcp:sql/databaseInstance:DatabaseInstance"
    (rule,) = postgres_rules(result, policy)
    assert rule["to"] == [{"ipBlock": {"cidr": PRIVATE_SERVICES_CIDR}}]


def test_rds_keeps_the_vpc_range() -> None:
    (rule,) = postgres_rules(run("prod"), "rag-api-netpol")
    assert rule["to"] == [{"ipBlock": {"cidr": "10.0.0.0/16"}}]
