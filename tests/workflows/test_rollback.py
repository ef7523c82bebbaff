"""`ragops rollback`: an earlier release runs again through `up`, API and worker together, state and status true.

Two releases go dev -> staging -> prod from fresh checkouts (as the promote workflow's jobs do), then prod is rolled
back from another fresh checkout: everything is read from the backend (the update history's config, the outputs).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from infra.schema import ImageLabelError
from infra.workflows import cli
from infra.workflows.deploy import deploy
from infra.workflows.promote import promote, rollback
from infra.workflows.stacks import Context, UsageError, WorkflowError
from tests.workflows.fake_pulumi import FakeBackend, registry_ref

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
OTHER_MODEL = "BAAI/bge-small-en-v1.5"
RELEASE_A = "registry.example.com/dev/rag-service@sha256:" + "a1" * 32
RELEASE_B = "registry.example.com/dev/rag-service@sha256:" + "b2" * 32
COMMITTED = {
    "Pulumi.yaml": "name: rag\nruntime: python\nmain: infra/\n",
    "Pulumi.dev.yaml": "config:\n  rag:environment: dev\n",
    "Pulumi.staging.yaml": "config:\n  rag:environment: staging\n  rag:service:\n    replicas: 3\n",
    "Pulumi.prod.yaml": "config:\n  rag:environment: prod\n  rag:service:\n    replicas: 5\n",
}


class Fleet:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.jobs = 0
        #: image sha -> its labels (or the error reading them raises); unlisted: no labels (built before 0011).
        self.labels: dict[str, dict[str, str] | Exception] = {}
        self.backend = FakeBackend(self.checkout())
        embedding = {"model": MODEL, "imageModels": [MODEL]}
        self.backend.add_stack("dev", outputs={"imageDigest": RELEASE_A, "embedding": embedding})
        self.backend.add_stack("staging", outputs={})
        self.backend.add_stack("prod", outputs={})

    def checkout(self) -> Path:
        self.jobs += 1
        path = self.root / f"job-{self.jobs}"
        path.mkdir()
        for name, text in COMMITTED.items():
            (path / name).write_text(text)
        return path

    def job(self) -> Context:
        return Context(
            work_dir=self.checkout(),
            pulumi_command=self.backend.command(),
            clock=lambda: datetime(2026, 3, 2, 9, 0, tzinfo=UTC),
            actor=lambda: "oncall",
            check_image_source=lambda ref: None,
            check_registry_tools=lambda provider: None,
            image_labels=self.labels_of,
        )

    def labels_of(self, ref: str) -> dict[str, str]:
        """What the registry serves as the image's labels (by digest: the same image in every registry)."""
        found = self.labels.get(sha(ref))
        if isinstance(found, Exception):
            raise found
        return dict(found or {})

    def release(self, digest: str, chunk_size: int, models: list[str] | None = None) -> None:
        """dev built `digest` (with `chunk_size`), then it went to staging and prod."""
        dev = self.backend.stacks["dev"]
        dev.outputs["imageDigest"] = digest
        dev.outputs["embedding"] = {"model": (models or [MODEL])[0], "imageModels": models or [MODEL]}
        dev.set_config("rag:service", {"settings": {"chunkSize": chunk_size}})
        dev.history.append({**dev.history[-1], "config": dev.config})
        promote(self.job(), "dev", "staging")
        promote(self.job(), "staging", "prod")


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    fleet = Fleet(tmp_path)
    fleet.release(RELEASE_A, 300)
    fleet.release(RELEASE_B, 500)
    return fleet


def sha(ref: str) -> str:
    return ref.rsplit("@", 1)[1]


