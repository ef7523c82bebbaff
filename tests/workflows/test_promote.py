"""`ragops promote`: the exact calls of a promotion, what lands on the target, and every refusal."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pulumi.automation.errors import CommandError

from infra.workflows.promote import (
    PROMOTABLE_KEYS,
    SourceCheck,
    check_digest,
    check_order,
    check_source,
    merge_promotable,
    preview_promotion,
    promote,
)
from infra.workflows.scaling import ScaleDownRefused
from infra.workflows.stacks import Context, UsageError, WorkflowError, allowed_promotions
from tests.workflows.conftest import ImageSourceChecks
from tests.workflows.fake_pulumi import (
    DIGEST,
    FakeBackend,
    _entry,
    _history,
    registry_ref,
    step_event,
    write_config,
)

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


def scale_guard(stack: str) -> list[list[str]]:
    """The guards' reads: the Qdrant scale-down guard's (the config to apply, the replicas of the stack's latest
    updates), then the registry's major-version guard's (the config, and the major the stack's latest updates
    ran: the in-cluster registry is guarded too since b960e7b)."""
    return [
        ["config", "--show-secrets", "--json", "--stack", stack],
        ["stack", "select", "--stack", stack],
        ["stack", "history", "--json", "--page-size", "20", "--page", "1", "--stack", stack],
        ["config", "--show-secrets", "--json", "--stack", stack],
        ["stack", "select", "--stack", stack],
        ["stack", "history", "--json", "--page-size", "20", "--page", "1", "--stack", stack],
    ]


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
        # staging's cluster target: a gke/eks target's registry CLI must be on this machine for the copy.
        ["config", "--show-secrets", "--json", "--stack", "staging"],
        # dev's config as its last update ran with it, in this checkout's Pulumi.dev.yaml for the preview.
        ["config", "refresh", "--force", "--stack", "dev"],
        ["config", "--show-secrets", "--json", "--stack", "dev"],
        ["config", "--show-secrets", "--json", "--stack", "dev"],
        ["stack", "select", "--stack", "dev"],
        *scale_guard("dev"),
        ["preview", "--diff", "--exec-kind", "auto.local", "--event-log", "<event-log>", "--stack", "dev"],
        ["stack", "select", "--stack", "staging"],
        # The target's index config before (a model change must keep its index servable meanwhile).
        ["stack", "output", "--json", "--stack", "staging"],
        ["stack", "output", "--json", "--show-secrets", "--stack", "staging"],
        # The images the target ran: its registry schema is as new as the newest (a release older than that
        # must be able to run on it).
        ["stack", "history", "--json", "--stack", "staging"],
        ["config", "--show-secrets", "--json", "--stack", "staging"],
        # The secrets guard: the secret keys of the target's latest updates (names only, no secrets shown).
        ["stack", "select", "--stack", "staging"],
        ["stack", "history", "--json", "--page-size", "20", "--page", "1", "--stack", "staging"],
        # The registry guard reads the target's state (a failed first `up`'s too): before anything is written.
        ["stack", "export", "--show-secrets", "--stack", "staging"],
        ["config", "set-all", "--stack", "staging", "--json", set_all],
        *scale_guard("staging"),
        [
            "up",
            "--yes",
            "--skip-preview",
            "--message",
            f"promote dev -> staging: {DIGEST}",
            # The policy pack, as on `ragops up` and `rollback`: promotions are how staging and prod are updated.
            "--policy-pack",
            "infra/policy",
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
    # The up deployed the promoted digest, copied into staging's own registry.
    assert staging.outputs["imageDigest"] == registry_ref("staging", DIGEST)
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


def test_the_source_digest_is_checked_readable_before_anything_is_written(
    ctx: Context, backend: FakeBackend, image_checks: ImageSourceChecks
) -> None:
    _stacks(backend)

    promote(ctx, "dev", "staging")

    assert image_checks == [
        DIGEST
    ]  # the source's imageDigest, which the target's up copies into its registry


def test_a_machine_that_cannot_copy_the_image_is_refused_before_anything_is_written(
    ctx: Context, backend: FakeBackend, image_checks: ImageSourceChecks
) -> None:
    _stacks(backend)
    image_checks.refuse = "skopeo is not on PATH: the promotion copies the image into the target's registry"

    with pytest.raises(WorkflowError, match=r"^Cannot promote dev -> staging: skopeo is not on PATH"):
        promote(ctx, "dev", "staging")

    assert backend.commands("up") == []
    assert backend.commands("preview") == []  # refused first: the source's preview is not even started
    assert not [c for c in backend.commands("config") if c[:2] == ["config", "set-all"]]
    assert "rag:image" not in backend.stacks["staging"].config


@pytest.mark.parametrize(
    ("source", "target", "tool"), [("dev", "staging", "gcloud"), ("staging", "prod", "aws")]
)
def test_a_promotion_needs_the_target_registrys_cli_before_anything_is_written(
    ctx: Context, backend: FakeBackend, source: str, target: str, tool: str
) -> None:
    # The copy logs in to the target's own registry (staging: Artifact Registry, prod: ECR) on this machine; only
    # the source's tool was checked, so a machine without the target's failed in the middle of the target's `up`.
    from infra.components.image import check_registry_tools

    _stacks(backend)
    backend.add_stack(
        "staging",
        config={"rag:service": STAGING_SERVICE, "rag:cluster": {"provider": "gke"}},
        outputs={"imageDigest": DIGEST},
    )
    backend.add_stack("prod", config={"rag:cluster": {"provider": "eks"}}, outputs={})
    ctx.check_registry_tools = lambda provider: check_registry_tools(
        provider, which=lambda name: None if name == tool else f"/usr/bin/{name}"
    )
    with pytest.raises(
        WorkflowError, match=rf"^Cannot promote {source} -> {target}: .*{tool} is not on PATH"
    ):
        promote(ctx, source, target)
    assert backend.commands("up") == []
    assert not [c for c in backend.commands("config") if c[:2] == ["config", "set-all"]]


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


def test_a_fourth_permanent_stack_receives_along_its_environment(ctx: Context, backend: FakeBackend) -> None:
    """EYES8 H1: a committed Pulumi.qa.yaml with environment staging receives from the dev stack (what its own
    `pulumi up` refusal tells the operator to run), and passes its image on to prod; never sideways."""
    _stacks(backend)
    backend.add_stack("qa", config={"rag:environment": "staging"}, outputs={})
    _commit(ctx.work_dir)

    done = promote(ctx, "dev", "qa")

    qa = backend.stacks["qa"]
    assert qa.config_value("rag:image") == DIGEST
    assert qa.config_value("rag:promotion")["from"] == "dev"
    assert done.target == "qa"
    check_order("qa", "prod", ctx.work_dir)
    check_order("staging", "prod", ctx.work_dir)
    assert allowed_promotions(ctx.work_dir) == [
        ("dev", "staging"),
        ("dev", "qa"),
        ("staging", "prod"),
        ("qa", "prod"),
    ]
    for source, target in (("staging", "qa"), ("qa", "staging"), ("qa", "dev"), ("prod", "qa")):
        with pytest.raises(UsageError, match=rf"Cannot promote {source} -> {target}: .* by rag:environment"):
            check_order(source, target, ctx.work_dir)


def _commit(work_dir: Path) -> None:
    """Make `work_dir` a git checkout with every file committed (what CI's clone of main is)."""
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "stacks"],
    ):
        subprocess.run(["git", "-C", str(work_dir), *args], check=True, capture_output=True)


