"""The Pulumi program (`main: infra/`): config -> cluster target -> components (infra/stack.py) -> stack outputs.

The CLI runs this file as a script, so it first makes the repository root importable; everything else lives in
the `infra` package. `infra/offline.py` runs this same file under mocks.
"""

import sys
from pathlib import Path

# Running a directory puts infra/ itself first on sys.path, where config.py or policy/ could shadow other
# top-level modules; the package is imported from the repository root instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(_HERE.parent) not in sys.path:
    sys.path.insert(0, str(_HERE.parent))

import pulumi  # noqa: E402

from infra.clusters import build_cluster  # noqa: E402
from infra.config import load_config, load_secrets  # noqa: E402
from infra.guards import check_deployed, namespace_release, registry_grows  # noqa: E402
from infra.stack import build  # noqa: E402

# A refused config raises a ConfigError, a `pulumi.RunError`: the language host reports it as its message alone, one
# line naming the key and the stack file, here and inside an Output alike (infra/config.py ConfigError; `ragops`
# shows that line, infra/workflows/errors.py).
config = load_config()
# What the stack's state says is deployed, before anything is registered: an undeclared Qdrant scale-down or
# PostgreSQL major change is refused with nothing sent (infra/guards.py).
deployed = check_deployed(config)
# The cluster target first: EKS and GKE read what the cloud runs and refuse a version step it cannot take before
# anything else (the generated keys included) is registered, so a refused `up` changes nothing.
cluster = build_cluster(config)
secrets = load_secrets(config)
outputs = build(
    config,
    cluster,
    secrets,
    release_namespace=namespace_release(config, deployed),
    registry_grows=registry_grows(config, deployed),
)
for name, value in outputs.items():
    pulumi.export(name, value)
