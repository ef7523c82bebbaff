"""The Kubernetes RBAC a deploy of one stack needs, generated from what the program declares.

``python -m infra.rbac --stack dev [--set key.path=JSON] [--subject User:alice]`` prints a ClusterRole and one
Role per namespace (and their bindings with ``--subject``) that let an identity run ``pulumi up``, ``refresh``
and ``destroy`` of that stack on an existing cluster; ``python -m infra.rbac --write`` rewrites the committed
``docs/rbac/*.yaml`` (dev, and a PR stack from ``infra/workflows/ephemeral.template.yaml``), which
tests/infra/test_rbac.py holds to the program, so the files cannot drift from it.

What it is made of, from an offline run of the real program (:func:`infra.offline.run_stack`):

* every Kubernetes object the program declares: its API group, resource and namespace (cluster-wide for
  cluster-scoped kinds), with the verbs Pulumi uses on it (server-side apply is ``patch``; ``get``/``list``/
  ``watch`` for refresh and for pulumi-kubernetes' await logic, which also watches the Pods, ReplicaSets,
  Endpoints/EndpointSlices and Events of a workload: :data:`AWAIT_READS`);
* every object a Helm release renders (:data:`CHART_OBJECTS`: the kinds in the chart's templates at the version
  written there, with the values the program sets; its optional features left off are left out), in the
  release's namespace unless the chart puts it elsewhere, plus Helm's release records (Secrets in that
  namespace) and ``namespaces: create`` when Helm creates the namespace;
* every object the program reads (``Resource.get``: the CRDs of an existing Prometheus Operator), ``get`` on
  exactly those names.

Creating a Role or ClusterRole that grants permissions, or binding one, is refused by the API server unless the
identity holds those permissions itself or ``escalate``/``bind`` on roles (Kubernetes RBAC privilege-escalation
prevention). The operators' charts (cert-manager, CloudNativePG, kube-prometheus-stack) create ClusterRoles with
wide rights, so a stack that installs them needs ``escalate`` and ``bind``: in effect cluster-admin. A stack that
installs no chart (a PR stack: ``tls.installCertManager`` and ``postgres.cloudnative.installOperator`` false,
monitoring off or ``existing``) needs a Role in its namespace and a small ClusterRole (its namespace).

Not covered: the cloud side of gke/eks stacks (``infra/deploy_identity.py``), and API discovery (``/api``,
``/apis``, ``/openapi``), which every authenticated user has through ``system:discovery``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from infra.offline import StackRun, run_stack
from infra.render import HELM_TYPES, is_kubernetes_object, manifest_of

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS_DIR = REPO_ROOT / "docs" / "rbac"
WRITE = ("get", "list", "watch", "create", "update", "patch", "delete")
READ = ("get", "list", "watch")
PATCH = ("get", "patch")
ROLE_NAME = "rag-deployer"

#: Kinds that are not namespaced (the ones the program and its charts create).
CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "StorageClass",
        "GatewayClass",
        "IngressClass",
        "PriorityClass",
        "ClusterIssuer",
        "PersistentVolume",
    }
)
#: What pulumi-kubernetes' await logic reads next to the objects it creates (provider/pkg/await: Deployments
#: follow their ReplicaSets and Pods, StatefulSets and Jobs their Pods, Services their Endpoints/EndpointSlices,
#: and it reports the Events of what it waits for); Helm's `--wait`/`--atomic` reads the same.
AWAIT_READS: tuple[tuple[str, str], ...] = (
    ("", "pods"),
    ("", "pods/log"),
    ("", "events"),
    ("", "endpoints"),
    ("", "persistentvolumeclaims"),
    ("apps", "replicasets"),
    ("discovery.k8s.io", "endpointslices"),
    ("events.k8s.io", "events"),
)


@dataclass(frozen=True)
class ChartObjects:
    """The objects one chart renders with the program's values, as read from its templates at `version`."""

    version: str
    source: str
    namespaced: tuple[tuple[str, str], ...]
    """(API group, kind) created in the release's namespace."""
    cluster: tuple[tuple[str, str], ...] = ()
    """(API group, kind) that are cluster-scoped."""
    elsewhere: Mapping[str, tuple[tuple[str, str], ...]] = ()  # type: ignore[assignment]
    """Namespace -> (API group, kind) the chart creates outside the release's namespace."""


