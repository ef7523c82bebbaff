"""``ragops up --stack S``: a plain ``pulumi up`` with the policy pack (what a merge to main runs on dev).

Staging and prod run only promoted images, and what a promotion set (``rag:image``, ``rag:promotion``,
``rag:embedding`` and the promotable ``rag:service`` settings) lives in the backend, not in the committed stack
file (docs/delivery.md, "Where a promotion's facts live"). So before updating a staging/prod stack whose checkout
names no image, ``deploy`` carries those keys over from the config the stack's last update ran with: an emergency
settings change from a fresh checkout redeploys the promoted build with the new settings, instead of the program
refusing (``rag:image ... missing``) or, worse, the settings reverting to what the committed file says.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from pulumi.automation import ConfigMap, Workspace
from pulumi.automation.errors import CommandError

from infra.workflows.alerting import check_alerting
from infra.workflows.errors import stderr_of
from infra.workflows.promote import (
    IMAGE_KEY,
    PROMOTION_KEY,
    SERVICE_KEY,
    _service_object,
    merge_promotable,
)
from infra.workflows.registry_upgrade import check_major_upgrade, check_registry_recoverable
from infra.workflows.reindex import EMBEDDING_KEY
from infra.workflows.scaling import check_scale_down
from infra.workflows.secrets import check_secrets_kept
from infra.workflows.stacks import (
    POLICY_PACK,
    PROJECT,
    Context,
    OnEvent,
    OnOutput,
    WorkflowError,
    _as_object,
    change_counts,
    deployed_config,
    select,
    set_config_values,
    string_config,
)

PROMOTED_ENVIRONMENTS = frozenset({"staging", "prod"})
#: infra.clusters.eks.CONTROL_PLANE_LOG_GROUP (not imported: pulumi_aws would add seconds to every ragops start).
CONTROL_PLANE_LOG_GROUP = "eks-control-plane-logs"

#: CloudWatch Logs' CreateLogGroup refusal for the EKS control-plane log group (terraform-provider-aws: "creating
#: CloudWatch Logs Log Group (<name>): ... ResourceAlreadyExistsException: The specified log group already exists").
_LOG_GROUP_EXISTS = re.compile(
    r"Log Group \((/aws/eks/[^/)\s]+/cluster)\).*ResourceAlreadyExistsException", re.IGNORECASE | re.DOTALL
)


def adopt_log_group_instructions(stack: str, stderr: str) -> str | None:
    """What to run when `up` failed because EKS's own control-plane log group is in the way (None: another failure).

    The stack declares `/aws/eks/<cluster>/cluster` (infra/clusters/eks.py). A cluster created before that, by an
    earlier version of this program, has the group EKS created itself; a stack of the same name destroyed by that
    version left it behind. CreateLogGroup then fails, and only an import makes the group the stack's (deleting it
    would lose the audit logs). `pulumi import` needs the stack's explicit AWS provider (`aws`), which the failed
    update has recorded; the next `up` then sets the declared retention, tags and protection.
    """
    match = _LOG_GROUP_EXISTS.search(stderr)
    if match is None:
        return None
    group = match.group(1)
    short = stack.rsplit("/", 1)[-1]
    provider = f"urn:pulumi:{short}::{PROJECT}::pulumi:providers:aws::aws"
    return (
        f"the EKS control-plane log group {group} already exists outside the stack (EKS created it for a cluster "
        "made before the stack declared it, or a destroy by an older version left it behind). Nothing of the "
        "update that needs it was applied. Adopt it, keeping its logs, then run `ragops up` again: "
        f"pulumi import 'aws:cloudwatch/logGroup:LogGroup' {CONTROL_PLANE_LOG_GROUP} '{group}' "
        f"--provider 'aws={provider}' --stack {stack} --generate-code=false --protect=false --yes "
        '(docs/operations.md, "EKS control-plane logs")'
    )


def keep_promoted(ws: Workspace, stack: str) -> dict[str, Any] | None:
    """Carry the deployed promotion into this checkout's stack file; the values written (None: nothing to do).

    Only for a staging/prod stack file without ``rag:image`` (a checkout that names an image is taken as is), and
    only when the last update ran a promoted image; a stack never deployed is left to the program's own refusal.
    """
    local = ws.get_all_config(stack)
    if string_config(local.get(f"{PROJECT}:environment")) not in PROMOTED_ENVIRONMENTS:
        return None
    if string_config(local.get(IMAGE_KEY)):
        return None
    try:
        with deployed_config(ws, stack) as deployed:
            image = string_config(deployed.get(IMAGE_KEY))
            if not image:
                return None
            values: dict[str, Any] = {IMAGE_KEY: image}
            for key in (PROMOTION_KEY, EMBEDDING_KEY):
                record = _as_object(deployed[key].value) if key in deployed else None
                if record is not None:
                    values[key] = record
            deployed_service = _service_object(ws, stack, deployed)
    except WorkflowError:
        return None  # never deployed: `pulumi up` fails with the program's ConfigError naming rag:image
    values[SERVICE_KEY], _ = merge_promotable(deployed_service, _service_object(ws, stack, local))
    set_config_values(ws, stack, values)
    return values


#: The cluster targets whose stacks copy a promoted image into a registry of their own (`ServiceImage`'s copy).
COPYING_PROVIDERS = frozenset({"gke", "eks"})
CLUSTER_KEY = f"{PROJECT}:cluster"


def cluster_provider(config: ConfigMap) -> str:
    """The cluster target a stack's config names (`rag:cluster.provider`, default `existing`)."""
    cluster = _as_object(config[CLUSTER_KEY].value) if CLUSTER_KEY in config else None
    return str((cluster or {}).get("provider", "existing"))