def test_rollback_runs_the_previous_release_through_up_with_the_policy_pack(fleet: Fleet) -> None:
    prod = fleet.backend.stacks["prod"]
    assert sha(prod.outputs["imageDigest"]) == sha(RELEASE_B)
    ups_before = len(fleet.backend.commands("up"))

    done = rollback(fleet.job(), "prod")

    assert sha(done.digest) == sha(RELEASE_A)
    assert done.replaced == registry_ref("prod", RELEASE_B)
    deployed = prod.deployed_config()
    assert deployed["rag:image"]["value"] == registry_ref("staging", RELEASE_A)  # what release A's update ran
    # One image for API and worker: the output both Deployments run now names release A.
    assert prod.outputs["imageDigest"] == registry_ref("prod", RELEASE_A)
    record = deployed["rag:promotion"]["objectValue"]
    assert record["from"] == "staging"
    assert sha(record["digest"]) == sha(RELEASE_A)
    assert record["rollback"] == {
        "toUpdate": done.to_update,
        "replaced": registry_ref("prod", RELEASE_B),
        "at": "2026-03-02T09:00:00Z",
        "by": "oncall",
    }
    assert prod.outputs["promotion"]["rollback"]["toUpdate"] == done.to_update  # what `ragops status` shows
    # Release A's promotable settings came back with it; prod's own sizing stayed.
    assert deployed["rag:service"]["objectValue"] == {"replicas": 5, "settings": {"chunkSize": 300}}
    up = fleet.backend.commands("up")[ups_before:]
    assert len(up) == 1
    assert up[0][up[0].index("--policy-pack") + 1] == "infra/policy"
    assert prod.history[-1]["message"].startswith(f"ragops rollback prod to update {done.to_update}: ")

    # The next plain `ragops up -s prod` (a fresh checkout, an emergency settings change) keeps release A.
    deploy(fleet.job(), "prod")
    assert prod.outputs["imageDigest"] == registry_ref("prod", RELEASE_A)


def test_rollback_to_an_update_or_a_digest_and_forward_again(fleet: Fleet) -> None:
    prod = fleet.backend.stacks["prod"]
    rollback(fleet.job(), "prod", digest="sha256:" + "a1" * 32)
    assert prod.outputs["imageDigest"] == registry_ref("prod", RELEASE_A)
    # Version 3 of prod's history is release B's promotion (1: add_stack, 2: release A, 3: release B).
    done = rollback(fleet.job(), "prod", to_update=3)
    assert prod.outputs["imageDigest"] == registry_ref("prod", RELEASE_B)
    assert done.to_update == 3


def test_rollback_refusals_write_nothing(fleet: Fleet) -> None:
    prod = fleet.backend.stacks["prod"]

    def writes() -> list[list[str]]:
        return [c for c in fleet.backend.commands("config") if c[:2] == ["config", "set-all"] and "prod" in c]

    before = (len(prod.history), len(writes()))
    with pytest.raises(WorkflowError, match="never ran"):
        rollback(fleet.job(), "prod", digest="sha256:" + "c3" * 32)
    with pytest.raises(UsageError, match="no update 42"):
        rollback(fleet.job(), "prod", to_update=42)
    with pytest.raises(WorkflowError, match="no rag:image"):
        rollback(fleet.job(), "prod", to_update=1)  # the stack's first update ran no promoted image
    with pytest.raises(WorkflowError, match="already runs"):
        rollback(fleet.job(), "prod", to_update=3)
    with pytest.raises(UsageError, match="pass one of them"):
        rollback(fleet.job(), "prod", to_update=2, digest=RELEASE_A)
    with pytest.raises(UsageError, match="not an image digest"):
        rollback(fleet.job(), "prod", digest="latest")
    assert (len(prod.history), len(writes())) == before