RBAC = "rbac.authorization.k8s.io"
ADMISSION = "admissionregistration.k8s.io"
CRD = ("apiextensions.k8s.io", "CustomResourceDefinition")
#: Per chart, from `^apiVersion`/`^kind` of every template at the tag (optional features the program leaves off,
#: e.g. PodSecurityPolicy, VPA, Cilium policies, Ingress/HTTPRoute, HPA, are left out). A release of a chart not
#: listed fails `rbac_rules`; a release at another version is generated from the listed version and says so.
CHART_OBJECTS: Mapping[str, ChartObjects] = {
    "cert-manager": ChartObjects(
        version="v1.21.1",
        source="github.com/cert-manager/cert-manager deploy/charts/cert-manager/templates @ v1.21.1",
        namespaced=(
            ("", "ConfigMap"),
            ("", "Service"),
            ("", "ServiceAccount"),
            ("apps", "Deployment"),
            ("batch", "Job"),  # startupapicheck (a Helm hook)
            (RBAC, "Role"),
            (RBAC, "RoleBinding"),
            ("policy", "PodDisruptionBudget"),
            ("networking.k8s.io", "NetworkPolicy"),
        ),
        cluster=(
            (RBAC, "ClusterRole"),
            (RBAC, "ClusterRoleBinding"),
            CRD,
            (ADMISSION, "MutatingWebhookConfiguration"),
            (ADMISSION, "ValidatingWebhookConfiguration"),
        ),
        # The leader-election Roles (values global.leaderElection.namespace: kube-system).
        elsewhere={"kube-system": ((RBAC, "Role"), (RBAC, "RoleBinding"))},
    ),
    "cloudnative-pg": ChartObjects(
        version="0.29.0",
        source="github.com/cloudnative-pg/charts charts/cloudnative-pg @ cloudnative-pg-v0.29.0",
        namespaced=(
            ("", "ConfigMap"),
            ("", "Secret"),
            ("", "Service"),
            ("", "ServiceAccount"),
            ("apps", "Deployment"),
            (RBAC, "Role"),
            (RBAC, "RoleBinding"),
        ),
        cluster=(
            (RBAC, "ClusterRole"),
            (RBAC, "ClusterRoleBinding"),
            CRD,
            (ADMISSION, "MutatingWebhookConfiguration"),
            (ADMISSION, "ValidatingWebhookConfiguration"),
        ),
    ),
    "kube-prometheus-stack": ChartObjects(
        version="78.3.0",
        source=(
            "github.com/prometheus-community/helm-charts charts/kube-prometheus-stack @ 487bb850 (78.3.0), its "
            "crds subchart, kube-state-metrics-6.3.0, prometheus-node-exporter-4.48.0; github.com/grafana/"
            "helm-charts grafana-10.1.0"
        ),
        namespaced=(
            ("", "ConfigMap"),
            ("", "Secret"),
            ("", "Service"),
            ("", "ServiceAccount"),
            ("apps", "Deployment"),
            ("apps", "DaemonSet"),  # node exporter
            ("batch", "Job"),  # admission webhook certificate patch, CRD upgrade job (Helm hooks)
            (RBAC, "Role"),
            (RBAC, "RoleBinding"),
            ("monitoring.coreos.com", "Prometheus"),
            ("monitoring.coreos.com", "Alertmanager"),
            ("monitoring.coreos.com", "ServiceMonitor"),
            ("monitoring.coreos.com", "PrometheusRule"),
        ),
        cluster=(
            (RBAC, "ClusterRole"),
            (RBAC, "ClusterRoleBinding"),
            CRD,
            (ADMISSION, "MutatingWebhookConfiguration"),
            (ADMISSION, "ValidatingWebhookConfiguration"),
        ),
        # The kube-dns/CoreDNS and kubelet scrape Services the chart puts in kube-system.
        elsewhere={"kube-system": (("", "Service"),)},
    ),
}


def plural(kind: str) -> str:
    """The API resource of a kind (`NetworkPolicy` -> `networkpolicies`, `Ingress` -> `ingresses`)."""
    low = kind.lower()
    if low.endswith("y") and low[-2] not in "aeiou":
        return low[:-1] + "ies"
    if low.endswith(("s", "x", "ch", "sh")):
        return low + "es"
    return low + "s"