def test_a_stack_file_only_this_runner_has_opens_no_path_to_prod(ctx: Context, backend: FakeBackend) -> None:
    """An untracked Pulumi.mine.yaml saying `rag:environment: staging` (or a committed qa file edited locally to
    say it) must not make its stack a source for prod: other stacks take part by their committed files only."""
    _stacks(backend)
    backend.add_stack("qa", config={"rag:environment": "dev"}, outputs={})
    _commit(ctx.work_dir)
    backend.add_stack("mine", config={"rag:environment": "staging"}, outputs={"imageDigest": DIGEST})
    with pytest.raises(UsageError, match=r"Pulumi.mine.yaml is not committed"):
        promote(ctx, "mine", "prod")
    (ctx.work_dir / "Pulumi.qa.yaml").write_text("config:\n  rag:environment: staging\n")
    with pytest.raises(UsageError, match=r"qa is environment dev and prod is environment prod"):
        check_order("qa", "prod", ctx.work_dir)  # judged by the committed file, not the edit
    assert ("mine", "prod") not in allowed_promotions(ctx.work_dir)
    assert backend.calls == []
    check_order("staging", "prod", ctx.work_dir)  # the shipped chain is unchanged


def test_a_stack_file_without_a_promoted_environment_or_an_ephemeral_one_is_refused(
    ctx: Context, backend: FakeBackend
) -> None:
    _stacks(backend)
    (ctx.work_dir / "Pulumi.qa.yaml").write_text("config:\n  rag:environment: dev\n")
    (ctx.work_dir / "Pulumi.pr-9.yaml").write_text(
        "config:\n  rag:environment: staging\n  rag:ephemeral: {}\n"
    )
    _commit(ctx.work_dir)
    with pytest.raises(UsageError, match=r"qa is environment dev, by rag:environment"):
        promote(ctx, "dev", "qa")
    with pytest.raises(UsageError, match=r"pr-9 is not a permanent stack"):
        promote(ctx, "dev", "pr-9")
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
    assert [c for c in backend.commands("config") if c[1] == "set-all"] == []  # nothing written
    assert "rag:promotion" not in backend.stacks["staging"].config


