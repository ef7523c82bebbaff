"""`make plan`'s config errors name the key and where its value came from (E9 of EYES4).

(a) a stack file that is not YAML is named, with the line; (b) an error raised inside an Output (the EKS zones)
is one `config error:` line naming key and file, not the SDK's chain of "While processing input" wrappers and
asyncio's abandoned tasks; (c) a value given with `--set` is blamed on `--set`, not on the stack file.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra import offline, render
from infra.config import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_a_stack_file_that_is_not_yaml_is_named_with_the_line(tmp_path: Path) -> None:
    shutil.copy(REPO_ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    (tmp_path / "Pulumi.mine.yaml").write_text("config:\n  rag:environment: dev\n\trag:namespace: x\n")
    with pytest.raises(ValueError, match="not valid YAML") as raised:
        offline.cli_config("mine", project_dir=tmp_path)
    assert str(raised.value) == (
        "Pulumi.mine.yaml is not valid YAML: found character '\\t' that cannot start any token (line 3, column 1)"
    )
    (tmp_path / "Pulumi.mine.yaml").write_text("- a list\n")
    with pytest.raises(ValueError, match=r"^Pulumi\.mine\.yaml must be a mapping"):
        offline.cli_config("mine", project_dir=tmp_path)


def test_an_error_inside_an_output_is_one_config_error_line() -> None:
    command = [
        sys.executable, "-m", "infra.render", "--stack", "prod", "--out", "/dev/null/unused",
        "--set", 'cluster={"eks":{"availabilityZones":4}}',
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "config error: rag:cluster.eks.availabilityZones in --set: 4 zones asked, but eu-west-1 offers 3 "
        "Availability Zones to this account (eu-west-1a, eu-west-1b, eu-west-1c): lower it"
    ]
    # The same value in the stack itself (what run_stack's overrides stand for) is the stack file's.
    with pytest.raises(ConfigError) as raised:
        offline.run_stack("prod", config_overrides={"cluster": {"eks": {"availabilityZones": 4}}})
    assert (raised.value.key, raised.value.stack_file) == (
        "rag:cluster.eks.availabilityZones",
        "Pulumi.prod.yaml",
    )


def test_a_value_from_the_command_line_is_blamed_on_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--stack", "dev", "--out", str(tmp_path), "--set", 'embedding={"model":"foo/bar"}']
    assert render.main(args) == 2
    assert capsys.readouterr().err.startswith(
        "config error: rag:embedding.model in --set: 'foo/bar' is not a model"
    )
    assert render.main(["--stack", "dev", "--out", str(tmp_path), "--set", "rag:nosuchkey=1"]) == 2
    assert capsys.readouterr().err.startswith("config error: rag:nosuchkey in --set: unknown key")


@pytest.mark.parametrize(
    ("key", "overrides", "expected"),
    [
        ("rag:embedding.model", {"embedding": {"model": "x/y"}}, True),
        ("rag:embedding.model", {"rag:embedding": {"model": "x/y"}}, True),
        ("rag:image", {"image": ""}, True),
        ("rag:llm.egressExcept", {"llm": {"baseUrl": "http://10.0.0.1"}}, False),
        ("rag:embedding.extraModels", {"embedding": {"model": "x/y"}}, False),
        ("rag:qdrant.replicas", {}, False),
        ("rag:qdrant.replicas", None, False),
    ],
)
def test_which_keys_came_from_the_command_line(key: str, overrides: dict | None, expected: bool) -> None:
    assert offline.overridden(key, overrides) is expected


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--stack", "nope"],
            "error: no stack file Pulumi.nope.yaml in {root}: create it first (a copy of the nearest stack's file; "
            'docs/delivery.md, "Adding a permanent stack")',
        ),
        (
            ["--stack", "dev", "--set", 'qdrant.replicas="x"'],
            'config error: rag:qdrant.replicas in --set: expected an integer, got a string ("x")',
        ),
        (
            ["--stack", "dev", "--set", "qdrant.replicas"],
            "error: --set expects KEY=VALUE, got 'qdrant.replicas'",
        ),
        (
            ["--stack", "prod"],
            "error: stack prod runs on eks (rag:cluster.provider): `make rbac` generates the RBAC of a deploy on an "
            "existing cluster only; a gke/eks stack's deploy identity is its cloud's (docs/delivery.md, \"Deploy "
            'identity"; docs/infra.md, "Kubernetes RBAC for a deploy")',
        ),
    ],
    ids=["missing-stack-file", "wrong-type-in-set", "malformed-set", "cloud-stack"],
)
def test_make_rbac_reports_errors_as_make_plan_does(args: list[str], expected: str) -> None:
    # EYES6 G9: `python -m infra.rbac` printed a 20-line traceback (and exited 1) where `make plan` prints one line.
    command = [sys.executable, "-m", "infra.rbac", *args]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [expected.format(root=REPO_ROOT)]
    assert result.stdout == ""


def test_a_file_value_wrong_only_next_to_a_set_value_names_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """prod's replicationFactor (2) is fine until `--set qdrant.replicas=1`: the line names the file AND the --set
    that made it wrong, not the file alone (EYES11 L5)."""
    args = ["--stack", "prod", "--out", str(tmp_path), "--set", "rag:qdrant.replicas=1"]
    assert render.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "config error: rag:qdrant.replicationFactor in Pulumi.prod.yaml with --set rag:qdrant.replicas=1: "
    ), err