@dataclass(frozen=True)
class Need:
    """One (namespace or cluster, API group, resource) and the verbs needed on it, with why."""

    namespace: str | None  # None: cluster-wide
    group: str
    resource: str
    verbs: tuple[str, ...]
    why: str
    names: tuple[str, ...] = ()  # resourceNames, when only these objects are needed


class UnknownChart(LookupError):
    """A Helm release of a chart whose objects are not recorded in CHART_OBJECTS."""


def _group_kind(resource: Any) -> tuple[str, str]:
    manifest = manifest_of(resource)
    api_version = str(manifest["apiVersion"])
    return (api_version.split("/", 1)[0] if "/" in api_version else "", str(manifest["kind"]))


def read_scope(kind: str, read_id: str) -> tuple[str | None, str]:
    """(namespace, name) a `Resource.get` of `kind` by `read_id` reads: pulumi-kubernetes' Read splits a namespaced
    object's id `<namespace>/<name>` (provider.go `parseFqName`) and reads a bare name in `default`
    (clients.go `NamespaceOrDefault`); a cluster-scoped object has no namespace. The Role used to name the whole id
    in `default`, so a read of `rag/x` was granted as a `get` of `rag/x` in `default`: denied on the cluster."""
    if kind in CLUSTER_SCOPED:
        return None, read_id
    namespace, _, name = read_id.rpartition("/")
    return (namespace or "default"), name


def needs(run: StackRun) -> list[Need]:
    """Everything the stack's deploy does to the cluster (see the module docstring)."""
    found: list[Need] = []
    workload_namespaces: set[str] = set()
    for resource in run.resources:
        if is_kubernetes_object(resource) and not resource.type.startswith("pulumi:providers:"):
            group, kind = _group_kind(resource)
            namespace = (
                None
                if kind in CLUSTER_SCOPED
                else str((resource.inputs.get("metadata") or {}).get("namespace") or "default")
            )
            if resource.type.endswith("Patch"):
                # A Patch resource (NamespacePatch, rag:namespaceMode patch) only applies fields of an object that
                # exists: create, update and delete are all server-side apply PATCHes of that one name.
                name = str((resource.inputs.get("metadata") or {}).get("name") or "")
                found.append(Need(namespace, group, plural(kind), PATCH, f"patches {kind} {name}", (name,)))
            else:
                found.append(Need(namespace, group, plural(kind), WRITE, f"declares {kind}"))
            if namespace is not None:
                workload_namespaces.add(namespace)
        elif resource.type in HELM_TYPES:
            chart = str(resource.inputs.get("chart") or "").rsplit("/", 1)[-1]
            release_ns = str(resource.inputs.get("namespace") or "default")
            objects = CHART_OBJECTS.get(chart)
            if objects is None:
                raise UnknownChart(
                    f"Helm release {resource.name} installs chart {chart!r}, whose objects infra/rbac.py does not "
                    "know: add its kinds to CHART_OBJECTS (from `^apiVersion`/`^kind` of its templates at the "
                    "pinned version)."
                )
            version = str(resource.inputs.get("version") or "")
            why = f"Helm chart {chart} {version}" + (
                f" (objects read at {objects.version})" if version != objects.version else ""
            )
            for group, kind in objects.namespaced:
                found.append(Need(release_ns, group, plural(kind), WRITE, why))
            for group, kind in objects.cluster:
                found.append(Need(None, group, plural(kind), WRITE, why))
            for namespace, kinds in dict(objects.elsewhere).items():
                for group, kind in kinds:
                    found.append(Need(namespace, group, plural(kind), WRITE, why))
            # Helm keeps each release revision as a Secret `sh.helm.release.v1.<name>.v<n>` in its namespace.
            found.append(Need(release_ns, "", "secrets", WRITE, f"Helm release records of {chart}"))
            if resource.inputs.get("createNamespace"):
                found.append(Need(None, "", "namespaces", WRITE, f"Helm creates namespace {release_ns}"))
            workload_namespaces.add(release_ns)
    declared = {resource.urn: resource.type for resource in run.resources}
    for read in run.reads:
        # A read of an object the program declares itself (it waits for it: the stack's Gateway or Ingress, read
        # back for its address) needs nothing beyond the rights that write it.
        if any(declared.get(urn) == read.type for urn in read.depends_on):
            continue
        group_version, kind = read.type.split(":", 1)[1].rsplit(":", 1)
        group = group_version.split("/", 1)[0] if "/" in group_version else ""
        scope, name = read_scope(kind, str(read.inputs["id"]))
        found.append(Need(scope, group, plural(kind), ("get",), "reads an existing object", (name,)))
    for namespace in sorted(workload_namespaces):
        for group, resource_name in AWAIT_READS:
            found.append(Need(namespace, group, resource_name, READ, "await logic and Helm --wait"))
    # Privilege-escalation prevention: creating or binding a role needs the permissions it grants, or these.
    rbac_scopes = {n.namespace for n in found if n.group == RBAC and n.resource in ("roles", "clusterroles")}
    cluster_rbac = any(n.group == RBAC and n.namespace is None for n in found)
    if rbac_scopes or cluster_rbac:
        found.append(
            Need(None, RBAC, "clusterroles", ("bind", "escalate"), "creates or binds roles with wide rights")
        )
        for namespace in sorted(s for s in rbac_scopes if s is not None):
            found.append(Need(namespace, RBAC, "roles", ("bind", "escalate"), "creates and binds roles"))
    return found


