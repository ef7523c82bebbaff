"""GKE version steps: node pools follow the control plane under prod's NO_MINOR_UPGRADES (R4), and a two-minor
`minMasterVersion` jump is refused before anything is registered.

GKE's NO_MINOR_UPGRADES exclusion "excludes all minor upgrades for the cluster, only patches are allowed" (the API's
MaintenanceExclusionOptions.Scope): the node pools' minor too. Exclusions stop automatic upgrades only, so raising
`minMasterVersion` upgraded the control plane and left the pools a minor behind, with nothing in the program to move
them. Under such an exclusion the pool's `version` is now the cluster's `master_version` output (never newer than
the control plane, as GKE requires), so one `up` upgrades the master and then the nodes; without one, auto-upgrade
moves the nodes and the pool names no version (a pinned one would fight it).

GKE upgrades a control plane one minor at a time. The program reads what the control plane runs (the container
cluster data source, a blocking invoke through the stack's gcp provider) before it declares anything, and refuses a
`minMasterVersion` two minors ahead naming the key and the stack file. The runs give the offline mocks what GCP
runs (`run_stack(live=...)`); with no such cluster the data source fails with "... not found", as upstream does.
"""

from __future__ import annotations

from typing import Any

import pytest

from infra.clusters.gke import check_master_step
from infra.config import ConfigError
from infra.naming import cloud_name
from infra.offline import PlatformMocks, ProviderError, StackRun, run_stack
from tests.infra.conftest import run, target_overrides

PROD = cloud_name("prod", limit=40)


def _prod_gke(live: dict[str, Any] | None = None, **gke: Any) -> StackRun:
    overrides = target_overrides("prod", "gke")
    overrides["cluster"] = {**overrides["cluster"], "gke": gke} if gke else overrides["cluster"]
    return run_stack("prod", config_overrides=overrides, live=live)


def _live(master: str) -> dict[str, Any]:
    return {"gke": {"name": PROD, "masterVersion": master}}


# --- node pools follow the control plane under a minor-holding exclusion (R4) ------------------------------------


def test_prods_pool_follows_the_control_plane_version() -> None:
    """prod declares NO_MINOR_UPGRADES until end of support: its pool names the cluster's running version."""
    result = run("prod", "gke")
    cluster, pool = result.by_name("gke"), result.by_name("gke-nodes")
    assert cluster.inputs["minMasterVersion"] == "1.35"
    assert pool.inputs["version"] == "1.35.5-gke.1000000"  # the mock's master_version for minimum 1.35
    assert cluster.urn in pool.depends_on
    assert pool.inputs["management"] == {"autoRepair": True, "autoUpgrade": True}


def test_raising_the_minimum_moves_the_pool_in_the_same_up() -> None:
    before = _prod_gke(minMasterVersion="1.35")
    after = _prod_gke(_live("1.35.5-gke.1000000"), minMasterVersion="1.36")
    assert before.by_name("gke-nodes").inputs["version"].startswith("1.35.")
    assert after.by_name("gke-nodes").inputs["version"].startswith("1.36.")


@pytest.mark.parametrize("scope", ["NO_MINOR_UPGRADES", "NO_MINOR_OR_NODE_UPGRADES"])
def test_each_minor_holding_scope_makes_the_pool_follow(scope: str) -> None:
    exclusion = {"name": "hold", "start": "2026-11-26T00:00:00Z", "untilEndOfSupport": True, "scope": scope}
    result = run("staging", "gke", cluster={"gke": {"maintenance": {"exclusions": [exclusion]}}})
    assert "version" in result.by_name("gke-nodes").inputs


def test_without_an_exclusion_auto_upgrade_moves_the_nodes() -> None:
    """staging declares no exclusion: the pool names no version (auto-upgrade follows the master), and a version
    pinned there would fight it (pulumi-gcp NodePool `version` docstring)."""
    pool = run("staging", "gke").by_name("gke-nodes")
    assert "version" not in pool.inputs
    assert pool.inputs["management"]["autoUpgrade"] is True


