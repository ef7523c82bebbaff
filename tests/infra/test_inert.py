"""`make plan` names the config a stack sets that does nothing for its target (`infra.inert`, E10 of EYES4).

Each reported key is checked against the real program: changed, the recorded resources stay the same; the
same change on the target that reads it changes them. So the plan never calls a working key ignored.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra import render
from infra.offline import StackRun
from tests.infra.conftest import run


def recorded(result: StackRun) -> list[tuple[str, str]]:
    return sorted((r.urn, json.dumps(r.inputs, sort_keys=True, default=str)) for r in result.resources)


def test_the_committed_stacks_report_their_inert_keys() -> None:
    prod = render.ignored_config(run("prod"))
    assert [line.split(" has no effect")[0] for line in prod] == [
        "rag:cluster.gke (12 keys) in Pulumi.prod.yaml",
        "rag:postgres.cloudnative.instances in Pulumi.prod.yaml",
        "rag:postgres.managed.tier in Pulumi.prod.yaml",
        "rag:redis.managed.tier in Pulumi.prod.yaml",
        "rag:redis.managed.memorySizeGb in Pulumi.prod.yaml",
    ]
    assert any("ElastiCache is sized by redis.managed.nodeType" in line for line in prod)
    (staging,) = render.ignored_config(run("staging"))
    assert staging.startswith(
        "rag:cluster.eks (9 keys) in Pulumi.staging.yaml has no effect: cluster.provider is gke"
    )
    assert render.ignored_config(run("dev")) == []


@pytest.mark.parametrize(
    ("overrides", "reader"),
    [
        ({"postgres": {"cloudnative": {"instances": 5}}}, {"postgres": {"mode": "cloudnative"}}),
        ({"postgres": {"managed": {"tier": "db-custom-4-15360"}}}, {"cluster": {"provider": "gke"}}),
        # prod on GKE refuses BASIC: the counterpart is staging's Memorystore.
        ({"redis": {"managed": {"tier": "BASIC"}}}, {"cluster": {"provider": "gke"}, "stack": "staging"}),
        ({"redis": {"managed": {"memorySizeGb": 7}}}, {"cluster": {"provider": "gke"}}),
        ({"cluster": {"gke": {"nodePool": {"maxNodes": 5}}}}, {"cluster": {"provider": "gke"}}),
    ],
    ids=lambda value: json.dumps(value, sort_keys=True),
)
def test_a_reported_key_changes_nothing_here_and_something_where_it_applies(
    overrides: dict, reader: dict
) -> None:
    from infra.config import deep_merge

    assert recorded(run("prod", **overrides)) == recorded(run("prod"))
    reader = dict(reader)
    stack = reader.pop("stack", "prod")
    target = "gke" if reader.get("cluster") else None
    extra = reader if stack == "prod" else {**reader, "redis": {"mode": "managed"}}
    changed = deep_merge(extra, overrides)
    assert recorded(run(stack, target, **changed)) != recorded(run(stack, target, **extra))


def test_a_key_from_the_command_line_is_attributed_to_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "--stack",
        "staging",
        "--out",
        str(tmp_path),
        "--set",
        'redis={"managed":{"nodeType":"cache.m7g.xlarge"}}',
    ]
    render.main(args)
    out = capsys.readouterr().out
    assert "  IGNORED rag:redis.managed.nodeType in --set has no effect: redis.mode is incluster" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert (
        "rag:redis.managed.nodeType in --set has no effect: redis.mode is incluster" in plan["ignoredConfig"]
    )
    assert "## Ignored config" in (tmp_path / "plan.md").read_text()


def test_apply_immediately_is_reported_on_gke_and_changes_nothing_there() -> None:
    # Cloud SQL applies every settings change at `pulumi up`: RDS's switch between now and the window is inert there.
    gke = {"cluster": {"provider": "gke"}}
    changed = {"postgres": {"mode": "managed", "managed": {"applyImmediately": True}}}
    assert recorded(run("prod", "gke", **gke, **changed)) == recorded(run("prod", "gke", **gke))
    assert recorded(run("prod", **changed)) != recorded(run("prod"))
    lines = render.ignored_config(run("prod", "gke", **gke, **changed))
    assert any(
        line.startswith("rag:postgres.managed.applyImmediately in ") and "RDS" in line for line in lines
    )


@pytest.mark.parametrize(
    "overrides",
    [{"storageGb": 150}, {"backupRetentionDays": 21}],
    ids=lambda value: json.dumps(value, sort_keys=True),
)
def test_storage_and_backup_retention_change_cloud_sql_and_are_not_reported_there(overrides: dict) -> None:
    # They were RDS-only until Cloud SQL honoured them (disk_size/autoresize limit, retained backups and logs).
    (key,) = overrides
    gke = {"cluster": {"provider": "gke"}}
    changed = {"postgres": {"mode": "managed", "managed": overrides}}
    assert recorded(run("prod", "gke", **gke, **changed)) != recorded(run("prod", "gke", **gke))
    lines = render.ignored_config(run("prod", "gke", **gke, **changed))
    assert not any(line.startswith(f"rag:postgres.managed.{key} ") for line in lines), lines
