"""`ragops promote`: the exact calls of a promotion, what lands on the target, and every refusal."""

from __future__ import annotations

import json

import pytest

from infra.workflows.promote import PROMOTABLE_KEYS, check_digest, merge_promotable, promote
from infra.workflows.stacks import Context, UsageError, WorkflowError
from tests.workflows.fake_pulumi import DIGEST, FakeBackend, step_event

DEV_SERVICE = {"replicas": 1, "settings": {"logLevel": "DEBUG", "chunkSize": 300, "chunkOverlap": 40}}
STAGING_SERVICE = {
    "replicas": 3,
    "autoscaling": {"enabled": True},
    "settings": {"logLevel": "INFO", "chunkOverlap": 10, "embeddingBatchSize": 64},
}


def _stacks(backend: FakeBackend, digest: str = DIGEST) -> None:
    backend.add_stack(
        "dev", config={"rag:service": DEV_SERVICE, "rag:image": ""}, outputs={"imageDigest": digest}
    )
    backend.add_stack(
        "staging", config={"rag:service": STAGING_SERVICE}, outputs={"imageDigest": "old@sha256:" + "0" * 64}
    )
    backend.add_stack("prod", config={}, outputs={})


def test_promotion_dev_to_staging_exact_calls_and_result(ctx: Context, backend: FakeBackend) -> None:
    _stacks(backend)

    done = promote(ctx, "dev", "staging")

    set_all = json.dumps(
        {
            "rag:image": {"secret": False, "value": DIGEST},
            "rag:promotion": {
                "objectValue": {
                    "at": "2026-03-01T12:00:00Z",
                    "by": "octocat",
                    "digest": DIGEST,
                    "from": "dev",
                },
                "secret": False,
                "value": json.dumps(
                    {"at": "2026-03-01T12:00:00Z", "by": "octocat", "digest": DIGEST, "from": "dev"},
                    sort_keys=True,
                ),
            },
            "rag:service": {
                "objectValue": {
                    "autoscaling": {"enabled": True},
                    "replicas": 3,
                    "settings": {"chunkOverlap": 40, "chunkSize": 300, "logLevel": "INFO"},
                },
                "secret": False,
                "value": json.dumps(
                    {
                        "autoscaling": {"enabled": True},
                        "replicas": 3,
                        "settings": {"chunkOverlap": 40, "chunkSize": 300, "logLevel": "INFO"},
                    },
                    sort_keys=True,
                ),
            },
        },
        sort_keys=True,
    )
    assert backend.commands() == [
        ["stack", "select", "--stack", "dev"],
        ["stack", "output", "--json", "--stack", "dev"],
        ["stack", "output", "--json", "--show-secrets", "--stack", "dev"],
        ["stack", "select", "--stack", "dev"],
        ["preview", "--diff", "--exec-kind", "auto.local", "--event-log", "<event-log>", "--stack", "dev"],
        ["stack", "select", "--stack", "staging"],
        # The target's index config before (a model change must keep its index servable meanwhile).
        ["stack", "output", "--json", "--stack", "staging"],
        ["stack", "output", "--json", "--show-secrets", "--stack", "staging"],
        ["config", "--show-secrets", "--json", "--stack", "dev"],
        ["config", "--show-secrets", "--json", "--stack", "staging"],
        ["config", "set-all", "--stack", "staging", "--json", set_all],
        [
            "up",
            "--yes",
            "--skip-preview",
            "--message",
            f"promote dev -> staging: {DIGEST}",
            "--exec-kind",
            "auto.local",
            "--stack",
            "staging",
        ],
        ["stack", "output", "--json", "--stack", "staging"],
        ["stack", "output", "--json", "--show-secrets", "--stack", "staging"],
        [
            "stack",
            "history",
            "--json",
            "--show-secrets",
            "--page-size",
            "1",
            "--page",
            "1",
            "--stack",
            "staging",
        ],
    ]
    staging = backend.stacks["staging"]
    assert staging.config_value("rag:image") == DIGEST
    assert staging.outputs["imageDigest"] == DIGEST  # the up deployed the promoted digest
    assert staging.config_value("rag:promotion") == done.record()
    assert done.record() == {"from": "dev", "digest": DIGEST, "at": "2026-03-01T12:00:00Z", "by": "octocat"}
    # Environment sizing stays; promotable settings follow dev; a key dev leaves at its default is unset.
    assert staging.config_value("rag:service")["replicas"] == 3
    assert staging.config_value("rag:service")["settings"]["logLevel"] == "INFO"
    assert "embeddingBatchSize" not in staging.config_value("rag:service")["settings"]
    assert done.copied["service.settings.chunkSize"] == 300
    # The source was only read.
    assert backend.commands("up") == [c for c in backend.commands("up") if c[-1] == "staging"]
    assert backend.stacks["dev"].config_value("rag:service") == DEV_SERVICE