# The entry's live read for `ingressAddress` (infra/components/gateway.py LiveObject): a read-only resource.
LIVE_READ = "gateway-gateway-live"
GATEWAY = "kubernetes:gateway.networking.k8s.io/v1:Gateway"


def test_a_source_whose_gateway_a_controller_touched_is_still_promoted(
    ctx: Context, backend: FakeBackend
) -> None:
    """A real preview counts a `read` when a read-only resource's live object differs from the state
    (pulumi/pulumi pkg/engine/update.go shouldRecordReadStep): GKE stamps its Gateways at every reconcile, so
    staging's preview carried `1 read` after nearly every `up`, and counting it refused every promotion to prod."""
    _stacks(backend)
    script = backend.script("dev")
    script.preview_summary = {"read": 1, "same": 11}
    script.preview_events = [step_event("read", LIVE_READ, GATEWAY)]

    promote(ctx, "dev", "staging")

    assert len(backend.commands("up")) == 1
    assert backend.stacks["staging"].config_value("rag:image") == DIGEST


def test_a_read_next_to_a_real_change_still_refuses(ctx: Context, backend: FakeBackend) -> None:
    _stacks(backend)
    script = backend.script("dev")
    script.preview_summary = {"read": 1, "update": 1, "same": 10}
    script.preview_events = [
        step_event("read", LIVE_READ, GATEWAY),
        step_event("update", "rag-service", diffs=["spec"]),
    ]
    with pytest.raises(WorkflowError, match=r"pending changes \(1 update\)"):
        promote(ctx, "dev", "staging")
    assert backend.commands("up") == []


def test_a_promotion_preview_shows_the_target_with_the_promoted_config_and_changes_nothing(
    ctx: Context, backend: FakeBackend
) -> None:
    """What an approver reads before a promotion (REVIEW10 F4): the target's preview with the promoted image and
    settings; the checkout's stack file, the backend and the target stay as they were, and nothing is updated."""
    _stacks(backend)
    staging_file = ctx.work_dir / "Pulumi.staging.yaml"
    before = staging_file.read_bytes()
    history = list(backend.stacks["staging"].history)

    promotion, report = preview_promotion(ctx, "dev", "staging")

    assert promotion.digest == DIGEST
    assert report.ok, report.error
    # The fake previews the checkout's config against what the target last ran: the promoted keys differ.
    [change] = [s for s in report.steps if s.op == "update"]
    assert {"rag:image", "rag:promotion"} <= set(change.diffs)
    [preview] = [c for c in backend.commands("preview") if c[-1] == "staging"]
    assert preview[preview.index("--policy-pack") + 1] == "infra/policy"
    assert backend.commands("up") == []
    assert staging_file.read_bytes() == before
    assert backend.stacks["staging"].history == history