def test_rollback_refuses_an_image_that_cannot_serve_the_current_index(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    fleet.release(RELEASE_A, 300)
    # Release B moved prod to another model (its image held both until the re-index switched); release A's image
    # does not hold the model prod's index is now built with.
    fleet.release(RELEASE_B, 300, models=[OTHER_MODEL, MODEL])
    prod = fleet.backend.stacks["prod"]
    prod.outputs["embedding"] = {"model": OTHER_MODEL, "imageModels": [OTHER_MODEL]}
    history = len(prod.history)
    with pytest.raises(WorkflowError, match="Cannot roll prod back"):
        rollback(fleet.job(), "prod")
    assert len(prod.history) == history


def test_the_cli_command(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    job = fleet.job()
    monkeypatch.setattr(cli, "_follow_index_change", lambda *args: None)
    result = CliRunner().invoke(
        cli.app,
        ["--work-dir", str(job.work_dir), "rollback", "--stack", "prod", "--quiet"],
        obj=job,
    )
    assert result.exit_code == 0, result.output
    assert "rolled prod back to update" in result.output
    assert fleet.backend.stacks["prod"].outputs["imageDigest"] == registry_ref("prod", RELEASE_A)


# --- the registry schema (EYES_OPS3 O5) -------------------------------------------------------------------------
RELEASE_C = "registry.example.com/dev/rag-service@sha256:" + "c3" * 32


def schema(head: str, compatible_from: str) -> dict[str, str]:
    return {"io.rag.schema-head": head, "io.rag.schema-compatible-from": compatible_from}


def refuses_writing_nothing(fleet: Fleet, match: str, **kwargs: object) -> str:
    prod = fleet.backend.stacks["prod"]
    before = (len(prod.history), len(fleet.backend.commands("config")), prod.deployed_config())
    with pytest.raises(WorkflowError, match=match) as refused:
        rollback(fleet.job(), "prod", **kwargs)  # type: ignore[arg-type]
    assert (len(prod.history), len(fleet.backend.commands("config")), prod.deployed_config()) == before
    return str(refused.value)


def test_rollback_runs_a_release_the_newer_schema_is_declared_compatible_with(fleet: Fleet) -> None:
    fleet.labels[sha(RELEASE_A)] = schema("0011_schema_compat", "0011_schema_compat")
    fleet.labels[sha(RELEASE_B)] = schema("0012_expand", "0011_schema_compat")  # B's migration is expand-only
    rollback(fleet.job(), "prod")
    assert fleet.backend.stacks["prod"].outputs["imageDigest"] == registry_ref("prod", RELEASE_A)


def test_rollback_refuses_a_release_that_cannot_run_on_the_migrated_schema(fleet: Fleet) -> None:
    fleet.labels[sha(RELEASE_A)] = schema("0011_schema_compat", "0011_schema_compat")
    fleet.labels[sha(RELEASE_B)] = schema("0012_contract", "0012_contract")  # B dropped what A needs
    message = refuses_writing_nothing(fleet, "Cannot roll prod back to update")
    assert "its registry schema is 0011_schema_compat" in message
    assert f"the stack's database is at 0012_contract ({registry_ref('prod', RELEASE_B)})" in message
    assert "only releases at schema 0012_contract or newer" in message
    assert "Fix forward" in message
    assert "restore the registry from a backup" in message
    assert "docs/runbooks.md" in message

    # After the registry was restored to A's schema (the runbook), the operator names the restored revision.
    rollback(fleet.job(), "prod", database_schema="0011_schema_compat")
    assert fleet.backend.stacks["prod"].outputs["imageDigest"] == registry_ref("prod", RELEASE_A)


def test_rollback_refuses_a_release_from_before_the_schema_contract(fleet: Fleet) -> None:
    # Release A was built before 0011: it refuses any revision it does not ship, whatever 0011 records.
    fleet.labels[sha(RELEASE_B)] = schema("0011_schema_compat", "0011_schema_compat")
    message = refuses_writing_nothing(fleet, "built before the registry schema contract")
    assert "the stack's database is at 0011_schema_compat" in message


def test_rollback_between_releases_from_before_the_contract_is_not_checked(fleet: Fleet) -> None:
    # Neither image carries the labels: nothing is known (the pre-0011 behaviour; the service still refuses).
    rollback(fleet.job(), "prod")
    assert fleet.backend.stacks["prod"].outputs["imageDigest"] == registry_ref("prod", RELEASE_A)


def test_the_database_is_as_new_as_any_release_the_stack_ran(tmp_path: Path) -> None:
    # A (11), B (12, A may run on it), C (13, only B and newer). C -> B is fine; from B, A must still be refused:
    # C migrated the database to 13 although B, the current image, only knows 12.
    fleet = Fleet(tmp_path)
    fleet.labels[sha(RELEASE_A)] = schema("0011_schema_compat", "0011_schema_compat")
    fleet.labels[sha(RELEASE_B)] = schema("0012_expand", "0011_schema_compat")
    fleet.labels[sha(RELEASE_C)] = schema("0013_contract", "0012_expand")
    for release in (RELEASE_A, RELEASE_B, RELEASE_C):
        fleet.release(release, 300)
    rollback(fleet.job(), "prod")
    assert sha(fleet.backend.stacks["prod"].outputs["imageDigest"]) == sha(RELEASE_B)
    message = refuses_writing_nothing(fleet, "Cannot roll prod back", digest=sha(RELEASE_A))
    assert "the stack's database is at 0013_contract" in message
    assert "only releases at schema 0012_expand or newer" in message


def test_rollback_needs_the_labels_of_the_target_and_the_current_image(fleet: Fleet) -> None:
    fleet.labels[sha(RELEASE_A)] = schema("0011_schema_compat", "0011_schema_compat")
    fleet.labels[sha(RELEASE_B)] = ImageLabelError("cannot read it from this machine: unauthorized")
    message = refuses_writing_nothing(
        fleet, "cannot check that the release can run on the stack's registry schema"
    )
    assert "unauthorized" in message
    fleet.labels[sha(RELEASE_B)] = schema("0012_expand", "0011_schema_compat")
    fleet.labels[sha(RELEASE_A)] = ImageLabelError("manifest unknown")
    refuses_writing_nothing(fleet, "manifest unknown")


def test_a_rollback_reads_the_image_from_the_stacks_own_registry(fleet: Fleet) -> None:
    """Staging's history names release A by dev's registry (what its promotion set as rag:image); dev's retention
    expired A's build (`supersededBuildDays`), while staging's own copy keeps it for good (`sha256-<hex>`). The
    rollback reads A's labels there instead of refusing on dev's registry."""
    fleet.labels[sha(RELEASE_A)] = schema("0011_schema_compat", "0011_schema_compat")
    fleet.labels[sha(RELEASE_B)] = schema("0012_expand", "0011_schema_compat")
    read: list[str] = []

    def labels(ref: str) -> dict[str, str]:
        read.append(ref)
        if ref.startswith("registry.example.com/dev/"):
            raise ImageLabelError(f"cannot read {ref} from this machine: manifest unknown")
        return fleet.labels_of(ref)

    job = fleet.job()
    job.image_labels = labels
    staging = fleet.backend.stacks["staging"]
    assert staging.deployed_config()["rag:image"]["value"] == RELEASE_B  # dev's registry

    done = rollback(job, "staging")

    assert sha(done.digest) == sha(RELEASE_A)
    assert staging.outputs["imageDigest"] == registry_ref("staging", RELEASE_A)
    assert registry_ref("staging", RELEASE_A) in read
    # The schema check still ran on both images (a contract-breaking B would have refused it).
    assert registry_ref("staging", RELEASE_B) in read


def test_a_rollback_whose_image_is_in_neither_registry_is_refused(fleet: Fleet) -> None:
    fleet.labels[sha(RELEASE_B)] = schema("0012_expand", "0011_schema_compat")
    fleet.labels[sha(RELEASE_A)] = ImageLabelError("manifest unknown")  # gone from both registries
    message = refuses_writing_nothing(fleet, "cannot check that the release can run")
    assert "manifest unknown" in message


def test_rollback_refuses_a_database_schema_that_is_no_revision(fleet: Fleet) -> None:
    with pytest.raises(UsageError, match="is not a registry schema revision"):
        rollback(fleet.job(), "prod", database_schema="latest")


def test_the_cli_passes_the_database_schema(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet.labels[sha(RELEASE_A)] = schema("0011_schema_compat", "0011_schema_compat")
    fleet.labels[sha(RELEASE_B)] = schema("0012_contract", "0012_contract")
    monkeypatch.setattr(cli, "_follow_index_change", lambda *args: None)
    job = fleet.job()
    args = ["--work-dir", str(job.work_dir), "rollback", "--stack", "prod", "--quiet"]
    refused = CliRunner().invoke(cli.app, args, obj=job)
    assert refused.exit_code != 0
    assert "0012_contract" in refused.output
    done = CliRunner().invoke(cli.app, [*args, "--database-schema", "0011_schema_compat"], obj=fleet.job())
    assert done.exit_code == 0, done.output
    assert fleet.backend.stacks["prod"].outputs["imageDigest"] == registry_ref("prod", RELEASE_A)


def test_a_promotion_is_checked_against_the_targets_schema_too(fleet: Fleet) -> None:
    # Staging was restored to before B's migration and rolled back to A; promoting that to prod, whose database
    # B migrated past what A can run on, is refused before prod is touched.
    fleet.labels[sha(RELEASE_A)] = schema("0011_schema_compat", "0011_schema_compat")
    fleet.labels[sha(RELEASE_B)] = schema("0012_contract", "0012_contract")
    rollback(fleet.job(), "staging", database_schema="0011_schema_compat")
    prod = fleet.backend.stacks["prod"]
    before = (len(prod.history), prod.deployed_config())
    with pytest.raises(WorkflowError, match="Cannot promote staging -> prod") as refused:
        promote(fleet.job(), "staging", "prod")
    assert "the stack's database is at 0012_contract" in str(refused.value)
    assert (len(prod.history), prod.deployed_config()) == before


def _with_monitoring(job: Context, monitoring: dict) -> Context:
    """The job's checkout of Pulumi.prod.yaml with `rag:monitoring` set (config lives in the stack file)."""
    path = job.work_dir / "Pulumi.prod.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["config"]["rag:monitoring"] = monitoring
    path.write_text(yaml.safe_dump(doc))
    return job


def test_a_rollback_of_a_prod_that_pages_nobody_warns_loudly_and_goes_on(fleet: Fleet) -> None:
    """`up` and `promote` refuse a prod whose alerts page nobody (tests/workflows/test_alerting.py); the rollback is
    the emergency path and changes the image, not who is paged: it warns (before the up and after it) and runs."""
    prod = fleet.backend.stacks["prod"]
    pages_nobody = {"enabled": True}  # no receiver, the default runbookUrl
    outputs: list[str] = []
    done = rollback(_with_monitoring(fleet.job(), pages_nobody), "prod", on_output=outputs.append)
    assert prod.outputs["imageDigest"] == registry_ref("prod", RELEASE_A)
    assert done.warning is not None
    for named in ("WARNING", "no alert receiver", "rag:slackWebhookUrl", "runbookUrl", "Pulumi.prod.yaml"):
        assert named in done.warning
    assert outputs[0] == done.warning  # before the up's own output
    with pytest.raises(WorkflowError, match=r"^Refusing to update prod"):  # the refusal `up` keeps
        deploy(_with_monitoring(fleet.job(), pages_nobody), "prod")

    job = _with_monitoring(fleet.job(), pages_nobody)
    result = CliRunner().invoke(
        cli.app,
        ["--work-dir", str(job.work_dir), "rollback", "--stack", "prod", "--digest", RELEASE_B, "--quiet"],
        obj=job,
    )
    assert result.exit_code == 0, result.output
    assert "WARNING: rolling prod back although its alerts would page nobody" in result.output
    assert sha(prod.outputs["imageDigest"]) == sha(RELEASE_B)


def test_a_rollback_of_a_prod_that_pages_someone_prints_no_warning(fleet: Fleet) -> None:
    pages = {
        "enabled": True,
        "runbookUrl": "https://git.example.com/rag/docs/runbooks.md",
        "alerting": {"email": {"to": "ops@example.com"}},
    }
    assert rollback(_with_monitoring(fleet.job(), pages), "prod").warning is None
