"""Entry point the Pulumi CLI runs for ``pulumi preview --policy-pack infra/policy``: serve the pack.

The CLI executes this file as a script from ``infra/policy``, so the repository root is put on ``sys.path`` first
to make ``infra.policy.rules`` importable. Constructing ``PolicyPack`` starts the analyzer's gRPC server and blocks.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pulumi_policy import EnforcementLevel, PolicyPack

from infra.policy.rules import POLICIES

PolicyPack(
    name="rag-platform",
    description="Resources, probes, non-root, pinned images, PDBs, TLS, Qdrant API key, protected state in prod.",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=POLICIES,
)