def test_a_short_no_upgrades_freeze_leaves_the_nodes_to_auto_upgrade() -> None:
    """NO_UPGRADES (at most 30 days) holds every automatic upgrade only while it lasts; after it the nodes'
    auto-upgrade catches up, so the stack does not pin them."""
    freeze = {
        "name": "freeze",
        "start": "2026-12-20T00:00:00Z",
        "end": "2027-01-05T00:00:00Z",
        "scope": "NO_UPGRADES",
    }
    result = run("staging", "gke", cluster={"gke": {"maintenance": {"exclusions": [freeze]}}})
    assert "version" not in result.by_name("gke-nodes").inputs


def test_the_exclusion_scope_key_changes_what_is_deployed() -> None:
    """rag:cluster.gke.maintenance.exclusions[].scope decides the pool's version input, not only the policy."""
    holding = {"name": "x", "start": "2026-11-26T00:00:00Z", "untilEndOfSupport": True}
    minor = run(
        "staging",
        "gke",
        cluster={"gke": {"maintenance": {"exclusions": [{**holding, "scope": "NO_MINOR_UPGRADES"}]}}},
    )
    freeze = run(
        "staging",
        "gke",
        cluster={
            "gke": {
                "maintenance": {
                    "exclusions": [
                        {
                            **holding,
                            "untilEndOfSupport": False,
                            "end": "2026-12-10T00:00:00Z",
                            "scope": "NO_UPGRADES",
                        }
                    ]
                }
            }
        },
    )
    assert "version" in minor.by_name("gke-nodes").inputs
    assert "version" not in freeze.by_name("gke-nodes").inputs


# --- the control plane goes one minor at a time --------------------------------------------------------------


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict[str, Any], str]]:
    seen: list[tuple[dict[str, Any], str]] = []
    original = PlatformMocks.call

    def record(self: PlatformMocks, args: Any) -> Any:
        if args.token == "gcp:container/getCluster:getCluster":
            seen.append((dict(args.args), args.provider))
        return original(self, args)

    monkeypatch.setattr(PlatformMocks, "call", record)
    return seen


def _refusal(live: dict[str, Any] | None, minimum: str) -> str:
    with pytest.raises(ConfigError) as caught:
        _prod_gke(live, minMasterVersion=minimum)
    assert caught.value.key == "rag:cluster.gke.minMasterVersion"
    assert caught.value.stack_file == "Pulumi.prod.yaml"
    return str(caught.value)


def test_two_minors_ahead_of_the_running_control_plane_is_refused_before_anything_is_registered(
    registered: list[str],
) -> None:
    message = _refusal(_live("1.34.5-gke.1000000"), "1.36")
    assert "runs 1.34.5-gke.1000000, and GKE upgrades a control plane one minor at a time" in message
    assert "set 1.35" in message
    assert set(registered) <= {"pulumi:pulumi:Stack", "pulumi:providers:gcp"}, registered


def test_a_full_version_two_minors_ahead_is_refused_too() -> None:
    assert "set 1.35" in _refusal(_live("1.34.5-gke.1000000"), "1.36.2-gke.1100000")


def test_one_minor_up_or_a_floor_already_met_is_planned() -> None:
    up = _prod_gke(_live("1.34.5-gke.1000000"), minMasterVersion="1.35")
    assert up.by_name("gke").inputs["minMasterVersion"] == "1.35"
    met = _prod_gke(_live("1.36.1-gke.1000000"), minMasterVersion="1.35")  # the channel went past the floor
    assert met.by_name("gke").inputs["minMasterVersion"] == "1.35"


def test_a_new_cluster_takes_any_minimum(reads: list[tuple[dict[str, Any], str]]) -> None:
    """A first `up`: the data source answers "not found" (as upstream does for a 404), the cluster is created."""
    result = _prod_gke(None, minMasterVersion="1.36")
    assert result.by_name("gke").inputs["minMasterVersion"] == "1.36"
    ((args, provider),) = reads
    assert args == {"name": PROD, "location": "europe-west1", "project": "rag-prod"}
    assert "pulumi:providers:gcp::gcp" in provider  # the stack's explicit provider, never a default one


