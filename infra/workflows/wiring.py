"""How the committed stack files fit together and with the workflows: checks across files, read offline.

A stack file is checked alone by the program (infra/config.py); what only shows across files is checked here:
a permanent stack the nightly drift matrix misses or runs on a runner that cannot reach it, a copied
``encryptionsalt`` or ``secure:`` value, two permanent stacks in one namespace of one existing cluster.
`make plan` prints `stack_file_findings` (errors refuse the plan, warnings are listed); the workflow tests assert
`workflow_problems` of the repository is empty, so a stack file added without its workflow wiring fails CI with
these sentences (docs/delivery.md#adding-a-permanent-stack).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from infra.workflows.stacks import PROJECT, is_permanent, permanent_stacks

#: The names of PR stacks (infra/workflows/ephemeral.py EPHEMERAL_PREFIX; not imported: that module loads Pulumi).
EPHEMERAL_PREFIX = "pr-"

#: Labels of GitHub-hosted runners: no fixed address, outside every private network.
HOSTED_PREFIXES = ("ubuntu-", "windows-", "macos-")
DOC = "docs/delivery.md#adding-a-permanent-stack"


def _doc(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _config(path: Path) -> dict[str, Any]:
    config = _doc(path).get("config")
    return config if isinstance(config, dict) else {}


def _stack_files(work_dir: Path) -> dict[str, Path]:
    return {p.name[len("Pulumi.") : -len(".yaml")]: p for p in sorted(Path(work_dir).glob("Pulumi.*.yaml"))}


def _declared_default(work_dir: Path, key: str) -> Any:
    project = _doc(Path(work_dir) / "Pulumi.yaml")
    declaration = (project.get("config") or {}).get(key)
    return declaration.get("default") if isinstance(declaration, Mapping) else declaration


def _merged(default: Any, value: Any) -> Any:
    if isinstance(default, Mapping) and isinstance(value, Mapping):
        out = dict(default)
        for key, item in value.items():
            out[key] = _merged(default.get(key), item)
        return out
    return default if value is None else value


def cluster_of(work_dir: Path, stack: str) -> dict[str, Any]:
    """`rag:cluster` of the stack file merged over Pulumi.yaml's default (what the program deploys)."""
    path = Path(work_dir) / f"Pulumi.{stack}.yaml"
    value = _config(path).get(f"{PROJECT}:cluster")
    merged = _merged(_declared_default(work_dir, "cluster"), value if isinstance(value, Mapping) else None)
    return merged if isinstance(merged, dict) else {}


def private_endpoint(work_dir: Path, stack: str) -> bool:
    """Whether the stack's control-plane endpoint is private (the EKS and GKE default), as
    infra.config.private_cluster_endpoint decides it, from the stack file alone."""
    cluster = cluster_of(work_dir, stack)
    provider = cluster.get("provider")
    if provider == "eks":
        return not (cluster.get("eks") or {}).get("endpointPublicAccess", False)
    if provider == "gke":
        return bool((cluster.get("gke") or {}).get("privateEndpoint", True))
    return False


def _hosted(runner: Any) -> bool:
    """Whether a runs-on value is a literal GitHub-hosted label (an expression is the operator's choice)."""
    text = str(runner)
    return "${{" not in text and any(prefix in text for prefix in HOSTED_PREFIXES)


def _load_workflow(work_dir: Path, name: str) -> dict[str, Any]:
    return _doc(Path(work_dir) / ".github" / "workflows" / name)


def nightly_runners(work_dir: Path) -> tuple[list[str], dict[str, Any]]:
    """The drift matrix's stacks and each include entry's runner, from nightly.yml."""
    matrix = ((_load_workflow(work_dir, "nightly.yml").get("jobs") or {}).get("drift") or {}).get(
        "strategy", {}
    )
    matrix = matrix.get("matrix") or {}
    stacks = [str(s) for s in matrix.get("stack") or []]
    runners = {
        str(e.get("stack")): e.get("runner") for e in matrix.get("include") or [] if isinstance(e, dict)
    }
    return stacks, runners


