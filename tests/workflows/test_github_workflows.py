"""The GitHub Actions workflows: valid against the GitHub workflow JSON schema (check-jsonschema's vendored copy,
offline), actions pinned to exact versions, and each workflow wired to the ragops command it exists for."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.workflows.stacks import PERMANENT_STACKS, REPO_ROOT
from infra.workflows.wiring import workflow_problems

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
#: The installed CLI (`make install`), as promote.yml's steps run it.
RAGOPS = Path(sys.executable).with_name("ragops")
FILES = sorted(WORKFLOWS.glob("*.yml"))
EXPECTED = {"pr.yml", "pr-close.yml", "main.yml", "promote.yml", "nightly.yml", "e2e.yml"}


def _validate(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def _load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the bare key `on` as boolean True.
    data["on"] = data.pop(True, data.get("on"))
    return data


def _runs(job: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_all_expected_workflows_exist() -> None:
    assert {p.name for p in FILES} >= EXPECTED


def test_every_workflow_matches_the_github_workflow_schema() -> None:
    result = _validate(FILES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validation done" in result.stdout


def test_the_schema_check_rejects_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("name: x\non: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    stepz: []\n")
    result = _validate([broken])
    assert result.returncode == 1
    assert "broken.yml" in result.stdout


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_actions_are_pinned_to_exact_versions(path: Path) -> None:
    uses = re.findall(r"uses:\s*([^\s#]+)", path.read_text())
    assert uses
    for ref in uses:
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@(v\d+\.\d+\.\d+|[0-9a-f]{40})", ref), (
            f"{path.name}: unpinned {ref}"
        )


def test_pr_runs_tests_then_preview_comment_and_ephemeral_stack() -> None:
    wf = _load("pr.yml")
    assert wf["on"]["pull_request"]["types"] == ["opened", "synchronize", "reopened"]
    jobs = wf["jobs"]
    assert "make test" in _runs(jobs["test"])
    assert jobs["preview"]["needs"] == "test"
    assert "ragops preview --stack dev --comment-file preview.md" in _runs(jobs["preview"])
    comment = next(s for s in jobs["preview"]["steps"] if "sticky-pull-request-comment" in s.get("uses", ""))
    assert comment["with"]["path"] == "preview.md"
    assert comment["if"].startswith("always()")  # a failed preview still explains itself on the PR
    assert jobs["preview"]["permissions"]["pull-requests"] == "write"
    assert jobs["ephemeral"]["needs"] == "test"
    ephemeral = jobs["ephemeral"]
    assert 'ragops ephemeral up --name "pr-${{ github.event.pull_request.number }}" --ttl 48h' in _runs(
        ephemeral
    )
    up = next(s for s in ephemeral["steps"] if "ragops ephemeral up" in s.get("run", ""))
    assert (
        up["env"]["RAGOPS_PREVIEW_DOMAIN"] == "${{ vars.PREVIEW_DOMAIN }}"
    )  # a reachable host, not localhost
    assert "--comment-file ephemeral.md" in up["run"]
    runs = [s.get("run", "") for s in ephemeral["steps"]]
    smoke = next(
        i
        for i, r in enumerate(runs)
        if 'ragops smoke --stack "pr-${{ github.event.pull_request.number }}"' in r
    )
    assert smoke > runs.index(up["run"])
    # A cancelled/timed-out update is killed within 10 s, mid-teardown: a separate step, run after a cancel too,
    # tears the stack down (cancelling the killed process's stale lock) before the smoke check would run.
    teardown = next(
        i for i, s in enumerate(ephemeral["steps"]) if "ragops ephemeral destroy --force" in s.get("run", "")
    )
    step = ephemeral["steps"][teardown]
    assert runs.index(up["run"]) < teardown < smoke
    assert step["run"].endswith('--stack "pr-${{ github.event.pull_request.number }}"')
    assert step["if"] == f"cancelled() || (failure() && steps.{up['id']}.outcome == 'failure')"
    comment = next(s for s in ephemeral["steps"] if "sticky-pull-request-comment" in s.get("uses", ""))
    assert comment["with"] == {"header": "ragops-ephemeral", "path": "ephemeral.md"}
    assert ephemeral["permissions"]["pull-requests"] == "write"


def test_pr_close_destroys_the_ephemeral_stack_in_the_same_concurrency_group() -> None:
    wf, pr = _load("pr-close.yml"), _load("pr.yml")
    assert wf["on"]["pull_request"]["types"] == ["closed"]
    assert wf["concurrency"]["group"] == pr["concurrency"]["group"]
    assert 'ragops ephemeral destroy --force --stack "pr-${{ github.event.pull_request.number }}"' in _runs(
        wf["jobs"]["destroy"]
    )


def _assert_reindex_fits_the_job(job: dict) -> None:
    """Following a re-index ends (with ragops' own message) well before the job's timeout would kill it."""
    found = re.findall(r"--reindex-timeout (\d+)", _runs(job))
    assert found, "an up/promote step without --reindex-timeout follows a re-index for the 3600 s default"
    assert all(int(seconds) <= job["timeout-minutes"] * 60 - 900 for seconds in found)


def test_main_updates_dev_after_tests() -> None:
    wf = _load("main.yml")
    assert wf["on"]["push"]["branches"] == ["main"]
    deploy = wf["jobs"]["deploy-dev"]
    assert deploy["needs"] == "test"
    assert deploy["environment"] == "dev"
    assert (
        _runs(deploy)
        .strip()
        .endswith("ragops up --stack dev --reindex-timeout 2400\n.venv/bin/ragops smoke --stack dev")
    )
    _assert_reindex_fits_the_job(deploy)


#: The promotion step of a target job: the source check's record stands in for the source stack.
PROMOTE = (
    '.venv/bin/ragops promote --from {source} --to "{stack}" --checked-source "$RUNNER_TEMP/source.json"'
)


def test_promote_goes_through_staging_then_prod_behind_environments() -> None:
    wf = _load("promote.yml")
    assert "workflow_dispatch" in wf["on"]
    jobs = wf["jobs"]
    targets, staging, prod = jobs["targets"], jobs["staging"], jobs["prod"]
    # Each level fans out over the stacks the committed stack files name (test_promote_targets_* below), after
    # the source's check and the approvers' previews.
    assert staging["needs"] == ["targets", "source-dev", "preview-staging"]
    assert jobs["source-staging"]["needs"] == ["targets", "staging"]
    assert prod["needs"] == ["targets", "source-staging", "preview-prod"]
    assert staging["strategy"]["matrix"]["stack"] == "${{ fromJSON(needs.targets.outputs.from-dev) }}"
    assert prod["strategy"]["matrix"]["stack"] == "${{ fromJSON(needs.targets.outputs.from-staging) }}"
    assert staging["environment"] == prod["environment"] == "${{ matrix.stack }}"
    assert targets["outputs"] == {
        "from-dev": "${{ steps.targets.outputs.from-dev }}",
        "from-staging": "${{ steps.targets.outputs.from-staging }}",
    }
    for job, source in ((staging, "dev"), (prod, "staging")):
        assert (
            _runs(job)
            .strip()
            .endswith(
                PROMOTE.format(source=source, stack="${{ matrix.stack }}")
                + ' --previewed-target-version "$RUNNER_TEMP/previewed/target-version.json"'
                + " --reindex-timeout 2400\n"
                + '.venv/bin/ragops smoke --stack "${{ matrix.stack }}"'
            )
        )
    _assert_reindex_fits_the_job(staging)
    _assert_reindex_fits_the_job(prod)


def _promote_commands(job: dict[str, Any]) -> list[list[str]]:
    """The `ragops promote` invocations of a job's steps, split like a shell would (quotes dropped)."""
    import shlex

    found = []
    for step in job["steps"]:
        for line in step.get("run", "").replace("\\\n", " ").splitlines():
            words = shlex.split(line.replace("${{ matrix.stack }}", "TARGET"))
            if words[:2] == [".venv/bin/ragops", "promote"]:
                found.append(words[2:])
    return found


def _option(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words else None


def test_no_promotion_job_reads_a_stack_of_another_environment() -> None:
    """REVIEW10 F2: the staging job previewed dev and read its outputs with staging's credentials, so with one set
    of credentials per environment every promotion stopped at "Could not check 'dev' for pending changes". Each
    job now acts on the stack of its own environment only (`<stack>` or its read-only `<stack>-drift`): the
    source check on the source, the preview and the promotion on the target, with the check's record."""
    jobs = _load("promote.yml")["jobs"]
    seen = set()
    for name, job in jobs.items():
        commands = _promote_commands(job)
        if not commands:
            continue
        environment = job["environment"].replace("${{ matrix.stack }}", "TARGET")
        own = environment.removesuffix("-drift")
        for words in commands:
            if "--check-source-only" in words:
                assert _option(words, "--from") == own, name
                assert "--to" not in words, name
                assert environment == f"{own}-drift", name  # read access, no reviewers to wait for
                seen.add(("check", own))
            else:
                assert _option(words, "--to") == own == "TARGET", name
                assert _option(words, "--checked-source") == "$RUNNER_TEMP/source.json", name
                seen.add(("preview" if "--preview-only" in words else "promote", _option(words, "--from")))
    assert seen == {
        ("check", "dev"),
        ("check", "staging"),
        ("preview", "dev"),
        ("preview", "staging"),
        ("promote", "dev"),
        ("promote", "staging"),
    }


def test_target_jobs_log_in_to_the_committed_sources_registry_before_promoting() -> None:
    """REVIEW_INFRA20 R1: the committed staging is on GKE, so prod's preview and promotion jobs read staging's
    Artifact Registry (skopeo, logged in by gcloud) on the prod runner: they must authenticate GCP from their own
    environment's variables (`prod` / `prod-drift`, docs/delivery.md) and install gcloud, before ragops runs; and
    the same for AWS, should the source be on eks."""
    committed = {
        stack: yaml.safe_load((REPO_ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]["rag:cluster"][
            "provider"
        ]
        for stack in ("dev", "staging")
    }
    assert committed["staging"] == "gke"  # the case R1 is about; the check below covers any provider
    login_action = {"gke": "google-github-actions/auth@", "eks": "aws-actions/configure-aws-credentials@"}
    gate = {"gke": "vars.GCP_WORKLOAD_IDENTITY_PROVIDER != ''", "eks": "vars.AWS_ROLE_ARN != ''"}
    jobs = _load("promote.yml")["jobs"]
    for name, source in (
        ("preview-staging", "dev"),
        ("staging", "dev"),
        ("preview-prod", "staging"),
        ("prod", "staging"),
    ):
        steps = jobs[name]["steps"]
        [promote_at] = [i for i, s in enumerate(steps) if ".venv/bin/ragops promote" in s.get("run", "")]
        for provider in ("gke", "eks"):
            [login_at] = [
                i for i, s in enumerate(steps) if str(s.get("uses", "")).startswith(login_action[provider])
            ]
            assert login_at < promote_at, name
            # Gated on the environment's own variables only: set them in `prod`/`prod-drift` and the login runs.
            assert steps[login_at].get("if") == gate[provider], name
        gcloud = [
            i
            for i, s in enumerate(steps)
            if str(s.get("uses", "")).startswith("google-github-actions/setup-gcloud@")
        ]
        assert gcloud, name
        assert gcloud[0] < promote_at, name
        if committed[source] == "gke":
            assert steps[gcloud[0]].get("if") == gate["gke"], name
    delivery = (REPO_ROOT / "docs" / "delivery.md").read_text()
    section = delivery[delivery.index("#### What a promotion job needs from its source") :]
    section = section[: section.index("\n#")]
    for needle in (
        "`prod` and `prod-drift` need a GCP identity",
        "`roles/artifactregistry.reader` on staging's",
    ):
        assert needle in " ".join(section.split()), needle


def test_approvers_read_the_targets_preview_before_the_approval() -> None:
    """REVIEW10 F4: the environment's approval gates the promotion job, whose `up` shows nothing beforehand. A job
    per target without reviewers (`<stack>-drift`) writes the target's preview with the promoted config to its
    summary first, and the promotion job needs it; both take the same source check."""
    jobs = _load("promote.yml")["jobs"]
    for level, preview_name, source_job in (
        ("staging", "preview-staging", "source-dev"),
        ("prod", "preview-prod", "source-staging"),
    ):
        promotion, preview = jobs[level], jobs[preview_name]
        assert preview_name in promotion["needs"]
        assert preview["needs"] == ["targets", source_job]
        assert source_job in promotion["needs"]
        assert preview["strategy"]["matrix"] == promotion["strategy"]["matrix"]
        assert preview.get("if") == promotion.get("if")
        assert preview["environment"] == "${{ matrix.stack }}-drift"
        assert preview["runs-on"] == promotion["runs-on"]  # prod's private endpoint: the prod runner
        [words] = _promote_commands(preview)
        assert "--preview-only" in words
        assert _option(words, "--comment-file") == "$GITHUB_STEP_SUMMARY"
        for job in (preview, promotion):
            [record] = [s for s in job["steps"] if "SOURCE_RECORD" in s.get("env", {})]
            assert record["env"]["SOURCE_RECORD"] == "${{ needs." + source_job + ".outputs.record }}"
        # REVIEW_INFRA20 R2: the target's update version the preview saw reaches the approved job, per target (an
        # artifact named after it: a matrix job's outputs keep one leg's only), and the promotion refuses a change.
        previewed = "$RUNNER_TEMP/previewed/target-version.json"
        assert _option(words, "--record-target-version") == previewed
        [upload] = [
            s for s in preview["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact@")
        ]
        assert upload["with"]["name"] == "previewed-${{ matrix.stack }}"
        assert upload["with"]["path"] == "${{ runner.temp }}/previewed/target-version.json"
        assert upload["with"]["if-no-files-found"] == "error"
        assert upload["with"]["overwrite"] is True  # a re-run preview replaces it (artifact names are unique)
        assert int(upload["with"]["retention-days"]) >= 30  # an approval may come 30 days later
        steps = promotion["steps"]
        [download] = [
            i for i, s in enumerate(steps) if str(s.get("uses", "")).startswith("actions/download-artifact@")
        ]
        assert steps[download]["with"] == {
            "name": "previewed-${{ matrix.stack }}",
            "path": "${{ runner.temp }}/previewed",
        }
        [promote_at] = [i for i, s in enumerate(steps) if ".venv/bin/ragops promote" in s.get("run", "")]
        assert download < promote_at
        [promoting] = _promote_commands(promotion)
        assert _option(promoting, "--previewed-target-version") == previewed


def test_the_source_record_reaches_the_target_jobs_intact(tmp_path: Path) -> None:
    """The source job's step writes the record as its output, the target jobs' step writes it back to the file
    `--checked-source` reads: run both scripts as the runner would, with a record like the real one."""
    from infra.workflows.promote import SourceCheck

    record = SourceCheck(
        stack="dev",
        digest="ghcr.io/acme/rag@sha256:" + "ab" * 32,
        embedding={"model": "m", "imageModels": ["m"]},
        service={"settings": {"chunkSize": 300, "note": 'it\'s "quoted" $HOME `x`'}},
        commit="0" * 40,
        at="2026-03-01T12:00:00Z",
        by="octocat",
        preview={"same": 12},
    )
    jobs = _load("promote.yml")["jobs"]
    for source_job in ("source-dev", "source-staging"):
        job = jobs[source_job]
        [step] = [s for s in job["steps"] if s.get("id") == "check"]
        assert job["outputs"] == {"record": "${{ steps.check.outputs.record }}"}
        shim = tmp_path / source_job / "ragops"
        shim.parent.mkdir(parents=True)
        (tmp_path / source_job / "record.json").write_text(record.to_json() + "\n")
        shim.write_text(
            '#!/bin/sh\nwhile [ "$1" != --record-file ]; do shift; done\n'
            f'cp {tmp_path / source_job / "record.json"} "$2"\n'
        )
        shim.chmod(0o755)
        output = tmp_path / source_job / "github_output"
        output.write_text("")
        env = {
            "PATH": "/usr/bin:/bin",
            "RUNNER_TEMP": str(tmp_path / source_job),
            "GITHUB_OUTPUT": str(output),
        }
        script = step["run"].replace(".venv/bin/ragops", str(shim))
        subprocess.run(["bash", "-e", "-c", script], env=env, check=True, timeout=30)
        [line] = output.read_text().splitlines()
        key, value = line.split("=", 1)
        assert key == "record"
        consumers = [j for j in jobs.values() if source_job in str(j.get("needs"))]
        assert len(consumers) == 2  # the preview and the promotion
        for consumer in consumers:
            [write] = [s for s in consumer["steps"] if "SOURCE_RECORD" in s.get("env", {})]
            target_temp = tmp_path / source_job / "target"
            target_temp.mkdir(exist_ok=True)
            subprocess.run(
                ["bash", "-e", "-c", write["run"]],
                env={"PATH": "/usr/bin:/bin", "RUNNER_TEMP": str(target_temp), "SOURCE_RECORD": value},
                check=True,
                timeout=30,
            )
            assert SourceCheck.from_json((target_temp / "source.json").read_text(), "source.json") == record


def _job_runs(condition: str | None, inputs: dict[str, str], outputs: dict[str, str]) -> bool:
    """Evaluate a job-level `if` made of `a == 'b'` / `a != 'b'` clauses joined by `&&` (what promote.yml uses)."""
    if condition is None:
        return True
    values = {
        **{f"inputs.{k}": v for k, v in inputs.items()},
        **{f"needs.targets.outputs.{k}": v for k, v in outputs.items()},
    }
    for clause in condition.split("&&"):
        match = re.fullmatch(r"\s*([\w.-]+) (==|!=) '([^']*)'\s*", clause)
        assert match, condition
        if (values[match[1]] == match[3]) != (match[2] == "=="):
            return False
    return True


def _promotion_jobs(checkout: Path, tmp_path: Path, to: str = "prod") -> dict[str, list[tuple[str, str]]]:
    """Run promote.yml's `targets` step (its shell script, with the real ragops on `checkout`, for the input
    `to`) and expand the two matrices from the outputs it wrote, as GitHub does: {job: [(environment, promote
    command)]}, [] for a job its `if` skips (GitHub evaluates it before the matrix, which must not be empty)."""
    wf = _load("promote.yml")
    (step,) = [s for s in wf["jobs"]["targets"]["steps"] if s.get("id") == "targets"]
    shim = checkout / ".venv" / "bin" / "ragops"
    shim.parent.mkdir(parents=True, exist_ok=True)
    shim.write_text(f'#!/bin/sh\nexec {RAGOPS} --work-dir {checkout} "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    tmp_path.mkdir(parents=True, exist_ok=True)
    output = tmp_path / "github_output"
    output.write_text("")
    step_env = {k: v.replace("${{ inputs.to }}", to) for k, v in step.get("env", {}).items()}
    env = {**os.environ, **step_env, "GITHUB_OUTPUT": str(output)}
    subprocess.run(["bash", "-e", "-c", step["run"]], cwd=checkout, env=env, check=True, timeout=120)
    step_outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    expanded: dict[str, list[tuple[str, str]]] = {}
    for job_name in ("staging", "prod"):
        job = wf["jobs"][job_name]
        if not _job_runs(job.get("if"), {"to": to}, step_outputs):
            expanded[job_name] = []
            continue
        key = re.fullmatch(
            r"\$\{\{ fromJSON\(needs\.targets\.outputs\.(.+)\) \}\}", job["strategy"]["matrix"]["stack"]
        )
        assert key is not None
        stacks = json.loads(step_outputs[key[1]])
        (promote,) = [s["run"] for s in job["steps"] if "ragops promote" in s.get("run", "")]
        promote = promote.replace(' "$RUNNER_TEMP/source.json"\n', ' "$RUNNER_TEMP/source.json" ').strip()
        expanded[job_name] = [
            (
                job["environment"].replace("${{ matrix.stack }}", stack),
                promote.replace("${{ matrix.stack }}", stack),
            )
            for stack in stacks
        ]
    return expanded


def _checkout(tmp_path: Path, **stack_files: str) -> Path:
    """A git checkout of the repository's stack files plus `stack_files` ({name: rag:environment}), committed."""
    checkout = tmp_path / "checkout"
    checkout.mkdir(parents=True)
    # Only the shipped stack files: a team's own Pulumi.qa.yaml in the repository must not change these answers.
    for name in ("Pulumi.yaml", *(f"Pulumi.{stack}.yaml" for stack in PERMANENT_STACKS)):
        shutil.copy(WORKFLOWS.parents[1] / name, checkout / name)
    for name, environment in stack_files.items():
        (checkout / f"Pulumi.{name}.yaml").write_text(f"config:\n  rag:environment: {environment}\n")
    for args in (
        ["init", "-q"],
        ["add", "-A"],
        ["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "stacks"],
    ):
        subprocess.run(["git", "-C", str(checkout), *args], check=True, capture_output=True)
    return checkout


PREVIEWED = ' --previewed-target-version "$RUNNER_TEMP/previewed/target-version.json" --reindex-timeout 2400'


def test_promote_targets_follow_the_committed_stack_files(tmp_path: Path) -> None:
    """A fourth stack gets its promotion job from its committed stack file alone (it was a manual edit of this
    workflow): qa of environment staging receives from dev next to staging; prod still receives from staging."""
    shipped = _promotion_jobs(_checkout(tmp_path / "shipped"), tmp_path / "shipped")
    assert shipped == {
        "staging": [("staging", PROMOTE.format(source="dev", stack="staging") + PREVIEWED)],
        "prod": [("prod", PROMOTE.format(source="staging", stack="prod") + PREVIEWED)],
    }
    qa = _promotion_jobs(_checkout(tmp_path / "qa", qa="staging"), tmp_path / "qa")
    assert [environment for environment, _ in qa["staging"]] == ["staging", "qa"]
    assert qa["staging"][1][1] == PROMOTE.format(source="dev", stack="qa") + PREVIEWED
    assert [environment for environment, _ in qa["prod"]] == ["prod"]
    # A second prod-environment stack receives from staging.
    second = _promotion_jobs(_checkout(tmp_path / "eu", **{"prod-eu": "prod"}), tmp_path / "eu")
    assert [environment for environment, _ in second["prod"]] == ["prod", "prod-eu"]


def test_a_checkout_without_a_prod_environment_stack_promotes_to_staging(tmp_path: Path) -> None:
    """No stack of environment prod in the checkout (its Pulumi.prod.yaml says staging): a promotion to staging
    still runs (prod's matrix is empty and its job skipped, as GitHub requires); one asked to reach prod fails at
    the targets step (no silent skip)."""
    checkout = _checkout(tmp_path, prod="staging")
    jobs = _promotion_jobs(checkout, tmp_path / "to-staging", to="staging")
    assert [environment for environment, _ in jobs["staging"]] == ["staging", "prod"]
    assert jobs["prod"] == []
    with pytest.raises(subprocess.CalledProcessError):
        _promotion_jobs(checkout, tmp_path / "to-prod", to="prod")


def test_the_targets_step_fails_when_staging_has_no_target(tmp_path: Path) -> None:
    """No stack of environment staging: neither promotion can run, and the step says so instead of skipping."""
    checkout = _checkout(tmp_path)
    (checkout / "Pulumi.staging.yaml").write_text("config:\n  rag:environment: prod\n")
    for to in ("staging", "prod"):
        with pytest.raises(subprocess.CalledProcessError):
            _promotion_jobs(checkout, tmp_path / to, to=to)


def test_promote_targets_ignore_a_stack_file_that_is_not_committed(tmp_path: Path) -> None:
    checkout = _checkout(tmp_path)
    (checkout / "Pulumi.mine.yaml").write_text("config:\n  rag:environment: staging\n")
    jobs = _promotion_jobs(checkout, tmp_path)
    assert [environment for environment, _ in jobs["staging"]] == ["staging"]


#: What a job that touches prod runs on: the labels in vars.PROD_RUNNER, else a self-hosted prod runner.
PROD_RUNNER = 'vars.PROD_RUNNER || \'["self-hosted", "rag-prod"]\''


def _runner_default(expression: str) -> list[str]:
    """The labels a `fromJSON(vars.X || '<json>')` runner expression falls back to when the variable is unset."""
    import json

    match = re.search(r"\|\|\s*'(\[[^']*\])'", expression)
    assert match, expression
    return json.loads(match[1])


def test_jobs_that_reach_prod_run_where_the_private_endpoint_is_reachable() -> None:
    # GitHub-hosted runners have no fixed addresses, and prod's endpoint is private by default: every job that
    # talks to prod's cluster runs on the configurable prod runner, self-hosted by default.
    prod = _load("promote.yml")["jobs"]["prod"]
    assert prod["runs-on"] == "${{ fromJSON(" + PROD_RUNNER + ") }}"
    assert _runner_default(prod["runs-on"]) == ["self-hosted", "rag-prod"]
    # Staging's endpoint is public: dev-level targets run hosted unless vars.STACK_RUNNERS names their runner.
    for job in ("staging", "preview-staging"):
        assert _load("promote.yml")["jobs"][job]["runs-on"] == STACK_RUNNER
    drift = _load("nightly.yml")["jobs"]["drift"]
    assert drift["runs-on"] == "${{ fromJSON(matrix.runner) }}"
    runners = {entry["stack"]: entry["runner"] for entry in drift["strategy"]["matrix"]["include"]}
    assert runners["prod"] == "${{ " + PROD_RUNNER + " }}"
    assert _runner_default(runners["prod"]) == ["self-hosted", "rag-prod"]
    assert runners["dev"] == runners["staging"] == '["ubuntu-24.04"]'


STACK_RUNNER = "${{ fromJSON(vars.STACK_RUNNERS || '{}')[matrix.stack] || 'ubuntu-24.04' }}"


def test_nightly_checks_drift_on_every_stack_and_reaps() -> None:
    wf = _load("nightly.yml")
    assert wf["on"]["schedule"][0]["cron"]
    drift = wf["jobs"]["drift"]
    # Every permanent stack of the checkout (each committed non-ephemeral Pulumi.<stack>.yaml) is checked: a new
    # one must be added to the matrix (docs/delivery.md#adding-a-permanent-stack).
    # (a matrix entry with a runner each, one that reaches a private endpoint: infra/workflows/wiring.py).
    assert workflow_problems(REPO_ROOT) == []
    assert set(PERMANENT_STACKS) <= set(drift["strategy"]["matrix"]["stack"])
    assert drift["strategy"]["fail-fast"] is False
    assert 'ragops drift --stack "${{ matrix.stack }}"' in _runs(drift)
    assert "ragops ephemeral reap" in _runs(wf["jobs"]["reap"])


@pytest.mark.parametrize("name", sorted(EXPECTED - {"e2e.yml"}))  # e2e uses a throw-away local backend
def test_backend_settings_come_from_secrets(name: str) -> None:
    env = _load(name)["env"]
    assert env["PULUMI_BACKEND_URL"] == "${{ secrets.PULUMI_BACKEND_URL }}"
    assert env["PULUMI_CONFIG_PASSPHRASE"] == "${{ secrets.PULUMI_CONFIG_PASSPHRASE }}"


def test_e2e_runs_the_make_target_users_run_on_kind() -> None:
    job = _load("e2e.yml")["jobs"]["kind"]
    assert "make e2e" in _runs(job)
    uses = [step.get("uses", "") for step in job["steps"]]
    assert any(u.startswith("helm/kind-action@") for u in uses)
    assert any(u.startswith("pulumi/actions@") for u in uses)
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^e2e: .*\n\tbash \.ci/e2e$", makefile, re.M)
    script = (REPO_ROOT / ".ci" / "e2e").read_text()
    # A local backend, the dev stack, and a teardown that runs whatever happens.
    for needle in (
        'PULUMI_BACKEND_URL="file://',
        "pulumi up --stack dev",
        "pulumi destroy --stack dev",
        "trap cleanup EXIT",
    ):
        assert needle in script, needle
    subprocess.run(["bash", "-n", str(REPO_ROOT / ".ci" / "e2e")], check=True, timeout=30)


def test_every_job_with_gcp_credentials_installs_the_gke_auth_plugin_the_kubeconfig_executes() -> None:
    """The GKE kubeconfig the stack builds runs `gke-gcloud-auth-plugin` (infra/clusters/gke.py): a job that talks
    to a GKE stack without it fails at the first Kubernetes object ("executable ... not found")."""
    from infra.clusters import gke

    plugin = "gke-gcloud-auth-plugin"
    assert f'"command": "{plugin}"' in Path(gke.__file__).read_text()
    jobs_with_gcp = 0
    for path in FILES:
        for name, job in (_load(path.name).get("jobs") or {}).items():
            steps = job.get("steps") or []
            auth = [
                i
                for i, s in enumerate(steps)
                if str(s.get("uses", "")).startswith("google-github-actions/auth@")
            ]
            if not auth:
                continue
            jobs_with_gcp += 1
            installs = [
                i
                for i, s in enumerate(steps)
                if str(s.get("uses", "")).startswith("google-github-actions/setup-gcloud@")
                and plugin in str((s.get("with") or {}).get("install_components", "")).split(",")
            ]
            assert installs, f"{path.name} job {name}: GCP credentials but no {plugin}"
            assert installs[0] > auth[0], f"{path.name} job {name}: install {plugin} after authenticating"
            assert steps[installs[0]].get("if") == steps[auth[0]].get("if")
    assert jobs_with_gcp >= 6


def _cluster_steps() -> list[tuple[str, str, dict[str, Any], list[dict[str, Any]]]]:
    """(workflow, job, the step writing $KUBECONFIG, the job's steps) for every job that reaches an existing
    cluster."""
    found = []
    for path in FILES:
        for name, job in _load(path.name)["jobs"].items():
            for step in job.get("steps", []):
                if "KUBECONFIG_DATA" in str(step.get("env", {})):
                    found.append((path.name, name, step, job["steps"]))
    return found


def test_every_job_reaching_an_existing_cluster_sets_its_context_and_registry_first() -> None:
    """The committed dev stack names a laptop's kind context and localhost registry: every CI job that runs ragops
    against an existing cluster exports RAGOPS_KUBE_CONTEXT / RAGOPS_REGISTRY from the environment's variables
    before its first ragops step (infra/clusters/existing.py)."""
    steps = _cluster_steps()
    assert {(wf, job) for wf, job, _, _ in steps} >= {
        ("pr.yml", "preview"),
        ("pr.yml", "ephemeral"),
        ("main.yml", "deploy-dev"),
        ("pr-close.yml", "destroy"),
    }
    for wf, job, step, all_steps in steps:
        assert step["env"]["KUBE_CONTEXT"] == "${{ vars.KUBE_CONTEXT }}", (wf, job)
        assert step["env"]["REGISTRY"] == "${{ vars.REGISTRY }}", (wf, job)
        assert step["env"]["REGISTRY_PASSWORD"] == "${{ secrets.REGISTRY_PASSWORD }}", (wf, job)
        first_ragops = next(i for i, s in enumerate(all_steps) if "ragops " in s.get("run", ""))
        assert all_steps.index(step) < first_ragops, (wf, job)


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        # A one-context kubeconfig and a registry: the kubeconfig's current context, that registry.
        (
            {"KUBECONFIG_DATA": "apiVersion: v1", "KUBE_CONTEXT": "", "REGISTRY": "ghcr.io/acme/rag"},
            {"RAGOPS_KUBE_CONTEXT": "", "RAGOPS_REGISTRY": "ghcr.io/acme/rag"},
        ),
        (
            {"KUBECONFIG_DATA": "apiVersion: v1", "KUBE_CONTEXT": "dev", "REGISTRY": ""},
            {"RAGOPS_KUBE_CONTEXT": "dev"},
        ),
        # No cluster configured (a GKE/EKS environment): nothing is overridden.
        ({"KUBECONFIG_DATA": "", "KUBE_CONTEXT": "", "REGISTRY": ""}, {}),
    ],
)
def test_the_cluster_step_exports_what_its_variables_say(
    variables: dict[str, str], expected: dict[str, str], tmp_path: Path
) -> None:
    step = next(s for wf, job, s, _ in _cluster_steps() if (wf, job) == ("main.yml", "deploy-dev"))
    env_file = tmp_path / "github_env"
    env_file.write_text("")
    result = subprocess.run(
        ["bash", "-e", "-c", step["run"]],
        env={
            "PATH": "/usr/bin:/bin",
            "GITHUB_ENV": str(env_file),
            "RUNNER_TEMP": str(tmp_path),
            "REGISTRY_USERNAME": "",  # no login: the test runs no docker
            "REGISTRY_PASSWORD": "",
            **variables,
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    exported = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    kubeconfig = exported.pop("KUBECONFIG", None)
    assert exported == expected
    if variables["KUBECONFIG_DATA"]:
        assert kubeconfig == str(tmp_path / "kubeconfig")
        assert (tmp_path / "kubeconfig").read_text() == variables["KUBECONFIG_DATA"]


def _minutes(duration: str) -> int:
    """A Pulumi customTimeouts duration ("30m", "1h", "90s") in whole minutes, rounded up."""
    seconds = sum(
        int(n) * {"h": 3600, "m": 60, "s": 1}[unit] for n, unit in re.findall(r"(\d+)([hms])", duration)
    )
    return -(-seconds // 60)


def _longest_wait_minutes() -> int:
    """The longest single wait a `pulumi up` of any permanent stack can make on one resource: the customTimeouts the
    program sets, each StatefulSet/Deployment's `pulumi.com/timeoutSeconds` and each Helm release's `timeout`."""
    from infra.components import gateway, postgres
    from tests.infra.conftest import run

    waits = [
        _minutes(postgres.CLUSTER_TIMEOUTS.create),
        _minutes(postgres.CLUSTER_TIMEOUTS.update),
        _minutes(gateway.GATEWAY_ADDRESS_TIMEOUT),
    ]
    for stack in ("dev", "staging", "prod"):
        for resource in run(stack).resources:
            annotations = (resource.inputs.get("metadata") or {}).get("annotations") or {}
            if "pulumi.com/timeoutSeconds" in annotations:
                waits.append(-(-int(annotations["pulumi.com/timeoutSeconds"]) // 60))
            if resource.type == "kubernetes:helm.sh/v3:Release" and resource.inputs.get("timeout"):
                waits.append(-(-int(resource.inputs["timeout"]) // 60))
    return max(waits)


@pytest.mark.parametrize(
    ("workflow", "job"),
    [
        ("main.yml", "deploy-dev"),
        ("promote.yml", "staging"),
        ("promote.yml", "prod"),
        ("pr.yml", "ephemeral"),
    ],
)
def test_a_deploy_job_outlasts_the_longest_wait_of_its_update(workflow: str, job: str) -> None:
    """A job killed mid-update leaves the backend's lock, pending operations and Helm releases `pending-upgrade`
    (docs/runbooks.md). The CloudNativePG Cluster's update waits up to 60 minutes (`CLUSTER_TIMEOUTS`, REVIEW9 R11):
    a 60-minute job was killed exactly when that wait ended, before pulumi could record the failure. The job must
    outlast the longest wait, then the re-index it follows, with 15 minutes for the rest (install, build, smoke)."""
    definition = _load(workflow)["jobs"][job]
    reindex = max((int(s) for s in re.findall(r"--reindex-timeout (\d+)", _runs(definition))), default=0)
    needed = _longest_wait_minutes() + -(-reindex // 60) + 15
    assert _longest_wait_minutes() >= 60  # the Cluster's update wait is counted
    assert definition["timeout-minutes"] >= needed, (workflow, job, needed)
    # A lock such a job left counts as stale only once no such job can still hold it (+5: GitHub's cancel timeout).
    from infra.workflows.ephemeral import STALE_LOCK_AFTER

    assert STALE_LOCK_AFTER.total_seconds() >= (definition["timeout-minutes"] + 5) * 60


def test_every_aws_session_outlasts_its_job() -> None:
    """configure-aws-credentials asks for a 1-hour session unless told otherwise (its `role-duration-seconds`
    default): a 120-minute deploy job lost its AWS credentials half way, and with them the provider, the EKS
    token (`aws eks get-token`) and the S3 state backend, mid-update."""
    seen = 0
    for path in FILES:
        for name, job in _load(path.name)["jobs"].items():
            for step in job.get("steps", []):
                if "aws-actions/configure-aws-credentials" not in str(step.get("uses", "")):
                    continue
                seen += 1
                duration = int((step.get("with") or {}).get("role-duration-seconds", 3600))
                assert duration >= job["timeout-minutes"] * 60, (path.name, name, duration)
    assert seen >= 5