def test_a_promotion_preview_refuses_what_the_promotion_refuses(ctx: Context, backend: FakeBackend) -> None:
    _stacks(backend)
    backend.script("dev").preview_summary = {"update": 1, "same": 11}
    backend.script("dev").preview_events = [step_event("update", "rag-service", diffs=["spec"])]
    with pytest.raises(WorkflowError, match=r"pending changes \(1 update\)"):
        preview_promotion(ctx, "dev", "staging")
    assert [c for c in backend.commands("preview") if c[-1] == "staging"] == []


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


def _checkout(root: Path, name: str, files: dict[str, str]) -> Path:
    """A fresh clone of the repo as a CI job gets it: only the committed files."""
    checkout = root / name
    checkout.mkdir()
    for file, text in files.items():
        (checkout / file).write_text(text)
    return checkout


COMMITTED = {
    "Pulumi.yaml": "name: rag\nruntime: python\nmain: infra/\n",
    "Pulumi.dev.yaml": "config:\n  rag:environment: dev\n  rag:service:\n    settings:\n      chunkSize: 300\n",
    # The committed staging/prod files never carry what promotions set (rag:image, rag:promotion, ...).
    "Pulumi.staging.yaml": "config:\n  rag:environment: staging\n  rag:service:\n    replicas: 3\n",
    "Pulumi.prod.yaml": "config:\n  rag:environment: prod\n  rag:service:\n    replicas: 5\n",
}


def test_dev_to_staging_to_prod_from_two_fresh_checkouts(tmp_path: Path) -> None:
    # One backend (the S3/GCS bucket) shared by three machines: the main.yml job that deployed dev and the
    # promote workflow's two jobs, each with a fresh checkout and nothing else in common.
    main_job = _checkout(tmp_path, "main-job", COMMITTED)
    backend = FakeBackend(main_job)
    embedding = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "imageModels": ["sentence-transformers/all-MiniLM-L6-v2"],
    }
    backend.add_stack("dev", outputs={"imageDigest": DIGEST, "embedding": embedding})
    backend.add_stack("staging", outputs={"imageDigest": "old@sha256:" + "0" * 64})
    backend.add_stack("prod", outputs={"imageDigest": "old@sha256:" + "0" * 64})

    checked: list[str] = []

    def job(name: str) -> Context:
        return Context(
            work_dir=_checkout(tmp_path, name, COMMITTED),
            pulumi_command=backend.command(),
            clock=lambda: datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
            actor=lambda: "octocat",
            check_image_source=checked.append,
            check_registry_tools=lambda provider: None,
            image_labels=lambda ref: {},
        )

    staging_job, prod_job = job("staging-job"), job("prod-job")
    promote(staging_job, "dev", "staging")
    done = promote(prod_job, "staging", "prod")

    prod = backend.stacks["prod"]
    assert prod.outputs["imageDigest"] == registry_ref("prod", DIGEST)
    deployed = prod.deployed_config()  # what prod's update ran with, as the backend keeps it
    # Prod copied the build from staging's registry (what staging runs), under dev's digest.
    assert deployed["rag:image"]["value"] == registry_ref("staging", DIGEST)
    assert checked == [DIGEST, registry_ref("staging", DIGEST)]
    assert deployed["rag:promotion"]["objectValue"]["from"] == "staging"
    assert deployed["rag:promotion"]["objectValue"]["models"] == embedding["imageModels"]
    # dev's promotable setting travelled through staging's deployed config, prod's sizing stayed its own.
    assert deployed["rag:service"]["objectValue"] == {"replicas": 5, "settings": {"chunkSize": 300}}
    assert deployed["rag:embedding"]["objectValue"] == {"model": embedding["model"], "extraModels": []}
    assert done.copied["service.settings.chunkSize"] == 300
    # The prod job previewed staging as deployed: its checkout's Pulumi.staging.yaml was restored afterwards.
    assert (prod_job.work_dir / "Pulumi.staging.yaml").read_text() == COMMITTED["Pulumi.staging.yaml"]
    assert ["config", "refresh", "--force", "--stack", "staging"] in backend.commands("config")


