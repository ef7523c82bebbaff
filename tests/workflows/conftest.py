"""Fixtures: a fake Pulumi backend, a workflow Context bound to it, a fixed clock and actor."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from infra.components import image
from infra.components.image import CopyPrerequisiteError
from infra.workflows.stacks import Context
from tests.workflows.fake_pulumi import FakeBackend

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


PREVIEW_DOMAIN = "preview.example.com"


@pytest.fixture(autouse=True)
def no_build_daemon_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake backend builds nothing, and CI has no Docker daemon: an `up` that builds skips the daemon check
    unless a test injects one (`Context.check_build_daemon`; the check itself: tests/workflows/test_build_daemon.py)."""
    monkeypatch.setattr(image, "check_build_daemon", lambda: None)


@pytest.fixture(autouse=True)
def preview_domain(monkeypatch: pytest.MonkeyPatch) -> str:
    """PR stacks are served under a reachable preview domain (CI sets RAGOPS_PREVIEW_DOMAIN the same way)."""
    monkeypatch.setenv("RAGOPS_PREVIEW_DOMAIN", PREVIEW_DOMAIN)
    return PREVIEW_DOMAIN


@pytest.fixture
def backend(work_dir: Path) -> FakeBackend:
    """An empty in-memory Pulumi backend; `work_dir` is the checkout its stacks were deployed from."""
    return FakeBackend(work_dir)


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    """A project dir with a dev stack file, like the repo root (the fake CLI never reads Pulumi.yaml)."""
    (tmp_path / "Pulumi.yaml").write_text("name: rag\nruntime: python\nmain: infra/\n")
    (tmp_path / "Pulumi.dev.yaml").write_text(
        "config:\n"
        "  rag:environment: dev\n"
        "  rag:qdrantApiKey:\n"
        "    secure: v1:AAAA\n"
        "  rag:service:\n"
        "    replicas: 1\n"
        "    settings:\n"
        "      logLevel: DEBUG\n"
        "  rag:gateway:\n"
        "    hostname: rag.localtest.me\n"
        "    className: envoy-gateway\n"
    )
    return tmp_path


class ImageSourceChecks(list):
    """Records the refs a promotion checked before copying (`Context.check_image_source`); `refuse` makes the
    next check fail the way `check_copy_source` does (tests/workflows/test_image_copy.py runs the real one)."""

    refuse: str | None = None

    def __call__(self, ref: str) -> None:
        self.append(ref)
        if self.refuse is not None:
            raise CopyPrerequisiteError(self.refuse)


@pytest.fixture
def image_checks() -> ImageSourceChecks:
    """The promotion's copy pre-check, recorded instead of run against a registry."""
    return ImageSourceChecks()


@pytest.fixture
def ctx(backend: FakeBackend, work_dir: Path, image_checks: ImageSourceChecks) -> Context:
    """A workflow Context whose Pulumi CLI is the fake backend, at a fixed time, acted by `octocat`."""
    return Context(
        work_dir=work_dir,
        pulumi_command=backend.command(),
        clock=lambda: NOW,
        actor=lambda: "octocat",
        check_image_source=image_checks,
        check_registry_tools=lambda provider: None,  # skopeo/gcloud/aws: tests/workflows/test_deploy.py
        image_labels=lambda ref: {},  # images built before the schema labels: nothing to compare
    )