def image_to_copy(ws: Workspace, stack: str) -> str | None:
    """The promoted image this update copies into the stack's own registry with skopeo, on this machine (None: no
    copy runs). The copy is a `command:local:Command` whose script names the image: it runs on the stack's first
    update with that image, not on an update that keeps the image the last one deployed."""
    local = ws.get_all_config(stack)
    image = string_config(local.get(IMAGE_KEY))
    if not image:
        return None
    if cluster_provider(local) not in COPYING_PROVIDERS:
        return None
    try:
        with deployed_config(ws, stack) as deployed:
            if string_config(deployed.get(IMAGE_KEY)) == image:
                return None
    except WorkflowError:
        pass  # never deployed: the first update copies
    return image


def check_image_copy(ctx: Context, stack: str, ws: Workspace) -> None:
    """Refuse before the update changes anything when it would copy a promoted image this machine cannot copy
    (skopeo missing, or the source digest unreadable from here): `up` would otherwise fail at the copy, after it had
    started changing the stack. The same check `ragops promote` makes (`check_copy_source`)."""
    image = image_to_copy(ws, stack)
    if image is None:
        return
    # Imported here: the component module loads the Pulumi provider SDKs, which only a copy needs.
    from infra.components.image import CopyPrerequisiteError, check_copy_source

    check = check_copy_source if ctx.check_image_source is None else ctx.check_image_source
    try:
        check(image)
    except CopyPrerequisiteError as exc:
        raise WorkflowError(
            f"Cannot update {stack}: the update copies {image} into the stack's own registry on this machine, "
            f"and {str(exc)[0].lower()}{str(exc)[1:]}"
        ) from exc


#: The one-time step tagging the manifests of images deployed before (`infra/clusters/{gke,eks}.py`): a stack whose
#: state lacks it runs it (skopeo, with gcloud/aws logins) on its next update, whatever that update deploys.
PROTECT_EXISTING = "registry-protect-existing"


def registry_tagging(
    provider: str, *, building: bool, copying: str | None, tagged_before: bool
) -> str | None:
    """What an update of a `provider` stack tags in the stack's own registry on this machine (None: nothing), for
    the message of a refusal: a build's protection step, a promotion's copy, or the one-time tagging of the images
    deployed before (`registry-protect-existing`, when `tagged_before` is false)."""
    if provider not in COPYING_PROVIDERS:
        return None
    if building:
        return "tags the image it builds"
    if copying is not None:
        return f"copies {copying}"
    if not tagged_before:
        return f"tags the images deployed before once ({PROTECT_EXISTING})"
    return None