def _rules(items: Iterable[Need]) -> list[dict[str, Any]]:
    """Policy rules, one per (group, verbs, names), resources merged and sorted."""
    merged: dict[tuple[str, tuple[str, ...], tuple[str, ...]], set[str]] = defaultdict(set)
    for need in items:
        verbs = tuple(v for v in (*WRITE, "bind", "escalate") if v in need.verbs)
        merged[(need.group, verbs, need.names)].add(need.resource)
    rules = []
    for (group, verbs, names), resources in sorted(merged.items()):
        rule: dict[str, Any] = {"apiGroups": [group], "resources": sorted(resources), "verbs": list(verbs)}
        if names:
            rule["resourceNames"] = list(names)
        rules.append(rule)
    return rules


def created_namespaces(run: StackRun) -> set[str]:
    """Namespaces the deploy itself creates (Namespace objects, Helm's createNamespace)."""
    created = set()
    for resource in run.resources:
        if resource.type == "kubernetes:core/v1:Namespace":
            created.add(str(resource.inputs["metadata"]["name"]))
        elif resource.type in HELM_TYPES and resource.inputs.get("createNamespace"):
            created.add(str(resource.inputs.get("namespace") or "default"))
    return created


def manifests(run: StackRun, *, subject: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    """The ClusterRole, the Roles (one per namespace that exists before the deploy) and, with `subject` (kind,
    name), their bindings.

    What the stack needs inside a namespace it creates itself goes into the ClusterRole: a Role (or RoleBinding)
    can only be created in a namespace that exists, and these do not before the first `up`.
    """
    created = created_namespaces(run)
    all_needs = [
        Need(
            None,
            n.group,
            n.resource,
            n.verbs,
            f"{n.why} (in {n.namespace}, which the stack creates)",
            n.names,
        )
        if n.namespace in created
        else n
        for n in needs(run)
    ]
    labels = {"app.kubernetes.io/part-of": "rag", "app.kubernetes.io/component": "deployer"}
    cluster_name = f"{ROLE_NAME}-{run.stack}"
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": f"{RBAC}/v1",
            "kind": "ClusterRole",
            "metadata": {"name": cluster_name, "labels": labels},
            "rules": _rules(n for n in all_needs if n.namespace is None),
        }
    ]
    namespaces = sorted({n.namespace for n in all_needs if n.namespace is not None})
    for namespace in namespaces:
        docs.append(
            {
                "apiVersion": f"{RBAC}/v1",
                "kind": "Role",
                "metadata": {"name": ROLE_NAME, "namespace": namespace, "labels": labels},
                "rules": _rules(n for n in all_needs if n.namespace == namespace),
            }
        )
    if subject is not None:
        kind, name = subject
        who = {"kind": kind, "name": name}
        if kind in ("User", "Group"):
            who["apiGroup"] = RBAC
        else:
            namespace_name = name.split("/", 1)
            who = {"kind": "ServiceAccount", "namespace": namespace_name[0], "name": namespace_name[-1]}
        docs.append(
            {
                "apiVersion": f"{RBAC}/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": cluster_name, "labels": labels},
                "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": cluster_name},
                "subjects": [who],
            }
        )
        for namespace in namespaces:
            docs.append(
                {
                    "apiVersion": f"{RBAC}/v1",
                    "kind": "RoleBinding",
                    "metadata": {"name": ROLE_NAME, "namespace": namespace, "labels": labels},
                    "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": ROLE_NAME},
                    "subjects": [who],
                }
            )
    return docs