def test_a_source_whose_deployed_config_differs_from_the_code_is_refused_from_a_fresh_checkout(
    tmp_path: Path,
) -> None:
    main_job = _checkout(tmp_path, "main-job", COMMITTED)
    backend = FakeBackend(main_job)
    backend.add_stack("staging", outputs={"imageDigest": DIGEST})
    backend.add_stack("prod")
    # Somebody deployed staging by hand with an edited stack file: the committed one no longer describes it,
    # and a preview with the deployed config still shows the difference against this checkout's code.
    backend.script("staging").preview_events = [step_event("update", "rag-service", diffs=["spec"])]
    backend.script("staging").preview_summary = {"update": 1, "same": 11}
    ctx = Context(
        work_dir=_checkout(tmp_path, "prod-job", COMMITTED),
        pulumi_command=backend.command(),
        check_image_source=lambda ref: None,
        check_registry_tools=lambda provider: None,
        image_labels=lambda ref: {},
    )
    with pytest.raises(WorkflowError, match="pending changes"):
        promote(ctx, "staging", "prod")
    assert backend.commands("up") == []
    assert (ctx.work_dir / "Pulumi.staging.yaml").read_text() == COMMITTED["Pulumi.staging.yaml"]


def test_a_source_never_deployed_from_anywhere_is_refused_with_the_reason(tmp_path: Path) -> None:
    backend = FakeBackend(_checkout(tmp_path, "main-job", COMMITTED))
    backend.add_stack(
        "staging", outputs={"imageDigest": DIGEST}, resources=0
    )  # imported state, no update yet
    backend.add_stack("prod")
    ctx = Context(
        work_dir=_checkout(tmp_path, "prod-job", COMMITTED),
        pulumi_command=backend.command(),
        check_image_source=lambda ref: None,
        check_registry_tools=lambda provider: None,
        image_labels=lambda ref: {},
    )
    with pytest.raises(WorkflowError, match=r"last deployed with .*no previous deployment"):
        promote(ctx, "staging", "prod")
    assert backend.commands("up") == []


# ------------------------------------------------------------------------------- the source checked in its own job


def _job(ctx: Context, backend: FakeBackend, *credentials: str) -> Context:
    """The promote.yml job of one GitHub environment: `ctx`'s checkout, the credentials of `credentials` only."""
    return dataclasses.replace(ctx, pulumi_command=backend.command(credentials=credentials))


def _stacks_touched(backend: FakeBackend) -> set[str]:
    return {c[c.index("--stack") + 1] for c in backend.commands() if "--stack" in c}


def test_a_target_job_holding_only_the_targets_credentials_promotes_from_the_source_check(
    ctx: Context, backend: FakeBackend
) -> None:
    """REVIEW10 F2: the staging job previewed dev and read its outputs with staging's credentials, which cannot
    decrypt dev (a passphrase per environment) or reach its cluster: every promotion stopped at the source. The
    source is now checked in a job of its own environment, and the target's jobs (the approver's preview, then
    the promotion) take its record and never touch the source stack."""
    _stacks(backend)
    with pytest.raises(CommandError, match="incorrect passphrase"):
        promote(_job(ctx, backend, "staging"), "dev", "staging")  # what the old staging job did
    assert backend.commands("up") == []

    backend.calls.clear()
    record = check_source(_job(ctx, backend, "dev"), "dev").to_json()
    assert _stacks_touched(backend) == {"dev"}
    assert "\n" not in record  # one GitHub job output line
    checked = SourceCheck.from_json(record, "source.json")
    assert (checked.stack, checked.digest, checked.service) == ("dev", DIGEST, DEV_SERVICE)

    backend.calls.clear()
    _, report = preview_promotion(_job(ctx, backend, "staging"), "dev", "staging", checked=checked)
    assert report.ok, report.error
    done = promote(_job(ctx, backend, "staging"), "dev", "staging", checked=checked)

    assert _stacks_touched(backend) == {"staging"}
    staging = backend.stacks["staging"]
    assert staging.config_value("rag:image") == DIGEST
    assert staging.config_value("rag:service")["settings"]["chunkSize"] == 300  # dev's, from the record
    assert done.record()["from"] == "dev"


