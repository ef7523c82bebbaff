"""The EKS/GKE version reads tell "the provider is not configured yet" from "no cluster" (W3 of REVIEW6).

The version checks read what the cloud runs with blocking invokes through the stack's own aws/gcp provider before
anything is registered (infra/clusters/eks.py running_version, gke.py running_master_version). The engine answers
every invoke through a provider it could not configure (an input of it unknown: in a preview, an Output of a
resource still to be created) with an empty result and no error (pulumi provider_plugin.go `Invoke`), which read
as "no cluster" and let any version step pass. The offline monitor answers so too (infra/offline.py
_RecordingMonitor.Invoke). The program runs here as the language host runs it (tests/infra/exec_program.py), in a
preview and in an update, against an account whose EKS cluster runs 1.33 and whose GKE cluster runs 1.33.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi.output import UNKNOWN

from infra.clusters.gke import CLUSTER_NAME_LIMIT
from infra.config import ConfigError
from infra.naming import cloud_name
from infra.offline import cli_config, run_stack

REPO_ROOT = Path(__file__).resolve().parents[2]
EXEC = Path(__file__).with_name("exec_program.py")
EKS_NAME = cloud_name("prod", limit=100)
GKE_NAME = cloud_name("prod", limit=CLUSTER_NAME_LIMIT)
LIVE = {
    "eks": {"name": EKS_NAME, "version": "1.33", "nodeGroups": {"eks-nodes-1a2b": "1.33"}},
    "gke": {"name": GKE_NAME, "masterVersion": "1.33.5-gke.100"},
}
PROGRAM = """\
import pulumi
import pulumi_aws as aws
import pulumi_gcp as gcp
from pulumi.output import UNKNOWN

from infra.clusters.eks import running_version
from infra.clusters.gke import running_master_version
from infra.config import load_config

config = load_config()
# A provider in KNOWN gets plain settings, as the program passes them today; else an input not known yet (in a
# preview: an output of a resource still to be created).
pending = pulumi.Output.from_input("europe-west1").apply(lambda _: UNKNOWN)
aws_provider = aws.Provider("aws", region="eu-west-1" if "aws" in KNOWN else pending)
gcp_provider = gcp.Provider("gcp", project=config.cluster.gke.project, region="europe-west1" if "gcp" in KNOWN else pending)
print("eks", running_version(EKS_NAME, aws_provider, "Pulumi.prod.yaml"))
print("gke", running_master_version(GKE_NAME, config.cluster.gke, gcp_provider, "Pulumi.prod.yaml"))
"""


def _run(tmp_path: Path, *, known: tuple[str, ...], preview: bool) -> subprocess.CompletedProcess[str]:
    program = tmp_path / "__main__.py"
    program.write_text(f"KNOWN = {known!r}\nEKS_NAME = {EKS_NAME!r}\nGKE_NAME = {GKE_NAME!r}\n" + PROGRAM)
    (tmp_path / "live.json").write_text(json.dumps(LIVE))
    values, secret_keys = cli_config("prod")
    env = {
        **os.environ,
        "PULUMI_CONFIG": json.dumps(values),
        "PULUMI_CONFIG_SECRET_KEYS": json.dumps(secret_keys),
    }
    command = [
        sys.executable, str(EXEC), "--stack", "prod", "--dry_run", "true" if preview else "false",
        "--live", str(tmp_path / "live.json"), str(program),
    ]  # fmt: skip
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_a_configured_provider_reads_what_runs(tmp_path: Path) -> None:
    """The control: with known settings the same reads answer what the account runs."""
    result = _run(tmp_path, known=("aws", "gcp"), preview=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["eks ('1.33', {'eks-nodes-1a2b': '1.33'})", "gke 1.33.5-gke.100"]
    assert result.stderr == ""


def test_a_preview_through_an_unconfigured_provider_warns_that_the_version_is_not_checked(
    tmp_path: Path,
) -> None:
    result = _run(tmp_path, known=(), preview=True)
    assert result.returncode == 0, result.stderr
    # Not checked (a preview cannot read it), as for no cluster, but said so: one warning per check, naming the key.
    assert result.stdout.splitlines() == ["eks (None, {})", "gke None"]
    warnings = result.stderr.splitlines()
    assert len(warnings) == 2, result.stderr
    eks, gke = warnings
    assert eks.startswith(
        "warning: rag:cluster.eks.version in Pulumi.prod.yaml: not checked in this preview: "
    )
    assert f"the version EKS cluster {EKS_NAME} runs cannot be read" in eks
    assert gke.startswith(
        "warning: rag:cluster.gke.minMasterVersion in Pulumi.prod.yaml: not checked in this preview"
    )
    assert "the gcp provider's configuration is not known yet" in gke


@pytest.mark.parametrize(
    ("known", "key", "read"),
    [
        (
            ("gcp",),
            "rag:cluster.eks.version",
            f"the aws provider answered the read of the version EKS cluster {EKS_NAME}",
        ),
        (
            ("aws",),
            "rag:cluster.gke.minMasterVersion",
            f"the gcp provider answered the read of the version GKE cluster {GKE_NAME}",
        ),
    ],
    ids=["eks", "gke"],
)
def test_an_update_through_an_unconfigured_provider_is_refused_not_read_as_no_cluster(
    tmp_path: Path, known: tuple[str, ...], key: str, read: str
) -> None:
    """An update configures a provider only once its inputs are known, so the empty answer is not expected there;
    should it come, the check refuses (one line, the key and the stack file) instead of passing as no cluster."""
    result = _run(tmp_path, known=known, preview=False)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {key} in Pulumi.prod.yaml: {read} runs with nothing"), line
    assert "refusing rather than taking it for no cluster" in line


def _pending_region(monkeypatch: pytest.MonkeyPatch, module: Any, region: str) -> None:
    """The program's `module.Provider` (aws, gcp) gets its region from an Output not known yet."""
    real = module.Provider

    def provider(name: str, *args: Any, **kwargs: Any) -> Any:
        kwargs["region"] = pulumi.Output.from_input(region).apply(lambda _: UNKNOWN)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(module, "Provider", provider)


