"""`make plan`'s "Cloud quotas" on GKE: what a stack takes of Compute Engine's regional quotas.

A first `pulumi up` of staging on a new project used to stop deep into the update: the volumes stayed Pending
(QUOTA_EXCEEDED on SSD_TOTAL_GB) or the autoscaler could not add nodes, while the plan said "Cloud quotas: none".
The lines are computed from what the program declares: the node pool (machine type, per-zone min/max over the three
zones of a regional pool, boot disk size), the workloads' volumes at their replica counts (StatefulSet claim templates
and ephemeral volumes, CloudNativePG instances, Prometheus), and Cloud NAT's address.
"""

from __future__ import annotations

import re

import pytest

from infra.capacity import gce_vcpus, gke_quota_usage
from infra.render import quota_usage, summarize
from tests.infra.conftest import run


def _line(lines: list[str], metric: str) -> str:
    (line,) = [q for q in lines if q.startswith(f"{metric} in ")]
    return line


def _gb(line: str) -> tuple[int, int]:
    """(at the node pool's minimum, at its maximum); one number when they are the same (volumes only)."""
    both = [int(n) for n in re.findall(r"([0-9]+) GB at", line)]
    if both:
        return both[0], both[1]
    (only,) = (int(n) for n in re.findall(r"takes ([0-9]+) GB", line))
    return only, only


def test_staging_on_gke_states_its_ssd_cpu_and_address_needs() -> None:
    result = run("staging", "gke")
    lines = gke_quota_usage(result)
    # Boot disks: 1..3 nodes per zone x 3 zones x 100 GB pd-balanced; volumes: Qdrant 3 x (20 + 40 snapshot
    # scratch), CloudNativePG 2 x 10, Valkey 2, Prometheus 20 = 222 GB, all standard-rwo (pd-balanced).
    assert _gb(_line(lines, "SSD_TOTAL_GB")) == (300 + 222, 900 + 222)
    # e2-standard-4 x 3..9 nodes: E2 counts against CPUS.
    cpus = _line(lines, "CPUS")
    assert "12 vCPUs at the node pool's minimum, 36 at its maximum" in cpus
    assert "CPUS_ALL_REGIONS" in cpus
    assert "gcloud compute regions describe europe-west1 --flatten=quotas" in cpus
    assert any(q.startswith("STATIC_ADDRESSES and IN_USE_ADDRESSES in europe-west1") for q in lines)
    assert any("default node pool" in q and "300 GB of SSD_TOTAL_GB" in q for q in lines)
    # The plan's summary carries them (it said "none" on GKE).
    assert set(lines) <= set(summarize(result, "staging")["quotas"])


def test_the_numbers_follow_the_stack_file() -> None:
    base = gke_quota_usage(run("staging", "gke"))
    bigger = gke_quota_usage(
        run(
            "staging",
            "gke",
            cluster={
                "provider": "gke",
                "gke": {"nodePool": {"maxNodes": 5, "diskSizeGb": 50, "machineType": "n2-standard-8"}},
            },
            qdrant={"storage": {"size": "30Gi"}, "snapshotsStorage": {"size": "60Gi"}},
        )
    )
    low, high = _gb(_line(base, "SSD_TOTAL_GB"))
    new_low, new_high = _gb(_line(bigger, "SSD_TOTAL_GB"))
    # Boot disks halve (50 GB), the maximum is 5 per zone, Qdrant's volumes grow by 3 x (10 + 20) GB.
    assert (new_low, new_high) == (low - 150 + 90, (5 * 3 * 50) + (high - 900) + 90)
    # N2 has its own regional quota.
    assert "N2_CPUS in europe-west1: this stack takes 24 vCPUs" in _line(bigger, "N2_CPUS")
    assert not [q for q in bigger if q.startswith("CPUS in ")]


def test_a_standard_class_counts_against_the_standard_disk_quota() -> None:
    result = run("staging", "gke", monitoring={"storage": {"storageClass": "standard"}})
    lines = gke_quota_usage(result)
    assert _gb(_line(lines, "DISKS_TOTAL_GB")) == (20, 20)
    assert _gb(_line(lines, "SSD_TOTAL_GB")) == (300 + 202, 900 + 202)


def test_other_targets_take_no_gce_quota() -> None:
    assert gke_quota_usage(run("prod")) == []  # EKS: its own AWS lines
    assert [q for q in quota_usage(run("prod")) if "SSD_TOTAL_GB" in q] == []
    assert gke_quota_usage(run("dev")) == []


@pytest.mark.parametrize(
    ("machine", "cpus"),
    [("e2-standard-4", 4), ("e2-medium", 2), ("n2-highmem-16", 16), ("c3-standard-22", 22), ("custom", None)],
)
def test_vcpus_of_a_machine_type(machine: str, cpus: int | None) -> None:
    assert gce_vcpus(machine) == cpus
