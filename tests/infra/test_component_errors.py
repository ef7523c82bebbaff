"""A component's refusal of a value that came from config names the config key and the stack file, in one line.

The components validate their args (`ComponentArgsError`, a ValueError whose message starts with the args field:
`TlsGatewayArgs.gateway_class_name ...`), and know nothing of config keys. Raised at the top of the program, a
ValueError reached a bare `pulumi up` as the language host's "Program failed with an unhandled exception" and a
traceback. `infra.stack.build` maps the field back to the key it was built from (`ARG_KEYS`) and raises a
ConfigError (a RunError: the host prints its message alone). Here:

- every field a component refuses is either mapped to a declared key or listed below as one the program derives
  itself (a refusal of those is a bug and keeps its traceback), so a new `require` cannot slip past the mapping;
- each mapped field, refused, becomes a ConfigError naming its key and the stack file;
- the refusals a stack file can reach today (found by running every stack with hostile values of every key) do,
  through `run_stack` and through the language host's own way of running the program (tests/infra/exec_program.py);
- the names infra/naming.py derives from config values (the region in an S3 bucket name, the GCP project in a GCS
  bucket name, the restore name in an RDS identifier) fit at the longest values config accepts: its ValueErrors
  ("no name of at most N characters fits") are left to program bugs; a 40-character `cluster.eks.region` reached
  one, inside an Output, before config bounded the region.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from infra import deployability as d
from infra import stack
from infra.components.specs import ComponentArgsError
from infra.config import AWS_REGION_RE, GCP_PROJECT_RE, GCP_REGION_RE, ConfigError
from infra.offline import cli_config, run_stack

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = REPO_ROOT / "infra" / "components"
EXEC = Path(__file__).with_name("exec_program.py")

#: Fields the program sets itself, never from a config value (cluster outputs, generated secrets, its own names,
#: ports and images): a refusal of one is a bug of the program, not of a stack file.
PROGRAM_ARGS = {
    "QdrantClusterArgs.anti_affinity",
    "QdrantClusterArgs.client_selectors",
    "PostgresDatabaseArgs.password",
    "PostgresDatabaseArgs.client_selectors",
    "PostgresDatabaseArgs.vpc_id",
    "PostgresDatabaseArgs.subnet_ids",
    "PostgresDatabaseArgs.allowed_cidrs",
    "PostgresDatabaseArgs.private_network",
    "PostgresDatabaseArgs.region",  # the cluster target's (cluster.eks.region / cluster.gke.region, checked by config)
    "PostgresDatabaseArgs.final_snapshot_prefix",  # from the stack name (naming.cloud_name)
    "PostgresDatabaseArgs.backup_cloud",
    "PostgresDatabaseArgs.backup_prefix",
    "RedisCacheArgs.password",
    "RedisCacheArgs.client_selectors",
    "RedisCacheArgs.vpc_id",
    "RedisCacheArgs.subnet_ids",
    "RedisCacheArgs.allowed_cidrs",
    "RedisCacheArgs.region",
    "RedisCacheArgs.authorized_network",
    "ServiceImageArgs.copy_to",
    "ServiceImageArgs.repository",
    "ServiceImageArgs.git_sha",
    "ServiceImageArgs.platforms",
    "ServiceImageArgs.dockerfile",
    "RagServiceArgs.image",  # the ServiceImage's ref (a promoted `rag:image` is checked by ServiceImage first)
    "RagServiceArgs.port",
    "RagServiceArgs.run_as_user",
    "RagServiceArgs.api_keys",
    "RagServiceArgs.database_url",
    "RagServiceArgs.qdrant_url",
    "RagServiceArgs.service_monitor",
    "RagServiceArgs.autoscaling.memory_utilization",
    "TlsGatewayArgs.service_name",
    "TlsGatewayArgs.service_port",
    "TlsGatewayArgs.health_check_path",
    "MonitoringArgs.mode",
    "MonitoringArgs.grafana_admin_password",
    "MonitoringArgs.prometheus_resources",
    "MonitoringArgs.thresholds.restarts_per_30m",
    "MonitoringArgs.thresholds.embedding_failures_per_10m",
    "MonitoringArgs.thresholds.worker_poll_stale_seconds",
    "MonitoringArgs.thresholds.job_running_age_seconds",
    "MonitoringArgs.thresholds.jobs_reclaimed_per_30m",
    "MonitoringArgs.thresholds.unschedulable_pod_minutes",
    "QdrantBackupsArgs.cloud",
    "QdrantBackupsArgs.bucket_namespace",
    "QdrantBackupsArgs.bucket_location",
    "QdrantBackupsArgs.qdrant_peer_urls",
    "QdrantBackupsArgs.force_destroy",  # from `protect`, i.e. the environment, which config checks
    "QdrantBackupsArgs.image",
    "QdrantBackupsArgs.prefix",
    "QdrantBackupsArgs.resources",  # computed from qdrant.storage.size (backup_resources), which config checks
}
#: Messages whose field is built at run time: the fields each can name.
DYNAMIC = {
    "MonitoringArgs.thresholds.{}": {
        "MonitoringArgs.thresholds.queue_oldest_job_age_seconds",
        "MonitoringArgs.thresholds.worker_poll_stale_seconds",
        "MonitoringArgs.thresholds.job_running_age_seconds",
        "MonitoringArgs.thresholds.jobs_reclaimed_per_30m",
        "MonitoringArgs.thresholds.certificate_expiry_days",
        "MonitoringArgs.thresholds.unschedulable_pod_minutes",
    },
    "PostgresDatabaseArgs.{}": {"PostgresDatabaseArgs.archive_name", "PostgresDatabaseArgs.recovery_source"},
}
#: specs.check_in_cluster_store(what, args) refuses these fields of `what`.
IN_CLUSTER_STORE = ("namespace", "image", "storage_size", "resources", "client_selectors")
_FIELD = re.compile(r"^[A-Z][A-Za-z]*Args(\.(?:[a-z_0-9]+|\{\}))+")
#: Raises whose message is not about one args field (`what` is a parameter of the helper, or a resolved value).
NOT_A_FIELD = re.compile(r"^(\{\}|Image digest|ServiceImage:|[A-Za-z]+ name$|quantity$|<)")


def _text(node: ast.expr) -> str:
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return f"<{ast.unparse(node)}>"


def refused_fields() -> dict[str, list[str]]:
    """Every args field a component's validation refuses, with where (file:line)."""
    found: dict[str, list[str]] = {}
    for path in sorted(COMPONENTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            where = f"{path.name}:{node.lineno}"
            if name == "check_in_cluster_store" and node.args and isinstance(node.args[0], ast.Constant):
                for part in IN_CLUSTER_STORE:
                    found.setdefault(f"{node.args[0].value}.{part}", []).append(where)
                continue
            if name in ("require", "validate") or name.startswith("check_"):
                index = 1 if name != "validate" else 0
            elif name == "ComponentArgsError":
                index = 0
            else:
                continue
            if len(node.args) <= index:
                continue
            text = _text(node.args[index])
            match = _FIELD.match(text)
            if match is None:
                assert NOT_A_FIELD.match(text) or name == "validate", f"{where}: {text!r} names no args field"
                continue
            for field in DYNAMIC.get(match.group(0), {match.group(0)}):
                found.setdefault(field, []).append(where)
    return found


def test_every_field_a_component_refuses_is_mapped_to_its_key_or_set_by_the_program() -> None:
    found = refused_fields()
    assert len(found) > 90  # the walk reached the validations
    unknown = {
        field: where
        for field, where in found.items()
        if stack.config_key_of(field) is None and field not in PROGRAM_ARGS
    }
    assert unknown == {}, "map each to its config key in infra/stack.py ARG_KEYS, or list it in PROGRAM_ARGS"
    # Both lists are about fields that exist: no stale entries.
    assert set(stack.ARG_KEYS) - set(found) == set()
    assert PROGRAM_ARGS - set(found) == set()
    assert PROGRAM_ARGS & set(stack.ARG_KEYS) == set()


def test_every_mapped_key_is_declared() -> None:
    declared = set(d.declared_keys())
    for field, key in stack.ARG_KEYS.items():
        assert key in declared or any(k.startswith(f"{key}.") for k in declared), (field, key)


@pytest.mark.parametrize("field", sorted(stack.ARG_KEYS))
def test_each_refused_config_value_names_its_key_and_the_stack_file(field: str) -> None:
    refusal = ComponentArgsError(f"{field} 'bad' is refused for a reason.")
    with pytest.raises(ConfigError) as caught, stack.config_errors(SimpleNamespace(stack="prod")):  # type: ignore[arg-type]
        raise refusal
    assert caught.value.key == f"rag:{stack.ARG_KEYS[field]}"
    assert caught.value.stack_file == "Pulumi.prod.yaml"
    assert (
        str(caught.value)
        == f"rag:{stack.ARG_KEYS[field]} in Pulumi.prod.yaml: {field} 'bad' is refused for a reason"
    )
    assert caught.value.__cause__ is refusal
    # A nested field of a mapped one (a quantity of `resources`) is blamed on the same key.
    nested = ComponentArgsError(f"{field}.memory_limit '1x' is not a Kubernetes quantity.")
    with pytest.raises(ConfigError) as deeper, stack.config_errors(SimpleNamespace(stack="dev")):  # type: ignore[arg-type]
        raise nested
    assert deeper.value.key == f"rag:{stack.ARG_KEYS[field]}"


def test_a_refusal_of_what_the_program_sets_stays_a_bug() -> None:
    bug = ComponentArgsError("RagServiceArgs.port must be a TCP port between 1 and 65535.")
    with pytest.raises(ComponentArgsError), stack.config_errors(SimpleNamespace(stack="dev")):  # type: ignore[arg-type]
        raise bug
    assert ComponentArgsError("no field here").field is None


#: Values a stack file can hold that config.py accepts and a component refuses: each names its key. Found by
#: running dev, staging and prod (and staging with managed data stores) with hostile values of every declared key.
REACHABLE = [
    # Gateway API allows dots in a class name (an object name); the component wants a DNS label.
    ("dev", {"gateway": {"className": "gateway.example"}}, "rag:gateway.className"),
    ("prod", {"gateway": {"className": "x" * 80}}, "rag:gateway.className"),
]


@pytest.mark.parametrize(("stack_name", "overrides", "key"), REACHABLE, ids=lambda v: str(v)[:40])
def test_a_component_refusal_a_stack_file_reaches_names_the_key(
    stack_name: str, overrides: dict[str, object], key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        run_stack(stack_name, config_overrides=overrides)
    assert caught.value.key == key
    assert caught.value.stack_file == f"Pulumi.{stack_name}.yaml"
    assert isinstance(caught.value.__cause__, ComponentArgsError)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"cluster": {"eks": {"region": "x" * 40}}}, "rag:cluster.eks.region"),
        ({"cluster": {"eks": {"region": "eu-west-1a"}}}, "rag:cluster.eks.region"),
        ({"cluster": {"provider": "gke", "gke": {"project": "p"}}}, "rag:cluster.gke.project"),
        (
            {"cluster": {"provider": "gke", "gke": {"project": "rag-prod", "region": ""}}},
            "rag:cluster.gke.region",
        ),
    ],
    ids=["eks-region-long", "eks-zone-not-region", "gke-project-short", "gke-region-empty"],
)
def test_names_built_from_config_are_refused_at_the_key_before_naming_fails(
    overrides: dict[str, object], key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        run_stack("prod", config_overrides=overrides)
    assert caught.value.key == key
    assert caught.value.stack_file == "Pulumi.prod.yaml"


def test_the_longest_values_config_accepts_still_give_valid_names() -> None:
    """infra/naming.py raises ValueError when the fixed parts leave no room: at the bounds config sets (a
    100-character stack name, the longest region and project the patterns admit, a 16-character restore name)
    every name the program derives from config fits."""
    longest_stack = "S" * 50 + "_." * 25  # Pulumi stack names: up to 100 of [A-Za-z0-9_.-]
    region = "abcd-" + "x" * 12 + "-99"  # 20 characters
    assert AWS_REGION_RE.match(region)
    assert not AWS_REGION_RE.match(region + "x")
    project = "p" + "x" * 28 + "1"
    assert GCP_PROJECT_RE.match(project)
    assert not GCP_PROJECT_RE.match(project + "x")
    assert GCP_REGION_RE.match("northamerica-northeast2")
    for name in (
        stack.s3_bucket_name(longest_stack, "123456789012", region),
        stack.s3_bucket_name(longest_stack, "123456789012", "us-gov-west-1"),
        stack.gcs_bucket_name(longest_stack, project),
    ):
        assert 3 <= len(name) <= stack.BUCKET_NAME_LIMIT, name
    from infra.naming import cloud_name

    assert len(cloud_name(longest_stack, "postgres", "r" * 16, limit=63)) <= 63


def _exec(stack_name: str, overrides: dict[str, object]) -> subprocess.CompletedProcess[str]:
    values, secret_keys = cli_config(stack_name, config_overrides=overrides)
    env = {
        **os.environ,
        "PULUMI_CONFIG": json.dumps(values),
        "PULUMI_CONFIG_SECRET_KEYS": json.dumps(secret_keys),
    }
    command = [sys.executable, str(EXEC), "--stack", stack_name, str(REPO_ROOT / "infra" / "__main__.py")]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    ("stack_name", "overrides", "line"),
    [
        # A ComponentArgsError (TlsGateway's) at the top level: was "Program failed with an unhandled exception".
        (
            "dev",
            {"gateway": {"className": "gateway.example"}},
            "error: rag:gateway.className in Pulumi.dev.yaml: TlsGatewayArgs.gateway_class_name 'gateway.example' "
            "must be a DNS-1123 label: lower-case letters, digits and '-', at most 63 characters",
        ),
        # naming.py's ValueError, raised inside the Output that names the S3 bucket (the account ID is the
        # provider's): was a "While processing input" traceback.
        (
            "prod",
            {"cluster": {"eks": {"region": "x" * 40}}},
            f"error: rag:cluster.eks.region in Pulumi.prod.yaml: {'x' * 40!r} is not an AWS region such as "
            "eu-west-1 (at most 20 characters)",
        ),
    ],
    ids=["component-args", "naming"],
)
def test_a_bare_pulumi_up_shows_one_line(stack_name: str, overrides: dict[str, object], line: str) -> None:
    result = _exec(stack_name, overrides)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(line), lines[0]
    assert result.returncode == 1  # the host's status after a RunError (32 after an unhandled exception)
