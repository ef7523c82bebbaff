"""CrossGuard rules for the RAG platform, as plain functions over what pulumi-policy hands a policy.

Every rule is an ordinary ``validate(args, report_violation)`` function taking the real
``pulumi_policy.ResourceValidationArgs`` / ``StackValidationArgs``; :data:`POLICIES` wraps them in
``ResourceValidationPolicy`` / ``StackValidationPolicy`` objects. Constructing those starts nothing: the
``PolicyPack`` (which serves gRPC to the Pulumi CLI) is only built in ``infra/policy/__main__.py``, so tests and
``infra.render`` import this module freely and call the rules on recorded resources.

Properties arrive wrapped in pulumi-policy's unknown-checking proxies, which are ``Mapping``/``Sequence`` but not
``dict``/``list``: every helper here tests against the abstract types.

Environment-dependent rules (TLS outside dev, protection in prod) ask :func:`environment_of`: the policy config
``environment`` when given (``pulumi preview --policy-pack-config`` or the offline runner), else the stack's
``rag:environment`` config, else the stack name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pulumi
from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

PROD_ENVIRONMENTS = frozenset({"prod", "production"})
DEV_ENVIRONMENTS = frozenset({"dev", "development", "local"})

#: Workload kinds whose pod template is at ``spec.template`` (CronJob is handled separately).
POD_TEMPLATE_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})
SCALABLE_KINDS = frozenset({"Deployment", "StatefulSet"})

#: Label sets of the workloads that must carry probes besides Qdrant (found by its image): the HTTP API. The queue
#: worker has no HTTP endpoint to probe, so it is not listed. Policy config ``probedWorkloads`` replaces this.
DEFAULT_PROBED_WORKLOADS: tuple[Mapping[str, str], ...] = (
    {"app.kubernetes.io/name": "rag", "app.kubernetes.io/component": "api"},
)

QDRANT_API_KEY_ENV = "QDRANT__SERVICE__API_KEY"

#: Pulumi types that hold data which a deletion would lose (besides StatefulSets with volume claim templates).
STATEFUL_TYPES = frozenset(
    {
        "kubernetes:core/v1:PersistentVolumeClaim",
        "kubernetes:postgresql.cnpg.io/v1:Cluster",
        "aws:rds/instance:Instance",
        "aws:rds/cluster:Cluster",
        "aws:elasticache/replicationGroup:ReplicationGroup",
        "aws:elasticache/cluster:Cluster",
        "aws:elasticache/serverlessCache:ServerlessCache",
        "aws:s3/bucket:Bucket",
        "aws:s3/bucketV2:BucketV2",
        "gcp:sql/databaseInstance:DatabaseInstance",
        "gcp:redis/instance:Instance",
        "gcp:memorystore/instance:Instance",
        "gcp:storage/bucket:Bucket",
    }
)

ENVIRONMENT_SCHEMA = PolicyConfigSchema(
    properties={
        "environment": {
            "type": "string",
            "description": "Override the environment (default: rag:environment config, else the stack name).",
        }
    }
)


# ---------------------------------------------------------------------------------------------- property access
def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _seq(value: Any) -> Sequence[Any]:
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return value
    return ()


def _get(value: Any, *path: str) -> Any:
    for key in path:
        value = _map(value).get(key)
    return value


def kind_of(resource_type: str) -> str:
    """The Kubernetes kind of a ``kubernetes:<group>/<version>:<Kind>`` type token, else ``""``."""
    if not resource_type.startswith("kubernetes:") or resource_type.startswith("kubernetes:helm.sh/"):
        return ""
    return resource_type.rsplit(":", 1)[-1]


def describe(props: Mapping[str, Any], name: str) -> str:
    """``Kind namespace/name`` for messages, falling back to the Pulumi logical name."""
    meta = _map(props.get("metadata"))
    kind = props.get("kind") or "resource"
    ns = meta.get("namespace")
    obj = meta.get("name") or name
    return f"{kind} {ns}/{obj}" if ns else f"{kind} {obj}"


def pod_spec(kind: str, props: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod spec of a workload (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob)."""
    if kind == "Pod":
        return _map(props.get("spec"))
    if kind in POD_TEMPLATE_KINDS:
        return _map(_get(props, "spec", "template", "spec"))
    if kind == "CronJob":
        return _map(_get(props, "spec", "jobTemplate", "spec", "template", "spec"))
    return None


