"""PR stacks where deployers may not create namespaces: the operator gives `rag:namespaceMode` and `rag:namespace`
(`ragops ephemeral up --namespace-mode/--namespace`, or $RAGOPS_EPHEMERAL_NAMESPACE_MODE / $RAGOPS_EPHEMERAL_NAMESPACE,
which pr.yml fills from the repository variables PREVIEW_NAMESPACE_MODE / PREVIEW_NAMESPACE).

The config `ephemeral up` writes to the stack is checked in the fake backend, and the same config is run through
the real program offline (what it declares for the namespace, and what the deployer's RBAC then needs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from infra import rbac
from infra.offline import StackRun, run_stack
from infra.workflows import ephemeral
from infra.workflows.cli import app
from infra.workflows.stacks import REPO_ROOT, Context, UsageError
from tests.workflows.fake_pulumi import FakeBackend

runner = CliRunner()
NAMESPACE = "kubernetes:core/v1:Namespace"
NAMESPACE_PATCH = "kubernetes:core/v1:NamespacePatch"
RECORD = {"name": "pr-7", "owner": "alice", "expiresAt": "2030-01-01T00:00:00Z"}


@pytest.fixture(autouse=True)
def _no_operator_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (ephemeral.NAMESPACE_MODE_ENV, ephemeral.NAMESPACE_ENV, ephemeral.MAX_STACKS_ENV):
        monkeypatch.delenv(var, raising=False)


def pr_program(values: dict[str, Any]) -> StackRun:
    """The real program with the config `ephemeral up` writes (the template over Pulumi.dev.yaml)."""
    overrides = {key.removeprefix("rag:"): value for key, value in values.items() if key.startswith("rag:")}
    return run_stack("dev", config_overrides={**overrides, "ephemeral": RECORD})


def namespaces_of(run: StackRun) -> set[str]:
    return {
        r.inputs["metadata"]["namespace"]
        for r in run.resources
        if r.custom
        and r.type.startswith("kubernetes:apps/")
        and r.inputs.get("metadata", {}).get("namespace")
    }


def test_by_default_a_pr_stack_creates_its_own_namespace() -> None:
    values = ephemeral.template_config(REPO_ROOT, "pr-7", domain="preview.example.com")
    assert values.get("rag:namespaceMode") is None  # Pulumi.yaml's default: create
    assert values["rag:namespace"] == "pr-7"
    run = pr_program(values)
    assert [r.inputs["metadata"]["name"] for r in run.of_type(NAMESPACE)] == ["pr-7"]


def test_an_existing_namespace_per_pr_declares_no_namespace_and_needs_no_namespace_rights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ephemeral.NAMESPACE_MODE_ENV, "existing")
    monkeypatch.setenv(ephemeral.NAMESPACE_ENV, "preview-{name}")
    values = ephemeral.template_config(REPO_ROOT, "pr-7", domain="preview.example.com")
    assert (values["rag:namespaceMode"], values["rag:namespace"]) == ("existing", "preview-pr-7")
    run = pr_program(values)
    assert not run.of_type(NAMESPACE)
    assert not run.of_type(NAMESPACE_PATCH)
    assert namespaces_of(run) == {"preview-pr-7"}
    # The deployer of such a PR stack is granted nothing on namespaces (it may not create them).
    for manifest in rbac.manifests(run):
        for rule in manifest.get("rules") or []:
            assert "namespaces" not in rule.get("resources", []) or "create" not in rule["verbs"], manifest


def test_patch_mode_labels_the_given_namespace_with_the_ephemeral_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ephemeral.NAMESPACE_MODE_ENV, "patch")
    values = ephemeral.template_config(REPO_ROOT, "pr-7", domain="preview.example.com")
    run = pr_program(values)
    assert not run.of_type(NAMESPACE)
    (patch,) = run.of_type(NAMESPACE_PATCH)
    assert patch.inputs["metadata"]["name"] == "pr-7"
    assert patch.inputs["metadata"]["annotations"]["rag.dev/ephemeral-owner"] == "alice"


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ephemeral.NAMESPACE_MODE_ENV, "patch")
    monkeypatch.setenv(ephemeral.NAMESPACE_ENV, "env-{name}")
    values = ephemeral.template_config(
        REPO_ROOT, "pr-7", domain="preview.example.com", namespace_mode="existing", namespace="flag-{name}"
    )
    assert (values["rag:namespaceMode"], values["rag:namespace"]) == ("existing", "flag-pr-7")
    # An empty variable (an unset repository variable in pr.yml) is no choice.
    monkeypatch.setenv(ephemeral.NAMESPACE_MODE_ENV, "")
    monkeypatch.setenv(ephemeral.NAMESPACE_ENV, " ")
    values = ephemeral.template_config(REPO_ROOT, "pr-7", domain="preview.example.com")
    assert ("rag:namespaceMode" in values, values["rag:namespace"]) == (False, "pr-7")


@pytest.mark.parametrize(
    ("mode", "namespace", "cap", "message"),
    [
        ("adopt", None, None, "must be one of create, patch, existing"),
        ("existing", "Previews_{name}", None, "must be a DNS label"),
        ("existing", "p" * 30 + "-{name}", None, "at most 63 characters"),
        ("existing", "previews", None, "every PR stack would deploy into it"),
        ("existing", "rag", "1", "the base stack's own"),
    ],
)
def test_a_namespace_choice_that_cannot_work_is_refused(
    monkeypatch: pytest.MonkeyPatch, mode: str, namespace: str | None, cap: str | None, message: str
) -> None:
    if cap is not None:
        monkeypatch.setenv(ephemeral.MAX_STACKS_ENV, cap)
    with pytest.raises(UsageError, match=message):
        ephemeral.template_config(
            REPO_ROOT, "pr-7", domain="preview.example.com", namespace_mode=mode, namespace=namespace
        )


def test_one_shared_namespace_works_with_one_live_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ephemeral.MAX_STACKS_ENV, "1")
    values = ephemeral.template_config(
        REPO_ROOT, "pr-7", domain="preview.example.com", namespace_mode="existing", namespace="previews"
    )
    assert values["rag:namespace"] == "previews"
    assert namespaces_of(pr_program(values)) == {"previews"}


def test_ephemeral_up_writes_the_operators_namespace_into_the_stack(
    ctx: Context, backend: FakeBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ephemeral.NAMESPACE_MODE_ENV, "existing")
    result = runner.invoke(
        app, ["ephemeral", "up", "--name", "pr-9", "--ttl", "2h", "--namespace", "team-a-{name}"], obj=ctx
    )
    assert result.exit_code == 0, result.output
    stack = backend.stacks["pr-9"]
    assert stack.config_value("rag:namespaceMode") == "existing"
    assert stack.config_value("rag:namespace") == "team-a-pr-9"
    # Refused before any Pulumi call.
    calls = len(backend.commands("stack"))
    bad = runner.invoke(app, ["ephemeral", "up", "--name", "pr-10", "--namespace-mode", "adopt"], obj=ctx)
    assert bad.exit_code == 2
    assert "must be one of create, patch, existing" in " ".join(bad.output.split())
    assert len(backend.commands("stack")) == calls


def test_pr_yml_hands_the_repository_variables_to_ephemeral_up() -> None:
    workflow = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "pr.yml").read_text())
    (up,) = [s for s in workflow["jobs"]["ephemeral"]["steps"] if "ragops ephemeral up" in s.get("run", "")]
    assert up["env"][ephemeral.NAMESPACE_MODE_ENV] == "${{ vars.PREVIEW_NAMESPACE_MODE }}"
    assert up["env"][ephemeral.NAMESPACE_ENV] == "${{ vars.PREVIEW_NAMESPACE }}"


def test_the_template_documents_the_operator_choice() -> None:
    text = Path(ephemeral.TEMPLATE).read_text()
    assert ephemeral.NAMESPACE_MODE_ENV in text
    assert ephemeral.NAMESPACE_ENV in text