def test_the_source_check_refuses_what_the_promotion_refuses_and_records_nothing(
    ctx: Context, backend: FakeBackend
) -> None:
    _stacks(backend)
    backend.script("dev").preview_summary = {"update": 1, "same": 11}
    backend.script("dev").preview_events = [step_event("update", "rag-service", diffs=["spec"])]
    with pytest.raises(WorkflowError, match=r"pending changes \(1 update\)"):
        check_source(ctx, "dev")
    backend.stacks["dev"].outputs = {"imageDigest": "registry.example.com/rag/service:latest"}
    with pytest.raises(WorkflowError, match="not an immutable digest ref"):
        check_source(ctx, "dev")
    with pytest.raises(UsageError, match="No permanent stack receives promotions from 'prod'"):
        check_source(ctx, "prod")


def _git(work_dir: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(work_dir), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        check=True,
        capture_output=True,
    )


def test_a_source_check_is_refused_for_another_source_or_another_commit(
    ctx: Context, backend: FakeBackend
) -> None:
    """ "No pending changes" held for the code the source was previewed against: a record from another commit (or
    of another stack) does not stand in for the check."""
    _stacks(backend)
    _git(ctx.work_dir, "init", "-q")
    _git(ctx.work_dir, "add", "-A")
    _git(ctx.work_dir, "commit", "-q", "-m", "one")
    checked = check_source(ctx, "dev")
    assert checked.commit is not None
    assert len(checked.commit) == 40
    with pytest.raises(UsageError, match="record is for 'dev', not 'staging'"):
        promote(ctx, "staging", "prod", checked=checked)
    (ctx.work_dir / "infra.py").write_text("# a change\n")
    _git(ctx.work_dir, "add", "-A")
    _git(ctx.work_dir, "commit", "-q", "-m", "two")
    with pytest.raises(WorkflowError, match=f"its check ran against commit {checked.commit}"):
        promote(ctx, "dev", "staging", checked=checked)
    assert backend.commands("up") == []


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "is empty, not a source check record"),
        ("{", "is not a source check record"),  # GitHub withheld the job output ("may contain secret")
        ('{"kind": "something else"}', "no kind"),
        ('{"kind": "ragops/promotion-source/v1", "stack": "dev"}', "no digest"),
    ],
)
def test_a_file_that_is_no_source_check_record_is_a_usage_error(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        SourceCheck.from_json(text, "source.json")


IMAGE_BUILD = "docker-build:index:Image"


@pytest.mark.parametrize("umask_002", [True, False])
def test_a_source_image_rebuilt_by_a_checkouts_file_modes_is_refused_naming_the_cause(
    ctx: Context, backend: FakeBackend, umask_002: bool
) -> None:
    """REVIEW10 F6: pulumi-docker-build hashes each file's mode into the build context, so a laptop clone under
    umask 002 previews dev's image as rebuilt and the promotion is refused for "pending changes". The refusal
    stays (the image would differ), and names the cause when this checkout's modes are not CI's."""
    _stacks(backend)
    (ctx.work_dir / "service").mkdir()
    dockerfile = ctx.work_dir / "service" / "Dockerfile"
    dockerfile.write_text("FROM scratch\n")
    dockerfile.chmod(0o644)
    _git(ctx.work_dir, "init", "-q")
    _git(ctx.work_dir, "add", "-A")
    _git(ctx.work_dir, "commit", "-q", "-m", "one")
    for path in ctx.work_dir.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            path.chmod(0o664 if umask_002 else 0o644)
    script = backend.script("dev")
    script.preview_summary = {"update": 1, "same": 11}
    script.preview_events = [step_event("update", "service-image", IMAGE_BUILD, diffs=["contextHash"])]

    with pytest.raises(WorkflowError, match=r"pending changes \(1 update\)") as refused:
        promote(ctx, "dev", "staging")

    message = " ".join(str(refused.value).split())
    assert ("Pulumi.dev.yaml (-rw-rw-r--)" in message) is umask_002
    assert ("umask 002" in message) is umask_002
    assert backend.commands("up") == []


def test_dev_to_staging_to_prod_with_per_environment_credentials_from_fresh_clones(tmp_path: Path) -> None:
    """promote.yml as it runs: six jobs, each a fresh clone of the same commit holding one environment's
    credentials; the source checks hand their records to the target jobs, which never touch their source."""
    origin = _checkout(tmp_path, "origin", COMMITTED)
    _git(origin, "init", "-q")
    _git(origin, "add", "-A")
    _git(origin, "commit", "-q", "-m", "release")
    backend = FakeBackend(_checkout(tmp_path, "main-job", COMMITTED))
    backend.add_stack("dev", outputs={"imageDigest": DIGEST})
    backend.add_stack("staging", outputs={"imageDigest": "old@sha256:" + "0" * 64})
    backend.add_stack("prod", outputs={"imageDigest": "old@sha256:" + "0" * 64})

    def job(name: str, stack: str) -> Context:
        subprocess.run(
            ["git", "clone", "-q", str(origin), str(tmp_path / name)], check=True, capture_output=True
        )
        return Context(
            work_dir=tmp_path / name,
            pulumi_command=backend.command(credentials=[stack]),
            clock=lambda: datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
            actor=lambda: "octocat",
            check_image_source=lambda ref: None,
            check_registry_tools=lambda provider: None,
            image_labels=lambda ref: {},
        )

    from_dev = SourceCheck.from_json(check_source(job("source-dev", "dev"), "dev").to_json(), "r")
    assert preview_promotion(job("preview-staging", "staging"), "dev", "staging", checked=from_dev)[1].ok
    promote(job("staging", "staging"), "dev", "staging", checked=from_dev)
    from_staging = SourceCheck.from_json(
        check_source(job("source-staging", "staging"), "staging").to_json(), "r"
    )
    assert from_staging.digest == registry_ref("staging", DIGEST)
    assert preview_promotion(job("preview-prod", "prod"), "staging", "prod", checked=from_staging)[1].ok
    promote(job("prod", "prod"), "staging", "prod", checked=from_staging)

    deployed = backend.stacks["prod"].deployed_config()
    assert deployed["rag:image"]["value"] == registry_ref("staging", DIGEST)
    assert deployed["rag:service"]["objectValue"] == {"replicas": 5, "settings": {"chunkSize": 300}}


def test_a_promotion_a_guard_refuses_leaves_the_targets_stack_file_as_it_was(
    ctx: Context, backend: FakeBackend
) -> None:
    """The guards read the config to apply from the stack file, so it is written first; a refusal puts it back
    byte for byte (on a laptop the checkout kept the promoted image and settings after a refused promotion)."""
    _stacks(backend)
    backend.stacks["staging"].history.append(
        _history("update", {"update": 1}, "succeeded", {"rag:qdrant": _entry({"replicas": 3})})
    )
    write_config(backend.work_dir, "staging", {"rag:qdrant": _entry({"replicas": 1})})
    path = backend.work_dir / "Pulumi.staging.yaml"
    before = path.read_bytes()

    with pytest.raises(ScaleDownRefused, match="from 3 to 1 replicas"):
        promote(ctx, "dev", "staging")

    assert path.read_bytes() == before
    assert backend.commands("up") == []
