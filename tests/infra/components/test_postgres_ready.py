"""The CloudNativePG `Cluster` is awaited until Ready (REVIEW5 V4), so what waits for it waits for Postgres.

pulumi-kubernetes awaits no custom resource by default: without `pulumi.com/waitFor` the Cluster counted as
created when the API server accepted it, and the API and worker (in `depends_on` through `postgres.ready`) started
while the operator was still pulling images and running initdb; they exit when the registry does not answer, and a
first `up` on a new cluster could time out with them in CrashLoopBackOff.

On an update, `condition=Ready` alone passed at once (stop 16's "Found and left"): the Ready=True of the last healthy
loop is still there when the provider starts watching, and CloudNativePG gives the provider no generation to see
that the operator has not reacted. `await_satisfied` below is the provider's evaluation of the annotation
(pulumi-kubernetes provider/pkg/metadata/overrides.go `ReadyCondition`, await/condition/{all,custom,kubectl,
jsonpath}.go, jsonpath/jsonpath.go `Parse`/`Matches`), run over the statuses CloudNativePG v1.30.0 writes during a
change (internal/controller/cluster_image.go `reconcileImage`, pkg/reconciler/majorupgrade/reconciler.go,
pkg/resources/status/transactions.go `SetClusterReadyCondition`).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pulumi
import pytest

from infra import render
from infra.components import postgres as pg
from infra.components.rag_service import client_selector

from . import conftest
from .conftest import manifest, run_components

CLUSTER = "kubernetes:postgresql.cnpg.io/v1:Cluster"


@pytest.fixture
def timeouts(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Each registration's custom timeouts by resource name (the recording monitor does not keep them)."""
    seen: dict[str, Any] = {}
    register = conftest.RecordingMonitor.RegisterResource

    def recording(self: conftest.RecordingMonitor, request: Any) -> Any:
        seen[request.name] = request.customTimeouts
        return register(self, request)

    monkeypatch.setattr(conftest.RecordingMonitor, "RegisterResource", recording)
    return seen


def cloudnative(**overrides: object) -> pg.PostgresDatabaseArgs:
    values: dict[str, object] = {
        "mode": "cloudnative",
        "password": pulumi.Output.secret("pw"),
        "namespace": "rag",
        "instances": 2,
        "storage_size": "20Gi",
        "client_selectors": (client_selector("rag"),),
        "protect": True,
    }
    values.update(overrides)
    return pg.PostgresDatabaseArgs(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("upgrade", "grows"), [(None, False), (17, False), (None, True)])
def test_the_cluster_is_awaited_until_ready_with_room_for_a_bootstrap_and_a_major_upgrade(
    timeouts: dict[str, Any], upgrade: int | None, grows: bool
) -> None:
    args = cloudnative(
        major_upgrade_from=upgrade, image=pg.PG_IMAGES["18"] if upgrade else pg.DEFAULT_PG_IMAGE, grows=grows
    )
    program = run_components(lambda: pg.PostgresDatabase("postgres", args))
    cluster = program.one(CLUSTER)
    annotations = cluster.inputs["metadata"]["annotations"]
    # CloudNativePG v1.30.0 api/v1/cluster_types.go: ConditionClusterReady = "Ready" (True once healthy), the
    # image the data directory runs, and the ready instance pods.
    assert json.loads(annotations["pulumi.com/waitFor"]) == [
        "condition=Ready",
        f"jsonpath={{.status.pgDataImageInfo.image}}={args.image}",
        "jsonpath={.status.readyInstances}=2",
    ]
    if upgrade:
        assert annotations[pg.MAJOR_UPGRADE_ANNOTATION] == "17->18"
    # The provider's default await is 10 minutes: a first bootstrap on cold nodes and a major upgrade need more; an
    # update without a declared major upgrade waits the create's 30 minutes (note20: a bare `pulumi up` over a Cluster
    # a failed first `up` left unrecoverable waited 60 for nothing; the await has no failure exit); an update that
    # adds instances or grows the volumes waits for new replicas' clones, 60 (REVIEW_INFRA21 M2).
    recorded = timeouts[cluster.name]
    assert (recorded.create, recorded.update) == ("30m", "60m" if upgrade or grows else "30m")
    # Still protected, and the vendored CRD schema (what `make plan` validates against) admits the annotation.
    assert cluster.protect is True
    source, errors = render.validate_manifest(manifest(cluster))
    assert source
    assert errors == []


# ------------------------------------------------------------------- the provider's evaluation of pulumi.com/waitFor
_PATH = re.compile(r"^\{\.(?P<path>[A-Za-z]+(\.[A-Za-z]+)*)\}$")