def workflow_problems(work_dir: Path) -> list[str]:
    """What keeps the workflows from serving every permanent stack of the checkout (one sentence each)."""
    problems: list[str] = []
    permanent = permanent_stacks(work_dir)
    stacks, runners = nightly_runners(work_dir)
    for stack in permanent:
        if stack not in stacks:
            problems.append(
                f"Pulumi.{stack}.yaml is a permanent stack but .github/workflows/nightly.yml's drift matrix does not "
                f"list it: add {stack!r} to jobs.drift.strategy.matrix.stack and an include entry "
                f"{{stack: {stack}, runner: ...}} ({DOC})"
            )
    for stack in permanent:
        problems.extend(environment_problems(Path(work_dir) / f"Pulumi.{stack}.yaml"))
        if stack.startswith(EPHEMERAL_PREFIX):
            problems.append(
                f"Pulumi.{stack}.yaml: {EPHEMERAL_PREFIX}<...> names are PR stacks' (`ragops ephemeral up`), not a "
                f"permanent stack's ({DOC})"
            )
    for stack in stacks:
        if stack not in permanent:
            problems.append(
                f".github/workflows/nightly.yml's drift matrix lists {stack!r}, which has no permanent stack file "
                f"Pulumi.{stack}.yaml in the checkout"
            )
            continue
        runner = runners.get(stack)
        if not runner:
            problems.append(
                f".github/workflows/nightly.yml's drift matrix has no include entry with a runner for {stack!r} "
                f"(runs-on is fromJSON(matrix.runner)): add {{stack: {stack}, runner: '[\"ubuntu-24.04\"]'}}, or a "
                f"runner in the cluster's network when Pulumi.{stack}.yaml's endpoint is private ({DOC})"
            )
        elif private_endpoint(work_dir, stack) and _hosted(runner):
            problems.append(
                f"Pulumi.{stack}.yaml's cluster endpoint is private (the EKS/GKE default) but nightly.yml's drift job "
                f"runs it on the GitHub-hosted runner {runner}, which cannot reach it: give it a runner in the "
                f"cluster's network, or a public endpoint with allowed CIDRs ({DOC})"
            )
    return problems


