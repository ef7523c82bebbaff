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
from infra.guards import check_deployed  # noqa: E402
from infra.stack import build  # noqa: E402

config = load_config()
# Before any resource is registered: a refused step sends nothing (infra/guards.py).
check_deployed(config)
secrets = load_secrets()
cluster = build_cluster(config)
for name, value in build(config, cluster, secrets).items():
    pulumi.export(name, value)
