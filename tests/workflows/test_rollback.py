"""`ragops rollback`: an earlier release runs again through `up`, API and worker together, state and status true.

Two releases go dev -> staging -> prod from fresh checkouts (as the promote workflow's jobs do), then prod is rolled
back from another fresh checkout: everything is read from the backend (the update history's config, the outputs).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

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
        )

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
