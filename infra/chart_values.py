"""The values keys each pinned Helm chart has, recorded from its values.yaml at the chart's tag.

Helm merges a release's values into the chart's defaults and renders the templates; a key no template reads is
kept and ignored. A misspelt or removed key (`crds.enable`, a setting renamed between chart versions) therefore
installs cleanly and the setting never applies: no schema, no Helm error and no offline check would see it. Each
chart version the program installs has a record in `infra/charts/<chart>-<version>.json` of every key its
values.yaml (and its pinned subcharts' values.yaml, under their names) declares, with the URLs of those files at
the tag, and `unknown_keys` holds a release's values to it (`make plan`'s `chart-values` check,
`infra.deployability.check_chart_values`).

A record is a tree: a key maps to its sub-keys, to ``"leaf"`` (a scalar or list default: the value replaces it, and
keys below it are read by nothing) or to ``"open"`` (an empty map or null default, or a value the templates render
whole, e.g. kube-prometheus-stack's `alertmanager.config`: any keys below it are passed on, `--open` when recording).
Keys a template reads without a default in values.yaml are not recorded (the program sets none).

Bumping a chart version needs a new record (the check fails until it exists):

    git -C <chart repo> show <tag>:<path>/values.yaml > /tmp/values.yaml
    python -m infra.chart_values <chart> <version> /tmp/values.yaml=<url of that file at the tag> \
        [/tmp/sub.yaml@<subchart key>=<url>] [--open <dotted.path>]...
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

CHARTS_DIR = Path(__file__).resolve().parent / "charts"
LEAF = "leaf"
OPEN = "open"


@dataclass(frozen=True)
class ChartKeys:
    """The recorded values keys of one chart version."""

    chart: str
    version: str
    sources: tuple[str, ...]
    tree: Mapping[str, Any]


@dataclass(frozen=True)
class KubernetesRange:
    """The Kubernetes minor versions a chart version supports, and where that is written."""

    minimum: str
    maximum: str | None  # None: no upper bound published (the chart's `kubeVersion` is open-ended)
    source: str

    def covers(self, minor: str) -> bool:
        """Whether Kubernetes `minor` ("1.35") is in the range."""
        low = _minor_key(self.minimum) <= _minor_key(minor)
        return low and (self.maximum is None or _minor_key(minor) <= _minor_key(self.maximum))

    def __str__(self) -> str:
        return f"{self.minimum}-{self.maximum}" if self.maximum else f"{self.minimum} and later"


_CERT_MANAGER_MATRIX = (
    "cert-manager's supported releases (github.com/cert-manager/website content/docs/releases/README.md at "
    "776e5db, 'Supported Kubernetes / OpenShift Versions'; 1.18 and 1.19 from that file's history)"
)
#: Each pinned chart's supported Kubernetes minors, by version prefix (the first prefix a version starts with
#: wins). A chart version matching no prefix is a `make plan` finding (`kube-version`): a bump must record the
#: new version's range here, from the chart's `kubeVersion` or the project's own support matrix, cited.
KUBERNETES_SUPPORT: Mapping[str, tuple[tuple[str, KubernetesRange], ...]] = {
    "cert-manager": (
        ("v1.18.", KubernetesRange("1.29", "1.33", _CERT_MANAGER_MATRIX)),
        ("v1.19.", KubernetesRange("1.31", "1.35", _CERT_MANAGER_MATRIX)),
        ("v1.20.", KubernetesRange("1.32", "1.35", _CERT_MANAGER_MATRIX)),
        ("v1.21.", KubernetesRange("1.33", "1.36", _CERT_MANAGER_MATRIX)),
    ),
    "kube-prometheus-stack": (
        (
            "78.3.",
            KubernetesRange(
                "1.25",
                None,
                "charts/kube-prometheus-stack/Chart.yaml kubeVersion '>=1.25.0-0' at tag kube-prometheus-stack-78.3.0 "
                "(prometheus-community/helm-charts); Helm refuses to install it on an older cluster",
            ),
        ),
    ),
    "cloudnative-pg": (
        # 0.27 and 0.28: the steps of a one-minor-at-a-time upgrade (`rag:postgres.cloudnative.operatorChartVersion`).
        (
            "0.27.",
            KubernetesRange(
                "1.32",
                "1.35",
                "chart 0.27.1 runs operator 1.28.1 (no kubeVersion); cloudnative-pg/cloudnative-pg "
                "docs/src/supported_releases.md at v1.30.0, old releases: 1.28.x 'Supported Kubernetes versions: "
                "1.32, 1.33, 1.34, 1.35' (end of life June 30, 2026)",
            ),
        ),
        (
            "0.28.",
            KubernetesRange(
                "1.33",
                "1.35",
                "chart 0.28.3 runs operator 1.29.1 (its kubeVersion '>=1.29.0-0' is looser); "
                "cloudnative-pg/cloudnative-pg docs/src/supported_releases.md at v1.30.0, 1.29.x 'Supported "
                "Kubernetes versions: 1.33, 1.34, 1.35' (end of life 29 Sep 2026)",
            ),
        ),
        (
            "0.29.",
            KubernetesRange(
                "1.34",
                "1.36",
                "chart 0.29.0 runs operator 1.30.0 (its kubeVersion '>=1.29.0-0' is looser); "
                "cloudnative-pg/cloudnative-pg docs/src/supported_releases.md at v1.30.0, 1.30.x 'Supported "
                "Kubernetes versions: 1.34, 1.35, 1.36' (1.30-1.33 'tested, but not supported')",
            ),
        ),
    ),
    "plugin-barman-cloud": (
        (
            "0.7.",
            KubernetesRange(
                "1.29",
                None,
                "chart 0.7.0 runs plugin v0.13.0; charts/plugin-barman-cloud/Chart.yaml kubeVersion '>=1.29.0-0' at "
                "tag plugin-barman-cloud-v0.7.0 (cloudnative-pg/charts); the operator's narrower range binds first",
            ),
        ),
    ),
    "gateway-helm": (
        (
            "v1.9.",
            KubernetesRange(
                "1.33",
                "1.36",
                "Envoy Gateway's compatibility matrix, gateway.envoyproxy.io/news/releases/matrix",
            ),
        ),
    ),
    "metrics-server": (
        (
            "3.13.",
            KubernetesRange(
                "1.31",
                None,
                "chart 3.13.1 runs metrics-server 0.8.1; kubernetes-sigs/metrics-server README.md compatibility "
                "matrix, 0.8.x 'Supported Kubernetes version 1.31+'",
            ),
        ),
    ),
    "cluster-autoscaler": (
        (
            "9.59.",
            KubernetesRange(
                "1.33",
                "1.36",
                "the chart sets no kubeVersion; its image must be the cluster's minor, and infra/config.py "
                "EKS_CLUSTER_AUTOSCALER_IMAGES pins one for 1.33-1.36",
            ),
        ),
    ),
}


def _minor_key(minor: str) -> tuple[int, int]:
    major, _, rest = minor.partition(".")
    return int(major), int(rest.split(".", 1)[0])


def supported_kubernetes(chart: str, version: str) -> KubernetesRange | None:
    """The recorded Kubernetes range of `chart` at `version`, or None when none is recorded."""
    for prefix, supported in KUBERNETES_SUPPORT.get(chart, ()):
        if version.startswith(prefix):
            return supported
    return None


def record_file(chart: str, version: str) -> Path:
    return CHARTS_DIR / f"{chart}-{version}.json"


@cache
def load(chart: str, version: str) -> ChartKeys | None:
    """The record of `chart` at `version`, or None when none was made."""
    path = record_file(chart, version)
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return ChartKeys(data["chart"], data["version"], tuple(data["sources"]), data["tree"])


def tree_of(values: Any) -> Any:
    """The key tree of a parsed values.yaml (an empty map or null is open: the chart takes any keys there)."""
    if isinstance(values, Mapping):
        if not values:
            return OPEN
        return {str(key): tree_of(item) for key, item in values.items()}
    return OPEN if values is None else LEAF


def merge(base: Any, extra: Any) -> Any:
    """Union of two key trees (a subchart's keys under its name, plus what the parent's values add there)."""
    if OPEN in (base, extra):
        return OPEN
    if isinstance(base, dict) and isinstance(extra, dict):
        merged = dict(base)
        for key, item in extra.items():
            merged[key] = merge(merged[key], item) if key in merged else item
        return merged
    if isinstance(base, dict):
        return base
    return extra


def set_open(tree: dict[str, Any], path: Sequence[str]) -> None:
    """Mark `path` open (the templates render its value whole)."""
    node: Any = tree
    for part in path[:-1]:
        node = node[part]
    if path[-1] not in node:
        raise KeyError(f"{'.'.join(path)} is not a key of the chart's values")
    node[path[-1]] = OPEN


def unknown_keys(
    tree: Mapping[str, Any], values: Any, path: tuple[str, ...] = ()
) -> Iterator[tuple[str, str]]:
    """(dotted path, why) for every key of `values` the record does not have."""
    if not isinstance(values, Mapping):
        return
    for key, item in values.items():
        here = (*path, str(key))
        dotted = ".".join(here)
        known = tree.get(str(key))
        if known is None:
            near = sorted(k for k in tree if k.lower() == str(key).lower() or _close(k, str(key)))
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            yield dotted, f"not a key of the chart's values{hint}"
        elif known == OPEN:
            continue
        elif known == LEAF:
            if isinstance(item, Mapping) and item:
                yield dotted, "is a single value in the chart (a scalar or a list), not a map of keys"
        elif isinstance(item, Mapping):
            yield from unknown_keys(known, item, here)
        elif item is not None:
            yield dotted, "is a map of keys in the chart, not a single value"


def _close(a: str, b: str) -> bool:
    """One edit apart (a typo), for the finding's hint."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b, strict=True)) == 1
    short, long_ = sorted((a, b), key=len)
    return any(long_[:i] + long_[i + 1 :] == short for i in range(len(long_)))


def main(argv: Sequence[str]) -> int:
    """python -m infra.chart_values CHART VERSION FILE[@KEY]=URL... [--open PATH]...: write the record."""
    import yaml

    args = list(argv)
    opens: list[str] = []
    while "--open" in args:
        index = args.index("--open")
        opens.append(args[index + 1])
        del args[index : index + 2]
    if len(args) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    chart, version, *files = args
    tree: Any = {}
    sources: list[str] = []
    for spec in files:
        location, url = spec.split("=", 1)
        file, _, key = location.partition("@")
        part = tree_of(yaml.safe_load(Path(file).read_text(encoding="utf-8")) or {})
        tree = merge(tree, {key: part} if key else part)
        sources.append(f"{key}: {url}" if key else url)
    for dotted in opens:
        set_open(tree, dotted.split("."))
    target = record_file(chart, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    record = {"chart": chart, "version": version, "sources": sources, "open": sorted(opens), "tree": tree}
    target.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