def all_containers(spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(label, container)`` for every init and regular container of a pod spec."""
    for field, label in (("initContainers", "init container"), ("containers", "container")):
        for container in _seq(spec.get(field)):
            c = _map(container)
            yield f"{label} {c.get('name', '?')!r}", c


def environment_of(config: Mapping[str, Any]) -> str:
    """The environment a policy runs for: policy config, then ``rag:environment``, then the stack name."""
    explicit = config.get("environment")
    if explicit:
        return str(explicit).lower()
    configured = pulumi.Config("rag").get("environment")
    if configured:
        return configured.lower()
    return pulumi.get_stack().lower()


# ---------------------------------------------------------------------------------------------- resource rules
def require_resources(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Every container sets cpu and memory requests and limits."""
    kind = kind_of(args.resource_type)
    spec = pod_spec(kind, args.props)
    if spec is None:
        return
    for label, container in all_containers(spec):
        resources = _map(container.get("resources"))
        missing = [
            f"{section}.{res}"
            for section in ("requests", "limits")
            for res in ("cpu", "memory")
            if not _map(resources.get(section)).get(res)
        ]
        if missing:
            report_violation(
                f"{describe(args.props, args.name)}: {label} must set resources {', '.join(missing)}.",
                None,
            )


def require_probes(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """The API and Qdrant workloads have liveness and readiness probes on every container."""
    kind = kind_of(args.resource_type)
    if kind not in SCALABLE_KINDS:
        return
    spec = pod_spec(kind, args.props) or {}
    pod_labels = _map(_get(args.props, "spec", "template", "metadata", "labels"))
    selectors = [_map(s) for s in _seq(args.get_config().get("probedWorkloads"))] or DEFAULT_PROBED_WORKLOADS
    is_qdrant = any(_is_qdrant_container(c) for _, c in all_containers(spec))
    if not is_qdrant and not any(
        sel and all(pod_labels.get(k) == v for k, v in sel.items()) for sel in selectors
    ):
        return
    for label, container in all_containers(spec):
        if label.startswith("init"):
            continue
        missing = [p for p in ("livenessProbe", "readinessProbe") if not container.get(p)]
        if missing:
            report_violation(
                f"{describe(args.props, args.name)}: {label} has no {' and no '.join(missing)}.",
                None,
            )


def require_non_root(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Pods run as non-root: runAsNonRoot on the pod, or on every container, and nothing runs as UID 0."""
    kind = kind_of(args.resource_type)
    spec = pod_spec(kind, args.props)
    if spec is None:
        return
    pod_ctx = _map(spec.get("securityContext"))
    pod_non_root = pod_ctx.get("runAsNonRoot") is True
    where = describe(args.props, args.name)
    if pod_ctx.get("runAsUser") == 0:
        report_violation(f"{where}: pod securityContext sets runAsUser 0 (root).", None)
    for label, container in all_containers(spec):
        ctx = _map(container.get("securityContext"))
        if ctx.get("runAsUser") == 0:
            report_violation(f"{where}: {label} sets runAsUser 0 (root).", None)
        if ctx.get("runAsNonRoot") is False:
            report_violation(f"{where}: {label} sets runAsNonRoot false.", None)
        elif not pod_non_root and ctx.get("runAsNonRoot") is not True:
            report_violation(
                f"{where}: {label} may run as root: set runAsNonRoot true on the pod or the container.",
                None,
            )


def image_problem(image: str) -> str | None:
    """Why an image reference is not pinned (``None`` when it has a digest or a non-latest tag)."""
    if not image:
        return "has no image"
    if "@" in image:
        digest = image.split("@", 1)[1]
        return (
            None
            if digest.startswith("sha256:") and len(digest) == 71
            else f"has a malformed digest {image!r}"
        )
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"uses the untagged image {image!r}"
    if last.rsplit(":", 1)[1] == "latest":
        return f"uses the mutable tag in {image!r}"
    return None


def _latest_in_values(value: Any, path: str = "values") -> Iterator[str]:
    """Paths in Helm values that select a ``latest`` image (``tag: latest`` or ``image: repo:latest``)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            here = f"{path}.{key}"
            if (key == "tag" and item == "latest") or (
                key == "image" and isinstance(item, str) and item.split("@", 1)[0].endswith(":latest")
            ):
                yield here
            else:
                yield from _latest_in_values(item, here)
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
        for index, item in enumerate(value):
            yield from _latest_in_values(item, f"{path}[{index}]")


def forbid_latest_images(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Every container image has a digest or an explicit tag other than ``latest``; Helm charts pin a version."""
    if args.resource_type.startswith("kubernetes:helm.sh/"):
        chart = args.props.get("chart") or "?"
        if not args.props.get("version"):
            report_violation(f"Helm release {args.name}: chart {chart!r} has no pinned version.", None)
        for where in _latest_in_values(args.props.get("values")):
            report_violation(f"Helm release {args.name}: {where} selects the mutable tag 'latest'.", None)
        return
    kind = kind_of(args.resource_type)
    spec = pod_spec(kind, args.props)
    if spec is None:
        return
    for label, container in all_containers(spec):
        problem = image_problem(str(container.get("image") or ""))
        if problem:
            report_violation(f"{describe(args.props, args.name)}: {label} {problem}.", None)


def repository_of(image: str) -> str:
    """An image reference without tag or digest: ``host:5000/a/b:1@sha256:..`` -> ``host:5000/a/b``."""
    head, _, last = image.split("@", 1)[0].rpartition("/")
    last = last.split(":", 1)[0]
    return f"{head}/{last}" if head else last


def _is_qdrant_container(container: Mapping[str, Any]) -> bool:
    repository = repository_of(str(container.get("image") or ""))
    return repository == "qdrant/qdrant" or repository.endswith("/qdrant/qdrant")


def require_qdrant_api_key(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Qdrant containers read QDRANT__SERVICE__API_KEY from a Secret (a Helm release sets ``apiKey``)."""
    where = describe(args.props, args.name)
    if args.resource_type.startswith("kubernetes:helm.sh/"):
        if "qdrant" in str(args.props.get("chart") or "") and not _get(args.props, "values", "apiKey"):
            report_violation(f"Helm release {args.name}: the qdrant chart has no values.apiKey.", None)
        return
    spec = pod_spec(kind_of(args.resource_type), args.props)
    if spec is None:
        return
    for label, container in all_containers(spec):
        if not _is_qdrant_container(container):
            continue
        env = {str(_map(e).get("name")): _map(e) for e in _seq(container.get("env"))}
        entry = env.get(QDRANT_API_KEY_ENV)
        if entry is None:
            report_violation(f"{where}: Qdrant {label} has no {QDRANT_API_KEY_ENV}.", None)
        elif not _get(entry, "valueFrom", "secretKeyRef", "name"):
            report_violation(
                f"{where}: Qdrant {label} must take {QDRANT_API_KEY_ENV} from a Secret "
                "(valueFrom.secretKeyRef), not a literal value.",
                None,
            )


def require_tls(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Outside dev, every Gateway has an HTTPS listener with certificateRefs, and every Ingress has tls."""
    kind = kind_of(args.resource_type)
    if kind not in ("Gateway", "Ingress"):
        return
    environment = environment_of(args.get_config())
    if environment in DEV_ENVIRONMENTS:
        return
    where = describe(args.props, args.name)
    if kind == "Ingress":
        if not any(
            _seq(_map(t).get("hosts")) and _map(t).get("secretName")
            for t in _seq(_get(args.props, "spec", "tls"))
        ):
            report_violation(f"{where}: {environment} requires spec.tls with hosts and a secretName.", None)
        return
    listeners = [_map(x) for x in _seq(_get(args.props, "spec", "listeners"))]
    https = [x for x in listeners if x.get("protocol") == "HTTPS"]
    if not https:
        report_violation(f"{where}: {environment} requires an HTTPS listener; it has only plain HTTP.", None)
        return
    for listener in https:
        tls = _map(listener.get("tls"))
        if tls.get("mode", "Terminate") == "Terminate" and not _seq(tls.get("certificateRefs")):
            report_violation(
                f"{where}: HTTPS listener {listener.get('name')!r} has no tls.certificateRefs.",
                None,
            )


def _serves_tls(kind: str, props: Mapping[str, Any]) -> bool:
    if kind == "Ingress":
        return any(_map(t).get("secretName") for t in _seq(_get(props, "spec", "tls")))
    listeners = [_map(x) for x in _seq(_get(props, "spec", "listeners"))]
    return any(x.get("protocol") == "HTTPS" and _seq(_get(x, "tls", "certificateRefs")) for x in listeners)


def require_tls_entry_point(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    """Outside dev, the stack declares at least one TLS entry point (a Gateway or an Ingress serving HTTPS)."""
    environment = environment_of(args.get_config())
    if environment in DEV_ENVIRONMENTS:
        return
    if any(
        kind_of(r.resource_type) in ("Gateway", "Ingress") and _serves_tls(kind_of(r.resource_type), r.props)
        for r in args.resources
    ):
        return
    report_violation(
        f"{environment} has no TLS entry point: declare a Gateway with an HTTPS listener (certificateRefs) "
        "or an Ingress with spec.tls.",
        None,
    )


def is_stateful(resource_type: str, props: Mapping[str, Any]) -> bool:
    """Whether deleting this resource would lose data."""
    if resource_type == "kubernetes:apps/v1:StatefulSet":
        return bool(_seq(_get(props, "spec", "volumeClaimTemplates")))
    return resource_type in STATEFUL_TYPES


def require_protect_in_prod(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """In prod, stateful resources (volumes, databases, caches, buckets) are created with ``protect=True``."""
    if not is_stateful(args.resource_type, args.props):
        return
    environment = environment_of(args.get_config())
    if environment not in PROD_ENVIRONMENTS:
        return
    if not args.opts.protect:
        report_violation(
            f"{args.resource_type} {args.name} holds data and must be protected in {environment} "
            "(ResourceOptions(protect=True)).",
            None,
        )


# ---------------------------------------------------------------------------------------------- stack rules
def _int(value: Any, default: int) -> int:
    """An integer field, or ``default`` when absent or malformed (schema validation reports the latter)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _namespace(props: Mapping[str, Any]) -> str:
    return str(_get(props, "metadata", "namespace") or "")


def _object_name(resource: PolicyResource) -> str:
    return str(_get(resource.props, "metadata", "name") or resource.name)


def _selects(selector: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    match_labels = _map(selector.get("matchLabels"))
    if not match_labels and not _seq(selector.get("matchExpressions")):
        return False
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    for expr in _seq(selector.get("matchExpressions")):
        e = _map(expr)
        key, op, values = e.get("key"), e.get("operator"), set(_seq(e.get("values")))
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and labels.get(key) in values)
            or (op == "Exists" and key not in labels)
            or (op == "DoesNotExist" and key in labels)
        ):
            return False
    return True


def require_pdb(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    """A PodDisruptionBudget selects every Deployment/StatefulSet run with more than one replica."""
    hpa_min: dict[tuple[str, str, str], int] = {}
    pdbs: list[PolicyResource] = []
    for r in args.resources:
        kind = kind_of(r.resource_type)
        if kind == "HorizontalPodAutoscaler":
            target = _map(_get(r.props, "spec", "scaleTargetRef"))
            key = (_namespace(r.props), str(target.get("kind")), str(target.get("name")))
            hpa_min[key] = _int(_get(r.props, "spec", "minReplicas"), 1)
        elif kind == "PodDisruptionBudget":
            pdbs.append(r)
    for r in args.resources:
        kind = kind_of(r.resource_type)
        if kind not in SCALABLE_KINDS:
            continue
        ns, name = _namespace(r.props), _object_name(r)
        replicas = _int(_get(r.props, "spec", "replicas"), 1)
        wanted = max(replicas, hpa_min.get((ns, kind, name), 0))
        if wanted <= 1:
            continue
        labels = _map(_get(r.props, "spec", "template", "metadata", "labels"))
        if not any(
            _namespace(p.props) == ns and _selects(_map(_get(p.props, "spec", "selector")), labels)
            for p in pdbs
        ):
            report_violation(
                f"{describe(r.props, r.name)} runs {wanted} replicas but no PodDisruptionBudget selects its pods.",
                r.urn,
            )


# ---------------------------------------------------------------------------------------------- the policy list
MANDATORY = EnforcementLevel.MANDATORY

POLICIES: list[ResourceValidationPolicy | StackValidationPolicy] = [
    ResourceValidationPolicy(
        name="container-resources",
        description="Every container sets cpu and memory requests and limits.",
        validate=require_resources,
        enforcement_level=MANDATORY,
    ),
    ResourceValidationPolicy(
        name="health-probes",
        description="The service and Qdrant workloads have liveness and readiness probes.",
        validate=require_probes,
        enforcement_level=MANDATORY,
        config_schema=PolicyConfigSchema(
            properties={
                "probedWorkloads": {
                    "type": "array",
                    "items": {"type": "object", "additionalProperties": {"type": "string"}},
                    "description": "Pod label sets of the workloads that need probes (Qdrant always does).",
                }
            }
        ),
    ),
    ResourceValidationPolicy(
        name="run-as-non-root",
        description="Pods run as non-root (runAsNonRoot on the pod or every container).",
        validate=require_non_root,
        enforcement_level=MANDATORY,
    ),
    ResourceValidationPolicy(
        name="pinned-images",
        description="Images carry a digest or an explicit tag other than latest; Helm charts pin a version.",
        validate=forbid_latest_images,
        enforcement_level=MANDATORY,
    ),
    ResourceValidationPolicy(
        name="qdrant-api-key",
        description="Qdrant takes its API key from a Kubernetes Secret.",
        validate=require_qdrant_api_key,
        enforcement_level=MANDATORY,
    ),
    ResourceValidationPolicy(
        name="tls-outside-dev",
        description="Outside dev, the entry point (Gateway/Ingress) serves HTTPS with a certificate.",
        validate=require_tls,
        enforcement_level=MANDATORY,
        config_schema=ENVIRONMENT_SCHEMA,
    ),
    ResourceValidationPolicy(
        name="protect-stateful-in-prod",
        description="In prod, volumes, databases, caches and buckets are protected from deletion.",
        validate=require_protect_in_prod,
        enforcement_level=MANDATORY,
        config_schema=ENVIRONMENT_SCHEMA,
    ),
    StackValidationPolicy(
        name="tls-entry-point-outside-dev",
        description="Outside dev, the stack has a Gateway or Ingress serving HTTPS.",
        validate=require_tls_entry_point,
        enforcement_level=MANDATORY,
        config_schema=ENVIRONMENT_SCHEMA,
    ),
    StackValidationPolicy(
        name="pdb-for-replicated-workloads",
        description="Deployments/StatefulSets with more than one replica (or HPA minimum) have a PDB.",
        validate=require_pdb,
        enforcement_level=MANDATORY,
    ),
]