def test_the_whole_eks_program_previews_through_an_unconfigured_provider(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every read through the provider answers nothing in such a preview: the version check warns, and the zone
    list (read the same way) is unknown instead of failing the preview with a TypeError on the missing list; the
    cluster is planned at the configured version, unchecked. An update is refused at the version read."""
    import pulumi_aws as aws

    _pending_region(monkeypatch, aws, "eu-west-1")
    with caplog.at_level(logging.WARNING):
        result = run_stack("prod", preview=True, live=LIVE)
    assert result.by_name("eks").inputs["version"] == "1.35"  # two minors above what runs: not checked
    warned = [r.getMessage() for r in caplog.records if "not checked in this preview" in r.getMessage()]
    assert len(warned) == 1, warned
    assert warned[0].startswith("rag:cluster.eks.version in Pulumi.prod.yaml"), warned

    with pytest.raises(
        ConfigError, match=r"^rag:cluster\.eks\.version in Pulumi\.prod\.yaml: the aws provider"
    ):
        run_stack("prod", live=LIVE)


def test_the_whole_gke_program_previews_through_an_unconfigured_provider(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import pulumi_gcp as gcp

    _pending_region(monkeypatch, gcp, "europe-west1")
    on_gke = {
        "cluster": {"provider": "gke"},
        "gateway": {"className": "gke-l7-global-external-managed"},
        "aws:allowedAccountIds": None,  # prod's account pin: refused off eks
    }
    with caplog.at_level(logging.WARNING):
        run_stack("prod", preview=True, live=LIVE, config_overrides=on_gke)
    warned = [r.getMessage() for r in caplog.records if "not checked in this preview" in r.getMessage()]
    assert len(warned) == 1, warned
    assert warned[0].startswith("rag:cluster.gke.minMasterVersion in Pulumi.prod.yaml"), warned
