"""A fourth permanent stack, added as docs/delivery.md#adding-a-permanent-stack says, against the checks across the
committed stack files and the workflows (infra/workflows/wiring.py): what is wired passes, what is not fails CI and
`make plan` with a sentence naming the file."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra import render
from infra.workflows.stacks import PERMANENT_STACKS, REPO_ROOT, UsageError, WorkflowError, allowed_promotions
from infra.workflows.wiring import stack_file_findings, workflow_problems

RAGOPS = Path(sys.executable).with_name("ragops")
QA_PUBLIC = """config:
  rag:environment: staging
  rag:cluster:
    provider: eks
    eks:
      region: eu-west-3
      endpointPublicAccess: true
      publicAccessCidrs: ["203.0.113.0/24"]
"""
QA_PRIVATE = "config:\n  rag:environment: staging\n  rag:cluster:\n    provider: eks\n    eks:\n      region: eu-west-3\n"


def _repo(tmp_path: Path, **files: str) -> Path:
    """The shipped stack files, Pulumi.yaml and nightly.yml, plus `files` ({stack: text})."""
    repo = tmp_path / "repo"
    (repo / ".github" / "workflows").mkdir(parents=True)
    # The repository's nightly.yml with the shipped stacks only (a team's own qa entry must not change these answers).
    nightly = yaml.safe_load(
        (REPO_ROOT / ".github" / "workflows" / "nightly.yml").read_text(encoding="utf-8")
    )
    matrix = nightly["jobs"]["drift"]["strategy"]["matrix"]
    matrix["stack"] = [stack for stack in matrix["stack"] if stack in PERMANENT_STACKS]
    matrix["include"] = [entry for entry in matrix["include"] if entry["stack"] in PERMANENT_STACKS]
    (repo / ".github" / "workflows" / "nightly.yml").write_text(yaml.safe_dump(nightly), encoding="utf-8")
    for name in ("Pulumi.yaml", *(f"Pulumi.{stack}.yaml" for stack in PERMANENT_STACKS)):
        shutil.copy(REPO_ROOT / name, repo / name)
    for stack, text in files.items():
        (repo / f"Pulumi.{stack}.yaml").write_text(text, encoding="utf-8")
    return repo


def _nightly(repo: Path, stack: str, runner: str | None) -> None:
    path = repo / ".github" / "workflows" / "nightly.yml"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    matrix = doc["jobs"]["drift"]["strategy"]["matrix"]
    matrix["stack"].append(stack)
    if runner is not None:
        matrix["include"].append({"stack": stack, "runner": runner})
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")


def test_the_repository_serves_every_permanent_stack() -> None:
    assert workflow_problems(REPO_ROOT) == []


def test_a_new_stack_file_without_its_drift_entry_fails_with_the_fix(tmp_path: Path) -> None:
    repo = _repo(tmp_path, qa=QA_PUBLIC)
    (problem,) = workflow_problems(repo)
    assert problem.startswith(
        "Pulumi.qa.yaml is a permanent stack but .github/workflows/nightly.yml's drift matrix"
    )
    assert "add 'qa' to jobs.drift.strategy.matrix.stack and an include entry" in problem


def test_a_drift_entry_without_a_runner_fails(tmp_path: Path) -> None:
    """Adding the name to `stack:` alone leaves matrix.runner empty for it (runs-on is fromJSON(matrix.runner))."""
    repo = _repo(tmp_path, qa=QA_PUBLIC)
    _nightly(repo, "qa", None)
    (problem,) = workflow_problems(repo)
    assert "no include entry with a runner for 'qa'" in problem


def test_a_wired_stack_passes_in_any_matrix_order(tmp_path: Path) -> None:
    repo = _repo(tmp_path, qa=QA_PUBLIC)
    _nightly(repo, "qa", '["ubuntu-24.04"]')
    assert workflow_problems(repo) == []


def test_a_private_endpoint_on_a_hosted_drift_runner_fails(tmp_path: Path) -> None:
    repo = _repo(tmp_path, qa=QA_PRIVATE)
    _nightly(repo, "qa", '["ubuntu-24.04"]')
    (problem,) = workflow_problems(repo)
    assert problem.startswith("Pulumi.qa.yaml's cluster endpoint is private")
    # A runner of the operator's choosing (a label, an expression) passes.
    repo2 = _repo(tmp_path / "2", qa=QA_PRIVATE)
    _nightly(repo2, "qa", '["self-hosted", "rag-qa"]')
    assert workflow_problems(repo2) == []


def test_a_matrix_entry_without_a_stack_file_fails(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    _nightly(repo, "qa", '["ubuntu-24.04"]')
    (problem,) = workflow_problems(repo)
    assert "lists 'qa', which has no permanent stack file Pulumi.qa.yaml" in problem


def test_the_plan_warns_of_a_private_endpoint_that_promote_runs_hosted(tmp_path: Path) -> None:
    errors, warnings = stack_file_findings(_repo(tmp_path, qa=QA_PRIVATE), "qa")
    assert errors == []
    (warning,) = warnings
    assert warning.startswith("Pulumi.qa.yaml: the cluster's control-plane endpoint is private")
    assert "STACK_RUNNERS" in warning
    assert stack_file_findings(_repo(tmp_path / "public", qa=QA_PUBLIC), "qa") == ([], [])
    # prod's jobs run on PROD_RUNNER (self-hosted by default): no warning for the shipped prod file.
    assert stack_file_findings(REPO_ROOT, "prod") == ([], [])


def test_a_copied_salt_or_secure_value_is_refused_naming_both_files(tmp_path: Path) -> None:
    staging = "encryptionsalt: v1:AAAAsalt=\nconfig:\n  rag:environment: staging\n"
    staging += "  rag:qdrantApiKey:\n    secure: v1:cipher1\n"
    repo = _repo(tmp_path, staging=staging, qa=staging)
    errors, _ = stack_file_findings(repo, "qa")
    assert errors[0].startswith("encryptionsalt in Pulumi.qa.yaml: the same as Pulumi.staging.yaml's")
    assert "pulumi stack init qa" in errors[0]
    assert errors[1].startswith(
        "rag:qdrantApiKey in Pulumi.qa.yaml: the same `secure:` ciphertext as in Pulumi.staging.yaml"
    )
    # The stack's own salt and secrets: nothing to say.
    own = staging.replace("AAAAsalt", "BBBBsalt").replace("cipher1", "cipher2")
    assert stack_file_findings(_repo(tmp_path / "own", staging=staging, qa=own), "qa")[0] == []


def test_make_plan_refuses_a_copied_stack_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    staging = "encryptionsalt: v1:AAAAsalt=\nconfig:\n  rag:environment: staging\n"
    monkeypatch.setattr(render, "PROJECT_DIR", _repo(tmp_path, staging=staging, qa=staging))
    assert render.main(["--stack", "qa", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: encryptionsalt in Pulumi.qa.yaml: the same as Pulumi.staging.yaml's")


def test_a_second_permanent_stack_in_devs_namespace_of_devs_cluster_is_warned(tmp_path: Path) -> None:
    cheap = "config:\n  rag:environment: staging\n  rag:cluster:\n    provider: existing\n"
    cheap += "    existing:\n      context: kind-rag\n"
    (warning,) = stack_file_findings(_repo(tmp_path, qa=cheap), "qa")[1]
    assert warning.startswith(
        "Pulumi.qa.yaml and Pulumi.dev.yaml deploy to the same existing cluster (context 'kind-rag') and namespace 'rag'"
    )
    # Its own namespace: a neighbour, not a collision.
    own = cheap + "  rag:namespace: rag-qa\n"
    assert stack_file_findings(_repo(tmp_path / "own", qa=own), "qa") == ([], [])


def _git_commit(repo: Path) -> None:
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "stacks"],
    ):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, timeout=60)


@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("config:\n  rag:cluster:\n    provider: eks\n", "rag:environment in Pulumi.perf.yaml: missing:"),
        (
            "rag:environment: staging\nconfig:\n  rag:namespace: perf\n",
            "rag:environment in Pulumi.perf.yaml: not a",
        ),
    ],
)
def test_a_stack_file_without_its_environment_is_refused_naming_key_and_file(
    tmp_path: Path, text: str, first: str
) -> None:
    """Pulumi.yaml's default (dev) would make it a build-from-the-checkout stack and a promotion source."""
    repo = _repo(tmp_path, perf=text)
    errors, _ = stack_file_findings(repo, "perf")
    assert errors[0].startswith(first)
    assert any(e.startswith("rag:environment in Pulumi.perf.yaml: missing:") for e in errors)
    assert any(p.startswith("rag:environment in Pulumi.perf.yaml: missing:") for p in workflow_problems(repo))
    # The shipped files name theirs.
    for stack in PERMANENT_STACKS:
        assert stack_file_findings(REPO_ROOT, stack)[0] == []