def _expressions(annotation: str) -> list[str]:
    """`ReadyCondition`: a JSON string array, else one expression; each needs a known prefix."""
    try:
        values = json.loads(annotation)
    except json.JSONDecodeError:
        values = [annotation]
    assert isinstance(values, list), annotation
    assert values, annotation
    for expr in values:
        assert expr.startswith(("condition=", "jsonpath=")), expr
    return values


def _stale(obj: dict[str, Any], observed: int | None) -> bool:
    """Both checks skip an object whose observed generation (when there is one) is behind metadata.generation."""
    return observed is not None and observed < obj["metadata"]["generation"]


def _condition(obj: dict[str, Any], expr: str) -> bool:
    """`NewCustom` + `checkCondition` (vendored from kubectl wait)."""
    kind, _, want = expr.removeprefix("condition=").partition("=")
    for cond in obj.get("status", {}).get("conditions", []):
        if cond["type"].lower() != kind.lower():
            continue
        observed = cond.get("observedGeneration", obj.get("status", {}).get("observedGeneration"))
        if _stale(obj, observed):
            return False
        return str(cond["status"]).lower() == (want or "True").lower()
    return False


def _jsonpath(obj: dict[str, Any], expr: str) -> bool:
    """`jsonpath.Parse` (split on a single `=`, `{...}` required) and `JSONPath.Satisfied`/`Matches`: a dotted path
    here (what the Cluster's expressions use; asserted), compared as Go's fmt.Sprint prints it."""
    raw = expr.removeprefix("jsonpath=")
    parts = raw.replace("==", "\x00").split("=")
    assert len(parts) <= 2, f"the provider refuses {expr!r}: more than one '='"
    path, value = parts[0], parts[1] if len(parts) == 2 else ""
    match = _PATH.match(path)
    assert match, f"{path!r}: only a dotted path is modelled here"
    if _stale(obj, obj.get("status", {}).get("observedGeneration")):
        return False
    node: Any = obj
    for key in match["path"].split("."):
        if not isinstance(node, dict) or key not in node:
            return False  # "selected nothing"
        node = node[key]
    assert not isinstance(node, (dict, list)), "a non-primitive value is an error in the provider"
    found = str(node).lower() if isinstance(node, bool) else str(node)
    return not value or found == value


def await_satisfied(annotation: str, obj: dict[str, Any]) -> bool:
    """Whether the provider's awaiter ends on this observed object (`condition.All`: every expression on it)."""
    return all(
        _condition(obj, expr) if expr.startswith("condition=") else _jsonpath(obj, expr)
        for expr in _expressions(annotation)
    )


# ------------------------------------------------------------------- CloudNativePG v1.30.0 statuses during changes
HEALTHY = "Cluster in healthy state"


def cluster_object(generation: int, phase: str, data_image: str, ready: int, **status: Any) -> dict[str, Any]:
    """A Cluster as the provider observes it: the operator's status (Ready follows the phase: True only when
    healthy; metav1.Condition without observedGeneration, as `SetClusterReadyCondition` builds it)."""
    ready_status = "True" if phase == HEALTHY else "False"
    body: dict[str, Any] = {
        "phase": phase,
        "image": data_image,
        "pgDataImageInfo": {"image": data_image, "majorVersion": pg.pg_image_major(data_image)},
        "conditions": [
            {
                "type": "Ready",
                "status": ready_status,
                "reason": "ClusterIsReady",
                "message": "Cluster is Ready",
            },
            {"type": "LastBackupSucceeded", "status": "True", "reason": "LastBackupSucceeded", "message": ""},
        ],
    }
    if ready:
        body["readyInstances"] = ready  # omitempty
    body.update(status)
    return {"metadata": {"name": "postgres", "generation": generation}, "status": body}


def annotation_for(**overrides: object) -> str:
    program = run_components(lambda: pg.PostgresDatabase("postgres", cloudnative(**overrides)))
    return str(program.one(CLUSTER).inputs["metadata"]["annotations"]["pulumi.com/waitFor"])


OLD, NEW = pg.PG_IMAGES["17"], pg.PG_IMAGES["18"]