def stack_file_findings(work_dir: Path, stack: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) about ``Pulumi.<stack>.yaml`` against the checkout's other stack files and workflows."""
    errors: list[str] = []
    warnings: list[str] = []
    files = _stack_files(work_dir)
    path = files.get(stack)
    if path is None:
        return errors, warnings
    name = path.name
    doc = _doc(path)
    config = _config(path)
    others = {other: p for other, p in files.items() if other != stack}
    salt = doc.get("encryptionsalt")
    for other_path in others.values():
        if salt and _doc(other_path).get("encryptionsalt") == salt:
            errors.append(
                f"encryptionsalt in {name}: the same as {other_path.name}'s (a copied file): delete it and every "
                f"`secure:` value, run `pulumi stack init {stack}` (it writes {stack}'s own salt), then set "
                f"{stack}'s secrets with `pulumi config set --secret` ({DOC})"
            )
    own = _secure_values(config)
    for other_path in others.values():
        shared = sorted(key for key, value in own if (key, value) in set(_secure_values(_config(other_path))))
        if shared:
            errors.append(
                f"{shared[0]} in {name}: the same `secure:` ciphertext as in {other_path.name} (a copied file; "
                f"{len(shared)} such value(s)): set {stack}'s own with `pulumi config set --secret --stack {stack}` "
                f"({DOC})"
            )
    if f"{PROJECT}:ephemeral" in config:
        return errors, warnings
    if stack.startswith(EPHEMERAL_PREFIX):
        errors.append(
            f"{name}: {EPHEMERAL_PREFIX}<...> names are PR stacks' (`ragops ephemeral up`), which have no stack file: "
            f"delete it; `make plan STACK={stack}` renders the PR stack offline from "
            "infra/workflows/ephemeral.template.yaml, and a permanent stack needs a name outside that namespace "
            f"({DOC})"
        )
        return errors, warnings
    errors.extend(environment_problems(path))
    if not is_permanent(work_dir, stack):
        return errors, warnings
    cluster = cluster_of(work_dir, stack)
    if cluster.get("provider") == "existing":
        context = (cluster.get("existing") or {}).get("context")
        namespace = _namespace(work_dir, config)
        for other, other_path in others.items():
            if not is_permanent(work_dir, other):
                continue
            theirs = cluster_of(work_dir, other)
            if (
                theirs.get("provider") == "existing"
                and (theirs.get("existing") or {}).get("context") == context
                and _namespace(work_dir, _config(other_path)) == namespace
            ):
                warnings.append(
                    f"{name} and {other_path.name} deploy to the same existing cluster (context {context!r}) and "
                    f"namespace {namespace!r}: the second `up` fails on objects the first owns (the namespace, the "
                    "cert-manager and CloudNativePG releases, the ClusterIssuers); give it its own rag:namespace "
                    "and set rag:tls.installCertManager and rag:postgres.cloudnative.installOperator to false ("
                    'docs/delivery.md, "Adding a permanent stack")'
                )
    hostname = _hostname(config)
    for other_path in others.values():
        other = other_path.name[len("Pulumi.") : -len(".yaml")]
        if hostname and is_permanent(work_dir, other) and _hostname(_config(other_path)) == hostname:
            warnings.append(
                f"rag:gateway.hostname in {name} is {hostname!r}, as in {other_path.name}: both stacks would ask "
                "for the same certificate and DNS points at one of them; give each stack its own hostname"
            )
    environment = config.get(f"{PROJECT}:environment")
    if private_endpoint(work_dir, stack) and environment != "prod":
        warnings.append(
            f"{name}: the cluster's control-plane endpoint is private (the EKS/GKE default), and promote.yml "
            f"runs {stack}'s jobs on a GitHub-hosted runner (ubuntu-24.04) unless the repository variable "
            f"STACK_RUNNERS maps {stack!r} to a runner in the cluster's network: without one every `up` fails at "
            f"the first Kubernetes object ({DOC})"
        )
    return errors, warnings


#: The top-level keys of a stack file (the Pulumi CLI's ProjectStack): everything else is a misplaced config key.
STACK_FILE_KEYS = ("config", "encryptionsalt", "secretsprovider", "encryptedkey", "environment")


def environment_problems(path: Path) -> list[str]:
    """A stack file that does not name its `rag:environment` under `config:` (Pulumi.yaml's default, dev, would
    make it a build-from-the-checkout stack and a promotion source), or has keys outside `config:`."""
    problems = [
        f"{key} in {path.name}: not a stack file key (config keys go under `config:`; the file's keys are "
        f"{', '.join(STACK_FILE_KEYS)})"
        for key in _doc(path)
        if key not in STACK_FILE_KEYS
    ]
    environment = _config(path).get(f"{PROJECT}:environment")
    if not isinstance(environment, str) or not environment:
        problems.append(
            f"{PROJECT}:environment in {path.name}: missing: every permanent stack file names its environment "
            "under `config:` (dev, staging or prod): without it the stack would run as dev, build from whoever's "
            f"checkout runs `up` and be a promotion source into staging ({DOC})"
        )
    return problems


def _hostname(config: Mapping[str, Any]) -> str:
    gateway = config.get(f"{PROJECT}:gateway")
    return str(gateway.get("hostname") or "") if isinstance(gateway, Mapping) else ""


def _namespace(work_dir: Path, config: Mapping[str, Any]) -> Any:
    return config.get(f"{PROJECT}:namespace", _declared_default(work_dir, "namespace"))


def _secure_values(value: Any, key: str = "") -> list[tuple[str, str]]:
    if isinstance(value, Mapping):
        if set(value) == {"secure"}:
            return [(key, str(value["secure"]))]
        return [pair for k, v in value.items() for pair in _secure_values(v, f"{key}.{k}" if key else str(k))]
    if isinstance(value, list):
        return [pair for item in value for pair in _secure_values(item, key)]
    return []