def test_no_minimum_reads_nothing(reads: list[tuple[dict[str, Any], str]]) -> None:
    run_stack("staging", config_overrides=target_overrides("staging", "gke"))
    assert reads == []


def test_a_project_whose_container_api_is_off_has_no_cluster_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first `up` on a fresh project: the program enables container.googleapis.com itself, so the read before it
    gets GKE's SERVICE_DISABLED 403, which means no cluster (not a refusal)."""
    original = PlatformMocks.call

    def disabled(self: PlatformMocks, args: Any) -> Any:
        if args.token == "gcp:container/getCluster:getCluster":
            raise ProviderError(
                args.token,
                'Error reading Container Cluster "rag-prod": googleapi: Error 403: Kubernetes Engine API has not '
                "been used in project 123456789 before or it is disabled. Enable it by visiting ... SERVICE_DISABLED",
            )
        return original(self, args)

    monkeypatch.setattr(PlatformMocks, "call", disabled)
    assert _prod_gke(None, minMasterVersion="1.36").by_name("gke").inputs["minMasterVersion"] == "1.36"


def test_a_failed_read_is_refused_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, registered: list[str]
) -> None:
    original = PlatformMocks.call

    def denied(self: PlatformMocks, args: Any) -> Any:
        if args.token == "gcp:container/getCluster:getCluster":
            raise ProviderError(
                args.token, "googleapi: Error 403: Required 'container.clusters.get' permission"
            )
        return original(self, args)

    monkeypatch.setattr(PlatformMocks, "call", denied)
    message = _refusal(_live("1.35.5-gke.1000000"), "1.35")
    assert "could not read the version GKE cluster" in message
    assert "container.clusters.get" in message
    assert set(registered) <= {"pulumi:pulumi:Stack", "pulumi:providers:gcp"}, registered


@pytest.mark.parametrize(
    ("wanted", "running", "allowed"),
    [
        ("1.35", None, True),
        ("", "1.30.1-gke.1", True),
        ("1.35", "1.34.9-gke.1", True),
        ("1.35", "1.35.1-gke.1", True),
        ("1.34", "1.36.1-gke.1", True),
        ("1.36", "1.34.9-gke.1", False),
        ("1.37.1-gke.2", "1.35.0-gke.1", False),
    ],
)
def test_the_step_rule(wanted: str, running: str | None, allowed: bool) -> None:
    if allowed:
        check_master_step(wanted, running, "Pulumi.prod.yaml")
    else:
        with pytest.raises(ConfigError):
            check_master_step(wanted, running, "Pulumi.prod.yaml")


@pytest.mark.parametrize(
    "error",
    [
        "google: could not find default credentials. See https://cloud.google.com/docs/authentication/external/"
        "set-up-adc for more information",
        'oauth2: "invalid_grant" "reauth related error (invalid_rapt)"',
        "googleapi: Error 401: Request had invalid authentication credentials. Expected OAuth 2 access token",
    ],
    ids=["no-credentials", "expired-login", "rejected-token"],
)
def test_a_read_that_failed_on_credentials_says_so_not_permissions(
    monkeypatch: pytest.MonkeyPatch, registered: list[str], error: str
) -> None:
    """Every failed read was sent to fix IAM (container.clusters.get); missing or expired Google credentials are
    fixed by logging in again, and the refusal now says that, still on one line naming the key."""
    original = PlatformMocks.call

    def failing(self: PlatformMocks, args: Any) -> Any:
        if args.token == "gcp:container/getCluster:getCluster":
            raise ProviderError(args.token, f'Error reading Container Cluster "rag-prod": {error}')
        return original(self, args)

    monkeypatch.setattr(PlatformMocks, "call", failing)
    message = _refusal(_live("1.35.5-gke.1000000"), "1.35")
    assert "\n" not in message
    assert "Google credentials in the environment are missing, expired or rejected" in message
    assert "gcloud auth application-default login" in message
    assert "container.clusters.get" not in message
    assert set(registered) <= {"pulumi:pulumi:Stack", "pulumi:providers:gcp"}, registered
