"""Run the real Pulumi program offline, under `pulumi.runtime.set_mocks`, and record what it registers.

`run_stack("prod")` feeds the program its config the way the CLI does (the Pulumi.yaml defaults, then each key the
stack file sets replacing the default, every value as a `rag:`-prefixed string, objects as JSON), runs
`infra/__main__.py` as the script the CLI runs, and returns every registered resource with its resolved inputs,
secret input keys, parent, protect flag, provider and dependencies, plus the resolved stack outputs.

The recording happens in the mock resource monitor (it sees the engine's RegisterResource request, which carries
parent/protect/provider/dependencies - what a real engine would record), not in a transform. The `Mocks` return
plausible outputs for every resource type the program uses (cluster endpoints and CA data, registry URLs, RDS /
ElastiCache / Cloud SQL / Memorystore endpoints, a `sha256:` digest for the image build), all derived from the
resource's name so two runs of the same stack give the same result.

The one input the program reads from outside its config, the commit the image is built from (`git rev-parse
HEAD`, the tag and revision label of the build), is read once per process here: a test session compares runs made
minutes apart (tests/infra/test_config_consumed.py compares a cached base run with later runs), and a commit or
merge in the checkout meanwhile would otherwise change every build's tag, so any two runs would differ.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import logging
import re
import runpy
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pulumi
import yaml
from google.protobuf import json_format, struct_pb2
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc, settings
from pulumi.runtime.config import set_all_config
from pulumi.runtime.proto import resource_pb2
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from infra.config import (
    PROJECT,
    PROMOTED_ENVIRONMENTS,
    SECRET_KEYS,
    ConfigError,
    deep_merge,
    stack_file,
)

PROJECT_DIR = Path(__file__).resolve().parent.parent
ACCOUNT_ID = "123456789012"
#: EKS add-ons (`aws eks describe-addon-versions`; a few of them) the getAddonVersion mock answers for.
EKS_ADDONS = ("vpc-cni", "kube-proxy", "coredns", "aws-ebs-csi-driver", "eks-pod-identity-agent")
STACK_TYPE = "pulumi:pulumi:Stack"


@dataclass(frozen=True)
class RecordedResource:
    """One resource the program registered."""

    type: str  # Pulumi type token, e.g. "kubernetes:apps/v1:Deployment"
    name: str  # logical resource name
    urn: str
    custom: bool  # False for component resources
    inputs: dict[str, Any]  # resolved plain input values (secrets unwrapped)
    secret_keys: frozenset[str]  # top-level input keys whose value was a secret
    parent: str | None  # parent URN (None only for the root stack)
    protect: bool
    provider: str | None  # provider URN, or None for the default provider
    depends_on: tuple[str, ...]  # URNs (explicit depends_on and input dependencies, as the engine sees them)
    aliases: tuple[
        str, ...
    ] = ()  # URNs this resource also answers to in existing state (`aliases=`), resolved
    ignore_changes: tuple[
        str, ...
    ] = ()  # input property paths the engine leaves alone on update (`ignore_changes=`)
    retain_on_delete: bool = (
        False  # `retain_on_delete=`: a delete drops it from the state and leaves the object
    )
    update_timeout: str = ""  # `custom_timeouts=`' update ("": the provider's default)


@dataclass(frozen=True)
class StackRun:
    """What one offline run of a stack produced."""

    stack: str
    resources: list[RecordedResource]
    outputs: dict[str, Any]  # resolved stack outputs
    secret_outputs: frozenset[str]
    #: The `{"rag:key": "value"}` config the program ran with (Pulumi.yaml defaults, stack values, overrides).
    config: Mapping[str, str] = field(default_factory=dict)
    #: Existing objects the program reads (`Resource.get`): the engine reads them in the preview too, and one that
    #: does not exist fails it. `inputs` is what the read sends, and its `id`; nothing is created for them.
    reads: list[RecordedResource] = field(default_factory=list)
    #: What the program warned (`pulumi.log.warn`), in order: `make plan` lists them under Warnings once.
    warnings: list[str] = field(default_factory=list)

    def of_type(self, type_: str) -> list[RecordedResource]:
        """The resources of one type token."""
        return [resource for resource in self.resources if resource.type == type_]

    def by_name(self, name: str) -> RecordedResource:
        """The one resource with this logical name."""
        matches = [resource for resource in self.resources if resource.name == name]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} resources named {name!r}")
        return matches[0]

    @property
    def urns(self) -> list[str]:
        """All URNs, sorted."""
        return sorted(resource.urn for resource in self.resources)


# --- config, as the CLI passes it ----------------------------------------------------------------------------

#: The `rag:image` an offline run of a staging/prod stack file deploys (`.invalid` never resolves): what a promotion
#: would have set. See `cli_config`.
PROMOTED_PLACEHOLDER = "promoted.invalid/rag/service@sha256:" + "0" * 64


def cli_config(
    stack: str,
    *,
    config_overrides: Mapping[str, Any] | None = None,
    project_dir: Path = PROJECT_DIR,
    stack_config: Mapping[str, Any] | None = None,
) -> tuple[dict[str, str], list[str]]:
    """The `{"rag:key": "value"}` map (and the secret keys) the CLI would hand the program for `stack`.

    `stack_config` stands in for the stack file's `config:` mapping, for stacks that only live in a backend
    (an ephemeral stack's config as `ragops ephemeral up` wrote it); by default Pulumi.<stack>.yaml is read.

    `config_overrides` (keys bare or `rag:`-prefixed) are applied to the stack file's values first: a mapping is
    merged into the stack's object for that key (falling back to the declared default), `None` unsets the key.
    Encrypted (`secure:`) stack values cannot be decrypted offline; they become a fixed placeholder secret.
    """
    project = yaml.safe_load((project_dir / "Pulumi.yaml").read_text(encoding="utf-8"))
    declared: dict[str, Any] = project.get("config") or {}
    if stack_config is None:
        path = project_dir / stack_file(stack)
        if not path.is_file():
            raise ValueError(
                f"no stack file {stack_file(stack)} in {project_dir}: create it first (a copy of the nearest "
                'stack\'s file; docs/delivery.md, "Adding a permanent stack")'
            )
        try:
            stack_doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ValueError(f"{stack_file(stack)} is not valid YAML: {problem}{where}") from exc
        if not isinstance(stack_doc, Mapping):
            raise ValueError(f"{stack_file(stack)} must be a mapping with a config: key")
        stack_config = stack_doc.get("config") or {}
    stack_values: dict[str, Any] = dict(stack_config)

    secret_keys: set[str] = set()

    def decrypted(value: Any, name: str) -> tuple[Any, bool]:
        """`value` with each `{secure: ...}` in it (also one set with `config set --path --secret`, inside an
        object) replaced by a placeholder, and whether there was one: the engine then names the top-level key."""
        if isinstance(value, Mapping):
            if set(value) == {"secure"}:
                return f"offline-secret-{name}", True
            pairs = {k: decrypted(v, str(k)) for k, v in value.items()}
            return {k: v for k, (v, _) in pairs.items()}, any(s for _, s in pairs.values())
        if isinstance(value, list):
            items = [decrypted(v, name) for v in value]
            return [v for v, _ in items], any(s for _, s in items)
        return value, False

    for key, value in list(stack_values.items()):
        stack_values[key], secure = decrypted(value, key.split(":")[-1])
        if secure:
            secret_keys.add(key)

    for key, value in (config_overrides or {}).items():
        full = key if ":" in key else f"{PROJECT}:{key}"
        if value is None:
            stack_values.pop(full, None)
            continue
        bare = full.split(":", 1)[1]
        base = stack_values.get(full, (declared.get(bare) or {}).get("default"))
        stack_values[full] = deep_merge(base, value) if isinstance(value, Mapping) else value
        if bare in SECRET_KEYS:
            secret_keys.add(full)

    for key in stack_values:
        namespace, _, bare = key.partition(":")
        if not bare:
            # The CLI cannot load such a file (config.ParseKey: "could not parse X as a configuration key").
            raise ConfigError(
                key,
                stack_file(stack),
                f"not a configuration key: keys are <namespace>:<name>, e.g. {PROJECT}:{key}",
            )
        # The CLI refuses a project key the project does not declare ("not defined by the project
        # configuration"); without this check a typo'd key would be silently ignored offline.
        if namespace == PROJECT and bare not in declared:
            raise ConfigError(key, stack_file(stack), "unknown key (not declared in Pulumi.yaml)")

    values: dict[str, Any] = {}
    for bare, declaration in declared.items():
        if isinstance(declaration, Mapping) and "default" in declaration:
            values[f"{PROJECT}:{bare}"] = declaration["default"]
        elif not isinstance(declaration, Mapping):
            values[f"{PROJECT}:{bare}"] = declaration
    values.update(stack_values)
    image_key = f"{PROJECT}:image"
    if (
        image_key not in stack_values
        and values.get(f"{PROJECT}:environment") in PROMOTED_ENVIRONMENTS
        and f"{PROJECT}:ephemeral" not in stack_values
    ):
        # A committed staging/prod file never names the image: `ragops promote` sets it on the runner, and the
        # backend keeps it (docs/delivery.md). Offline there is no backend, so the plan shows the stack running a
        # promoted image under a placeholder ref (an explicit `--set image=""` still gets the program's refusal).
        values[image_key] = PROMOTED_PLACEHOLDER
    return {key: _cli_string(value) for key, value in values.items()}, sorted(secret_keys)


def _cli_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


# --- mocks ---------------------------------------------------------------------------------------------------


def _digest(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def _fake_cert(name: str) -> str:
    pem = f"-----BEGIN CERTIFICATE-----\n{_digest('ca', name)}\n-----END CERTIFICATE-----\n"
    return base64.b64encode(pem.encode()).decode()


class ProviderError(grpc.RpcError):
    """A provider's failed invoke as the engine answers it: a gRPC error (`invocation of <token> returned an error:
    ...`, status Unknown), which the SDK turns into `Exception("invoke of <token> failed: ...")` raised where the
    program called the invoke (pulumi/runtime/invoke.py). A plain exception raised in `Mocks.call` would instead
    be the run's unhandled RPC error, which no `try` in the program can catch."""

    def __init__(self, token: str, message: str) -> None:
        super().__init__(message)
        self._details = f"invocation of {token} returned an error: {message}"

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNKNOWN

    def details(self) -> str:
        return self._details


def parse_fq_name(resource_id: str) -> tuple[str, str]:
    """(namespace, name) of a pulumi-kubernetes id: `<namespace>/<name>`, or `<name>` (no namespace), as
    provider/pkg/provider/util.go `parseFqName` splits it."""
    parts = resource_id.split("/")
    return ("", parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def kubernetes_id(typ: str, inputs: Mapping[str, Any]) -> str | None:
    """The id pulumi-kubernetes gives an object it creates: `<namespace>/<name>`, or the bare name of one without a
    namespace (util.go `fqObjName` of the live object); a Helm release's is `<namespace>/<name>` of the release
    (helm_release.go `fqName`). None for what is not a Kubernetes object (providers, components)."""
    if not typ.startswith("kubernetes:") or typ.startswith("kubernetes:helm.sh/v4"):
        return None
    if typ == "kubernetes:helm.sh/v3:Release":
        return f"{inputs.get('namespace') or 'default'}/{inputs.get('name')}" if inputs.get("name") else None
    metadata = inputs.get("metadata")
    if not isinstance(metadata, Mapping) or not metadata.get("name"):
        return None
    namespace = metadata.get("namespace")
    return f"{namespace}/{metadata['name']}" if namespace else str(metadata["name"])


def kubernetes_read_target(inputs: Mapping[str, Any], resource_id: str) -> tuple[str, str]:
    """Where pulumi-kubernetes' `Read` looks for the object a `get` (a ReadResource with `resource_id` and the read's
    `inputs`) names: (namespace, name); an empty namespace is `default` for a namespaced kind (clients.go
    `NamespaceOrDefault`).

    provider/pkg/provider/provider.go `Read`: the name always comes from the id (`parseFqName`); the namespace comes
    from the id only when the inputs name no apiVersion/kind (then the kind is the type token's, `gvkFromURN`), else
    from the inputs' `metadata.namespace`. pulumi/pulumi step.go `ReadStep.Apply` sends the read's own inputs on
    every `up` (never the last read's outputs), so this holds at every run."""
    id_namespace, name = parse_fq_name(resource_id)
    metadata = inputs.get("metadata") if isinstance(inputs.get("metadata"), Mapping) else {}
    names_kind = bool(inputs.get("apiVersion") or inputs.get("kind"))
    return str(metadata.get("namespace") or ("" if names_kind else id_namespace)), name


#: Kinds pulumi-kubernetes checks for readiness when it reads a resource it already holds (a refresh): await.go
#: `awaiters` entries with an `awaitRead` (the Ingress's: `ingressReady` only with a load balancer address).
AWAITED_READS = frozenset({"networking.k8s.io/v1 Ingress"})


def refresh_awaits(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> bool:
    """Whether pulumi-kubernetes' `Read` runs its readiness check when a refresh reads a resource whose state holds
    `inputs` and `outputs` (the engine sends both, pulumi/pulumi step.go `RefreshStep.Apply`).

    provider/pkg/provider/provider.go `Read`: with no apiVersion/kind in the inputs nor in the state's live object
    (a first `get`) it reads from the cluster and checks nothing (`readFromCluster`); otherwise await.go `Read` runs the
    kind's `awaitRead` unless the INPUTS carry `pulumi.com/skipAwait: "true"` (metadata.SkipAwaitLogic). A read
    resource's state keeps the inputs its program sent (step.go `ReadStep.Apply`), so a `get` that sends none is
    checked at every refresh: an Ingress without an address is then "unhealthy" (an initialization error)."""
    live = outputs.get("live") if isinstance(outputs.get("live"), Mapping) else outputs
    named = inputs if inputs.get("apiVersion") or inputs.get("kind") else live
    if not (named.get("apiVersion") or named.get("kind")):
        return False
    kind = f"{named.get('apiVersion') or ''} {named.get('kind') or ''}"
    metadata = inputs.get("metadata") if isinstance(inputs.get("metadata"), Mapping) else {}
    annotations = metadata.get("annotations") if isinstance(metadata.get("annotations"), Mapping) else {}
    return kind in AWAITED_READS and str(annotations.get("pulumi.com/skipAwait", "")).lower() != "true"


class UnmodelledInvoke(RuntimeError):
    """The program asked for an invoke `PlatformMocks` has no answer for."""

    def __init__(self, *tokens: str) -> None:
        self.tokens = tokens
        names = ", ".join(dict.fromkeys(tokens))
        super().__init__(f"the offline mocks do not model the invoke {names}: add its provider's answer here")


class PlatformMocks(pulumi_mocks.Mocks):
    """Plausible, deterministic outputs for the resource types and invokes the program uses."""

    def __init__(self, live: Mapping[str, Any] | None = None) -> None:
        # Provider id -> its inputs, so a resource's outputs can reflect its provider's project/region.
        self._providers: dict[str, dict[str, Any]] = {}
        # What the cloud already runs, as the read-only invokes see it (`run_stack(live=...)`): {"eks": {"name",
        # "version", "nodeGroups": {name: version}}, "gke": {"name", "masterVersion"}}, and the stack's own last
        # state as the engine's builtin invokes read it (infra/guards.py): {"state": {"outputs": {...}, "resources":
        # {urn: {"type", "outputs"}}}}, and {"objects": {"<type token> <id>": {...}}}: what a read (`get`) of a deployed
        # Kubernetes object finds (its status). Empty: a fresh account, no cluster yet, a stack never deployed.
        self._live: Mapping[str, Any] = live or {}
        # The tokens of invokes these mocks do not model that the program asked for: `run_stack` fails the run when
        # any was asked, even if the program caught the error (`call`).
        self.unmodelled: list[str] = []

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str | None, dict]:
        """Echo the inputs, plus the outputs a real provider would compute for this type."""
        name, inputs = args.name, dict(args.inputs)
        if args.typ.startswith("pulumi:providers:"):
            self._providers[f"{name}-id"] = inputs
        provider_id = (args.provider or "").rsplit("::", 1)[-1]
        provider_inputs = self._providers.get(provider_id, {})
        if args.typ.startswith("gcp:") and "project" not in inputs and provider_inputs.get("project"):
            inputs = {**inputs, "project": provider_inputs["project"]}
        state: dict[str, Any] = dict(args.inputs)
        if args.resource_id:  # a read: the object as the cluster has it, else what was asked for
            if args.typ.startswith("kubernetes:"):
                namespace, object_name = kubernetes_read_target(inputs, args.resource_id)
                id_namespace = parse_fq_name(args.resource_id)[0]
                if id_namespace and (namespace or "default") != id_namespace:
                    # The provider GETs `<namespace>/<name>` where it resolved, finds nothing (404: its
                    # `deleteResponse`), and the engine fails the step (pulumi/pulumi step.go ReadStep.Apply:
                    # "resource '<id>' does not exist"). Every `up` with an entry failed so before REVIEW10 F0.
                    raise RuntimeError(
                        f"resource '{args.resource_id}' does not exist: the read of {args.name} names "
                        f"apiVersion/kind without the id's namespace, so pulumi-kubernetes looks for "
                        f"{object_name} in `{namespace or 'default'}`"
                    )
            found = (self._live.get("objects") or {}).get(f"{args.typ} {args.resource_id}") or {}
            return args.resource_id, {**state, **found}
        extra = _outputs_for(args.typ, name, inputs)
        state.update(extra)
        return kubernetes_id(args.typ, inputs) or f"{name}-id", state

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict, list[tuple[str, str]]]:
        """Answer the data-source invokes."""
        tok = args.token
        state = self._live.get("state")
        if tok == "pulumi:pulumi:readStackOutputs":
            outputs = (state or {}).get("outputs") or {}
            return {"name": args.args["name"], "outputs": outputs, "secretOutputNames": []}, []
        if tok == "pulumi:pulumi:readStackResourceOutputs":
            if state is None:
                # The engine dereferences a nil snapshot here for a stack never deployed (pulumi
                # pkg/backend/backend.go GetStackResourceOutputs): the program must not ask.
                raise RuntimeError("readStackResourceOutputs of a stack without a snapshot")
            return {"name": args.args["stackName"], "outputs": state.get("resources") or {}}, []
        if tok == "aws:index/getAvailabilityZones:getAvailabilityZones":
            names, ids = ["eu-west-1a", "eu-west-1b", "eu-west-1c"], ["z1", "z2", "z3"]
            # As the API answers an account with a Local Zone opted in: listed unless the opt-in-status filter
            # keeps only the region's own zones, and sorted first (its name extends the region's).
            only_azs = {"name": "opt-in-status", "values": ["opt-in-not-required"]}
            if only_azs not in (args.args.get("filters") or []):
                names, ids = ["eu-west-1-lcl-1a", *names], ["lcl1", *ids]
            return {"names": names, "zoneIds": ids}, []
        if tok == "aws:eks/getAddonVersion:getAddonVersion":
            # As DescribeAddonVersions answers: a version per (add-on, Kubernetes version), the default build or the
            # most recent one; an add-on EKS does not offer is an error.
            addon, kubernetes = args.args.get("addonName"), str(args.args.get("kubernetesVersion") or "")
            if addon not in EKS_ADDONS or not re.fullmatch(r"1\.\d+", kubernetes):
                raise ValueError(f"no EKS add-on {addon!r} for Kubernetes {kubernetes!r}")
            build = 3 if args.args.get("mostRecent") else 1
            version = f"v{kubernetes}.{EKS_ADDONS.index(addon)}-eksbuild.{build}"
            return {"addonName": addon, "kubernetesVersion": kubernetes, "version": version, "id": addon}, []
        eks = self._live.get("eks")
        if tok == "aws:eks/getClusters:getClusters":
            return {"id": "eu-west-1", "names": [eks["name"]] if eks else []}, []
        if tok in ("aws:eks/getCluster:getCluster", "aws:eks/getNodeGroups:getNodeGroups"):
            name = args.args.get("name") or args.args.get("clusterName")
            if not eks or name != eks["name"]:
                # As EKS answers for a cluster that does not exist (ResourceNotFoundException).
                raise ProviderError(tok, f"ResourceNotFoundException: No cluster found for name: {name}.")
            if tok.endswith("getCluster"):
                return {"name": name, "version": eks["version"], "id": name}, []
            return {"clusterName": name, "names": sorted(eks.get("nodeGroups") or {}), "id": name}, []
        if tok == "aws:eks/getNodeGroup:getNodeGroup":
            group = args.args.get("nodeGroupName")
            groups = (eks or {}).get("nodeGroups") or {}
            if group not in groups:
                raise ProviderError(tok, f"ResourceNotFoundException: No node group found for name: {group}.")
            return {"nodeGroupName": group, "version": groups[group], "id": group}, []
        if tok == "gcp:container/getCluster:getCluster":
            gke = self._live.get("gke")
            name = args.args.get("name")
            if not gke or name != gke["name"]:
                # As terraform-provider-google's data source answers a 404 (datasourceContainerClusterRead).
                where = f"projects/{args.args.get('project')}/locations/{args.args.get('location')}/clusters/{name}"
                raise ProviderError(tok, f"{where} not found")
            return {"name": name, "masterVersion": gke["masterVersion"], "id": name}, []
        if tok == "aws:index/getCallerIdentity:getCallerIdentity":
            return {
                "accountId": ACCOUNT_ID,
                "arn": f"arn:aws:iam::{ACCOUNT_ID}:user/ci",
                "userId": "AIDA",
            }, []
        if tok == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
            return {
                "userName": "AWS",
                "password": "offline-ecr-password",
                "authorizationToken": base64.b64encode(b"AWS:offline-ecr-password").decode(),
                "proxyEndpoint": f"https://{ACCOUNT_ID}.dkr.ecr.eu-west-1.amazonaws.com",
            }, []
        if tok == "gcp:organizations/getClientConfig:getClientConfig":
            return {
                "accessToken": "offline-token",
                "project": "offline-project",
                "region": "europe-west1",
            }, []
        # An invoke the program did not make when these mocks were written has no faithful answer here: an empty one
        # would let any read of it pass (a wrong shape, a missing field). The exception reaches the program's
        # `await`, where a broad `except Exception` around the invoke catches it (REVIEW_INFRA21 L1); the SDK also
        # keeps it as the run's unhandled RPC error (pulumi/runtime/rpc_manager.py `rpc_wrapper`), which
        # `wait_for_rpcs` raises at the end of the run. Not relying on that, the token is recorded too and
        # `run_stack` fails the run naming it, whatever the program did with the error.
        self.unmodelled.append(tok)
        raise UnmodelledInvoke(tok)


#: The control plane version the offline GKE cluster runs when its config names no minimum (the channel's default).
GKE_DEFAULT_MASTER = "1.34.5-gke.1000000"


def gke_master_version(minimum: str) -> str:
    """The version a GKE control plane runs (`masterVersion`) for `minMasterVersion`: that version when it is a full
    one, the minor's newest patch in the channel (a plausible one) for a minor, the channel's default when empty."""
    if re.fullmatch(r"1\.\d+", minimum):
        return f"{minimum}.5-gke.1000000"
    return minimum or GKE_DEFAULT_MASTER


def _outputs_for(typ: str, name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    region = "eu-west-1"
    if typ == "random:index/randomPassword:RandomPassword":
        return {"result": _digest("password", name)[: int(inputs.get("length", 32))]}
    if typ == "random:index/randomId:RandomId":
        return {"hex": _digest("id", name)[:8], "b64Url": _digest("id", name)[:11]}
    if typ == "tls:index/privateKey:PrivateKey":
        return {"privateKeyPem": f"offline-key-{name}", "publicKeyPem": f"offline-pub-{name}"}
    if typ == "docker-build:index:Image":
        digest = "sha256:" + _digest("image", name, json.dumps(inputs.get("context"), sort_keys=True))
        tags = inputs.get("tags") or [f"registry.local/{name}:offline"]
        return {"digest": digest, "ref": f"{str(tags[0]).rsplit(':', 1)[0]}@{digest}"}
    if typ == "aws:eks/cluster:Cluster":
        cluster = inputs.get("name") or name
        issuer = f"https://oidc.eks.{region}.amazonaws.com/id/{_digest('oidc', name)[:32].upper()}"
        return {
            "name": cluster,
            "arn": f"arn:aws:eks:{region}:{ACCOUNT_ID}:cluster/{cluster}",
            "endpoint": f"https://{_digest('eks', name)[:32].upper()}.gr7.{region}.eks.amazonaws.com",
            "certificateAuthority": {"data": _fake_cert(name)},
            "identities": [{"oidcs": [{"issuer": issuer}]}],
            "version": inputs.get("version", "1.33"),
        }
    if typ == "aws:eks/nodeGroup:NodeGroup":
        return {"arn": f"arn:aws:eks:{region}:{ACCOUNT_ID}:nodegroup/{name}", "status": "ACTIVE"}
    if typ == "aws:ecr/repository:Repository":
        repo = inputs.get("name") or name
        return {
            "repositoryUrl": f"{ACCOUNT_ID}.dkr.ecr.{region}.amazonaws.com/{repo}",
            "registryId": ACCOUNT_ID,
            "arn": f"arn:aws:ecr:{region}:{ACCOUNT_ID}:repository/{repo}",
            "name": repo,
        }
    if typ == "aws:iam/openIdConnectProvider:OpenIdConnectProvider":
        url = str(inputs.get("url", "")).removeprefix("https://")
        return {"arn": f"arn:aws:iam::{ACCOUNT_ID}:oidc-provider/{url}"}
    if typ in ("aws:iam/role:Role", "aws:iam/policy:Policy"):
        kind = "role" if typ.endswith("Role") else "policy"
        resource = inputs.get("name") or f"{name}-{_digest(kind, name)[:7]}"
        return {"arn": f"arn:aws:iam::{ACCOUNT_ID}:{kind}/{resource}", "name": resource}
    if typ == "aws:rds/instance:Instance":
        host = f"{inputs.get('identifier') or name}.c{_digest('rds', name)[:10]}.{region}.rds.amazonaws.com"
        return {"address": host, "endpoint": f"{host}:5432", "port": 5432, "arn": f"arn:aws:rds:::db:{name}"}
    if typ == "aws:rds/parameterGroup:ParameterGroup":
        group = inputs.get("name") or f"{name}-{_digest('params', name)[:7]}"
        return {"name": group, "id": group, "arn": f"arn:aws:rds:{region}:{ACCOUNT_ID}:pg:{group}"}
    if typ == "aws:elasticache/replicationGroup:ReplicationGroup":
        host = f"master.{name}.{_digest('cache', name)[:6]}.euw1.cache.amazonaws.com"
        return {
            "primaryEndpointAddress": host,
            "readerEndpointAddress": host.replace("master.", "replica."),
            "port": 6379,
            "arn": f"arn:aws:elasticache:::replicationgroup:{name}",
        }
    if typ.startswith("aws:s3/bucket"):
        bucket = inputs.get("bucket") or f"{name}-{_digest('bucket', name)[:8]}"
        return {"bucket": bucket, "arn": f"arn:aws:s3:::{bucket}", "region": region}
    if typ.startswith("aws:ec2/") or typ.startswith("aws:"):
        return {"arn": f"arn:aws:{typ.split(':')[1].split('/')[0]}:{region}:{ACCOUNT_ID}:{name}"}
    if typ == "gcp:container/cluster:Cluster":
        # GKE's `endpoint` is the private address when the private endpoint is enabled, the public one otherwise
        # (PrivateClusterConfig.enablePrivateEndpoint: "whether the master's internal IP address is used as the
        # cluster endpoint"), so switching it moves the kubeconfig's server on the same cluster.
        private = bool((inputs.get("privateClusterConfig") or {}).get("enablePrivateEndpoint"))
        return {
            "name": inputs.get("name") or name,
            "endpoint": "172.16.0.2" if private else f"34.{int(_digest('gke', name)[:2], 16)}.0.1",
            "masterAuth": {"clusterCaCertificate": _fake_cert(name)},
            "location": inputs.get("location", "europe-west1"),
            "selfLink": f"https://container.googleapis.com/v1/projects/p/locations/l/clusters/{name}",
            "masterVersion": gke_master_version(str(inputs.get("minMasterVersion") or "")),
        }
    if typ == "gcp:artifactregistry/repository:Repository":
        repository = inputs.get("repositoryId") or name
        where = f"{inputs.get('location')}-docker.pkg.dev/{inputs.get('project') or 'offline-project'}"
        return {"name": repository, "registryUri": f"{where}/{repository}"}
    if typ == "gcp:serviceaccount/account:Account":
        project = inputs.get("project") or "offline-project"
        email = f"{inputs.get('accountId') or name}@{project}.iam.gserviceaccount.com"
        return {
            "email": email,
            "name": f"projects/{project}/serviceAccounts/{email}",
            "member": f"serviceAccount:{email}",
        }
    if typ == "gcp:sql/databaseInstance:DatabaseInstance":
        # A named instance (a restored one) gets an address of its own, so a client's URL shows which it reaches.
        ip = f"10.20.{int(_digest('sql', inputs['name'])[:2], 16)}.3" if inputs.get("name") else "10.20.0.3"
        return {
            "privateIpAddress": ip,
            "publicIpAddress": None,
            "connectionName": f"p:europe-west1:{name}",
            "ipAddresses": [{"ipAddress": ip, "type": "PRIVATE"}],
            "name": inputs.get("name") or name,
        }
    if typ == "gcp:redis/instance:Instance":
        # `authString` only with AUTH on (terraform-provider-google redis instance: "populated if auth_enabled").
        auth = _digest("redis-auth", name)
        return {
            "host": "10.30.0.4",
            "port": 6379,
            "currentLocationId": "europe-west1-b",
            "authString": f"{auth[:8]}-{auth[8:12]}-{auth[12:16]}-{auth[16:20]}-{auth[20:32]}"
            if inputs.get("authEnabled")
            else None,
        }
    if typ == "gcp:storage/bucket:Bucket":
        bucket = inputs.get("name") or f"{name}-{_digest('bucket', name)[:8]}"
        return {
            "name": bucket,
            "url": f"gs://{bucket}",
            "selfLink": f"https://www.googleapis.com/storage/v1/b/{bucket}",
        }
    if typ == "gcp:compute/network:Network":
        return {
            "selfLink": f"projects/p/global/networks/{inputs.get('name') or name}",
            "name": inputs.get("name") or name,
        }
    if typ == "gcp:compute/globalAddress:GlobalAddress":
        return {
            "address": inputs.get("address") or "10.100.0.0",
            "selfLink": f"projects/p/global/addresses/{name}",
        }
    if typ.startswith("gcp:"):
        resource = inputs.get("name") or name
        return {"name": resource, "selfLink": f"https://www.googleapis.com/{typ.split(':')[1]}/{resource}"}
    if typ.startswith("kubernetes:") and isinstance(inputs.get("metadata"), Mapping):
        metadata = dict(inputs["metadata"])
        metadata.setdefault("name", name)
        return {"metadata": metadata}
    return {}


# --- the recording monitor -----------------------------------------------------------------------------------


def _downgrade_references(value: Any) -> Any:
    """Resource references (`rpc._special_sig_key` = `_special_resource_sig`) replaced by their ID, else URN."""
    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_resource_sig:
            return value.get("id") or value.get("urn")
        return {key: _downgrade_references(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_downgrade_references(item) for item in value]
    return value


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    """The SDK's mock monitor, keeping each RegisterResource request's options next to its inputs."""

    def __init__(self, mocks: pulumi_mocks.Mocks) -> None:
        super().__init__(mocks)
        self.records: list[RecordedResource] = []
        self.reads: list[RecordedResource] = []
        # Providers registered with an unknown input: the engine cannot configure them (see Invoke).
        self.unconfigured: set[str] = set()

    def make_urn(self, parent: str, type_: str, name: str) -> str:
        """URNs as the engine makes them: children of the root stack carry no `pulumi:pulumi:Stack$` prefix."""
        if parent and parent.split("::")[2] == STACK_TYPE:
            parent = ""
        return super().make_urn(parent, type_, name)

    def Invoke(self, request: Any) -> Any:
        """As the engine answers: an invoke that does not accept resource references gets each one as its ID
        (a component's: its URN), pulumi's plugin.MarshalProperties with KeepResources false. An invoke through a
        provider registered with an unknown input answers an empty result and no error, as the engine's provider
        plugin does for a provider it could not configure (sdk/go/common/resource/plugin/provider_plugin.go
        `Invoke`: "If the provider is not fully configured, return an empty property map")."""
        if request.provider and request.provider.rsplit("::", 1)[0] in self.unconfigured:
            return resource_pb2.ResourceInvokeResponse(**{"return": struct_pb2.Struct()})
        response = super().Invoke(request)
        if request.acceptResources or not request.tok.startswith("pulumi:pulumi:"):
            return response
        value = json_format.MessageToDict(getattr(response, "return"))
        downgraded = _downgrade_references(value)
        if downgraded != value:
            getattr(response, "return").Clear()
            json_format.ParseDict(downgraded, getattr(response, "return"))
        return response

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        urn = self.make_urn(request.parent, request.type, request.name)
        if request.type.startswith("pulumi:providers:") and rpc.struct_contains_unknowns(request.object):
            self.unconfigured.add(urn)
        raw = rpc.deserialize_properties(request.object) if request.type != STACK_TYPE else {}
        inputs: dict[str, Any] = {}
        secret_keys: set[str] = set()
        for key, value in raw.items():
            if rpc.is_rpc_secret(value):
                secret_keys.add(key)
            inputs[key] = _plain(rpc.unwrap_rpc_secret(value))
        provider = request.provider.rsplit("::", 1)[0] if request.provider else None
        self.records.append(
            RecordedResource(
                type=request.type,
                name=request.name,
                urn=urn,
                custom=bool(request.custom),
                inputs=inputs,
                secret_keys=frozenset(secret_keys),
                parent=request.parent or None,
                protect=bool(request.protect),
                provider=provider,
                depends_on=tuple(sorted(set(request.dependencies))),
                aliases=tuple(self._alias_urns(request)),
                ignore_changes=tuple(request.ignoreChanges),
                retain_on_delete=bool(request.retainOnDelete),
                update_timeout=request.customTimeouts.update,
            )
        )
        return response

    def ReadResource(self, request: Any) -> Any:
        response = super().ReadResource(request)
        provider = request.provider.rsplit("::", 1)[0] if request.provider else None
        # What the read sends (the provider resolves where to look from it, `kubernetes_read_target`), and its id.
        sent = {
            key: _plain(rpc.unwrap_rpc_secret(value))
            for key, value in rpc.deserialize_properties(request.properties).items()
        }
        self.reads.append(
            RecordedResource(
                type=request.type,
                name=request.name,
                urn=self.make_urn(request.parent, request.type, request.name),
                custom=True,
                inputs={**sent, "id": request.id},
                secret_keys=frozenset(),
                parent=request.parent or None,
                protect=False,
                provider=provider,
                depends_on=tuple(sorted(set(request.dependencies))),
            )
        )
        return response

    def _alias_urns(self, request: Any) -> list[str]:
        """The URNs of the request's aliases, resolved as the engine does: an unset part of a spec is the
        resource's own (name, type, parent; this stack and project). The SDK sends `noParent: false` for a spec
        without a parent (pulumi 3.272 `create_alias_spec`), which the engine reads as the resource's parent."""
        urns = list(request.aliasURNs)
        for alias in request.aliases:
            if alias.WhichOneof("alias") == "urn":
                urns.append(alias.urn)
                continue
            spec = alias.spec
            # As the engine reads it: noParent only when true, parentUrn only when set, else the own parent.
            parent = "" if spec.noParent else spec.parentUrn or request.parent
            if spec.stack or spec.project:
                raise NotImplementedError("aliases into another stack or project are not recorded offline")
            urns.append(self.make_urn(parent, spec.type or request.type, spec.name or request.name))
        return urns


def _plain(value: Any) -> Any:
    """Unwrap nested secrets and turn resource references into their URNs."""
    if rpc.is_rpc_secret(value):
        return _plain(rpc.unwrap_rpc_secret(value))
    if isinstance(value, pulumi.Resource):
        return f"<resource {type(value).__name__}>"
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


# --- running -------------------------------------------------------------------------------------------------


@functools.cache
def session_commit() -> str:
    """The checked-out commit, read at the first offline run of this process and kept for every later one."""
    from infra.components.image import current_git_sha

    return current_git_sha()


def _quiet_abandoned_tasks(
    loop: asyncio.AbstractEventLoop, context: dict[str, Any], failures: Sequence[BaseException] = ()
) -> None:
    """A failed program leaves the SDK's pending RPC tasks behind; asyncio would print each when it is collected
    ("Task was destroyed but it is pending!") above the one line that says what failed, and each Output that
    carries the failure (a failed read: every Output of the resource, "Future exception was never retrieved").
    `failures`: what the run failed with (raised to the caller). Anything else is reported."""
    message = str(context.get("message", ""))
    if message.startswith("Task was destroyed but it is pending"):
        return
    if message.startswith("Future exception was never retrieved") and any(
        str(context.get("exception")) == str(failure) for failure in failures
    ):
        return
    loop.default_exception_handler(context)


def run_stack(
    stack: str,
    *,
    config_overrides: Mapping[str, Any] | None = None,
    project_dir: Path = PROJECT_DIR,
    stack_config: Mapping[str, Any] | None = None,
    live: Mapping[str, Any] | None = None,
    preview: bool = False,
) -> StackRun:
    """Run the real program under `set_mocks` with Pulumi.yaml defaults + Pulumi.<stack>.yaml values
    (or `stack_config`, see `cli_config`). `live` is what the cloud already runs, as the program's read-only
    invokes find it (see `PlatformMocks`); by default nothing (a first `up`). `preview`: as `pulumi preview`.

    Raises infra.config.ConfigError for bad config (before any resource is registered).
    """
    try:
        return _run_stack(
            stack,
            config_overrides=config_overrides,
            project_dir=project_dir,
            stack_config=stack_config,
            live=live,
            preview=preview,
        )
    except Exception as exc:
        cause = _root_cause(exc)
        if cause is exc:
            raise
        raise cause from exc


def overridden(key: str, overrides: Mapping[str, Any] | None) -> bool:
    """Whether `key` (`rag:a.b.c`) or an object above it was given with `--set` (`config_overrides`)."""
    if not overrides:
        return False
    namespace, _, bare = key.partition(":")
    parts = bare.split(".")
    node: Any = {k if ":" in k else f"{PROJECT}:{k}": v for k, v in overrides.items()}
    for index, part in enumerate([f"{namespace}:{parts[0]}", *parts[1:]]):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
        if not isinstance(node, Mapping) and index < len(parts) - 1:
            return True  # a scalar set above the key (rare): the value came from the command line
    return True


def _root_cause(exc: BaseException) -> BaseException:
    """What to report for a failed run: a ConfigError anywhere in the chain; else the innermost error of the SDK's
    wrapping (it re-raises a ValueError raised inside an Output as one "While processing input ... has risen"
    ValueError per dependent input; a ConfigError, a RunError, passes as raised); else `exc`. The CLI's language host
    does no such unwrapping: tests/infra/test_language_host_errors.py runs the program as it does."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for error in chain:
        if isinstance(error, ConfigError):
            return error
    if str(exc).startswith("While processing") and len(chain) > 1:
        return chain[-1]
    return exc


def _run_stack(
    stack: str,
    *,
    config_overrides: Mapping[str, Any] | None,
    project_dir: Path,
    stack_config: Mapping[str, Any] | None,
    live: Mapping[str, Any] | None,
    preview: bool = False,
) -> StackRun:
    values, secret_keys = cli_config(
        stack, config_overrides=config_overrides, project_dir=project_dir, stack_config=stack_config
    )
    root_dir = str(project_dir)
    if root_dir not in sys.path:
        sys.path.insert(0, root_dir)

    # A fresh root stack, config and RPC state for every run: nothing carries over from the previous one.
    # The SDK schedules on the thread's current event loop; a previous async test may have closed or unset
    # it, so each run gets a loop of its own.
    loop = asyncio.new_event_loop()
    failures: list[BaseException] = []
    loop.set_exception_handler(functools.partial(_quiet_abandoned_tasks, failures=failures))
    asyncio.set_event_loop(loop)
    settings.ROOT.set(None)
    settings.SETTINGS.outputs.clear()
    set_all_config(values, secret_keys)
    mocks = PlatformMocks(live)
    monitor = _RecordingMonitor(mocks)
    # The program's pulumi.log.warn lands in `program_log` (MockEngine.Log): recorded for the run instead of printed
    # raw on stderr by logging's last-resort handler (make plan then printed the EKS support warning twice).
    recorder = _Recorder()
    program_log.addHandler(recorder)
    pulumi_mocks.set_mocks(
        mocks, project=PROJECT, stack=stack, preview=preview, logger=program_log, monitor=monitor
    )
    root = settings.get_root_resource()

    resolved: dict[str, tuple[Any, bool]] = {}

    async def program() -> None:
        runpy.run_path(str(project_dir / "infra" / "__main__.py"), run_name="__main__")
        for name, value in dict(root.outputs).items():  # type: ignore[union-attr]
            output = pulumi.Output.from_input(value)
            resolved[name] = (await output.future(), await output.is_secret())

    import infra.stack

    read_commit = infra.stack.current_git_sha
    infra.stack.current_git_sha = session_commit
    try:
        _sync_await(run_pulumi_func(program))
        if mocks.unmodelled:  # asked, and caught by the program: the run still fails naming it
            raise UnmodelledInvoke(*mocks.unmodelled)
    except Exception as exc:
        failures.append(_root_cause(exc))
        if mocks.unmodelled and not isinstance(exc, UnmodelledInvoke):
            # The program turned it into an error of its own (or a fallback that failed later): name the invoke.
            raise UnmodelledInvoke(*mocks.unmodelled) from exc
        raise
    finally:
        infra.stack.current_git_sha = read_commit
        program_log.removeHandler(recorder)
        settings.ROOT.set(None)
        set_all_config({}, [])
        loop.close()
        asyncio.set_event_loop(None)

    outputs = {name: _plain(value) for name, (value, _secret) in resolved.items()}
    secret_outputs = frozenset(name for name, (_value, secret) in resolved.items() if secret)
    return StackRun(
        stack=stack,
        resources=list(monitor.records),
        outputs=outputs,
        secret_outputs=secret_outputs,
        config=dict(values),
        reads=list(monitor.reads),
        warnings=[r.getMessage() for r in recorder.records if r.levelno == logging.WARNING],
    )


#: The logger the offline engine writes the program's `pulumi.log` messages to (see `_run_stack`).
program_log = logging.getLogger("infra.offline.program")


class _Recorder(logging.Handler):
    """Keeps one run's log records."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