def test_a_committed_stack_file_without_its_environment_opens_no_promotion(tmp_path: Path) -> None:
    repo = _repo(tmp_path, perf="config:\n  rag:cluster:\n    provider: eks\n")
    _git_commit(repo)
    result = subprocess.run(
        [str(RAGOPS), "--work-dir", str(repo), "promotion-targets", "--from", "perf"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result
    assert "rag:environment in Pulumi.perf.yaml: missing" in result.stderr
    with pytest.raises(UsageError, match=r"rag:environment in Pulumi\.perf\.yaml: missing"):
        allowed_promotions(repo)


@pytest.mark.parametrize("name", ["qa", "prod-2", "feature-x"])
def test_ephemeral_up_takes_only_names_in_the_pr_namespace(tmp_path: Path, name: str) -> None:
    """A PR stack named like a permanent stack another checkout has (`qa` before its file is merged) would take
    that name in the shared backend: `up` refuses before any Pulumi call (no CLI on PATH needed)."""
    result = subprocess.run(
        [str(RAGOPS), "--work-dir", str(_repo(tmp_path)), "ephemeral", "up", "--name", name, "--ttl", "1h",
         "--domain", "preview.example.com"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result
    assert "ephemeral stack names start with 'pr-'" in " ".join(result.stderr.split())
    assert not result.stderr.startswith("\n")


def test_a_permanent_stack_file_in_the_pr_namespace_is_refused(tmp_path: Path) -> None:
    repo = _repo(tmp_path, **{"pr-1": (REPO_ROOT / "Pulumi.dev.yaml").read_text()})
    (error,) = stack_file_findings(repo, "pr-1")[0]
    assert error.startswith("Pulumi.pr-1.yaml: pr-<...> names are PR stacks'")
    assert "make plan STACK=pr-1" in error
    assert any(
        p.startswith("Pulumi.pr-1.yaml: pr-<...> names are PR stacks'") for p in workflow_problems(repo)
    )


def test_make_plan_renders_a_pr_stack_from_the_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make plan STACK=pr-1` (no stack file): what `ragops ephemeral up --name pr-1` would deploy."""
    monkeypatch.setenv("RAGOPS_PREVIEW_DOMAIN", "preview.example.com")
    assert render.main(["--stack", "pr-1", "--out", str(tmp_path / "out")]) == 0
    plan = (tmp_path / "out" / "plan.md").read_text()
    assert plan.startswith("# Plan: stack `pr-1` (dev)")
    assert '"https://pr-1.preview.example.com"' in plan
    assert "NAMESPACE pr-1: created by the stack" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [["drift", "--stack", "dev"], ["promote", "--from", "dev", "--to", "staging"], ["ephemeral", "reap"]],
)
def test_an_error_in_a_pipe_starts_on_the_first_line(tmp_path: Path, argv: list[str]) -> None:
    """The progress spinner is for terminals: in a pipe (CI logs) it left a blank line before the error (L9)."""
    result = subprocess.run(
        [str(RAGOPS), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": str(tmp_path), "HOME": str(tmp_path)},  # no pulumi on PATH
    )
    assert result.returncode == 1, result
    assert result.stderr.startswith("error: the Pulumi CLI is not on PATH"), result.stderr


def test_two_permanent_stacks_with_one_hostname_are_warned(tmp_path: Path) -> None:
    staging_host = yaml.safe_load((REPO_ROOT / "Pulumi.staging.yaml").read_text())["config"]["rag:gateway"]
    qa = QA_PUBLIC + f"  rag:gateway:\n    hostname: {staging_host['hostname']}\n"
    (warning,) = stack_file_findings(_repo(tmp_path, qa=qa), "qa")[1]
    assert warning.startswith(
        f"rag:gateway.hostname in Pulumi.qa.yaml is {staging_host['hostname']!r}, as in Pulumi.staging.yaml"
    )
    own = QA_PUBLIC + "  rag:gateway:\n    hostname: rag.qa.example.com\n"
    assert stack_file_findings(_repo(tmp_path / "own", qa=own), "qa") == ([], [])


def test_an_untracked_scratch_file_that_is_not_yaml_stops_no_promotion(tmp_path: Path) -> None:
    """The docs say an uncommitted stack file takes part in no promotion: a broken one must not stop them (L2);
    a committed broken one still does, naming the file."""
    repo = _repo(tmp_path)
    _git_commit(repo)
    (repo / "Pulumi.scratch.yaml").write_text("{\n", encoding="utf-8")
    assert ("dev", "staging") in allowed_promotions(repo)
    _git_commit(repo)
    with pytest.raises(WorkflowError, match=r"Pulumi\.scratch\.yaml is not valid YAML"):
        allowed_promotions(repo)