def test_a_major_upgrade_is_awaited_until_pg_upgrade_is_done_and_every_instance_is_back() -> None:
    wait_for = annotation_for(image=NEW, major_upgrade_from=17)
    # Right after the apply (generation 3): the last healthy loop's status, Ready=True on the old image. The old
    # expression ends the wait here, with the registry about to go down for pg_upgrade.
    before = cluster_object(3, HEALTHY, OLD, 2)
    assert await_satisfied("condition=Ready", before)
    assert not await_satisfied(wait_for, before)
    # reconcileImage, case 3 (a higher major): status.image only, the phase still healthy and Ready still True.
    taken_up = cluster_object(3, HEALTHY, OLD, 2, image=NEW)
    assert not await_satisfied(wait_for, taken_up)
    # majorupgrade.Reconcile: the phase, Ready False and the target; every pod deleted, the Job runs.
    upgrading = cluster_object(
        3, "Upgrading Postgres major version", OLD, 0, image=NEW, targetPgDataImageInfo={"image": NEW}
    )
    assert not await_satisfied(wait_for, upgrading)
    # majorVersionUpgradeHandleCompletion: pgDataImageInfo is the new image; still the upgrade phase.
    done = cluster_object(3, "Upgrading Postgres major version", NEW, 0)
    assert not await_satisfied(wait_for, done)
    # The primary is back, a replica is re-cloned (its PVC was deleted): not every instance yet.
    cloning = cluster_object(3, "Creating a new replica", NEW, 1)
    assert not await_satisfied(wait_for, cloning)
    # A healthy loop with one instance not ready still waits (readyInstances is counted at each loop).
    assert not await_satisfied(wait_for, cluster_object(3, HEALTHY, NEW, 1))
    assert await_satisfied(wait_for, cluster_object(3, HEALTHY, NEW, 2))


def test_a_new_instance_count_is_awaited_until_every_instance_is_ready() -> None:
    wait_for = annotation_for(instances=3)
    assert not await_satisfied(wait_for, cluster_object(4, HEALTHY, pg.DEFAULT_PG_IMAGE, 2))
    assert not await_satisfied(wait_for, cluster_object(4, "Creating a new replica", pg.DEFAULT_PG_IMAGE, 2))
    assert await_satisfied(wait_for, cluster_object(4, HEALTHY, pg.DEFAULT_PG_IMAGE, 3))


def test_an_update_the_cluster_is_already_in_does_not_wait() -> None:
    """An `up` that changes only what the expressions do not look at (a label, the annotation itself on the first
    `up` with this change) ends on the current healthy status, rather than running into the 60-minute timeout."""
    wait_for = annotation_for()
    assert await_satisfied(wait_for, cluster_object(7, HEALTHY, pg.DEFAULT_PG_IMAGE, 2))
    # ... but not on an unhealthy one (a failover in progress).
    assert not await_satisfied(wait_for, cluster_object(7, "Failing over", pg.DEFAULT_PG_IMAGE, 1))


def test_a_minor_image_change_waits_for_the_operator_to_take_it_up() -> None:
    """Before the operator's reconcileImage the status is the old image's: not satisfied. After it (case 4: image
    and pgDataImageInfo together, the phase still healthy) it is, before the rolling restart's phase is set: the
    limit docs/infra.md states."""
    minor = pg.PG_IMAGES["17"].replace("17.11-", "17.12-")
    wait_for = annotation_for(image=minor)
    assert not await_satisfied(wait_for, cluster_object(5, HEALTHY, pg.DEFAULT_PG_IMAGE, 2))
    assert not await_satisfied(wait_for, cluster_object(5, "Upgrading cluster", minor, 1))
    assert await_satisfied(wait_for, cluster_object(5, HEALTHY, minor, 2))


def test_the_model_honours_generations_the_way_the_provider_does() -> None:
    """The evaluator above is not vacuous about generations: a status that did carry an observed generation behind
    metadata.generation would be refused (what CloudNativePG's Cluster never provides)."""
    obj = cluster_object(3, HEALTHY, pg.DEFAULT_PG_IMAGE, 2)
    assert await_satisfied("condition=Ready", obj)
    stale = copy.deepcopy(obj)
    stale["status"]["observedGeneration"] = 2
    assert not await_satisfied("condition=Ready", stale)
    assert not await_satisfied("jsonpath={.status.readyInstances}=2", stale)
    with pytest.raises(AssertionError, match="more than one"):
        await_satisfied("jsonpath={.status.image}=a=b", obj)


def test_the_docs_say_what_the_wait_does_not_see() -> None:
    text = " ".join((Path(__file__).parents[3] / "docs" / "infra.md").read_text().split())
    section = text[text.index("### What `up` waits for on the CloudNativePG Cluster") :][:4000]
    for phrase in ("pgDataImageInfo", "readyInstances", "rolling restart", "ObjectStore"):
        assert phrase in section, phrase