def render(run: StackRun, title: str, *, subject: tuple[str, str] | None = None) -> str:
    """The manifests as one YAML stream with a header saying what they are for."""
    found = needs(run)
    charts = sorted({n.why for n in found if n.why.startswith("Helm chart ")})
    escalates = any("escalate" in n.verbs for n in found)
    header = [
        f"# Kubernetes RBAC to deploy {title} (generated by `python -m infra.rbac`; do not edit).",
        "# Bind it to the identity that runs pulumi up/refresh/destroy (`--subject User:<name>` adds the bindings).",
        *(f"# Includes the objects of {chart}." for chart in charts),
    ]
    if escalates:
        header.append(
            "# It creates roles for the operators it installs, so it holds `escalate` and `bind`: in effect "
            "cluster-admin."
        )
    created = sorted(created_namespaces(run))
    if created:
        header.append(
            f"# The stack creates the namespaces {', '.join(created)}: what it does inside them is granted "
            "cluster-wide (a Role can only live in a namespace that exists before the first up)."
        )
    body = yaml.safe_dump_all(manifests(run, subject=subject), sort_keys=False, default_flow_style=False)
    return "\n".join(header) + "\n---\n" + body


# --- the committed files --------------------------------------------------------------------------------------


def pr_stack_config() -> dict[str, Any]:
    """A PR stack's config, as `ragops ephemeral up` writes it (the template over Pulumi.dev.yaml)."""
    from infra.workflows.ephemeral import template_config

    return template_config(REPO_ROOT, "pr-1", domain="preview.example.com")


def documented() -> dict[Path, str]:
    """The committed files and their exact text: dev (existing target, installs cert-manager and CloudNativePG)
    and a PR stack next to it (installs nothing cluster-wide)."""
    return {
        DOCS_DIR / "dev.yaml": render(run_stack("dev"), "the dev stack (Pulumi.dev.yaml)"),
        DOCS_DIR / "pr-stack.yaml": render(
            run_stack("pr-1", stack_config=pr_stack_config()),
            "a PR stack pr-1 (infra/workflows/ephemeral.template.yaml over Pulumi.dev.yaml)",
        ),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.rbac", description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default="dev")
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=JSON")
    parser.add_argument(
        "--subject", help="User:NAME, Group:NAME or ServiceAccount:NAMESPACE/NAME: add bindings"
    )
    parser.add_argument("--write", action="store_true", help="rewrite docs/rbac/*.yaml")
    args = parser.parse_args(argv)
    if args.write:
        DOCS_DIR.mkdir(parents=True, exist_ok=True)
        for path, text in documented().items():
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(REPO_ROOT)}")
        return 0
    subject = None
    if args.subject:
        kind, _, name = args.subject.partition(":")
        if kind not in ("User", "Group", "ServiceAccount") or not name:
            parser.error("--subject must be User:NAME, Group:NAME or ServiceAccount:NAMESPACE/NAME")
        subject = (kind, name)
    from infra.render import load_run

    loaded = load_run(args.stack, args.set)
    if loaded is None:
        return 2  # the one-line error is printed (as `make plan` prints it)
    run = loaded[0]
    provider = (json.loads(run.config.get("rag:cluster") or "{}") or {}).get("provider")
    if provider not in (None, "existing"):
        # The charts a cloud target installs (metrics-server, the autoscaler, ...) are not in CHART_OBJECTS: the
        # deploy identity of a gke/eks stack is the cloud's (infra/deploy_identity.py), an admin of its own cluster.
        print(
            f"error: stack {args.stack} runs on {provider} (rag:cluster.provider): `make rbac` generates the RBAC of "
            "a deploy on an existing cluster only; a gke/eks stack's deploy identity is its cloud's "
            '(docs/delivery.md, "Deploy identity"; docs/infra.md, "Kubernetes RBAC for a deploy")',
            file=sys.stderr,
        )
        return 2
    try:
        text = render(run, f"stack {args.stack}", subject=subject)
    except UnknownChart as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
