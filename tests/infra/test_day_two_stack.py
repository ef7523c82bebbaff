"""Day two for the whole stack (REVIEW12's suggestion after F2): every declared key changed on the real prod and
staging stack files, each resource classified as the next `up` treats it (`tests/infra/day_two_matrix.py`).

- No stateful resource is replaced or deleted by a key unless docs/operations.md's "what the next `up` does" table
  has a row for that key saying so: the doc and the program cannot drift (F2 changed `postgres.database` into a
  new, empty RDS instance with no row, and no test saw it).
- Every declared key changes what prod or staging deploys, but the ones listed in `INERT_ON_BOTH` with why (each
  is exercised where it does something by tests/infra/test_config_consumed.py).
"""

from __future__ import annotations

from functools import cache

from . import day_two_matrix as m

#: Keys that change nothing on prod nor on staging as committed, and why (switched off by another key there).
INERT_ON_BOTH = {
    "embedding.extraModels": "baked into the image a stack builds; prod and staging deploy a promoted image",
    "llmApiKey": "llm.enabled is false on both",
    "monitoring.alerting.email.username": "no e-mail receiver (monitoring.alerting.email.to) on either",
    "monitoring.existing.dashboardLabels": "monitoring.mode is install on both",
    "monitoring.existing.namespace": "monitoring.mode is install on both",
    "monitoring.existing.selectorLabels": "monitoring.mode is install on both",
}


@cache
def matrices() -> tuple[m.Matrix, m.Matrix]:
    prod = m.build("prod")
    staging = m.build("staging", consumed_elsewhere=[k for k, r in prod.results.items() if r.consumed])
    return prod, staging


def test_no_key_replaces_a_stateful_resource_without_its_row_in_operations_md() -> None:
    rows = m.documented_replacers()
    undocumented = [
        f"{matrix.stack} {key}: {result.old!r} -> {result.new!r}: {how} {urn}"
        for matrix in matrices()
        for key, result in sorted(matrix.results.items())
        for urn, how in sorted(result.lossy.items())
        if not m.documented(key, rows)
    ]
    assert undocumented == [], (
        "these key changes replace or delete a stateful resource, and docs/operations.md's day-two table has no row "
        "for the key saying so:\n" + "\n".join(undocumented)
    )


def test_every_declared_key_changes_what_prod_or_staging_deploys() -> None:
    prod, staging = matrices()
    keys = set(prod.results) | set(staging.results)
    consumed = {k for mx in (prod, staging) for k, r in mx.results.items() if r.consumed}
    tried = {k for mx in (prod, staging) for k, r in mx.results.items() if not r.refused}
    flagged = sorted(k for k in keys if k in tried and k not in consumed)
    assert flagged == sorted(INERT_ON_BOTH), "\n".join(
        line for mx in (prod, staging) for line in m.table(mx).splitlines() if "CHANGES NOTHING" in line
    )


def test_the_matrix_classifies_node_and_data_changes_by_the_providers_rules() -> None:
    prod, staging = matrices()
    node_group = "urn:pulumi:prod::rag::aws:eks/nodeGroup:NodeGroup::eks-nodes"
    assert prod.results["cluster.eks.nodeGroup.instanceType"].lossy == {node_group: "replaced"}
    assert prod.results["cluster.eks.nodeGroup.desiredSize"].changes.get(node_group) == "updated"
    pool = "urn:pulumi:staging::rag::gcp:container/nodePool:NodePool::gke-nodes"
    machine = staging.results["cluster.gke.nodePool.machineType"]  # traced in a group: classify it alone
    after = m.run_stack("staging", config_overrides=m.d.nested(machine.key, machine.new))
    assert m.classify(staging.base, after) == {pool: "updated"}
    assert staging.results["cluster.gke.nodePool.spot"].lossy == {pool: "replaced"}
    # F2: another database name is a new, empty RDS instance (the guard refuses it only with a state).
    rds = [urn for urn in prod.results["postgres.database"].lossy if "aws:rds/instance:Instance" in urn]
    assert prod.results["postgres.database"].lossy[rds[0]] == "replaced"
    # Every key applicable on the stack was classified or refused with the program's own error.
    for matrix in (prod, staging):
        assert len(matrix.results) > 100
        for result in matrix.results.values():
            assert result.new != result.old, result.key
            assert result.refused is None or "Pulumi." in result.refused, result.key


def test_a_missing_row_is_caught() -> None:
    """Without the `postgres.database` row (as before F2's fix), the matrix's replace of RDS is undocumented."""
    text = m.OPERATIONS_MD.read_text(encoding="utf-8")
    rows = m.documented_replacers(text)
    assert m.documented("postgres.database", rows)
    assert m.documented("qdrant.storage.storageClass", rows)  # a bare sibling name in a cell
    assert m.documented("redis.incluster.storage.size", rows)  # a wildcard
    assert not m.documented("qdrant.replicas", rows)  # a row that replaces nothing
    without = "\n".join(line for line in text.splitlines() if not line.startswith("| `postgres.database`"))
    assert not m.documented("postgres.database", m.documented_replacers(without))
