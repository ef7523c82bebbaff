"""The real pack: start ``infra/policy`` the way the Pulumi CLI does and talk to its analyzer over gRPC.

The CLI launches the pack through ``python -m pulumi.policy`` (which runs ``infra/policy/__main__.py``) with the
stack's config in ``PULUMI_CONFIG`` and the stack in ``PULUMI_STACK``, reads the port it prints, then calls ``GetAnalyzerInfo`` / ``Analyze`` / ``AnalyzeStack``. This
test does the same, so ``pulumi preview --policy-pack infra/policy`` is exercised end to end minus the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import empty_pb2, struct_pb2
from policy_builders import (
    API_LABELS,
    HTTP_LISTENER,
    HTTPS_LISTENER,
    gateway,
    pdb,
    qdrant_statefulset,
    workload,
)
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

REPO = Path(__file__).resolve().parents[3]
PACK = REPO / "infra" / "policy"


@pytest.fixture(scope="module")
def analyzer() -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    env = {
        **os.environ,
        "PULUMI_CONFIG": json.dumps({"rag:environment": "prod"}),
        "PULUMI_PROJECT": "rag",
        "PULUMI_STACK": "prod",
        "PULUMI_DRY_RUN": "true",
        "PYTHONPATH": "",
    }
    # Exactly the launcher the Python language host uses for a policy pack: `python -u -m pulumi.policy
    # <engine address> <pack dir>`, which runs the pack's __main__.py; the engine address is unused until an error.
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "pulumi.policy", "127.0.0.1:1", str(PACK)],
        cwd=PACK,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = proc.stdout.readline().decode().strip() if proc.stdout else ""
        assert line.isdigit(), (
            f"pack printed {line!r}; stderr: {proc.stderr.read().decode() if proc.stderr else ''}"
        )
        channel = grpc.insecure_channel(f"127.0.0.1:{line}")
        yield analyzer_pb2_grpc.AnalyzerStub(channel)
        channel.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


def violation(diagnostic: analyzer_pb2.AnalyzeDiagnostic) -> str:
    """The rule's message: the analyzer prefixes it with the policy description and a newline."""
    description, message = diagnostic.message.split("\n", 1)
    assert description == diagnostic.description
    return message


def urn(type_: str, name: str) -> str:
    return f"urn:pulumi:prod::rag::{type_}::{name}"


def test_pack_describes_its_mandatory_policies(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    info = analyzer.GetAnalyzerInfo(empty_pb2.Empty())
    assert info.name == "rag-platform"
    names = {p.name for p in info.policies}
    assert {"container-resources", "pdb-for-replicated-workloads", "protect-stateful-in-prod"} <= names
    assert {p.enforcementLevel for p in info.policies} == {analyzer_pb2.MANDATORY}


def test_pack_reports_resource_violations_with_the_stack_environment(
    analyzer: analyzer_pb2_grpc.AnalyzerStub,
) -> None:
    sts_type = "kubernetes:apps/v1:StatefulSet"
    bad = qdrant_statefulset()
    bad["spec"]["template"]["spec"]["containers"][0]["image"] = "qdrant/qdrant:latest"
    response = analyzer.Analyze(
        analyzer_pb2.AnalyzeRequest(
            type=sts_type,
            properties=struct(bad),
            urn=urn(sts_type, "qdrant"),
            name="qdrant",
            options=analyzer_pb2.AnalyzerResourceOptions(protect=False),
        )
    )
    found = {(d.policyName, violation(d)) for d in response.diagnostics}
    assert found == {
        (
            "pinned-images",
            "StatefulSet rag/qdrant: container 'qdrant' uses the mutable tag in 'qdrant/qdrant:latest'.",
        ),
        (
            "protect-stateful-in-prod",
            "kubernetes:apps/v1:StatefulSet qdrant holds data and must be protected in prod "
            "(ResourceOptions(protect=True)).",
        ),
    }
    assert {d.enforcementLevel for d in response.diagnostics} == {analyzer_pb2.MANDATORY}

    good = analyzer.Analyze(
        analyzer_pb2.AnalyzeRequest(
            type=sts_type,
            properties=struct(qdrant_statefulset()),
            urn=urn(sts_type, "qdrant"),
            name="qdrant",
            options=analyzer_pb2.AnalyzerResourceOptions(protect=True),
        )
    )
    assert list(good.diagnostics) == []


def test_pack_reports_stack_violations(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    dep_type, pdb_type = "kubernetes:apps/v1:Deployment", "kubernetes:policy/v1:PodDisruptionBudget"
    gw_type = "kubernetes:gateway.networking.k8s.io/v1:Gateway"
    deployment = analyzer_pb2.AnalyzerResource(
        type=dep_type, properties=struct(workload(replicas=3)), urn=urn(dep_type, "svc"), name="svc"
    )
    response = analyzer.AnalyzeStack(analyzer_pb2.AnalyzeStackRequest(resources=[deployment]))
    assert sorted((d.policyName, violation(d), d.urn) for d in response.diagnostics) == [
        (
            "pdb-for-replicated-workloads",
            "Deployment rag/rag-service runs 3 replicas but no PodDisruptionBudget selects its pods.",
            urn(dep_type, "svc"),
        ),
        (
            "tls-entry-point-outside-dev",
            "prod has no TLS entry point: declare a Gateway with an HTTPS listener (certificateRefs) "
            "or an Ingress with spec.tls.",
            "",
        ),
    ]
    entry = analyzer_pb2.AnalyzerResource(
        type=gw_type,
        properties=struct(gateway([HTTP_LISTENER, HTTPS_LISTENER])),
        urn=urn(gw_type, "gw"),
        name="gw",
    )
    budget = analyzer_pb2.AnalyzerResource(
        type=pdb_type,
        properties=struct(pdb("rag-service", API_LABELS)),
        urn=urn(pdb_type, "pdb"),
        name="pdb",
    )
    ok = analyzer.AnalyzeStack(analyzer_pb2.AnalyzeStackRequest(resources=[deployment, budget, entry]))
    assert list(ok.diagnostics) == []


def test_policy_project_file_points_at_the_project_virtualenv() -> None:
    project = yaml.safe_load((PACK / "PulumiPolicy.yaml").read_text())
    assert project["runtime"]["name"] == "python"
    assert (PACK / project["runtime"]["options"]["virtualenv"]).resolve() == REPO / ".venv"
    assert project["version"]
