"""EYES11 M5: the offline plan shows the cloud resources' sizes, so that a diff of two plans (`make plan` before and
after a config change) shows a node, database or cache size change, and says when that change is a replace."""

from __future__ import annotations

import difflib
from typing import Any

from infra import render
from infra.offline import StackRun

from .conftest import run


def plan_md(result: StackRun) -> str:
    report = render.Report(stack=result.stack, environment=result.stack)
    report.summary = render.summarize(result, result.stack)
    return render.plan_markdown(report)


def changed_lines(before: StackRun, after: StackRun) -> list[str]:
    """The lines of plan.md that differ (`-old` / `+new`)."""
    diff = difflib.unified_diff(plan_md(before).splitlines(), plan_md(after).splitlines(), lineterm="", n=0)
    return [line for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def section(text: str, title: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(f"## {title}") + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("## "))
    return lines[start:end]


def test_a_node_group_instance_type_change_shows_in_the_plan_diff_as_a_replace() -> None:
    before = run("prod")
    after = run("prod", cluster={"eks": {"nodeGroup": {"instanceType": "m6i.2xlarge"}}})
    diff = changed_lines(before, after)
    assert len(diff) == 2, diff
    old, new = diff
    assert old.startswith("-- `aws:eks/nodeGroup:NodeGroup::eks-nodes`: ")
    assert 'instanceTypes=["m6i.xlarge"] (replace)' in old
    assert 'instanceTypes=["m6i.2xlarge"] (replace)' in new
    # The line sits in the plan's sizes section.
    assert new[1:] in section(plan_md(after), "Cloud resource sizes")


def test_a_gke_machine_type_change_shows_as_an_in_place_update() -> None:
    before = run("staging")
    after = run("staging", cluster={"gke": {"nodePool": {"machineType": "e2-standard-8"}}})
    diff = [line for line in changed_lines(before, after) if "gcp:container/nodePool:NodePool::" in line]
    assert [line[:1] for line in diff] == ["-", "+"], diff
    assert 'nodeConfig.machineType="e2-standard-4",' in diff[0]
    assert 'nodeConfig.machineType="e2-standard-8",' in diff[1]  # no "(replace)": updated in place


def test_counts_database_and_cache_sizes_show_in_the_plan() -> None:
    changes: list[tuple[dict[str, Any], str, str]] = [
        ({"cluster": {"eks": {"nodeGroup": {"desiredSize": 4}}}}, "scalingConfig.desiredSize=3", "=4"),
        ({"postgres": {"managed": {"instanceClass": "db.m7g.xlarge"}}}, '"db.m7g.large"', '"db.m7g.xlarge"'),
        ({"redis": {"managed": {"nodeType": "cache.m7g.xlarge"}}}, '"cache.m7g.large"', '"cache.m7g.xlarge"'),
    ]
    for overrides, old, new in changes:
        diff = changed_lines(run("prod"), run("prod", **overrides))
        assert len(diff) == 2, (overrides, diff)
        assert old in diff[0], (overrides, diff)
        assert new in diff[1], (overrides, diff)


def test_managed_stores_on_gke_list_their_tiers() -> None:
    managed = run("staging", postgres={"mode": "managed"}, redis={"mode": "managed"})
    sizes = render.summarize(managed, "staging")["cloudSizes"]
    assert any(
        line.startswith("`gcp:sql/databaseInstance:DatabaseInstance::")
        and 'settings.tier="db-custom-2-7680"' in line
        for line in sizes
    ), sizes
    assert any(
        line.startswith("`gcp:redis/instance:Instance::") and 'tier="STANDARD_HA" (replace)' in line
        for line in sizes
    ), sizes


def test_every_sized_type_is_a_cloud_type_and_every_force_new_path_is_cited() -> None:
    for type_ in render.CLOUD_SIZES:
        assert type_.split(":", 1)[0] in ("aws", "gcp"), type_
    for type_, paths in render.CLOUD_FORCE_NEW.items():
        for path, source in paths.items():
            assert "ForceNew" in source, (type_, path)
            assert ".go" in source, (type_, path)
            if type_ in render.CLOUD_SIZES and path in render.CLOUD_SIZES[type_]:
                continue
            # A force-new path not shown in the plan must still be one the program sends.
            assert type_ in {
                "aws:eks/nodeGroup:NodeGroup",
                "aws:rds/instance:Instance",
                "gcp:sql/database:Database",
                "gcp:sql/user:User",
            }, (type_, path)