def protect_existing_done(ws: Workspace, stack: str) -> bool:
    """Whether the stack's state holds the one-time `registry-protect-existing` step (a never-deployed stack: no)."""
    try:
        state = ws.export_stack(stack).deployment or {}
    except CommandError:
        return False
    return any(
        str(resource.get("urn", "")).endswith(f"::{PROTECT_EXISTING}")
        for resource in state.get("resources") or []
    )


def require_registry_tools(ctx: Context, stack: str, provider: str, what: str | None) -> None:
    """Raise WorkflowError when the update `what` describes (see `registry_tagging`) cannot run on this machine."""
    if what is None:
        return
    from infra.components.image import CopyPrerequisiteError, check_registry_tools

    check = check_registry_tools if ctx.check_registry_tools is None else ctx.check_registry_tools
    try:
        check(provider)
    except CopyPrerequisiteError as exc:
        raise WorkflowError(
            f"Cannot update {stack}: the update {what} in the stack's own registry on this machine, "
            f"and {str(exc)[0].lower()}{str(exc)[1:]}"
        ) from exc


def require_build_daemon(ctx: Context, stack: str) -> None:
    """Raise WorkflowError, before the update changes anything, when it builds the service image (no `rag:image`)
    and no build daemon answers on this machine (`infra.components.image.check_build_daemon`: the current
    buildx builder, else the Docker daemon)."""
    from infra.components.image import BuildPrerequisiteError, check_build_daemon

    check = check_build_daemon if ctx.check_build_daemon is None else ctx.check_build_daemon
    try:
        check()
    except BuildPrerequisiteError as exc:
        raise WorkflowError(
            f"Cannot update {stack}: the update builds the service image on this machine, and {exc}"
        ) from exc


def check_registry_tools_here(ctx: Context, stack: str, ws: Workspace) -> None:
    """Refuse before the update changes anything when it builds the image without a Docker daemon here
    (`require_build_daemon`), or would tag images in a gke/eks stack's own registry on this machine without the
    tools for it: a build's protection step (`service-image-protect`, every build), a
    promotion's copy, and the one-time `registry-protect-existing` (an update that keeps a promoted image runs it
    too, when the stack was deployed before it existed) log in with gcloud/aws and tag with skopeo. `up` would
    otherwise fail at that `command:local:Command`, after it had started changing the stack."""
    local = ws.get_all_config(stack)
    provider = cluster_provider(local)
    building = not string_config(local.get(IMAGE_KEY))
    if building:
        require_build_daemon(ctx, stack)
    if provider not in COPYING_PROVIDERS:
        return
    copying = None if building else image_to_copy(ws, stack)
    tagged_before = building or copying is not None or protect_existing_done(ws, stack)
    what = registry_tagging(provider, building=building, copying=copying, tagged_before=tagged_before)
    require_registry_tools(ctx, stack, provider, what)


def deploy(
    ctx: Context,
    stack: str,
    *,
    policy_pack: str | None = POLICY_PACK,
    on_output: OnOutput | None = None,
    on_event: OnEvent | None = None,
    drop_secrets: Collection[str] = (),
) -> dict[str, int]:
    """Update the stack and return the change counts of the update (refused when it would drop a secret key the
    last update ran with, unless ``drop_secrets`` names it: ``infra.workflows.secrets``)."""
    ws = ctx.workspace()
    st = select(ws, stack)
    keep_promoted(ws, stack)
    check_secrets_kept(ws, stack, drop_secrets)
    check_alerting(ws, stack, ctx.work_dir)
    check_image_copy(ctx, stack, ws)
    check_registry_tools_here(ctx, stack, ws)
    check_scale_down(ws, stack)
    check_major_upgrade(ws, stack)
    check_registry_recoverable(ws, stack)
    try:
        result = st.up(
            policy_packs=[policy_pack] if policy_pack else None,
            on_output=on_output,
            on_event=on_event,
            message=f"ragops up {stack}",
        )
    except CommandError as exc:
        instructions = adopt_log_group_instructions(stack, stderr_of(exc))
        if instructions is not None:
            raise WorkflowError(instructions) from exc
        raise
    return change_counts(result.summary.resource_changes)
