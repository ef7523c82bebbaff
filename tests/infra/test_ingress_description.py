"""`rag:gateway.ingress.enabled` replaces the Gateway with an Ingress, and Pulumi.yaml says so (E11 of EYES4).

Pulumi.yaml's comment said "also create an Ingress", but the program creates the Ingress instead of the Gateway
and its routes (docs/infra.md says "instead"); an operator reading "also" would expect both entries.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.infra.conftest import run

REPO_ROOT = Path(__file__).resolve().parents[2]
GATEWAY_KINDS = ("gateway.networking.k8s.io/v1:Gateway", "gateway.networking.k8s.io/v1:HTTPRoute")


def kinds(result: object) -> set[str]:
    return {r.type.removeprefix("kubernetes:") for r in result.resources}  # type: ignore[attr-defined]


def test_the_ingress_replaces_the_gateway_and_its_routes() -> None:
    gateway = kinds(run("dev"))
    ingress = kinds(run("dev", gateway={"ingress": {"enabled": True, "className": "nginx"}}))
    assert set(GATEWAY_KINDS) <= gateway
    assert "networking.k8s.io/v1:Ingress" not in gateway
    assert "networking.k8s.io/v1:Ingress" in ingress
    assert not set(GATEWAY_KINDS) & ingress


def test_pulumi_yaml_describes_the_ingress_as_a_replacement() -> None:
    text = (REPO_ROOT / "Pulumi.yaml").read_text(encoding="utf-8")
    block = text[text.index("\n  gateway:\n") : text.index("\n  monitoring:\n")]
    (line,) = re.findall(r"\n      ingress:\n        enabled: false +#([^\n]*)", block)
    assert "instead of" in line
    assert "also" not in line
    assert "also create" not in block
