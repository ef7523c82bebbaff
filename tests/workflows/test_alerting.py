"""A prod update must page someone (EYES9 M3): `ragops up` / `promote` refuse a permanent prod-environment stack with
monitoring on and no Alertmanager receiver, or with runbook links that are not URLs, before anything is written."""

from __future__ import annotations

from typing import Any

import pytest

from infra.workflows.alerting import AlertsReachNobody
from infra.workflows.deploy import deploy
from infra.workflows.promote import promote
from infra.workflows.stacks import Context
from tests.workflows.fake_pulumi import DIGEST, FakeBackend

RUNBOOKS = "https://git.example.com/rag/blob/main/docs/runbooks.md"


def _prod(backend: FakeBackend, monitoring: dict[str, Any], **secrets: str) -> None:
    backend.add_stack(
        "prod",
        config={"rag:environment": "prod", "rag:image": DIGEST, "rag:monitoring": monitoring},
        outputs={"imageDigest": DIGEST},
    )
    for key, value in secrets.items():
        backend.stacks["prod"].set_config(f"rag:{key}", value, secret=True)


def test_up_of_prod_without_a_receiver_or_runbook_urls_is_refused_in_one_line(
    ctx: Context, backend: FakeBackend
) -> None:
    _prod(backend, {"enabled": True})
    with pytest.raises(AlertsReachNobody) as info:
        deploy(ctx, "prod", policy_pack=None)
    message = str(info.value)
    assert "\n" not in message
    for named in (
        "rag:slackWebhookUrl",
        "rag:pagerdutyRoutingKey",
        "rag:monitoring.alerting.email.to",
        "rag:monitoring.runbookUrl 'docs/runbooks.md'",
        "Pulumi.prod.yaml",
    ):
        assert named in message
    assert backend.commands("up") == []


@pytest.mark.parametrize(
    ("monitoring", "secrets", "refused"),
    [
        ({"enabled": True, "runbookUrl": RUNBOOKS}, {}, "no alert receiver"),
        ({"enabled": True}, {"slackWebhookUrl": "https://hooks.slack.com/x"}, "runbookUrl"),
        ({"enabled": True, "mode": "existing"}, {}, "runbookUrl"),  # the cluster's Alertmanager routes
        ({"enabled": True, "runbookUrl": RUNBOOKS}, {"slackWebhookUrl": "https://hooks.slack.com/x"}, None),
        ({"enabled": True, "runbookUrl": RUNBOOKS}, {"pagerdutyRoutingKey": "r" * 32}, None),
        (
            {"enabled": True, "runbookUrl": RUNBOOKS, "alerting": {"email": {"to": "ops@example.com"}}},
            {},
            None,
        ),
        ({"enabled": True, "runbookUrl": RUNBOOKS, "mode": "existing"}, {}, None),
        ({"enabled": False}, {}, None),
    ],
)
def test_what_a_prod_up_needs_to_page_someone(
    ctx: Context,
    backend: FakeBackend,
    monitoring: dict[str, Any],
    secrets: dict[str, str],
    refused: str | None,
) -> None:
    _prod(backend, monitoring, **secrets)
    if refused is None:
        deploy(ctx, "prod", policy_pack=None)
        assert len(backend.commands("up")) == 1
        return
    with pytest.raises(AlertsReachNobody, match=refused) as info:
        deploy(ctx, "prod", policy_pack=None)
    if refused == "runbookUrl":
        assert "no alert receiver" not in str(info.value)
    assert backend.commands("up") == []


def test_staging_without_a_receiver_is_not_refused(ctx: Context, backend: FakeBackend) -> None:
    backend.add_stack(
        "staging",
        config={"rag:environment": "staging", "rag:image": DIGEST, "rag:monitoring": {"enabled": True}},
        outputs={"imageDigest": DIGEST},
    )
    deploy(ctx, "staging", policy_pack=None)
    assert len(backend.commands("up")) == 1


def test_a_promotion_to_prod_without_a_receiver_is_refused_before_anything_is_written(
    ctx: Context, backend: FakeBackend
) -> None:
    backend.add_stack("staging", config={"rag:environment": "staging"}, outputs={"imageDigest": DIGEST})
    _prod(backend, {"enabled": True, "runbookUrl": RUNBOOKS})
    with pytest.raises(AlertsReachNobody, match=r"^Refusing to update prod .*no alert receiver"):
        promote(ctx, "staging", "prod")
    assert backend.commands("up") == []
    assert backend.commands("preview") == []
    assert not [c for c in backend.commands("config") if c[:2] == ["config", "set-all"]]

    backend.stacks["prod"].set_config("rag:slackWebhookUrl", "https://hooks.slack.com/x", secret=True)
    promote(ctx, "staging", "prod")
    assert len(backend.commands("up")) == 1