def test_staging_to_prod_is_allowed(ctx: Context, backend: FakeBackend) -> None:
    _stacks(backend)
    backend.stacks["staging"].outputs["imageDigest"] = DIGEST
    done = promote(ctx, "staging", "prod")
    assert backend.stacks["prod"].config_value("rag:image") == DIGEST
    assert done.record()["from"] == "staging"


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("dev", "prod"),
        ("prod", "staging"),
        ("staging", "dev"),
        ("dev", "dev"),
        ("pr-1", "staging"),
        ("dev", "qa"),
    ],
)
def test_refuses_any_other_order_before_calling_pulumi(
    ctx: Context, backend: FakeBackend, source: str, target: str
) -> None:
    _stacks(backend)
    with pytest.raises(UsageError, match="only allowed promotions are dev -> staging, staging -> prod"):
        promote(ctx, source, target)
    assert backend.calls == []


@pytest.mark.parametrize(
    "ref",
    [
        "registry.example.com/rag/service:latest",
        "registry.example.com/rag/service:v1.2.3",
        "registry.example.com/rag/service@sha256:" + "ab" * 31,  # 62 hex
        "registry.example.com/rag/service@sha256:" + "AB" * 32,  # upper case is not a canonical digest
        "registry.example.com/rag/service@sha512:" + "ab" * 32,
        "@sha256:" + "ab" * 32,  # no repository
    ],
)
def test_refuses_a_mutable_or_malformed_image_ref(ctx: Context, backend: FakeBackend, ref: str) -> None:
    _stacks(backend, digest=ref)
    with pytest.raises(WorkflowError, match="not an immutable digest ref"):
        promote(ctx, "dev", "staging")
    assert backend.commands("up") == []
    assert backend.commands("config") == []


def test_refuses_when_source_has_no_image_output(ctx: Context, backend: FakeBackend) -> None:
    _stacks(backend)
    backend.stacks["dev"].outputs = {}
    with pytest.raises(WorkflowError, match="has no `imageDigest` output"):
        promote(ctx, "dev", "staging")
    assert backend.commands("up") == []


def test_refuses_when_source_has_pending_changes(ctx: Context, backend: FakeBackend) -> None:
    _stacks(backend)
    script = backend.script("dev")
    script.preview_summary = {"update": 1, "same": 11}
    script.preview_events = [step_event("update", "rag-service", diffs=["spec"])]
    with pytest.raises(WorkflowError, match=r"pending changes \(1 update\)"):
        promote(ctx, "dev", "staging")
    assert backend.commands("up") == []
    assert backend.commands("config") == []
    assert "rag:promotion" not in backend.stacks["staging"].config


def test_refuses_when_the_source_preview_fails(ctx: Context, backend: FakeBackend) -> None:
    _stacks(backend)
    backend.script("dev").preview_error = "error: program failed"
    with pytest.raises(WorkflowError, match="preview failed"):
        promote(ctx, "dev", "staging")
    assert backend.commands("up") == []


def test_promotable_keys_are_service_settings_paths() -> None:
    assert PROMOTABLE_KEYS
    assert all(k.startswith("service.settings.") for k in PROMOTABLE_KEYS)
    assert "service.replicas" not in PROMOTABLE_KEYS
    assert "service.settings.logLevel" not in PROMOTABLE_KEYS


def test_merge_promotable_copies_only_the_declared_paths() -> None:
    source = {
        "replicas": 9,
        "settings": {"chunkSize": 1, "logLevel": "DEBUG", "qdrantCollectionPrefix": "v2"},
    }
    target = {"replicas": 3, "settings": {"chunkSize": 7, "chunkOverlap": 5, "logLevel": "WARNING"}}
    merged, copied = merge_promotable(source, target)
    assert merged == {
        "replicas": 3,
        "settings": {"chunkSize": 1, "logLevel": "WARNING", "qdrantCollectionPrefix": "v2"},
    }
    assert copied["service.settings.chunkOverlap"] is None
    assert target["settings"]["chunkSize"] == 7  # inputs are not mutated


def test_check_digest_accepts_a_canonical_digest_ref() -> None:
    assert check_digest(DIGEST, "dev") == DIGEST
